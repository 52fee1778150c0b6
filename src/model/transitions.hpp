// The step-run state machine (internal): every transition of an instance and its
// step runs, and the admission rules that say which event a run in which status
// accepts. Pure: each function reads a snapshot and returns the change set to
// write, or the refusal; the engine loads, calls one of these, and commits.
//
// The machine (DESIGN.md section 4); each function below repeats its own moves:
//
//   Ready ──crash──▶ Starting(attempt+1) ──handler returned──▶ Waiting | Completed | Failed
//   Starting ──crash──▶ Starting(attempt+1)
//   Ready | Starting ──complete/fail──▶ (same status, completion recorded; applied when
//                                         the handler returns)
//   Waiting ──complete──▶ Completed ; ──fail──▶ Failed ; ──deadline──▶ TimedOut
//   Waiting ──complete/fail on a host without the version──▶ (same status, completion
//                                         recorded, deadline cleared; closed by a host
//                                         that defines it)
//   Ready | Starting | Waiting ──heartbeat──▶ (same; a Waiting run's deadline moves)
//   any open run ──cancel──▶ Cancelled          Failed | TimedOut ──retry──▶ a new run
//
// The instance's lease (DESIGN.md section 8) travels in the same sets: a
// Running instance is leased by the host that runs its step, or offered to
// any; Waiting and ended instances carry none.
//
// A pair the machine has no move for is a refusal with the Errc of DESIGN.md
// section 5 when an outside caller can cause it (a late completion, a cancel of
// a finished instance), and Internal naming the status and the event when only
// a bug can (a deadline on a run that does not wait).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "asyncflow/error.hpp"
#include "asyncflow/fields.hpp"
#include "asyncflow/random.hpp"
#include "asyncflow/records.hpp"
#include "model/process_model.hpp"

namespace asyncflow::detail {

// The events a step run receives, as the state machine and its errors name them.
enum class RunEvent {
  Crash,            // the engine re-drives a run whose handler may have run before a crash
  HandlerReturned,  // the handler (or the external system, on a waiting run) decided
  Complete,         // completeServerEvent
  Fail,             // failServerEvent
  Heartbeat,        // heartbeat
  Deadline,         // the run's deadline passed
  Cancel,           // cancel()
  Retry,            // retry()
};

// "Complete", "Deadline", ... Never fails.
std::string_view runEventName(RunEvent event) noexcept;

// What a handler decided (or, for a waiting run, what the external system
// reported), kept apart from the snapshot it ran on so that it can be re-applied
// to a newer snapshot after a concurrent completion or cancel.
struct Decision {
  enum class Kind { Next, GoTo, Finish, Wait, Complete, Fail };
  Kind kind = Kind::Fail;
  std::string text;  // goTo target or failure reason
  Fields writes;     // validated field writes
};

// What an external system reports about a step run.
struct ServerEvent {
  enum class Kind { Complete, Fail, Heartbeat };
  Kind kind = Kind::Complete;
  Fields fields;       // Complete and Fail: validated against the process
  std::string reason;  // Fail: why; empty gives a generic reason
};

// The RunEvent a server event is.
RunEvent runEventOf(ServerEvent::Kind kind) noexcept;

// The text a field's value gives as a business key: strings as they are,
// numbers and booleans spelled out, null as "" (no key).
std::string correlationKeyOf(const Value& value);

// Where an instance's lease stands for a host at `now` (DESIGN.md section 8).
enum class LeaseState {
  None,     // no lease: an instance written before leases existed, or not Running
  Live,     // an owner and a future expiry: only that owner drives the instance
  Expired,  // an owner and a past expiry: its host died or stalls; any host may take it
  Offered,  // no owner but an expiry: left ready for a host that defines the version
};

// The state of `record`'s lease at `now` (an expiry equal to `now` has passed).
LeaseState leaseStateOf(const InstanceRecord& record, Timestamp now) noexcept;

// The instance's run that may be open (Ready, Starting or Waiting): its current
// run while the instance is Running or Waiting; none once it ended or before
// its first run. The one place that decides "one open run per instance".
std::optional<std::int64_t> openRunOf(const InstanceRecord& record) noexcept;

// The step of `run` in `process`; ProcessNotDefined when the version defined
// here has no step of that name (it was defined differently elsewhere).
Result<const CompiledStep*> stepOf(const CompiledProcess& process, const StepRunRecord& run);

// Builds change sets. Holds the serial form and the random source for new
// serial secrets; otherwise stateless, so one instance serves every thread
// (the random source must be thread-safe, as RandomSource promises).
class Transitions {
 public:
  Transitions(SerialForm serials, RandomSource& random) : serials_(serials), random_(random) {}

  // A header-only change set: the instance as it is (its lease included),
  // guarded by its version.
  static ChangeSet guardedUpdate(const InstanceSnapshot& snapshot, Timestamp now);

  // The lease moves of a set (DESIGN.md section 8). Only a Running instance
  // carries a lease: for any other status both clear it.
  //   take:  `owner` holds it until `expiry` (the host that will run its step);
  //   offer: no owner, expired at `now`: any host that defines the version
  //          takes it (a host that cannot run the step leaves it ready).
  static void takeLease(ChangeSet& set, std::string_view owner, Timestamp expiry);
  static void offerLease(ChangeSet& set, Timestamp now);

  // (none) --start--> instance Running, its first step's run Starting.
  // `fields` are the validated start fields over the declared defaults. With a
  // `startKey` the set claims it (the store answers KeyTaken when another
  // instance holds it, and writes nothing). Fails only when no serial secret
  // can be drawn.
  Result<ChangeSet> start(const CompiledProcess& process, const Fields& fields, Timestamp now,
                          std::optional<StartKey> startKey = std::nullopt) const;

  // Adds a new run of step `index` to `set` (status Starting: the engine starts
  // it at once) with a StepStarted entry, and points the header at it. Fails
  // only when no serial secret can be drawn.
  Result<void> schedule(ChangeSet& set, const CompiledProcess& process, std::size_t index,
                        int attempt, Timestamp now, std::string detail = {}) const;

  // Ready | Starting --crash--> Starting, attempt+1, recorded, before the
  // handler runs again (handlers run at least once; attempt() tells a re-run).
  // Any other status: Internal.
  static Result<ChangeSet> restartAfterCrash(const InstanceSnapshot& snapshot, StepRunRecord run,
                                             Timestamp now);

  // Starting --handler returned--> Waiting (Wait, no completion recorded yet),
  //   Completed (Next, GoTo, Finish, Complete, or Wait with a recorded
  //   completion), Failed (Fail, or a recorded failure: it wins);
  // Waiting --the external system's Complete / Fail--> Completed / Failed.
  // A completed run moves the instance along its route (next run, end, or
  // Failed); a failed one along its error line, or the instance fails.
  // Any other status: Internal.
  Result<ChangeSet> close(const CompiledProcess& process, const InstanceSnapshot& snapshot,
                          StepRunRecord run, Decision decision, Timestamp now) const;

  // Whether a timer for `run` fires at `now`: only a Waiting run with no
  // completion recorded whose deadline is at or before `now` (the rest are
  // legal no-ops: completed, moved by a heartbeat, cancelled since the timer
  // was listed).
  static bool isDue(const StepRunRecord& run, Timestamp now) noexcept;

  // Waiting --deadline--> TimedOut, then the escalation step's run, or the
  // instance Failed. Any other status: Internal.
  Result<ChangeSet> timeOut(const CompiledProcess& process, const InstanceSnapshot& snapshot,
                            StepRunRecord run, Timestamp now) const;

  // Whether an open async run takes `event` from the external system (none:
  // whether it may be looked up, as Engine::serverEvent does), with the Errc of
  // DESIGN.md section 5 when not:
  //   a synchronous step's run: NotFound (serials name async steps only);
  //   instance or run Cancelled: Cancelled; Completed: AlreadyCompleted;
  //   Failed: StepFailed; TimedOut: TimedOut;
  //   Ready | Starting | Waiting with a completion already recorded, for
  //   Complete and Fail: AlreadyCompleted (a heartbeat or a look-up is still
  //   taken);
  //   Ready | Starting | Waiting otherwise: taken.
  static Result<void> admit(const InstanceSnapshot& snapshot, const StepRunRecord& run,
                            std::optional<ServerEvent::Kind> event);

  // An event admit() took:
  //   Waiting --complete--> Completed, the fields merged, the instance moves on;
  //   Waiting --fail--> Failed, the fields merged, error line or instance Failed;
  //   Ready | Starting --complete/fail--> recorded (CompletionRecorded), applied
  //     by close() when the handler returns;
  //   Ready | Starting | Waiting --heartbeat--> recorded; a Waiting run's deadline
  //     moves to the heartbeat interval (or the timeout) from now.
  // Any other status: Internal (admit() refuses those first).
  // A host that does not define the version uses recordEvent() instead.
  Result<ChangeSet> applyEvent(const CompiledProcess& process, const InstanceSnapshot& snapshot,
                               StepRunRecord run, ServerEvent event, Timestamp now) const;

  // An event admit() took, by a host that does not define the run's process
  // version (DESIGN.md section 8), so that it cannot route the instance on:
  //   Waiting --complete/fail--> Waiting, the completion recorded and its
  //     deadline cleared (the completion beats the timer); the instance turns
  //     Running, for the caller to offer: a host that defines the version
  //     closes the run (recordedDecision) and moves on;
  //   Ready | Starting --complete/fail--> recorded, as applyEvent;
  //   Ready | Starting | Waiting --heartbeat--> recorded; a Waiting run's
  //     deadline moves by `heartbeat` (the declared interval) from now.
  // Any other status: Internal (admit() refuses those first).
  static Result<ChangeSet> recordEvent(const InstanceSnapshot& snapshot, StepRunRecord run,
                                       ServerEvent event,
                                       std::optional<std::chrono::microseconds> heartbeat,
                                       Timestamp now);

  // What the external system decided for a Waiting run whose completion or
  // failure recordEvent() recorded: Complete, or Fail with its reason, for
  // close(). None for any other run.
  static std::optional<Decision> recordedDecision(const StepRunRecord& run);

  // Running | Waiting --cancel--> Cancelled, with its open run (when given and
  // not finished) Cancelled too. A finished instance refuses:
  // Completed: AlreadyCompleted; Failed: StepFailed; Cancelled: Cancelled.
  static Result<ChangeSet> cancel(const InstanceSnapshot& snapshot,
                                  std::optional<StepRunRecord> openRun, const std::string& reason,
                                  Timestamp now);

  // Whether the instance can be retried: only a Failed one with a run to re-run.
  // Cancelled: Cancelled; Running, Waiting, Completed: InvalidArgument.
  static Result<void> admitRetry(const InstanceRecord& record);

  // Failed --retry--> Running, with a new run of the step of its last run at
  // attempt+1: the run failed, timed out, or completed with no line to follow.
  // A retried async step gets a new serial; the old one keeps answering
  // StepFailed or TimedOut. A run still open: Internal.
  Result<ChangeSet> retry(const CompiledProcess& process, const InstanceSnapshot& snapshot,
                          const StepRunRecord& failedRun, Timestamp now) const;

 private:
  // Moves the instance of `set` (whose current run is closed) along `route`.
  Result<void> follow(ChangeSet& set, const CompiledProcess& process, const Route& route,
                      Timestamp now) const;

  SerialForm serials_;
  RandomSource& random_;
};

// Internal: "step run 5_31: no transition from Completed on Deadline".
tl::unexpected<Error> noTransition(const StepRunRecord& run, RunEvent event);

}  // namespace asyncflow::detail
