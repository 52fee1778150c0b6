#include "report.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>

#include <fmt/format.h>

namespace asyncflow::bench {
namespace {

constexpr std::size_t kColumns = 8;
using Cells = std::array<std::string, kColumns>;

const Cells kHeader = {"benchmark",  "sync",  "threads/mode", "engine",
                       "raw SQLite", "ratio", "target",       "result"};

std::string formatFigure(double value, Unit unit) {
  switch (unit) {
    case Unit::PerSecond: return grouped(value) + "/s";
    case Unit::Micros: return value < 10 ? fmt::format("{:.1f} us", value) : grouped(value) + " us";
    case Unit::Bytes: return grouped(value) + " B";
    case Unit::MiB: return fmt::format("{:+.1f} MiB", value);
  }
  return {};
}

Cells cellsOf(const Row& row) {
  const auto ratio = row.ratio();
  const auto met = row.met();
  return {row.benchmark,
          row.sync,
          row.mode,
          formatFigure(row.engine, row.unit),
          row.raw ? formatFigure(*row.raw, row.unit) : "-",
          ratio ? fmt::format("{:.2f}x", *ratio) : "-",
          row.target.text.empty() ? "(info)" : row.target.text,
          met ? (*met ? "met" : "MISSED") : "-"};
}

void printAligned(std::ostream& out, const std::vector<Cells>& lines) {
  std::array<std::size_t, kColumns> widths{};
  for (const Cells& cells : lines) {
    for (std::size_t i = 0; i < kColumns; ++i) widths[i] = std::max(widths[i], cells[i].size());
  }
  for (const Cells& cells : lines) {
    std::string line;
    for (std::size_t i = 0; i < kColumns; ++i) {
      line += fmt::format("{:<{}}", cells[i], i + 1 < kColumns ? widths[i] + 2 : 0);
    }
    out << line << '\n';
  }
}

void printMarkdown(std::ostream& out, const std::vector<Cells>& lines) {
  for (std::size_t n = 0; n < lines.size(); ++n) {
    std::string line = "|";
    for (const std::string& cell : lines[n]) line += " " + cell + " |";
    out << line << '\n';
    if (n == 0) out << "|---|---|---|--:|--:|--:|---|---|\n";
  }
}

}  // namespace

std::string grouped(double value) {
  std::string digits = fmt::format("{}", static_cast<std::int64_t>(std::llround(value)));
  const std::size_t first = digits[0] == '-' ? 1 : 0;
  for (std::size_t i = digits.size(); i > first + 3; i -= 3) digits.insert(i - 3, ",");
  return digits;
}

std::string Target::trimmed(double value) { return fmt::format("{}", value); }

std::optional<double> Row::ratio() const {
  if (!comparable || !raw || *raw <= 0) return std::nullopt;
  return engine / *raw;
}

std::optional<bool> Row::met() const {
  switch (target.kind) {
    case Target::Kind::None: return std::nullopt;
    case Target::Kind::RatioAtLeast: {
      const auto r = ratio();
      if (!r) return std::nullopt;
      return *r >= target.bound;
    }
    case Target::Kind::EngineBelow: return engine < target.bound;
    case Target::Kind::EngineAtMost: return engine <= target.bound;
  }
  return std::nullopt;
}

void Report::add(Row row, std::ostream& progress) {
  const Cells cells = cellsOf(row);
  std::string line = "  =>";
  for (const std::string& cell : cells) line += "  " + cell;
  progress << line << std::endl;
  rows_.push_back(std::move(row));
}

void Report::note(std::string line) { notes_.push_back(std::move(line)); }

void Report::print(std::ostream& out) const {
  std::vector<Cells> lines{kHeader};
  for (const Row& row : rows_) lines.push_back(cellsOf(row));
  printAligned(out, lines);
  if (!notes_.empty()) out << '\n';
  for (const std::string& note : notes_) out << "- " << note << '\n';
  out << "\nMarkdown:\n\n";
  printMarkdown(out, lines);
}

}  // namespace asyncflow::bench
