// B4 waiting cost, at synchronous=NORMAL (neither figure depends on the level).
//
// Bytes on disk per waiting step: (database file size after PRAGMA
// wal_checkpoint(TRUNCATE) with N waiting - the same with 0 waiting) / N, for
// steps with three short fields. Engine: N instances of "Order" waiting at their
// async step (instance, field, step-run and history rows and their indexes).
// Raw: one row per waiting step holding its id, step name, serial secret and
// the three fields.
// Resident memory: VmRSS of a fresh child process with a small and with a large
// number of waiting instances, nothing destroyed in between. A waiting step is
// only rows, and SQLite's page cache is bounded, so the growth should be flat.
// A child per side keeps heap freed by earlier benchmarks from hiding growth.
#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>

#include <sys/wait.h>

#include <fmt/format.h>

#include "benchmarks.hpp"
#include "raw_sqlite.hpp"
#include "workload.hpp"

namespace asyncflow::bench {
namespace {

constexpr double kMiB = 1024.0 * 1024.0;
constexpr std::size_t kRawRowsPerTransaction = 1'000;

// What a child reports, by key.
using Figures = std::map<std::string, double>;

void print(const char* key, double value) {
  std::cout << key << ' ' << fmt::format("{:.6f}", value) << '\n';
}

void startOrders(Engine& engine, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) {
    orThrow(engine.start("Order", orderFields()), "start Order");
  }
}

void measureEngineSide(const BenchConfig& config) {
  const std::string path = config.dir + "/b4_engine.db";
  removeDatabase(path);
  auto store = openCountingStore(path, Synchronous::Normal);
  Engine engine(store, engineOptions(0));
  orThrow(engine.define(waitProcess()), "define Order");
  checkpoint(path);
  const double empty = static_cast<double>(fileBytes(path));
  const SteadyClock::time_point start = SteadyClock::now();
  startOrders(engine, config.b4Small);
  print("rss_small", static_cast<double>(residentBytes()));
  startOrders(engine, config.b4Large - config.b4Small);
  print("rss_large", static_cast<double>(residentBytes()));
  print("seconds", secondsSince(start));
  print("commits_per_start", static_cast<double>(store->applies()) / config.b4Large);
  print("driving", static_cast<double>(engine.stats().drivingInstances));
  checkpoint(path);
  print("bytes_per_step", (static_cast<double>(fileBytes(path)) - empty) / config.b4Large);
}

// Inserts waiting rows `from`..`to` - 1, kRawRowsPerTransaction per transaction.
void insertRawWaiting(SQLite::Database& db, SQLite::Statement& insert, std::size_t from,
                      std::size_t to) {
  while (from < to) {
    SQLite::Transaction batch(db);
    for (std::size_t end = std::min(to, from + kRawRowsPerTransaction); from < end; ++from) {
      insert.bind(1, static_cast<std::int64_t>(from + 1));
      insert.exec();
      insert.reset();
    }
    batch.commit();
  }
}

void measureRawSide(const BenchConfig& config) {
  const std::string path = config.dir + "/b4_raw.db";
  removeDatabase(path);
  SQLite::Database db = openRaw(path, Synchronous::Normal);
  db.exec(
      "CREATE TABLE waiting (instance_id INTEGER PRIMARY KEY, step TEXT NOT NULL, "
      "secret TEXT NOT NULL, order_id TEXT NOT NULL, status TEXT NOT NULL, amount INTEGER NOT "
      "NULL)");
  SQLite::Statement insert(
      db, "INSERT INTO waiting VALUES (?1, 'Wait', 'rKCo6mRGkiz7kFebeSbnGQ', 'A-123', 'New', 120)");
  checkpoint(path);
  const double empty = static_cast<double>(fileBytes(path));
  insertRawWaiting(db, insert, 0, config.b4Small);
  print("rss_small", static_cast<double>(residentBytes()));
  insertRawWaiting(db, insert, config.b4Small, config.b4Large);
  print("rss_large", static_cast<double>(residentBytes()));
  checkpoint(path);
  print("bytes_per_step", (static_cast<double>(fileBytes(path)) - empty) / config.b4Large);
}

std::string shellQuoted(const std::string& text) {
  std::string quoted = "'";
  for (char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

// Runs this program again as a B4 child for `side` and reads its figures.
Figures runChild(const BenchConfig& config, const ScratchDir& dir, const char* side) {
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  const std::string command =
      fmt::format("{} --b4-child {} --dir {} --b4-small {} --b4-large {}", shellQuoted(self), side,
                  shellQuoted(dir.path()), config.b4Small, config.b4Large);
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) throw std::runtime_error("cannot run " + command);
  Figures figures;
  std::array<char, 256> line{};
  while (std::fgets(line.data(), line.size(), pipe) != nullptr) {
    char key[64] = {};
    double value = 0;
    if (std::sscanf(line.data(), "%63s %lf", key, &value) == 2) figures[key] = value;
  }
  const int status = ::pclose(pipe);
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw std::runtime_error(fmt::format("the B4 {} child failed (status {})", side, status));
  }
  return figures;
}

double figure(const Figures& figures, const std::string& key) {
  auto it = figures.find(key);
  if (it == figures.end()) throw std::runtime_error("the B4 child did not report " + key);
  return it->second;
}

void addRows(Report& report, const BenchConfig& config, const Figures& engine, const Figures& raw) {
  report.add(Row{"B4 bytes/waiting step", "NORMAL", grouped(config.b4Large) + " waiting",
                 figure(engine, "bytes_per_step"), figure(raw, "bytes_per_step"), Unit::Bytes,
                 Target::atMost(512, "<= 512 B")},
             std::cerr);
  const double engineGrowth = (figure(engine, "rss_large") - figure(engine, "rss_small")) / kMiB;
  const double rawGrowth = (figure(raw, "rss_large") - figure(raw, "rss_small")) / kMiB;
  report.add(Row{"B4 RSS growth", "NORMAL",
                 fmt::format("{} -> {} waiting", grouped(config.b4Small), grouped(config.b4Large)),
                 engineGrowth, rawGrowth, Unit::MiB, Target::atMost(16, "<= 16 MiB"), false},
             std::cerr);
}

// The absolute figures behind the rows, and what the engine held at the end.
std::string memoryNote(const BenchConfig& config, const Figures& engine, const Figures& raw) {
  return fmt::format(
      "B4: one run (not a median). RSS engine {:.1f} MiB at {} waiting, {:.1f} MiB at {}; raw "
      "{:.1f} -> {:.1f} MiB. Engine: {:.2f} commits per start, {:.0f} s to start {} instances, "
      "{} instances in memory at the end (EngineStats::drivingInstances)",
      figure(engine, "rss_small") / kMiB, grouped(config.b4Small),
      figure(engine, "rss_large") / kMiB, grouped(config.b4Large), figure(raw, "rss_small") / kMiB,
      figure(raw, "rss_large") / kMiB, figure(engine, "commits_per_start"),
      figure(engine, "seconds"), grouped(config.b4Large), figure(engine, "driving"));
}

}  // namespace

void runB4(const BenchConfig& config, const ScratchDir& dir, Report& report) {
  std::cerr << fmt::format("B4: {} waiting instances in a child process (engine, then raw)",
                           grouped(config.b4Large))
            << std::endl;
  const Figures engine = runChild(config, dir, "engine");
  const Figures raw = runChild(config, dir, "raw");
  addRows(report, config, engine, raw);
  report.note(memoryNote(config, engine, raw));
  removeDatabase(dir.file("b4_engine.db"));
  removeDatabase(dir.file("b4_raw.db"));
}

int runB4Child(const BenchConfig& config) {
  if (config.dir.empty()) throw std::runtime_error("--b4-child needs --dir");
  if (config.b4Child == B4Side::Engine) {
    measureEngineSide(config);
  } else {
    measureRawSide(config);
  }
  return 0;
}

}  // namespace asyncflow::bench
