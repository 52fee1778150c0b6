// asyncflow: the pluggable persistence interface.
//
// A Store holds instances, their data fields and their step runs. The engine
// reads through a few queries and writes instances through one primitive,
// apply(), which takes a batch of change sets and applies each atomically,
// guarded by the instance's version (optimistic concurrency). Batching is what
// lets a store commit many transitions with one fsync. The one other write,
// declare(), stores a process version's declared fields and steps once.
//
// Implementations: MemoryStore (memory_store.hpp) and SqliteStore. A third-party
// store must pass the store conformance suite.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "asyncflow/clock.hpp"
#include "asyncflow/error.hpp"
#include "asyncflow/fields.hpp"
#include "asyncflow/records.hpp"

namespace asyncflow {

// A page of waiting step runs, in (instance, run) order, after a cursor.
struct WaitingQuery {
  std::string process;           // only this process; empty: any
  std::string step;              // only this step; empty: any
  InstanceId afterInstance = 0;  // keyset cursor: runs after (afterInstance, afterRun)
  std::int64_t afterRun = 0;
  std::size_t limit = 100;  // at most this many rows
};

// One waiting run with the process version it belongs to.
struct WaitingRow {
  StepRunRecord run;
  std::string process;
  int processVersion = 0;
};

// A Waiting run whose deadline has passed, as listDue reports it; also the
// keyset cursor of the next page.
struct DueRun {
  StepRunKey key;
  Timestamp deadline{};
  friend bool operator==(const DueRun& a, const DueRun& b) {
    return a.key == b.key && a.deadline == b.deadline;
  }
};

// A page of due timers: Waiting runs with a deadline at or before `now`, in
// (deadline, instance, run) order, after an exclusive cursor.
struct DueQuery {
  Timestamp now{};
  std::optional<DueRun> after;  // continue after this run; empty: from the earliest
  std::size_t limit = 256;      // at most this many runs
};

// Waiting runs of one process's step whose correlation key equals `key`.
struct KeyQuery {
  std::string process;
  std::string step;
  std::string key;
  std::size_t limit = 2;  // 2 tells "one" from "ambiguous"
};

// A page of Running instances of one process version, in id order, for recovery.
struct RunningQuery {
  std::string process;
  int processVersion = 0;
  InstanceId afterInstance = 0;
  std::size_t limit = 1000;
};

// Where a page of expired leases continues: after the instance `instance`
// whose lease expires at `expiry`, in (expiry, instance) order.
struct LeaseCursor {
  Timestamp expiry{};
  InstanceId instance = 0;
  friend bool operator==(const LeaseCursor& a, const LeaseCursor& b) {
    return a.expiry == b.expiry && a.instance == b.instance;
  }
};

// A Running instance whose lease has expired (or is offered), as
// listExpiredLeases reports it.
struct ExpiredLease {
  InstanceId instance = 0;
  std::string process;
  int processVersion = 0;
  std::string owner;  // the host that held it; empty for an offered instance
  Timestamp expiry{};

  // The cursor of the page that continues after this lease.
  LeaseCursor cursor() const { return LeaseCursor{expiry, instance}; }

  friend bool operator==(const ExpiredLease& a, const ExpiredLease& b) {
    return a.instance == b.instance && a.process == b.process &&
           a.processVersion == b.processVersion && a.owner == b.owner && a.expiry == b.expiry;
  }
};

// A page of expired leases: Running instances whose leaseExpiry is at or
// before `now`, in (expiry, instance) order, after an exclusive cursor.
struct LeaseQuery {
  Timestamp now{};
  std::optional<LeaseCursor> after;  // continue after this lease; empty: from the earliest
  std::size_t limit = 256;           // at most this many instances
};

// A subscription to a store's pushed change signal (Store::watchChanges).
// While it lives the store calls its callback; destroying it stops the calls,
// waiting for one in progress to return. Not copyable.
class ChangeWatch {
 public:
  ChangeWatch() = default;
  ChangeWatch(const ChangeWatch&) = delete;
  ChangeWatch& operator=(const ChangeWatch&) = delete;
  virtual ~ChangeWatch() = default;
};

// The persistence interface. Every method is thread-safe. No method throws:
// failures are StoreError (I/O, busy, full) and leave the store unchanged.
class Store {
 public:
  virtual ~Store() = default;

  // The instance and its fields; NotFound if there is no such id.
  [[nodiscard]] virtual Result<InstanceSnapshot> loadInstance(InstanceId id) = 0;

  // One step run; NotFound if the instance or run does not exist.
  [[nodiscard]] virtual Result<StepRunRecord> loadStepRun(InstanceId instance,
                                                          std::int64_t run) = 0;

  // An instance with its fields, and one of its runs, read in that order (so
  // the run is never older than the instance's version): what loadInstance
  // then loadStepRun return, with their NotFound errors. A store may read both
  // in one round trip; the default calls the two (so a StoreWrapper, which
  // does not forward this call, still sees them).
  [[nodiscard]] virtual Result<InstanceRun> loadInstanceRun(InstanceId instance, std::int64_t run) {
    auto snapshot = loadInstance(instance);
    if (!snapshot) return tl::unexpected(snapshot.error());
    auto found = loadStepRun(instance, run);
    if (!found) return tl::unexpected(found.error());
    return InstanceRun{std::move(*snapshot), std::move(*found)};
  }

  // Applies each change set atomically and in order, reporting each one's
  // status in the same order. A StoreError means no set of the batch was written.
  [[nodiscard]] virtual Result<std::vector<ApplyResult>> apply(std::vector<ChangeSet> batch) = 0;

  // Waiting step runs matching the query that have no completion recorded
  // (hasCompletion false): a Waiting run with one is finished by the external
  // system and waits only for a host that defines its version to move it on.
  // query.limit of them while that many more match (a shorter page is the last).
  [[nodiscard]] virtual Result<std::vector<WaitingRow>> listWaiting(const WaitingQuery& query) = 0;

  // Ids of instances with status Running of the query's process version: what a
  // crash may have left mid-step. query.limit ids while that many more match.
  [[nodiscard]] virtual Result<std::vector<InstanceId>> listRunning(const RunningQuery& query) = 0;

  // The earliest deadline of a Waiting run that is later than `after`
  // (Timestamp::min(): of any Waiting run); empty when there is none. The timer
  // passes the time of its last pass when timers due then could not fire, so
  // that they do not hide the deadlines behind them.
  [[nodiscard]] virtual Result<std::optional<Timestamp>> nextDeadline(Timestamp after) = 0;

  // Waiting runs whose deadline is at or before query.now, in (deadline,
  // instance, run) order after query.after; query.limit of them while that many
  // more are due (a shorter page is the last).
  [[nodiscard]] virtual Result<std::vector<DueRun>> listDue(const DueQuery& query) = 0;

  // Waiting runs matching the query, in (instance, run) order, at most query.limit.
  // An empty key means "no key" and matches nothing.
  [[nodiscard]] virtual Result<std::vector<StepRunKey>> findByKey(const KeyQuery& query) = 0;

  // The instance's history in the order it was written; empty for an unknown id.
  [[nodiscard]] virtual Result<std::vector<HistoryEvent>> loadHistory(InstanceId id) = 0;

  // The claim a create's ChangeSet::startKey made on (process, key): the
  // instance, its process version and the fingerprint stored with the key;
  // empty when no instance holds the pair. Keys and processes are compared as
  // exact bytes. Reads only.
  [[nodiscard]] virtual Result<std::optional<StartKeyRecord>> findStartKey(
      std::string_view process, std::string_view key) = 0;

  // --- What several hosts on one store need (DESIGN.md section 8) ---------------------
  //
  // Leases are written by apply() as part of the instance header
  // (InstanceRecord::leaseOwner, leaseExpiry); these calls find the ones due.
  // Declarations let a host that does not define() a version check a
  // completion's fields and take a heartbeat. changeMark() tells a host that
  // another one (in this process or another) committed something, without
  // reading any record.

  // The earliest leaseExpiry of a Running instance that is later than `after`
  // (Timestamp::min(): of any Running instance) and whose leaseOwner is not
  // `notOwnedBy` (a host leaves its own leases out; empty: any owner, offers
  // included); empty when there is none. Instances of any other status are not
  // counted, whatever they carry. The timer sleeps until it, as until
  // nextDeadline().
  [[nodiscard]] virtual Result<std::optional<Timestamp>> nextLeaseExpiry(
      Timestamp after, std::string_view notOwnedBy) = 0;

  // Running instances whose leaseExpiry is at or before query.now (expired and
  // offered leases alike), in (expiry, instance) order after query.after;
  // query.limit of them while that many more match (a shorter page is the last).
  [[nodiscard]] virtual Result<std::vector<ExpiredLease>> listExpiredLeases(
      const LeaseQuery& query) = 0;

  // Stores `declaration` when (process, version) has none yet, and returns the
  // declaration stored for it: the given one (its fields and its steps in name
  // order), or the one stored earlier, unchanged, which may differ (the caller
  // compares). Atomic across hosts: of two concurrent first calls one wins and
  // both return the winner's, fields and steps alike. InvalidArgument, writing
  // nothing, for an empty process name, a version below 1, an empty or repeated
  // field or step name, a type that is not a Type enumerator, a kind that is not
  // a StepKind enumerator, or a negative heartbeat. Declarations are never
  // changed or removed.
  [[nodiscard]] virtual Result<ProcessDeclaration> declare(
      const ProcessDeclaration& declaration) = 0;

  // The declaration stored for (process, version), its fields and its steps in
  // name order; empty when there is none. The name is compared as exact bytes.
  // Reads only.
  [[nodiscard]] virtual Result<std::optional<ProcessDeclaration>> loadDeclaration(
      std::string_view process, int version) = 0;

  // A number that differs from the one the previous call on this object
  // returned whenever anything was committed to the store in between (an
  // apply() that wrote a set, a declare() that stored), by this object or by
  // another one on the same database (another process). It stays the same
  // across reads and across apply() calls whose every set was a Conflict or
  // KeyTaken; any other commit to the database (an operator's, say) may change
  // it. Compare marks of one object only. Cheap: reads no record.
  [[nodiscard]] virtual Result<std::uint64_t> changeMark() = 0;

  // Push instead of poll, for a store that can: calls `changed` on a thread of
  // the store's soon after another store object commits to the same database
  // (and after the store lost and regained its signal, when it may have missed
  // one), for as long as the returned watch lives. Calls close together may be
  // merged into one. `changed` must be quick and must not call the store's
  // watchChanges. nullptr when the store cannot push: the engine then relies
  // on changeMark() alone. The default: nullptr. Never fails otherwise.
  [[nodiscard]] virtual std::unique_ptr<ChangeWatch> watchChanges(std::function<void()> changed) {
    (void)changed;
    return nullptr;
  }
};

// Forwards every call to another store, so a test can override one method (to
// inject a fault, count calls, add a latch); all but loadInstanceRun, whose
// default goes through this wrapper's loadInstance and loadStepRun. Does not own the target unless
// given ownership through the shared_ptr.
class StoreWrapper : public Store {
 public:
  explicit StoreWrapper(std::shared_ptr<Store> target) : target_(std::move(target)) {}

  Result<InstanceSnapshot> loadInstance(InstanceId id) override {
    return target_->loadInstance(id);
  }
  Result<StepRunRecord> loadStepRun(InstanceId instance, std::int64_t run) override {
    return target_->loadStepRun(instance, run);
  }
  Result<std::vector<ApplyResult>> apply(std::vector<ChangeSet> batch) override {
    return target_->apply(std::move(batch));
  }
  Result<std::vector<WaitingRow>> listWaiting(const WaitingQuery& query) override {
    return target_->listWaiting(query);
  }
  Result<std::vector<InstanceId>> listRunning(const RunningQuery& query) override {
    return target_->listRunning(query);
  }
  Result<std::optional<Timestamp>> nextDeadline(Timestamp after) override {
    return target_->nextDeadline(after);
  }
  Result<std::vector<DueRun>> listDue(const DueQuery& query) override {
    return target_->listDue(query);
  }
  Result<std::vector<StepRunKey>> findByKey(const KeyQuery& query) override {
    return target_->findByKey(query);
  }
  Result<std::vector<HistoryEvent>> loadHistory(InstanceId id) override {
    return target_->loadHistory(id);
  }
  Result<std::optional<StartKeyRecord>> findStartKey(std::string_view process,
                                                     std::string_view key) override {
    return target_->findStartKey(process, key);
  }
  Result<std::optional<Timestamp>> nextLeaseExpiry(Timestamp after,
                                                   std::string_view notOwnedBy) override {
    return target_->nextLeaseExpiry(after, notOwnedBy);
  }
  Result<std::vector<ExpiredLease>> listExpiredLeases(const LeaseQuery& query) override {
    return target_->listExpiredLeases(query);
  }
  Result<ProcessDeclaration> declare(const ProcessDeclaration& declaration) override {
    return target_->declare(declaration);
  }
  Result<std::optional<ProcessDeclaration>> loadDeclaration(std::string_view process,
                                                            int version) override {
    return target_->loadDeclaration(process, version);
  }
  Result<std::uint64_t> changeMark() override { return target_->changeMark(); }
  std::unique_ptr<ChangeWatch> watchChanges(std::function<void()> changed) override {
    return target_->watchChanges(std::move(changed));
  }

  Store& target() const noexcept { return *target_; }

 private:
  std::shared_ptr<Store> target_;
};

}  // namespace asyncflow
