#include "engine/timer_service.hpp"

#include <utility>
#include <vector>

namespace asyncflow::detail {
namespace {

std::optional<Timestamp> earliest(std::optional<Timestamp> a, std::optional<Timestamp> b) {
  if (!a) return b;
  if (!b) return a;
  return *a < *b ? a : b;
}

}  // namespace

TimerService::TimerService(std::shared_ptr<Clock> clock, Hooks hooks, bool thread)
    : clock_(std::move(clock)), hooks_(std::move(hooks)),
      alarm_(thread ? clock_->newAlarm() : nullptr) {
  if (thread) thread_ = std::thread([this] { loop(); });
}

void TimerService::wakeThread() {
  if (alarm_) alarm_->wake();
}

TimerService::~TimerService() { stop(); }

void TimerService::stop() {
  std::multimap<Timestamp, std::function<void()>> dropped;
  {
    MutexLock lock(mutex_);
    stopping_ = true;
    dropped.swap(tasks_);
  }
  wakeThread();
  if (thread_.joinable()) thread_.join();
}

void TimerService::noteDeadline(Timestamp deadline) {
  bool earlier = false;
  {
    MutexLock lock(mutex_);
    noted_ = earliest(noted_, deadline);
    if (known_ && (!next_ || deadline < *next_)) {
      next_ = deadline;
      earlier = true;
    }
  }
  if (earlier) wakeThread();
}

void TimerService::definitionsChanged() {
  {
    MutexLock lock(mutex_);
    ++definitions_;
    skipThrough_.reset();
    known_ = false;
  }
  wakeThread();
}

void TimerService::runAt(Timestamp when, std::function<void()> task) {
  bool first = false;
  {
    MutexLock lock(mutex_);
    if (stopping_) return;
    first = tasks_.empty() || when < tasks_.begin()->first;
    tasks_.emplace(when, std::move(task));
  }
  if (first) wakeThread();
}

std::size_t TimerService::runDueTasks(Timestamp now) {
  std::vector<std::function<void()>> due;
  {
    MutexLock lock(mutex_);
    due = takeDueTasks(now);
  }
  for (auto& task : due) task();
  return due.size();
}

std::size_t TimerService::pendingTasks() const {
  MutexLock lock(mutex_);
  return tasks_.size();
}

std::vector<std::function<void()>> TimerService::takeDueTasks(Timestamp now) {
  std::vector<std::function<void()>> due;
  while (!tasks_.empty() && tasks_.begin()->first <= now) {
    due.push_back(std::move(tasks_.begin()->second));
    tasks_.erase(tasks_.begin());
  }
  return due;
}

std::optional<Timestamp> TimerService::wakeTime(Timestamp now) const {
  std::optional<Timestamp> wake;
  if (storeBlockedUntil_ && *storeBlockedUntil_ > now) {
    wake = storeBlockedUntil_;
  } else if (known_) {
    wake = next_;
  }
  if (!tasks_.empty()) wake = earliest(wake, tasks_.begin()->first);
  return wake;
}

// Each turn does one thing, then looks again: reload the earliest deadline,
// fire what is due, run due tasks, or sleep until the next of these. Store
// calls, passes and tasks run outside the mutex, so noteDeadline() and runAt()
// never wait for them; what they change meanwhile wakes the alarm, whose wake-up
// is kept until the next sleep, so none is lost.
void TimerService::loop() {
  MutexLock lock(mutex_);
  while (!stopping_) {
    const Timestamp now = clock_->now();
    const bool storeReady = !storeBlockedUntil_ || *storeBlockedUntil_ <= now;

    if (storeReady && !known_) {
      const std::uint64_t definitions = definitions_;
      const Timestamp after = skipThrough_.value_or(Timestamp::min());
      noted_.reset();
      lock.unlock();
      auto next = hooks_.nextDeadline(after);
      if (!next) {
        hooks_.log(LogLevel::Error, "timer: cannot read the next deadline, retrying in 1 s: " +
                                        next.error().toString());
      }
      lock.lock();
      if (!next) {
        storeBlockedUntil_ = now + kRetryAfterFailure;
        continue;
      }
      storeBlockedUntil_.reset();
      next_ = earliest(*next, noted_);
      known_ = definitions == definitions_;  // a define() meanwhile: reload again
      continue;
    }

    if (storeReady && known_ && next_ && *next_ <= now) {
      const std::uint64_t definitions = definitions_;
      lock.unlock();
      const TimerPass pass = hooks_.fireDue(now);
      if (pass.failure) {
        hooks_.log(LogLevel::Error, "timer: a store failure left timers due, retrying in 1 s: " +
                                        pass.failure->toString());
      }
      lock.lock();
      if (pass.failure) {
        storeBlockedUntil_ = now + kRetryAfterFailure;  // still known_ and due: fire again then
        continue;
      }
      storeBlockedUntil_.reset();
      if (pass.notFired > 0 && definitions == definitions_) skipThrough_ = now;
      known_ = false;  // what fired is gone: reload the next deadline
      continue;
    }

    if (auto due = takeDueTasks(now); !due.empty()) {
      lock.unlock();
      for (auto& task : due) task();
      due.clear();
      lock.lock();
      continue;
    }

    const std::optional<Timestamp> wake = wakeTime(now);
    lock.unlock();
    alarm_->sleepUntil(wake);
    lock.lock();
  }
}

}  // namespace asyncflow::detail
