// asyncflow: the records a Store keeps: instances (with their leases), step
// runs, history, process declarations, and the change set that moves an
// instance from one version to the next.
//
// Plain data, copyable and comparable; the engine builds them and a Store
// persists them (store.hpp). A store author needs this header and store.hpp,
// never the engine's.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "asyncflow/clock.hpp"
#include "asyncflow/fields.hpp"
#include "asyncflow/value.hpp"

namespace asyncflow {

// Identifies one run of a process. Assigned by the store, starting at 1.
using InstanceId = std::int64_t;

// How serials look to the outside world, e.g. "5_31_3R8RjEscrCCJnyXWIy7JOh":
//
//   serial = instance "_" run [ "_" secret ]
//   instance, run: positive decimals without sign or leading zero, within int64
//   secret: 22 characters. New secrets are [A-Za-z0-9]{22} (128 random bits in
//     base62); secrets stored before this form may also hold '-' and '_'
//     (base64url), so a serial splits on its first two '_' only.
enum class SerialForm {
  // "{instance}_{run}_{secret}" with a 128-bit secret from the random source,
  // compared in constant time: a guessed or incremented serial never completes
  // another step. The default.
  WithSecret,
  // K2's bare "{instance}_{run}" (e.g. "5_31"), for trusted networks only. Runs
  // created with a secret still require it.
  Bare,
};

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
  std::string secret;  // 22 characters (see SerialForm); empty for bare (K2-compatible) serials
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
  // The parallel branch the run belongs to (DESIGN.md section 9): 0 on the
  // instance's main path, else the branch's id, the run number of the branch's
  // first run. Never negative.
  std::int64_t branch = 0;

  friend bool operator==(const StepRunRecord& a, const StepRunRecord& b) {
    return a.instance == b.instance && a.run == b.run && a.step == b.step && a.kind == b.kind &&
           a.status == b.status && a.attempt == b.attempt && a.secret == b.secret &&
           a.hasCompletion == b.hasCompletion && a.completion == b.completion &&
           a.error == b.error && a.createdAt == b.createdAt && a.waitingSince == b.waitingSince &&
           a.finishedAt == b.finishedAt && a.deadline == b.deadline &&
           a.correlationKey == b.correlationKey && a.branch == b.branch;
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
  // The lease (DESIGN.md section 8): which host drives a Running instance, and
  // until when. Three states of a Running instance:
  //   leased:  owner set, expiry in the future: only the owner drives it;
  //   expired: owner set, expiry passed: any host that defines the version may
  //            take it over;
  //   offered: owner empty, expiry set: ready for any host that defines the
  //            version from the expiry on (e.g. after a completion by a host
  //            that does not define it).
  // Owner empty and no expiry: no lease. Waiting and terminal instances carry
  // neither; the store keeps what apply() wrote, but its lease queries
  // (Store::nextLeaseExpiry, listExpiredLeases) see Running instances only.
  std::string leaseOwner;                // the driving host's owner id; empty: none
  std::optional<Timestamp> leaseExpiry;  // none: no lease (the epoch is a time like any other)

  friend bool operator==(const InstanceRecord& a, const InstanceRecord& b) {
    return a.id == b.id && a.process == b.process && a.processVersion == b.processVersion &&
           a.status == b.status && a.version == b.version && a.currentRun == b.currentRun &&
           a.lastRun == b.lastRun && a.error == b.error && a.createdAt == b.createdAt &&
           a.updatedAt == b.updatedAt && a.leaseOwner == b.leaseOwner &&
           a.leaseExpiry == b.leaseExpiry;
  }
};

// An instance as loaded: its header and all its data fields.
struct InstanceSnapshot {
  InstanceRecord record;
  Fields fields;
};

// An instance and one of its step runs, read together (Store::loadInstanceRun).
struct InstanceRun {
  InstanceSnapshot snapshot;
  StepRunRecord run;
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

// An idempotency key a create claims: at most one instance of a process name
// ever holds one key. Scoped by the created instance's `process`, so the scope
// cannot disagree with the instance it names.
struct StartKey {
  std::string key;  // any bytes; the engine admits 1 to 255 printable ASCII
  // Of the fields the start was asked with, so that a repeat with other fields
  // is told apart (the engine's FNV-1a; the store only keeps it).
  std::uint64_t fingerprint = 0;

  friend bool operator==(const StartKey& a, const StartKey& b) {
    return a.key == b.key && a.fingerprint == b.fingerprint;
  }
};

// A claimed start key, as Store::findStartKey reports it.
struct StartKeyRecord {
  InstanceId instance = 0;  // the instance whose create claimed the key
  int processVersion = 0;   // that instance's process version
  std::uint64_t fingerprint = 0;

  friend bool operator==(const StartKeyRecord& a, const StartKeyRecord& b) {
    return a.instance == b.instance && a.processVersion == b.processVersion &&
           a.fingerprint == b.fingerprint;
  }
};

// One data field a process version declares, as the store keeps it so that a
// host that does not define() the version can still check a completion's fields.
struct FieldDeclaration {
  std::string name;  // any bytes but empty
  Type type = Type::Null;

  friend bool operator==(const FieldDeclaration& a, const FieldDeclaration& b) {
    return a.name == b.name && a.type == b.type;
  }
};

// One step a process version declares, as the store keeps it so that a host
// that does not define() the version can still take a heartbeat.
struct StepDeclaration {
  std::string name;  // any bytes but empty
  StepKind kind = StepKind::Sync;
  // How far a heartbeat moves a waiting run's deadline (the step's heartbeat
  // interval, else its timeout); none: a heartbeat moves nothing. Not negative.
  std::optional<std::chrono::microseconds> heartbeat;

  friend bool operator==(const StepDeclaration& a, const StepDeclaration& b) {
    return a.name == b.name && a.kind == b.kind && a.heartbeat == b.heartbeat;
  }
};

// The declared fields and steps of one process version (Store::declare). A
// version with neither is declared all the same.
struct ProcessDeclaration {
  std::string process;
  int version = 0;
  // In name order (bytewise), each name once: how a store returns them.
  std::vector<FieldDeclaration> fields;
  // In name order (bytewise), each name once, as the fields.
  std::vector<StepDeclaration> steps;

  friend bool operator==(const ProcessDeclaration& a, const ProcessDeclaration& b) {
    return a.process == b.process && a.version == b.version && a.fields == b.fields &&
           a.steps == b.steps;
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
  // Create only (ignored on an update): claims (instance.process, key) for the
  // new instance in the same atomic write. When a stored instance, or an earlier
  // set of the same batch, holds that pair already, the set is KeyTaken. Keys are
  // never released. Empty (the default): no key.
  std::optional<StartKey> startKey;
};

// What happened to one change set of a batch.
enum class ApplyStatus {
  Applied,   // written
  Conflict,  // the stored version differed; nothing of this set was written
  KeyTaken,  // a create whose start key another instance holds; nothing of this set
             // was written
};

struct ApplyResult {
  ApplyStatus status = ApplyStatus::Conflict;
  // The id: assigned on create; the set's on an update; with KeyTaken, the
  // instance that holds the key.
  InstanceId instance = 0;
};

// Identifies one step run.
struct StepRunKey {
  InstanceId instance = 0;
  std::int64_t run = 0;
  friend bool operator==(const StepRunKey& a, const StepRunKey& b) {
    return a.instance == b.instance && a.run == b.run;
  }
};

}  // namespace asyncflow
