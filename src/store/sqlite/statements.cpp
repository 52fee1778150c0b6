#include "store/sqlite/statements.hpp"

#include <cstddef>
#include <string>
#include <string_view>

#include <fmt/format.h>

namespace asyncflow::detail::sqlite {
namespace {

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

// A page of waiting runs with their completion fields, leaving out the runs
// with a completion recorded (Store::listWaiting); filters are ?3 (process) and
// ?4 (step), each present only in the statement that filters on it, so that
// the planner can pick the partial index that serves the query.
std::string waitingSql(bool byProcess, bool byStep) {
  return fmt::format(
      "SELECT {}, w.process, w.process_version, c.name, c.type, c.value "
      "FROM (SELECT {}, i.process AS process, i.process_version AS process_version "
      "      FROM step_runs AS r JOIN instances AS i ON i.id = r.instance_id "
      "      WHERE r.status = 'Waiting' AND r.has_completion = 0 "
      "      AND (r.instance_id, r.run) > (?1, ?2){}{} "
      "      ORDER BY r.instance_id, r.run LIMIT ?5) AS w "
      "LEFT JOIN completion_fields AS c ON c.instance_id = w.instance_id AND c.run = w.run "
      "ORDER BY w.instance_id, w.run",
      columnList(kRunColumnNames, "w"), columnList(kRunColumnNames, "r"),
      byProcess ? " AND i.process = ?3" : "", byStep ? " AND r.step = ?4" : "");
}

}  // namespace

Reads::Reads(SQLite::Database& db)
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
            "AND i.process = ?1 ORDER BY r.instance_id, r.run LIMIT ?4"),
      startKey(db,
               "SELECT k.instance_id, i.process_version, k.fingerprint "
               "FROM start_keys AS k JOIN instances AS i ON i.id = k.instance_id "
               "WHERE k.process = ?1 AND k.idempotency_key = ?2"),
      // Both lease queries repeat the partial index's WHERE, so that the planner
      // uses instances_lease_expiry: one seek for the minimum, one range per page.
      nextLeaseExpiry(db,
                      "SELECT min(lease_expiry) FROM instances "
                      "WHERE status = 'Running' AND lease_expiry IS NOT NULL "
                      "AND lease_expiry > ?1 AND (?2 = '' OR lease_owner <> ?2)"),
      expiredLeases(db,
                    "SELECT id, process, process_version, lease_owner, lease_expiry "
                    "FROM instances "
                    "WHERE status = 'Running' AND lease_expiry IS NOT NULL "
                    "AND lease_expiry <= ?1 AND (lease_expiry, id) > (?2, ?3) "
                    "ORDER BY lease_expiry, id LIMIT ?4"),
      declaration(db,
                  "SELECT f.name, f.type FROM process_versions AS v "
                  "LEFT JOIN process_fields AS f ON f.process = v.process "
                  "AND f.version = v.version "
                  "WHERE v.process = ?1 AND v.version = ?2 ORDER BY f.name"),
      declaredSteps(db,
                    "SELECT step, kind, heartbeat_us FROM process_steps "
                    "WHERE process = ?1 AND version = ?2 ORDER BY step"),
      dataVersion(db, "PRAGMA data_version") {}

Writes::Writes(SQLite::Database& db)
    : begin(db, "BEGIN IMMEDIATE"), commit(db, "COMMIT"), rollback(db, "ROLLBACK"),
      savepoint(db, "SAVEPOINT batch"), releaseSavepoint(db, "RELEASE batch"),
      rollbackToSavepoint(db, "ROLLBACK TO batch"),
      insertInstance(db,
                     fmt::format("INSERT INTO instances ({}, version) VALUES ({}, 1)",
                                 columnList(kInstanceColumnNames), parameters(kInstanceColumns))),
      updateInstance(db, fmt::format("UPDATE instances SET {0}, version = ?{1} "
                                     "WHERE id = ?{2} AND version = ?{3}",
                                     assignments(kInstanceColumnNames), kInstanceColumns + 1,
                                     kInstanceColumns + 2, kInstanceColumns + 3)),
      upsertField(db,
                  "INSERT INTO fields (instance_id, name, type, value) VALUES (?1, ?2, ?3, ?4) "
                  "ON CONFLICT (instance_id, name) DO UPDATE "
                  "SET type = excluded.type, value = excluded.value"),
      upsertStepRun(db, fmt::format("INSERT INTO step_runs ({}) VALUES ({}) "
                                    "ON CONFLICT (instance_id, run) DO UPDATE SET {}",
                                    columnList(kRunColumnNames), parameters(kRunColumns),
                                    updateFromExcluded(kRunColumnNames, 2))),
      deleteCompletion(db, "DELETE FROM completion_fields WHERE instance_id = ?1 AND run = ?2"),
      insertCompletion(db,
                       "INSERT INTO completion_fields (instance_id, run, name, type, value) "
                       "VALUES (?1, ?2, ?3, ?4, ?5)"),
      // seq continues the instance's numbering: a max() on the primary key, one
      // seek. A subquery in VALUES, not INSERT ... SELECT FROM history, which
      // SQLite would stage in a temporary table on every insert.
      insertHistory(db,
                    "INSERT INTO history (instance_id, seq, at, kind, run, step, detail) "
                    "VALUES (?1, (SELECT coalesce(max(seq), 0) + 1 FROM history "
                    "WHERE instance_id = ?1), ?2, ?3, ?4, ?5, ?6)"),
      startKeyHolder(db,
                     "SELECT instance_id FROM start_keys "
                     "WHERE process = ?1 AND idempotency_key = ?2"),
      insertStartKey(db,
                     "INSERT INTO start_keys "
                     "(process, idempotency_key, instance_id, fingerprint, created_at) "
                     "VALUES (?1, ?2, ?3, ?4, ?5)"),
      insertProcessVersion(db,
                           "INSERT INTO process_versions (process, version, declared_at) "
                           "VALUES (?1, ?2, ?3)"),
      insertProcessField(db,
                         "INSERT INTO process_fields (process, version, name, type) "
                         "VALUES (?1, ?2, ?3, ?4)"),
      insertProcessStep(db,
                        "INSERT INTO process_steps (process, version, step, kind, heartbeat_us) "
                        "VALUES (?1, ?2, ?3, ?4, ?5)") {}

}  // namespace asyncflow::detail::sqlite
