#include "asyncflow/engine.hpp"

#include <condition_variable>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "process_model.hpp"
#include "serial.hpp"

namespace asyncflow {
namespace {

// How often a writer reloads and retries after losing an optimistic-concurrency
// race before it reports Conflict. Races on one instance are between a handler's
// commit, a completion and a cancel, so a handful of retries always suffices in
// practice; the bound only stops a pathological livelock.
constexpr int kMaxWriteRetries = 64;

// What a handler produced, kept apart from the snapshot it ran on so that it can
// be re-applied to a newer snapshot after a concurrent completion or cancel.
struct HandlerResult {
  enum class Kind { Next, GoTo, Finish, Wait, Complete, Fail };
  Kind kind = Kind::Fail;
  std::string text;  // goTo target or failure reason
  Fields writes;     // validated field writes
};

Fields changedFields(const Fields& before, const Fields& after) {
  Fields changed;
  for (const auto& [name, value] : after) {
    const Value* old = before.find(name);
    if (old == nullptr || *old != value) changed.set(name, value);
  }
  return changed;
}

std::string describeException(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown exception";
  }
}

}  // namespace

class Engine::Impl {
  // Why an instance is driven: to continue after a commit of this engine, or to
  // recover it after a crash (its current handler may have run already).
  enum class Drive { Continue, Recover };
  struct Continuation {
    InstanceId id = 0;
    Drive how = Drive::Continue;
  };

 public:
  Impl(std::shared_ptr<Store> store, EngineOptions options)
      : store_(std::move(store)), options_(std::move(options)) {
    if (!options_.clock) options_.clock = systemClock();
    if (!options_.random) options_.random = osRandom();
    for (std::size_t i = 0; i < options_.workers; ++i) {
      workers_.emplace_back([this] { workerLoop(); });
    }
  }

  ~Impl() {
    waitIdle();
    {
      std::lock_guard lock(queueMutex_);
      stopping_ = true;
    }
    queueChanged_.notify_all();
    for (auto& worker : workers_) worker.join();
  }

  Result<void> define(const Process& process) {
    auto compiled = detail::compileProcess(process);
    if (!compiled) return tl::unexpected(compiled.error());
    {
      std::unique_lock lock(processesMutex_);
      auto& versions = processes_[process.name()];
      if (versions.count(process.version()) != 0) {
        return fail(Errc::InvalidProcess, fmt::format("process '{}' version {} is already defined",
                                                      process.name(), process.version()));
      }
      versions.emplace(process.version(), *compiled);
    }
    if (!options_.recoverOnDefine) return {};
    auto recovered = recoverProcess(**compiled);
    if (!recovered) {
      return fail(recovered.error().code,
                  fmt::format("process '{}' version {} is defined, but recovering its instances "
                              "failed (call recover() to retry): {}",
                              process.name(), process.version(), recovered.error().message));
    }
    return {};
  }

  Result<std::size_t> recover() {
    std::vector<ProcessPtr> all;
    {
      std::shared_lock lock(processesMutex_);
      for (const auto& [name, versions] : processes_) {
        for (const auto& [version, process] : versions) all.push_back(process);
      }
    }
    std::size_t total = 0;
    for (const auto& process : all) {
      auto recovered = recoverProcess(*process);
      if (!recovered) return recovered;
      total += *recovered;
    }
    return total;
  }

  Result<WaitingPage> waiting(const WaitingFilter& filter) const {
    constexpr std::size_t kMaxPage = 10'000;
    if (filter.limit == 0 || filter.limit > kMaxPage) {
      return fail(Errc::InvalidArgument,
                  fmt::format("waiting(): limit must be 1 to {}, not {}", kMaxPage, filter.limit));
    }
    WaitingQuery query;
    query.process = filter.process;
    query.step = filter.step;
    query.afterInstance = filter.after.instance;
    query.afterRun = filter.after.run;
    query.limit = filter.limit;
    auto rows = store_->listWaiting(query);
    if (!rows) return tl::unexpected(rows.error());
    WaitingPage page;
    page.steps.reserve(rows->size());
    for (auto& row : *rows) {
      WaitingStep step;
      step.serial = detail::formatSerial(row.run.instance, row.run.run, row.run.secret);
      step.instance = row.run.instance;
      step.process = std::move(row.process);
      step.processVersion = row.processVersion;
      step.step = std::move(row.run.step);
      step.waitingSince = row.run.waitingSince;
      step.deadline = row.run.deadline;
      page.steps.push_back(std::move(step));
    }
    if (rows->size() == filter.limit) {
      page.next = WaitingCursor{rows->back().run.instance, rows->back().run.run};
    }
    return page;
  }

  EngineStats stats() const {
    EngineStats stats;
    {
      std::lock_guard lock(drivingMutex_);
      stats.drivingInstances = driving_.size();
    }
    std::lock_guard lock(queueMutex_);
    stats.queuedContinuations = queue_.size();
    return stats;
  }

  Result<InstanceId> start(std::string_view name, const Fields& fields) {
    auto process = newest(name);
    if (!process) return fail(Errc::NotFound, fmt::format("no process named '{}'", name));
    auto given = process->checkFields(fields);
    if (!given) return tl::unexpected(given.error());

    const Timestamp now = currentTime();
    ChangeSet set;
    set.instance.process = process->name;
    set.instance.processVersion = process->version;
    set.instance.status = InstanceStatus::Running;
    set.instance.createdAt = now;
    set.instance.updatedAt = now;
    set.fields = process->defaults;
    set.fields.merge(*given);
    auto first = newRun(*process, set.instance, 0, now);
    if (!first) return tl::unexpected(first.error());
    set.stepRuns.push_back(std::move(*first));

    auto applied = applyOne(std::move(set));
    if (!applied) return tl::unexpected(applied.error());
    continueInstance(applied->instance, Drive::Continue);
    return applied->instance;
  }

  Result<void> completeServerEvent(std::string_view serial, const Fields& fields) {
    auto parts = detail::parseSerial(serial);
    if (!parts) return tl::unexpected(parts.error());
    if (parts->secret.empty() && options_.serials == SerialForm::WithSecret) {
      return fail(Errc::InvalidSerial, "the serial has no secret, and this engine requires one");
    }
    const std::string shown = detail::formatSerial(parts->instance, parts->run, {});

    for (int attempt = 0; attempt < kMaxWriteRetries; ++attempt) {
      // Instance first, then run: every change to a run bumps its instance's
      // version, so a run read after the instance is never older than the
      // version the change set below is guarded by.
      auto snapshot = store_->loadInstance(parts->instance);
      if (!snapshot) {
        if (snapshot.error().code != Errc::NotFound) return tl::unexpected(snapshot.error());
        return fail(Errc::NotFound, fmt::format("no step run {}", shown));
      }
      auto run = store_->loadStepRun(parts->instance, parts->run);
      if (!run) return tl::unexpected(run.error());
      if (!detail::constantTimeEquals(run->secret, parts->secret)) {
        return fail(Errc::InvalidSerial, fmt::format("wrong secret for step run {}", shown));
      }
      if (run->kind != StepKind::Async) {
        return fail(Errc::NotFound,
                    fmt::format("step run {} ('{}') is not an async step", shown, run->step));
      }
      if (auto closed = refuseCompletion(*snapshot, *run, shown); !closed) {
        return tl::unexpected(closed.error());
      }
      auto process = find(snapshot->record.process, snapshot->record.processVersion);
      if (!process) {
        return fail(Errc::NotFound,
                    fmt::format("process '{}' version {} is not defined in this engine",
                                snapshot->record.process, snapshot->record.processVersion));
      }
      auto checked = process->checkFields(fields);
      if (!checked) return tl::unexpected(checked.error());

      const Timestamp now = currentTime();
      const bool waiting = run->status == StepRunStatus::Waiting;
      run->hasCompletion = true;
      run->completion = std::move(*checked);
      ChangeSet set;
      if (waiting) {
        const HandlerResult completed{HandlerResult::Kind::Complete, {}, {}};
        auto built = closeRun(*process, *snapshot, std::move(*run), completed, now);
        if (!built) return tl::unexpected(built.error());
        set = std::move(*built);
      } else {
        // Ready or Starting: the handler has not returned yet. Record the
        // completion; the step completes as soon as the handler returns wait().
        set.instance = snapshot->record;
        set.instance.updatedAt = now;
        set.expectedVersion = snapshot->record.version;
        set.stepRuns.push_back(std::move(*run));
      }
      const bool moveOn = waiting && set.instance.status == InstanceStatus::Running;
      auto applied = applyOne(std::move(set));
      if (!applied) return tl::unexpected(applied.error());
      if (applied->status == ApplyStatus::Conflict) continue;
      if (moveOn) continueInstance(parts->instance, Drive::Continue);
      return {};
    }
    return fail(Errc::Conflict, fmt::format("step run {} kept changing; retry", shown));
  }

  Result<void> cancel(InstanceId id, const std::string& reason) {
    for (int attempt = 0; attempt < kMaxWriteRetries; ++attempt) {
      auto snapshot = store_->loadInstance(id);
      if (!snapshot) return tl::unexpected(snapshot.error());
      const InstanceRecord& record = snapshot->record;
      switch (record.status) {
        case InstanceStatus::Completed:
          return fail(Errc::AlreadyCompleted, fmt::format("instance {} already completed", id));
        case InstanceStatus::Failed:
          return fail(Errc::StepFailed,
                      fmt::format("instance {} already failed: {}", id, record.error));
        case InstanceStatus::Cancelled:
          return fail(Errc::Cancelled, fmt::format("instance {} is already cancelled", id));
        case InstanceStatus::Running:
        case InstanceStatus::Waiting: break;
      }
      const Timestamp now = currentTime();
      ChangeSet set;
      set.expectedVersion = record.version;
      set.instance = record;
      set.instance.status = InstanceStatus::Cancelled;
      set.instance.error = reason;
      set.instance.updatedAt = now;
      if (record.currentRun != 0) {
        auto run = store_->loadStepRun(id, record.currentRun);
        if (!run) return tl::unexpected(run.error());
        if (!isTerminal(run->status)) {
          run->status = StepRunStatus::Cancelled;
          run->error = reason;
          run->finishedAt = now;
          set.stepRuns.push_back(std::move(*run));
        }
      }
      auto applied = applyOne(std::move(set));
      if (!applied) return tl::unexpected(applied.error());
      if (applied->status == ApplyStatus::Applied) return {};
    }
    return fail(Errc::Conflict, fmt::format("instance {} kept changing; retry", id));
  }

  Result<InstanceInfo> instance(InstanceId id) const {
    auto snapshot = store_->loadInstance(id);
    if (!snapshot) return tl::unexpected(snapshot.error());
    InstanceInfo info;
    const InstanceRecord& record = snapshot->record;
    info.id = record.id;
    info.process = record.process;
    info.processVersion = record.processVersion;
    info.status = record.status;
    info.error = record.error;
    info.createdAt = record.createdAt;
    info.updatedAt = record.updatedAt;
    info.fields = std::move(snapshot->fields);
    if (record.currentRun != 0) {
      auto run = store_->loadStepRun(id, record.currentRun);
      if (!run) return tl::unexpected(run.error());
      info.currentStep = run->step;
      info.currentStepStatus = run->status;
      if (run->kind == StepKind::Async) {
        info.serial = detail::formatSerial(id, run->run, run->secret);
      }
    }
    return info;
  }

  void waitIdle() {
    std::unique_lock lock(queueMutex_);
    idle_.wait(lock, [this] { return queue_.empty() && busy_ == 0; });
  }

 private:
  using ProcessPtr = std::shared_ptr<const detail::CompiledProcess>;

  // The clock's time, truncated to the microseconds every store keeps.
  Timestamp currentTime() const {
    return std::chrono::time_point_cast<std::chrono::microseconds>(options_.clock->now());
  }

  ProcessPtr find(const std::string& name, int version) const {
    std::shared_lock lock(processesMutex_);
    auto it = processes_.find(name);
    if (it == processes_.end()) return nullptr;
    auto found = it->second.find(version);
    return found == it->second.end() ? nullptr : found->second;
  }

  ProcessPtr newest(std::string_view name) const {
    std::shared_lock lock(processesMutex_);
    auto it = processes_.find(name);
    if (it == processes_.end() || it->second.empty()) return nullptr;
    return it->second.rbegin()->second;
  }

  // The error a completion gets when the run or instance can no longer take one.
  static Result<void> refuseCompletion(const InstanceSnapshot& snapshot, const StepRunRecord& run,
                                       const std::string& shown) {
    if (run.status == StepRunStatus::Cancelled ||
        snapshot.record.status == InstanceStatus::Cancelled) {
      return fail(Errc::Cancelled, fmt::format("instance {} was cancelled", run.instance));
    }
    switch (run.status) {
      case StepRunStatus::Completed:
        return fail(Errc::AlreadyCompleted, fmt::format("step run {} is already completed", shown));
      case StepRunStatus::Failed:
        return fail(Errc::StepFailed, fmt::format("step run {} failed: {}", shown, run.error));
      case StepRunStatus::TimedOut:
        return fail(Errc::TimedOut, fmt::format("step run {} timed out", shown));
      case StepRunStatus::Ready:
      case StepRunStatus::Starting:
        if (run.hasCompletion) {
          return fail(Errc::AlreadyCompleted,
                      fmt::format("step run {} already has a completion recorded", shown));
        }
        return {};
      case StepRunStatus::Waiting:
      case StepRunStatus::Cancelled: return {};
    }
    return {};
  }

  // A new step run of step `index`, numbered after the instance's last run;
  // updates the header's run counters.
  Result<StepRunRecord> newRun(const detail::CompiledProcess& process, InstanceRecord& header,
                               std::size_t index, Timestamp now) {
    const auto& step = process.steps[index];
    StepRunRecord run;
    run.instance = header.id;
    run.run = header.lastRun + 1;
    run.step = step.name;
    run.kind = step.kind;
    // The engine starts a new run at once, so it is written as Starting: after a
    // crash that means "the handler may have begun", and it is re-run.
    run.status = StepRunStatus::Starting;
    run.attempt = 1;
    run.createdAt = now;
    if (step.kind == StepKind::Async && options_.serials == SerialForm::WithSecret) {
      auto secret = detail::newSecret(*options_.random);
      if (!secret) return tl::unexpected(secret.error());
      run.secret = std::move(*secret);
    }
    header.lastRun = run.run;
    header.currentRun = run.run;
    return run;
  }

  // The change set that closes `run` with `result` and moves the instance on:
  // to the next step run, to its end, or to Failed.
  Result<ChangeSet> closeRun(const detail::CompiledProcess& process,
                             const InstanceSnapshot& snapshot, StepRunRecord run,
                             const HandlerResult& result, Timestamp now) {
    ChangeSet set;
    set.expectedVersion = snapshot.record.version;
    set.instance = snapshot.record;
    set.instance.updatedAt = now;
    set.fields = result.writes;

    auto failInstance = [&](std::string why) {
      set.instance.status = InstanceStatus::Failed;
      set.instance.error = std::move(why);
    };

    switch (result.kind) {
      case HandlerResult::Kind::Fail:
        run.status = StepRunStatus::Failed;
        run.error = result.text;
        run.finishedAt = now;
        failInstance(fmt::format("step '{}' failed: {}", run.step, result.text));
        set.stepRuns.push_back(std::move(run));
        return set;
      case HandlerResult::Kind::Wait:
        if (!run.hasCompletion) {
          run.status = StepRunStatus::Waiting;
          run.waitingSince = now;
          set.instance.status = InstanceStatus::Waiting;
          set.stepRuns.push_back(std::move(run));
          return set;
        }
        // A completion arrived while the handler ran: complete at once.
        run.waitingSince = now;
        break;
      case HandlerResult::Kind::Next:
      case HandlerResult::Kind::GoTo:
      case HandlerResult::Kind::Finish:
      case HandlerResult::Kind::Complete: break;
    }

    // The completion's fields land after the handler's writes, and from then on
    // live in the instance, not on the run.
    if (run.hasCompletion) {
      set.fields.merge(run.completion);
      run.completion = Fields();
    }
    run.status = StepRunStatus::Completed;
    run.finishedAt = now;
    const std::size_t from = process.stepIndex.at(run.step);
    set.stepRuns.push_back(std::move(run));

    detail::Route route;
    if (result.kind == HandlerResult::Kind::Finish) {
      route = detail::Route::end();
    } else if (result.kind == HandlerResult::Kind::GoTo) {
      auto target = process.stepIndex.find(result.text);
      route = target == process.stepIndex.end()
                  ? detail::Route::failure(fmt::format("step '{}' went to unknown step '{}'",
                                                       process.steps[from].name, result.text))
                  : detail::Route::to(target->second);
    } else {
      Fields after = snapshot.fields;
      after.merge(set.fields);
      route = process.routeAfter(from, after);
    }

    switch (route.kind) {
      case detail::Route::Kind::End: set.instance.status = InstanceStatus::Completed; break;
      case detail::Route::Kind::Failure: failInstance(route.error); break;
      case detail::Route::Kind::Step: {
        set.instance.status = InstanceStatus::Running;
        auto next = newRun(process, set.instance, route.step, now);
        if (!next) return tl::unexpected(next.error());
        set.stepRuns.push_back(std::move(*next));
        break;
      }
    }
    return set;
  }

  // Applies one change set; a store that answers with the wrong count is a bug.
  Result<ApplyResult> applyOne(ChangeSet set) {
    std::vector<ChangeSet> batch;
    batch.push_back(std::move(set));
    auto results = store_->apply(std::move(batch));
    if (!results) return tl::unexpected(results.error());
    if (results->size() != 1) {
      return fail(Errc::Internal,
                  fmt::format("store answered {} results for 1 change set", results->size()));
    }
    return results->front();
  }

  // Re-drives the Running instances of one process version, page by page.
  Result<std::size_t> recoverProcess(const detail::CompiledProcess& process) {
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

  // Runs the instance's next steps: inline, or on a worker.
  void continueInstance(InstanceId id, Drive how) {
    if (workers_.empty()) {
      drive(id, how);
      return;
    }
    {
      std::lock_guard lock(queueMutex_);
      queue_.push_back(Continuation{id, how});
    }
    queueChanged_.notify_one();
  }

  void workerLoop() {
    for (;;) {
      Continuation next;
      {
        std::unique_lock lock(queueMutex_);
        queueChanged_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stopping, and nothing left to run
        next = queue_.front();
        queue_.pop_front();
        ++busy_;
      }
      drive(next.id, next.how);
      {
        std::lock_guard lock(queueMutex_);
        --busy_;
      }
      idle_.notify_all();
    }
  }

  // Drives one instance until it waits or ends. If another thread is already
  // driving it, asks that thread for one more pass instead of blocking, so one
  // instance never runs on two threads and no wake-up is lost. (A recovery
  // request for an instance being driven is dropped: it did not crash.)
  void drive(InstanceId id, Drive how) {
    {
      std::lock_guard lock(drivingMutex_);
      auto [it, inserted] = driving_.try_emplace(id, false);
      if (!inserted) {
        if (how == Drive::Continue) it->second = true;
        return;
      }
    }
    bool recovering = how == Drive::Recover;
    for (;;) {
      try {
        while (stepOnce(id, recovering)) recovering = false;
      } catch (...) {
        // A throwing store or allocation failure: the instance stays where its
        // last commit left it, and recovery re-drives it.
      }
      std::lock_guard lock(drivingMutex_);
      auto it = driving_.find(id);
      if (!it->second) {
        driving_.erase(it);
        return;
      }
      it->second = false;
    }
  }

  // Runs the instance's current step once and commits the result. Returns true
  // when there may be more to run.
  bool stepOnce(InstanceId id, bool recovering) {
    auto snapshot = store_->loadInstance(id);
    if (!snapshot || snapshot->record.status != InstanceStatus::Running) return false;
    auto run = store_->loadStepRun(id, snapshot->record.currentRun);
    if (!run || (run->status != StepRunStatus::Ready && run->status != StepRunStatus::Starting)) {
      return false;
    }
    auto process = find(snapshot->record.process, snapshot->record.processVersion);
    if (!process) return false;  // not defined here (yet): the instance waits for it
    auto index = process->stepIndex.find(run->step);
    if (index == process->stepIndex.end()) return false;

    if (recovering || run->status == StepRunStatus::Ready) {
      // The handler may have run before a crash: count this as a new attempt,
      // durably, before running it again.
      ++run->attempt;
      run->status = StepRunStatus::Starting;
      snapshot->record.updatedAt = currentTime();
      ChangeSet set;
      set.expectedVersion = snapshot->record.version;
      set.instance = snapshot->record;
      set.stepRuns.push_back(*run);
      auto applied = applyOne(std::move(set));
      if (!applied) return false;
      if (applied->status == ApplyStatus::Conflict) return true;  // changed meanwhile: look again
      snapshot->record.version += 1;
    }

    HandlerResult result = runHandler(*process, process->steps[index->second], *snapshot, *run);
    return commitResult(*process, std::move(*snapshot), std::move(*run), result);
  }

  HandlerResult runHandler(const detail::CompiledProcess& process, const detail::CompiledStep& step,
                           const InstanceSnapshot& snapshot, const StepRunRecord& run) {
    const InstanceRecord& record = snapshot.record;
    Fields work = snapshot.fields;
    HandlerResult result;
    try {
      if (step.kind == StepKind::Sync) {
        StepContext context(record.id, record.process, record.processVersion, step.name,
                            run.attempt, work);
        const StepOutcome outcome = step.sync(context);
        result.text = outcome.text();
        switch (outcome.kind()) {
          case StepOutcome::Kind::Next: result.kind = HandlerResult::Kind::Next; break;
          case StepOutcome::Kind::GoTo: result.kind = HandlerResult::Kind::GoTo; break;
          case StepOutcome::Kind::Finish: result.kind = HandlerResult::Kind::Finish; break;
          case StepOutcome::Kind::Fail: result.kind = HandlerResult::Kind::Fail; break;
        }
      } else {
        AsyncStepContext context(record.id, record.process, record.processVersion, step.name,
                                 run.attempt, work,
                                 detail::formatSerial(record.id, run.run, run.secret));
        const StartOutcome outcome = step.async(context);
        result.text = outcome.reason();
        switch (outcome.kind()) {
          case StartOutcome::Kind::Wait: result.kind = HandlerResult::Kind::Wait; break;
          case StartOutcome::Kind::Complete: result.kind = HandlerResult::Kind::Complete; break;
          case StartOutcome::Kind::Fail: result.kind = HandlerResult::Kind::Fail; break;
        }
      }
    } catch (...) {
      // A throwing handler fails its step, never the host; its writes are dropped.
      result.kind = HandlerResult::Kind::Fail;
      result.text = describeException(std::current_exception());
      return result;
    }
    auto writes = process.checkFields(changedFields(snapshot.fields, work));
    if (!writes) {
      result.kind = HandlerResult::Kind::Fail;
      result.text = writes.error().message;
      return result;
    }
    result.writes = std::move(*writes);
    return result;
  }

  // Commits a handler's result. If a completion or cancel changed the instance
  // while the handler ran, re-applies the result to the newer state (or drops it
  // when the run was closed meanwhile). Returns true when there may be more to run.
  bool commitResult(const detail::CompiledProcess& process, InstanceSnapshot snapshot,
                    StepRunRecord run, const HandlerResult& result) {
    const int attempt = run.attempt;
    for (int retry = 0; retry < kMaxWriteRetries; ++retry) {
      auto set = closeRun(process, snapshot, run, result, currentTime());
      if (!set) return false;  // no secret for the next run: stays Starting for recovery
      const bool running = set->instance.status == InstanceStatus::Running;
      auto applied = applyOne(std::move(*set));
      if (!applied) return false;  // store error: stays Starting for recovery
      if (applied->status == ApplyStatus::Applied) return running;

      auto newer = store_->loadInstance(snapshot.record.id);
      if (!newer || newer->record.status != InstanceStatus::Running) return false;
      auto newerRun = store_->loadStepRun(run.instance, run.run);
      if (!newerRun || newerRun->attempt != attempt ||
          (newerRun->status != StepRunStatus::Ready &&
           newerRun->status != StepRunStatus::Starting)) {
        return true;  // someone else moved this run on; look again
      }
      snapshot = std::move(*newer);
      run = std::move(*newerRun);
    }
    return false;
  }

  std::shared_ptr<Store> store_;
  EngineOptions options_;

  mutable std::shared_mutex processesMutex_;
  std::map<std::string, std::map<int, ProcessPtr>, std::less<>> processes_;

  // Instances being driven, each with "another pass requested". Holds only the
  // instances running right now: a waiting instance costs no entry.
  mutable std::mutex drivingMutex_;
  std::unordered_map<InstanceId, bool> driving_;

  mutable std::mutex queueMutex_;
  std::condition_variable queueChanged_;
  std::condition_variable idle_;
  std::deque<Continuation> queue_;
  std::size_t busy_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

namespace {

// Runs an Impl method so that no exception crosses the public API: anything
// thrown (a bug, a throwing third-party store, allocation failure) is Internal.
template <class F>
auto guarded(const char* operation, F&& body) -> decltype(body()) {
  try {
    return body();
  } catch (...) {
    return fail(Errc::Internal,
                fmt::format("{}: {}", operation, describeException(std::current_exception())));
  }
}

}  // namespace

Engine::Engine(std::shared_ptr<Store> store, EngineOptions options)
    : impl_(std::make_unique<Impl>(std::move(store), std::move(options))) {}

Engine::~Engine() = default;

Result<void> Engine::define(const Process& process) {
  return guarded("define", [&] { return impl_->define(process); });
}

Result<InstanceId> Engine::start(std::string_view process, Fields fields) {
  return guarded("start", [&] { return impl_->start(process, fields); });
}

Result<void> Engine::completeServerEvent(std::string_view serial, Fields fields) {
  return guarded("completeServerEvent", [&] { return impl_->completeServerEvent(serial, fields); });
}

Result<void> Engine::cancel(InstanceId id, std::string reason) {
  return guarded("cancel", [&] { return impl_->cancel(id, reason); });
}

Result<InstanceInfo> Engine::instance(InstanceId id) const {
  return guarded("instance", [&] { return impl_->instance(id); });
}

Result<WaitingPage> Engine::waiting(const WaitingFilter& filter) const {
  return guarded("waiting", [&] { return impl_->waiting(filter); });
}

Result<std::size_t> Engine::recover() {
  return guarded("recover", [&] { return impl_->recover(); });
}

EngineStats Engine::stats() const { return impl_->stats(); }

void Engine::waitIdle() { impl_->waitIdle(); }

}  // namespace asyncflow
