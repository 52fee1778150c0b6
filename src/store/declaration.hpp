// What Store::declare() refuses, for every store (internal; any store may use it).
#pragma once

#include "asyncflow/error.hpp"
#include "asyncflow/records.hpp"

namespace asyncflow::detail {

// `declaration` as a store keeps it, its fields and its steps each sorted by
// name (bytewise); or InvalidArgument naming the first thing Store::declare()
// refuses: an empty process name, a version below 1, an empty or repeated field
// name, a type that is not a Type enumerator, an empty or repeated step name, a
// kind that is not a StepKind enumerator, a negative heartbeat. Only allocation
// may fail otherwise (std::bad_alloc).
Result<ProcessDeclaration> validDeclaration(const ProcessDeclaration& declaration);

}  // namespace asyncflow::detail
