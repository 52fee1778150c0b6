// asyncflow_bench: the table of figures, for people and for the README.
#pragma once

#include <cstddef>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace asyncflow::bench {

// How a figure is shown.
enum class Unit {
  PerSecond,  // a rate: "12,345/s"
  Micros,     // a latency: "85 us"
  Bytes,      // "395 B"
  MiB,        // a memory growth: "+1.2 MiB"
};

// 1234567 -> "1,234,567" (rounded to a whole number).
std::string grouped(double value);
inline std::string grouped(std::size_t count) { return grouped(static_cast<double>(count)); }

// What a figure must reach (the targets of the performance issue).
struct Target {
  enum class Kind {
    None,          // information only
    RatioAtLeast,  // engine / raw >= bound
    EngineBelow,   // engine < bound
    EngineAtMost,  // engine <= bound
  };
  Kind kind = Kind::None;
  double bound = 0;
  std::string text;  // the target as printed, e.g. ">= 0.8x raw"

  static Target none() { return {}; }
  static Target ratioAtLeast(double bound) {
    return Target{Kind::RatioAtLeast, bound, ">= " + trimmed(bound) + "x raw"};
  }
  static Target below(double bound, std::string text) {
    return Target{Kind::EngineBelow, bound, std::move(text)};
  }
  static Target atMost(double bound, std::string text) {
    return Target{Kind::EngineAtMost, bound, std::move(text)};
  }

 private:
  static std::string trimmed(double value);
};

// One line of the table: the engine's figure beside the raw SQLite figure for
// the same durable work, measured in the same run.
struct Row {
  std::string benchmark;      // e.g. "B1 completions/s"
  std::string sync;           // "FULL" or "NORMAL"
  std::string mode;           // "1 thread", "8 threads", "pool", "inline", ...
  double engine = 0;          // the engine's figure (a median over the runs)
  std::optional<double> raw;  // the baseline's figure; empty when there is none
  Unit unit = Unit::PerSecond;
  Target target;
  // False when engine / raw means nothing (a growth beside a growth): no ratio.
  bool comparable = true;

  // engine / raw; empty without a (positive) raw figure, or when not comparable.
  std::optional<double> ratio() const;
  // Whether the target is reached; empty when there is no target.
  std::optional<bool> met() const;
};

// Collects rows and notes, and prints them.
class Report {
 public:
  // Adds a row and echoes it to `progress` as soon as it is measured.
  void add(Row row, std::ostream& progress);
  // A line printed under the table (what a figure is made of, e.g. commits per cycle).
  void note(std::string line);

  // The aligned table, the notes, then the same table in Markdown.
  void print(std::ostream& out) const;

 private:
  std::vector<Row> rows_;
  std::vector<std::string> notes_;
};

}  // namespace asyncflow::bench
