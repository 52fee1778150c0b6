// asyncflow: the PostgreSQL Store (the add-on asyncflow::postgres).
//
// The engine's store when one machine is not enough: several hosts, on one
// machine or many, share one PostgreSQL database. Every instance, data field
// and step run lives in tables of one schema; a waiting step is a row. libpq
// stays behind this header; nothing of it leaks out.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "asyncflow/error.hpp"
#include "asyncflow/store.hpp"

namespace asyncflow {

// Settings for PostgresStore::open. Every field has a usable default.
struct PostgresOptions {
  // The schema that holds asyncflow's tables, created when absent: 1 to 63
  // characters of lower-case ASCII letters, digits and '_', not starting with a
  // digit (so that it never needs quoting in psql). Several stores (say, a test
  // per schema) may share one database. Default: "asyncflow".
  std::string schema = "asyncflow";
  // How many connections the store keeps for its calls: that many calls run at
  // once, the others wait for a free connection. One more connection listens
  // for other hosts' commits (LISTEN). From 1 to 256. Default: 4.
  std::size_t poolSize = 4;
  // How long one statement may run before the server cancels it (the server's
  // statement_timeout): the call then fails with StoreError and writes
  // nothing. 0: no limit. Default: 30 s.
  std::chrono::milliseconds statementTimeout{30'000};
  // How long open() and a reconnection wait for the server to accept a
  // connection (libpq's connect_timeout, in whole seconds, at least 1).
  // Default: 10 s.
  std::chrono::milliseconds connectTimeout{10'000};
};

// A Store in one PostgreSQL schema, with a versioned schema migrated under an
// advisory lock (two hosts starting at once migrate once).
//
// Thread-safe. Each call takes a connection of the pool; each apply() batch is
// one transaction, so it is all-or-nothing, and PostgreSQL itself groups the
// commits of concurrent calls into shared WAL flushes. A connection that
// breaks (the server restarted, the network dropped it) fails the call it was
// serving with StoreError, writing nothing, and is opened again by the next
// call that takes it: no host restart is needed. Every error is a StoreError
// that leaves the database as it was.
//
// Operators can read it with psql: tables instances, fields, step_runs,
// completion_fields, history, start_keys, process_versions, process_fields,
// process_steps, and the view waiting_steps. Timestamps are bigint
// microseconds since the Unix epoch (the view shows them as timestamptz).
// Strings are text as written, except that a backslash is doubled and a NUL
// byte or a byte that is not part of valid UTF-8 is written as \xHH, so that
// any bytes round-trip through a UTF-8 database.
class PostgresStore final : public Store {
 public:
  // Connects with `conninfo` (libpq's "host=... port=... dbname=... user=..."
  // or a postgresql:// URI), creates the schema when it is absent and migrates
  // it to the current version. InvalidArgument, touching nothing, for a schema
  // name or poolSize out of range. StoreError, touching nothing, when the
  // server cannot be reached or refuses the login (the message says which),
  // when the schema belongs to another application (it has tables but no
  // asyncflow_migrations), or when its schema is newer than this library knows.
  [[nodiscard]] static Result<std::unique_ptr<PostgresStore>> open(const std::string& conninfo,
                                                                   PostgresOptions options = {});

  ~PostgresStore() override;
  PostgresStore(const PostgresStore&) = delete;
  PostgresStore& operator=(const PostgresStore&) = delete;

  // The schema version this library writes; stored in table asyncflow_migrations.
  static int schemaVersion() noexcept;

  Result<InstanceSnapshot> loadInstance(InstanceId id) override;
  Result<StepRunRecord> loadStepRun(InstanceId instance, std::int64_t run) override;
  // Both reads in one round trip.
  Result<InstanceRun> loadInstanceRun(InstanceId instance, std::int64_t run) override;
  Result<std::vector<ApplyResult>> apply(std::vector<ChangeSet> batch) override;
  Result<std::vector<WaitingRow>> listWaiting(const WaitingQuery& query) override;
  Result<std::vector<InstanceId>> listRunning(const RunningQuery& query) override;
  Result<std::optional<Timestamp>> nextDeadline(Timestamp after) override;
  Result<std::vector<DueRun>> listDue(const DueQuery& query) override;
  Result<std::vector<StepRunKey>> findByKey(const KeyQuery& query) override;
  Result<std::vector<HistoryEvent>> loadHistory(InstanceId id) override;
  Result<std::optional<StartKeyRecord>> findStartKey(std::string_view process,
                                                     std::string_view key) override;
  Result<std::optional<Timestamp>> nextLeaseExpiry(Timestamp after,
                                                   std::string_view notOwnedBy) override;
  Result<std::vector<ExpiredLease>> listExpiredLeases(const LeaseQuery& query) override;
  // A transaction of its own; of two hosts declaring one version at once, the
  // second waits for the first's row and returns its declaration.
  Result<ProcessDeclaration> declare(const ProcessDeclaration& declaration) override;
  Result<std::optional<ProcessDeclaration>> loadDeclaration(std::string_view process,
                                                            int version) override;
  // Counts this store's own commits and the notifications of every other
  // store's commits on the schema (each commit that writes sends one, with
  // NOTIFY, on a listening connection). Reads no record: one empty statement
  // on that connection, after which the server has delivered what was
  // committed before the call.
  Result<std::uint64_t> changeMark() override;
  // Pushes: a thread of the store's, with a listening connection of its own
  // (opened by the first watch), calls `changed` within a few milliseconds of
  // another store object's commit on the schema; calls within 5 ms of each
  // other are merged. While the server is away it tries to listen again every
  // second, and calls `changed` once it does. nullptr only when no thread can
  // be started.
  std::unique_ptr<ChangeWatch> watchChanges(std::function<void()> changed) override;

 private:
  class Impl;
  explicit PostgresStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace asyncflow
