// Concurrency: one serial completed from many threads at once succeeds exactly
// once; different instances progress in parallel; no continuation is lost.
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "support/catch.hpp"
#include "support/test_support.hpp"

using namespace asyncflow;
using asyncflow::testing::Harness;
using asyncflow::testing::Latch;

namespace {

// Wait (async) -> After (sync, counts its runs).
Process waitThenCount(std::vector<std::string>& serials, std::mutex& mutex,
                      std::atomic<int>& afterRuns) {
  Process p("Concurrent", 1);
  p.field("Winner", Type::Int64)
      .step(AsyncStep("Wait",
                      [&](AsyncStepContext& ctx) {
                        std::lock_guard lock(mutex);
                        serials.push_back(ctx.serial());
                        return StartOutcome::wait();
                      }))
      .step(Step("After", [&](StepContext&) {
        ++afterRuns;
        return StepOutcome::next();
      }));
  return p;
}

}  // namespace

TEST_CASE("concurrent completions of one serial: exactly one succeeds") {
  constexpr int kThreads = 8;
  constexpr int kInstances = 50;
  const std::size_t workers = GENERATE(std::size_t{0}, std::size_t{2});
  INFO("workers: " << workers);

  Harness h;
  EngineOptions options = h.options();
  options.workers = workers;
  Engine engine(h.store, options);
  std::vector<std::string> serials;
  std::mutex mutex;
  std::atomic<int> afterRuns{0};
  REQUIRE(engine.define(waitThenCount(serials, mutex, afterRuns)));

  std::vector<InstanceId> ids;
  for (int i = 0; i < kInstances; ++i) ids.push_back(engine.start("Concurrent", {}).value());
  engine.waitIdle();
  REQUIRE(serials.size() == kInstances);

  for (int i = 0; i < kInstances; ++i) {
    Latch go;
    std::atomic<int> successes{0};
    std::atomic<int> alreadyCompleted{0};
    std::atomic<int> other{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        go.wait();
        auto result = engine.completeServerEvent(serials[i], {{"Winner", t}});
        if (result) {
          ++successes;
        } else if (result.error().code == Errc::AlreadyCompleted) {
          ++alreadyCompleted;
        } else {
          ++other;
        }
      });
    }
    go.countDown();
    for (auto& thread : threads) thread.join();
    CHECK(successes == 1);
    CHECK(alreadyCompleted == kThreads - 1);
    CHECK(other == 0);
  }
  engine.waitIdle();
  CHECK(afterRuns == kInstances);
  for (InstanceId id : ids) {
    auto done = engine.instance(id).value();
    CHECK(done.status == InstanceStatus::Completed);
    CHECK(done.fields.get<std::int64_t>("Winner").has_value());
  }
}

TEST_CASE("many instances started and completed from many threads all finish once") {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 100;
  const std::size_t workers = GENERATE(std::size_t{0}, std::size_t{2});
  INFO("workers: " << workers);

  Harness h;
  EngineOptions options = h.options();
  options.workers = workers;
  Engine engine(h.store, options);
  std::vector<std::string> serials;
  std::mutex mutex;
  std::atomic<int> afterRuns{0};
  REQUIRE(engine.define(waitThenCount(serials, mutex, afterRuns)));

  Latch go;
  std::vector<std::thread> starters;
  for (int t = 0; t < kThreads; ++t) {
    starters.emplace_back([&] {
      go.wait();
      for (int i = 0; i < kPerThread; ++i) REQUIRE(engine.start("Concurrent", {}));
    });
  }
  go.countDown();
  for (auto& thread : starters) thread.join();
  engine.waitIdle();
  REQUIRE(serials.size() == kThreads * kPerThread);

  std::atomic<int> failures{0};
  std::vector<std::thread> completers;
  for (int t = 0; t < kThreads; ++t) {
    completers.emplace_back([&, t] {
      for (std::size_t i = t; i < serials.size(); i += kThreads) {
        if (!engine.completeServerEvent(serials[i], {{"Winner", 1}})) ++failures;
      }
    });
  }
  for (auto& thread : completers) thread.join();
  engine.waitIdle();
  CHECK(failures == 0);
  CHECK(afterRuns == kThreads * kPerThread);
  for (InstanceId id = 1; id <= kThreads * kPerThread; ++id) {
    CHECK(engine.instance(id).value().status == InstanceStatus::Completed);
  }
}

TEST_CASE("a completion racing a cancel: exactly one of them wins") {
  constexpr int kRounds = 100;
  Harness h;
  Engine engine(h.store, h.options());
  std::vector<std::string> serials;
  std::mutex mutex;

  // The async step is the last step, so its completion ends the instance in the
  // same commit; a cancel can then only come before it or after it.
  Process waitOnly("WaitOnly", 1);
  waitOnly.step(AsyncStep("Wait", [&](AsyncStepContext& ctx) {
    std::lock_guard lock(mutex);
    serials.push_back(ctx.serial());
    return StartOutcome::wait();
  }));
  REQUIRE(engine.define(waitOnly));

  int completions = 0;
  int cancels = 0;
  for (int round = 0; round < kRounds; ++round) {
    auto id = engine.start("WaitOnly", {}).value();
    Latch go;
    Result<void> completed;
    Result<void> cancelled;
    std::thread completer([&] {
      go.wait();
      completed = engine.completeServerEvent(serials.back(), {});
    });
    std::thread canceller([&] {
      go.wait();
      cancelled = engine.cancel(id, "race");
    });
    go.countDown();
    completer.join();
    canceller.join();
    REQUIRE(completed.has_value() != cancelled.has_value());
    const auto status = engine.instance(id).value().status;
    if (completed) {
      ++completions;
      CHECK(cancelled.error().code == Errc::AlreadyCompleted);
      CHECK(status == InstanceStatus::Completed);
    } else {
      ++cancels;
      CHECK(completed.error().code == Errc::Cancelled);
      CHECK(status == InstanceStatus::Cancelled);
    }
  }
  CHECK(completions + cancels == kRounds);
}
