// asyncflow: the engine's source of time, injectable so tests never sleep.
//
// The engine reads the time from a Clock and its timer thread sleeps on one of
// the clock's Alarms, so a test that injects a ManualClock drives the real
// timer thread by moving the clock: no sleeps, no runDueTimers() by hand.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <vector>

namespace asyncflow {

// Wall-clock time as stored in records and history.
using Timestamp = std::chrono::system_clock::time_point;

// A sleep that can be ended early: the engine's timer thread sleeps on one.
// Made by Clock::newAlarm(). Thread-safe: one thread sleeps, any thread wakes.
class Alarm {
 public:
  virtual ~Alarm() = default;
  // Blocks until the clock reads `deadline` or later (none: until woken), or
  // until wake() is called; returns at once when wake() was called since the
  // last return. May return early: the caller reads the clock and its own state
  // again. Never fails.
  virtual void sleepUntil(std::optional<Timestamp> deadline) = 0;
  // Ends the sleep in progress, or else the next one. Never blocks for long.
  virtual void wake() = 0;
};

// Where the engine reads the time. Implementations must be thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  // The current time. Never fails.
  virtual Timestamp now() = 0;
  // A new alarm on this clock. The default sleeps in real time for
  // `deadline - now()`, which suits any clock that moves with real time (an
  // offset or scaled system clock); a clock that jumps must override it so that
  // its jumps wake the sleepers, as ManualClock does. Never null.
  virtual std::unique_ptr<Alarm> newAlarm();
};

// The system clock. Shared, stateless, thread-safe; never null.
std::shared_ptr<Clock> systemClock();

// A clock that moves only when told to: for tests and simulations. Thread-safe.
//
// Its alarms sleep until the clock is moved to or past their deadline (or they
// are woken), never in real time. awaitSleepers() tells a test when every alarm
// sleeps again, that is when the engine's timer thread has done all that was
// due after the test moved the clock or woke it.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(Timestamp start = Timestamp(std::chrono::seconds(1'700'000'000)));
  ~ManualClock() override;
  ManualClock(const ManualClock&) = delete;
  ManualClock& operator=(const ManualClock&) = delete;

  Timestamp now() override;
  // Moves the clock to `t` (backwards too) and wakes every alarm whose deadline
  // it reached.
  void set(Timestamp t);
  // Moves the clock forward by `by` and wakes every alarm whose deadline it reached.
  void advance(std::chrono::microseconds by);

  std::unique_ptr<Alarm> newAlarm() override;

  // Blocks until at least `count` alarms of this clock exist and every one of
  // them sleeps: inside sleepUntil, not woken since, with a deadline still
  // ahead of now() or none. For tests; a timer thread that never sleeps again
  // (a handler that blocks) blocks this call too.
  void awaitSleepers(std::size_t count = 1);
  // The deadlines the alarms sleeping right now wait for (none: no deadline),
  // earliest first, alarms without a deadline last.
  std::vector<std::optional<Timestamp>> sleepingUntil();

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace asyncflow
