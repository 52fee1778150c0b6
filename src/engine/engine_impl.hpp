// Engine::Impl (internal): the orchestration behind the Engine facade.
//
// Every command has one shape: load, ask the state machine (model/transitions)
// what to write or why not, commit under retryOnConflict, then continue the
// instance. The parts each do one job, in their own files with their own tests:
//
//   ProcessRegistry  the defined process versions            process_registry.hpp
//   Committer        commit + listener/log/timer fan-out     committer.hpp
//   InstanceGate     one thread per instance                 instance_gate.hpp
//   WorkerPool       continuations on workers or inline      worker_pool.hpp
//   TimerService     deadlines and delayed drives            timer_service.hpp
//   runHandler       a handler's outcome as a Decision       handler_runner.hpp
//   LeaseKeeper      handlers in flight, for lease renewal   lease_keeper.hpp
//   Peers            engines of this process on one store    peers.hpp
//
// Several hosts share a store (DESIGN.md section 8): every commit that leaves
// an instance Running for this host to drive carries this host's lease
// (Transitions::takeLease); a drive leaves an instance alone while another
// host's lease is live, and takes over an expired one; the timer hands expired
// and offered leases to drives (takeOver).
//
// The methods are split by concern: engine.cpp (construction, the facade),
// engine_commands.cpp (what changes instances), engine_queries.cpp (what
// reads), engine_drive.cpp (running steps: drive, recovery, timers firing).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "asyncflow/engine.hpp"
#include "engine/committer.hpp"
#include "engine/continuation.hpp"
#include "engine/instance_gate.hpp"
#include "engine/lease_keeper.hpp"
#include "engine/process_registry.hpp"
#include "engine/timer_service.hpp"
#include "engine/worker_pool.hpp"
#include "model/process_model.hpp"
#include "model/transitions.hpp"

namespace asyncflow {

class Engine::Impl {
 public:
  Impl(std::shared_ptr<Store> store, EngineOptions options);
  // Stops the timer, lets the workers finish what is queued (drives stop at
  // their next step), then joins them.
  ~Impl();

  // --- commands (engine_commands.cpp) ---
  Result<void> define(const Process& process);
  Result<InstanceId> start(std::string_view name, const Fields& fields);
  Result<Started> startOnce(std::string_view name, std::string_view key, const Fields& fields);
  Result<void> applyEventBySerial(std::string_view serial, detail::ServerEvent event);
  Result<void> completeByKey(std::string_view process, std::string_view step, std::string_view key,
                             const Fields& fields);
  Result<void> cancel(InstanceId id, const std::string& reason);
  Result<void> retry(InstanceId id);
  Result<std::size_t> recover();
  Result<std::size_t> runDueTimers();

  // --- queries (engine_queries.cpp) ---
  Result<WaitingPage> waiting(const WaitingFilter& filter) const;
  Result<WaitingStep> serverEvent(std::string_view serial) const;
  Result<std::vector<HistoryEvent>> history(InstanceId id) const;
  Result<InstanceInfo> instance(InstanceId id) const;
  EngineStats stats() const;
  void waitIdle();
  const std::string& owner() const { return owner_; }

 private:
  using ProcessPtr = detail::ProcessRegistry::ProcessPtr;

  // Which step run a server event is for, and what must match: the serial's
  // secret (when the serial carries one), or the business key it was found by.
  struct RunSelector {
    StepRunKey key;
    std::optional<std::string> secret;
    std::optional<std::string> businessKey;
  };

  // What a server event acts on: the instance, the run, and its process
  // version (null when the version is not defined here).
  struct OpenRun {
    InstanceSnapshot snapshot;
    StepRunRecord run;
    ProcessPtr process;
  };
  using DeclaredPtr = detail::ProcessRegistry::DeclaredPtr;

  // What stepOnce() found.
  enum class Progress {
    Again,   // there may be more to run now
    Stop,    // the instance waits, ended, or another thread moved it on
    Failed,  // the store failed: try the drive again after a back-off
  };

  // --- commands ---
  // Checks `fields` and commits a new instance of `process`, claiming `key` when
  // given; continues the instance when the store applied it. The store's answer
  // otherwise (KeyTaken), for the caller to read.
  Result<ApplyResult> create(const detail::CompiledProcess& process, const Fields& fields,
                             std::optional<StartKey> key);
  Result<OpenRun> openRun(const RunSelector& selector,
                          std::optional<detail::ServerEvent::Kind> event) const;
  Result<void> applyEvent(const RunSelector& selector, const detail::ServerEvent& event);
  Result<bool> fireTimer(const DueRun& timer, Timestamp now);
  detail::TimerPass fireDueTimers(Timestamp now);
  // The stored declaration of a version not defined here (read once, then
  // kept); ProcessNotDefined when no host ever defined it.
  Result<DeclaredPtr> declaredProcess(const InstanceRecord& record);
  // Stores the declaration of `process` (the first one wins) and refuses a
  // version declared with other fields or steps by another host.
  Result<void> declare(const detail::CompiledProcess& process);

  // --- leases (engine_drive.cpp) ---
  // Writes this host's lease into `set` (cleared unless it stays Running).
  void lease(ChangeSet& set) const;
  // Hands every expired or offered lease of a version defined here to a drive.
  detail::TimerPass takeOver(Timestamp now);
  // Renews the leases of handlers running longer than a third of the lease,
  // and schedules the next sweep while any runs.
  void renewLeases();
  void scheduleRenewal();
  // Commits a renewal of the lease of `id` while this host holds it; the new
  // expiry, or none when the lease is no longer this host's.
  Result<std::optional<Timestamp>> renewLease(InstanceId id);
  // On an orderly stop, hands an instance this host holds to any host:
  // offered when its next handler has not begun; expired now when it may have
  // run (a drive backing off after a failed commit), so that the next host
  // counts a new attempt.
  enum class Release { Offer, Expire };
  void releaseLease(InstanceId id, Release how);

  // --- driving (engine_drive.cpp) ---
  Result<std::size_t> recoverProcess(const detail::CompiledProcess& process);
  // Hands the instance to the workers (or drives it inline).
  void continueInstance(InstanceId id, detail::Drive how);
  // Drives one instance until it waits, ends, yields or fails; the worker
  // pool's runner. Never throws.
  void drive(const detail::Continuation& next);
  Progress stepOnce(InstanceId id, std::string& trouble);
  Progress commitDecision(const detail::CompiledProcess& process, InstanceSnapshot snapshot,
                          StepRunRecord run, const detail::Decision& decision,
                          std::string& trouble);
  // Tries the drive again after the back-off, logging why.
  void retryLater(InstanceId id, detail::Drive how, const std::string& trouble);

  // --- helpers ---
  // The clock's time, truncated to the microseconds every store keeps.
  Timestamp currentTime() const;
  static tl::unexpected<Error> notDefined(const InstanceRecord& record);
  void log(LogLevel level, std::string_view message) const { committer_.log(level, message); }

  // Constant after construction. Declaration order is construction order: the
  // workers and then the timer last, so that their threads start once
  // everything they use exists (the timer fires into the workers). The
  // destructor stops both explicitly before any member goes.
  const std::shared_ptr<Store> store_;
  const EngineOptions options_;
  const std::shared_ptr<Clock> clock_;
  const std::shared_ptr<RandomSource> random_;
  const detail::Transitions transitions_;
  // This host's lease owner id, and how long a lease it writes lasts.
  const std::string owner_;
  const std::chrono::microseconds leaseDuration_;
  // Another host's lease is expired for this one only this long after its expiry.
  const std::chrono::microseconds skew_;

  // Thread-safe parts, each guarded by its own lock inside.
  detail::ProcessRegistry registry_;
  detail::InstanceGate gate_;
  // Instances whose takeover drive is queued and has not begun: the timer
  // lists an expired lease on every pass until a drive takes it (with a
  // backlog on the workers, many passes), and queues one drive each.
  detail::InstanceSet takingOver_;
  // Instances whose handler ran in this engine without its decision
  // committed: whatever drives them next re-runs the step as a new attempt,
  // and an engine shutting down lets their lease expire rather than offer it.
  detail::InstanceSet uncommitted_;
  detail::DriveBackoff backoff_;
  detail::LeaseKeeper keeper_;
  // Set by the destructor: drives stop at their next step instead of yielding
  // to a worker, so that shutting down never waits for an endless process.
  std::atomic<bool> shuttingDown_{false};
  detail::Committer committer_;
  detail::WorkerPool workers_;
  detail::TimerService timer_;
  // Another host's commit wakes the timer at once, where the store pushes
  // (Store::watchChanges); the change check every changeCheckInterval stays as
  // the net under it. Released first by the destructor.
  std::unique_ptr<ChangeWatch> watch_;
};

}  // namespace asyncflow
