// asyncflow_bench: the performance figures of DESIGN.md section 9.
//
// Each figure of asyncflow on SQLite is printed beside a raw SQLiteCpp baseline
// that does the same minimal durable work on the same machine in the same run,
// with the ratio and the target. Built by the "bench" preset
// (cmake --workflow --preset bench), never run as a test:
//
//   build/bench/test/bench/asyncflow_bench            # everything (minutes)
//   build/bench/test/bench/asyncflow_bench --quick    # smoke test
//   build/bench/test/bench/asyncflow_bench b2 --runs 5
#include <iostream>
#include <thread>

#include <SQLiteCpp/SQLiteCpp.h>
#include <fmt/format.h>

#include "asyncflow/version.hpp"
#include "bench_config.hpp"
#include "benchmarks.hpp"
#include "measure.hpp"
#include "report.hpp"

namespace {

using namespace asyncflow::bench;

void printSetup(const BenchConfig& config, const ScratchDir& dir) {
  std::cout << fmt::format(
      "asyncflow_bench: asyncflow {}, SQLite {} (SQLiteCpp {}), {} CPUs\n"
      "journal_mode=WAL, synchronous as listed; each figure is the median of {} run(s), B4 of "
      "one\n"
      "sizes: B1 {} instances, B2 {} completions, B3 {} cycles, B4 {} and {} waiting\n"
      "database files: {}\n\n",
      ASYNCFLOW_VERSION_STRING, SQLite::getLibVersion(), SQLITECPP_VERSION,
      std::thread::hardware_concurrency(), config.runs, grouped(config.b1Instances),
      grouped(config.b2Samples), grouped(config.b3Cycles), grouped(config.b4Small),
      grouped(config.b4Large), dir.path());
}

void printTargets(std::ostream& out) {
  out << "\nTargets: B1 1 thread >= 0.8x raw at the same level; B1 8 threads at FULL >= 3x raw's "
         "one-commit-per-completion rate (8 connections); B2 at NORMAL p50 < 100 us and p99 < 1 "
         "ms, including the commit; B3 >= 0.7x the raw bound; B4 <= 512 B on disk per waiting "
         "step, RSS growth <= 16 MiB.\n"
         "Ratios are engine / raw (for latencies and bytes, lower is better).\n";
}

int runAll(const BenchConfig& config) {
  ScratchDir dir(config.dir);
  printSetup(config, dir);
  std::cout.flush();
  Report report;
  if (config.b1) runB1(config, dir, report);
  if (config.b2) runB2(config, dir, report);
  if (config.b3) runB3(config, dir, report);
  if (config.b4) runB4(config, dir, report);
  std::cout << '\n';
  report.print(std::cout);
  printTargets(std::cout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  auto config = parseCommandLine(argc, argv);
  if (!config) {
    std::cerr << "asyncflow_bench: " << config.error().message << " (see --help)\n";
    return 2;
  }
  if (config->help) {
    std::cout << usage();
    return 0;
  }
  try {
    if (config->b4Child != B4Side::None) return runB4Child(*config);
    return runAll(*config);
  } catch (const std::exception& e) {
    std::cerr << "asyncflow_bench: " << e.what() << '\n';
    return 1;
  }
}
