#include "engine/handler_runner.hpp"

#include <exception>

#include "model/serial.hpp"
#include "util/exceptions.hpp"

namespace asyncflow::detail {

Fields changedFields(const Fields& before, const Fields& after) {
  Fields changed;
  for (const auto& [name, value] : after) {
    const Value* old = before.find(name);
    if (old == nullptr || *old != value) changed.set(name, value);
  }
  return changed;
}

Decision runHandler(const CompiledProcess& process, const CompiledStep& step,
                    const InstanceSnapshot& snapshot, const StepRunRecord& run) {
  using Kind = Decision::Kind;
  const InstanceRecord& record = snapshot.record;
  Decision decision;
  try {
    Fields work = snapshot.fields;
    if (step.kind == StepKind::Sync) {
      StepContext context(record.id, record.process, record.processVersion, step.name, run.attempt,
                          work);
      const StepOutcome outcome = step.sync(context);
      decision.text = outcome.text();
      switch (outcome.kind()) {
        case StepOutcome::Kind::Next: decision.kind = Kind::Next; break;
        case StepOutcome::Kind::GoTo: decision.kind = Kind::GoTo; break;
        case StepOutcome::Kind::Finish: decision.kind = Kind::Finish; break;
        case StepOutcome::Kind::Fail: decision.kind = Kind::Fail; break;
      }
    } else {
      AsyncStepContext context(record.id, record.process, record.processVersion, step.name,
                               run.attempt, work, formatSerial(record.id, run.run, run.secret));
      const StartOutcome outcome = step.async(context);
      decision.text = outcome.reason();
      switch (outcome.kind()) {
        case StartOutcome::Kind::Wait: decision.kind = Kind::Wait; break;
        case StartOutcome::Kind::Complete: decision.kind = Kind::Complete; break;
        case StartOutcome::Kind::Fail: decision.kind = Kind::Fail; break;
      }
    }
    auto writes = process.checkFields(changedFields(snapshot.fields, work));
    if (!writes) {
      decision.kind = Kind::Fail;
      decision.text = writes.error().message;
      return decision;
    }
    decision.writes = std::move(*writes);
  } catch (...) {
    // A throwing handler fails its step, never the host; its writes are dropped.
    decision = Decision();
    decision.kind = Kind::Fail;
    decision.text = describeException(std::current_exception());
  }
  return decision;
}

}  // namespace asyncflow::detail
