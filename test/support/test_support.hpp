// Deterministic helpers shared by the engine tests: a latch, a predictable
// random source, and a store wrapper that fails on purpose.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <random>
#include <string>
#include <string_view>

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

// Bytes 0, 1, 2, ... forever: serial secrets become predictable and distinct.
class CountingRandom final : public RandomSource {
 public:
  Result<void> fill(std::uint8_t* out, std::size_t size) override {
    for (std::size_t i = 0; i < size; ++i) out[i] = static_cast<std::uint8_t>(next_++);
    return {};
  }

 private:
  std::atomic<unsigned> next_{0};
};

// Fails the next `failures` calls to apply() with StoreError, writing nothing.
class FailingStore final : public StoreWrapper {
 public:
  using StoreWrapper::StoreWrapper;
  void failNextApplies(int failures) { failures_ = failures; }
  int applies() const { return applies_; }

  Result<std::vector<ApplyResult>> apply(std::vector<ChangeSet> batch) override {
    ++applies_;
    if (failures_ > 0) {
      --failures_;
      return fail(Errc::StoreError, "injected: disk I/O error");
    }
    return StoreWrapper::apply(std::move(batch));
  }

 private:
  std::atomic<int> failures_{0};
  std::atomic<int> applies_{0};
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

}  // namespace asyncflow::testing
