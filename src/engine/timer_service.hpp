// The engine's timer (internal): sleeps until the earliest deadline in the
// store, fires what is due, and runs the engine's own delayed work.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "asyncflow/clock.hpp"
#include "asyncflow/error.hpp"
#include "asyncflow/observer.hpp"
#include "util/mutex.hpp"

namespace asyncflow::detail {

// What one firing pass over the due timers did.
struct TimerPass {
  std::size_t fired = 0;
  // Due, but they could not fire here (their process version, or its step, is
  // not defined here): they stay due and are tried again after the next
  // define(), never in a loop.
  std::size_t notFired = 0;
  // The store failed (to list the due timers, or to fire one): those stay
  // due and the pass is tried again after kRetryAfterFailure.
  std::optional<Error> failure;
};

// Holds only the earliest store deadline it knows of, never one entry per
// waiting step, and sleeps on an Alarm of the engine's Clock until then: with a
// ManualClock, moving the clock wakes it, so tests drive the real thread.
//
// It tells "nothing was due" (the deadline it slept for is gone: completed,
// moved by a heartbeat) from "due, but not defined here": timers of the second
// kind are skipped (the store is asked for deadlines after the pass's time)
// until definitionsChanged(), so they never hide later deadlines. A deadline
// committed while it reloads from the store is kept (noteDeadline), not lost.
//
// Besides store deadlines it runs the engine's delayed work in memory (a drive
// that backs off after a store failure, or yields): runAt(). Those are few and
// short-lived, unlike waiting steps.
//
// With a thread (the default), everything runs on it; without one, the host
// calls the engine's runDueTimers(), which fires the due timers itself and
// calls runDueTasks().
class TimerService {
 public:
  // How long the timer waits before it asks a failing store again.
  static constexpr std::chrono::seconds kRetryAfterFailure{1};

  // The engine's side: reading the store and firing timers.
  struct Hooks {
    // The earliest deadline of a waiting run later than `after`.
    std::function<Result<std::optional<Timestamp>>(Timestamp after)> nextDeadline;
    // Fires every timer due at `now`.
    std::function<TimerPass(Timestamp now)> fireDue;
    // A line for the host's log.
    std::function<void(LogLevel, std::string_view)> log;
  };

  // Starts the timer thread when `thread` is true. `clock` must not be null;
  // every hook must be set and must not throw.
  TimerService(std::shared_ptr<Clock> clock, Hooks hooks, bool thread);
  // Stops and joins the thread (stop()).
  ~TimerService();
  TimerService(const TimerService&) = delete;
  TimerService& operator=(const TimerService&) = delete;

  // A run now waits until `deadline`: wakes the thread when that is earlier
  // than what it sleeps towards, or keeps it for the reload in progress.
  void noteDeadline(Timestamp deadline) ASYNCFLOW_EXCLUDES(mutex_);

  // A process version was defined: timers that could not fire for want of a
  // definition are tried again, and the earliest deadline is reloaded.
  void definitionsChanged() ASYNCFLOW_EXCLUDES(mutex_);

  // Runs `task` on the timer's thread (or in runDueTasks()) once the clock
  // reads `when` or later. Dropped after stop(). `task` must not throw.
  void runAt(Timestamp when, std::function<void()> task) ASYNCFLOW_EXCLUDES(mutex_);

  // Runs the tasks due at `now`, in time order; for hosts without the thread.
  // Returns how many ran.
  std::size_t runDueTasks(Timestamp now) ASYNCFLOW_EXCLUDES(mutex_);

  // Tasks waiting for their time.
  std::size_t pendingTasks() const ASYNCFLOW_EXCLUDES(mutex_);

  // Stops the thread after what it is doing, and drops pending tasks. Idempotent.
  void stop() ASYNCFLOW_EXCLUDES(mutex_);

 private:
  void loop() ASYNCFLOW_EXCLUDES(mutex_);
  // Ends the thread's sleep, if there is a thread.
  void wakeThread();
  // The next moment the thread has work, given the state: none to sleep until woken.
  std::optional<Timestamp> wakeTime(Timestamp now) const ASYNCFLOW_REQUIRES(mutex_);
  // Pops the tasks due at `now`.
  std::vector<std::function<void()>> takeDueTasks(Timestamp now) ASYNCFLOW_REQUIRES(mutex_);

  // Constant after construction.
  const std::shared_ptr<Clock> clock_;
  const Hooks hooks_;
  // The thread sleeps on it, anyone wakes it; null without a thread (so that a
  // host without one leaves no alarm on a ManualClock).
  const std::unique_ptr<Alarm> alarm_;

  mutable Mutex mutex_;
  // The earliest store deadline worth waking for, when known_ (none: no
  // deadline at all). Not known_ means "reload it from the store".
  bool known_ ASYNCFLOW_GUARDED_BY(mutex_) = false;
  std::optional<Timestamp> next_ ASYNCFLOW_GUARDED_BY(mutex_);
  // Deadlines noted since the current reload began, folded in when it ends.
  std::optional<Timestamp> noted_ ASYNCFLOW_GUARDED_BY(mutex_);
  // Due timers at or before this time could not fire (not defined here); the
  // reload asks for deadlines after it. Cleared by definitionsChanged().
  std::optional<Timestamp> skipThrough_ ASYNCFLOW_GUARDED_BY(mutex_);
  // After a store failure: no store work before this time.
  std::optional<Timestamp> storeBlockedUntil_ ASYNCFLOW_GUARDED_BY(mutex_);
  // Bumped by definitionsChanged(): a reload or pass that began before it must
  // not mark timers as skipped, nor the deadline as known.
  std::uint64_t definitions_ ASYNCFLOW_GUARDED_BY(mutex_) = 0;
  std::multimap<Timestamp, std::function<void()>> tasks_ ASYNCFLOW_GUARDED_BY(mutex_);
  bool stopping_ ASYNCFLOW_GUARDED_BY(mutex_) = false;

  // Started in the constructor, joined by stop().
  std::thread thread_;
};

}  // namespace asyncflow::detail
