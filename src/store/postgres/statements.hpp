// The PostgreSQL store's SQL (internal): every statement a connection
// prepares, by name. Unqualified: each connection's search_path is the store's
// schema.
#pragma once

namespace asyncflow::detail::pg {

// A statement prepared on every connection of the pool under `name`.
struct Statement {
  const char* name;
  const char* sql;
};

// Column lists the readers index: the instance header is columns 0..9, then
// the version; a step run is columns 0..14.
inline constexpr int kInstanceColumns = 10;
inline constexpr int kRunColumns = 15;

#define ASYNCFLOW_PG_RUN_COLUMNS(t)                                                           \
  t "instance_id, " t "run, " t "step, " t "kind, " t "status, " t "attempt, " t "secret, " t \
    "has_completion, " t "error, " t "created_at, " t "waiting_since, " t "finished_at, " t   \
    "deadline, " t "correlation_key, " t "branch"

inline constexpr Statement kLoadInstance{
    "load_instance",
    "SELECT i.process, i.process_version, i.status, i.current_run, i.last_run, i.error, "
    "i.created_at, i.updated_at, i.lease_owner, i.lease_expiry, i.version, f.name, f.type, "
    "f.value FROM instances AS i LEFT JOIN fields AS f ON f.instance_id = i.id WHERE i.id = $1"};

inline constexpr Statement kLoadStepRun{
    "load_step_run",
    "SELECT " ASYNCFLOW_PG_RUN_COLUMNS("r.") ", c.name, c.type, c.value "
    "FROM step_runs AS r LEFT JOIN completion_fields AS c "
    "ON c.instance_id = r.instance_id AND c.run = r.run "
    "WHERE r.instance_id = $1 AND r.run = $2"};

// A page of waiting runs with their completion fields; $3 (process) and $4
// (step) filter when not NULL.
inline constexpr Statement kListWaiting{
    "list_waiting",
    "SELECT " ASYNCFLOW_PG_RUN_COLUMNS("w.") ", w.process, w.process_version, c.name, c.type, "
    "c.value FROM (SELECT " ASYNCFLOW_PG_RUN_COLUMNS("r.") ", i.process, i.process_version "
    "      FROM step_runs AS r JOIN instances AS i ON i.id = r.instance_id "
    "      WHERE r.status = 'Waiting' AND NOT r.has_completion "
    "      AND (r.instance_id, r.run) > ($1, $2) "
    "      AND ($3::text IS NULL OR i.process = $3) AND ($4::text IS NULL OR r.step = $4) "
    "      ORDER BY r.instance_id, r.run LIMIT $5) AS w "
    "LEFT JOIN completion_fields AS c ON c.instance_id = w.instance_id AND c.run = w.run "
    "ORDER BY w.instance_id, w.run"};

inline constexpr Statement kListRunning{
    "list_running",
    "SELECT id FROM instances WHERE status = 'Running' AND process = $1 "
    "AND process_version = $2 AND id > $3 ORDER BY id LIMIT $4"};

inline constexpr Statement kLoadHistory{
    "load_history",
    "SELECT at, kind, run, step, detail FROM history WHERE instance_id = $1 ORDER BY seq"};

inline constexpr Statement kNextDeadline{
    "next_deadline",
    "SELECT min(deadline) FROM step_runs "
    "WHERE status = 'Waiting' AND deadline IS NOT NULL AND deadline > $1"};

inline constexpr Statement kListDue{
    "list_due",
    "SELECT instance_id, run, deadline FROM step_runs "
    "WHERE status = 'Waiting' AND deadline IS NOT NULL AND deadline <= $1 "
    "AND (deadline, instance_id, run) > ($2, $3, $4) "
    "ORDER BY deadline, instance_id, run LIMIT $5"};

inline constexpr Statement kFindByKey{
    "find_by_key",
    "SELECT r.instance_id, r.run FROM step_runs AS r JOIN instances AS i ON i.id = r.instance_id "
    "WHERE r.status = 'Waiting' AND r.step = $2 AND r.correlation_key IS NOT NULL "
    "AND r.correlation_key = $3 AND i.process = $1 ORDER BY r.instance_id, r.run LIMIT $4"};

inline constexpr Statement kFindStartKey{
    "find_start_key",
    "SELECT k.instance_id, i.process_version, k.fingerprint "
    "FROM start_keys AS k JOIN instances AS i ON i.id = k.instance_id "
    "WHERE k.process = $1 AND k.idempotency_key = $2"};

inline constexpr Statement kNextLeaseExpiry{
    "next_lease_expiry",
    "SELECT min(lease_expiry) FROM instances "
    "WHERE status = 'Running' AND lease_expiry IS NOT NULL AND lease_expiry > $1 "
    "AND ($2 = '' OR lease_owner <> $2)"};

inline constexpr Statement kExpiredLeases{
    "expired_leases",
    "SELECT id, process, process_version, lease_owner, lease_expiry FROM instances "
    "WHERE status = 'Running' AND lease_expiry IS NOT NULL AND lease_expiry <= $1 "
    "AND (lease_expiry, id) > ($2, $3) ORDER BY lease_expiry, id LIMIT $4"};

// A declaration's fields (one row with NULLs for a version without fields),
// then its steps.
inline constexpr Statement kDeclaration{
    "declaration",
    "SELECT f.name, f.type FROM process_versions AS v "
    "LEFT JOIN process_fields AS f ON f.process = v.process AND f.version = v.version "
    "WHERE v.process = $1 AND v.version = $2"};
inline constexpr Statement kDeclaredSteps{
    "declared_steps",
    "SELECT step, kind, heartbeat_us FROM process_steps WHERE process = $1 AND version = $2"};

// --- writes --------------------------------------------------------------------------

inline constexpr Statement kInsertInstance{
    "insert_instance",
    "INSERT INTO instances (process, process_version, status, current_run, last_run, error, "
    "created_at, updated_at, lease_owner, lease_expiry, version) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1) RETURNING id, txid_current()"};

inline constexpr Statement kUpdateInstance{
    "update_instance",
    "UPDATE instances SET process = $1, process_version = $2, status = $3, current_run = $4, "
    "last_run = $5, error = $6, created_at = $7, updated_at = $8, lease_owner = $9, "
    "lease_expiry = $10, version = $11 WHERE id = $12 AND version = $13 "
    "RETURNING txid_current()"};

inline constexpr Statement kUpsertField{
    "upsert_field",
    "INSERT INTO fields (instance_id, name, type, value) VALUES ($1, $2, $3, $4) "
    "ON CONFLICT (instance_id, name) DO UPDATE SET type = excluded.type, value = excluded.value"};

// Writes the run and drops its completion rows (the record's completion, if
// any, follows as insert_completion rows): one statement for both.
inline constexpr Statement kUpsertStepRun{
    "upsert_step_run",
    "WITH gone AS (DELETE FROM completion_fields WHERE instance_id = $1 AND run = $2) "
    "INSERT INTO step_runs (" ASYNCFLOW_PG_RUN_COLUMNS("") ") "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) "
    "ON CONFLICT (instance_id, run) DO UPDATE SET step = excluded.step, kind = excluded.kind, "
    "status = excluded.status, attempt = excluded.attempt, secret = excluded.secret, "
    "has_completion = excluded.has_completion, error = excluded.error, "
    "created_at = excluded.created_at, waiting_since = excluded.waiting_since, "
    "finished_at = excluded.finished_at, deadline = excluded.deadline, "
    "correlation_key = excluded.correlation_key, branch = excluded.branch"};

inline constexpr Statement kInsertCompletion{
    "insert_completion",
    "INSERT INTO completion_fields (instance_id, run, name, type, value) "
    "VALUES ($1, $2, $3, $4, $5)"};

// seq continues the instance's numbering: the instance's row is locked by this
// transaction's write of its header, so no other writer numbers alongside.
// insert_history_N writes N entries in one statement: $1 the instance, then
// five parameters per entry (at, kind, run, step, detail), numbered on from 1.
#define ASYNCFLOW_PG_HISTORY_INSERT                                                       \
  "INSERT INTO history (instance_id, seq, at, kind, run, step, detail) "                  \
  "SELECT $1::bigint, b.seq + v.k, v.at, v.kind, v.run, v.step, v.detail "                \
  "FROM (SELECT coalesce(max(seq), 0) AS seq FROM history WHERE instance_id = $1) AS b, " \
  "(VALUES (1, $2::bigint, $3::text, $4::bigint, $5::text, $6::text)"
#define ASYNCFLOW_PG_HISTORY_COLUMNS ") AS v (k, at, kind, run, step, detail)"

inline constexpr Statement kInsertHistory{"insert_history",
                                          ASYNCFLOW_PG_HISTORY_INSERT ASYNCFLOW_PG_HISTORY_COLUMNS};
inline constexpr Statement kInsertHistory2{
    "insert_history_2",
    ASYNCFLOW_PG_HISTORY_INSERT ", (2, $7, $8, $9, $10, $11)" ASYNCFLOW_PG_HISTORY_COLUMNS};
inline constexpr Statement kInsertHistory3{
    "insert_history_3", ASYNCFLOW_PG_HISTORY_INSERT
    ", (2, $7, $8, $9, $10, $11), (3, $12, $13, $14, $15, $16)" ASYNCFLOW_PG_HISTORY_COLUMNS};
inline constexpr Statement kInsertHistory4{
    "insert_history_4", ASYNCFLOW_PG_HISTORY_INSERT
    ", (2, $7, $8, $9, $10, $11), (3, $12, $13, $14, $15, $16), "
    "(4, $17, $18, $19, $20, $21)" ASYNCFLOW_PG_HISTORY_COLUMNS};
// The statement that writes `n` (1 to 4) entries at once.
inline constexpr const Statement* kInsertHistories[] = {&kInsertHistory, &kInsertHistory2,
                                                        &kInsertHistory3, &kInsertHistory4};

inline constexpr Statement kStartKeyHolder{
    "start_key_holder",
    "SELECT instance_id FROM start_keys WHERE process = $1 AND idempotency_key = $2"};

inline constexpr Statement kInsertStartKey{
    "insert_start_key",
    "INSERT INTO start_keys (process, idempotency_key, instance_id, fingerprint, created_at) "
    "VALUES ($1, $2, $3, $4, $5)"};

// Of two hosts declaring one version at once the second waits on the first's
// key and inserts nothing: it then reads the first's rows.
inline constexpr Statement kInsertProcessVersion{
    "insert_process_version",
    "INSERT INTO process_versions (process, version, declared_at) VALUES ($1, $2, $3) "
    "ON CONFLICT DO NOTHING"};
inline constexpr Statement kInsertProcessField{
    "insert_process_field",
    "INSERT INTO process_fields (process, version, name, type) VALUES ($1, $2, $3, $4)"};
inline constexpr Statement kInsertProcessStep{
    "insert_process_step",
    "INSERT INTO process_steps (process, version, step, kind, heartbeat_us) "
    "VALUES ($1, $2, $3, $4, $5)"};

// Whether the transaction whose txid_current() it is committed: asked after the
// connection was lost during its COMMIT.
inline constexpr Statement kTransactionStatus{"transaction_status", "SELECT txid_status($1)"};

inline constexpr Statement kAll[] = {
    kLoadInstance,         kLoadStepRun,        kListWaiting,       kListRunning,
    kLoadHistory,          kNextDeadline,       kListDue,           kFindByKey,
    kFindStartKey,         kNextLeaseExpiry,    kExpiredLeases,     kDeclaration,
    kDeclaredSteps,        kInsertInstance,     kUpdateInstance,    kUpsertField,
    kUpsertStepRun,        kInsertCompletion,   kInsertHistory,     kInsertHistory2,
    kInsertHistory3,       kInsertHistory4,     kStartKeyHolder,    kInsertStartKey,
    kInsertProcessVersion, kInsertProcessField, kInsertProcessStep, kTransactionStatus,
};

#undef ASYNCFLOW_PG_RUN_COLUMNS

}  // namespace asyncflow::detail::pg
