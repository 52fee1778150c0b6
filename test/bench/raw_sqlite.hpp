// asyncflow_bench: the raw SQLiteCpp baselines' connections and minimal writes.
//
// A baseline is what a host would write by hand for the same durable effect:
// the same PRAGMAs as SqliteStore (WAL, the same synchronous level, a busy
// timeout), statements prepared once, BEGIN IMMEDIATE ... COMMIT per unit of work.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <SQLiteCpp/SQLiteCpp.h>

#include "asyncflow/sqlite_store.hpp"

namespace asyncflow::bench {

// "FULL" or "NORMAL".
const char* syncName(Synchronous sync);

// Opens (creating if absent) the database at `path` with SqliteStore's PRAGMAs.
SQLite::Database openRaw(const std::string& path, Synchronous sync);

// Creates a fresh database at `path` whose table step_runs holds `rows` waiting
// step rows, instances 1..rows at run 1, and checkpoints it: a template that the
// B1 and B2 baselines copy before each run.
void createRawWaitingRows(const std::string& path, std::size_t rows);

// One connection completing waiting rows of a createRawWaitingRows database.
class RawCompleter {
 public:
  RawCompleter(const std::string& path, Synchronous sync);

  // One transaction: UPDATE the waiting row (by primary key) to Completed and
  // INSERT the next step's row. Throws unless the row was there.
  void complete(std::int64_t instance);

 private:
  SQLite::Database db_;
  SQLite::Statement begin_;
  SQLite::Statement commit_;
  SQLite::Statement update_;
  SQLite::Statement insert_;
};

// One connection committing one small row per transaction, on a fresh table.
class RawRowWriter {
 public:
  RawRowWriter(const std::string& path, Synchronous sync);

  // One transaction inserting one row (an integer key and a short text).
  void commitOneRow();

 private:
  SQLite::Database db_;
  SQLite::Statement begin_;
  SQLite::Statement commit_;
  SQLite::Statement insert_;
  std::int64_t next_ = 1;
};

}  // namespace asyncflow::bench
