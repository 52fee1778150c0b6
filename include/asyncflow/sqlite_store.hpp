// asyncflow: the SQLite Store, the embedded default.
//
// One database file holds every instance, data field and step run. A waiting
// step is a row: the host can exit, restart days later and still complete it.
// SQLite and SQLiteCpp stay behind this header; nothing of them leaks out.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "asyncflow/error.hpp"
#include "asyncflow/store.hpp"

namespace asyncflow {

// How hard SQLite pushes each commit to disk (PRAGMA synchronous).
enum class Synchronous {
  // fsync on every commit: an acknowledged completion survives power loss. The default.
  Full,
  // fsync at WAL checkpoints only: commits survive a crash of the process, but
  // the last ones before a power loss or OS crash may be rolled back. Several
  // times faster on most disks.
  Normal,
};

// Settings for SqliteStore::open. Every field has a usable default.
struct SqliteOptions {
  // Durability of commits. Default: Full.
  Synchronous synchronous = Synchronous::Full;
  // How long a call waits for another connection's lock before it fails with
  // StoreError. Default: 5 s.
  std::chrono::milliseconds busyTimeout{5000};
  // Group commit: at most this many apply() calls share one transaction (one
  // fsync). Calls that arrive while a commit is in flight wait and form the next
  // group; a lone caller never waits for company. 1 (or 0) turns grouping off.
  // Default: 256.
  std::size_t maxGroupSize = 256;
  // Page size in bytes of a database file this call creates: a power of two
  // from 512 to 65536. An existing file keeps the page size it was made with.
  // Every commit writes each page it changed whole to the WAL, and a completion
  // changes four to six small rows in different tables; 1 KiB pages write a
  // quarter of SQLite's default 4 KiB for the same rows (about 35% more commits
  // per second at synchronous NORMAL, measured). Larger pages suit field values
  // of many kilobytes. Default: 1024.
  int pageSize = 1024;
  // A cap on the database file's size, in pages (PRAGMA max_page_count on the
  // writing connection, for this open only): a commit that would grow the file
  // beyond it fails with StoreError "database or disk is full" and writes
  // nothing, as on a full disk. From 0 to 4294967294; a cap below the file's
  // current size holds it at that size. Default: 0, no cap.
  std::int64_t maxPageCount = 0;
};

// A Store in one SQLite database file, in WAL mode, with a versioned schema.
//
// Thread-safe. Writes go through one connection with group commit: concurrent
// apply() calls share one transaction, each call's batch in its own savepoint,
// so a batch stays all-or-nothing and its SQL error fails only its own call. A
// failed COMMIT (or an error after which SQLite rolls back the whole transaction,
// like a full disk) fails every call of the group. A read uses the writing
// connection when no commit holds it (its page cache is warm) and otherwise, for
// a file database, a second, read-only connection, so it never waits behind a
// commit's fsync. Every error is a StoreError that leaves the database as it was. Operators can
// read it with the sqlite3 shell: tables instances, fields, step_runs, history,
// start_keys, process_versions, process_fields, process_steps, and the view
// waiting_steps (the Waiting runs without a completion recorded).
class SqliteStore final : public Store {
 public:
  // Opens (creating if absent) the database at `path` and migrates its schema to
  // the current version. InvalidArgument, touching nothing, for a pageSize that
  // is not a power of two from 512 to 65536 or a maxPageCount out of range.
  // StoreError when a maxPageCount too small for the schema fills the file, and,
  // touching nothing, when the file is read-only to this process, is not a
  // SQLite database, is a SQLite database of another application (it has tables
  // but is not asyncflow's), or has a schema newer than this library knows.
  [[nodiscard]] static Result<std::unique_ptr<SqliteStore>> open(const std::string& path,
                                                                 SqliteOptions options = {});

  ~SqliteStore() override;
  SqliteStore(const SqliteStore&) = delete;
  SqliteStore& operator=(const SqliteStore&) = delete;

  // The schema version this library writes; stored in table asyncflow_migrations.
  static int schemaVersion() noexcept;

  Result<InstanceSnapshot> loadInstance(InstanceId id) override;
  Result<StepRunRecord> loadStepRun(InstanceId instance, std::int64_t run) override;
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
  // Written in a transaction of its own on the writing connection, between
  // group commits; the write lock makes it atomic across processes too.
  Result<ProcessDeclaration> declare(const ProcessDeclaration& declaration) override;
  Result<std::optional<ProcessDeclaration>> loadDeclaration(std::string_view process,
                                                            int version) override;
  // From PRAGMA data_version of the read-only connection (which sees every
  // commit to the file: this store's and other processes') and a count of this
  // store's own commits (for a memory database, which has no second connection).
  Result<std::uint64_t> changeMark() override;

 private:
  // Tests observe the commit queue's depth (src/store/sqlite/sqlite_store_probe.hpp).
  friend class SqliteStoreProbe;
  class Impl;
  explicit SqliteStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace asyncflow
