// The change sets of the step-run state machine (internal). Pure: they read a
// snapshot and return what to write; the engine applies them.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "asyncflow/engine.hpp"
#include "asyncflow/error.hpp"
#include "asyncflow/fields.hpp"
#include "asyncflow/random.hpp"
#include "asyncflow/store.hpp"
#include "model/process_model.hpp"

namespace asyncflow::detail {

// What a handler (or a server event) decided, kept apart from the snapshot it
// ran on so that it can be re-applied to a newer snapshot after a concurrent
// completion or cancel.
struct HandlerResult {
  enum class Kind { Next, GoTo, Finish, Wait, Complete, Fail };
  Kind kind = Kind::Fail;
  std::string text;  // goTo target or failure reason
  Fields writes;     // validated field writes
};

// The text a field's value gives as a business key: strings as they are,
// numbers and booleans spelled out, null as "" (no key).
std::string correlationKeyOf(const Value& value);

class Transitions {
 public:
  Transitions(SerialForm serials, RandomSource& random) : serials_(serials), random_(random) {}

  // A header-only change set: the instance as it is, version guarded.
  static ChangeSet touch(const InstanceSnapshot& snapshot, Timestamp now);

  // Adds a new run of step `index` to `set` (status Starting: the engine starts
  // it at once) with a StepStarted entry, and points the header at it. Fails
  // only when no serial secret can be drawn.
  Result<void> schedule(ChangeSet& set, const CompiledProcess& process, std::size_t index,
                        int attempt, Timestamp now, std::string detail = {}) const;

  // Closes `run` with `result` and moves the instance on: to the next run, its
  // end, its error line, or Failed. A Wait result makes the run wait (with its
  // deadline and business key) unless a completion or failure already arrived.
  Result<ChangeSet> close(const CompiledProcess& process, const InstanceSnapshot& snapshot,
                          StepRunRecord run, HandlerResult result, Timestamp now) const;

  // The waiting `run`'s deadline passed: TimedOut, then the escalation step or
  // Failed.
  Result<ChangeSet> timeOut(const CompiledProcess& process, const InstanceSnapshot& snapshot,
                            StepRunRecord run, Timestamp now) const;

 private:
  // Moves the instance of `set` (whose current run is closed) along `route`.
  Result<void> follow(ChangeSet& set, const CompiledProcess& process, const Route& route,
                      Timestamp now) const;

  SerialForm serials_;
  RandomSource& random_;
};

}  // namespace asyncflow::detail
