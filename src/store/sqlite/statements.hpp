// The SQL of the SQLite store, prepared once per connection (internal to the
// SQLite store): the column orders that row readers and writers rely on, the
// read statements (Reads) and the write statements (Writes).
//
// A statement belongs to its connection: destroy it (finalise) before the
// connection closes. Not thread-safe: the store serialises each connection's
// statements under that connection's mutex.
#pragma once

#include <iterator>

#include <SQLiteCpp/Database.h>
#include <SQLiteCpp/Statement.h>

namespace asyncflow::detail::sqlite {

// Instance columns written from an InstanceRecord (id and version aside), in
// the order bindHeader binds and loadInstance reads them.
inline constexpr const char* kInstanceColumnNames[] = {
    "process", "process_version", "status",     "current_run", "last_run",
    "error",   "created_at",      "updated_at", "lease_owner", "lease_expiry"};
inline constexpr int kInstanceColumns = static_cast<int>(std::size(kInstanceColumnNames));

// Step-run columns, in the order writeStepRun binds and readStepRun reads them.
inline constexpr const char* kRunColumnNames[] = {"instance_id",   "run",
                                                  "step",          "kind",
                                                  "status",        "attempt",
                                                  "secret",        "has_completion",
                                                  "error",         "created_at",
                                                  "waiting_since", "finished_at",
                                                  "deadline",      "correlation_key",
                                                  "branch"};
inline constexpr int kRunColumns = static_cast<int>(std::size(kRunColumnNames));

// The read statements, prepared on one connection. Each query's row layout is
// in its comment; throws SQLite::Exception if the schema lacks what they read.
struct Reads {
  explicit Reads(SQLite::Database& db);

  // ?1 instance id. Rows: the instance columns, version, then one field's name,
  // type, value per row (NULLs for an instance without fields).
  SQLite::Statement instance;
  // ?1 instance, ?2 run. Rows: the run columns, then one completion field's
  // name, type, value per row (NULLs when none).
  SQLite::Statement stepRun;
  // Pages of waiting runs without a completion recorded (?1, ?2 cursor; ?3
  // process; ?4 step; ?5 limit). Rows: the run columns, process,
  // process_version, a completion field. Index: (by process ? 2 : 0) +
  // (by step ? 1 : 0).
  SQLite::Statement waiting[4];
  // ?1 process, ?2 version, ?3 after id, ?4 limit. Rows: id.
  SQLite::Statement running;
  // ?1 instance. Rows: at, kind, run, step, detail, in seq order.
  SQLite::Statement history;
  // ?1 after. One row: min(deadline), NULL when none.
  SQLite::Statement nextDeadline;
  // ?1 now, ?2..?4 cursor (deadline, instance, run), ?5 limit. Rows: instance_id,
  // run, deadline.
  SQLite::Statement due;
  // ?1 process, ?2 step, ?3 key, ?4 limit. Rows: instance_id, run.
  SQLite::Statement byKey;
  // ?1 process, ?2 idempotency key. At most one row: instance_id,
  // process_version, fingerprint.
  SQLite::Statement startKey;
  // ?1 after. One row: min(lease_expiry) of the Running instances, NULL when none.
  SQLite::Statement nextLeaseExpiry;
  // ?1 now, ?2 ?3 cursor (lease_expiry, id), ?4 limit. Rows: id, process,
  // process_version, lease_owner, lease_expiry.
  SQLite::Statement expiredLeases;
  // ?1 process, ?2 version. No row when the version is not declared; else one
  // row per field, name and type in name order (one row of NULLs for none).
  SQLite::Statement declaration;
  // ?1 process, ?2 version. Rows: the declared steps' step, kind, heartbeat_us,
  // in name order (none for a version without steps, declared or not).
  SQLite::Statement declaredSteps;
  // PRAGMA data_version: one row, a number that changes when another
  // connection commits.
  SQLite::Statement dataVersion;
};

// The write statements, prepared on the writing connection.
struct Writes {
  explicit Writes(SQLite::Database& db);

  // Transaction control (connection.hpp's WriteTransaction and Savepoint).
  SQLite::Statement begin;  // BEGIN IMMEDIATE
  SQLite::Statement commit;
  SQLite::Statement rollback;
  SQLite::Statement savepoint;  // SAVEPOINT batch
  SQLite::Statement releaseSavepoint;
  SQLite::Statement rollbackToSavepoint;

  // ?1..?10 the instance columns; version 1.
  SQLite::Statement insertInstance;
  // ?1..?10 the instance columns, ?11 new version; WHERE id = ?12 AND version = ?13.
  SQLite::Statement updateInstance;
  // ?1 instance, ?2 name, ?3 type, ?4 value.
  SQLite::Statement upsertField;
  // ?1..?15 the run columns.
  SQLite::Statement upsertStepRun;
  // ?1 instance, ?2 run.
  SQLite::Statement deleteCompletion;
  // ?1 instance, ?2 run, ?3 name, ?4 type, ?5 value.
  SQLite::Statement insertCompletion;
  // ?1 instance, ?2 at, ?3 kind, ?4 run, ?5 step, ?6 detail; seq is the next.
  SQLite::Statement insertHistory;
  // ?1 process, ?2 idempotency key. At most one row: the holder's instance_id.
  SQLite::Statement startKeyHolder;
  // ?1 process, ?2 idempotency key, ?3 instance, ?4 fingerprint, ?5 created_at.
  SQLite::Statement insertStartKey;
  // ?1 process, ?2 version, ?3 declared_at.
  SQLite::Statement insertProcessVersion;
  // ?1 process, ?2 version, ?3 name, ?4 type.
  SQLite::Statement insertProcessField;
  // ?1 process, ?2 version, ?3 step, ?4 kind, ?5 heartbeat_us (NULL: none).
  SQLite::Statement insertProcessStep;
};

}  // namespace asyncflow::detail::sqlite
