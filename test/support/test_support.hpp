// Deterministic helpers shared by the tests: a latch, a predictable random
// source, a scratch directory, an engine harness on a manual clock, and checked
// reads. Faults come from the installed kit (asyncflow/testing/fault_injection.hpp),
// records to write from support/records.hpp.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <asyncflow/asyncflow.hpp>

#include "support/printers.hpp"

namespace asyncflow::testing {

// The error of a result that must have failed.
template <class T>
Error errorOf(const Result<T>& result) {
  REQUIRE_FALSE(result.has_value());
  return result.error();
}

inline bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

// A fresh directory under the system's temp directory, removed with everything
// in it when the test ends.
class TempDir {
 public:
  TempDir() {
    std::random_device random;
    const auto base = std::filesystem::temp_directory_path();
    for (;;) {
      path_ = base / ("asyncflow-test-" + std::to_string(random()) + std::to_string(random()));
      if (std::filesystem::create_directory(path_)) return;
    }
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// A one-shot gate: wait() blocks until countDown() has been called `count` times.
class Latch {
 public:
  explicit Latch(int count = 1) : count_(count) {}
  void countDown() {
    std::lock_guard lock(mutex_);
    if (--count_ <= 0) done_.notify_all();
  }
  void wait() {
    std::unique_lock lock(mutex_);
    done_.wait(lock, [this] { return count_ <= 0; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable done_;
  int count_;
};

// Bytes first, first + 1, ... (mod 256) forever: serial secrets become
// predictable and distinct. Records the size of each request. Thread-safe.
class CountingRandom final : public RandomSource {
 public:
  explicit CountingRandom(std::uint8_t first = 0) : next_(first) {}

  Result<void> fill(std::uint8_t* out, std::size_t size) override {
    std::lock_guard lock(mutex_);
    requests_.push_back(size);
    for (std::size_t i = 0; i < size; ++i) out[i] = next_++;
    return {};
  }

  // The sizes asked for so far, in order.
  std::vector<std::size_t> requests() const {
    std::lock_guard lock(mutex_);
    return requests_;
  }

 private:
  mutable std::mutex mutex_;
  std::uint8_t next_;
  std::vector<std::size_t> requests_;
};

// An engine over a fresh MemoryStore with a manual clock and predictable secrets.
struct Harness {
  std::shared_ptr<MemoryStore> store = std::make_shared<MemoryStore>();
  std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>();
  std::shared_ptr<CountingRandom> random = std::make_shared<CountingRandom>();

  EngineOptions options(SerialForm serials = SerialForm::WithSecret) const {
    EngineOptions o;
    o.serials = serials;
    o.clock = clock;
    o.random = random;
    o.timerThread = false;  // tests fire timers with runDueTimers() after moving the clock
    return o;
  }
};

// What engine.instance(id) reads; the test fails unless it succeeds.
inline InstanceInfo info(const Engine& engine, InstanceId id) {
  auto result = engine.instance(id);
  if (!result) FAIL("instance(" << id << "): " << result.error().toString());
  return *std::move(result);
}

}  // namespace asyncflow::testing
