#include "asyncflow/clock.hpp"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <set>

namespace asyncflow {
namespace {

class SystemClock final : public Clock {
 public:
  Timestamp now() override { return std::chrono::system_clock::now(); }
};

// Sleeps in real time for what the clock says is left until the deadline.
class RealTimeAlarm final : public Alarm {
 public:
  explicit RealTimeAlarm(Clock& clock) : clock_(clock) {}

  void sleepUntil(std::optional<Timestamp> deadline) override {
    std::unique_lock lock(mutex_);
    if (!woken_) {
      if (!deadline) {
        wake_.wait(lock, [&] { return woken_; });
      } else if (const auto left = *deadline - clock_.now(); left > Timestamp::duration::zero()) {
        wake_.wait_for(lock, left, [&] { return woken_; });
      }
    }
    woken_ = false;
  }

  void wake() override {
    std::lock_guard lock(mutex_);
    woken_ = true;
    wake_.notify_all();
  }

 private:
  Clock& clock_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool woken_ = false;  // guarded by mutex_
};

}  // namespace

std::unique_ptr<Alarm> Clock::newAlarm() { return std::make_unique<RealTimeAlarm>(*this); }

std::shared_ptr<Clock> systemClock() {
  static const auto clock = std::make_shared<SystemClock>();
  return clock;
}

// --- ManualClock ----------------------------------------------------------------

namespace {

std::int64_t toMicros(Timestamp t) {
  return std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
}

}  // namespace

// Everything a ManualClock and its alarms share, under one mutex, so that a
// move of the clock and the sleepers' view of it never disagree. Alarms hold it
// too, so either may be destroyed first.
struct ManualClock::State {
  struct Sleeper {
    std::condition_variable wake;
    std::optional<Timestamp> until;
    bool asleep = false;  // inside sleepUntil and not woken
    bool woken = false;   // wake() since the last return
  };
  class SleeperAlarm;

  std::mutex mutex;
  std::condition_variable changed;  // a sleeper fell asleep, woke, came or went
  std::int64_t micros = 0;          // guarded by mutex, as is everything below
  std::set<Sleeper*> sleepers;

  Timestamp now() const { return Timestamp(std::chrono::microseconds(micros)); }
  bool due(const Sleeper& s) const { return s.until && *s.until <= now(); }
  bool sleeps(const Sleeper& s) const { return s.asleep && !s.woken && !due(s); }

  // Sets the time to what `to(micros)` answers and wakes the sleepers it made due.
  template <class F>
  void move(F to) {
    std::lock_guard lock(mutex);
    micros = to(micros);
    for (Sleeper* s : sleepers) {
      if (due(*s)) s->wake.notify_all();
    }
    changed.notify_all();
  }
};

// An alarm that sleeps until the manual clock is moved to its deadline.
class ManualClock::State::SleeperAlarm final : public Alarm {
 public:
  explicit SleeperAlarm(std::shared_ptr<State> state) : state_(std::move(state)) {
    std::lock_guard lock(state_->mutex);
    state_->sleepers.insert(&self_);
    state_->changed.notify_all();
  }
  ~SleeperAlarm() override {
    std::lock_guard lock(state_->mutex);
    state_->sleepers.erase(&self_);
    state_->changed.notify_all();
  }
  SleeperAlarm(const SleeperAlarm&) = delete;
  SleeperAlarm& operator=(const SleeperAlarm&) = delete;

  void sleepUntil(std::optional<Timestamp> deadline) override {
    std::unique_lock lock(state_->mutex);
    self_.until = deadline;
    if (!self_.woken && !state_->due(self_)) {
      self_.asleep = true;
      state_->changed.notify_all();
      self_.wake.wait(lock, [&] { return self_.woken || state_->due(self_); });
      self_.asleep = false;
    }
    self_.woken = false;
    self_.until.reset();
    state_->changed.notify_all();
  }

  void wake() override {
    std::lock_guard lock(state_->mutex);
    self_.woken = true;
    self_.wake.notify_all();
    state_->changed.notify_all();
  }

 private:
  std::shared_ptr<State> state_;
  Sleeper self_;
};

ManualClock::ManualClock(Timestamp start) : state_(std::make_shared<State>()) {
  state_->micros = toMicros(start);
}

ManualClock::~ManualClock() = default;

Timestamp ManualClock::now() {
  std::lock_guard lock(state_->mutex);
  return state_->now();
}

void ManualClock::set(Timestamp t) {
  state_->move([&](std::int64_t) { return toMicros(t); });
}

void ManualClock::advance(std::chrono::microseconds by) {
  state_->move([&](std::int64_t micros) { return micros + by.count(); });
}

std::unique_ptr<Alarm> ManualClock::newAlarm() {
  return std::make_unique<State::SleeperAlarm>(state_);
}

void ManualClock::awaitSleepers(std::size_t count) {
  std::unique_lock lock(state_->mutex);
  state_->changed.wait(lock, [&] {
    if (state_->sleepers.size() < count) return false;
    return std::all_of(state_->sleepers.begin(), state_->sleepers.end(),
                       [&](const State::Sleeper* s) { return state_->sleeps(*s); });
  });
}

std::vector<std::optional<Timestamp>> ManualClock::sleepingUntil() {
  std::lock_guard lock(state_->mutex);
  std::vector<std::optional<Timestamp>> deadlines;
  for (const State::Sleeper* s : state_->sleepers) {
    if (state_->sleeps(*s)) deadlines.push_back(s->until);
  }
  std::sort(deadlines.begin(), deadlines.end(), [](const auto& a, const auto& b) {
    if (!a || !b) return a.has_value() && !b.has_value();
    return *a < *b;
  });
  return deadlines;
}

}  // namespace asyncflow
