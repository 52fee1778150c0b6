// B2 completion latency.
//
// Engine: N instances wait at the async step of "Cycle"; one at a time, the time
// from just before completeServerEvent to the first line of the next (sync)
// step's handler, so it includes the completion's commit and, in pool mode, the
// hand-over to a worker. Each instance is finished (waitIdle) before the next
// call, so no sample waits behind another. Pool: 2 workers; inline: workers = 0.
// Raw: the duration of one completion transaction (UPDATE the waiting row,
// INSERT the next step's row, COMMIT), the durable work the engine's figure contains.
#include <condition_variable>
#include <iostream>
#include <mutex>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "benchmarks.hpp"
#include "raw_sqlite.hpp"
#include "workload.hpp"

namespace asyncflow::bench {
namespace {

constexpr std::size_t kPoolWorkers = 2;

// p50 and p99 of one run, in microseconds.
struct Latency {
  double p50 = 0;
  double p99 = 0;
};

Latency summarise(const std::vector<double>& micros) {
  return Latency{percentile(micros, 50), percentile(micros, 99)};
}

Latency engineLatency(const WaitingTemplate& prepared, const std::string& path, Synchronous sync,
                      std::size_t workers) {
  copyDatabase(prepared.path, path);
  HandlerProbe probe;  // outlives the engine, whose handler calls it
  Engine engine(openCountingStore(path, sync), engineOptions(workers));
  orThrow(engine.define(cycleProcess({}, [&probe] { probe.arrive(); })), "define Cycle");
  std::vector<double> micros;
  micros.reserve(prepared.serials.size());
  for (const std::string& serial : prepared.serials) {
    const SteadyClock::time_point called = SteadyClock::now();
    orThrow(engine.completeServerEvent(serial), "completeServerEvent");
    micros.push_back(microsBetween(called, probe.awaitArrival()));
    engine.waitIdle();
  }
  expectNoneWaiting(engine);
  return summarise(micros);
}

Latency rawLatency(const std::string& templatePath, const std::string& path, Synchronous sync,
                   std::size_t rows) {
  copyDatabase(templatePath, path);
  RawCompleter completer(path, sync);
  std::vector<double> micros;
  micros.reserve(rows);
  for (std::size_t i = 1; i <= rows; ++i) {
    const SteadyClock::time_point called = SteadyClock::now();
    completer.complete(static_cast<std::int64_t>(i));
    micros.push_back(microsBetween(called, SteadyClock::now()));
  }
  return summarise(micros);
}

// Medians over the runs of each mode's p50 and p99.
struct Medians {
  std::vector<double> p50, p99;
  void add(const Latency& l) {
    p50.push_back(l.p50);
    p99.push_back(l.p99);
  }
};

void addRows(Report& report, Synchronous sync, const char* mode, const Medians& engine,
             const Medians& raw) {
  const bool normal = sync == Synchronous::Normal;
  report.add(Row{"B2 latency p50", syncName(sync), mode, median(engine.p50), median(raw.p50),
                 Unit::Micros, normal ? Target::below(100, "< 100 us") : Target::none()},
             std::cerr);
  report.add(Row{"B2 latency p99", syncName(sync), mode, median(engine.p99), median(raw.p99),
                 Unit::Micros, normal ? Target::below(1000, "< 1 ms") : Target::none()},
             std::cerr);
}

}  // namespace

void runB2(const BenchConfig& config, const ScratchDir& dir, Report& report) {
  const std::size_t n = config.b2Samples;
  std::cerr << fmt::format("B2: preparing {} waiting instances (engine and raw)", grouped(n))
            << std::endl;
  const WaitingTemplate prepared =
      prepareWaiting(dir.file("b2_engine_template.db"), cycleProcess(), n);
  const std::string rawTemplate = dir.file("b2_raw_template.db");
  createRawWaitingRows(rawTemplate, n);

  for (Synchronous sync : config.syncLevels) {
    Medians pool, inlined, raw;
    for (int run = 0; run < config.runs; ++run) {
      pool.add(engineLatency(prepared, dir.file("b2_engine.db"), sync, kPoolWorkers));
      inlined.add(engineLatency(prepared, dir.file("b2_engine.db"), sync, 0));
      raw.add(rawLatency(rawTemplate, dir.file("b2_raw.db"), sync, n));
    }
    addRows(report, sync, "pool (2 workers)", pool, raw);
    addRows(report, sync, "inline", inlined, raw);
  }
  report.note(fmt::format(
      "B2: {} completions per run, one at a time; raw = one completion transaction's duration",
      grouped(n)));
  for (const char* name :
       {"b2_engine_template.db", "b2_raw_template.db", "b2_engine.db", "b2_raw.db"}) {
    removeDatabase(dir.file(name));
  }
}

}  // namespace asyncflow::bench
