// B1 completion throughput.
//
// Engine: N instances wait at their only step (an async step, so a completion
// ends the instance); 1 or 8 threads call completeServerEvent for their share
// of the serials, with continuations inline (workers = 0). The figure is
// completions per second from the threads' release until the last returned.
// Raw: the same N waiting rows; each completion is one transaction that UPDATEs
// the waiting row by primary key and INSERTs the next step's row; 8 threads use
// a connection each (SQLite serialises their writes; the busy timeout waits).
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "benchmarks.hpp"
#include "raw_sqlite.hpp"
#include "workload.hpp"

namespace asyncflow::bench {
namespace {

constexpr unsigned kThreadCounts[] = {1, 8};

struct EngineRate {
  double perSecond = 0;
  double appliesPerCompletion = 0;  // Store::apply calls per completion
};

EngineRate engineCompletionRate(const WaitingTemplate& prepared, const std::string& path,
                                Synchronous sync, unsigned threads) {
  copyDatabase(prepared.path, path);
  auto store = openCountingStore(path, sync);
  Engine engine(store, engineOptions(0));
  orThrow(engine.define(waitProcess()), "define Order");
  const std::vector<std::string>& serials = prepared.serials;
  const std::uint64_t before = store->applies();
  const double seconds = timeOnThreads(threads, [&](unsigned thread) {
    const Share share = shareOf(serials.size(), threads, thread);
    for (std::size_t i = share.begin; i < share.end; ++i) {
      orThrow(engine.completeServerEvent(serials[i]), "completeServerEvent");
    }
  });
  const double completions = static_cast<double>(serials.size());
  expectNoneWaiting(engine);
  return EngineRate{completions / seconds,
                    static_cast<double>(store->applies() - before) / completions};
}

double rawCompletionRate(const std::string& templatePath, const std::string& path, Synchronous sync,
                         unsigned threads, std::size_t rows) {
  copyDatabase(templatePath, path);
  std::vector<std::unique_ptr<RawCompleter>> completers;
  for (unsigned i = 0; i < threads; ++i)
    completers.push_back(std::make_unique<RawCompleter>(path, sync));
  const double seconds = timeOnThreads(threads, [&](unsigned thread) {
    const Share share = shareOf(rows, threads, thread);
    for (std::size_t i = share.begin; i < share.end; ++i) {
      completers[thread]->complete(static_cast<std::int64_t>(i + 1));
    }
  });
  return static_cast<double>(rows) / seconds;
}

// 1 thread: >= 0.8 of raw at the same level; 8 threads at FULL: >= 3x raw's
// one-commit-per-completion rate from 8 connections.
Target b1Target(Synchronous sync, unsigned threads) {
  if (threads == 1) return Target::ratioAtLeast(0.8);
  if (sync == Synchronous::Full) return Target::ratioAtLeast(3);
  return Target::none();
}

std::string threadsLabel(unsigned threads) {
  return fmt::format("{} thread{}", threads, threads == 1 ? "" : "s");
}

// The databases every run copies: the engine's waiting instances and the raw rows.
struct Prepared {
  WaitingTemplate engine;
  std::string raw;
};

// Medians over the runs of one synchronous level and thread count.
struct Figures {
  double engine = 0;  // completions per second
  double raw = 0;
  double appliesPerCompletion = 0;
};

Figures measure(const BenchConfig& config, const ScratchDir& dir, const Prepared& prepared,
                Synchronous sync, unsigned threads) {
  std::vector<double> engine, raw, perCompletion;
  for (int run = 0; run < config.runs; ++run) {
    const EngineRate rate =
        engineCompletionRate(prepared.engine, dir.file("b1_engine.db"), sync, threads);
    engine.push_back(rate.perSecond);
    perCompletion.push_back(rate.appliesPerCompletion);
    raw.push_back(rawCompletionRate(prepared.raw, dir.file("b1_raw.db"), sync, threads,
                                    prepared.engine.serials.size()));
  }
  return Figures{median(engine), median(raw), median(perCompletion)};
}

}  // namespace

void runB1(const BenchConfig& config, const ScratchDir& dir, Report& report) {
  const std::size_t n = config.b1Instances;
  std::cerr << fmt::format("B1: preparing {} waiting instances (engine and raw)", grouped(n))
            << std::endl;
  const Prepared prepared{prepareWaiting(dir.file("b1_engine_template.db"), waitProcess(), n),
                          dir.file("b1_raw_template.db")};
  createRawWaitingRows(prepared.raw, n);

  std::string applies = "B1: Store::apply calls (commits, unless merged) per completion:";
  for (Synchronous sync : config.syncLevels) {
    for (unsigned threads : kThreadCounts) {
      const Figures figures = measure(config, dir, prepared, sync, threads);
      report.add(Row{"B1 completions/s", syncName(sync), threadsLabel(threads), figures.engine,
                     figures.raw, Unit::PerSecond, b1Target(sync, threads)},
                 std::cerr);
      applies += fmt::format(" {} {} {:.2f};", syncName(sync), threadsLabel(threads),
                             figures.appliesPerCompletion);
    }
  }
  report.note(applies + " raw: 1 commit per completion");
  for (const char* name :
       {"b1_engine_template.db", "b1_raw_template.db", "b1_engine.db", "b1_raw.db"}) {
    removeDatabase(dir.file(name));
  }
}

}  // namespace asyncflow::bench
