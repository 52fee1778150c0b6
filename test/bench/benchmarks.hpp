// asyncflow_bench: the four benchmarks of the performance issue.
//
// Each runs at config.syncLevels (FULL and NORMAL by default), measures every figure config.runs
// times (engine, then its raw baseline, in each run) and adds the medians to
// the report. Database files go to `dir` and are removed when done. A failed
// call throws: a figure is only printed when all the work it counts succeeded.
#pragma once

#include "asyncflow/sqlite_store.hpp"
#include "bench_config.hpp"
#include "measure.hpp"
#include "report.hpp"

namespace asyncflow::bench {

// B1 completion throughput: N waiting instances completed by 1 and by 8 threads
// (inline continuations), against one raw transaction per completion.
void runB1(const BenchConfig& config, const ScratchDir& dir, Report& report);

// B2 latency: from the completeServerEvent call to the first line of the next
// step's handler, p50 and p99, with a worker pool and inline.
void runB2(const BenchConfig& config, const ScratchDir& dir, Report& report);

// B3 full cycle: start, async step waits, complete, one sync step, end; cycles
// per second against the raw bound for the same number of commits.
void runB3(const BenchConfig& config, const ScratchDir& dir, Report& report);

// B4 waiting cost: bytes on disk per waiting step and resident memory at two
// waiting counts, each side measured in a fresh child process.
void runB4(const BenchConfig& config, const ScratchDir& dir, Report& report);

// The child process of runB4: measures config.b4Child's side in config.dir and
// prints "key value" lines on stdout. Returns the exit status.
int runB4Child(const BenchConfig& config);

}  // namespace asyncflow::bench
