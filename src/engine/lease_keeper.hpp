// The handlers an engine is running and the leases they run under (internal),
// so that a long handler's lease is renewed before it expires (DESIGN.md
// section 8: renewed while a handler runs longer than a third of the lease).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <vector>

#include "asyncflow/clock.hpp"
#include "asyncflow/records.hpp"
#include "util/mutex.hpp"

namespace asyncflow::detail {

// Thread-safe. Holds one entry per handler in flight, never one per instance;
// the engine sweeps it every third of the lease while it is not empty.
class LeaseKeeper {
 public:
  // `duration` is the engine's lease duration (positive).
  explicit LeaseKeeper(std::chrono::microseconds duration) : duration_(duration) {}

  // How often a sweep runs while handlers are in flight: a third of the lease.
  std::chrono::microseconds sweepInterval() const { return duration_ / 3; }

  // A handler of `id` begins under a lease that expires at `expiry`. True when
  // the caller must schedule a sweep (none is scheduled yet).
  bool begin(InstanceId id, Timestamp expiry) ASYNCFLOW_EXCLUDES(mutex_);

  // The caller scheduled the sweep begin() asked for, as timer task `token`.
  void sweepScheduled(std::uint64_t token) ASYNCFLOW_EXCLUDES(mutex_);

  // The handler of `id` returned. When it was the last in flight, the token of
  // the scheduled sweep, for the caller to cancel (0: none), so that an idle
  // engine keeps no timer task.
  std::uint64_t end(InstanceId id) ASYNCFLOW_EXCLUDES(mutex_);

  // The lease of `id` now expires at `expiry` (a renewal committed).
  void renewed(InstanceId id, Timestamp expiry) ASYNCFLOW_EXCLUDES(mutex_);

  // Handlers in flight whose lease has less than two thirds of the duration
  // left at `now`: renew them.
  std::vector<InstanceId> due(Timestamp now) const ASYNCFLOW_EXCLUDES(mutex_);

  // A sweep ended: true when handlers are still in flight (schedule the next
  // sweep); false clears the "scheduled" mark.
  bool sweepAgain() ASYNCFLOW_EXCLUDES(mutex_);

  std::size_t inFlight() const ASYNCFLOW_EXCLUDES(mutex_);

 private:
  const std::chrono::microseconds duration_;
  mutable Mutex mutex_;
  std::map<InstanceId, Timestamp> expiries_ ASYNCFLOW_GUARDED_BY(mutex_);
  bool sweepScheduled_ ASYNCFLOW_GUARDED_BY(mutex_) = false;
  std::uint64_t sweepToken_ ASYNCFLOW_GUARDED_BY(mutex_) = 0;
};

}  // namespace asyncflow::detail
