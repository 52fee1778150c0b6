// asyncflow_bench: what to measure and how big, from the command line.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "asyncflow/error.hpp"
#include "asyncflow/sqlite_store.hpp"

namespace asyncflow::bench {

// Which side of B4 a child process measures (see b4.hpp).
enum class B4Side { None, Engine, Raw };

// The benchmark run. Every field has the full run's default; --quick lowers
// the sizes, and an explicit size flag wins over --quick.
struct BenchConfig {
  // Which benchmarks run. Default: all four.
  bool b1 = true;
  bool b2 = true;
  bool b3 = true;
  bool b4 = true;
  // The synchronous levels B1-B3 run at, in table order. Default: FULL, NORMAL.
  std::vector<Synchronous> syncLevels{Synchronous::Full, Synchronous::Normal};
  // Each figure is measured `runs` times and the median is printed.
  int runs = 3;
  // Where the database files go. Empty (the default): a fresh directory under
  // /tmp, removed at the end.
  std::string dir;
  std::size_t b1Instances = 10'000;  // B1: waiting instances completed per run
  std::size_t b2Samples = 2'000;     // B2: completions timed per run
  std::size_t b3Cycles = 5'000;      // B3: full cycles per run
  std::size_t b4Small = 1'000;       // B4: RSS at this many waiting instances...
  std::size_t b4Large = 1'000'000;   // ...and at this many; bytes on disk measured here
  bool help = false;
  // Internal: this process is a fresh child measuring one side of B4.
  B4Side b4Child = B4Side::None;
};

// Parses the command line. InvalidArgument, with the reason, for an unknown
// flag, a missing or malformed value, or a size of zero.
Result<BenchConfig> parseCommandLine(int argc, char** argv);

// The --help text.
std::string usage();

}  // namespace asyncflow::bench
