// Engine::Impl: running steps. A drive takes an instance through the gate (one
// thread per instance), runs its current step, commits what the handler decided
// and goes on until the instance waits or ends. It yields after
// maxStepsPerDrive steps, and when the store fails it logs and tries again
// after a back-off: no instance is left Running for want of a recover() call.
#include <algorithm>
#include <exception>
#include <utility>

#include <fmt/format.h>

#include "engine/engine_impl.hpp"
#include "engine/handler_runner.hpp"
#include "util/exceptions.hpp"

namespace asyncflow {

using detail::Attempt;
using detail::Continuation;
using detail::Done;
using detail::Drive;
using detail::kLostRace;
using detail::retryOnConflict;
using detail::Transitions;

// Re-drives the Running instances of one process version, page by page.
Result<std::size_t> Engine::Impl::recoverProcess(const detail::CompiledProcess& process) {
  RunningQuery query;
  query.process = process.name;
  query.processVersion = process.version;
  std::size_t count = 0;
  for (;;) {
    auto ids = store_->listRunning(query);
    if (!ids) return tl::unexpected(ids.error());
    for (InstanceId id : *ids) continueInstance(id, Drive::Recover);
    count += ids->size();
    if (ids->size() < query.limit) return count;
    query.afterInstance = ids->back();
  }
}

void Engine::Impl::continueInstance(InstanceId id, Drive how) {
  workers_.submit(Continuation{id, how});
}

void Engine::Impl::retryLater(InstanceId id, Drive how, const std::string& trouble) {
  const auto delay = backoff_.failed(id);
  log(LogLevel::Warning,
      fmt::format("instance {}: {}; driving it again in {} ms", id, trouble, delay.count()));
  timer_.runAt(currentTime() + delay, [this, id, how] { continueInstance(id, how); });
}

// A request to drive an instance that another thread drives asks it for one
// more pass (a recovery request is dropped: that instance did not crash, and
// its driver commits or retries what it ran).
void Engine::Impl::drive(const Continuation& next) {
  const InstanceId id = next.id;
  if (next.how == Drive::Recover) takingOver_.remove(id);
  if (!gate_.enter(id, next.how == Drive::Continue)) return;
  const std::size_t maxSteps = std::max<std::size_t>(options_.maxStepsPerDrive, 1);
  std::size_t steps = 0;
  for (;;) {
    Progress outcome = Progress::Stop;
    std::string trouble;
    try {
      for (;;) {
        if (shuttingDown_) {
          releaseLease(id, uncommitted_.contains(id) ? Release::Expire : Release::Offer);
          gate_.leave(id);
          return;
        }
        outcome = stepOnce(id, trouble);
        if (outcome != Progress::Again) break;
        if (++steps >= maxSteps) {
          // Let other instances (and other callers) have a turn: the rest runs
          // later, on a worker or, inline, on the timer.
          log(LogLevel::Warning,
              fmt::format("instance {} ran {} steps in a row without waiting; yielding (does "
                          "a handler loop with goTo()?)",
                          id, steps));
          gate_.leave(id);
          if (workers_.isInline()) {
            timer_.runAt(currentTime(), [this, id] { continueInstance(id, Drive::Continue); });
          } else {
            continueInstance(id, Drive::Continue);
          }
          return;
        }
      }
    } catch (...) {
      // A throwing store, or allocation failure: as a store failure after the
      // handler ran (it may have).
      trouble = detail::describeException(std::current_exception());
      uncommitted_.add(id);
      outcome = Progress::Failed;
    }
    if (outcome == Progress::Failed) {
      gate_.leave(id);
      retryLater(id, Drive::Continue, trouble);
      return;
    }
    backoff_.succeeded(id);
    if (!gate_.leaveOrLoop(id)) return;
  }
}

// Runs the instance's current step once and commits the result; `trouble`
// says why on Progress::Failed.
//
// Leases (DESIGN.md section 8): an instance under another host's live lease is
// left alone. One whose lease expired, or that has none (written before
// leases), may have had its handler run by a host that died: it restarts with
// attempt+1 under this host's lease. An offered one (a host without the
// version finished its wait, or a host stopped in order) is taken as it is.
// One under this engine's own lease re-runs only when this engine's handler
// ran without its decision committed (uncommitted_): no other life writes
// this engine's owner id, so nothing else can have run it.
Engine::Impl::Progress Engine::Impl::stepOnce(InstanceId id, std::string& trouble) {
  auto snapshot = store_->loadInstance(id);
  if (!snapshot) {
    trouble = snapshot.error().toString();
    return Progress::Failed;
  }
  const Timestamp now = currentTime();
  const bool mine = snapshot->record.leaseOwner == owner_;
  const detail::LeaseState leased =
      detail::leaseStateOf(snapshot->record, mine ? now : now - skew_);
  if (snapshot->record.status != InstanceStatus::Running ||
      (leased == detail::LeaseState::Live && !mine)) {
    // Ended, or another host's now: whichever re-runs it counts a new attempt
    // by its own rule, so what this engine ran is no concern of its any more.
    uncommitted_.remove(id);
    return Progress::Stop;
  }
  const auto openRun = detail::openRunOf(snapshot->record);
  if (!openRun) return Progress::Stop;
  auto run = store_->loadStepRun(id, *openRun);
  if (!run) {
    trouble = run.error().toString();
    return Progress::Failed;
  }
  ProcessPtr process = registry_.find(snapshot->record.process, snapshot->record.processVersion);
  if (auto recorded = Transitions::recordedDecision(*run)) {
    // The external system finished this wait through a host without the
    // version: close it here, under this host's lease.
    if (!process) return Progress::Stop;
    return commitDecision(*process, std::move(*snapshot), std::move(*run), *recorded, trouble);
  }
  if (run->status != StepRunStatus::Ready && run->status != StepRunStatus::Starting) {
    return Progress::Stop;
  }
  if (!process) {
    log(LogLevel::Warning, notDefined(snapshot->record).value().message);
    return Progress::Stop;  // it waits for a define() of its version, which recovers it
  }
  auto step = detail::stepOf(*process, *run);
  if (!step) {
    log(LogLevel::Warning, step.error().message);
    return Progress::Stop;
  }

  // Whether the handler may have run before: here (a failed commit) or on a
  // host whose lease expired.
  const bool rerun = run->status == StepRunStatus::Ready ||
                     (mine ? uncommitted_.contains(id) : leased != detail::LeaseState::Offered);
  // Whether this host must (re)write its lease before the handler starts: it is
  // another host's, or less than two thirds of it is left (the instance waited
  // in a queue).
  const bool stale = !snapshot->record.leaseExpiry ||
                     *snapshot->record.leaseExpiry - now < leaseDuration_ - leaseDuration_ / 3;
  if (rerun || !mine || stale) {
    // The handler may have run before a crash: count this as a new attempt,
    // durably, before running it again. Or only take the lease.
    Result<ChangeSet> set = rerun ? Transitions::restartAfterCrash(*snapshot, *run, now)
                                  : Transitions::guardedUpdate(*snapshot, now);
    if (!set) {
      trouble = set.error().toString();
      return Progress::Failed;
    }
    lease(*set);
    StepRunRecord restarted = rerun ? set->stepRuns.front() : *run;
    InstanceRecord header = set->instance;
    auto applied = committer_.commit(std::move(*set));
    if (!applied) {
      trouble = applied.error().toString();
      return Progress::Failed;
    }
    if (applied->status == ApplyStatus::Conflict) {
      // Changed meanwhile (say, an early completion, or another host took
      // it): look again. uncommitted_ still holds it, so the handler never
      // re-runs with the attempt() whose commit failed.
      return Progress::Again;
    }
    if (rerun) uncommitted_.remove(id);  // the new attempt is durable
    header.version = snapshot->record.version + 1;
    snapshot->record = std::move(header);
    *run = std::move(restarted);
  }

  // In flight until its decision is committed: renewed if it runs long.
  struct InFlight {
    Impl& engine;
    InstanceId id;
    ~InFlight() {
      if (const std::uint64_t sweep = engine.keeper_.end(id)) engine.timer_.cancel(sweep);
    }
  } inFlight{*this, id};
  if (keeper_.begin(id, snapshot->record.leaseExpiry.value_or(now))) scheduleRenewal();
  const detail::Decision decision = detail::runHandler(*process, **step, *snapshot, *run);
  const Progress result =
      commitDecision(*process, std::move(*snapshot), std::move(*run), decision, trouble);
  // The handler ran: a failed commit of its decision makes the next try a re-run.
  if (result == Progress::Failed) uncommitted_.add(id);
  return result;
}

// Commits a handler's decision. If a server event or cancel changed the
// instance while the handler ran, re-applies the decision to the newer state,
// or lets go when the run was closed or restarted meanwhile.
Engine::Impl::Progress Engine::Impl::commitDecision(const detail::CompiledProcess& process,
                                                    InstanceSnapshot snapshot, StepRunRecord run,
                                                    const detail::Decision& decision,
                                                    std::string& trouble) {
  const int attempt = run.attempt;
  const InstanceId id = run.instance;
  const std::int64_t runId = run.run;
  auto committed = retryOnConflict(detail::Subject{id, runId}, [&]() -> Attempt<Progress> {
    auto set = transitions_.close(process, snapshot, run, decision, currentTime());
    if (!set) return tl::unexpected(set.error());
    lease(*set);
    const bool running = set->instance.status == InstanceStatus::Running;
    auto applied = committer_.commit(std::move(*set));
    if (!applied) return tl::unexpected(applied.error());
    if (applied->status == ApplyStatus::Applied) {
      return std::optional<Progress>(running ? Progress::Again : Progress::Stop);
    }
    auto newer = store_->loadInstance(id);
    if (!newer) return tl::unexpected(newer.error());
    if (newer->record.status != InstanceStatus::Running)
      return std::optional<Progress>(Progress::Stop);
    if (newer->record.leaseOwner != owner_ &&
        detail::leaseStateOf(newer->record, currentTime() - skew_) == detail::LeaseState::Live) {
      return std::optional<Progress>(Progress::Stop);  // another host took it over
    }
    auto newerRun = store_->loadStepRun(id, runId);
    if (!newerRun) return tl::unexpected(newerRun.error());
    const bool closing = run.status == StepRunStatus::Waiting;  // a recorded completion
    if (newerRun->attempt != attempt || newerRun->status != run.status ||
        (!closing && newerRun->status != StepRunStatus::Ready &&
         newerRun->status != StepRunStatus::Starting)) {
      return std::optional<Progress>(
          Progress::Again);  // someone else moved this run on; look again
    }
    snapshot = std::move(*newer);
    run = std::move(*newerRun);
    return kLostRace;
  });
  if (!committed) {
    trouble = committed.error().toString();
    return Progress::Failed;
  }
  return *committed;
}

void Engine::Impl::lease(ChangeSet& set) const {
  Transitions::takeLease(set, owner_, currentTime() + leaseDuration_);
}

// Every lease of another host expired (or offered) at `now`, page by page, to
// a drive of this host when it defines the version; a drive that finds it live
// again (renewed, or taken by another host meanwhile) leaves it, and one that
// finds this engine's lease (an earlier request took it) goes on without a
// new attempt.
detail::TimerPass Engine::Impl::takeOver(Timestamp now) {
  detail::TimerPass pass;
  LeaseQuery query;
  query.now = now - skew_;
  for (;;) {
    auto expired = store_->listExpiredLeases(query);
    if (!expired) {
      pass.failure = expired.error();
      return pass;
    }
    for (const ExpiredLease& lease : *expired) {
      // Its own are queued or backing off here: those drives re-take them.
      if (lease.owner == owner_) continue;
      if (!registry_.find(lease.process, lease.processVersion)) {
        ++pass.notFired;  // it waits for a host that defines it
        continue;
      }
      ++pass.fired;
      // Once: a lease listed again before its drive began is queued already.
      if (takingOver_.add(lease.instance)) continueInstance(lease.instance, Drive::Recover);
    }
    if (expired->size() < query.limit) return pass;
    query.after = expired->back().cursor();
  }
}

void Engine::Impl::scheduleRenewal() {
  keeper_.sweepScheduled(
      timer_.runAt(currentTime() + keeper_.sweepInterval(), [this] { renewLeases(); }));
}

void Engine::Impl::renewLeases() {
  for (InstanceId id : keeper_.due(currentTime())) {
    auto renewed = renewLease(id);
    if (!renewed) {
      log(LogLevel::Warning, fmt::format("instance {}: renewing its lease failed: {}", id,
                                         renewed.error().toString()));
    } else if (*renewed) {
      keeper_.renewed(id, **renewed);
    }
  }
  if (keeper_.sweepAgain()) scheduleRenewal();
}

Result<std::optional<Timestamp>> Engine::Impl::renewLease(InstanceId id) {
  return retryOnConflict(detail::Subject{id}, [&]() -> Attempt<std::optional<Timestamp>> {
    auto snapshot = store_->loadInstance(id);
    if (!snapshot) return tl::unexpected(snapshot.error());
    if (snapshot->record.status != InstanceStatus::Running ||
        snapshot->record.leaseOwner != owner_) {
      return std::optional<std::optional<Timestamp>>(std::optional<Timestamp>());
    }
    ChangeSet set = Transitions::guardedUpdate(*snapshot, currentTime());
    lease(set);
    const std::optional<Timestamp> expiry = set.instance.leaseExpiry;
    auto committed = committer_.commit(std::move(set));
    if (!committed) return tl::unexpected(committed.error());
    if (committed->status == ApplyStatus::Conflict) return kLostRace;
    return std::optional<std::optional<Timestamp>>(expiry);
  });
}

// Best effort: should it fail, the lease expires and another host takes the
// instance over then, with attempt+1.
void Engine::Impl::releaseLease(InstanceId id, Release how) {
  auto released = retryOnConflict(detail::Subject{id}, [&]() -> Attempt<Done> {
    auto snapshot = store_->loadInstance(id);
    if (!snapshot) return tl::unexpected(snapshot.error());
    if (snapshot->record.status != InstanceStatus::Running ||
        snapshot->record.leaseOwner != owner_) {
      return Done{};
    }
    const Timestamp now = currentTime();
    ChangeSet set = Transitions::guardedUpdate(*snapshot, now);
    if (how == Release::Offer) {
      Transitions::offerLease(set, now);
    } else {
      Transitions::takeLease(set, owner_, now);
    }
    auto committed = committer_.commit(std::move(set));
    if (!committed) return tl::unexpected(committed.error());
    if (committed->status == ApplyStatus::Conflict) return kLostRace;
    return Done{};
  });
  if (!released) {
    log(LogLevel::Warning, fmt::format("instance {}: could not hand it over on stopping: {}", id,
                                       released.error().toString()));
  }
}

}  // namespace asyncflow
