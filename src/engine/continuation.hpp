// What the engine hands its workers (internal).
#pragma once

#include "asyncflow/records.hpp"

namespace asyncflow::detail {

// Why an instance is driven:
//   Continue  after a commit, or to try again after a failed one: a driver
//             busy with it makes one more pass.
//   Recover   the store listed it as Running (recover(), define(), an expired
//             or offered lease). Whether its handler may have run, so that a
//             re-run counts a new attempt, the lease tells: another host's that
//             expired, yes; offered, no; this engine's, only if this engine's
//             handler ran without its decision committed (Engine::Impl keeps
//             that set). Dropped while a driver is busy with it.
enum class Drive { Continue, Recover };

// One instance to drive, and why.
struct Continuation {
  InstanceId id = 0;
  Drive how = Drive::Continue;
};

}  // namespace asyncflow::detail
