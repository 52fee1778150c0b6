// The threads that run continuations (internal).
#pragma once

#include <cstddef>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "engine/continuation.hpp"
#include "util/mutex.hpp"

namespace asyncflow::detail {

// Runs continuations on a fixed set of threads, first in first out, or with no
// threads inline in the submitting thread. Thread-safe.
class WorkerPool {
 public:
  using Runner = std::function<void(const Continuation&)>;

  // Starts `threads` workers that hand each continuation to `run` (0: none;
  // submit() then calls `run` itself). `run` must not throw.
  WorkerPool(std::size_t threads, Runner run);
  // Runs what is still queued, then joins the workers (stop()).
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // With workers: queues `next` and returns. Inline: runs it before returning.
  // After stop(), a continuation is dropped (the instance stays where its last
  // commit left it, for recovery).
  void submit(Continuation next) ASYNCFLOW_EXCLUDES(mutex_);

  // Blocks until nothing is queued or running. Returns at once inline.
  void waitIdle() ASYNCFLOW_EXCLUDES(mutex_);

  // Runs what is queued (continuations they submit included), then joins the
  // workers. Idempotent.
  void stop() ASYNCFLOW_EXCLUDES(mutex_);

  // Continuations waiting for a worker right now.
  std::size_t queued() const ASYNCFLOW_EXCLUDES(mutex_);

  // True when there are no worker threads.
  bool isInline() const noexcept { return threadCount_ == 0; }

 private:
  void work() ASYNCFLOW_EXCLUDES(mutex_);

  // Constant after construction.
  const std::size_t threadCount_;
  const Runner run_;

  mutable Mutex mutex_;
  CondVar queueChanged_;  // a continuation was queued, or stopping_ was set
  CondVar idle_;          // the queue emptied and no worker is busy
  std::deque<Continuation> queue_ ASYNCFLOW_GUARDED_BY(mutex_);
  std::size_t busy_ ASYNCFLOW_GUARDED_BY(mutex_) = 0;
  bool stopping_ ASYNCFLOW_GUARDED_BY(mutex_) = false;
  bool stopped_ ASYNCFLOW_GUARDED_BY(mutex_) = false;

  // Started in the constructor, joined by stop(); touched by no other method.
  std::vector<std::thread> workers_;
};

}  // namespace asyncflow::detail
