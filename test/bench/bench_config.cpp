#include "bench_config.hpp"

#include <charconv>
#include <optional>
#include <string_view>
#include <vector>

#include <fmt/format.h>

namespace asyncflow::bench {
namespace {

// The sizes given on the command line; empty ones take the (quick) default.
struct Sizes {
  std::optional<std::size_t> b1Instances, b2Samples, b3Cycles, b4Small, b4Large;
  std::optional<int> runs;
};

Result<std::size_t> parseCount(std::string_view flag, std::string_view text) {
  std::size_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size() || value == 0) {
    return fail(Errc::InvalidArgument,
                fmt::format("{} needs a positive whole number, not '{}'", flag, text));
  }
  return value;
}

Result<B4Side> parseSide(std::string_view text) {
  if (text == "engine") return B4Side::Engine;
  if (text == "raw") return B4Side::Raw;
  return fail(Errc::InvalidArgument, fmt::format("--b4-child takes engine or raw, not '{}'", text));
}

Result<std::vector<Synchronous>> parseSync(std::string_view text) {
  if (text == "full" || text == "FULL") return std::vector<Synchronous>{Synchronous::Full};
  if (text == "normal" || text == "NORMAL") return std::vector<Synchronous>{Synchronous::Normal};
  if (text == "both") return std::vector<Synchronous>{Synchronous::Full, Synchronous::Normal};
  return fail(Errc::InvalidArgument,
              fmt::format("--sync takes full, normal or both, not '{}'", text));
}

// Selects the benchmarks named on the command line (the first name clears the
// default "all").
Result<void> select(BenchConfig& config, bool& anySelected, std::string_view name) {
  if (!anySelected) config.b1 = config.b2 = config.b3 = config.b4 = false;
  anySelected = true;
  if (name == "b1" || name == "B1") {
    config.b1 = true;
  } else if (name == "b2" || name == "B2") {
    config.b2 = true;
  } else if (name == "b3" || name == "B3") {
    config.b3 = true;
  } else if (name == "b4" || name == "B4") {
    config.b4 = true;
  } else {
    return fail(Errc::InvalidArgument, fmt::format("unknown benchmark or flag '{}'", name));
  }
  return {};
}

bool takesValue(std::string_view flag) {
  for (std::string_view known : {"--dir", "--sync", "--b4-child", "--runs", "--b1-instances", "--b2-samples",
                                 "--b3-cycles", "--b4-small", "--b4-large"}) {
    if (flag == known) return true;
  }
  return false;
}

// Takes the value of a flag that has one (see takesValue).
Result<void> parseValueFlag(BenchConfig& config, Sizes& sizes, std::string_view flag,
                            std::string_view value) {
  if (flag == "--dir") {
    config.dir = std::string(value);
    return {};
  }
  if (flag == "--sync") {
    auto levels = parseSync(value);
    if (!levels) return tl::unexpected(levels.error());
    config.syncLevels = *levels;
    return {};
  }
  if (flag == "--b4-child") {
    auto side = parseSide(value);
    if (!side) return tl::unexpected(side.error());
    config.b4Child = *side;
    return {};
  }
  auto count = parseCount(flag, value);
  if (!count) return tl::unexpected(count.error());
  if (flag == "--runs") {
    sizes.runs = static_cast<int>(*count);
  } else if (flag == "--b1-instances") {
    sizes.b1Instances = *count;
  } else if (flag == "--b2-samples") {
    sizes.b2Samples = *count;
  } else if (flag == "--b3-cycles") {
    sizes.b3Cycles = *count;
  } else if (flag == "--b4-small") {
    sizes.b4Small = *count;
  } else {  // --b4-large
    sizes.b4Large = *count;
  }
  return {};
}

// --quick sizes, then the explicit ones over them.
void applySizes(BenchConfig& config, bool quick, const Sizes& given) {
  if (quick) {
    config.runs = 3;
    config.b1Instances = 1'000;
    config.b2Samples = 300;
    config.b3Cycles = 500;
    config.b4Small = 1'000;
    config.b4Large = 20'000;
  }
  config.runs = given.runs.value_or(config.runs);
  config.b1Instances = given.b1Instances.value_or(config.b1Instances);
  config.b2Samples = given.b2Samples.value_or(config.b2Samples);
  config.b3Cycles = given.b3Cycles.value_or(config.b3Cycles);
  config.b4Small = given.b4Small.value_or(config.b4Small);
  config.b4Large = given.b4Large.value_or(config.b4Large);
}

}  // namespace

Result<BenchConfig> parseCommandLine(int argc, char** argv) {
  BenchConfig config;
  Sizes sizes;
  bool quick = false;
  bool anySelected = false;
  const std::vector<std::string_view> args(argv + 1, argv + argc);
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string_view arg = args[i];
    if (arg == "--help" || arg == "-h") {
      config.help = true;
      continue;
    }
    if (arg == "--quick") {
      quick = true;
      continue;
    }
    if (arg.substr(0, 2) != "--") {
      if (auto selected = select(config, anySelected, arg); !selected) {
        return tl::unexpected(selected.error());
      }
      continue;
    }
    if (!takesValue(arg)) return fail(Errc::InvalidArgument, fmt::format("unknown flag '{}'", arg));
    if (i + 1 == args.size()) {
      return fail(Errc::InvalidArgument, fmt::format("{} needs a value", arg));
    }
    auto parsed = parseValueFlag(config, sizes, arg, args[++i]);
    if (!parsed) return tl::unexpected(parsed.error());
  }
  applySizes(config, quick, sizes);
  if (config.b4Small >= config.b4Large) {
    return fail(Errc::InvalidArgument, "--b4-small must be below --b4-large");
  }
  return config;
}

std::string usage() {
  return R"(usage: asyncflow_bench [b1] [b2] [b3] [b4] [flags]

Measures asyncflow on SQLite beside a raw SQLiteCpp baseline doing the same
minimal durable work in the same run, at synchronous=FULL and NORMAL.
Without benchmark names, runs all four.

  b1  completion throughput, 1 and 8 threads
  b2  latency from completeServerEvent to the next step's handler, p50/p99
  b3  full cycles per second: start, wait, complete, one sync step, end
  b4  bytes on disk per waiting step; resident memory at two waiting counts

flags:
  --quick            small sizes (smoke test, well under a minute)
  --runs K           measure each figure K times, print the median (default 3)
  --sync LEVEL       full, normal or both (default both)
  --dir PATH         where the database files go (default: a fresh /tmp dir)
  --b1-instances N   B1 waiting instances completed per run (default 10000)
  --b2-samples N     B2 completions timed per run (default 2000)
  --b3-cycles N      B3 cycles per run (default 5000)
  --b4-small N       B4 first waiting count (default 1000)
  --b4-large N       B4 second waiting count (default 1000000)
)";
}

}  // namespace asyncflow::bench
