#include "engine/committer.hpp"

#include <vector>

namespace asyncflow::detail {

Committer::Committer(Store& store, std::shared_ptr<Listener> listener, LogSink log,
                     std::function<void(Timestamp)> onDeadline, std::function<void()> onShared)
    : store_(store), listener_(std::move(listener)), log_(std::move(log)),
      onDeadline_(std::move(onDeadline)), onShared_(std::move(onShared)) {}

void Committer::log(LogLevel level, std::string_view message) const {
  if (!log_) return;
  try {
    log_(level, message);
  } catch (...) {
    // A throwing sink must not take a transition down with it.
  }
}

Result<ApplyResult> Committer::commit(ChangeSet set) const {
  const bool tell = listener_ || log_;
  std::vector<HistoryEvent> events;
  if (tell) events = set.history;
  if (set.instance.status != InstanceStatus::Running) {
    set.instance.leaseOwner.clear();
    set.instance.leaseExpiry.reset();
  }
  const bool offered = set.instance.status == InstanceStatus::Running &&
                       set.instance.leaseOwner.empty() && set.instance.leaseExpiry.has_value();
  std::optional<Timestamp> deadline;
  for (const StepRunRecord& run : set.stepRuns) {
    if (run.status == StepRunStatus::Waiting && run.deadline) {
      if (!deadline || *run.deadline < *deadline) deadline = run.deadline;
    }
  }
  std::vector<ChangeSet> batch;
  batch.push_back(std::move(set));
  auto results = store_.apply(std::move(batch));
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
  if (deadline && onDeadline_) onDeadline_(*deadline);
  if ((deadline || offered) && onShared_) onShared_();
  for (HistoryEvent& event : events) {
    event.instance = applied.instance;
    if (listener_) {
      try {
        listener_->onEvent(event);
      } catch (...) {
        // A throwing listener must not undo or repeat a durable transition.
      }
    }
    if (log_) {
      log(LogLevel::Info,
          fmt::format("instance {}: {}{}{}", event.instance, historyKindName(event.kind),
                      event.step.empty() ? "" : fmt::format(" '{}'", event.step),
                      event.detail.empty() ? "" : fmt::format(": {}", event.detail)));
    }
  }
  return applied;
}

}  // namespace asyncflow::detail
