// Pins how a drive ends when it cannot simply run to the next wait: a process
// that loops without waiting yields after EngineOptions::maxStepsPerDrive steps
// and goes on later, and a store failure in the drive loop is logged at Warning
// and the instance driven again after a back-off, not left for recover().
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "asyncflow/testing/fault_injection.hpp"
#include "support/catch.hpp"
#include "support/test_support.hpp"

using namespace asyncflow;
using namespace std::chrono_literals;
using asyncflow::testing::contains;
using asyncflow::testing::Fault;
using asyncflow::testing::FaultInjectingStore;
using asyncflow::testing::Harness;

namespace {

// Loop: a step that goTo()s itself until it has run `rounds` times, then finishes.
Process looping(std::atomic<int>& runs, int rounds) {
  Process p("Loop", 1);
  p.step(Step("Spin", [&runs, rounds](StepContext&) {
    return ++runs < rounds ? StepOutcome::goTo("Spin") : StepOutcome::finish();
  }));
  return p;
}

struct Lines {
  std::mutex mutex;
  std::vector<std::string> warnings;
  LogSink sink() {
    return [this](LogLevel level, std::string_view line) {
      if (level != LogLevel::Warning) return;
      std::lock_guard lock(mutex);
      warnings.emplace_back(line);
    };
  }
  std::vector<std::string> taken() {
    std::lock_guard lock(mutex);
    return warnings;
  }
};

}  // namespace

TEST_CASE("inline, a looping drive yields after maxStepsPerDrive and goes on at runDueTimers") {
  Harness h;
  Lines lines;
  EngineOptions options = h.options();
  options.maxStepsPerDrive = 5;
  options.log = lines.sink();
  Engine engine(h.store, options);
  std::atomic<int> runs{0};
  REQUIRE(engine.define(looping(runs, 12)));

  const InstanceId id = engine.start("Loop").value();  // returns: it does not block
  CHECK(runs == 5);
  CHECK(engine.instance(id)->status == InstanceStatus::Running);
  const auto warnings = lines.taken();
  REQUIRE(warnings.size() == 1);
  CHECK(contains(warnings[0], "ran 5 steps in a row"));

  CHECK(engine.runDueTimers().value() == 0);  // no timer fired, but the drive went on
  CHECK(runs == 10);
  CHECK(engine.runDueTimers().value() == 0);
  CHECK(runs == 12);
  CHECK(engine.instance(id)->status == InstanceStatus::Completed);
  CHECK(engine.stats().drivingInstances == 0);
}

TEST_CASE("inline with the timer thread, a yielded drive goes on there") {
  Harness h;
  EngineOptions options = h.options();
  options.maxStepsPerDrive = 3;
  options.timerThread = true;
  Engine engine(h.store, options);
  std::atomic<int> runs{0};
  REQUIRE(engine.define(looping(runs, 10)));
  h.clock->awaitSleepers();
  const InstanceId id = engine.start("Loop").value();
  h.clock->awaitSleepers();  // the timer thread ran the rest, three steps at a time
  CHECK(runs == 10);
  CHECK(engine.instance(id)->status == InstanceStatus::Completed);
}

TEST_CASE("on one worker, a looping instance yields to the one queued behind it") {
  Harness h;
  EngineOptions options = h.options();
  options.maxStepsPerDrive = 4;
  options.workers = 1;
  Engine engine(h.store, options);
  std::mutex mutex;
  std::vector<std::string> order;
  auto note = [&](std::string what) {
    std::lock_guard lock(mutex);
    order.push_back(std::move(what));
  };
  int spins = 0;  // only the one worker touches it
  Process loop("Loop", 1);
  loop.step(Step("Spin", [&](StepContext&) {
    note("spin");
    return ++spins < 6 ? StepOutcome::goTo("Spin") : StepOutcome::finish();
  }));
  Process quick("Quick", 1);
  quick.step(Step("Once", [&](StepContext&) {
    note("quick");
    return StepOutcome::finish();
  }));
  REQUIRE(engine.define(loop));
  REQUIRE(engine.define(quick));

  // Hold the worker until both are queued, so the order is fixed: Loop, Quick.
  asyncflow::testing::Latch queued;
  Process gate("Gate", 1);
  gate.step(Step("Hold", [&](StepContext&) {
    queued.wait();
    return StepOutcome::finish();
  }));
  REQUIRE(engine.define(gate));
  REQUIRE(engine.start("Gate"));
  const InstanceId looper = engine.start("Loop").value();
  const InstanceId other = engine.start("Quick").value();
  queued.countDown();
  engine.waitIdle();
  CHECK(order == std::vector<std::string>{"spin", "spin", "spin", "spin", "quick", "spin", "spin"});
  CHECK(engine.instance(looper)->status == InstanceStatus::Completed);
  CHECK(engine.instance(other)->status == InstanceStatus::Completed);
}

TEST_CASE("a failed commit in the drive loop is logged and retried after a back-off") {
  Harness h;
  auto faults = std::make_shared<FaultInjectingStore>(h.store);
  Lines lines;
  EngineOptions options = h.options();
  options.log = lines.sink();
  Engine engine(faults, options);
  std::vector<int> attempts;
  Process p("Flaky", 1);
  p.step(Step("Work", [&](StepContext& ctx) {
     attempts.push_back(ctx.attempt());
     return StepOutcome::next();
   })).step(Step("Done", [](StepContext&) { return StepOutcome::finish(); }));
  REQUIRE(engine.define(p));

  // The start's own commit is the first write; the handler's result the second.
  faults->failNth(2, Fault::IoError);
  const InstanceId id = engine.start("Flaky").value();  // the start itself is durable
  CHECK(attempts == std::vector<int>{1});
  CHECK(engine.instance(id)->status == InstanceStatus::Running);
  auto warnings = lines.taken();
  REQUIRE_FALSE(warnings.empty());
  CHECK(contains(warnings.back(), "disk I/O error"));
  CHECK(contains(warnings.back(), "driving it again in 100 ms"));

  h.clock->advance(99ms);
  CHECK(engine.runDueTimers().value() == 0);
  CHECK(attempts == std::vector<int>{1});  // not yet
  h.clock->advance(1ms);
  CHECK(engine.runDueTimers().value() == 0);
  // The handler had run: the re-run counts a new attempt first.
  CHECK(attempts == std::vector<int>{1, 2});
  CHECK(engine.instance(id)->status == InstanceStatus::Completed);
}

TEST_CASE(
    "a store that keeps failing backs off 100 ms, 200 ms, 400 ms, and a good pass resets it") {
  Harness h;
  auto faults = std::make_shared<FaultInjectingStore>(h.store);
  Lines lines;
  EngineOptions options = h.options();
  options.log = lines.sink();
  options.timerThread = true;
  options.changeCheckInterval =
      std::chrono::milliseconds::zero();  // only the drive calls the store
  Engine engine(faults, options);
  Process p("Flaky", 1);
  p.step(Step("Work", [](StepContext&) { return StepOutcome::finish(); }));
  REQUIRE(engine.define(p));
  h.clock->awaitSleepers();

  const Timestamp t0 = h.clock->now();
  // Every read from the second call on fails: the drive cannot even load.
  faults->arm({2, 3, Fault::Busy, asyncflow::testing::FaultScope::AnyCall});
  const InstanceId id = engine.start("Flaky").value();
  h.clock->awaitSleepers();
  using Sleeps = std::vector<std::optional<Timestamp>>;
  CHECK(h.clock->sleepingUntil() == Sleeps{t0 + 100ms});
  h.clock->advance(100ms);
  h.clock->awaitSleepers();
  CHECK(h.clock->sleepingUntil() == Sleeps{t0 + 300ms});
  h.clock->advance(200ms);
  h.clock->awaitSleepers();
  CHECK(h.clock->sleepingUntil() == Sleeps{t0 + 700ms});
  h.clock->advance(400ms);  // the plan's three failures are spent
  h.clock->awaitSleepers();
  CHECK(engine.instance(id)->status == InstanceStatus::Completed);
  CHECK(faults->injected() == 3);
  const auto warnings = lines.taken();
  REQUIRE(warnings.size() >= 3);
  CHECK(contains(warnings[0], "100 ms"));
  CHECK(contains(warnings[1], "200 ms"));
  CHECK(contains(warnings[2], "400 ms"));
}
