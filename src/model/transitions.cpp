#include "model/transitions.hpp"

#include <utility>
#include <variant>

#include <fmt/format.h>

#include "model/serial.hpp"

namespace asyncflow::detail {
namespace {

HistoryEvent event(HistoryKind kind, Timestamp at, const StepRunRecord* run,
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
  set.history.push_back(event(HistoryKind::Failed, now, nullptr, why));
  set.instance.error = std::move(why);
}

}  // namespace

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

ChangeSet Transitions::touch(const InstanceSnapshot& snapshot, Timestamp now) {
  ChangeSet set;
  set.expectedVersion = snapshot.record.version;
  set.instance = snapshot.record;
  set.instance.updatedAt = now;
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
  set.history.push_back(event(HistoryKind::StepStarted, now, &run, std::move(detail)));
  set.stepRuns.push_back(std::move(run));
  return {};
}

Result<void> Transitions::follow(ChangeSet& set, const CompiledProcess& process, const Route& route,
                                 Timestamp now) const {
  switch (route.kind) {
    case Route::Kind::End:
      set.instance.status = InstanceStatus::Completed;
      set.history.push_back(event(HistoryKind::Completed, now, nullptr));
      return {};
    case Route::Kind::Failure: failInstance(set, route.error, now); return {};
    case Route::Kind::Step: return schedule(set, process, route.step, 1, now);
  }
  return {};
}

Result<ChangeSet> Transitions::close(const CompiledProcess& process,
                                     const InstanceSnapshot& snapshot, StepRunRecord run,
                                     HandlerResult result, Timestamp now) const {
  ChangeSet set = touch(snapshot, now);
  set.fields = std::move(result.writes);
  const std::size_t from = process.stepIndex.at(run.step);
  const CompiledStep& step = process.steps[from];

  // A failure the external system reported before the step waited wins over
  // whatever the handler decided next.
  const bool failureArrived = run.hasCompletion && !run.error.empty();
  if (failureArrived && result.kind != HandlerResult::Kind::Fail) {
    result.kind = HandlerResult::Kind::Fail;
    result.text = run.error;
  }

  if (result.kind == HandlerResult::Kind::Fail) {
    if (failureArrived) set.fields.merge(run.completion);  // the failure's details
    run.completion = Fields();
    run.status = StepRunStatus::Failed;
    run.error = result.text;
    run.finishedAt = now;
    set.history.push_back(event(HistoryKind::StepFailed, now, &run, result.text));
    set.stepRuns.push_back(std::move(run));
    if (step.onError) {
      auto scheduled = schedule(set, process, *step.onError, 1, now,
                                fmt::format("error line from '{}'", step.name));
      if (!scheduled) return tl::unexpected(scheduled.error());
      return set;
    }
    failInstance(set, fmt::format("step '{}' failed: {}", step.name, result.text), now);
    return set;
  }

  if (result.kind == HandlerResult::Kind::Wait && !run.hasCompletion) {
    run.status = StepRunStatus::Waiting;
    run.waitingSince = now;
    if (step.timeout.count() > 0) run.deadline = now + step.timeout;
    if (!step.correlateField.empty()) {
      Fields after = snapshot.fields;
      after.merge(set.fields);
      if (const Value* key = after.find(step.correlateField)) {
        run.correlationKey = correlationKeyOf(*key);
      }
    }
    set.instance.status = InstanceStatus::Waiting;
    // The history shows the serial's ids, never its secret.
    set.history.push_back(
        event(HistoryKind::Waiting, now, &run, formatSerial(run.instance, run.run, {})));
    set.stepRuns.push_back(std::move(run));
    return set;
  }

  // Completed: by the handler, or by a completion that arrived meanwhile. The
  // completion's fields land after the handler's writes, and from then on live
  // in the instance, not on the run.
  if (result.kind == HandlerResult::Kind::Wait) run.waitingSince = now;
  std::string completedWith;
  if (run.hasCompletion) {
    completedWith = fieldNames(run.completion);
    set.fields.merge(run.completion);
    run.completion = Fields();
  }
  run.status = StepRunStatus::Completed;
  run.finishedAt = now;
  set.history.push_back(event(HistoryKind::StepCompleted, now, &run, std::move(completedWith)));
  set.stepRuns.push_back(std::move(run));

  Route route;
  if (result.kind == HandlerResult::Kind::Finish) {
    route = Route::end();
  } else if (result.kind == HandlerResult::Kind::GoTo) {
    auto target = process.stepIndex.find(result.text);
    route = target == process.stepIndex.end()
                ? Route::failure(
                      fmt::format("step '{}' went to unknown step '{}'", step.name, result.text))
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

Result<ChangeSet> Transitions::timeOut(const CompiledProcess& process,
                                       const InstanceSnapshot& snapshot, StepRunRecord run,
                                       Timestamp now) const {
  ChangeSet set = touch(snapshot, now);
  const std::size_t from = process.stepIndex.at(run.step);
  const CompiledStep& step = process.steps[from];
  run.status = StepRunStatus::TimedOut;
  run.error = "its deadline passed";
  run.finishedAt = now;
  set.history.push_back(event(HistoryKind::TimedOut, now, &run));
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

}  // namespace asyncflow::detail
