// B3 full cycle.
//
// Engine: one thread, continuations inline, a fresh database per run; a cycle is
// start("Cycle") (the async step's handler hands over its serial and waits),
// completeServerEvent(serial) (the sync step runs and the instance ends). The
// figure is cycles per second.
// Raw bound: the engine's commits per cycle, counted as Store::apply calls, done
// as minimal commits (one small row INSERTed per transaction); the bound is the
// raw commit rate divided by the commits per cycle.
#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "benchmarks.hpp"
#include "raw_sqlite.hpp"
#include "workload.hpp"

namespace asyncflow::bench {
namespace {

struct CycleRate {
  double perSecond = 0;
  double commitsPerCycle = 0;  // Store::apply calls per cycle
};

CycleRate engineCycleRate(const std::string& path, Synchronous sync, std::size_t cycles) {
  removeDatabase(path);
  std::string serial;  // the "external system": remembers the serial it was handed
  auto store = openCountingStore(path, sync);
  Engine engine(store, engineOptions(0));
  orThrow(engine.define(cycleProcess([&serial](const std::string& s) { serial = s; })),
          "define Cycle");
  const std::uint64_t before = store->applies();
  const SteadyClock::time_point start = SteadyClock::now();
  for (std::size_t i = 0; i < cycles; ++i) {
    orThrow(engine.start("Cycle", orderFields()), "start Cycle");
    orThrow(engine.completeServerEvent(serial), "completeServerEvent");
  }
  const double seconds = secondsSince(start);
  expectNoneWaiting(engine);
  const double n = static_cast<double>(cycles);
  return CycleRate{n / seconds, static_cast<double>(store->applies() - before) / n};
}

double rawCycleBound(const std::string& path, Synchronous sync, std::size_t cycles,
                     double commitsPerCycle) {
  RawRowWriter writer(path, sync);
  const auto commits = static_cast<std::size_t>(std::llround(cycles * commitsPerCycle));
  const SteadyClock::time_point start = SteadyClock::now();
  for (std::size_t i = 0; i < commits; ++i) writer.commitOneRow();
  const double commitsPerSecond = static_cast<double>(commits) / secondsSince(start);
  return commitsPerSecond / commitsPerCycle;
}

}  // namespace

void runB3(const BenchConfig& config, const ScratchDir& dir, Report& report) {
  std::cerr << fmt::format("B3: {} cycles per run", grouped(config.b3Cycles)) << std::endl;
  std::string commits = "B3: commits (Store::apply calls) per cycle:";
  for (Synchronous sync : config.syncLevels) {
    std::vector<double> engine, raw, perCycle;
    for (int run = 0; run < config.runs; ++run) {
      const CycleRate rate = engineCycleRate(dir.file("b3_engine.db"), sync, config.b3Cycles);
      engine.push_back(rate.perSecond);
      perCycle.push_back(rate.commitsPerCycle);
      raw.push_back(
          rawCycleBound(dir.file("b3_raw.db"), sync, config.b3Cycles, rate.commitsPerCycle));
    }
    report.add(Row{"B3 cycles/s", syncName(sync), "1 thread, inline", median(engine), median(raw),
                   Unit::PerSecond, Target::ratioAtLeast(0.7)},
               std::cerr);
    commits += fmt::format(" {} {:.2f};", syncName(sync), median(perCycle));
  }
  report.note(commits + " the raw bound makes as many one-row commits");
  removeDatabase(dir.file("b3_engine.db"));
  removeDatabase(dir.file("b3_raw.db"));
}

}  // namespace asyncflow::bench
