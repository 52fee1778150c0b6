// Engines of one process that share one Store object (internal): each tells
// the others' timers at once when it commits what they should look at, so that
// within a process no host waits for the change check (DESIGN.md section 8).
#pragma once

#include "asyncflow/store.hpp"
#include "engine/timer_service.hpp"

namespace asyncflow::detail {

// Thread-safe; one registry per process. A timer joins with the store it reads
// and must leave before it is destroyed.
class Peers {
 public:
  static void join(const Store* store, TimerService* timer);
  static void leave(const Store* store, TimerService* timer);
  // Calls storeChanged() on every timer of `store` but `from`.
  static void tell(const Store* store, const TimerService* from);
};

}  // namespace asyncflow::detail
