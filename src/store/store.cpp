#include "asyncflow/store.hpp"

namespace asyncflow {

std::string_view statusName(InstanceStatus status) noexcept {
  switch (status) {
    case InstanceStatus::Running: return "Running";
    case InstanceStatus::Waiting: return "Waiting";
    case InstanceStatus::Completed: return "Completed";
    case InstanceStatus::Failed: return "Failed";
    case InstanceStatus::Cancelled: return "Cancelled";
  }
  return "Unknown";
}

std::string_view statusName(StepRunStatus status) noexcept {
  switch (status) {
    case StepRunStatus::Ready: return "Ready";
    case StepRunStatus::Starting: return "Starting";
    case StepRunStatus::Waiting: return "Waiting";
    case StepRunStatus::Completed: return "Completed";
    case StepRunStatus::Failed: return "Failed";
    case StepRunStatus::TimedOut: return "TimedOut";
    case StepRunStatus::Cancelled: return "Cancelled";
  }
  return "Unknown";
}

std::string_view historyKindName(HistoryKind kind) noexcept {
  switch (kind) {
    case HistoryKind::Started: return "Started";
    case HistoryKind::StepStarted: return "StepStarted";
    case HistoryKind::Waiting: return "Waiting";
    case HistoryKind::CompletionRecorded: return "CompletionRecorded";
    case HistoryKind::StepCompleted: return "StepCompleted";
    case HistoryKind::StepFailed: return "StepFailed";
    case HistoryKind::TimedOut: return "TimedOut";
    case HistoryKind::Heartbeat: return "Heartbeat";
    case HistoryKind::Retried: return "Retried";
    case HistoryKind::Completed: return "Completed";
    case HistoryKind::Failed: return "Failed";
    case HistoryKind::Cancelled: return "Cancelled";
  }
  return "Unknown";
}

}  // namespace asyncflow
