// Runs a step's handler and turns what it returned into a Decision (internal).
#pragma once

#include "asyncflow/records.hpp"
#include "model/process_model.hpp"
#include "model/transitions.hpp"

namespace asyncflow::detail {

// Runs the handler of `step` for `run` on a copy of the instance's fields and
// returns its decision: the outcome it returned, and the fields it changed,
// validated against `process`. A handler that throws, or writes a field that is
// undeclared or of the wrong type, decides Fail with the reason and its writes
// are dropped. Never throws. Called by the one thread driving the instance.
Decision runHandler(const CompiledProcess& process, const CompiledStep& step,
                    const InstanceSnapshot& snapshot, const StepRunRecord& run);

// The fields of `after` that are new or differ from `before`.
Fields changedFields(const Fields& before, const Fields& after);

}  // namespace asyncflow::detail
