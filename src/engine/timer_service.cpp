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

TimerService::TimerService(std::shared_ptr<Clock> clock, Hooks hooks, bool thread,
                           std::chrono::microseconds changeCheck)
    : clock_(std::move(clock)), hooks_(std::move(hooks)), changeCheck_(changeCheck),
      alarm_(thread ? clock_->newAlarm() : nullptr) {
  if (thread) thread_ = std::thread([this] { loop(); });
}

void TimerService::wakeThread() {
  if (alarm_) alarm_->wake();
}

TimerService::~TimerService() { stop(); }

void TimerService::stop() {
  std::multimap<Timestamp, Task> dropped;
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
    Source& timers = sources_[kTimers];
    timers.noted = earliest(timers.noted, deadline);
    if (timers.known && (!timers.next || deadline < *timers.next)) {
      timers.next = deadline;
      earlier = true;
    }
  }
  if (earlier) wakeThread();
}

void TimerService::definitionsChanged() {
  {
    MutexLock lock(mutex_);
    ++definitions_;
    for (Source& source : sources_) {
      source.skipThrough.reset();
      source.known = false;
    }
  }
  wakeThread();
}

// Skipped timers stay skipped: they wait for a define(), and a deadline is
// written in its writer's future. Skipped leases do not: an offer is written
// expired.
void TimerService::storeChanged() {
  {
    MutexLock lock(mutex_);
    ++definitions_;
    sources_[kTimers].known = false;
    sources_[kLeases].known = false;
    sources_[kLeases].skipThrough.reset();
  }
  wakeThread();
}

std::uint64_t TimerService::runAt(Timestamp when, std::function<void()> task) {
  bool first = false;
  std::uint64_t token = 0;
  {
    MutexLock lock(mutex_);
    if (stopping_) return 0;
    // The thread wakes anyway before a later time: tell it only of an earlier one.
    first = asleep_ && (!sleepTarget_ || when < *sleepTarget_);
    token = ++lastToken_;
    tasks_.emplace(when, Task{token, std::move(task)});
  }
  if (first) wakeThread();
  return token;
}

// A linear search: the tasks are few (back-offs, yields, one renewal sweep).
bool TimerService::cancel(std::uint64_t token) {
  MutexLock lock(mutex_);
  for (auto it = tasks_.begin(); it != tasks_.end(); ++it) {
    if (it->second.token == token) {
      tasks_.erase(it);
      return true;
    }
  }
  return false;
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
    due.push_back(std::move(tasks_.begin()->second.run));
    tasks_.erase(tasks_.begin());
  }
  return due;
}

std::optional<Timestamp> TimerService::wakeTime(Timestamp now) const {
  std::optional<Timestamp> wake;
  if (storeBlockedUntil_ && *storeBlockedUntil_ > now) {
    wake = storeBlockedUntil_;  // the change check waits for the store too
  } else {
    for (std::size_t i = 0; i < sourceCount(); ++i) {
      if (sources_[i].known) wake = earliest(wake, sources_[i].next);
    }
    if (nextCheck_) wake = earliest(wake, nextCheck_);
  }
  if (!tasks_.empty()) wake = earliest(wake, tasks_.begin()->first);
  return wake;
}

bool TimerService::turn(std::size_t index, Timestamp now) {
  Source& source = sources_[index];
  const bool leases = index == kLeases;
  if (!source.known) {
    const std::uint64_t definitions = definitions_;
    const Timestamp after = source.skipThrough.value_or(Timestamp::min());
    source.noted.reset();
    mutex_.unlock();
    auto next = leases ? hooks_.nextLeaseExpiry(after) : hooks_.nextDeadline(after);
    if (!next) {
      hooks_.log(LogLevel::Error, std::string("timer: cannot read the next ") +
                                      (leases ? "lease expiry" : "deadline") +
                                      ", retrying in 1 s: " + next.error().toString());
    }
    mutex_.lock();
    if (!next) {
      storeBlockedUntil_ = now + kRetryAfterFailure;
      return true;
    }
    storeBlockedUntil_.reset();
    source.next = earliest(*next, source.noted);
    source.known = definitions == definitions_;  // changed meanwhile: reload again
    return true;
  }
  if (!source.next || *source.next > now) return false;
  const std::uint64_t definitions = definitions_;
  mutex_.unlock();
  const TimerPass pass = leases ? hooks_.takeOver(now) : hooks_.fireDue(now);
  if (pass.failure) {
    hooks_.log(LogLevel::Error, std::string("timer: a store failure left ") +
                                    (leases ? "leases" : "timers") +
                                    " due, retrying in 1 s: " + pass.failure->toString());
  }
  mutex_.lock();
  if (pass.failure) {
    storeBlockedUntil_ = now + kRetryAfterFailure;  // still known and due: act again then
    return true;
  }
  storeBlockedUntil_.reset();
  if ((leases || pass.notFired > 0) && definitions == definitions_) source.skipThrough = now;
  source.known = false;  // what fired is gone: reload the next time
  return true;
}

bool TimerService::checkChanges(Timestamp now) {
  if (!hooks_.changeMark || changeCheck_ <= std::chrono::microseconds::zero()) return false;
  if (nextCheck_ && *nextCheck_ > now) return false;
  nextCheck_ = now + changeCheck_;
  mutex_.unlock();
  auto mark = hooks_.changeMark();
  mutex_.lock();
  if (!mark) return true;  // the reloads report a failing store; look again next time
  if (mark_ && *mark_ != *mark) {
    ++definitions_;
    sources_[kTimers].known = false;
    sources_[kLeases].known = false;
    sources_[kLeases].skipThrough.reset();
  }
  mark_ = *mark;
  return true;
}

// Each turn does one thing, then looks again: check the store for changes,
// reload an earliest time, fire what is due, run due tasks, or sleep until the
// next of these. Store calls, passes and tasks run outside the mutex, so
// noteDeadline() and runAt() never wait for them; what they change meanwhile
// wakes the alarm, whose wake-up is kept until the next sleep, so none is lost.
void TimerService::loop() {
  MutexLock lock(mutex_);
  while (!stopping_) {
    const Timestamp now = clock_->now();
    const bool storeReady = !storeBlockedUntil_ || *storeBlockedUntil_ <= now;

    if (storeReady && checkChanges(now)) continue;
    bool acted = false;
    for (std::size_t i = 0; storeReady && !acted && i < sourceCount(); ++i) {
      acted = turn(i, now);
    }
    if (acted) continue;

    if (auto due = takeDueTasks(now); !due.empty()) {
      lock.unlock();
      for (auto& task : due) task();
      due.clear();
      lock.lock();
      continue;
    }

    const std::optional<Timestamp> wake = wakeTime(now);
    asleep_ = true;
    sleepTarget_ = wake;
    lock.unlock();
    alarm_->sleepUntil(wake);
    lock.lock();
    asleep_ = false;
  }
}

}  // namespace asyncflow::detail
