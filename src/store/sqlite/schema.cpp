#include "store/sqlite/schema.hpp"

#include <chrono>
#include <cstdint>
#include <iterator>
#include <thread>

#include <SQLiteCpp/Exception.h>
#include <SQLiteCpp/Statement.h>
#include <SQLiteCpp/Transaction.h>
#include <fmt/format.h>
#include <sqlite3.h>

#include "store/sqlite/codec.hpp"

namespace asyncflow::detail::sqlite {
namespace {

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

// The schema, oldest first. Nothing is released before 1.0, so until then a
// migration may be redone in place (1 and 2 were: their CHECKs became OR-chains),
// and a 0.x file made before such an edit keeps the older DDL under the same
// schema_version. From 1.0 on, migrations are append-only: never edit a
// released migration; append a new one.
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
constexpr Migration kMigrations[] = {
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
    {3, "the idempotency keys of Engine::startOnce", R"sql(
-- The key each startOnce claimed, written with its instance: at most one
-- instance per (process, idempotency_key), and never deleted. A table whose
-- key does not start with the instance id (so are migration 4's declarations).
CREATE TABLE start_keys (
  process         TEXT    NOT NULL,
  idempotency_key TEXT    NOT NULL,
  instance_id     INTEGER NOT NULL REFERENCES instances (id),
  fingerprint     INTEGER NOT NULL,  -- of the start's fields: 64 bits, read as signed
  created_at      INTEGER NOT NULL,  -- the instance's created_at
  PRIMARY KEY (process, idempotency_key)
) WITHOUT ROWID;
)sql"},
    {4, "leases of running instances, and the declared fields of each process version", R"sql(
-- Several hosts on one store (DESIGN.md section 8). Every table's key starts
-- with the instance id except start_keys and the two declaration tables below:
-- those are keyed by process (small, written once per version or start; on a
-- distributed engine, reference tables or distributed by their own key).

-- The lease of a Running instance, written with the rest of its header: the
-- driving host's owner id ('': none) and when the lease expires (NULL: no
-- lease). Leased: owner and a future expiry; expired: owner and a past one;
-- offered: no owner and an expiry. Instances from before this migration have
-- no lease.
ALTER TABLE instances ADD COLUMN lease_owner TEXT NOT NULL DEFAULT '';
ALTER TABLE instances ADD COLUMN lease_expiry INTEGER;

-- The timer's lease expiries: Running instances with one, in (expiry, id)
-- order. Only Running instances carry a lease; the status in the WHERE keeps
-- any other out of the lease queries even so.
CREATE INDEX instances_lease_expiry ON instances (lease_expiry, id)
  WHERE status = 'Running' AND lease_expiry IS NOT NULL;

-- Each declared process version, with or without fields: a host that does not
-- define() the version checks a completion's fields against these. Written
-- once by the first host that defines the version, never changed.
CREATE TABLE process_versions (
  process     TEXT    NOT NULL,
  version     INTEGER NOT NULL,
  declared_at INTEGER NOT NULL,  -- the declaring host's wall clock
  PRIMARY KEY (process, version)
) WITHOUT ROWID;

-- The declared data fields of each version, by name ('String', 'Int64', ...).
CREATE TABLE process_fields (
  process TEXT    NOT NULL,
  version INTEGER NOT NULL,
  name    TEXT    NOT NULL,
  type    TEXT    NOT NULL CHECK (type = 'Null' OR type = 'Bool' OR type = 'Int64'
                  OR type = 'Double' OR type = 'String'),
  PRIMARY KEY (process, version, name),
  FOREIGN KEY (process, version) REFERENCES process_versions (process, version)
) WITHOUT ROWID;
)sql"},
    {5, "the declared steps of each process version, waiting_steps without completions", R"sql(
-- The declared steps of each version, by name ('Sync', 'Async'): a host that
-- does not define() the version takes a heartbeat with these. Written with the
-- version's fields, in the same transaction, never changed; keyed by process
-- like process_fields. Versions declared before this migration have no steps.
CREATE TABLE process_steps (
  process      TEXT    NOT NULL,
  version      INTEGER NOT NULL,
  step         TEXT    NOT NULL,
  kind         TEXT    NOT NULL CHECK (kind = 'Sync' OR kind = 'Async'),
  -- Microseconds a heartbeat moves a waiting run's deadline; NULL: it moves nothing.
  heartbeat_us INTEGER CHECK (heartbeat_us >= 0),
  PRIMARY KEY (process, version, step),
  FOREIGN KEY (process, version) REFERENCES process_versions (process, version)
) WITHOUT ROWID;

-- A Waiting run with a completion recorded (has_completion = 1) is finished by
-- the external system and waits only for a host that defines its version to
-- move it on: it no longer waits for anyone outside, so it is not listed.
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
WHERE r.status = 'Waiting' AND r.has_completion = 0;
)sql"},
    {6, "the parallel branch of each step run", R"sql(
-- The parallel branch a run belongs to (DESIGN.md section 9): 0 on the
-- instance's main path, else the run number of the branch's first run. Runs
-- written before this migration are on the main path.
ALTER TABLE step_runs ADD COLUMN branch INTEGER NOT NULL DEFAULT 0 CHECK (branch >= 0);
)sql"},
};

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
    if (id.version > latestSchemaVersion()) {
      return fail(Errc::StoreError,
                  fmt::format("{}: schema version {} is newer than this library's {}; use a "
                              "newer asyncflow",
                              path, id.version, latestSchemaVersion()));
    }
    return false;
  }
  if (id.applicationId == 0 && !id.hasSchema) return true;
  return fail(
      Errc::StoreError,
      fmt::format("{} is not an asyncflow database (it belongs to another application)", path));
}

}  // namespace

int latestSchemaVersion() noexcept { return kMigrations[std::size(kMigrations) - 1].version; }

Result<int> identify(SQLite::Database& db, const std::string& path) {
  SQLite::Transaction read(db, SQLite::TransactionBehavior::DEFERRED);
  const Identity id = readIdentity(db);
  read.commit();
  auto empty = classify(path, id);
  if (!empty) return tl::unexpected(empty.error());
  return id.version;
}

namespace {

// `PRAGMA journal_mode = WAL`, the mode it answers. Switching a file that is
// not in WAL mode yet takes an exclusive lock, and SQLite answers SQLITE_BUSY
// at once, without its busy handler, while another process opens the same
// new file: so it is tried again, every millisecond, until `busyTimeout`.
std::string switchToWal(SQLite::Database& db, std::chrono::milliseconds busyTimeout) {
  const auto giveUp = std::chrono::steady_clock::now() + busyTimeout;
  for (;;) {
    try {
      return db.execAndGet("PRAGMA journal_mode = WAL").getString();
    } catch (const SQLite::Exception& e) {
      const bool busy = (e.getErrorCode() & 0xff) == SQLITE_BUSY;
      if (!busy || std::chrono::steady_clock::now() >= giveUp) throw;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

}  // namespace

Result<void> configure(SQLite::Database& db, const std::string& path,
                       const SqliteOptions& options) {
  // Takes effect only while the file is empty (before journal_mode writes its
  // header); an existing file keeps its page size.
  db.exec(fmt::format("PRAGMA page_size = {}", options.pageSize));
  const std::string mode = switchToWal(db, options.busyTimeout);
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

}  // namespace asyncflow::detail::sqlite
