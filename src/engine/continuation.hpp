// What the engine hands its workers (internal).
#pragma once

#include "asyncflow/records.hpp"

namespace asyncflow::detail {

// Why an instance is driven: to continue after a commit, or to recover it
// after a crash or a failed commit (its current handler may have run already,
// so a re-run counts a new attempt first).
enum class Drive { Continue, Recover };

// One instance to drive, and why.
struct Continuation {
  InstanceId id = 0;
  Drive how = Drive::Continue;
};

}  // namespace asyncflow::detail
