// The concurrency promises of the worker pool and of group commit, on a SQLite
// file (so the store's two connections and its commit queue are in play):
// completeServerEvent returns after its commit without waiting for the next
// step; different instances run in parallel; one instance never runs on two
// threads, even when its completions arrive while its handler still runs.
#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "support/catch.hpp"
#include "support/test_support.hpp"

using namespace asyncflow;
using asyncflow::testing::CountingRandom;
using asyncflow::testing::Latch;
using asyncflow::testing::TempDir;

namespace {

std::shared_ptr<SqliteStore> openFileStore(const TempDir& dir) {
  SqliteOptions options;
  options.synchronous = Synchronous::Normal;
  auto store = SqliteStore::open(dir.file("pool.db"), options);
  REQUIRE(store);
  return std::shared_ptr<SqliteStore>(std::move(*store));
}

EngineOptions poolOptions(std::size_t workers) {
  EngineOptions options;
  options.workers = workers;
  options.clock = std::make_shared<ManualClock>();
  options.random = std::make_shared<CountingRandom>();
  options.timerThread = false;
  return options;
}

// Counts, per instance, the handlers running right now and the most ever seen.
class Occupancy {
 public:
  // Marks a handler of `id` as running until the returned guard ends.
  class Guard {
   public:
    Guard(Occupancy& occupancy, InstanceId id) : occupancy_(occupancy), id_(id) {
      std::lock_guard lock(occupancy_.mutex_);
      int& now = occupancy_.running_[id_];
      ++now;
      occupancy_.most_ = std::max(occupancy_.most_, now);
    }
    ~Guard() {
      std::lock_guard lock(occupancy_.mutex_);
      --occupancy_.running_[id_];
    }
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;

   private:
    Occupancy& occupancy_;
    InstanceId id_;
  };

  int most() {
    std::lock_guard lock(mutex_);
    return most_;
  }

 private:
  std::mutex mutex_;
  std::map<InstanceId, int> running_;
  int most_ = 0;
};

// Serials handed out by start handlers, taken by completer threads.
class SerialQueue {
 public:
  void push(std::string serial) {
    {
      std::lock_guard lock(mutex_);
      serials_.push_back(std::move(serial));
    }
    ready_.notify_one();
  }
  // The next serial, or empty once close() was called and none is left.
  std::string pop() {
    std::unique_lock lock(mutex_);
    ready_.wait(lock, [this] { return closed_ || !serials_.empty(); });
    if (serials_.empty()) return {};
    std::string serial = std::move(serials_.front());
    serials_.pop_front();
    return serial;
  }
  void close() {
    {
      std::lock_guard lock(mutex_);
      closed_ = true;
    }
    ready_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::string> serials_;
  bool closed_ = false;
};

}  // namespace

TEST_CASE(
    "with a worker pool, completeServerEvent returns after its commit, before the next step") {
  TempDir dir;
  auto store = openFileStore(dir);
  Engine engine(store, poolOptions(2));
  std::string serial;
  Latch entered;
  Latch release;
  Process p("Handoff", 1);
  p.step(AsyncStep("Wait", [&](AsyncStepContext& ctx) {
     serial = ctx.serial();
     return StartOutcome::wait();
   })).step(Step("Next", [&](StepContext&) {
    entered.countDown();
    release.wait();  // held until the test saw completeServerEvent return
    return StepOutcome::next();
  }));
  REQUIRE(engine.define(p));
  const InstanceId id = engine.start("Handoff", {}).value();
  engine.waitIdle();
  REQUIRE(engine.instance(id).value().status == InstanceStatus::Waiting);

  // If the call waited for "Next", it could not return while "Next" is held.
  REQUIRE(engine.completeServerEvent(serial));
  entered.wait();
  // The completion is durable while the next step still runs on a worker.
  auto during = engine.instance(id).value();
  CHECK(during.status == InstanceStatus::Running);
  CHECK(during.currentStep == "Next");
  CHECK(engine.stats().drivingInstances == 1);
  release.countDown();
  engine.waitIdle();
  CHECK(engine.instance(id).value().status == InstanceStatus::Completed);
}

TEST_CASE("different instances run their steps in parallel on the pool") {
  TempDir dir;
  auto store = openFileStore(dir);
  Engine engine(store, poolOptions(2));
  std::vector<std::string> serials;
  std::mutex mutex;
  // Each "Meet" handler waits until both are inside: only two threads at once
  // can pass, so the test finishes only if the instances run in parallel.
  Latch bothInside(2);
  Process p("Parallel", 1);
  p.step(AsyncStep("Wait", [&](AsyncStepContext& ctx) {
     std::lock_guard lock(mutex);
     serials.push_back(ctx.serial());
     return StartOutcome::wait();
   })).step(Step("Meet", [&](StepContext&) {
    bothInside.countDown();
    bothInside.wait();
    return StepOutcome::next();
  }));
  REQUIRE(engine.define(p));
  const InstanceId a = engine.start("Parallel", {}).value();
  const InstanceId b = engine.start("Parallel", {}).value();
  engine.waitIdle();
  REQUIRE(serials.size() == 2);
  REQUIRE(engine.completeServerEvent(serials[0]));
  REQUIRE(engine.completeServerEvent(serials[1]));
  engine.waitIdle();
  CHECK(engine.instance(a).value().status == InstanceStatus::Completed);
  CHECK(engine.instance(b).value().status == InstanceStatus::Completed);
}

TEST_CASE("completions arriving while handlers run: each instance on one thread at a time") {
  // Wait1 (async) -> Work1 -> Wait2 (async) -> Work2. Start handlers hand their
  // serial to completer threads before they return, so completions often
  // arrive early, while the instance is still being driven on another thread.
  constexpr int kInstances = 120;
  constexpr int kCompleters = 4;
  const std::size_t workers = GENERATE(std::size_t{0}, std::size_t{2});
  INFO("workers: " << workers);

  TempDir dir;
  auto store = openFileStore(dir);
  Engine engine(store, poolOptions(workers));
  Occupancy occupancy;
  SerialQueue queue;
  std::atomic<int> workRuns{0};
  const auto waitStep = [&](const char* name) {
    return AsyncStep(name, [&](AsyncStepContext& ctx) {
      Occupancy::Guard guard(occupancy, ctx.instanceId());
      queue.push(ctx.serial());
      return StartOutcome::wait();
    });
  };
  const auto workStep = [&](const char* name) {
    return Step(name, [&](StepContext& ctx) {
      Occupancy::Guard guard(occupancy, ctx.instanceId());
      ++workRuns;
      return StepOutcome::next();
    });
  };
  Process p("Overlap", 1);
  p.field("By", Type::Int64)
      .step(waitStep("Wait1"))
      .step(workStep("Work1"))
      .step(waitStep("Wait2"))
      .step(workStep("Work2"));
  REQUIRE(engine.define(p));

  std::atomic<int> refused{0};
  Latch allAnswered(2 * kInstances);  // counted down by each completeServerEvent
  std::vector<std::thread> completers;
  for (int t = 0; t < kCompleters; ++t) {
    completers.emplace_back([&, t] {
      for (std::string serial = queue.pop(); !serial.empty(); serial = queue.pop()) {
        if (!engine.completeServerEvent(serial, {{"By", t}})) ++refused;
        allAnswered.countDown();
      }
    });
  }
  std::vector<InstanceId> ids;
  for (int i = 0; i < kInstances; ++i) ids.push_back(engine.start("Overlap", {}).value());
  // Each instance's two Wait steps hand out one serial each.
  allAnswered.wait();
  queue.close();
  for (auto& thread : completers) thread.join();
  engine.waitIdle();

  CHECK(refused == 0);
  CHECK(occupancy.most() == 1);
  CHECK(workRuns == 2 * kInstances);
  for (InstanceId id : ids) {
    CHECK(engine.instance(id).value().status == InstanceStatus::Completed);
    const auto history = engine.history(id).value();
    int completed = 0;
    for (const HistoryEvent& event : history) {
      if (event.kind == HistoryKind::StepCompleted) ++completed;
    }
    CHECK(completed == 4);  // each of the four steps exactly once
  }
}
