// asyncflow: the engine's source of time, injectable so tests never sleep.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>

namespace asyncflow {

// Wall-clock time as stored in records and history.
using Timestamp = std::chrono::system_clock::time_point;

// Where the engine reads the time. Implementations must be thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual Timestamp now() = 0;
};

// The system clock. Shared, stateless, thread-safe; never null.
std::shared_ptr<Clock> systemClock();

// A clock that moves only when told to: for tests and simulations. Thread-safe.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(Timestamp start = Timestamp(std::chrono::seconds(1'700'000'000)))
      : micros_(toMicros(start)) {}

  Timestamp now() override { return Timestamp(std::chrono::microseconds(micros_.load())); }
  void set(Timestamp t) { micros_.store(toMicros(t)); }
  void advance(std::chrono::microseconds by) { micros_.fetch_add(by.count()); }

 private:
  static long long toMicros(Timestamp t) {
    return std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
  }
  std::atomic<long long> micros_;
};

}  // namespace asyncflow
