#include "model/transitions.hpp"

#include <utility>
#include <variant>

#include <fmt/format.h>

#include "model/serial.hpp"
#include "util/text.hpp"

namespace asyncflow::detail {
namespace {

HistoryEvent entry(HistoryKind kind, Timestamp at, const StepRunRecord* run,
                   std::string detail = {}) {
  HistoryEvent e;
  e.at = at;
  e.kind = kind;
  if (run != nullptr) {
    e.instance = run->instance;
    e.run = run->run;
    e.step = run->step;
  }
  e.detail = std::move(detail);
  return e;
}

// "Status, Ticket": the names a completion set, for the history.
std::string fieldNames(const Fields& fields) {
  std::string names;
  for (const auto& [name, value] : fields) {
    if (!names.empty()) names += ", ";
    names += name;
  }
  return names;
}

void failInstance(ChangeSet& set, std::string why, Timestamp now) {
  set.instance.status = InstanceStatus::Failed;
  set.history.push_back(entry(HistoryKind::Failed, now, nullptr, why));
  set.instance.error = std::move(why);
}

bool isOpen(StepRunStatus status) noexcept {
  return status == StepRunStatus::Ready || status == StepRunStatus::Starting ||
         status == StepRunStatus::Waiting;
}

// A failure's reason when the external system gave none.
constexpr const char* kExternalFailure = "the external system reported a failure";

// The serial's ids, for messages: a secret never appears in one.
std::string idsOf(const StepRunRecord& run) { return formatSerial(run.instance, run.run, {}); }

}  // namespace

std::string_view runEventName(RunEvent event) noexcept {
  switch (event) {
    case RunEvent::Crash: return "Crash";
    case RunEvent::HandlerReturned: return "HandlerReturned";
    case RunEvent::Complete: return "Complete";
    case RunEvent::Fail: return "Fail";
    case RunEvent::Heartbeat: return "Heartbeat";
    case RunEvent::Deadline: return "Deadline";
    case RunEvent::Cancel: return "Cancel";
    case RunEvent::Retry: return "Retry";
  }
  return "Unknown";
}

RunEvent runEventOf(ServerEvent::Kind kind) noexcept {
  switch (kind) {
    case ServerEvent::Kind::Complete: return RunEvent::Complete;
    case ServerEvent::Kind::Fail: return RunEvent::Fail;
    case ServerEvent::Kind::Heartbeat: return RunEvent::Heartbeat;
  }
  return RunEvent::Complete;
}

tl::unexpected<Error> noTransition(const StepRunRecord& run, RunEvent event) {
  return fail(Errc::Internal,
              fmt::format("step run {} ('{}'): no transition from {} on {}", idsOf(run),
                          quoted(run.step), statusName(run.status), runEventName(event)));
}

std::string correlationKeyOf(const Value& value) {
  return std::visit(
      [](const auto& v) -> std::string {
        using V = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<V, std::monostate>) {
          return {};
        } else if constexpr (std::is_same_v<V, bool>) {
          return v ? "true" : "false";
        } else if constexpr (std::is_same_v<V, std::string>) {
          return v;
        } else {
          return fmt::format("{}", v);
        }
      },
      value.variant());
}

LeaseState leaseStateOf(const InstanceRecord& record, Timestamp now) noexcept {
  if (record.status != InstanceStatus::Running || !record.leaseExpiry) return LeaseState::None;
  if (record.leaseOwner.empty()) return LeaseState::Offered;
  return *record.leaseExpiry > now ? LeaseState::Live : LeaseState::Expired;
}

std::optional<std::int64_t> openRunOf(const InstanceRecord& record) noexcept {
  const bool live =
      record.status == InstanceStatus::Running || record.status == InstanceStatus::Waiting;
  if (!live || record.currentRun == 0) return std::nullopt;
  return record.currentRun;
}

Result<const CompiledStep*> stepOf(const CompiledProcess& process, const StepRunRecord& run) {
  auto index = process.stepIndex.find(run.step);
  if (index == process.stepIndex.end()) {
    return fail(Errc::ProcessNotDefined,
                fmt::format("instance {} runs process '{}' version {}, whose definition in this "
                            "engine has no step '{}'; nothing changed",
                            run.instance, quoted(process.name), process.version, quoted(run.step)));
  }
  return &process.steps[index->second];
}

ChangeSet Transitions::guardedUpdate(const InstanceSnapshot& snapshot, Timestamp now) {
  ChangeSet set;
  set.expectedVersion = snapshot.record.version;
  set.instance = snapshot.record;
  set.instance.updatedAt = now;
  return set;
}

void Transitions::takeLease(ChangeSet& set, std::string_view owner, Timestamp expiry) {
  if (set.instance.status != InstanceStatus::Running) {
    set.instance.leaseOwner.clear();
    set.instance.leaseExpiry.reset();
    return;
  }
  set.instance.leaseOwner = std::string(owner);
  set.instance.leaseExpiry = expiry;
}

void Transitions::offerLease(ChangeSet& set, Timestamp now) { takeLease(set, {}, now); }

// (none) --start--> Running, first step Starting.
Result<ChangeSet> Transitions::start(const CompiledProcess& process, const Fields& fields,
                                     Timestamp now, std::optional<StartKey> startKey) const {
  ChangeSet set;
  set.startKey = std::move(startKey);
  set.instance.process = process.name;
  set.instance.processVersion = process.version;
  set.instance.createdAt = now;
  set.instance.updatedAt = now;
  set.fields = process.defaults;
  set.fields.merge(fields);
  set.history.push_back(entry(HistoryKind::Started, now, nullptr,
                              fmt::format("{} version {}", process.name, process.version)));
  auto first = schedule(set, process, 0, 1, now);
  if (!first) return tl::unexpected(first.error());
  return set;
}

Result<void> Transitions::schedule(ChangeSet& set, const CompiledProcess& process,
                                   std::size_t index, int attempt, Timestamp now,
                                   std::string detail) const {
  const CompiledStep& step = process.steps[index];
  StepRunRecord run;
  run.instance = set.instance.id;
  run.run = set.instance.lastRun + 1;
  run.step = step.name;
  run.kind = step.kind;
  // Written as Starting because the engine starts it at once: after a crash
  // that means "the handler may have begun", and recovery re-runs it.
  run.status = StepRunStatus::Starting;
  run.attempt = attempt;
  run.createdAt = now;
  if (step.kind == StepKind::Async && serials_ == SerialForm::WithSecret) {
    auto secret = newSecret(random_);
    if (!secret) return tl::unexpected(secret.error());
    run.secret = std::move(*secret);
  }
  set.instance.lastRun = run.run;
  set.instance.currentRun = run.run;
  set.instance.status = InstanceStatus::Running;
  set.history.push_back(entry(HistoryKind::StepStarted, now, &run, std::move(detail)));
  set.stepRuns.push_back(std::move(run));
  return {};
}

// Ready | Starting --crash--> Starting (attempt+1).
Result<ChangeSet> Transitions::restartAfterCrash(const InstanceSnapshot& snapshot,
                                                 StepRunRecord run, Timestamp now) {
  if (run.status != StepRunStatus::Ready && run.status != StepRunStatus::Starting) {
    return noTransition(run, RunEvent::Crash);
  }
  ++run.attempt;
  run.status = StepRunStatus::Starting;
  ChangeSet set = guardedUpdate(snapshot, now);
  set.history.push_back(entry(HistoryKind::StepStarted, now, &run,
                              fmt::format("attempt {}, after a crash", run.attempt)));
  set.stepRuns.push_back(std::move(run));
  return set;
}

// End --> instance Completed; Failure --> instance Failed; Step --> its new run.
Result<void> Transitions::follow(ChangeSet& set, const CompiledProcess& process, const Route& route,
                                 Timestamp now) const {
  switch (route.kind) {
    case Route::Kind::End:
      set.instance.status = InstanceStatus::Completed;
      set.history.push_back(entry(HistoryKind::Completed, now, nullptr));
      return {};
    case Route::Kind::Failure: failInstance(set, route.error, now); return {};
    case Route::Kind::Step: return schedule(set, process, route.step, 1, now);
  }
  return fail(Errc::Internal, "follow: a route of unknown kind");
}

// Starting --handler returned--> Waiting | Completed | Failed;
// Waiting --Complete | Fail--> Completed | Failed.
Result<ChangeSet> Transitions::close(const CompiledProcess& process,
                                     const InstanceSnapshot& snapshot, StepRunRecord run,
                                     Decision decision, Timestamp now) const {
  const bool waiting = run.status == StepRunStatus::Waiting;
  const bool fromExternal =
      decision.kind == Decision::Kind::Complete || decision.kind == Decision::Kind::Fail;
  if (run.status != StepRunStatus::Starting && !(waiting && fromExternal)) {
    return noTransition(run, RunEvent::HandlerReturned);
  }
  auto found = stepOf(process, run);
  if (!found) return tl::unexpected(found.error());
  const CompiledStep& step = **found;
  const std::size_t from = process.stepIndex.at(run.step);
  ChangeSet set = guardedUpdate(snapshot, now);
  set.fields = std::move(decision.writes);

  // A failure the external system reported before the step waited wins over
  // whatever the handler decided next.
  const bool failureArrived = run.hasCompletion && !run.error.empty();
  if (failureArrived && decision.kind != Decision::Kind::Fail) {
    decision.kind = Decision::Kind::Fail;
    decision.text = run.error;
  }

  if (decision.kind == Decision::Kind::Fail) {
    if (failureArrived) set.fields.merge(run.completion);  // the failure's details
    run.completion = Fields();
    run.status = StepRunStatus::Failed;
    run.error = decision.text;
    run.finishedAt = now;
    set.history.push_back(entry(HistoryKind::StepFailed, now, &run, decision.text));
    set.stepRuns.push_back(std::move(run));
    if (step.onError) {
      auto scheduled = schedule(set, process, *step.onError, 1, now,
                                fmt::format("error line from '{}'", step.name));
      if (!scheduled) return tl::unexpected(scheduled.error());
      return set;
    }
    failInstance(set, fmt::format("step '{}' failed: {}", step.name, decision.text), now);
    return set;
  }

  if (decision.kind == Decision::Kind::Wait && !run.hasCompletion) {
    run.status = StepRunStatus::Waiting;
    run.waitingSince = now;
    if (step.timeout) run.deadline = now + *step.timeout;
    if (!step.correlateField.empty()) {
      Fields after = snapshot.fields;
      after.merge(set.fields);
      if (const Value* key = after.find(step.correlateField)) {
        run.correlationKey = correlationKeyOf(*key);
      }
    }
    set.instance.status = InstanceStatus::Waiting;
    // The history shows the serial's ids, never its secret.
    set.history.push_back(entry(HistoryKind::Waiting, now, &run, idsOf(run)));
    set.stepRuns.push_back(std::move(run));
    return set;
  }

  // Completed: by the handler, or by a completion that arrived meanwhile. The
  // completion's fields land after the handler's writes, and from then on live
  // in the instance, not on the run.
  if (decision.kind == Decision::Kind::Wait) run.waitingSince = now;
  std::string completedWith;
  if (run.hasCompletion) {
    completedWith = fieldNames(run.completion);
    set.fields.merge(run.completion);
    run.completion = Fields();
  }
  run.status = StepRunStatus::Completed;
  run.finishedAt = now;
  set.history.push_back(entry(HistoryKind::StepCompleted, now, &run, std::move(completedWith)));
  set.stepRuns.push_back(std::move(run));

  Route route;
  if (decision.kind == Decision::Kind::Finish) {
    route = Route::end();
  } else if (decision.kind == Decision::Kind::GoTo) {
    auto target = process.stepIndex.find(decision.text);
    route = target == process.stepIndex.end()
                ? Route::failure(fmt::format("step '{}' went to unknown step '{}'", step.name,
                                             quoted(decision.text)))
                : Route::to(target->second);
  } else {
    Fields after = snapshot.fields;
    after.merge(set.fields);
    route = process.routeAfter(from, after);
  }
  auto followed = follow(set, process, route, now);
  if (!followed) return tl::unexpected(followed.error());
  return set;
}

bool Transitions::isDue(const StepRunRecord& run, Timestamp now) noexcept {
  return run.status == StepRunStatus::Waiting && !run.hasCompletion && run.deadline &&
         *run.deadline <= now;
}

// Waiting --deadline--> TimedOut, then the escalation step or instance Failed.
Result<ChangeSet> Transitions::timeOut(const CompiledProcess& process,
                                       const InstanceSnapshot& snapshot, StepRunRecord run,
                                       Timestamp now) const {
  if (run.status != StepRunStatus::Waiting) return noTransition(run, RunEvent::Deadline);
  auto found = stepOf(process, run);
  if (!found) return tl::unexpected(found.error());
  const CompiledStep& step = **found;
  ChangeSet set = guardedUpdate(snapshot, now);
  run.status = StepRunStatus::TimedOut;
  run.error = "its deadline passed";
  run.finishedAt = now;
  set.history.push_back(entry(HistoryKind::TimedOut, now, &run));
  set.stepRuns.push_back(std::move(run));
  if (step.escalateTo) {
    auto scheduled = schedule(set, process, *step.escalateTo, 1, now,
                              fmt::format("escalation from '{}'", step.name));
    if (!scheduled) return tl::unexpected(scheduled.error());
    return set;
  }
  failInstance(set, fmt::format("step '{}' timed out", step.name), now);
  return set;
}

// Sync run: NotFound; Cancelled: Cancelled; Completed: AlreadyCompleted;
// Failed: StepFailed; TimedOut: TimedOut; Ready | Starting with a recorded
// completion: AlreadyCompleted for Complete and Fail; otherwise taken.
Result<void> Transitions::admit(const InstanceSnapshot& snapshot, const StepRunRecord& run,
                                std::optional<ServerEvent::Kind> event) {
  if (run.kind != StepKind::Async) {
    return fail(Errc::NotFound, fmt::format("step run {} ('{}') is not an async step", idsOf(run),
                                            quoted(run.step)));
  }
  if (run.status == StepRunStatus::Cancelled ||
      snapshot.record.status == InstanceStatus::Cancelled) {
    return fail(Errc::Cancelled, fmt::format("instance {} was cancelled", run.instance));
  }
  switch (run.status) {
    case StepRunStatus::Completed:
      return fail(Errc::AlreadyCompleted,
                  fmt::format("step run {} is already completed", idsOf(run)));
    case StepRunStatus::Failed:
      return fail(Errc::StepFailed,
                  fmt::format("step run {} failed: {}", idsOf(run), quoted(run.error)));
    case StepRunStatus::TimedOut:
      return fail(Errc::TimedOut, fmt::format("step run {} timed out", idsOf(run)));
    case StepRunStatus::Ready:
    case StepRunStatus::Starting:
    case StepRunStatus::Waiting:
      if (run.hasCompletion && event && *event != ServerEvent::Kind::Heartbeat) {
        return fail(Errc::AlreadyCompleted,
                    fmt::format("step run {} already has a completion recorded", idsOf(run)));
      }
      return {};
    case StepRunStatus::Cancelled: break;  // refused above
  }
  return noTransition(run, event ? runEventOf(*event) : RunEvent::Complete);
}

// Waiting --complete/fail--> close; Ready | Starting --complete/fail--> recorded;
// Ready | Starting | Waiting --heartbeat--> recorded (a Waiting deadline moves).
Result<ChangeSet> Transitions::applyEvent(const CompiledProcess& process,
                                          const InstanceSnapshot& snapshot, StepRunRecord run,
                                          ServerEvent event, Timestamp now) const {
  if (!isOpen(run.status)) return noTransition(run, runEventOf(event.kind));
  if (event.kind == ServerEvent::Kind::Heartbeat) {
    auto found = stepOf(process, run);
    if (!found) return tl::unexpected(found.error());
    const CompiledStep& step = **found;
    return recordEvent(snapshot, std::move(run), std::move(event),
                       step.heartbeat ? step.heartbeat : step.timeout, now);
  }
  if (run.status != StepRunStatus::Waiting || run.hasCompletion) {
    return recordEvent(snapshot, std::move(run), std::move(event), std::nullopt, now);
  }
  Decision decision;
  if (event.kind == ServerEvent::Kind::Complete) {
    decision.kind = Decision::Kind::Complete;
    run.hasCompletion = true;
    run.completion = std::move(event.fields);
  } else {
    decision.kind = Decision::Kind::Fail;
    decision.text = event.reason.empty() ? kExternalFailure : event.reason;
    decision.writes = std::move(event.fields);
  }
  return close(process, snapshot, std::move(run), std::move(decision), now);
}

// Waiting --complete/fail--> Waiting, recorded, deadline cleared, instance
// Running; Ready | Starting --complete/fail--> recorded; Ready | Starting |
// Waiting --heartbeat--> recorded (a Waiting deadline moves).
Result<ChangeSet> Transitions::recordEvent(const InstanceSnapshot& snapshot, StepRunRecord run,
                                           ServerEvent event,
                                           std::optional<std::chrono::microseconds> heartbeat,
                                           Timestamp now) {
  if (!isOpen(run.status)) return noTransition(run, runEventOf(event.kind));
  ChangeSet set = guardedUpdate(snapshot, now);
  if (event.kind == ServerEvent::Kind::Heartbeat) {
    std::string detail;
    if (run.status == StepRunStatus::Waiting && !run.hasCompletion && heartbeat) {
      run.deadline = now + *heartbeat;
      detail = "deadline moved";
    }
    set.history.push_back(entry(HistoryKind::Heartbeat, now, &run, std::move(detail)));
    set.stepRuns.push_back(std::move(run));
    return set;
  }
  if (run.hasCompletion) return noTransition(run, runEventOf(event.kind));  // admit() refuses it
  const bool failure = event.kind == ServerEvent::Kind::Fail;
  const std::string reason = event.reason.empty() ? std::string(kExternalFailure) : event.reason;
  run.hasCompletion = true;
  run.completion = std::move(event.fields);
  if (failure) run.error = reason;
  std::string detail = failure ? "failure: " + reason : std::string();
  if (run.status == StepRunStatus::Waiting) {
    // The external system finished: no deadline may fire any more. The
    // instance runs again, for a host that defines the version to close it.
    run.deadline.reset();
    set.instance.status = InstanceStatus::Running;
    detail = fmt::format("{}{}for a host that defines version {}", detail,
                         detail.empty() ? "" : "; ", snapshot.record.processVersion);
  }
  set.history.push_back(entry(HistoryKind::CompletionRecorded, now, &run, std::move(detail)));
  set.stepRuns.push_back(std::move(run));
  return set;
}

std::optional<Decision> Transitions::recordedDecision(const StepRunRecord& run) {
  if (run.status != StepRunStatus::Waiting || !run.hasCompletion) return std::nullopt;
  Decision decision;
  if (run.error.empty()) {
    decision.kind = Decision::Kind::Complete;
  } else {
    decision.kind = Decision::Kind::Fail;
    decision.text = run.error;
  }
  return decision;
}

// Running | Waiting --cancel--> Cancelled (and its open run);
// Completed: AlreadyCompleted; Failed: StepFailed; Cancelled: Cancelled.
Result<ChangeSet> Transitions::cancel(const InstanceSnapshot& snapshot,
                                      std::optional<StepRunRecord> openRun,
                                      const std::string& reason, Timestamp now) {
  const InstanceRecord& record = snapshot.record;
  switch (record.status) {
    case InstanceStatus::Completed:
      return fail(Errc::AlreadyCompleted, fmt::format("instance {} already completed", record.id));
    case InstanceStatus::Failed:
      return fail(Errc::StepFailed,
                  fmt::format("instance {} already failed: {}", record.id, quoted(record.error)));
    case InstanceStatus::Cancelled:
      return fail(Errc::Cancelled, fmt::format("instance {} is already cancelled", record.id));
    case InstanceStatus::Running:
    case InstanceStatus::Waiting: break;
  }
  ChangeSet set = guardedUpdate(snapshot, now);
  set.instance.status = InstanceStatus::Cancelled;
  set.instance.error = reason;
  if (openRun && !isTerminal(openRun->status)) {
    openRun->status = StepRunStatus::Cancelled;
    openRun->error = reason;
    openRun->finishedAt = now;
    set.stepRuns.push_back(std::move(*openRun));
  }
  set.history.push_back(entry(HistoryKind::Cancelled, now, nullptr, reason));
  return set;
}

// Failed --retry--> allowed; Cancelled: Cancelled; anything else: InvalidArgument.
Result<void> Transitions::admitRetry(const InstanceRecord& record) {
  if (record.status == InstanceStatus::Cancelled) {
    return fail(Errc::Cancelled, fmt::format("instance {} was cancelled", record.id));
  }
  if (record.status != InstanceStatus::Failed || record.currentRun == 0) {
    return fail(Errc::InvalidArgument,
                fmt::format("instance {} is {}, not Failed: there is nothing to retry", record.id,
                            statusName(record.status)));
  }
  return {};
}

// Failed --retry--> a new run of the last run's step at attempt+1.
Result<ChangeSet> Transitions::retry(const CompiledProcess& process,
                                     const InstanceSnapshot& snapshot,
                                     const StepRunRecord& failedRun, Timestamp now) const {
  if (isOpen(failedRun.status)) return noTransition(failedRun, RunEvent::Retry);
  if (auto found = stepOf(process, failedRun); !found) return tl::unexpected(found.error());
  ChangeSet set = guardedUpdate(snapshot, now);
  set.instance.error.clear();
  const int nextAttempt = failedRun.attempt + 1;
  set.history.push_back(
      entry(HistoryKind::Retried, now, &failedRun, fmt::format("attempt {}", nextAttempt)));
  auto scheduled = schedule(set, process, process.stepIndex.at(failedRun.step), nextAttempt, now,
                            fmt::format("retry of run {}", failedRun.run));
  if (!scheduled) return tl::unexpected(scheduled.error());
  return set;
}

}  // namespace asyncflow::detail
