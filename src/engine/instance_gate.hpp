// One thread per instance (internal): the local half of instance ownership.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "asyncflow/records.hpp"
#include "util/mutex.hpp"

namespace asyncflow::detail {

// Lets at most one thread drive an instance at a time, without blocking the
// others: a thread that finds the instance taken asks its driver for one more
// pass instead of waiting, so no wake-up is lost. Holds an entry only while an
// instance is being driven: a waiting instance costs nothing. Thread-safe.
//
// Multi-host leases build on this seam: a host first claims the instance in the
// store, then enters here.
//
//   if (!gate.enter(id, /*askForPass=*/true)) return;   // someone else drives it
//   do { ...drive... } while (gate.leaveOrLoop(id));
class InstanceGate {
 public:
  // True: the caller now drives `id` and must end with leaveOrLoop() or leave().
  // False: another thread drives it; with `askForPass` that thread makes one
  // more pass before it lets go.
  bool enter(InstanceId id, bool askForPass) ASYNCFLOW_EXCLUDES(mutex_);

  // The driver of `id` finished a pass. True when another pass was asked for
  // meanwhile: the caller keeps `id` and drives it again. False: `id` is free.
  // Requires: the caller entered `id`.
  bool leaveOrLoop(InstanceId id) ASYNCFLOW_EXCLUDES(mutex_);

  // The driver of `id` lets go now, passes asked for or not (it hands the
  // instance on, e.g. yields it to a worker). Requires: the caller entered `id`.
  void leave(InstanceId id) ASYNCFLOW_EXCLUDES(mutex_);

  // How many instances are being driven right now.
  std::size_t size() const ASYNCFLOW_EXCLUDES(mutex_);

  // Blocks until no instance is being driven. Never from a driving thread
  // (it would wait for itself).
  void waitEmpty() ASYNCFLOW_EXCLUDES(mutex_);

 private:
  // Takes `id` out; wakes waitEmpty() when it was the last.
  void erase(std::unordered_map<InstanceId, bool>::iterator it) ASYNCFLOW_REQUIRES(mutex_);

  mutable Mutex mutex_;
  CondVar emptied_;
  // Instances being driven, each with "another pass asked for".
  std::unordered_map<InstanceId, bool> driving_ ASYNCFLOW_GUARDED_BY(mutex_);
};

// A set of instances, each user saying what membership means (a drive queued
// and not begun; a handler run whose decision is not committed). Thread-safe.
class InstanceSet {
 public:
  // True when `id` was not in the set; it is now.
  bool add(InstanceId id) ASYNCFLOW_EXCLUDES(mutex_);

  // Takes `id` out; no effect when it was not in.
  void remove(InstanceId id) ASYNCFLOW_EXCLUDES(mutex_);

  // Whether `id` is in the set.
  bool contains(InstanceId id) const ASYNCFLOW_EXCLUDES(mutex_);

  // How many instances are in the set.
  std::size_t size() const ASYNCFLOW_EXCLUDES(mutex_);

 private:
  mutable Mutex mutex_;
  std::unordered_set<InstanceId> ids_ ASYNCFLOW_GUARDED_BY(mutex_);
};

// How long an instance's drive waits before it is tried again after the store
// failed it: kFirst, doubling with each failure in a row, at most kLongest.
// Remembers only instances that failed since their last good pass. Thread-safe.
class DriveBackoff {
 public:
  static constexpr std::chrono::milliseconds kFirst{100};
  static constexpr std::chrono::milliseconds kLongest{10'000};

  // Records one more failure of `id`; the delay before its next try.
  std::chrono::milliseconds failed(InstanceId id) ASYNCFLOW_EXCLUDES(mutex_);

  // Forgets the failures of `id`: its drive went well.
  void succeeded(InstanceId id) ASYNCFLOW_EXCLUDES(mutex_);

  // How many instances have failures on record.
  std::size_t size() const ASYNCFLOW_EXCLUDES(mutex_);

  // The instances with failures on record (a drive of each waits for its
  // back-off), in no particular order.
  std::vector<InstanceId> failing() const ASYNCFLOW_EXCLUDES(mutex_);

 private:
  mutable Mutex mutex_;
  std::unordered_map<InstanceId, int> failures_ ASYNCFLOW_GUARDED_BY(mutex_);
  // failures_.size(), readable without the lock: every good drive calls
  // succeeded(), and almost always there is nothing to forget.
  std::atomic<std::size_t> count_{0};
};

}  // namespace asyncflow::detail
