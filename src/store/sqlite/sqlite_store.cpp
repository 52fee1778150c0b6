#include "asyncflow/sqlite_store.hpp"

#include <algorithm>
#include <climits>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <iterator>
#include <limits>
#include <mutex>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <SQLiteCpp/Column.h>
#include <SQLiteCpp/Database.h>
#include <SQLiteCpp/Exception.h>
#include <SQLiteCpp/Statement.h>
#include <SQLiteCpp/Transaction.h>
#include <fmt/format.h>
#include <sqlite3.h>

#include "store/sqlite/sqlite_store_probe.hpp"

namespace asyncflow {
namespace {

// PRAGMA application_id of every asyncflow database: "AFLW" in ASCII. A file
// with tables but another id belongs to another application and is left alone.
constexpr int kApplicationId = 0x41464C57;

// One step of the schema's history, applied in its own transaction.
struct Migration {
  int version;
  const char* description;
  const char* sql;
};

// Created with the first migration; one row per applied migration.
constexpr const char* kMigrationsTableSql = R"sql(
CREATE TABLE asyncflow_migrations (
  version     INTEGER PRIMARY KEY,
  description TEXT    NOT NULL,
  applied_at  INTEGER NOT NULL  -- microseconds since the Unix epoch
);
)sql";

// The schema, oldest first. Never edit a released migration: append a new one.
//
// CHECK constraints spell their allowed values as `x = 'A' OR x = 'B' ...`, not
// `x IN ('A', 'B', ...)`: SQLite evaluates an IN list through a temporary table
// built on every statement, which cost the write path about a quarter of its time.
//
// Conventions operators can rely on: timestamps are INTEGER microseconds since
// the Unix epoch (UTC); NULL where the record says "not yet" (never waited, still
// open, no deadline). Enumerations are stored by name ('Waiting', 'Int64').
// A field's value column has no declared type, so SQLite keeps what was written:
// INTEGER for Int64 and Bool (0/1), REAL for Double, TEXT for String (byte-exact:
// embedded NULs and invalid UTF-8 survive), NULL for Null. SQLite stores a NaN
// double as NULL; a Double field whose value is NULL reads back as NaN.
// Foreign keys are declared for readers and `PRAGMA foreign_key_check`, but not
// enforced: the store writes parents before children in the same transaction.
const Migration kMigrations[] = {
    {1, "instances, fields, step runs, completion fields and the waiting_steps view", R"sql(
CREATE TABLE instances (
  id              INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused
  process         TEXT    NOT NULL,
  process_version INTEGER NOT NULL,
  status          TEXT    NOT NULL
                  CHECK (status = 'Running' OR status = 'Waiting' OR status = 'Completed'
                      OR status = 'Failed' OR status = 'Cancelled'),
  version         INTEGER NOT NULL,  -- optimistic-concurrency counter
  current_run     INTEGER NOT NULL,
  last_run        INTEGER NOT NULL,
  error           TEXT    NOT NULL,
  created_at      INTEGER NOT NULL,
  updated_at      INTEGER NOT NULL
);

-- Recovery: the Running instances of one process version, in id order.
CREATE INDEX instances_running ON instances (process, process_version)
  WHERE status = 'Running';

CREATE TABLE fields (
  instance_id INTEGER NOT NULL REFERENCES instances (id),
  name        TEXT    NOT NULL,
  type        TEXT    NOT NULL CHECK (type = 'Null' OR type = 'Bool' OR type = 'Int64'
                      OR type = 'Double' OR type = 'String'),
  value,
  PRIMARY KEY (instance_id, name)
) WITHOUT ROWID;

-- The key (instance_id, run) is what a serial "{instance_id}_{run}_{secret}" names.
CREATE TABLE step_runs (
  instance_id    INTEGER NOT NULL REFERENCES instances (id),
  run            INTEGER NOT NULL,
  step           TEXT    NOT NULL,
  kind           TEXT    NOT NULL CHECK (kind = 'Sync' OR kind = 'Async'),
  status         TEXT    NOT NULL CHECK (status = 'Ready' OR status = 'Starting' OR status = 'Waiting'
                      OR status = 'Completed' OR status = 'Failed' OR status = 'TimedOut'
                      OR status = 'Cancelled'),
  attempt        INTEGER NOT NULL,
  secret         TEXT    NOT NULL,  -- '' for a bare serial
  has_completion INTEGER NOT NULL,  -- 0 or 1
  error          TEXT    NOT NULL,
  created_at     INTEGER NOT NULL,
  waiting_since  INTEGER,           -- NULL: never waited
  finished_at    INTEGER,           -- NULL: open
  deadline       INTEGER,           -- NULL: no timeout
  PRIMARY KEY (instance_id, run)
) WITHOUT ROWID;

-- Waiting runs in serial order, all of them or of one step; and the timers.
CREATE INDEX step_runs_waiting ON step_runs (instance_id, run)
  WHERE status = 'Waiting';
CREATE INDEX step_runs_waiting_step ON step_runs (step, instance_id, run)
  WHERE status = 'Waiting';
CREATE INDEX step_runs_waiting_deadline ON step_runs (deadline)
  WHERE status = 'Waiting' AND deadline IS NOT NULL;

-- The fields of a completion that arrived before its step waited.
CREATE TABLE completion_fields (
  instance_id INTEGER NOT NULL,
  run         INTEGER NOT NULL,
  name        TEXT    NOT NULL,
  type        TEXT    NOT NULL CHECK (type = 'Null' OR type = 'Bool' OR type = 'Int64'
                      OR type = 'Double' OR type = 'String'),
  value,
  PRIMARY KEY (instance_id, run, name),
  FOREIGN KEY (instance_id, run) REFERENCES step_runs (instance_id, run)
) WITHOUT ROWID;

-- For operators: what waits, under which serial, since when (UTC).
CREATE VIEW waiting_steps AS
SELECT r.instance_id || '_' || r.run ||
         CASE WHEN r.secret = '' THEN '' ELSE '_' || r.secret END AS serial,
       r.instance_id,
       i.process,
       i.process_version,
       r.step,
       datetime(r.waiting_since / 1000000, 'unixepoch') AS waiting_since,
       datetime(r.deadline / 1000000, 'unixepoch') AS deadline
FROM step_runs AS r JOIN instances AS i ON i.id = r.instance_id
WHERE r.status = 'Waiting';
)sql"},
    {2, "correlation keys of step runs, the history table, waiting_steps with the key", R"sql(
-- NULL: the run has no correlation key (the record's empty key).
ALTER TABLE step_runs ADD COLUMN correlation_key TEXT;

-- findByKey: the waiting runs of one step with one business key, in (instance_id,
-- run) order (the table's key ends every index entry).
CREATE INDEX step_runs_waiting_key ON step_runs (step, correlation_key)
  WHERE status = 'Waiting' AND correlation_key IS NOT NULL;

-- Each instance's audit trail; seq numbers its entries 1, 2, ... in write order.
CREATE TABLE history (
  instance_id INTEGER NOT NULL REFERENCES instances (id),
  seq         INTEGER NOT NULL,
  at          INTEGER NOT NULL,
  kind        TEXT    NOT NULL
              CHECK (kind = 'Started' OR kind = 'StepStarted' OR kind = 'Waiting'
                      OR kind = 'CompletionRecorded' OR kind = 'StepCompleted' OR kind = 'StepFailed'
                      OR kind = 'TimedOut' OR kind = 'Heartbeat' OR kind = 'Retried'
                      OR kind = 'Completed' OR kind = 'Failed' OR kind = 'Cancelled'),
  run         INTEGER NOT NULL,  -- 0 for an entry about the instance itself
  step        TEXT    NOT NULL,  -- '' for an entry about the instance itself
  detail      TEXT    NOT NULL,
  PRIMARY KEY (instance_id, seq)
) WITHOUT ROWID;

DROP VIEW waiting_steps;
CREATE VIEW waiting_steps AS
SELECT r.instance_id || '_' || r.run ||
         CASE WHEN r.secret = '' THEN '' ELSE '_' || r.secret END AS serial,
       r.instance_id,
       i.process,
       i.process_version,
       r.step,
       datetime(r.waiting_since / 1000000, 'unixepoch') AS waiting_since,
       datetime(r.deadline / 1000000, 'unixepoch') AS deadline,
       r.correlation_key
FROM step_runs AS r JOIN instances AS i ON i.id = r.instance_id
WHERE r.status = 'Waiting';
)sql"},
};

// --- names of enumerations ----------------------------------------------------------

std::string_view kindName(StepKind kind) noexcept {
  return kind == StepKind::Async ? "Async" : "Sync";
}

constexpr InstanceStatus kInstanceStatuses[] = {InstanceStatus::Running, InstanceStatus::Waiting,
                                                InstanceStatus::Completed, InstanceStatus::Failed,
                                                InstanceStatus::Cancelled};
constexpr StepRunStatus kStepRunStatuses[] = {StepRunStatus::Ready,    StepRunStatus::Starting,
                                              StepRunStatus::Waiting,  StepRunStatus::Completed,
                                              StepRunStatus::Failed,   StepRunStatus::TimedOut,
                                              StepRunStatus::Cancelled};
constexpr StepKind kStepKinds[] = {StepKind::Sync, StepKind::Async};
constexpr Type kTypes[] = {Type::Null, Type::Bool, Type::Int64, Type::Double, Type::String};
constexpr HistoryKind kHistoryKinds[] = {
    HistoryKind::Started,       HistoryKind::StepStarted,
    HistoryKind::Waiting,       HistoryKind::CompletionRecorded,
    HistoryKind::StepCompleted, HistoryKind::StepFailed,
    HistoryKind::TimedOut,      HistoryKind::Heartbeat,
    HistoryKind::Retried,       HistoryKind::Completed,
    HistoryKind::Failed,        HistoryKind::Cancelled};

std::string_view nameOf(InstanceStatus s) { return statusName(s); }
std::string_view nameOf(StepRunStatus s) { return statusName(s); }
std::string_view nameOf(StepKind k) { return kindName(k); }
std::string_view nameOf(Type t) { return typeName(t); }
std::string_view nameOf(HistoryKind k) { return historyKindName(k); }

// The enumerator named `text`; throws (a StoreError for the caller) when the
// database holds a name this library does not know.
template <class Enum, std::size_t N>
Enum parseName(std::string_view text, const Enum (&all)[N], const char* what) {
  for (Enum candidate : all) {
    if (nameOf(candidate) == text) return candidate;
  }
  throw std::runtime_error(fmt::format("the database holds an unknown {} '{}'", what, text));
}

// --- values --------------------------------------------------------------------------

// SQLite's default SQLITE_MAX_LENGTH: a longer string or blob cannot be stored.
constexpr std::size_t kMaxBytes = 1'000'000'000;

std::int64_t toMicros(Timestamp t) {
  return std::chrono::floor<std::chrono::microseconds>(t.time_since_epoch()).count();
}

Timestamp fromMicros(std::int64_t micros) {
  using std::chrono::microseconds;
  constexpr std::int64_t kLimit =
      std::chrono::duration_cast<microseconds>(Timestamp::duration::max()).count();
  if (micros > kLimit || micros < -kLimit) {
    throw std::runtime_error(
        fmt::format("the database holds a timestamp out of range: {}", micros));
  }
  return Timestamp(std::chrono::duration_cast<Timestamp::duration>(microseconds(micros)));
}

// The text of a column, byte-exact (embedded NULs included).
std::string bytesOf(const SQLite::Column& column) {
  // sqlite3_column_blob before sqlite3_column_bytes, as SQLite documents.
  const char* data = static_cast<const char*>(column.getBlob());
  const int size = column.getBytes();
  return size > 0 && data != nullptr ? std::string(data, static_cast<std::size_t>(size))
                                     : std::string();
}

void bindText(SQLite::Statement& statement, int index, const std::string& text) {
  if (text.size() > kMaxBytes) {
    throw std::length_error(
        fmt::format("a string of {} bytes is longer than SQLite stores", text.size()));
  }
  statement.bind(index, text);  // sqlite3_bind_text with the explicit length
}

// Binds the name of an enumerator (statusName, typeName, ...) as text, without a
// copy: those names are NUL-terminated literals that outlive every statement.
void bindName(SQLite::Statement& statement, int index, std::string_view name) {
  statement.bindNoCopy(index, name.data());
}

void bindTime(SQLite::Statement& statement, int index, Timestamp t) {
  statement.bind(index, static_cast<std::int64_t>(toMicros(t)));
}

// The epoch ("not yet") is NULL.
void bindTimeOrNull(SQLite::Statement& statement, int index, Timestamp t) {
  if (t == Timestamp{}) {
    statement.bind(index);
  } else {
    bindTime(statement, index, t);
  }
}

Timestamp timeOrEpoch(const SQLite::Column& column) {
  return column.isNull() ? Timestamp{} : fromMicros(column.getInt64());
}

// Binds a field's type name to `index` and its value to `index + 1`.
void bindValue(SQLite::Statement& statement, int index, const Value& value) {
  bindName(statement, index, typeName(value.type()));
  std::visit(
      [&](const auto& v) {
        using V = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<V, std::monostate>) {
          statement.bind(index + 1);
        } else if constexpr (std::is_same_v<V, bool>) {
          statement.bind(index + 1, v ? 1 : 0);
        } else if constexpr (std::is_same_v<V, std::int64_t>) {
          statement.bind(index + 1, v);
        } else if constexpr (std::is_same_v<V, double>) {
          statement.bind(index + 1, v);  // NaN becomes NULL; see readValue
        } else {
          bindText(statement, index + 1, v);
        }
      },
      value.variant());
}

// Reads the type name at column `index` and the value at `index + 1`. A value
// whose storage class does not fit its type (an operator's edit, or corruption)
// is an error naming the field.
Value readValue(const SQLite::Statement& row, int index, const std::string& name) {
  const Type type =
      parseName(std::string_view(row.getColumn(index).getText()), kTypes, "field type");
  const SQLite::Column value = row.getColumn(index + 1);
  const int storage = value.getType();
  switch (type) {
    case Type::Null:
      if (storage == SQLITE_NULL) return Value();
      break;
    case Type::Bool:
      if (storage == SQLITE_INTEGER) {
        const std::int64_t b = value.getInt64();
        if (b == 0 || b == 1) return Value(b == 1);
      }
      break;
    case Type::Int64:
      if (storage == SQLITE_INTEGER) return Value(value.getInt64());
      break;
    case Type::Double:
      if (storage == SQLITE_FLOAT || storage == SQLITE_INTEGER) return Value(value.getDouble());
      if (storage == SQLITE_NULL) return Value(std::numeric_limits<double>::quiet_NaN());
      break;
    case Type::String:
      if (storage == SQLITE_TEXT || storage == SQLITE_BLOB) return Value(bytesOf(value));
      break;
  }
  throw std::runtime_error(
      fmt::format("field '{}' holds a value that is not a {}", name, typeName(type)));
}

// --- errors ---------------------------------------------------------------------------

// What a SQLite result code means for a caller, without the SQL.
std::string_view describe(const SQLite::Exception& e) {
  const int code = e.getErrorCode();
  switch (code < 0 ? code : code & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return "database is busy: another connection held its lock for longer than the busy "
             "timeout";
    case SQLITE_FULL: return "database or disk is full";
    case SQLITE_IOERR: return "disk I/O error";
    case SQLITE_CORRUPT: return "database file is corrupt";
    case SQLITE_NOTADB: return "file is not a database";
    case SQLITE_READONLY: return "database is read-only";
    case SQLITE_PERM:
    case SQLITE_AUTH: return "access to the database was denied";
    case SQLITE_CANTOPEN: return "cannot open the database file";
    case SQLITE_NOMEM: return "out of memory";
    case SQLITE_CONSTRAINT: return "the schema refused a row (a constraint failed)";
    case SQLITE_TOOBIG: return "a value is too large for SQLite";
    default: return "SQLite failed";
  }
}

bool isNotADatabase(const SQLite::Exception& e) {
  return e.getErrorCode() >= 0 && (e.getErrorCode() & 0xff) == SQLITE_NOTADB;
}

Error storeError(std::string_view operation, const SQLite::Exception& e) {
  return Error(Errc::StoreError, fmt::format("{}: {} ({})", operation, describe(e), e.what()));
}

// Runs `body`, mapping every exception it throws to a StoreError for `operation`.
template <class F>
auto mapExceptions(std::string_view operation, F&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const SQLite::Exception& e) {
    return tl::unexpected(storeError(operation, e));
  } catch (const std::bad_alloc&) {
    return fail(Errc::StoreError, fmt::format("{}: out of memory", operation));
  } catch (const std::exception& e) {
    return fail(Errc::StoreError, fmt::format("{}: {}", operation, e.what()));
  } catch (...) {
    return fail(Errc::StoreError, fmt::format("{}: unknown error", operation));
  }
}

std::int64_t limitOf(std::size_t limit) {
  return static_cast<std::int64_t>(
      std::min<std::size_t>(limit, static_cast<std::size_t>(INT64_MAX)));
}

// --- opening: identify, configure, migrate --------------------------------------------

// What a file holds, read before anything is written to it.
struct Identity {
  int applicationId = 0;
  bool hasSchema = false;      // sqlite_master lists any table, index, view or trigger
  bool hasMigrations = false;  // asyncflow_migrations exists
  int version = 0;             // newest applied migration; 0 when none
};

// Reads the identity. Only reads: a foreign file is not modified. Call inside a
// transaction so that the reads agree with each other.
Identity readIdentity(SQLite::Database& db) {
  Identity id;
  id.applicationId = db.execAndGet("PRAGMA application_id").getInt();
  id.hasSchema = db.execAndGet("SELECT EXISTS (SELECT 1 FROM sqlite_master)").getInt() != 0;
  id.hasMigrations = db.tableExists("asyncflow_migrations");
  if (id.applicationId == kApplicationId && id.hasMigrations) {
    id.version =
        db.execAndGet("SELECT coalesce(max(version), 0) FROM asyncflow_migrations").getInt();
  }
  return id;
}

// Whether asyncflow may use a file with this identity; on success, whether it is
// empty (to be initialised).
Result<bool> classify(const std::string& path, const Identity& id) {
  if (id.applicationId == kApplicationId) {
    if (!id.hasMigrations) {
      return fail(Errc::StoreError,
                  fmt::format("{} is an asyncflow database without its asyncflow_migrations "
                              "table; it is damaged",
                              path));
    }
    if (id.version > SqliteStore::schemaVersion()) {
      return fail(Errc::StoreError,
                  fmt::format("{}: schema version {} is newer than this library's {}; use a "
                              "newer asyncflow",
                              path, id.version, SqliteStore::schemaVersion()));
    }
    return false;
  }
  if (id.applicationId == 0 && !id.hasSchema) return true;
  return fail(
      Errc::StoreError,
      fmt::format("{} is not an asyncflow database (it belongs to another application)", path));
}

// The file's schema version (0 when it is empty), or why asyncflow must not use it.
Result<int> identify(SQLite::Database& db, const std::string& path) {
  SQLite::Transaction read(db, SQLite::TransactionBehavior::DEFERRED);
  const Identity id = readIdentity(db);
  read.commit();
  auto empty = classify(path, id);
  if (!empty) return tl::unexpected(empty.error());
  return id.version;
}

Result<void> configure(SQLite::Database& db, const std::string& path,
                       const SqliteOptions& options) {
  // Takes effect only while the file is empty (before journal_mode writes its
  // header); an existing file keeps its page size.
  db.exec(fmt::format("PRAGMA page_size = {}", options.pageSize));
  const std::string mode = db.execAndGet("PRAGMA journal_mode = WAL").getString();
  // ":memory:" databases cannot use WAL and keep their "memory" journal.
  if (mode != "wal" && mode != "memory") {
    return fail(Errc::StoreError,
                fmt::format("{}: cannot switch to WAL journal mode (it stays '{}')", path, mode));
  }
  db.exec(options.synchronous == Synchronous::Normal ? "PRAGMA synchronous = NORMAL"
                                                     : "PRAGMA synchronous = FULL");
  // Per connection, so it caps this store's writes only; set before migrating,
  // so the schema counts against it too.
  if (options.maxPageCount > 0) {
    db.exec(fmt::format("PRAGMA max_page_count = {}", options.maxPageCount));
  }
  return {};
}

// Applies the migrations newer than `version`, each in one transaction; none
// (and no lock taken) when the file is current. Another process may be opening
// the same file: each transaction identifies the file again under the write
// lock and skips what that process applied meanwhile.
Result<void> migrate(SQLite::Database& db, const std::string& path, int version) {
  for (const Migration& migration : kMigrations) {
    if (migration.version <= version) continue;
    SQLite::Transaction write(db, SQLite::TransactionBehavior::IMMEDIATE);
    const Identity id = readIdentity(db);
    auto empty = classify(path, id);
    if (!empty) return tl::unexpected(empty.error());
    if (id.version >= migration.version) continue;  // rolls back an empty transaction
    if (*empty) {
      db.exec(kMigrationsTableSql);
      db.exec(fmt::format("PRAGMA application_id = {}", kApplicationId));
    }
    db.exec(migration.sql);
    SQLite::Statement record(
        db, "INSERT INTO asyncflow_migrations (version, description, applied_at) VALUES (?, ?, ?)");
    record.bind(1, migration.version);
    record.bind(2, migration.description);
    record.bind(3, static_cast<std::int64_t>(toMicros(std::chrono::system_clock::now())));
    record.exec();
    write.commit();
  }
  return {};
}

// --- SQL of the cached statements ----------------------------------------------------

// Instance columns written from an InstanceRecord (id and version aside), in
// the order bindHeader binds and loadInstance reads them.
constexpr const char* kInstanceColumnNames[] = {"process",     "process_version", "status",
                                                "current_run", "last_run",        "error",
                                                "created_at",  "updated_at"};

// Step-run columns, in the order writeStepRun binds and readStepRun reads them.
constexpr const char* kRunColumnNames[] = {
    "instance_id",   "run",         "step",           "kind",           "status",
    "attempt",       "secret",      "has_completion", "error",          "created_at",
    "waiting_since", "finished_at", "deadline",       "correlation_key"};
constexpr int kRunColumns = static_cast<int>(std::size(kRunColumnNames));

// "t.a, t.b, ..." (or "a, b, ..." without a table).
template <std::size_t N>
std::string columnList(const char* const (&names)[N], std::string_view table = {}) {
  std::string out;
  for (const char* name : names) {
    if (!out.empty()) out += ", ";
    if (!table.empty()) out += fmt::format("{}.", table);
    out += name;
  }
  return out;
}

// "?1, ?2, ..., ?count".
std::string parameters(int count) {
  std::string out;
  for (int i = 1; i <= count; ++i) out += (i == 1 ? "?" : ", ?") + std::to_string(i);
  return out;
}

// "a = ?1, b = ?2, ...".
template <std::size_t N>
std::string assignments(const char* const (&names)[N]) {
  std::string out;
  for (std::size_t i = 0; i < N; ++i) {
    if (!out.empty()) out += ", ";
    out += fmt::format("{} = ?{}", names[i], i + 1);
  }
  return out;
}

// "a = excluded.a, ..." for the columns of an upsert after the key's `keyColumns`.
template <std::size_t N>
std::string updateFromExcluded(const char* const (&names)[N], std::size_t keyColumns) {
  std::string out;
  for (std::size_t i = keyColumns; i < N; ++i) {
    if (!out.empty()) out += ", ";
    out += fmt::format("{0} = excluded.{0}", names[i]);
  }
  return out;
}

// A page of waiting runs with their completion fields; filters are ?3 (process)
// and ?4 (step), each present only in the statement that filters on it, so that
// the planner can pick the partial index that serves the query.
std::string waitingSql(bool byProcess, bool byStep) {
  return fmt::format(
      "SELECT {}, w.process, w.process_version, c.name, c.type, c.value "
      "FROM (SELECT {}, i.process AS process, i.process_version AS process_version "
      "      FROM step_runs AS r JOIN instances AS i ON i.id = r.instance_id "
      "      WHERE r.status = 'Waiting' AND (r.instance_id, r.run) > (?1, ?2){}{} "
      "      ORDER BY r.instance_id, r.run LIMIT ?5) AS w "
      "LEFT JOIN completion_fields AS c ON c.instance_id = w.instance_id AND c.run = w.run "
      "ORDER BY w.instance_id, w.run",
      columnList(kRunColumnNames, "w"), columnList(kRunColumnNames, "r"),
      byProcess ? " AND i.process = ?3" : "", byStep ? " AND r.step = ?4" : "");
}

// The read statements, prepared on one connection.
struct Reads {
  explicit Reads(SQLite::Database& db)
      : instance(db, fmt::format("SELECT {}, i.version, f.name, f.type, f.value "
                                 "FROM instances AS i LEFT JOIN fields AS f "
                                 "ON f.instance_id = i.id WHERE i.id = ?1",
                                 columnList(kInstanceColumnNames, "i"))),
        stepRun(db, fmt::format("SELECT {}, c.name, c.type, c.value "
                                "FROM step_runs AS r LEFT JOIN completion_fields AS c "
                                "ON c.instance_id = r.instance_id AND c.run = r.run "
                                "WHERE r.instance_id = ?1 AND r.run = ?2",
                                columnList(kRunColumnNames, "r"))),
        waiting{SQLite::Statement(db, waitingSql(false, false)),
                SQLite::Statement(db, waitingSql(false, true)),
                SQLite::Statement(db, waitingSql(true, false)),
                SQLite::Statement(db, waitingSql(true, true))},
        running(db,
                "SELECT id FROM instances WHERE status = 'Running' AND process = ?1 "
                "AND process_version = ?2 AND id > ?3 ORDER BY id LIMIT ?4"),
        history(db,
                "SELECT at, kind, run, step, detail FROM history WHERE instance_id = ?1 "
                "ORDER BY seq"),
        nextDeadline(db,
                     "SELECT min(deadline) FROM step_runs "
                     "WHERE status = 'Waiting' AND deadline IS NOT NULL AND deadline > ?1"),
        // The partial index on deadline ends each entry with the table's key, so
        // (deadline, instance_id, run) is its order: a keyset page is one range.
        due(db,
            "SELECT instance_id, run, deadline FROM step_runs "
            "WHERE status = 'Waiting' AND deadline IS NOT NULL AND deadline <= ?1 "
            "AND (deadline, instance_id, run) > (?2, ?3, ?4) "
            "ORDER BY deadline, instance_id, run LIMIT ?5"),
        byKey(db,
              "SELECT r.instance_id, r.run "
              "FROM step_runs AS r JOIN instances AS i ON i.id = r.instance_id "
              "WHERE r.status = 'Waiting' AND r.step = ?2 "
              "AND r.correlation_key IS NOT NULL AND r.correlation_key = ?3 "
              "AND i.process = ?1 ORDER BY r.instance_id, r.run LIMIT ?4") {}

  SQLite::Statement instance;
  SQLite::Statement stepRun;
  SQLite::Statement waiting[4];  // index: (by process ? 2 : 0) + (by step ? 1 : 0)
  SQLite::Statement running;
  SQLite::Statement history;
  SQLite::Statement nextDeadline;
  SQLite::Statement due;
  SQLite::Statement byKey;
};

}  // namespace

// --- the store ------------------------------------------------------------------------

class SqliteStore::Impl {
 public:
  // `db` is open, configured and migrated; `reader`, when given, is a read-only
  // connection to the same file. Prepares every statement once.
  Impl(SQLite::Database db, std::unique_ptr<SQLite::Database> reader, std::size_t maxGroupSize)
      : db_(std::move(db)), reader_(std::move(reader)),
        maxGroupSize_(std::max<std::size_t>(maxGroupSize, 1)), begin_(db_, "BEGIN IMMEDIATE"),
        commit_(db_, "COMMIT"), rollback_(db_, "ROLLBACK"), savepoint_(db_, "SAVEPOINT batch"),
        releaseSavepoint_(db_, "RELEASE batch"), rollbackToSavepoint_(db_, "ROLLBACK TO batch"),
        insertInstance_(db_, fmt::format("INSERT INTO instances ({}, version) VALUES ({}, 1)",
                                         columnList(kInstanceColumnNames), parameters(8))),
        updateInstance_(db_, fmt::format("UPDATE instances SET {}, version = ?9 "
                                         "WHERE id = ?10 AND version = ?11",
                                         assignments(kInstanceColumnNames))),
        upsertField_(db_,
                     "INSERT INTO fields (instance_id, name, type, value) VALUES (?1, ?2, ?3, ?4) "
                     "ON CONFLICT (instance_id, name) DO UPDATE "
                     "SET type = excluded.type, value = excluded.value"),
        upsertStepRun_(db_, fmt::format("INSERT INTO step_runs ({}) VALUES ({}) "
                                        "ON CONFLICT (instance_id, run) DO UPDATE SET {}",
                                        columnList(kRunColumnNames), parameters(kRunColumns),
                                        updateFromExcluded(kRunColumnNames, 2))),
        deleteCompletion_(db_, "DELETE FROM completion_fields WHERE instance_id = ?1 AND run = ?2"),
        insertCompletion_(db_,
                          "INSERT INTO completion_fields (instance_id, run, name, type, value) "
                          "VALUES (?1, ?2, ?3, ?4, ?5)"),
        // seq continues the instance's numbering: a max() on the primary key, one
        // seek. A subquery in VALUES, not INSERT ... SELECT FROM history, which
        // SQLite would stage in a temporary table on every insert.
        insertHistory_(db_,
                       "INSERT INTO history (instance_id, seq, at, kind, run, step, detail) "
                       "VALUES (?1, (SELECT coalesce(max(seq), 0) + 1 FROM history "
                       "WHERE instance_id = ?1), ?2, ?3, ?4, ?5, ?6)"),
        writerReads_(db_),
        readerReads_(reader_ != nullptr ? std::make_unique<Reads>(*reader_) : nullptr) {}

  Result<InstanceSnapshot> loadInstance(InstanceId id) {
    return mapExceptions("loadInstance", [&]() -> Result<InstanceSnapshot> {
      ReadLease lease(*this);
      // One statement, so the header and the fields come from one snapshot.
      SQLite::Statement& s = lease.reads().instance;
      Use use(s);
      s.bind(1, static_cast<std::int64_t>(id));
      if (!s.executeStep()) return fail(Errc::NotFound, fmt::format("no instance {}", id));
      InstanceSnapshot snapshot;
      InstanceRecord& r = snapshot.record;
      r.id = id;
      r.process = bytesOf(s.getColumn(0));
      r.processVersion = s.getColumn(1).getInt();
      r.status = parseName(std::string_view(s.getColumn(2).getText()), kInstanceStatuses,
                           "instance status");
      r.currentRun = s.getColumn(3).getInt64();
      r.lastRun = s.getColumn(4).getInt64();
      r.error = bytesOf(s.getColumn(5));
      r.createdAt = fromMicros(s.getColumn(6).getInt64());
      r.updatedAt = fromMicros(s.getColumn(7).getInt64());
      r.version = static_cast<std::uint64_t>(s.getColumn(8).getInt64());
      do {
        if (s.isColumnNull(9)) continue;  // no fields: the LEFT JOIN's one empty row
        std::string name = bytesOf(s.getColumn(9));
        Value value = readValue(s, 10, name);
        snapshot.fields.set(name, std::move(value));
      } while (s.executeStep());
      return snapshot;
    });
  }

  Result<StepRunRecord> loadStepRun(InstanceId instance, std::int64_t run) {
    return mapExceptions("loadStepRun", [&]() -> Result<StepRunRecord> {
      ReadLease lease(*this);
      SQLite::Statement& s = lease.reads().stepRun;
      Use use(s);
      s.bind(1, static_cast<std::int64_t>(instance));
      s.bind(2, run);
      if (!s.executeStep()) {
        return fail(Errc::NotFound, fmt::format("no step run {}_{}", instance, run));
      }
      StepRunRecord record = readStepRun(s);
      do {
        addCompletionField(s, kRunColumns, record);
      } while (s.executeStep());
      return record;
    });
  }

  // Group commit. The caller queues its batch; the caller at the head of the
  // queue leads: it writes the batches queued so far (its own first) in one
  // transaction, hands every caller its result, and wakes the next head, whose
  // group holds the batches that arrived meanwhile.
  Result<std::vector<ApplyResult>> apply(std::vector<ChangeSet> batch) {
    if (batch.empty()) return std::vector<ApplyResult>{};
    Writer self(batch);
    std::unique_lock lock(queueMutex_);
    (tail_ != nullptr ? tail_->next : head_) = &self;
    tail_ = &self;
    self.wake.wait(lock, [&] { return self.done || head_ == &self; });
    if (self.done) return std::move(self.result);

    // The group: this caller and those queued behind it, up to maxGroupSize_.
    // Callers arriving meanwhile link in after `last`; the group's links hold still.
    Writer* last = &self;
    for (std::size_t size = 1; size < maxGroupSize_ && last->next != nullptr; ++size) {
      last = last->next;
    }
    lock.unlock();
    writeGroup(self, *last);
    lock.lock();
    head_ = last->next;
    if (head_ == nullptr) tail_ = nullptr;
    for (Writer* writer = &self;;) {
      Writer* next = writer->next;
      writer->done = true;
      // Under the lock: a caller that sees `done` returns and destroys `wake`.
      writer->wake.notify_one();
      if (writer == last) break;
      writer = next;
    }
    if (head_ != nullptr) head_->wake.notify_one();
    return std::move(self.result);
  }

  std::size_t queuedWrites() {
    std::lock_guard lock(queueMutex_);
    std::size_t count = 0;
    for (const Writer* writer = head_; writer != nullptr; writer = writer->next) ++count;
    return count;
  }

  Result<std::vector<WaitingRow>> listWaiting(const WaitingQuery& query) {
    return mapExceptions("listWaiting", [&]() -> Result<std::vector<WaitingRow>> {
      ReadLease lease(*this);
      const bool byProcess = !query.process.empty();
      const bool byStep = !query.step.empty();
      SQLite::Statement& s = lease.reads().waiting[(byProcess ? 2 : 0) + (byStep ? 1 : 0)];
      Use use(s);
      s.bind(1, static_cast<std::int64_t>(query.afterInstance));
      s.bind(2, query.afterRun);
      if (byProcess) bindText(s, 3, query.process);
      if (byStep) bindText(s, 4, query.step);
      s.bind(5, limitOf(query.limit));
      std::vector<WaitingRow> rows;
      while (s.executeStep()) {
        const InstanceId instance = s.getColumn(0).getInt64();
        const std::int64_t run = s.getColumn(1).getInt64();
        // Rows repeat a run once per completion field; a new key starts a new run.
        if (rows.empty() || rows.back().run.instance != instance || rows.back().run.run != run) {
          WaitingRow row;
          row.run = readStepRun(s);
          row.process = bytesOf(s.getColumn(kRunColumns));
          row.processVersion = s.getColumn(kRunColumns + 1).getInt();
          rows.push_back(std::move(row));
        }
        addCompletionField(s, kRunColumns + 2, rows.back().run);
      }
      return rows;
    });
  }

  Result<std::vector<InstanceId>> listRunning(const RunningQuery& query) {
    return mapExceptions("listRunning", [&]() -> Result<std::vector<InstanceId>> {
      ReadLease lease(*this);
      SQLite::Statement& s = lease.reads().running;
      Use use(s);
      bindText(s, 1, query.process);
      s.bind(2, query.processVersion);
      s.bind(3, static_cast<std::int64_t>(query.afterInstance));
      s.bind(4, limitOf(query.limit));
      std::vector<InstanceId> ids;
      while (s.executeStep()) ids.push_back(s.getColumn(0).getInt64());
      return ids;
    });
  }

  Result<std::optional<Timestamp>> nextDeadline(Timestamp after) {
    return mapExceptions("nextDeadline", [&]() -> Result<std::optional<Timestamp>> {
      ReadLease lease(*this);
      SQLite::Statement& s = lease.reads().nextDeadline;
      Use use(s);
      bindTime(s, 1, after);
      std::optional<Timestamp> earliest;
      // An aggregate always answers one row: NULL when no waiting run has a deadline.
      if (s.executeStep() && !s.isColumnNull(0)) earliest = fromMicros(s.getColumn(0).getInt64());
      return earliest;
    });
  }

  Result<std::vector<DueRun>> listDue(const DueQuery& query) {
    return mapExceptions("listDue", [&]() -> Result<std::vector<DueRun>> {
      ReadLease lease(*this);
      SQLite::Statement& s = lease.reads().due;
      Use use(s);
      bindTime(s, 1, query.now);
      if (query.after) {
        bindTime(s, 2, query.after->deadline);
        s.bind(3, static_cast<std::int64_t>(query.after->key.instance));
        s.bind(4, query.after->key.run);
      } else {
        s.bind(2, std::numeric_limits<std::int64_t>::min());  // before every deadline
        s.bind(3, std::int64_t{0});
        s.bind(4, std::int64_t{0});
      }
      s.bind(5, limitOf(query.limit));
      std::vector<DueRun> due;
      while (s.executeStep()) {
        due.push_back(DueRun{StepRunKey{s.getColumn(0).getInt64(), s.getColumn(1).getInt64()},
                             fromMicros(s.getColumn(2).getInt64())});
      }
      return due;
    });
  }

  Result<std::vector<StepRunKey>> findByKey(const KeyQuery& query) {
    return mapExceptions("findByKey", [&]() -> Result<std::vector<StepRunKey>> {
      // The empty key means "no key" (stored as NULL): it names no run.
      if (query.key.empty()) return std::vector<StepRunKey>{};
      ReadLease lease(*this);
      SQLite::Statement& s = lease.reads().byKey;
      Use use(s);
      bindText(s, 1, query.process);
      bindText(s, 2, query.step);
      bindText(s, 3, query.key);
      s.bind(4, limitOf(query.limit));
      return readKeys(s);
    });
  }

  Result<std::vector<HistoryEvent>> loadHistory(InstanceId id) {
    return mapExceptions("loadHistory", [&]() -> Result<std::vector<HistoryEvent>> {
      ReadLease lease(*this);
      SQLite::Statement& s = lease.reads().history;
      Use use(s);
      s.bind(1, static_cast<std::int64_t>(id));
      std::vector<HistoryEvent> events;
      while (s.executeStep()) {
        HistoryEvent event;
        event.instance = id;
        event.at = fromMicros(s.getColumn(0).getInt64());
        event.kind =
            parseName(std::string_view(s.getColumn(1).getText()), kHistoryKinds, "history kind");
        event.run = s.getColumn(2).getInt64();
        event.step = bytesOf(s.getColumn(3));
        event.detail = bytesOf(s.getColumn(4));
        events.push_back(std::move(event));
      }
      return events;
    });
  }

 private:
  // A caller of apply() in the commit queue, on its own stack. The leader writes
  // `result`, then sets `done` under queueMutex_; the caller reads `result` after
  // seeing `done`.
  struct Writer {
    explicit Writer(std::vector<ChangeSet>& sets) : batch(sets) {}
    std::vector<ChangeSet>& batch;
    Writer* next = nullptr;  // the caller queued behind; guarded by queueMutex_
    Result<std::vector<ApplyResult>> result;
    bool done = false;
    std::condition_variable wake;  // done, or this caller now heads the queue
  };

  static constexpr std::string_view kApply = "apply (nothing was written)";

  // Writes the batches of writers first..last in one transaction, setting each
  // one's result. Alone, a batch is the transaction. Together, each batch is a
  // savepoint: an error rolls back that batch only; a failed COMMIT fails all.
  // noexcept: an exception here would strand the group's callers.
  void writeGroup(Writer& first, Writer& last) noexcept {
    std::lock_guard lock(mutex_);
    if (&first == &last) {
      Writer& writer = first;
      writer.result = mapExceptions(kApply, [&]() -> Result<std::vector<ApplyResult>> {
        WriteTransaction transaction(*this);
        std::vector<ApplyResult> results = applySets(writer.batch);
        transaction.commit();
        return results;
      });
      return;
    }
    const Result<void> committed = mapExceptions(kApply, [&]() -> Result<void> {
      WriteTransaction transaction(*this);
      for (Writer* writer = &first;; writer = writer->next) {
        writer->result = mapExceptions(kApply, [&] { return applyInSavepoint(writer->batch); });
        // An I/O error, a full disk or a trigger's RAISE(ROLLBACK) can make SQLite
        // roll back the whole transaction: then no batch of the group is written.
        if (!writer->result && sqlite3_get_autocommit(db_.getHandle()) != 0) {
          return tl::unexpected(writer->result.error());
        }
        if (writer == &last) break;
      }
      transaction.commit();
      return {};
    });
    if (!committed) {
      for (Writer* writer = &first;; writer = writer->next) {
        writer->result = tl::unexpected(committed.error());
        if (writer == &last) break;
      }
    }
  }

  // The batch's sets inside SAVEPOINT batch: released when every set was
  // written or found in conflict, rolled back to and released when one throws.
  Result<std::vector<ApplyResult>> applyInSavepoint(std::vector<ChangeSet>& batch) {
    run(savepoint_);
    try {
      std::vector<ApplyResult> results = applySets(batch);
      run(releaseSavepoint_);
      return results;
    } catch (...) {
      // Undo the batch's writes. If that fails while the transaction lives on,
      // roll it all back rather than commit half a batch: writeGroup then fails
      // the group. When SQLite already rolled it back, these fail harmlessly.
      const bool undone = rollbackToSavepoint_.tryExecuteStep() == SQLITE_DONE;
      rollbackToSavepoint_.tryReset();
      SQLite::Statement& end = undone ? releaseSavepoint_ : rollback_;
      end.tryExecuteStep();
      end.tryReset();
      throw;
    }
  }

  std::vector<ApplyResult> applySets(std::vector<ChangeSet>& batch) {
    std::vector<ApplyResult> results;
    results.reserve(batch.size());
    for (ChangeSet& set : batch) results.push_back(applySet(set));
    return results;
  }

  // One use of a cached statement: on exit, also by exception, resets it (so no
  // statement keeps a read transaction open) and drops its parameters.
  class Use {
   public:
    explicit Use(SQLite::Statement& statement) : statement_(statement) {}
    ~Use() {
      statement_.tryReset();
      try {
        statement_.clearBindings();  // sqlite3_clear_bindings cannot fail
      } catch (...) {
      }
    }
    Use(const Use&) = delete;
    Use& operator=(const Use&) = delete;

   private:
    SQLite::Statement& statement_;
  };

  // BEGIN IMMEDIATE ... COMMIT on the cached statements. IMMEDIATE takes the
  // write lock at once, so a locked database makes BEGIN wait (busy timeout)
  // instead of failing later in the middle of the batch. Rolls back unless committed.
  class WriteTransaction {
   public:
    explicit WriteTransaction(Impl& impl) : impl_(impl) { impl_.run(impl_.begin_); }
    ~WriteTransaction() {
      if (committed_) return;
      impl_.rollback_.tryExecuteStep();  // fails harmlessly if SQLite already rolled back
      impl_.rollback_.tryReset();
    }
    void commit() {
      impl_.run(impl_.commit_);
      committed_ = true;
    }
    WriteTransaction(const WriteTransaction&) = delete;
    WriteTransaction& operator=(const WriteTransaction&) = delete;

   private:
    Impl& impl_;
    bool committed_ = false;
  };

  // Executes a statement that returns no rows; the number of rows it changed.
  int run(SQLite::Statement& statement) {
    Use use(statement);
    return statement.exec();
  }

  // Binds ?1..?8 of insertInstance_ and updateInstance_.
  static void bindHeader(SQLite::Statement& s, const InstanceRecord& r) {
    bindText(s, 1, r.process);
    s.bind(2, r.processVersion);
    bindName(s, 3, statusName(r.status));
    s.bind(4, static_cast<std::int64_t>(r.currentRun));
    s.bind(5, static_cast<std::int64_t>(r.lastRun));
    bindText(s, 6, r.error);
    bindTime(s, 7, r.createdAt);
    bindTime(s, 8, r.updatedAt);
  }

  // Writes one change set inside the batch's transaction.
  ApplyResult applySet(ChangeSet& set) {
    InstanceRecord& header = set.instance;
    if (header.id == 0) {
      bindHeader(insertInstance_, header);
      run(insertInstance_);
      header.id = db_.getLastInsertRowid();
      header.version = 1;
    } else {
      // The guarded UPDATE is the set's first statement: when it changes no row
      // (stale version or no such instance) nothing of the set has been written.
      header.version = set.expectedVersion + 1;
      bindHeader(updateInstance_, header);
      updateInstance_.bind(9, static_cast<std::int64_t>(header.version));
      updateInstance_.bind(10, static_cast<std::int64_t>(header.id));
      updateInstance_.bind(11, static_cast<std::int64_t>(set.expectedVersion));
      if (run(updateInstance_) == 0) return ApplyResult{ApplyStatus::Conflict, header.id};
    }
    for (const auto& [name, value] : set.fields) {
      upsertField_.bind(1, static_cast<std::int64_t>(header.id));
      bindText(upsertField_, 2, name);
      bindValue(upsertField_, 3, value);
      run(upsertField_);
    }
    for (const StepRunRecord& stepRun : set.stepRuns) writeStepRun(header.id, stepRun);
    for (const HistoryEvent& event : set.history) {
      SQLite::Statement& s = insertHistory_;
      s.bind(1, static_cast<std::int64_t>(header.id));  // the set's instance wins
      bindTime(s, 2, event.at);
      bindName(s, 3, historyKindName(event.kind));
      s.bind(4, event.run);
      bindText(s, 5, event.step);
      bindText(s, 6, event.detail);
      run(s);
    }
    return ApplyResult{ApplyStatus::Applied, header.id};
  }

  void writeStepRun(InstanceId instance, const StepRunRecord& r) {
    SQLite::Statement& s = upsertStepRun_;
    s.bind(1, static_cast<std::int64_t>(instance));  // the set's instance wins
    s.bind(2, r.run);
    bindText(s, 3, r.step);
    bindName(s, 4, kindName(r.kind));
    bindName(s, 5, statusName(r.status));
    s.bind(6, r.attempt);
    bindText(s, 7, r.secret);
    s.bind(8, r.hasCompletion ? 1 : 0);
    bindText(s, 9, r.error);
    bindTime(s, 10, r.createdAt);
    bindTimeOrNull(s, 11, r.waitingSince);
    bindTimeOrNull(s, 12, r.finishedAt);
    if (r.deadline) {
      bindTime(s, 13, *r.deadline);
    } else {
      s.bind(13);
    }
    if (r.correlationKey.empty()) {
      s.bind(14);  // no key: NULL, outside step_runs_waiting_key
    } else {
      bindText(s, 14, r.correlationKey);
    }
    run(s);

    // The run's completion rows become the record's completion. The DELETE runs
    // even when the record has no completion: a replaced run may drop one (the
    // Store contract), and the store cannot tell without reading the old row.
    // On a table that is almost always empty it costs one seek of a cached page;
    // measured, it is lost in the noise of a commit.
    deleteCompletion_.bind(1, static_cast<std::int64_t>(instance));
    deleteCompletion_.bind(2, r.run);
    run(deleteCompletion_);
    for (const auto& [name, value] : r.completion) {
      insertCompletion_.bind(1, static_cast<std::int64_t>(instance));
      insertCompletion_.bind(2, r.run);
      bindText(insertCompletion_, 3, name);
      bindValue(insertCompletion_, 4, value);
      run(insertCompletion_);
    }
  }

  // The step run in columns 0..kRunColumns-1 of the current row, without its completion.
  static StepRunRecord readStepRun(const SQLite::Statement& s) {
    StepRunRecord r;
    r.instance = s.getColumn(0).getInt64();
    r.run = s.getColumn(1).getInt64();
    r.step = bytesOf(s.getColumn(2));
    r.kind = parseName(std::string_view(s.getColumn(3).getText()), kStepKinds, "step kind");
    r.status =
        parseName(std::string_view(s.getColumn(4).getText()), kStepRunStatuses, "step status");
    r.attempt = s.getColumn(5).getInt();
    r.secret = bytesOf(s.getColumn(6));
    r.hasCompletion = s.getColumn(7).getInt64() != 0;
    r.error = bytesOf(s.getColumn(8));
    r.createdAt = fromMicros(s.getColumn(9).getInt64());
    r.waitingSince = timeOrEpoch(s.getColumn(10));
    r.finishedAt = timeOrEpoch(s.getColumn(11));
    if (!s.isColumnNull(12)) r.deadline = fromMicros(s.getColumn(12).getInt64());
    r.correlationKey = bytesOf(s.getColumn(13));  // NULL reads as empty
    return r;
  }

  // The (instance_id, run) of each row of `s`, in columns 0 and 1.
  static std::vector<StepRunKey> readKeys(SQLite::Statement& s) {
    std::vector<StepRunKey> keys;
    while (s.executeStep()) {
      keys.push_back(StepRunKey{s.getColumn(0).getInt64(), s.getColumn(1).getInt64()});
    }
    return keys;
  }

  // Adds the completion field in columns name, type, value starting at `index`,
  // if the row has one (a LEFT JOIN row without a completion field has NULLs).
  static void addCompletionField(const SQLite::Statement& s, int index, StepRunRecord& record) {
    if (s.isColumnNull(index)) return;
    std::string name = bytesOf(s.getColumn(index));
    Value value = readValue(s, index + 1, name);
    record.completion.set(name, std::move(value));
  }

  // A read's hold on one connection and its statements. It takes the writing
  // connection when no commit holds it: that connection wrote the latest pages
  // itself, so its page cache is warm, while the reader's cache is dropped by
  // every commit it did not make. Under a commit it takes the read-only
  // connection, so a read never waits for a commit's fsync.
  class ReadLease {
   public:
    explicit ReadLease(Impl& impl) : writer_(impl.mutex_, std::try_to_lock) {
      if (writer_.owns_lock()) {
        reads_ = &impl.writerReads_;
      } else if (impl.readerReads_ == nullptr) {
        writer_.lock();
        reads_ = &impl.writerReads_;
      } else {
        reader_ = std::unique_lock(impl.readerMutex_);
        reads_ = impl.readerReads_.get();
      }
    }
    Reads& reads() { return *reads_; }

   private:
    std::unique_lock<std::mutex> writer_;
    std::unique_lock<std::mutex> reader_;
    Reads* reads_ = nullptr;
  };

  // Declaration order matters: the statements are finalised before the
  // connections close, and reader_ closes before db_, which checkpoints the WAL.
  SQLite::Database db_;
  // Null for a memory or temporary database: then reads use db_.
  std::unique_ptr<SQLite::Database> reader_;
  std::mutex mutex_;        // serialises every use of db_ and its statements
  std::mutex readerMutex_;  // serialises every use of reader_ and its statements
  const std::size_t maxGroupSize_;
  // The commit queue: callers of apply() linked through Writer::next, the
  // leader first. queueMutex_ guards head_, tail_ and the writers' next and done.
  std::mutex queueMutex_;
  Writer* head_ = nullptr;
  Writer* tail_ = nullptr;
  SQLite::Statement begin_;
  SQLite::Statement commit_;
  SQLite::Statement rollback_;
  SQLite::Statement savepoint_;
  SQLite::Statement releaseSavepoint_;
  SQLite::Statement rollbackToSavepoint_;
  SQLite::Statement insertInstance_;
  SQLite::Statement updateInstance_;
  SQLite::Statement upsertField_;
  SQLite::Statement upsertStepRun_;
  SQLite::Statement deleteCompletion_;
  SQLite::Statement insertCompletion_;
  SQLite::Statement insertHistory_;
  Reads writerReads_;                   // on db_, guarded by mutex_
  std::unique_ptr<Reads> readerReads_;  // on reader_ (null without it), guarded by readerMutex_
};

Result<std::unique_ptr<SqliteStore>> SqliteStore::open(const std::string& path,
                                                       SqliteOptions options) {
  const int pageSize = options.pageSize;
  if (pageSize < 512 || pageSize > 65536 || (pageSize & (pageSize - 1)) != 0) {
    return fail(Errc::InvalidArgument,
                fmt::format("cannot open {}: page size {} is not a power of two from 512 to 65536",
                            path, pageSize));
  }
  // SQLite's own bound on max_page_count.
  constexpr std::int64_t kMaxPageCount = 4'294'967'294;
  if (options.maxPageCount < 0 || options.maxPageCount > kMaxPageCount) {
    return fail(Errc::InvalidArgument,
                fmt::format("cannot open {}: maxPageCount {} is not from 0 (no cap) to {}", path,
                            options.maxPageCount, kMaxPageCount));
  }
  try {
    // NOMUTEX: the store's own mutex serialises every use of the connection.
    SQLite::Database db(path, SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE | SQLite::OPEN_NOMUTEX);
    // SQLite silently opens a file it may not write read-only, and every write
    // would then fail. Refuse it now, before a -wal or -shm file is created.
    if (sqlite3_db_readonly(db.getHandle(), "main") == 1) {
      return fail(
          Errc::StoreError,
          fmt::format("cannot open {}: the file is read-only; asyncflow must write to it", path));
    }
    const auto timeout =
        std::clamp<std::chrono::milliseconds::rep>(options.busyTimeout.count(), 0, INT_MAX);
    db.setBusyTimeout(static_cast<int>(timeout));
    // Identify the file before anything is written to it (journal mode included).
    auto identified = identify(db, path);
    if (!identified) return tl::unexpected(identified.error());
    auto configured = configure(db, path, options);
    if (!configured) return tl::unexpected(configured.error());
    auto migrated = migrate(db, path, *identified);
    if (!migrated) return tl::unexpected(migrated.error());
    // A file database gets a second, read-only connection for the reads: in WAL
    // mode it reads the last commit while the first connection writes and syncs
    // the next. A memory or temporary database has no file to share.
    std::unique_ptr<SQLite::Database> reader;
    const char* file = sqlite3_db_filename(db.getHandle(), "main");
    if (file != nullptr && *file != '\0') {
      reader =
          std::make_unique<SQLite::Database>(file, SQLite::OPEN_READONLY | SQLite::OPEN_NOMUTEX);
      reader->setBusyTimeout(static_cast<int>(timeout));
    }
    // The constructor is private, so make_unique cannot reach it.
    return std::unique_ptr<SqliteStore>(new SqliteStore(
        std::make_unique<Impl>(std::move(db), std::move(reader), options.maxGroupSize)));
  } catch (const SQLite::Exception& e) {
    if (isNotADatabase(e)) {
      return fail(Errc::StoreError, fmt::format("{} is not a database ({})", path, e.what()));
    }
    return tl::unexpected(storeError(fmt::format("cannot open {}", path), e));
  } catch (const std::bad_alloc&) {
    return fail(Errc::StoreError, fmt::format("cannot open {}: out of memory", path));
  } catch (const std::exception& e) {
    return fail(Errc::StoreError, fmt::format("cannot open {}: {}", path, e.what()));
  } catch (...) {
    return fail(Errc::StoreError, fmt::format("cannot open {}: unknown error", path));
  }
}

SqliteStore::SqliteStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

std::size_t SqliteStoreProbe::queuedWrites(SqliteStore& store) {
  return store.impl_->queuedWrites();
}
SqliteStore::~SqliteStore() = default;

int SqliteStore::schemaVersion() noexcept {
  return kMigrations[std::size(kMigrations) - 1].version;
}

Result<InstanceSnapshot> SqliteStore::loadInstance(InstanceId id) {
  return impl_->loadInstance(id);
}

Result<StepRunRecord> SqliteStore::loadStepRun(InstanceId instance, std::int64_t run) {
  return impl_->loadStepRun(instance, run);
}

Result<std::vector<ApplyResult>> SqliteStore::apply(std::vector<ChangeSet> batch) {
  return impl_->apply(std::move(batch));
}

Result<std::vector<WaitingRow>> SqliteStore::listWaiting(const WaitingQuery& query) {
  return impl_->listWaiting(query);
}

Result<std::vector<InstanceId>> SqliteStore::listRunning(const RunningQuery& query) {
  return impl_->listRunning(query);
}

Result<std::optional<Timestamp>> SqliteStore::nextDeadline(Timestamp after) {
  return impl_->nextDeadline(after);
}

Result<std::vector<DueRun>> SqliteStore::listDue(const DueQuery& query) {
  return impl_->listDue(query);
}

Result<std::vector<StepRunKey>> SqliteStore::findByKey(const KeyQuery& query) {
  return impl_->findByKey(query);
}

Result<std::vector<HistoryEvent>> SqliteStore::loadHistory(InstanceId id) {
  return impl_->loadHistory(id);
}

}  // namespace asyncflow
