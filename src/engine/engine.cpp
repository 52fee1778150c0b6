#include "asyncflow/engine.hpp"

#include <condition_variable>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "model/process_model.hpp"
#include "model/serial.hpp"
#include "model/transitions.hpp"
#include "util/constant_time.hpp"
#include "util/text.hpp"

namespace asyncflow {
namespace {

// How often a writer reloads and retries after losing an optimistic-concurrency
// race before it reports Conflict. Races on one instance are between a handler's
// commit, a completion and a cancel, so a handful of retries always suffices in
// practice; the bound only stops a pathological livelock.
constexpr int kMaxWriteRetries = 64;

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
  // What an external system says about a step run.
  struct ServerEvent {
    enum class Kind { Complete, Fail, Heartbeat };
    Kind kind = Kind::Complete;
    const Fields* fields = nullptr;
    std::string reason;
  };
  using EventKind = ServerEvent::Kind;

  Impl(std::shared_ptr<Store> store, EngineOptions options)
      : store_(std::move(store)), options_(std::move(options)),
        clock_(options_.clock ? options_.clock : systemClock()),
        random_(options_.random ? options_.random : osRandom()),
        transitions_(options_.serials, *random_) {
    for (std::size_t i = 0; i < options_.workers; ++i) {
      workers_.emplace_back([this] { workerLoop(); });
    }
    if (options_.timerThread) timer_ = std::thread([this] { timerLoop(); });
  }

  ~Impl() {
    // The timer first: a timer it fires may queue a continuation for the workers.
    {
      std::lock_guard lock(timerMutex_);
      timerStopping_ = true;
    }
    timerWake_.notify_all();
    if (timer_.joinable()) timer_.join();
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
    wakeTimer(true);  // its due timers can fire now
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
    if (!process) {
      return fail(Errc::NotFound, fmt::format("no process named '{}'", detail::quoted(name)));
    }
    auto given = process->checkFields(fields);
    if (!given) return tl::unexpected(given.error());

    const Timestamp now = currentTime();
    ChangeSet set;
    set.instance.process = process->name;
    set.instance.processVersion = process->version;
    set.instance.createdAt = now;
    set.instance.updatedAt = now;
    set.fields = process->defaults;
    set.fields.merge(*given);
    HistoryEvent started;
    started.at = now;
    started.kind = HistoryKind::Started;
    started.detail = fmt::format("{} version {}", process->name, process->version);
    set.history.push_back(std::move(started));
    auto first = transitions_.schedule(set, *process, 0, 1, now);
    if (!first) return tl::unexpected(first.error());

    auto applied = commit(std::move(set));
    if (!applied) return tl::unexpected(applied.error());
    continueInstance(applied->instance, Drive::Continue);
    return applied->instance;
  }

  Result<void> serverEvent(std::string_view serial, const ServerEvent& event) {
    auto parts = detail::parseSerial(serial);
    if (!parts) return tl::unexpected(parts.error());
    if (parts->secret.empty() && options_.serials == SerialForm::WithSecret) {
      return fail(Errc::InvalidSerial, "the serial has no secret, and this engine requires one");
    }
    return onRun(StepRunKey{parts->instance, parts->run}, &parts->secret, nullptr, event);
  }

  Result<WaitingStep> lookUp(std::string_view serial) const {
    auto parts = detail::parseSerial(serial);
    if (!parts) return tl::unexpected(parts.error());
    if (parts->secret.empty() && options_.serials == SerialForm::WithSecret) {
      return fail(Errc::InvalidSerial, "the serial has no secret, and this engine requires one");
    }
    const std::string shown = detail::formatSerial(parts->instance, parts->run, {});
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
    if (auto refused = refuse(*snapshot, *run, shown); !refused) {
      return tl::unexpected(refused.error());
    }
    WaitingStep step;
    step.serial = detail::formatSerial(run->instance, run->run, run->secret);
    step.instance = run->instance;
    step.process = snapshot->record.process;
    step.processVersion = snapshot->record.processVersion;
    step.step = run->step;
    step.waitingSince = run->waitingSince;
    step.deadline = run->deadline;
    return step;
  }

  Result<void> completeByKey(std::string_view process, std::string_view step, std::string_view key,
                             const Fields& fields) {
    KeyQuery query;
    query.process = std::string(process);
    query.step = std::string(step);
    query.key = std::string(key);
    if (key.empty()) return fail(Errc::InvalidArgument, "the business key is empty");
    auto found = store_->findByKey(query);
    if (!found) return tl::unexpected(found.error());
    if (found->empty()) {
      return fail(Errc::NotFound,
                  fmt::format("no step '{}' of process '{}' waits with key '{}'",
                              detail::quoted(step), detail::quoted(process), detail::quoted(key)));
    }
    if (found->size() > 1) {
      return fail(Errc::AmbiguousKey,
                  fmt::format("several steps '{}' of process '{}' wait with key '{}'; complete "
                              "them by serial",
                              detail::quoted(step), detail::quoted(process), detail::quoted(key)));
    }
    return onRun(found->front(), nullptr, &query.key,
                 ServerEvent{ServerEvent::Kind::Complete, &fields, {}});
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
          return fail(Errc::StepFailed, fmt::format("instance {} already failed: {}", id,
                                                    detail::quoted(record.error)));
        case InstanceStatus::Cancelled:
          return fail(Errc::Cancelled, fmt::format("instance {} is already cancelled", id));
        case InstanceStatus::Running:
        case InstanceStatus::Waiting: break;
      }
      const Timestamp now = currentTime();
      ChangeSet set = detail::Transitions::touch(*snapshot, now);
      set.instance.status = InstanceStatus::Cancelled;
      set.instance.error = reason;
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
      HistoryEvent cancelled;
      cancelled.at = now;
      cancelled.kind = HistoryKind::Cancelled;
      cancelled.detail = reason;
      set.history.push_back(std::move(cancelled));
      auto applied = commit(std::move(set));
      if (!applied) return tl::unexpected(applied.error());
      if (applied->status == ApplyStatus::Applied) return {};
    }
    return fail(Errc::Conflict, fmt::format("instance {} kept changing; retry", id));
  }

  Result<void> retry(InstanceId id) {
    for (int attempt = 0; attempt < kMaxWriteRetries; ++attempt) {
      auto snapshot = store_->loadInstance(id);
      if (!snapshot) return tl::unexpected(snapshot.error());
      const InstanceRecord& record = snapshot->record;
      if (record.status == InstanceStatus::Cancelled) {
        return fail(Errc::Cancelled, fmt::format("instance {} was cancelled", id));
      }
      if (record.status != InstanceStatus::Failed || record.currentRun == 0) {
        return fail(Errc::InvalidArgument,
                    fmt::format("instance {} is {}, not Failed: there is nothing to retry", id,
                                statusName(record.status)));
      }
      auto process = find(record.process, record.processVersion);
      if (!process) return notDefined(record);
      auto run = store_->loadStepRun(id, record.currentRun);
      if (!run) return tl::unexpected(run.error());
      auto index = process->stepIndex.find(run->step);
      if (index == process->stepIndex.end()) return notDefined(record);

      const Timestamp now = currentTime();
      ChangeSet set = detail::Transitions::touch(*snapshot, now);
      set.instance.error.clear();
      const int nextAttempt = run->attempt + 1;
      HistoryEvent retried;
      retried.at = now;
      retried.kind = HistoryKind::Retried;
      retried.run = run->run;
      retried.step = run->step;
      retried.detail = fmt::format("attempt {}", nextAttempt);
      set.history.push_back(std::move(retried));
      auto scheduled = transitions_.schedule(set, *process, index->second, nextAttempt, now,
                                             fmt::format("retry of run {}", run->run));
      if (!scheduled) return tl::unexpected(scheduled.error());
      auto applied = commit(std::move(set));
      if (!applied) return tl::unexpected(applied.error());
      if (applied->status == ApplyStatus::Conflict) continue;
      continueInstance(id, Drive::Continue);
      return {};
    }
    return fail(Errc::Conflict, fmt::format("instance {} kept changing; retry", id));
  }

  Result<std::vector<HistoryEvent>> history(InstanceId id) const {
    auto snapshot = store_->loadInstance(id);
    if (!snapshot) return tl::unexpected(snapshot.error());
    return store_->loadHistory(id);
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

  Result<std::size_t> runDueTimers() {
    constexpr std::size_t kPage = 256;
    const Timestamp now = currentTime();
    std::size_t fired = 0;
    std::optional<Error> storeFailure;  // the first timer the store failed to fire
    DueQuery query;
    query.now = now;
    query.limit = kPage;
    for (;;) {
      auto due = store_->listDue(query);
      if (!due) return tl::unexpected(due.error());
      for (const DueRun& timer : *due) {
        auto done = fireTimer(timer.key, now);
        if (!done) {
          log(LogLevel::Warning,
              fmt::format("timer of step run {}_{} did not fire: {}", timer.key.instance,
                          timer.key.run, done.error().toString()));
          if (done.error().code == Errc::StoreError && !storeFailure) storeFailure = done.error();
        } else if (*done) {
          ++fired;
        }
      }
      if (due->size() < kPage) break;  // a short page is the last
      query.after = due->back();
    }
    // Tell the caller the store failed (those timers stay due), not "none fired".
    if (storeFailure) return tl::unexpected(std::move(*storeFailure));
    return fired;
  }

  void waitIdle() {
    std::unique_lock lock(queueMutex_);
    idle_.wait(lock, [this] { return queue_.empty() && busy_ == 0; });
  }

 private:
  using ProcessPtr = std::shared_ptr<const detail::CompiledProcess>;

  // The clock's time, truncated to the microseconds every store keeps.
  Timestamp currentTime() const {
    return std::chrono::time_point_cast<std::chrono::microseconds>(clock_->now());
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

  static tl::unexpected<Error> notDefined(const InstanceRecord& record) {
    return fail(Errc::ProcessNotDefined,
                fmt::format("instance {} runs process '{}' version {}, which this engine has not "
                            "defined; nothing changed",
                            record.id, record.process, record.processVersion));
  }

  void log(LogLevel level, std::string_view message) const {
    if (!options_.log) return;
    try {
      options_.log(level, message);
    } catch (...) {
      // A throwing sink must not take a transition down with it.
    }
  }

  // Applies one change set. When it applied, tells the listener and the log of
  // its history, and the timer of a new deadline.
  Result<ApplyResult> commit(ChangeSet set) {
    const bool tell = options_.listener || options_.log;
    std::vector<HistoryEvent> events;
    if (tell) events = set.history;
    std::optional<Timestamp> deadline;
    for (const StepRunRecord& run : set.stepRuns) {
      if (run.status == StepRunStatus::Waiting && run.deadline) deadline = run.deadline;
    }
    std::vector<ChangeSet> batch;
    batch.push_back(std::move(set));
    auto results = store_->apply(std::move(batch));
    if (!results) {
      log(LogLevel::Warning, fmt::format("store: {}", results.error().toString()));
      return tl::unexpected(results.error());
    }
    if (results->size() != 1) {
      return fail(Errc::Internal,
                  fmt::format("store answered {} results for 1 change set", results->size()));
    }
    const ApplyResult applied = results->front();
    if (applied.status != ApplyStatus::Applied) return applied;
    if (deadline) noteDeadline(*deadline);
    for (HistoryEvent& event : events) {
      event.instance = applied.instance;
      if (options_.listener) {
        try {
          options_.listener->onEvent(event);
        } catch (...) {
          // A throwing listener must not undo or repeat a durable transition.
        }
      }
      if (options_.log) {
        log(LogLevel::Info,
            fmt::format("instance {}: {}{}{}", event.instance, historyKindName(event.kind),
                        event.step.empty() ? "" : fmt::format(" '{}'", event.step),
                        event.detail.empty() ? "" : fmt::format(": {}", event.detail)));
      }
    }
    return applied;
  }

  // The error a server event gets when the run or instance can no longer take one.
  static Result<void> refuse(const InstanceSnapshot& snapshot, const StepRunRecord& run,
                             const std::string& shown) {
    if (run.status == StepRunStatus::Cancelled ||
        snapshot.record.status == InstanceStatus::Cancelled) {
      return fail(Errc::Cancelled, fmt::format("instance {} was cancelled", run.instance));
    }
    switch (run.status) {
      case StepRunStatus::Completed:
        return fail(Errc::AlreadyCompleted, fmt::format("step run {} is already completed", shown));
      case StepRunStatus::Failed:
        return fail(Errc::StepFailed,
                    fmt::format("step run {} failed: {}", shown, detail::quoted(run.error)));
      case StepRunStatus::TimedOut:
        return fail(Errc::TimedOut, fmt::format("step run {} timed out", shown));
      case StepRunStatus::Ready:
      case StepRunStatus::Starting:
      case StepRunStatus::Waiting:
      case StepRunStatus::Cancelled: return {};
    }
    return {};
  }

  // A server event for one step run: the secret (if given) and the business key
  // (if given) must match. Loads the instance first, then the run: every change
  // to a run bumps its instance's version, so a run read after the instance is
  // never older than the version the write is guarded by.
  Result<void> onRun(StepRunKey key, const std::string* secret, const std::string* businessKey,
                     const ServerEvent& event) {
    const std::string shown = detail::formatSerial(key.instance, key.run, {});
    for (int attempt = 0; attempt < kMaxWriteRetries; ++attempt) {
      auto snapshot = store_->loadInstance(key.instance);
      if (!snapshot) {
        if (snapshot.error().code != Errc::NotFound) return tl::unexpected(snapshot.error());
        return fail(Errc::NotFound, fmt::format("no step run {}", shown));
      }
      auto run = store_->loadStepRun(key.instance, key.run);
      if (!run) return tl::unexpected(run.error());
      if (secret != nullptr && !detail::constantTimeEquals(run->secret, *secret)) {
        return fail(Errc::InvalidSerial, fmt::format("wrong secret for step run {}", shown));
      }
      if (run->kind != StepKind::Async) {
        return fail(Errc::NotFound,
                    fmt::format("step run {} ('{}') is not an async step", shown, run->step));
      }
      if (businessKey != nullptr && run->correlationKey != *businessKey) {
        return fail(Errc::NotFound, fmt::format("step run {} no longer has that key", shown));
      }
      if (auto refused = refuse(*snapshot, *run, shown); !refused) return refused;
      const bool waiting = run->status == StepRunStatus::Waiting;
      if (!waiting && run->hasCompletion && event.kind != ServerEvent::Kind::Heartbeat) {
        return fail(Errc::AlreadyCompleted,
                    fmt::format("step run {} already has a completion recorded", shown));
      }
      auto process = find(snapshot->record.process, snapshot->record.processVersion);
      if (!process) return notDefined(snapshot->record);
      Fields checked;
      if (event.fields != nullptr) {
        auto valid = process->checkFields(*event.fields);
        if (!valid) return tl::unexpected(valid.error());
        checked = std::move(*valid);
      }

      const Timestamp now = currentTime();
      auto set =
          eventChangeSet(*process, *snapshot, std::move(*run), event, std::move(checked), now);
      if (!set) return tl::unexpected(set.error());
      const bool moveOn = waiting && set->instance.status == InstanceStatus::Running;
      auto applied = commit(std::move(*set));
      if (!applied) return tl::unexpected(applied.error());
      if (applied->status == ApplyStatus::Conflict) continue;
      if (moveOn) continueInstance(key.instance, Drive::Continue);
      return {};
    }
    return fail(Errc::Conflict, fmt::format("step run {} kept changing; retry", shown));
  }

  // What a server event writes for an open run.
  Result<ChangeSet> eventChangeSet(const detail::CompiledProcess& process,
                                   const InstanceSnapshot& snapshot, StepRunRecord run,
                                   const ServerEvent& event, Fields fields, Timestamp now) {
    const std::string reason =
        event.reason.empty() ? std::string("the external system reported a failure") : event.reason;
    if (event.kind == ServerEvent::Kind::Heartbeat) {
      ChangeSet set = detail::Transitions::touch(snapshot, now);
      const auto& step = process.steps[process.stepIndex.at(run.step)];
      const auto interval = step.heartbeat.count() > 0 ? step.heartbeat : step.timeout;
      std::string detail;
      if (run.status == StepRunStatus::Waiting && interval.count() > 0) {
        run.deadline = now + interval;
        detail = "deadline moved";
      }
      HistoryEvent beat;
      beat.at = now;
      beat.kind = HistoryKind::Heartbeat;
      beat.run = run.run;
      beat.step = run.step;
      beat.detail = std::move(detail);
      set.history.push_back(std::move(beat));
      set.stepRuns.push_back(std::move(run));
      return set;
    }
    if (run.status == StepRunStatus::Waiting) {
      detail::HandlerResult result;
      if (event.kind == ServerEvent::Kind::Complete) {
        result.kind = detail::HandlerResult::Kind::Complete;
        run.hasCompletion = true;
        run.completion = std::move(fields);
      } else {
        result.kind = detail::HandlerResult::Kind::Fail;
        result.text = reason;
        result.writes = std::move(fields);
      }
      return transitions_.close(process, snapshot, std::move(run), std::move(result), now);
    }
    // Ready or Starting: the handler has not returned yet. Record the event; it
    // is applied as soon as the handler returns.
    ChangeSet set = detail::Transitions::touch(snapshot, now);
    run.hasCompletion = true;
    run.completion = std::move(fields);
    if (event.kind == ServerEvent::Kind::Fail) run.error = reason;
    HistoryEvent recorded;
    recorded.at = now;
    recorded.kind = HistoryKind::CompletionRecorded;
    recorded.run = run.run;
    recorded.step = run.step;
    recorded.detail = event.kind == ServerEvent::Kind::Fail ? "failure: " + reason : "";
    set.history.push_back(std::move(recorded));
    set.stepRuns.push_back(std::move(run));
    return set;
  }

  // Fires one due timer. False when it was no longer due (completed, moved).
  Result<bool> fireTimer(StepRunKey key, Timestamp now) {
    for (int attempt = 0; attempt < kMaxWriteRetries; ++attempt) {
      auto snapshot = store_->loadInstance(key.instance);
      if (!snapshot) return tl::unexpected(snapshot.error());
      auto run = store_->loadStepRun(key.instance, key.run);
      if (!run) return tl::unexpected(run.error());
      if (run->status != StepRunStatus::Waiting || !run->deadline || *run->deadline > now) {
        return false;
      }
      auto process = find(snapshot->record.process, snapshot->record.processVersion);
      if (!process) return notDefined(snapshot->record);
      auto set = transitions_.timeOut(*process, *snapshot, std::move(*run), now);
      if (!set) return tl::unexpected(set.error());
      const bool moveOn = set->instance.status == InstanceStatus::Running;
      auto applied = commit(std::move(*set));
      if (!applied) return tl::unexpected(applied.error());
      if (applied->status == ApplyStatus::Conflict) continue;
      if (moveOn) continueInstance(key.instance, Drive::Continue);
      return true;
    }
    return fail(Errc::Conflict, fmt::format("step run {}_{} kept changing", key.instance, key.run));
  }

  // --- the timer thread: sleeps until the earliest deadline in the store ---

  // A run now waits until `deadline`: wake the timer if that is earlier than
  // what it sleeps towards.
  void noteDeadline(Timestamp deadline) {
    std::lock_guard lock(timerMutex_);
    if (timerKnown_ && (!timerNext_ || deadline < *timerNext_)) {
      timerNext_ = deadline;
      ++timerGeneration_;
      timerWake_.notify_all();
    }
  }

  // Makes the timer reload the earliest deadline (`retry`: also retry timers it
  // could not fire, e.g. because their process was not defined yet).
  void wakeTimer(bool retry) {
    std::lock_guard lock(timerMutex_);
    timerKnown_ = false;
    if (retry) timerStuck_ = false;
    ++timerGeneration_;
    timerWake_.notify_all();
  }

  void timerLoop() {
    std::unique_lock lock(timerMutex_);
    while (!timerStopping_) {
      if (!timerKnown_) {
        lock.unlock();
        auto next = store_->nextDeadline(Timestamp::min());
        lock.lock();
        if (!next) {
          log(LogLevel::Error, fmt::format("timer: {}", next.error().toString()));
          // The store failed: try again after a while rather than spin.
          timerWake_.wait_for(lock, std::chrono::seconds(1), [&] { return timerStopping_; });
          continue;
        }
        timerNext_ = *next;
        timerKnown_ = true;
      }
      const std::uint64_t generation = timerGeneration_;
      auto changed = [&] { return timerStopping_ || timerGeneration_ != generation; };
      if (!timerNext_ || timerStuck_) {
        timerWake_.wait(lock, changed);  // no deadline at all: sleep until one appears
        continue;
      }
      const auto left = *timerNext_ - clock_->now();
      if (left > Timestamp::duration::zero()) {
        timerWake_.wait_for(lock, left, changed);
        continue;
      }
      lock.unlock();
      auto fired = runDueTimers();
      lock.lock();
      timerKnown_ = false;
      if (!fired) {
        log(LogLevel::Error, fmt::format("timer: {}", fired.error().toString()));
        // The store failed (busy, full, I/O): its timers stay due. Try again
        // after a while, as above, rather than spin or wait for a define().
        timerWake_.wait_for(lock, std::chrono::seconds(1), [&] { return timerStopping_; });
        continue;
      }
      // Due timers that could not fire (their process version is not defined)
      // stay due: wait for a define() instead of firing them again and again.
      timerStuck_ = *fired == 0;
    }
  }

  // --- driving instances ---

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
        while (stepOnce(id, recovering)) {
        }
      } catch (...) {
        // A throwing store or allocation failure: the instance stays where its
        // last commit left it, and recovery re-drives it.
        log(LogLevel::Error,
            fmt::format("instance {}: {}", id, describeException(std::current_exception())));
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
  // when there may be more to run. Clears `recovering` once the re-run is
  // counted (or there is nothing to re-run).
  bool stepOnce(InstanceId id, bool& recovering) {
    const bool recover = recovering;
    recovering = false;
    auto snapshot = store_->loadInstance(id);
    if (!snapshot || snapshot->record.status != InstanceStatus::Running) return false;
    auto run = store_->loadStepRun(id, snapshot->record.currentRun);
    if (!run || (run->status != StepRunStatus::Ready && run->status != StepRunStatus::Starting)) {
      return false;
    }
    auto process = find(snapshot->record.process, snapshot->record.processVersion);
    if (!process) {
      log(LogLevel::Warning, notDefined(snapshot->record).value().message);
      return false;  // it waits for a define() of its version
    }
    auto index = process->stepIndex.find(run->step);
    if (index == process->stepIndex.end()) return false;

    if (recover || run->status == StepRunStatus::Ready) {
      // The handler may have run before a crash: count this as a new attempt,
      // durably, before running it again.
      ++run->attempt;
      run->status = StepRunStatus::Starting;
      ChangeSet set = detail::Transitions::touch(*snapshot, currentTime());
      set.stepRuns.push_back(*run);
      HistoryEvent restarted;
      restarted.at = set.instance.updatedAt;
      restarted.kind = HistoryKind::StepStarted;
      restarted.run = run->run;
      restarted.step = run->step;
      restarted.detail = fmt::format("attempt {}, after a crash", run->attempt);
      set.history.push_back(std::move(restarted));
      snapshot->record = set.instance;
      auto applied = commit(std::move(set));
      if (!applied) return false;
      if (applied->status == ApplyStatus::Conflict) {
        // Changed meanwhile (say, an early completion): look again, still
        // recovering, so the handler never re-runs with the crashed attempt().
        recovering = recover;
        return true;
      }
      snapshot->record.version += 1;
    }

    detail::HandlerResult result =
        runHandler(*process, process->steps[index->second], *snapshot, *run);
    return commitResult(*process, std::move(*snapshot), std::move(*run), std::move(result));
  }

  detail::HandlerResult runHandler(const detail::CompiledProcess& process,
                                   const detail::CompiledStep& step,
                                   const InstanceSnapshot& snapshot, const StepRunRecord& run) {
    using Kind = detail::HandlerResult::Kind;
    const InstanceRecord& record = snapshot.record;
    Fields work = snapshot.fields;
    detail::HandlerResult result;
    try {
      if (step.kind == StepKind::Sync) {
        StepContext context(record.id, record.process, record.processVersion, step.name,
                            run.attempt, work);
        const StepOutcome outcome = step.sync(context);
        result.text = outcome.text();
        switch (outcome.kind()) {
          case StepOutcome::Kind::Next: result.kind = Kind::Next; break;
          case StepOutcome::Kind::GoTo: result.kind = Kind::GoTo; break;
          case StepOutcome::Kind::Finish: result.kind = Kind::Finish; break;
          case StepOutcome::Kind::Fail: result.kind = Kind::Fail; break;
        }
      } else {
        AsyncStepContext context(record.id, record.process, record.processVersion, step.name,
                                 run.attempt, work,
                                 detail::formatSerial(record.id, run.run, run.secret));
        const StartOutcome outcome = step.async(context);
        result.text = outcome.reason();
        switch (outcome.kind()) {
          case StartOutcome::Kind::Wait: result.kind = Kind::Wait; break;
          case StartOutcome::Kind::Complete: result.kind = Kind::Complete; break;
          case StartOutcome::Kind::Fail: result.kind = Kind::Fail; break;
        }
      }
    } catch (...) {
      // A throwing handler fails its step, never the host; its writes are dropped.
      result.kind = Kind::Fail;
      result.text = describeException(std::current_exception());
      return result;
    }
    auto writes = process.checkFields(changedFields(snapshot.fields, work));
    if (!writes) {
      result.kind = Kind::Fail;
      result.text = writes.error().message;
      return result;
    }
    result.writes = std::move(*writes);
    return result;
  }

  // Commits a handler's result. If a server event or cancel changed the instance
  // while the handler ran, re-applies the result to the newer state (or drops it
  // when the run was closed meanwhile). Returns true when there may be more to run.
  bool commitResult(const detail::CompiledProcess& process, InstanceSnapshot snapshot,
                    StepRunRecord run, const detail::HandlerResult& result) {
    const int attempt = run.attempt;
    for (int retry = 0; retry < kMaxWriteRetries; ++retry) {
      auto set = transitions_.close(process, snapshot, run, result, currentTime());
      if (!set) {
        log(LogLevel::Error, fmt::format("instance {}: {}", run.instance, set.error().toString()));
        return false;  // no secret for the next run: stays Starting for recovery
      }
      const bool running = set->instance.status == InstanceStatus::Running;
      auto applied = commit(std::move(*set));
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
  std::shared_ptr<Clock> clock_;
  std::shared_ptr<RandomSource> random_;
  detail::Transitions transitions_;

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

  // The timer: only the earliest deadline is held, never one per waiting step.
  std::mutex timerMutex_;
  std::condition_variable timerWake_;
  bool timerKnown_ = false;  // timerNext_ reflects the store
  std::optional<Timestamp> timerNext_;
  bool timerStuck_ = false;  // the last pass could fire none of the due timers
  std::uint64_t timerGeneration_ = 0;
  bool timerStopping_ = false;
  std::thread timer_;
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
  return guarded("completeServerEvent", [&] {
    return impl_->serverEvent(serial, {Impl::EventKind::Complete, &fields, {}});
  });
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

Result<void> Engine::failServerEvent(std::string_view serial, std::string reason, Fields fields) {
  return guarded("failServerEvent", [&] {
    return impl_->serverEvent(serial, {Impl::EventKind::Fail, &fields, std::move(reason)});
  });
}

Result<WaitingStep> Engine::serverEvent(std::string_view serial) const {
  return guarded("serverEvent", [&] { return impl_->lookUp(serial); });
}

Result<void> Engine::heartbeat(std::string_view serial) {
  return guarded("heartbeat", [&] {
    return impl_->serverEvent(serial, {Impl::EventKind::Heartbeat, nullptr, {}});
  });
}

Result<void> Engine::completeServerEventByKey(std::string_view process, std::string_view step,
                                              std::string_view key, Fields fields) {
  return guarded("completeServerEventByKey",
                 [&] { return impl_->completeByKey(process, step, key, fields); });
}

Result<void> Engine::retry(InstanceId id) {
  return guarded("retry", [&] { return impl_->retry(id); });
}

Result<std::vector<HistoryEvent>> Engine::history(InstanceId id) const {
  return guarded("history", [&] { return impl_->history(id); });
}

Result<std::size_t> Engine::runDueTimers() {
  return guarded("runDueTimers", [&] { return impl_->runDueTimers(); });
}

EngineStats Engine::stats() const { return impl_->stats(); }

void Engine::waitIdle() { impl_->waitIdle(); }

}  // namespace asyncflow
