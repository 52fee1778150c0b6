#include "engine/worker_pool.hpp"

#include <utility>

namespace asyncflow::detail {

WorkerPool::WorkerPool(std::size_t threads, Runner run)
    : threadCount_(threads), run_(std::move(run)) {
  workers_.reserve(threads);
  for (std::size_t i = 0; i < threads; ++i) workers_.emplace_back([this] { work(); });
}

WorkerPool::~WorkerPool() { stop(); }

void WorkerPool::submit(Continuation next) {
  if (isInline()) {
    {
      MutexLock lock(mutex_);
      if (stopped_) return;
    }
    run_(next);
    return;
  }
  {
    MutexLock lock(mutex_);
    if (stopped_) return;
    queue_.push_back(next);
  }
  queueChanged_.notifyOne();
}

void WorkerPool::waitIdle() {
  MutexLock lock(mutex_);
  while (!queue_.empty() || busy_ != 0) idle_.wait(lock);
}

void WorkerPool::stop() {
  {
    MutexLock lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
  }
  queueChanged_.notifyAll();
  for (std::thread& worker : workers_) worker.join();
  MutexLock lock(mutex_);
  stopped_ = true;
}

std::size_t WorkerPool::queued() const {
  MutexLock lock(mutex_);
  return queue_.size();
}

void WorkerPool::work() {
  MutexLock lock(mutex_);
  for (;;) {
    while (!stopping_ && queue_.empty()) queueChanged_.wait(lock);
    if (queue_.empty()) return;  // stopping, and nothing left to run
    const Continuation next = queue_.front();
    queue_.pop_front();
    ++busy_;
    lock.unlock();
    run_(next);
    lock.lock();
    --busy_;
    if (queue_.empty() && busy_ == 0) {
      // Notified outside the lock, so that the waiter does not wake only to
      // block on it.
      lock.unlock();
      idle_.notifyAll();
      lock.lock();
    }
  }
}

}  // namespace asyncflow::detail
