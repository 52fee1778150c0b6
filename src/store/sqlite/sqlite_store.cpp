// SqliteStore: the Store methods over two connections, group commit through
// CommitQueue, the row writers and readers, and open(). The schema, codec, SQL,
// RAII scopes and error mapping live beside it in src/store/sqlite/.
#include "asyncflow/sqlite_store.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <SQLiteCpp/Database.h>
#include <SQLiteCpp/Statement.h>
#include <fmt/format.h>
#include <sqlite3.h>

#include "store/commit_queue.hpp"
#include "store/declaration.hpp"
#include "store/enum_names.hpp"
#include "store/sqlite/codec.hpp"
#include "store/sqlite/connection.hpp"
#include "store/sqlite/errors.hpp"
#include "store/sqlite/schema.hpp"
#include "store/sqlite/sqlite_store_probe.hpp"
#include "store/sqlite/statements.hpp"
#include "util/mutex.hpp"

namespace asyncflow {
namespace {

using detail::CommitQueue;
using detail::Mutex;
using detail::MutexLock;
using namespace detail::sqlite;

constexpr std::string_view kApply = "apply (nothing was written)";
constexpr std::string_view kDeclare = "declare (nothing was written)";

// --- row readers ---------------------------------------------------------------------

// The step run in columns 0..kRunColumns-1 of the current row, without its completion.
StepRunRecord readStepRun(const SQLite::Statement& s) {
  StepRunRecord r;
  r.instance = s.getColumn(0).getInt64();
  r.run = s.getColumn(1).getInt64();
  r.step = bytesOf(s.getColumn(2));
  r.kind = parseName<StepKind>(std::string_view(s.getColumn(3).getText()), "step kind");
  r.status = parseName<StepRunStatus>(std::string_view(s.getColumn(4).getText()), "step status");
  r.attempt = s.getColumn(5).getInt();
  r.secret = bytesOf(s.getColumn(6));
  r.hasCompletion = s.getColumn(7).getInt64() != 0;
  r.error = bytesOf(s.getColumn(8));
  r.createdAt = fromMicros(s.getColumn(9).getInt64());
  r.waitingSince = timeOrEpoch(s.getColumn(10));
  r.finishedAt = timeOrEpoch(s.getColumn(11));
  if (!s.isColumnNull(12)) r.deadline = fromMicros(s.getColumn(12).getInt64());
  r.correlationKey = bytesOf(s.getColumn(13));  // NULL reads as empty
  r.branch = s.getColumn(14).getInt64();
  return r;
}

// The (instance_id, run) of each row of `s`, in columns 0 and 1.
std::vector<StepRunKey> readKeys(SQLite::Statement& s) {
  std::vector<StepRunKey> keys;
  while (s.executeStep()) {
    keys.push_back(StepRunKey{s.getColumn(0).getInt64(), s.getColumn(1).getInt64()});
  }
  return keys;
}

// Adds the completion field in columns name, type, value starting at `index`,
// if the row has one (a LEFT JOIN row without a completion field has NULLs).
void addCompletionField(const SQLite::Statement& s, int index, StepRunRecord& record) {
  if (s.isColumnNull(index)) return;
  std::string name = bytesOf(s.getColumn(index));
  Value value = readValue(s, index + 1, name);
  record.completion.set(name, std::move(value));
}

// The declaration of (process, version) as `reads` finds it (Reads::declaration,
// then Reads::declaredSteps); empty when the version is not declared. Two
// statements, yet one declaration: a version's rows are committed together and
// never change, so once the first finds the version the second sees its steps.
std::optional<ProcessDeclaration> readDeclaration(Reads& reads, const std::string& process,
                                                  int version) {
  SQLite::Statement& s = reads.declaration;
  ResetOnExit reset(s);
  bindText(s, 1, process);
  s.bind(2, version);
  if (!s.executeStep()) return std::nullopt;
  ProcessDeclaration declaration;
  declaration.process = process;
  declaration.version = version;
  do {
    if (s.isColumnNull(0)) continue;  // no fields: the LEFT JOIN's one empty row
    FieldDeclaration field;
    field.name = bytesOf(s.getColumn(0));
    field.type = parseName<Type>(std::string_view(s.getColumn(1).getText()), "declared type");
    declaration.fields.push_back(std::move(field));
  } while (s.executeStep());

  SQLite::Statement& steps = reads.declaredSteps;
  ResetOnExit resetSteps(steps);
  bindText(steps, 1, process);
  steps.bind(2, version);
  while (steps.executeStep()) {
    StepDeclaration step;
    step.name = bytesOf(steps.getColumn(0));
    step.kind =
        parseName<StepKind>(std::string_view(steps.getColumn(1).getText()), "declared step kind");
    if (!steps.isColumnNull(2)) {
      step.heartbeat = std::chrono::microseconds(steps.getColumn(2).getInt64());
    }
    declaration.steps.push_back(std::move(step));
  }
  return declaration;
}

// --- row writers ---------------------------------------------------------------------

// The writing connection with its write statements: writes a commit queue's
// groups. Not thread-safe: the store holds it under one mutex, as a whole, so
// that the thread-safety analysis checks every write (it cannot follow a lock
// into the lambdas that mapExceptions runs).
class GroupWriter {
 public:
  // `db` is open, configured and migrated. Prepares the write statements.
  explicit GroupWriter(SQLite::Database db) : db_(std::move(db)), writes_(db_) {}
  GroupWriter(const GroupWriter&) = delete;
  GroupWriter& operator=(const GroupWriter&) = delete;

  // The connection, to prepare the reads that share it.
  SQLite::Database& database() noexcept { return db_; }

  // Writes the group's batches in one transaction, setting each one's result.
  // Alone, a batch is the transaction. Together, each batch is a savepoint: an
  // error rolls back that batch only; a failed COMMIT fails all. Never throws:
  // every exception becomes a member's StoreError. Whether the commit wrote a
  // set (one of them Applied), for changeMark.
  bool writeGroup(CommitQueue::Group& group) {
    bool wrote = false;
    if (group.size() == 1) {
      CommitQueue::Member& member = *group.begin();
      member.setResult(mapExceptions(kApply, [&]() -> Result<std::vector<ApplyResult>> {
        WriteTransaction transaction(writes_);
        std::vector<ApplyResult> results = applySets(member.batch());
        transaction.commit();
        wrote = anyApplied(results);
        return results;
      }));
      return wrote;
    }
    const Result<void> committed = mapExceptions(kApply, [&]() -> Result<void> {
      WriteTransaction transaction(writes_);
      bool anyWritten = false;
      for (CommitQueue::Member& member : group) {
        Result<std::vector<ApplyResult>> result =
            mapExceptions(kApply, [&] { return applyInSavepoint(member.batch()); });
        // An I/O error, a full disk or a trigger's RAISE(ROLLBACK) can make SQLite
        // roll back the whole transaction: then no batch of the group is written.
        if (!result && sqlite3_get_autocommit(db_.getHandle()) != 0) {
          return tl::unexpected(result.error());
        }
        if (result && anyApplied(*result)) anyWritten = true;
        member.setResult(std::move(result));
      }
      transaction.commit();
      wrote = anyWritten;
      return {};
    });
    if (!committed) group.failAll(committed.error());
    return wrote;
  }

  // Stores `declaration` (validated, its fields and steps in name order) in a
  // transaction of its own unless its (process, version) has one, reading with
  // `reads` (prepared on this connection). The declaration stored, and whether
  // this call stored it. Throws SQLite::Exception; a failure writes nothing.
  std::pair<ProcessDeclaration, bool> writeDeclaration(const ProcessDeclaration& declaration,
                                                       Reads& reads) {
    // IMMEDIATE: the look-up and the insert hold the write lock together, so of
    // two hosts declaring at once the second finds the first's rows.
    WriteTransaction transaction(writes_);
    if (auto stored = readDeclaration(reads, declaration.process, declaration.version)) {
      return {std::move(*stored), false};  // the transaction rolls back, empty
    }
    SQLite::Statement& version = writes_.insertProcessVersion;
    bindText(version, 1, declaration.process);
    version.bind(2, declaration.version);
    bindTime(version, 3, std::chrono::system_clock::now());
    run(version);
    for (const FieldDeclaration& field : declaration.fields) {
      SQLite::Statement& s = writes_.insertProcessField;
      bindText(s, 1, declaration.process);
      s.bind(2, declaration.version);
      bindText(s, 3, field.name);
      bindName(s, 4, typeName(field.type));
      run(s);
    }
    for (const StepDeclaration& step : declaration.steps) {
      SQLite::Statement& s = writes_.insertProcessStep;
      bindText(s, 1, declaration.process);
      s.bind(2, declaration.version);
      bindText(s, 3, step.name);
      bindName(s, 4, detail::nameOf(step.kind));
      if (step.heartbeat) {
        s.bind(5, static_cast<std::int64_t>(step.heartbeat->count()));
      } else {
        s.bind(5);  // a heartbeat moves nothing
      }
      run(s);
    }
    transaction.commit();
    return {declaration, true};
  }

 private:
  // The batch's sets inside SAVEPOINT batch: released when every set was
  // written or found in conflict, rolled back to and released when one throws.
  Result<std::vector<ApplyResult>> applyInSavepoint(std::vector<ChangeSet>& batch) {
    Savepoint savepoint(writes_);
    std::vector<ApplyResult> results = applySets(batch);
    savepoint.release();
    return results;
  }

  std::vector<ApplyResult> applySets(std::vector<ChangeSet>& batch) {
    std::vector<ApplyResult> results;
    results.reserve(batch.size());
    for (ChangeSet& set : batch) results.push_back(applySet(set));
    return results;
  }

  static bool anyApplied(const std::vector<ApplyResult>& results) {
    return std::any_of(results.begin(), results.end(),
                       [](const ApplyResult& r) { return r.status == ApplyStatus::Applied; });
  }

  // Binds ?1..?10 (kInstanceColumnNames) of insertInstance and updateInstance.
  static void bindHeader(SQLite::Statement& s, const InstanceRecord& r) {
    bindText(s, 1, r.process);
    s.bind(2, r.processVersion);
    bindName(s, 3, statusName(r.status));
    s.bind(4, static_cast<std::int64_t>(r.currentRun));
    s.bind(5, static_cast<std::int64_t>(r.lastRun));
    bindText(s, 6, r.error);
    bindTime(s, 7, r.createdAt);
    bindTime(s, 8, r.updatedAt);
    bindText(s, 9, r.leaseOwner);
    if (r.leaseExpiry) {
      bindTime(s, 10, *r.leaseExpiry);
    } else {
      s.bind(10);  // no lease: NULL, outside instances_lease_expiry
    }
  }

  // Writes one change set inside the batch's transaction.
  ApplyResult applySet(ChangeSet& set) {
    InstanceRecord& header = set.instance;
    if (header.id == 0) {
      // The key is looked up before anything of the set is written, inside the
      // write transaction: it sees every commit and the group's earlier sets.
      if (set.startKey) {
        if (auto holder = startKeyHolder(header.process, set.startKey->key)) {
          return ApplyResult{ApplyStatus::KeyTaken, *holder};
        }
      }
      bindHeader(writes_.insertInstance, header);
      run(writes_.insertInstance);
      header.id = db_.getLastInsertRowid();
      header.version = 1;
      if (set.startKey) {
        SQLite::Statement& s = writes_.insertStartKey;
        bindText(s, 1, header.process);
        bindText(s, 2, set.startKey->key);
        s.bind(3, static_cast<std::int64_t>(header.id));
        s.bind(4, static_cast<std::int64_t>(set.startKey->fingerprint));
        bindTime(s, 5, header.createdAt);
        run(s);
      }
    } else {
      // The guarded UPDATE is the set's first statement: when it changes no row
      // (stale version or no such instance) nothing of the set has been written.
      SQLite::Statement& s = writes_.updateInstance;
      header.version = set.expectedVersion + 1;
      bindHeader(s, header);
      s.bind(kInstanceColumns + 1, static_cast<std::int64_t>(header.version));
      s.bind(kInstanceColumns + 2, static_cast<std::int64_t>(header.id));
      s.bind(kInstanceColumns + 3, static_cast<std::int64_t>(set.expectedVersion));
      if (run(s) == 0) return ApplyResult{ApplyStatus::Conflict, header.id};
    }
    for (const auto& [name, value] : set.fields) {
      SQLite::Statement& s = writes_.upsertField;
      s.bind(1, static_cast<std::int64_t>(header.id));
      bindText(s, 2, name);
      bindValue(s, 3, value);
      run(s);
    }
    for (const StepRunRecord& stepRun : set.stepRuns) writeStepRun(header.id, stepRun);
    for (const HistoryEvent& event : set.history) {
      SQLite::Statement& s = writes_.insertHistory;
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

  // The instance holding (process, key), if one does.
  std::optional<InstanceId> startKeyHolder(const std::string& process, const std::string& key) {
    SQLite::Statement& s = writes_.startKeyHolder;
    ResetOnExit reset(s);
    bindText(s, 1, process);
    bindText(s, 2, key);
    if (!s.executeStep()) return std::nullopt;
    return s.getColumn(0).getInt64();
  }

  void writeStepRun(InstanceId instance, const StepRunRecord& r) {
    SQLite::Statement& s = writes_.upsertStepRun;
    s.bind(1, static_cast<std::int64_t>(instance));  // the set's instance wins
    s.bind(2, r.run);
    bindText(s, 3, r.step);
    bindName(s, 4, detail::nameOf(r.kind));
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
    s.bind(15, r.branch);
    run(s);

    // The run's completion rows become the record's completion. The DELETE runs
    // even when the record has no completion: a replaced run may drop one (the
    // Store contract), and the store cannot tell without reading the old row.
    // On a table that is almost always empty it costs one seek of a cached page;
    // measured, it is lost in the noise of a commit.
    SQLite::Statement& remove = writes_.deleteCompletion;
    remove.bind(1, static_cast<std::int64_t>(instance));
    remove.bind(2, r.run);
    run(remove);
    for (const auto& [name, value] : r.completion) {
      SQLite::Statement& insert = writes_.insertCompletion;
      insert.bind(1, static_cast<std::int64_t>(instance));
      insert.bind(2, r.run);
      bindText(insert, 3, name);
      bindValue(insert, 4, value);
      run(insert);
    }
  }

  // Declaration order matters: the statements are finalised before db_ closes.
  SQLite::Database db_;
  Writes writes_;
};

}  // namespace

// --- the store ------------------------------------------------------------------------

class SqliteStore::Impl {
 public:
  // `db` is open, configured and migrated; `reader`, when given, is a read-only
  // connection to the same file. Prepares every statement once.
  Impl(SQLite::Database db, std::unique_ptr<SQLite::Database> reader, std::size_t maxGroupSize)
      : queue_(maxGroupSize), writer_(std::move(db)), writerReads_(writer_.database()),
        reader_(std::move(reader)),
        readerReads_(reader_ != nullptr ? std::make_unique<Reads>(*reader_) : nullptr) {}

  Result<InstanceSnapshot> loadInstance(InstanceId id) {
    return mapExceptions("loadInstance", [&]() -> Result<InstanceSnapshot> {
      ReadConnection connection = readConnection();
      // One statement, so the header and the fields come from one snapshot.
      SQLite::Statement& s = connection.reads().instance;
      ResetOnExit reset(s);
      s.bind(1, static_cast<std::int64_t>(id));
      if (!s.executeStep()) return fail(Errc::NotFound, fmt::format("no instance {}", id));
      InstanceSnapshot snapshot;
      InstanceRecord& r = snapshot.record;
      r.id = id;
      r.process = bytesOf(s.getColumn(0));
      r.processVersion = s.getColumn(1).getInt();
      r.status =
          parseName<InstanceStatus>(std::string_view(s.getColumn(2).getText()), "instance status");
      r.currentRun = s.getColumn(3).getInt64();
      r.lastRun = s.getColumn(4).getInt64();
      r.error = bytesOf(s.getColumn(5));
      r.createdAt = fromMicros(s.getColumn(6).getInt64());
      r.updatedAt = fromMicros(s.getColumn(7).getInt64());
      r.leaseOwner = bytesOf(s.getColumn(8));
      if (!s.isColumnNull(9)) r.leaseExpiry = fromMicros(s.getColumn(9).getInt64());
      r.version = static_cast<std::uint64_t>(s.getColumn(kInstanceColumns).getInt64());
      constexpr int kField = kInstanceColumns + 1;  // name, type, value
      do {
        if (s.isColumnNull(kField)) continue;  // no fields: the LEFT JOIN's one empty row
        std::string name = bytesOf(s.getColumn(kField));
        Value value = readValue(s, kField + 1, name);
        snapshot.fields.set(name, std::move(value));
      } while (s.executeStep());
      return snapshot;
    });
  }

  Result<StepRunRecord> loadStepRun(InstanceId instance, std::int64_t run) {
    return mapExceptions("loadStepRun", [&]() -> Result<StepRunRecord> {
      ReadConnection connection = readConnection();
      SQLite::Statement& s = connection.reads().stepRun;
      ResetOnExit reset(s);
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

  // Group commit (CommitQueue): the batch joins the queue, and its group's
  // leader writes it with writeGroup.
  Result<std::vector<ApplyResult>> apply(std::vector<ChangeSet> batch) ASYNCFLOW_EXCLUDES(mutex_) {
    return queue_.submit(std::move(batch), [this](CommitQueue::Group& group) {
      MutexLock lock(mutex_);
      if (writer_.writeGroup(group)) commits_.fetch_add(1, std::memory_order_release);
    });
  }

  // How many apply() calls are in the commit queue (SqliteStoreProbe).
  std::size_t queuedWrites() const { return queue_.queued(); }

  Result<std::vector<WaitingRow>> listWaiting(const WaitingQuery& query) {
    return mapExceptions("listWaiting", [&]() -> Result<std::vector<WaitingRow>> {
      ReadConnection connection = readConnection();
      const bool byProcess = !query.process.empty();
      const bool byStep = !query.step.empty();
      SQLite::Statement& s = connection.reads().waiting[(byProcess ? 2 : 0) + (byStep ? 1 : 0)];
      ResetOnExit reset(s);
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
      ReadConnection connection = readConnection();
      SQLite::Statement& s = connection.reads().running;
      ResetOnExit reset(s);
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
      ReadConnection connection = readConnection();
      SQLite::Statement& s = connection.reads().nextDeadline;
      ResetOnExit reset(s);
      bindTime(s, 1, after);
      std::optional<Timestamp> earliest;
      // An aggregate always answers one row: NULL when no waiting run has a deadline.
      if (s.executeStep() && !s.isColumnNull(0)) earliest = fromMicros(s.getColumn(0).getInt64());
      return earliest;
    });
  }

  Result<std::vector<DueRun>> listDue(const DueQuery& query) {
    return mapExceptions("listDue", [&]() -> Result<std::vector<DueRun>> {
      ReadConnection connection = readConnection();
      SQLite::Statement& s = connection.reads().due;
      ResetOnExit reset(s);
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
      ReadConnection connection = readConnection();
      SQLite::Statement& s = connection.reads().byKey;
      ResetOnExit reset(s);
      bindText(s, 1, query.process);
      bindText(s, 2, query.step);
      bindText(s, 3, query.key);
      s.bind(4, limitOf(query.limit));
      return readKeys(s);
    });
  }

  Result<std::optional<StartKeyRecord>> findStartKey(std::string_view process,
                                                     std::string_view key) {
    return mapExceptions("findStartKey", [&]() -> Result<std::optional<StartKeyRecord>> {
      ReadConnection connection = readConnection();
      SQLite::Statement& s = connection.reads().startKey;
      ResetOnExit reset(s);
      bindText(s, 1, std::string(process));
      bindText(s, 2, std::string(key));
      if (!s.executeStep()) return std::nullopt;
      StartKeyRecord record;
      record.instance = s.getColumn(0).getInt64();
      record.processVersion = s.getColumn(1).getInt();
      record.fingerprint = static_cast<std::uint64_t>(s.getColumn(2).getInt64());
      return record;
    });
  }

  Result<std::optional<Timestamp>> nextLeaseExpiry(Timestamp after, std::string_view notOwnedBy) {
    return mapExceptions("nextLeaseExpiry", [&]() -> Result<std::optional<Timestamp>> {
      ReadConnection connection = readConnection();
      SQLite::Statement& s = connection.reads().nextLeaseExpiry;
      ResetOnExit reset(s);
      bindTime(s, 1, after);
      s.bind(2, std::string(notOwnedBy));  // text: '' leaves nobody out
      std::optional<Timestamp> earliest;
      // An aggregate always answers one row: NULL when no Running instance has a lease.
      if (s.executeStep() && !s.isColumnNull(0)) earliest = fromMicros(s.getColumn(0).getInt64());
      return earliest;
    });
  }

  Result<std::vector<ExpiredLease>> listExpiredLeases(const LeaseQuery& query) {
    return mapExceptions("listExpiredLeases", [&]() -> Result<std::vector<ExpiredLease>> {
      ReadConnection connection = readConnection();
      SQLite::Statement& s = connection.reads().expiredLeases;
      ResetOnExit reset(s);
      bindTime(s, 1, query.now);
      if (query.after) {
        bindTime(s, 2, query.after->expiry);
        s.bind(3, static_cast<std::int64_t>(query.after->instance));
      } else {
        s.bind(2, std::numeric_limits<std::int64_t>::min());  // before every expiry
        s.bind(3, std::numeric_limits<std::int64_t>::min());
      }
      s.bind(4, limitOf(query.limit));
      std::vector<ExpiredLease> expired;
      while (s.executeStep()) {
        ExpiredLease lease;
        lease.instance = s.getColumn(0).getInt64();
        lease.process = bytesOf(s.getColumn(1));
        lease.processVersion = s.getColumn(2).getInt();
        lease.owner = bytesOf(s.getColumn(3));
        lease.expiry = fromMicros(s.getColumn(4).getInt64());
        expired.push_back(std::move(lease));
      }
      return expired;
    });
  }

  // A declaration is rare: after a look-up on a read connection (the version is
  // usually declared already), it is written in a transaction of its own on the
  // writing connection, between two group commits.
  Result<ProcessDeclaration> declare(const ProcessDeclaration& declaration)
      ASYNCFLOW_EXCLUDES(mutex_) {
    return mapExceptions(kDeclare, [&]() -> Result<ProcessDeclaration> {
      auto valid = detail::validDeclaration(declaration);
      if (!valid) return valid;
      {
        ReadConnection connection = readConnection();
        if (auto stored = readDeclaration(connection.reads(), valid->process, valid->version)) {
          return std::move(*stored);
        }
      }
      MutexLock lock(mutex_);
      auto [stored, wrote] = writer_.writeDeclaration(*valid, writerReads_);
      if (wrote) commits_.fetch_add(1, std::memory_order_release);
      return std::move(stored);
    });
  }

  Result<std::optional<ProcessDeclaration>> loadDeclaration(std::string_view process, int version) {
    return mapExceptions("loadDeclaration", [&]() -> Result<std::optional<ProcessDeclaration>> {
      ReadConnection connection = readConnection();
      return readDeclaration(connection.reads(), std::string(process), version);
    });
  }

  // PRAGMA data_version on the read-only connection, combined with the count of
  // this store's own commits. data_version changes only when a connection
  // other than the one asking commits: asked of the writing connection it would
  // miss this store's own commits, while the reader, which never writes, sees
  // every commit, this store's and other processes' alike. The count covers a
  // memory or temporary database, which has no reader (and no other
  // connection). The pragma reads the WAL index, not the file's pages.
  Result<std::uint64_t> changeMark() ASYNCFLOW_EXCLUDES(readerMutex_) {
    return mapExceptions("changeMark", [&]() -> Result<std::uint64_t> {
      MutexLock lock(readerMutex_);
      const std::uint64_t commits = commits_.load(std::memory_order_acquire);
      std::int64_t dataVersion = 0;
      if (readerReads_ != nullptr) {
        SQLite::Statement& s = readerReads_->dataVersion;
        ResetOnExit reset(s);
        if (!s.executeStep()) return fail(Errc::StoreError, "changeMark: no data_version");
        dataVersion = s.getColumn(0).getInt64();
      }
      if (commits != markCommits_ || dataVersion != markDataVersion_) {
        ++mark_;
        markCommits_ = commits;
        markDataVersion_ = dataVersion;
      }
      return mark_;
    });
  }

  Result<std::vector<HistoryEvent>> loadHistory(InstanceId id) {
    return mapExceptions("loadHistory", [&]() -> Result<std::vector<HistoryEvent>> {
      ReadConnection connection = readConnection();
      SQLite::Statement& s = connection.reads().history;
      ResetOnExit reset(s);
      s.bind(1, static_cast<std::int64_t>(id));
      std::vector<HistoryEvent> events;
      while (s.executeStep()) {
        HistoryEvent event;
        event.instance = id;
        event.at = fromMicros(s.getColumn(0).getInt64());
        event.kind =
            parseName<HistoryKind>(std::string_view(s.getColumn(1).getText()), "history kind");
        event.run = s.getColumn(2).getInt64();
        event.step = bytesOf(s.getColumn(3));
        event.detail = bytesOf(s.getColumn(4));
        events.push_back(std::move(event));
      }
      return events;
    });
  }

 private:
  // The connection one read uses, holding its mutex (see ReadConnection). Exempt
  // from the analysis: which of the two mutexes it takes is decided at run time.
  ReadConnection readConnection() ASYNCFLOW_NO_THREAD_SAFETY_ANALYSIS {
    return ReadConnection(mutex_, writerReads_, readerMutex_, readerReads_.get());
  }

  // Thread-safe on its own: the queue of apply() calls and their groups.
  CommitQueue queue_;

  // Declaration order matters: members are destroyed last first, so each
  // connection's statements are finalised before it closes, and reader_ closes
  // before the writing connection, which checkpoints the WAL.

  // Guarded by mutex_: the writing connection, its statements, and the reads
  // prepared on it. Held by a group's leader for its whole transaction.
  Mutex mutex_;
  GroupWriter writer_ ASYNCFLOW_GUARDED_BY(mutex_);
  Reads writerReads_ ASYNCFLOW_GUARDED_BY(mutex_);

  // Guarded by readerMutex_: the read-only connection and its statements; both
  // null for a memory or temporary database, whose reads then use the writer's.
  // And changeMark's last answer, with the commit count and data_version it saw.
  Mutex readerMutex_;
  std::unique_ptr<SQLite::Database> reader_ ASYNCFLOW_PT_GUARDED_BY(readerMutex_);
  std::unique_ptr<Reads> readerReads_ ASYNCFLOW_PT_GUARDED_BY(readerMutex_);
  std::uint64_t mark_ ASYNCFLOW_GUARDED_BY(readerMutex_) = 0;
  std::uint64_t markCommits_ ASYNCFLOW_GUARDED_BY(readerMutex_) = 0;
  std::int64_t markDataVersion_ ASYNCFLOW_GUARDED_BY(readerMutex_) = 0;

  // Atomic: the commits that wrote something, made by this store (group
  // commits and declarations); raised under mutex_ after each one.
  std::atomic<std::uint64_t> commits_{0};
};

namespace {

// A busy handler that looks again every 50 µs at first, doubling to 1 ms, until
// `context` (the timeout in milliseconds) has passed. SQLite's own handler
// sleeps 1, 2, 5 ... 25 ms between looks, and a writer in another process that
// commits back to back leaves gaps of some 100 µs: with 25 ms between looks a
// waiting host could miss them for most of a second. Stateless: the time
// waited follows from `count`, as in SQLite's own handler.
int waitWhenBusy(void* context, int count) {
  const auto timeout = std::chrono::microseconds(
      static_cast<std::int64_t>(reinterpret_cast<std::intptr_t>(context)) * 1000);
  constexpr std::chrono::microseconds kFirst{50};
  constexpr std::chrono::microseconds kLongest{1000};
  constexpr int kDoublings = 5;  // 50, 100, 200, 400, 800 µs, then 1 ms
  std::chrono::microseconds waited{0};
  std::chrono::microseconds next = kFirst;
  for (int i = 0; i < std::min(count, kDoublings); ++i) {
    waited += next;
    next *= 2;
  }
  if (count >= kDoublings) {
    next = kLongest;
    waited += kLongest * (count - kDoublings);
  }
  if (waited >= timeout) return 0;
  std::this_thread::sleep_for(std::min(next, timeout - waited));
  return 1;
}

void setBusyWait(SQLite::Database& db, int timeoutMs) {
  sqlite3_busy_handler(db.getHandle(), &waitWhenBusy,
                       reinterpret_cast<void*>(static_cast<std::intptr_t>(timeoutMs)));
}

}  // namespace

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
  const std::string operation = fmt::format("cannot open {}", path);
  return mapExceptions(
      operation,
      [&]() -> Result<std::unique_ptr<SqliteStore>> {
        // NOMUTEX: the store's own mutex serialises every use of the connection.
        SQLite::Database db(path,
                            SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE | SQLite::OPEN_NOMUTEX);
        // SQLite silently opens a file it may not write read-only, and every write
        // would then fail. Refuse it now, before a -wal or -shm file is created.
        if (sqlite3_db_readonly(db.getHandle(), "main") == 1) {
          return fail(
              Errc::StoreError,
              fmt::format("{}: the file is read-only; asyncflow must write to it", operation));
        }
        const auto timeout =
            std::clamp<std::chrono::milliseconds::rep>(options.busyTimeout.count(), 0, INT_MAX);
        setBusyWait(db, static_cast<int>(timeout));
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
          reader = std::make_unique<SQLite::Database>(file,
                                                      SQLite::OPEN_READONLY | SQLite::OPEN_NOMUTEX);
          setBusyWait(*reader, static_cast<int>(timeout));
        }
        // The constructor is private, so make_unique cannot reach it.
        return std::unique_ptr<SqliteStore>(new SqliteStore(
            std::make_unique<Impl>(std::move(db), std::move(reader), options.maxGroupSize)));
      },
      [&](const SQLite::Exception& e) {
        if (isNotADatabase(e)) {
          return Error(Errc::StoreError, fmt::format("{} is not a database ({})", path, e.what()));
        }
        return storeError(operation, e);
      });
}

SqliteStore::SqliteStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

SqliteStore::~SqliteStore() = default;

std::size_t SqliteStoreProbe::queuedWrites(SqliteStore& store) {
  return store.impl_->queuedWrites();
}

int SqliteStore::schemaVersion() noexcept { return latestSchemaVersion(); }

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

Result<std::optional<StartKeyRecord>> SqliteStore::findStartKey(std::string_view process,
                                                                std::string_view key) {
  return impl_->findStartKey(process, key);
}

Result<std::optional<Timestamp>> SqliteStore::nextLeaseExpiry(Timestamp after,
                                                              std::string_view notOwnedBy) {
  return impl_->nextLeaseExpiry(after, notOwnedBy);
}

Result<std::vector<ExpiredLease>> SqliteStore::listExpiredLeases(const LeaseQuery& query) {
  return impl_->listExpiredLeases(query);
}

Result<ProcessDeclaration> SqliteStore::declare(const ProcessDeclaration& declaration) {
  return impl_->declare(declaration);
}

Result<std::optional<ProcessDeclaration>> SqliteStore::loadDeclaration(std::string_view process,
                                                                       int version) {
  return impl_->loadDeclaration(process, version);
}

Result<std::uint64_t> SqliteStore::changeMark() { return impl_->changeMark(); }

}  // namespace asyncflow
