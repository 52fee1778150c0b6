// Engine::Impl: what reads. Nothing here writes to the store.
#include <utility>

#include <fmt/format.h>

#include "engine/engine_impl.hpp"
#include "model/serial.hpp"

namespace asyncflow {
namespace {

// A waiting (or not yet waiting) async run as the outside world sees it.
WaitingStep waitingStepOf(const StepRunRecord& run, std::string process, int processVersion) {
  WaitingStep step;
  step.serial = detail::formatSerial(run.instance, run.run, run.secret);
  step.instance = run.instance;
  step.process = std::move(process);
  step.processVersion = processVersion;
  step.step = run.step;
  step.waitingSince = run.waitingSince;
  step.deadline = run.deadline;
  return step;
}

}  // namespace

Result<WaitingPage> Engine::Impl::waiting(const WaitingFilter& filter) const {
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
  for (WaitingRow& row : *rows) {
    page.steps.push_back(waitingStepOf(row.run, std::move(row.process), row.processVersion));
  }
  if (rows->size() == filter.limit) {
    page.next = WaitingCursor{rows->back().run.instance, rows->back().run.run};
  }
  return page;
}

Result<WaitingStep> Engine::Impl::serverEvent(std::string_view serial) const {
  auto parts = detail::parseSerial(serial);
  if (!parts) return tl::unexpected(parts.error());
  if (parts->secret.empty() && options_.serials == SerialForm::WithSecret) {
    return fail(Errc::InvalidSerial, "the serial has no secret, and this engine requires one");
  }
  auto open = openRun(RunSelector{{parts->instance, parts->run}, parts->secret, std::nullopt},
                      std::nullopt);
  if (!open) return tl::unexpected(open.error());
  return waitingStepOf(open->run, open->snapshot.record.process,
                       open->snapshot.record.processVersion);
}

Result<std::vector<HistoryEvent>> Engine::Impl::history(InstanceId id) const {
  auto snapshot = store_->loadInstance(id);
  if (!snapshot) return tl::unexpected(snapshot.error());
  return store_->loadHistory(id);
}

Result<InstanceInfo> Engine::Impl::instance(InstanceId id) const {
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
  info.currentRun = record.currentRun;
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

EngineStats Engine::Impl::stats() const {
  EngineStats stats;
  stats.drivingInstances = gate_.size();
  stats.queuedContinuations = workers_.queued();
  return stats;
}

// The workers first; then drives on other threads: inline mode's callers and
// timer thread (a worker's drive has left the gate by the time it is idle).
void Engine::Impl::waitIdle() {
  workers_.waitIdle();
  gate_.waitEmpty();
}

}  // namespace asyncflow
