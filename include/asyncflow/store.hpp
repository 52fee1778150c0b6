// asyncflow: the pluggable persistence interface.
//
// A Store holds instances, their data fields and their step runs. The engine
// reads through a few queries and writes through one primitive, apply(), which
// takes a batch of change sets and applies each atomically, guarded by the
// instance's version (optimistic concurrency). Batching is what lets a store
// commit many transitions with one fsync.
//
// Implementations: MemoryStore (memory_store.hpp) and SqliteStore. A third-party
// store must pass the store conformance suite.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "asyncflow/clock.hpp"
#include "asyncflow/error.hpp"
#include "asyncflow/fields.hpp"
#include "asyncflow/step.hpp"

namespace asyncflow {

// Lifecycle of an instance.
enum class InstanceStatus {
  Running,    // a step is ready or its handler is running
  Waiting,    // the current step run waits for the external system
  Completed,  // the instance reached its end
  Failed,     // a step failed and no line handled it
  Cancelled,  // cancel() ended it
};

// Lifecycle of a step run (DESIGN.md section 4).
enum class StepRunStatus {
  Ready,      // committed with its serial; the handler has not been started
  Starting,   // the handler has been (or is being) started; a crash means re-run
  Waiting,    // an async step waits for completeServerEvent
  Completed,  // done; the instance moved on
  Failed,     // the handler failed or threw
  TimedOut,   // the deadline passed before the completion
  Cancelled,  // the instance was cancelled while this run was open
};

// Whether a step run belongs to a Step or an AsyncStep.
enum class StepKind { Sync, Async };

// "Running", "Waiting", ... Never fail.
std::string_view statusName(InstanceStatus status) noexcept;
std::string_view statusName(StepRunStatus status) noexcept;

// True for Completed, Failed, TimedOut and Cancelled.
constexpr bool isTerminal(StepRunStatus s) noexcept {
  return s == StepRunStatus::Completed || s == StepRunStatus::Failed ||
         s == StepRunStatus::TimedOut || s == StepRunStatus::Cancelled;
}
constexpr bool isTerminal(InstanceStatus s) noexcept {
  return s == InstanceStatus::Completed || s == InstanceStatus::Failed ||
         s == InstanceStatus::Cancelled;
}

// One execution of a step within an instance. (instance, run) is its key; the
// serial the outside world sees is "{instance}_{run}" plus "_{secret}" when the
// run has a secret.
struct StepRunRecord {
  InstanceId instance = 0;
  std::int64_t run = 0;  // 1-based, unique within the instance
  std::string step;      // the step's name in the process version
  StepKind kind = StepKind::Sync;
  StepRunStatus status = StepRunStatus::Ready;
  int attempt = 0;     // how many times the engine has started the handler
  std::string secret;  // base64url; empty for bare (K2-compatible) serials
  // Whether a completion has arrived for this run, and the fields of one that
  // arrived before the step waited and is not applied yet (empty once applied:
  // the fields then live in the instance).
  bool hasCompletion = false;
  Fields completion;
  std::string error;  // why it failed, timed out or was cancelled
  Timestamp createdAt{};
  Timestamp waitingSince{};           // epoch when it never waited
  Timestamp finishedAt{};             // epoch while open
  std::optional<Timestamp> deadline;  // when a waiting run times out; none by default
  // The business key an external system may complete the run by (the value of
  // the step's correlation field when it began to wait); empty when none.
  std::string correlationKey;

  friend bool operator==(const StepRunRecord& a, const StepRunRecord& b) {
    return a.instance == b.instance && a.run == b.run && a.step == b.step && a.kind == b.kind &&
           a.status == b.status && a.attempt == b.attempt && a.secret == b.secret &&
           a.hasCompletion == b.hasCompletion && a.completion == b.completion &&
           a.error == b.error && a.createdAt == b.createdAt && a.waitingSince == b.waitingSince &&
           a.finishedAt == b.finishedAt && a.deadline == b.deadline &&
           a.correlationKey == b.correlationKey;
  }
};

// The header row of an instance (its fields are stored beside it).
struct InstanceRecord {
  InstanceId id = 0;
  std::string process;
  int processVersion = 0;
  InstanceStatus status = InstanceStatus::Running;
  // Optimistic-concurrency counter: 1 after creation, +1 per applied change set.
  std::uint64_t version = 0;
  std::int64_t currentRun = 0;  // the open or last step run; 0 before the first
  std::int64_t lastRun = 0;     // the highest run number allocated
  std::string error;            // why it failed or was cancelled
  Timestamp createdAt{};
  Timestamp updatedAt{};

  friend bool operator==(const InstanceRecord& a, const InstanceRecord& b) {
    return a.id == b.id && a.process == b.process && a.processVersion == b.processVersion &&
           a.status == b.status && a.version == b.version && a.currentRun == b.currentRun &&
           a.lastRun == b.lastRun && a.error == b.error && a.createdAt == b.createdAt &&
           a.updatedAt == b.updatedAt;
  }
};

// An instance as loaded: its header and all its data fields.
struct InstanceSnapshot {
  InstanceRecord record;
  Fields fields;
};

// What an entry of an instance's history records.
enum class HistoryKind {
  Started,             // the instance started (detail: the process version)
  StepStarted,         // a step run was scheduled and its handler started
  Waiting,             // an async step waits (detail: its serial)
  CompletionRecorded,  // a completion arrived before the step waited
  StepCompleted,       // a step run completed (detail: the fields a completion set)
  StepFailed,          // a step run failed (detail: why)
  TimedOut,            // a waiting step's deadline passed
  Heartbeat,           // the external system extended a waiting step's deadline
  Retried,             // retry() re-ran a failed step (detail: the new attempt)
  Completed,           // the instance completed
  Failed,              // the instance failed (detail: why)
  Cancelled,           // the instance was cancelled (detail: the reason)
};

// "StepCompleted" etc. Never fails.
std::string_view historyKindName(HistoryKind kind) noexcept;

// One entry of an instance's audit trail; entries keep the order they were written.
struct HistoryEvent {
  InstanceId instance = 0;
  Timestamp at{};
  HistoryKind kind = HistoryKind::Started;
  std::int64_t run = 0;  // the step run it concerns; 0 for instance-level entries
  std::string step;      // that run's step; empty for instance-level entries
  std::string detail;    // what happened, for people

  friend bool operator==(const HistoryEvent& a, const HistoryEvent& b) {
    return a.instance == b.instance && a.at == b.at && a.kind == b.kind && a.run == b.run &&
           a.step == b.step && a.detail == b.detail;
  }
};

// One atomic transition of one instance. Every change to a step run travels in
// a change set of its instance, so the instance's version covers its runs too: a
// reader that loads the instance and then a run, and writes guarded by that
// version, can never act on a run older than the instance it read.
struct ChangeSet {
  // The header after the transition. `instance.id == 0` creates a new instance:
  // the store assigns the id and writes it into the step runs below.
  InstanceRecord instance;
  // The version the stored instance must have for the set to apply (ignored on
  // create). The store writes version = expectedVersion + 1 (1 on create).
  std::uint64_t expectedVersion = 0;
  // Data fields written by the transition (upserted; fields are never removed).
  Fields fields;
  // Step runs inserted or replaced, keyed by (instance, run).
  std::vector<StepRunRecord> stepRuns;
  // History entries appended, in order (their `instance` is the set's).
  std::vector<HistoryEvent> history;
};

// What happened to one change set of a batch.
enum class ApplyStatus {
  Applied,   // written
  Conflict,  // the stored version differed; nothing of this set was written
};

struct ApplyResult {
  ApplyStatus status = ApplyStatus::Conflict;
  InstanceId instance = 0;  // the id, assigned on create
};

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

// Identifies one step run.
struct StepRunKey {
  InstanceId instance = 0;
  std::int64_t run = 0;
  friend bool operator==(const StepRunKey& a, const StepRunKey& b) {
    return a.instance == b.instance && a.run == b.run;
  }
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

  // Applies each change set atomically and in order, reporting each one's
  // status in the same order. A StoreError means no set of the batch was written.
  [[nodiscard]] virtual Result<std::vector<ApplyResult>> apply(std::vector<ChangeSet> batch) = 0;

  // Waiting step runs matching the query: query.limit of them while that many
  // more match (a shorter page is the last).
  [[nodiscard]] virtual Result<std::vector<WaitingRow>> listWaiting(const WaitingQuery& query) = 0;

  // Ids of instances with status Running of the query's process version: what a
  // crash may have left mid-step. query.limit ids while that many more match.
  [[nodiscard]] virtual Result<std::vector<InstanceId>> listRunning(const RunningQuery& query) = 0;

  // The earliest deadline of any Waiting run; empty when no waiting run has one.
  [[nodiscard]] virtual Result<std::optional<Timestamp>> nextDeadline() = 0;

  // Waiting runs whose deadline is at or before `now`, earliest first, then by
  // (instance, run); `limit` of them while that many more are due.
  [[nodiscard]] virtual Result<std::vector<StepRunKey>> listDue(Timestamp now,
                                                                std::size_t limit) = 0;

  // Waiting runs matching the query, in (instance, run) order, at most query.limit.
  // An empty key means "no key" and matches nothing.
  [[nodiscard]] virtual Result<std::vector<StepRunKey>> findByKey(const KeyQuery& query) = 0;

  // The instance's history in the order it was written; empty for an unknown id.
  [[nodiscard]] virtual Result<std::vector<HistoryEvent>> loadHistory(InstanceId id) = 0;
};

// Forwards every call to another store, so a test can override one method (to
// inject a fault, count calls, add a latch). Does not own the target unless given
// ownership through the shared_ptr.
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
  Result<std::optional<Timestamp>> nextDeadline() override { return target_->nextDeadline(); }
  Result<std::vector<StepRunKey>> listDue(Timestamp now, std::size_t limit) override {
    return target_->listDue(now, limit);
  }
  Result<std::vector<StepRunKey>> findByKey(const KeyQuery& query) override {
    return target_->findByKey(query);
  }
  Result<std::vector<HistoryEvent>> loadHistory(InstanceId id) override {
    return target_->loadHistory(id);
  }

  Store& target() const noexcept { return *target_; }

 private:
  std::shared_ptr<Store> target_;
};

}  // namespace asyncflow
