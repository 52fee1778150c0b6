// asyncflow: the engine a host embeds.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "asyncflow/clock.hpp"
#include "asyncflow/error.hpp"
#include "asyncflow/fields.hpp"
#include "asyncflow/observer.hpp"
#include "asyncflow/process.hpp"
#include "asyncflow/random.hpp"
#include "asyncflow/records.hpp"
#include "asyncflow/store.hpp"

namespace asyncflow {

// Engine settings. Every field has a usable default.
struct EngineOptions {
  // Shape of new serials. Default: WithSecret.
  SerialForm serials = SerialForm::WithSecret;
  // Threads that run continuations (the steps after start() or a completion).
  // 0 (the default): they run inline, in the thread that called start() or
  // completeServerEvent(), before it returns.
  std::size_t workers = 0;
  // Time source for records, deadlines and the timer thread's sleep. Default
  // (null): the system clock. With a ManualClock the timer thread sleeps until
  // the clock is moved (ManualClock::awaitSleepers tells when it sleeps again).
  std::shared_ptr<Clock> clock;
  // Source of serial secrets. Default (null): the OS CSPRNG.
  std::shared_ptr<RandomSource> random;
  // When true (the default), define() re-drives the instances of the process
  // version it defines that a crash left mid-step (see recover()).
  bool recoverOnDefine = true;
  // When true (the default), a thread sleeps until the earliest deadline in the
  // store (on the clock's Alarm) and fires the timers then; it never polls.
  // When false, the host calls runDueTimers() itself.
  bool timerThread = true;
  // A drive runs at most this many steps of one instance in a row, then yields:
  // the instance continues later (on a worker; inline, on the timer thread or
  // at the next runDueTimers()), so that a process that loops without waiting
  // (a handler's goTo()) never blocks a caller or a worker forever. Logged at
  // Warning. Default: 1000; 0 is taken as 1.
  std::size_t maxStepsPerDrive = 1000;
  // Several hosts may share one store (DESIGN.md section 8). A host drives an
  // instance under a lease that it writes in the same commit that schedules
  // the run, and renews while a handler runs longer than a third of it; no
  // other host starts a handler of that instance until the lease expires.
  // This is also how long a host that died (kill -9, power loss) holds its
  // instances before a live host takes them over. Default: 30 s; values below
  // 1 ms are taken as 1 ms. An engine that stops in an orderly way hands its
  // instances over at once.
  std::chrono::milliseconds leaseDuration{30000};
  // A readable name for this host, shown in the lease owner ("web-1/3f9c..."):
  // the owner is always "<name>/<16 random hex digits>" (just the digits when
  // empty), drawn from `random` once per engine. Default: empty.
  std::string ownerName;
  // How often the timer asks the store whether another process committed
  // (Store::changeMark; on SQLite a PRAGMA on the read-only connection): then
  // it reloads the earliest deadline and lease expiry, so deadlines, offered
  // instances and expired leases of other processes are seen within this
  // interval. Engines of one process that share one Store object tell each
  // other at once instead, and a store that pushes (Store::watchChanges:
  // PostgresStore, with LISTEN/NOTIFY) wakes the timer at once; the check is
  // then the net under the push. Default: 250 ms; zero turns the check off (a
  // host that is alone on its store).
  std::chrono::milliseconds changeCheckInterval{250};
  // How far the clocks of the hosts on one store may disagree: another host's
  // lease counts as expired only this long after its expiry. Default: zero
  // (hosts on one machine share its clock).
  std::chrono::milliseconds maxClockSkew{0};
  // Told of every transition. Default: none.
  std::shared_ptr<Listener> listener;
  // Receives log lines (transitions at Info, trouble at Warning and Error).
  // Default (empty): silent.
  LogSink log;
};

// What instance(id) reports.
struct InstanceInfo {
  InstanceId id = 0;
  std::string process;
  int processVersion = 0;
  InstanceStatus status = InstanceStatus::Running;
  std::string currentStep;  // the open or last step; empty before the first
  StepRunStatus currentStepStatus = StepRunStatus::Ready;
  // The open or last step run's number (the "31" of serial "5_31"); 0 before the first.
  std::int64_t currentRun = 0;
  std::string serial;  // the current step run's serial (async steps only)
  Fields fields;
  std::string error;  // why it failed or was cancelled
  Timestamp createdAt{};
  Timestamp updatedAt{};
};

// What startOnce reports.
struct Started {
  InstanceId id = 0;
  std::string process;
  int processVersion = 0;  // the version the instance runs (the first start's, on a repeat)
  bool created = false;    // false: the key named an instance an earlier call started
};

// One waiting step run, as waiting() lists it.
struct WaitingStep {
  std::string serial;  // what the external system passes to completeServerEvent
  InstanceId instance = 0;
  std::string process;
  int processVersion = 0;
  std::string step;
  Timestamp waitingSince{};
  std::optional<Timestamp> deadline;  // none unless the step has a timeout
};

// Where a page of waiting() starts: after this (instance, run). Default: the start.
struct WaitingCursor {
  InstanceId instance = 0;
  std::int64_t run = 0;
};

// What waiting() lists.
struct WaitingFilter {
  std::string process;      // only this process; empty (the default): every process
  std::string step;         // only this step; empty (the default): every step
  WaitingCursor after;      // continue after this cursor (a previous page's `next`)
  std::size_t limit = 100;  // page size, 1 to 10,000
};

// One page of waiting step runs, in (instance, run) order.
struct WaitingPage {
  std::vector<WaitingStep> steps;
  // Where the next page starts; empty when this page is the last.
  std::optional<WaitingCursor> next;
};

// What the engine holds in memory right now. Waiting steps never appear here.
struct EngineStats {
  std::size_t drivingInstances = 0;     // instances whose steps run at this moment
  std::size_t queuedContinuations = 0;  // continuations waiting for a worker
};

// Runs process instances against a Store.
//
// Every method is safe to call from any thread. One instance is driven by at
// most one thread at a time; different instances run in parallel. A waiting step
// costs the engine nothing: it is a row in the store. Errors are values; no
// method throws.
class Engine {
 public:
  // Shares ownership of `store`, which must not be null.
  explicit Engine(std::shared_ptr<Store> store, EngineOptions options = {});
  // Waits for running continuations to finish, then stops the workers.
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Registers a process version. InvalidProcess, with the reason, when it has no
  // steps, an empty or duplicate step or field name, a line naming an unknown
  // step, a default of the wrong type, a timeout or heartbeat of zero or less,
  // a cycle of lines that no rule and no async step breaks (naming its steps),
  // or a name and version already defined.
  // The first define() of a name and version on a store also stores its
  // declaration (fields, and steps with their heartbeat intervals), so that
  // hosts that define nothing can complete its serials; a later define() of
  // that version with other fields or steps, on any host, is InvalidProcess
  // (give the change a new version). StoreError when storing it failed: then
  // nothing is defined.
  // Then, if options.recoverOnDefine, recovers that version's instances (see
  // recover()); if that fails the process stays defined and the error is
  // returned, so the host can call recover() again.
  [[nodiscard]] Result<void> define(const Process& process);

  // Starts an instance of the newest defined version of `process`, with the
  // declared defaults overlaid by `fields`, and (inline mode) runs it until it
  // waits or ends. NotFound for an unknown process; InvalidField for an
  // undeclared or wrongly typed field; StoreError if the start was not stored.
  [[nodiscard]] Result<InstanceId> start(std::string_view process, Fields fields = {});

  // start(), at most once per (process, idempotencyKey), across every engine on
  // the store and across restarts. The first call starts the instance and, in
  // the same commit, stores the key with a fingerprint of `fields` as given. A
  // later call with the key and the same fields (names, types and values: 1 and
  // 1.0 differ) reports that instance with created == false and runs nothing;
  // it is answered from the store, so a newer version defined since changes
  // nothing. Of concurrent calls with one key exactly one creates; the others
  // report its instance. Errors, in the order checked:
  //   InvalidArgument: the key is empty, over 255 bytes, not printable ASCII
  //     (0x20 to 0x7E), or starts or ends with a space;
  //   NotFound: no version of `process` is defined here;
  //   KeyReused: the key started an instance with other fields;
  //   InvalidField: as start(), for a first call;
  //   StoreError: the store failed; nothing was written and the call may be
  //     repeated as it was.
  [[nodiscard]] Result<Started> startOnce(std::string_view process, std::string_view idempotencyKey,
                                          Fields fields = {});

  // The external system's callback: completes the step run named by `serial`
  // with `fields`. Success means the completion is durable; the next steps then
  // run (inline mode: before this returns; with workers: on a worker). Each
  // outcome has its own code, and on every error nothing changed:
  //
  //   situation                                          result
  //   the step waits, fields valid                       success: fields merged, next step runs
  //   its handler has not returned yet                   success: recorded, applied the moment
  //                                                      the handler returns wait() or complete()
  //                                                      (if the handler fails, the step fails)
  //   empty, malformed, wrong secret, or no secret
  //     where this engine requires one                   InvalidSerial
  //   well-formed but unknown, or a synchronous step     NotFound
  //   already completed, or a completion recorded        AlreadyCompleted
  //   timed out / failed / instance cancelled            TimedOut / StepFailed / Cancelled
  //   a field undeclared or of the wrong type            InvalidField, naming the field
  //   the store failed (disk full, busy, I/O)            StoreError; the caller may retry
  //   the instance kept changing under the call          Conflict; retry
  //   no host ever defined its process version           ProcessNotDefined
  //
  // The engine need not define the run's process version: the fields are then
  // checked against the declaration stored by the first define() of it, the
  // completion is recorded, and a host that defines the version moves the
  // instance on (it is woken through the store: EngineOptions::
  // changeCheckInterval).
  //
  // Concurrent completions of one serial: exactly one succeeds, the others get
  // AlreadyCompleted.
  [[nodiscard]] Result<void> completeServerEvent(std::string_view serial, Fields fields = {});

  // The external system reports that the work failed: the step run fails with
  // `reason`, `fields` are merged, and the instance follows the step's error
  // line or fails. A failure that arrives before the step waits is recorded and
  // applied when the handler returns. Errors as completeServerEvent.
  [[nodiscard]] Result<void> failServerEvent(std::string_view serial, std::string reason,
                                             Fields fields = {});

  // The open step run a serial names, as waiting() lists it: for the external
  // system (or an operator) to look its step up before completing it. A run
  // whose handler has not returned yet is listed with waitingSince at the epoch.
  // Errors as completeServerEvent for the same serial (InvalidSerial, NotFound,
  // AlreadyCompleted, TimedOut, StepFailed, Cancelled, StoreError); reads only.
  [[nodiscard]] Result<WaitingStep> serverEvent(std::string_view serial) const;

  // The external system is still working: moves the waiting step's deadline to
  // its heartbeat interval (or timeout) from now, and records the heartbeat.
  // Errors as completeServerEvent.
  [[nodiscard]] Result<void> heartbeat(std::string_view serial);

  // completeServerEvent for an external system that knows only its own id: the
  // waiting step `step` of process `process` whose business key (see
  // AsyncStep::correlate) is `key`. NotFound when none waits with that key,
  // AmbiguousKey when several do; otherwise as completeServerEvent.
  [[nodiscard]] Result<void> completeServerEventByKey(std::string_view process,
                                                      std::string_view step, std::string_view key,
                                                      Fields fields = {});

  // Re-runs the failed step of a failed instance as a new step run, with
  // attempt() one higher; a retried async step gets a new serial, and the old
  // one keeps answering StepFailed (or TimedOut). NotFound; InvalidArgument when
  // the instance has not failed; ProcessNotDefined; StoreError.
  [[nodiscard]] Result<void> retry(InstanceId id);

  // The instance's audit trail, oldest first. NotFound for an unknown id.
  [[nodiscard]] Result<std::vector<HistoryEvent>> history(InstanceId id) const;

  // Fires every timer whose deadline is at or before the clock's now: the run
  // becomes TimedOut and the instance escalates or fails. Returns how many fired.
  // A timer whose process version is not defined here stays due and is skipped.
  // StoreError when the store failed to fire a timer: that one stays due for the
  // next call (the others still fire). Also continues, when due, the drives the
  // engine delayed (a drive that yielded, or backs off after a store failure).
  // The timer thread does the same by itself (after a StoreError it tries again
  // a second later); hosts with timerThread off call this themselves.
  [[nodiscard]] Result<std::size_t> runDueTimers();

  // Ends the instance: its open step run and the instance become Cancelled, and
  // a later completion of its serial gets Cancelled. NotFound for an unknown id;
  // an instance that already ended answers AlreadyCompleted (it completed),
  // StepFailed (it failed) or Cancelled (it was cancelled).
  [[nodiscard]] Result<void> cancel(InstanceId id, std::string reason);

  // The instance's status, current step and fields. NotFound for an unknown id.
  [[nodiscard]] Result<InstanceInfo> instance(InstanceId id) const;

  // Lists waiting step runs, filtered by process and step, one page at a time;
  // a run the external system finished, waiting for a host that defines its
  // version, is not listed.
  // InvalidArgument when filter.limit is 0 or above 10,000; StoreError.
  [[nodiscard]] Result<WaitingPage> waiting(const WaitingFilter& filter = {}) const;

  // Re-drives instances that a crash left mid-step, for every defined process
  // version: a sync step re-runs (handlers run at least once), an async step's
  // start handler re-runs with the same serial, a completion that was committed
  // before its next steps ran continues. Each re-run sees attempt() one higher.
  // Instances this engine is driving right now, and instances under another
  // host's live lease, are left alone (the timer takes those over if their
  // lease expires); an instance offered by a host without its version is
  // taken as it is. Returns how many Running instances were looked at (inline
  // mode: run to their next wait or end on this thread, except one that this
  // engine's timer thread was driving already, which it carries on; with
  // workers: queued). waitIdle() waits for both.
  [[nodiscard]] Result<std::size_t> recover();

  // What the engine holds in memory. Thread-safe; never fails.
  EngineStats stats() const;

  // This host's lease owner id ("<ownerName>/<16 hex digits>", or the digits
  // alone), as the store records it on the instances this host drives. Fixed
  // for the engine's life; thread-safe; never fails.
  const std::string& owner() const;

  // Blocks until no continuation is queued or running, on a worker or on any
  // other thread (inline mode: a caller's, or the timer thread's). For tests
  // and orderly shutdown; never from a handler, which would wait for itself.
  void waitIdle();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace asyncflow
