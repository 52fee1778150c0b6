#include "raw_sqlite.hpp"

#include <stdexcept>
#include <string>

#include "measure.hpp"

namespace asyncflow::bench {
namespace {

// Runs a prepared statement that returns no rows; the rows it changed.
int execute(SQLite::Statement& statement) {
  const int changed = statement.exec();
  statement.reset();
  return changed;
}

// A fresh database at `path` with an empty table of small rows.
SQLite::Database createRowTable(const std::string& path, Synchronous sync) {
  removeDatabase(path);
  SQLite::Database db = openRaw(path, sync);
  db.exec("CREATE TABLE rows (id INTEGER PRIMARY KEY, state TEXT NOT NULL)");
  return db;
}

}  // namespace

const char* syncName(Synchronous sync) { return sync == Synchronous::Full ? "FULL" : "NORMAL"; }

SQLite::Database openRaw(const std::string& path, Synchronous sync) {
  SQLite::Database db(path, SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE);
  db.setBusyTimeout(5000);  // SqliteOptions' default
  // A new file gets SqliteStore's page size, so both sides write pages of the
  // same size; an existing file keeps its own.
  db.exec("PRAGMA page_size = " + std::to_string(SqliteOptions{}.pageSize));
  if (db.execAndGet("PRAGMA journal_mode = WAL").getString() != "wal") {
    throw std::runtime_error(path + ": cannot switch to WAL");
  }
  db.exec(sync == Synchronous::Full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL");
  return db;
}

void createRawWaitingRows(const std::string& path, std::size_t rows) {
  removeDatabase(path);
  {
    SQLite::Database db = openRaw(path, Synchronous::Normal);
    db.exec(
        "CREATE TABLE step_runs (instance_id INTEGER NOT NULL, run INTEGER NOT NULL, "
        "status TEXT NOT NULL, PRIMARY KEY (instance_id, run)) WITHOUT ROWID");
    SQLite::Transaction fill(db);
    SQLite::Statement insert(db, "INSERT INTO step_runs VALUES (?1, 1, 'Waiting')");
    for (std::size_t i = 1; i <= rows; ++i) {
      insert.bind(1, static_cast<std::int64_t>(i));
      execute(insert);
    }
    fill.commit();
  }
  checkpoint(path);
}

RawCompleter::RawCompleter(const std::string& path, Synchronous sync)
    : db_(openRaw(path, sync)), begin_(db_, "BEGIN IMMEDIATE"), commit_(db_, "COMMIT"),
      update_(db_, "UPDATE step_runs SET status = 'Completed' WHERE instance_id = ?1 AND run = 1"),
      insert_(db_, "INSERT INTO step_runs VALUES (?1, 2, 'Ready')") {}

void RawCompleter::complete(std::int64_t instance) {
  execute(begin_);
  update_.bind(1, instance);
  if (execute(update_) != 1) throw std::runtime_error("raw: no waiting row to complete");
  insert_.bind(1, instance);
  execute(insert_);
  execute(commit_);
}

RawRowWriter::RawRowWriter(const std::string& path, Synchronous sync)
    : db_(createRowTable(path, sync)), begin_(db_, "BEGIN IMMEDIATE"), commit_(db_, "COMMIT"),
      insert_(db_, "INSERT INTO rows VALUES (?1, 'Done')") {}

void RawRowWriter::commitOneRow() {
  execute(begin_);
  insert_.bind(1, next_++);
  execute(insert_);
  execute(commit_);
}

}  // namespace asyncflow::bench
