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
// Two kinds of store deadline: waiting runs' deadlines (fireDue) and lease
// expiries (takeOver hands expired and offered leases to drives: DESIGN.md
// section 8). Each kind is its own source with its own earliest time.
//
// It tells "nothing was due" (the deadline it slept for is gone: completed,
// moved by a heartbeat) from "due, but not defined here": timers of the second
// kind are skipped (the store is asked for deadlines after the pass's time)
// until definitionsChanged(), so they never hide later deadlines. A lease pass
// skips through its time whatever it found: what it handed over is the drives'
// business. A deadline committed while it reloads from the store is kept
// (noteDeadline), not lost.
//
// Other hosts write deadlines and leases too. With Hooks::changeMark it asks
// the store every `changeCheck` whether anything was committed, and reloads
// both earliest times when so; storeChanged() does the same at once (an engine
// of this process on the same store object says so).
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
    // The earliest lease expiry later than `after`, and the pass that hands
    // what expired at `now` to drives (fired: handed over; notFired: its
    // version is not defined here). Both empty: no lease source.
    std::function<Result<std::optional<Timestamp>>(Timestamp after)> nextLeaseExpiry;
    std::function<TimerPass(Timestamp now)> takeOver;
    // The store's change mark (Store::changeMark). Empty: no change check.
    std::function<Result<std::uint64_t>()> changeMark;
  };

  // Starts the timer thread when `thread` is true. `clock` must not be null;
  // nextDeadline, fireDue and log must be set, and no hook may throw. With
  // hooks.changeMark and a positive `changeCheck`, the thread asks for the
  // mark that often.
  TimerService(std::shared_ptr<Clock> clock, Hooks hooks, bool thread,
               std::chrono::microseconds changeCheck = std::chrono::microseconds::zero());
  // Stops and joins the thread (stop()).
  ~TimerService();
  TimerService(const TimerService&) = delete;
  TimerService& operator=(const TimerService&) = delete;

  // A run now waits until `deadline`: wakes the thread when that is earlier
  // than what it sleeps towards, or keeps it for the reload in progress.
  void noteDeadline(Timestamp deadline) ASYNCFLOW_EXCLUDES(mutex_);

  // A process version was defined: timers and leases that could not be acted
  // on for want of a definition are tried again, and both earliest times are
  // reloaded.
  void definitionsChanged() ASYNCFLOW_EXCLUDES(mutex_);

  // Another host committed (a deadline, an offered or released lease): both
  // earliest times are reloaded, and skipped leases are looked at again.
  void storeChanged() ASYNCFLOW_EXCLUDES(mutex_);

  // Runs `task` on the timer's thread (or in runDueTasks()) once the clock
  // reads `when` or later. Dropped after stop(). `task` must not throw.
  // Returns a token for cancel() (0 when dropped).
  std::uint64_t runAt(Timestamp when, std::function<void()> task) ASYNCFLOW_EXCLUDES(mutex_);

  // Drops the task of `token` unless it ran or is running. True when dropped.
  bool cancel(std::uint64_t token) ASYNCFLOW_EXCLUDES(mutex_);

  // Runs the tasks due at `now`, in time order; for hosts without the thread.
  // Returns how many ran.
  std::size_t runDueTasks(Timestamp now) ASYNCFLOW_EXCLUDES(mutex_);

  // Tasks waiting for their time.
  std::size_t pendingTasks() const ASYNCFLOW_EXCLUDES(mutex_);

  // Stops the thread after what it is doing, and drops pending tasks. Idempotent.
  void stop() ASYNCFLOW_EXCLUDES(mutex_);

 private:
  // One kind of store deadline and what the timer knows of it.
  struct Source {
    // The earliest time worth waking for, when known (none: there is none).
    // Not known means "reload it from the store".
    bool known = false;
    std::optional<Timestamp> next;
    // Deadlines noted since the current reload began, folded in when it ends.
    std::optional<Timestamp> noted;
    // Due entries at or before this time are skipped: the reload asks for
    // times after it.
    std::optional<Timestamp> skipThrough;
  };
  enum SourceIndex : std::size_t { kTimers = 0, kLeases = 1 };

  void loop() ASYNCFLOW_EXCLUDES(mutex_);
  // Ends the thread's sleep, if there is a thread.
  void wakeThread();
  // The next moment the thread has work, given the state: none to sleep until woken.
  std::optional<Timestamp> wakeTime(Timestamp now) const ASYNCFLOW_REQUIRES(mutex_);
  // Pops the tasks due at `now`.
  std::vector<std::function<void()>> takeDueTasks(Timestamp now) ASYNCFLOW_REQUIRES(mutex_);
  // Reloads or fires source `index` when it has work at `now`; false when it
  // had none. Called with mutex_ held; releases it around store calls and
  // passes, and holds it again on return.
  bool turn(std::size_t index, Timestamp now) ASYNCFLOW_REQUIRES(mutex_);
  // Asks the store for its change mark when the check is due (mutex_ as turn()).
  bool checkChanges(Timestamp now) ASYNCFLOW_REQUIRES(mutex_);
  std::size_t sourceCount() const { return hooks_.takeOver ? 2 : 1; }

  // Constant after construction.
  const std::shared_ptr<Clock> clock_;
  const Hooks hooks_;
  const std::chrono::microseconds changeCheck_;
  // The thread sleeps on it, anyone wakes it; null without a thread (so that a
  // host without one leaves no alarm on a ManualClock).
  const std::unique_ptr<Alarm> alarm_;

  mutable Mutex mutex_;
  Source sources_[2] ASYNCFLOW_GUARDED_BY(mutex_);
  // After a store failure: no store work before this time.
  std::optional<Timestamp> storeBlockedUntil_ ASYNCFLOW_GUARDED_BY(mutex_);
  // Bumped by definitionsChanged() and storeChanged(): a reload or pass that
  // began before it must not mark entries as skipped, nor a time as known.
  std::uint64_t definitions_ ASYNCFLOW_GUARDED_BY(mutex_) = 0;
  // The change check: when it is due next, and the mark it last read.
  std::optional<Timestamp> nextCheck_ ASYNCFLOW_GUARDED_BY(mutex_);
  std::optional<std::uint64_t> mark_ ASYNCFLOW_GUARDED_BY(mutex_);
  struct Task {
    std::uint64_t token = 0;
    std::function<void()> run;
  };
  std::multimap<Timestamp, Task> tasks_ ASYNCFLOW_GUARDED_BY(mutex_);
  std::uint64_t lastToken_ ASYNCFLOW_GUARDED_BY(mutex_) = 0;
  bool stopping_ ASYNCFLOW_GUARDED_BY(mutex_) = false;
  // What the thread sleeps (or is about to sleep) until, set with the lock held
  // when it computes it: runAt() wakes it only for an earlier task. `asleep_`
  // false: it is at work and looks at the tasks before it sleeps again.
  bool asleep_ ASYNCFLOW_GUARDED_BY(mutex_) = false;
  std::optional<Timestamp> sleepTarget_ ASYNCFLOW_GUARDED_BY(mutex_);

  // Started in the constructor, joined by stop().
  std::thread thread_;
};

}  // namespace asyncflow::detail
