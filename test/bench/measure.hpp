// asyncflow_bench: clocks, statistics, and what the operating system reports.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "asyncflow/error.hpp"

namespace asyncflow::bench {

using SteadyClock = std::chrono::steady_clock;

// Where the next step's handler reports the moment it started.
class HandlerProbe {
 public:
  void arrive() {
    const SteadyClock::time_point now = SteadyClock::now();  // first: what the figure measures
    {
      std::lock_guard lock(mutex_);
      at_ = now;
      arrived_ = true;
    }
    signal_.notify_one();
  }

  SteadyClock::time_point awaitArrival() {
    std::unique_lock lock(mutex_);
    signal_.wait(lock, [this] { return arrived_; });
    arrived_ = false;
    return at_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable signal_;
  SteadyClock::time_point at_;
  bool arrived_ = false;
};

// Seconds from `start` to now.
double secondsSince(SteadyClock::time_point start);

// Microseconds between two points of the steady clock.
double microsBetween(SteadyClock::time_point from, SteadyClock::time_point to);

// The middle value (the mean of the two middle ones for an even count). 0 when empty.
double median(std::vector<double> values);

// The nearest-rank percentile `p` (0 < p <= 100). 0 when empty.
double percentile(std::vector<double> values, double p);

// This process's resident set (VmRSS of /proc/self/status), in bytes.
std::uint64_t residentBytes();

// The size of the file at `path`, in bytes.
std::uint64_t fileBytes(const std::string& path);

// Copies everything in the WAL of the database at `path` into the database file
// and truncates the WAL (PRAGMA wal_checkpoint(TRUNCATE)), through a connection
// of its own. Throws when a reader or writer keeps it from completing.
void checkpoint(const std::string& path);

// Deletes the database at `path` with its -wal and -shm files, if present.
void removeDatabase(const std::string& path);

// Replaces the database at `to` with a copy of the (checkpointed) database at
// `from`, and fsyncs the copy, so no run pays for flushing the copy itself.
void copyDatabase(const std::string& from, const std::string& to);

// The half-open range [begin, end) of items that part `part` of `parts` takes
// when `count` items are split into contiguous, nearly equal shares.
struct Share {
  std::size_t begin = 0;
  std::size_t end = 0;
};
Share shareOf(std::size_t count, unsigned parts, unsigned part);

// Runs body(0) ... body(threads - 1) on `threads` threads released together,
// and returns the seconds from their release until the last one finished. An
// exception in any body is rethrown here after all have finished.
double timeOnThreads(unsigned threads, const std::function<void(unsigned)>& body);

// The value of a Result, or throws std::runtime_error with `what` and its error:
// a benchmark whose work fails must stop, not print a figure.
template <class T>
T orThrow(Result<T> result, const std::string& what);
void orThrow(Result<void> result, const std::string& what);

// A directory for the run's database files: the one given, or a fresh one under
// /tmp that is removed (with everything in it) on destruction.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& given);
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  // `name` inside the directory.
  std::string file(const std::string& name) const;
  const std::string& path() const noexcept { return path_; }

 private:
  std::string path_;
  bool owned_ = false;
};

// Throws std::runtime_error("`what`: `error`"); orThrow's slow path.
[[noreturn]] void throwError(const Error& error, const std::string& what);

template <class T>
T orThrow(Result<T> result, const std::string& what) {
  if (!result) throwError(result.error(), what);
  return std::move(*result);
}

}  // namespace asyncflow::bench
