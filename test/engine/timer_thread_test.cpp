// Pins the engine's timer thread itself, not runDueTimers(): every case runs
// the real thread on a ManualClock and moves the clock. No case sleeps: after
// each move of the clock, and after each call that may wake the timer,
// ManualClock::awaitSleepers() returns once the thread has done all that was
// due and sleeps again, and sleepingUntil() says what it sleeps towards.
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "asyncflow/testing/fault_injection.hpp"
#include "support/catch.hpp"
#include "support/test_support.hpp"

using namespace asyncflow;
using namespace std::chrono_literals;
using asyncflow::testing::CountingRandom;
using asyncflow::testing::Latch;

namespace {

// An engine on a MemoryStore (or a wrapper of it) with a ManualClock and the
// timer thread on; inline continuations, so an escalation step runs on it.
struct TimerHarness {
  explicit TimerHarness(std::shared_ptr<Store> over = nullptr)
      : store(over ? std::move(over) : memory) {}

  EngineOptions options() {
    EngineOptions o;
    o.clock = clock;
    o.random = std::make_shared<CountingRandom>();
    o.timerThread = true;
    // Alone on its store: the timer sleeps until exactly the next deadline
    // (multi_host_test covers the change check).
    o.changeCheckInterval = std::chrono::milliseconds::zero();
    // Its own leases (taken by each start, gone when the step waits) expire
    // long after every deadline here, so no sleep ends for one.
    o.leaseDuration = std::chrono::hours(1000);
    o.log = [this](LogLevel level, std::string_view line) {
      if (level < LogLevel::Warning) return;
      std::lock_guard lock(mutex);
      trouble.emplace_back(line);
    };
    return o;
  }

  // The ids the escalation step "Esc" ran for, with the clock's time then.
  std::map<InstanceId, std::vector<Timestamp>> escalations() {
    std::lock_guard lock(mutex);
    return escalated;
  }
  std::vector<std::string> troubles() {
    std::lock_guard lock(mutex);
    return trouble;
  }

  Step escalation() {
    return Step("Esc", [this](StepContext& ctx) {
      std::lock_guard lock(mutex);
      escalated[ctx.instanceId()].push_back(clock->now());
      return StepOutcome::finish();
    });
  }

  std::shared_ptr<MemoryStore> memory = std::make_shared<MemoryStore>();
  std::shared_ptr<Store> store;
  std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>();
  std::mutex mutex;
  std::map<InstanceId, std::vector<Timestamp>> escalated;
  std::vector<std::string> trouble;
};

AsyncStep waiting(std::string name) {
  return AsyncStep(std::move(name), [](AsyncStepContext&) { return StartOutcome::wait(); });
}

Step finishing(std::string name) {
  return Step(std::move(name), [](StepContext&) { return StepOutcome::finish(); });
}

// Wait (async, `timeout`, escalating to Esc) -> Done; Esc records and finishes.
Process timed(TimerHarness& t, std::string name, int version, std::chrono::milliseconds timeout) {
  Process p(std::move(name), version);
  p.step(waiting("Wait").timeout(timeout, "Esc"))
      .step(finishing("Done"))
      .step(t.escalation())
      .line("Wait", "Done");
  return p;
}

std::string serialOf(const Engine& engine, InstanceId id) {
  return engine.instance(id).value().serial;
}

using Sleeps = std::vector<std::optional<Timestamp>>;

}  // namespace

TEST_CASE("an earlier deadline that is completed does not stop the timer of a later one") {
  // The report: start 1, 300 ms later start 2, complete 1 in time. The timer
  // woke for 1's old deadline, found nothing due, and took "nothing fired" for
  // "stuck behind undefined versions": 2 never timed out.
  TimerHarness t;
  Engine engine(t.store, t.options());
  REQUIRE(engine.define(timed(t, "Timed", 1, 1500ms)));
  const Timestamp t0 = t.clock->now();
  const InstanceId first = engine.start("Timed").value();
  t.clock->advance(300ms);
  const InstanceId second = engine.start("Timed").value();
  REQUIRE(engine.completeServerEvent(serialOf(engine, first)));
  t.clock->awaitSleepers();

  t.clock->advance(1200ms);  // first's old deadline: nothing is due
  t.clock->awaitSleepers();
  CHECK(t.escalations().empty());
  CHECK(t.clock->sleepingUntil() == Sleeps{t0 + 1800ms});  // it sleeps for the second

  t.clock->advance(299ms);
  t.clock->awaitSleepers();
  CHECK(t.escalations().empty());
  t.clock->advance(1ms);
  t.clock->awaitSleepers();
  CHECK(t.escalations() == std::map<InstanceId, std::vector<Timestamp>>{{second, {t0 + 1800ms}}});
  CHECK(engine.instance(first)->currentStep == "Done");
  CHECK(t.clock->sleepingUntil() == Sleeps{std::nullopt});  // nothing left: until woken
  CHECK(t.troubles().empty());
}

namespace {

// Holds the timer's reload inside nextDeadline once armed: it reads the store
// first, then waits, so a commit made meanwhile is not in what it answers.
class HeldReload final : public StoreWrapper {
 public:
  using StoreWrapper::StoreWrapper;
  void arm() { armed_ = true; }
  Latch entered;
  Latch release;

  Result<std::optional<Timestamp>> nextDeadline(Timestamp after) override {
    auto read = StoreWrapper::nextDeadline(after);
    if (armed_.exchange(false)) {
      entered.countDown();
      release.wait();
    }
    return read;
  }

 private:
  std::atomic<bool> armed_{false};
};

}  // namespace

TEST_CASE("a deadline committed while the timer reloads after a define() is not missed") {
  auto held = std::make_shared<HeldReload>(std::make_shared<MemoryStore>());
  TimerHarness t(held);
  Engine engine(t.store, t.options());
  REQUIRE(engine.define(timed(t, "Timed", 1, 1min)));
  t.clock->awaitSleepers();
  CHECK(t.clock->sleepingUntil() == Sleeps{std::nullopt});

  held->arm();
  REQUIRE(engine.define(timed(t, "Other", 1, 1min)));  // the timer reloads...
  held->entered.wait();                                // ...and has read "no deadline"
  const Timestamp t0 = t.clock->now();
  const InstanceId id = engine.start("Timed").value();  // committed during the reload
  held->release.countDown();
  t.clock->awaitSleepers();
  CHECK(t.clock->sleepingUntil() == Sleeps{t0 + 1min});

  t.clock->advance(1min);
  t.clock->awaitSleepers();
  CHECK(t.escalations() == std::map<InstanceId, std::vector<Timestamp>>{{id, {t0 + 1min}}});
}

TEST_CASE("1,000 deadlines in random order, with completions, heartbeats and cancels") {
  // Each deadline that stays fires exactly once, at or after its time, at the
  // first wake-up after it; none fires early; completed and cancelled ones never.
  TimerHarness t;
  Engine engine(t.store, t.options());
  constexpr int kSteps = 10;
  Process p("Many", 1);
  p.field("Which", Type::Int64).step(Step("Route", [](StepContext& ctx) {
    return StepOutcome::goTo("W" + std::to_string(ctx.fields().getOr<std::int64_t>("Which", 0)));
  }));
  auto timeoutOf = [](int which) { return std::chrono::milliseconds(100 * (which + 1)); };
  auto intervalOf = [](int which) { return std::chrono::milliseconds(50 * (which + 1)); };
  for (int i = 0; i < kSteps; ++i) {
    p.step(waiting("W" + std::to_string(i)).timeout(timeoutOf(i), "Esc").heartbeat(intervalOf(i)));
    p.line("W" + std::to_string(i), "Done");
  }
  p.step(finishing("Done")).step(t.escalation());
  REQUIRE(engine.define(p));
  t.clock->awaitSleepers();

  struct Expected {
    InstanceId id = 0;
    int which = 0;
    std::string serial;
    std::optional<Timestamp> deadline;  // none once completed, cancelled or fired
    bool fired = false;
  };
  std::vector<Expected> all;
  std::mt19937 random(20261201);
  std::size_t checks = 0;
  auto verify = [&] {
    const Timestamp now = t.clock->now();
    const auto fired = t.escalations();
    for (Expected& e : all) {
      INFO("instance " << e.id);
      auto it = fired.find(e.id);
      const std::size_t fires = it == fired.end() ? 0 : it->second.size();
      if (e.fired) {
        CHECK(fires == 1);  // never twice
      } else if (e.deadline && *e.deadline <= now) {
        // Due since the last stop of the clock: it fired at this wake-up.
        REQUIRE(fires == 1);
        CHECK(it->second.front() >= *e.deadline);
        CHECK(it->second.front() == now);
        e.fired = true;
        e.deadline.reset();
        ++checks;
      } else {
        CHECK(fires == 0);  // not due yet, completed or cancelled
      }
    }
  };
  for (int i = 0; i < 1000; ++i) {
    t.clock->advance(std::chrono::milliseconds(random() % 20));
    t.clock->awaitSleepers();
    verify();

    const int which = static_cast<int>(random() % kSteps);
    const InstanceId id = engine.start("Many", {{"Which", which}}).value();
    all.push_back({id, which, serialOf(engine, id), t.clock->now() + timeoutOf(which)});
    t.clock->awaitSleepers();

    Expected& other = all[random() % all.size()];
    if (!other.deadline) continue;  // it fired, completed or was cancelled
    switch (random() % 4) {
      case 0:
        REQUIRE(engine.completeServerEvent(other.serial));
        other.deadline.reset();
        break;
      case 1:
        REQUIRE(engine.heartbeat(other.serial));
        other.deadline = t.clock->now() + intervalOf(other.which);
        break;
      case 2:
        REQUIRE(engine.cancel(other.id, "withdrawn"));
        other.deadline.reset();
        break;
      default: break;
    }
    t.clock->awaitSleepers();
  }
  for (int i = 0; i < 40; ++i) {
    t.clock->advance(50ms);
    t.clock->awaitSleepers();
    verify();
  }
  // Everything still expected has fired; every fire was expected exactly once.
  for (const Expected& e : all) CHECK_FALSE(e.deadline.has_value());  // each fired or ended
  std::size_t fires = 0;
  for (const auto& [id, times] : t.escalations()) fires += times.size();
  CHECK(fires == checks);
  CHECK(checks > 200);  // the mix leaves a good share of the 1,000 to fire
  CHECK(t.clock->sleepingUntil() == Sleeps{std::nullopt});
  CHECK(t.troubles().empty());
}

TEST_CASE("due timers of a version not defined here do not hold back those of defined ones") {
  // Host A (no timer) started 300 instances of version 1; host B defines only
  // version 2. B's timer skips version 1's due timers, more than a page of them
  // ahead of its own, fires its own, and sleeps for the next, not in a loop.
  TimerHarness t;
  EngineOptions quiet = t.options();
  quiet.timerThread = false;
  quiet.log = {};
  Engine hostA(t.store, quiet);
  REQUIRE(hostA.define(timed(t, "Order", 1, 1min)));
  std::vector<InstanceId> old;
  for (int i = 0; i < 300; ++i) old.push_back(hostA.start("Order").value());

  Engine hostB(t.store, t.options());
  REQUIRE(hostB.define(timed(t, "Order", 2, 2min)));
  const Timestamp t0 = t.clock->now();
  const InstanceId mine = hostB.start("Order").value();
  t.clock->awaitSleepers();
  CHECK(t.clock->sleepingUntil() == Sleeps{t0 + 1min});  // version 1's, which it cannot fire

  t.clock->advance(1min);
  t.clock->awaitSleepers();
  CHECK(t.escalations().empty());
  CHECK(t.clock->sleepingUntil() == Sleeps{t0 + 2min});  // not a deadline that passed

  t.clock->advance(1min);
  t.clock->awaitSleepers();
  CHECK(t.escalations() == std::map<InstanceId, std::vector<Timestamp>>{{mine, {t0 + 2min}}});
  const InstanceId later = hostB.start("Order").value();
  t.clock->awaitSleepers();
  CHECK(t.clock->sleepingUntil() == Sleeps{t0 + 4min});
  t.clock->advance(2min);
  t.clock->awaitSleepers();
  CHECK(t.escalations().count(later) == 1);
  for (InstanceId id : old) CHECK(hostB.instance(id)->status == InstanceStatus::Waiting);

  // Once B defines version 1 too, its due timers fire.
  REQUIRE(hostB.define(timed(t, "Order", 1, 1min)));
  t.clock->awaitSleepers();
  const auto fired = t.escalations();
  for (InstanceId id : old) CHECK(fired.count(id) == 1);
  CHECK(fired.size() == old.size() + 2);
}

namespace {

// Fails the timer's reads (nextDeadline, listDue) while `failing` is set.
class FailingReads final : public StoreWrapper {
 public:
  using StoreWrapper::StoreWrapper;
  std::atomic<bool> failing{false};

  Result<std::optional<Timestamp>> nextDeadline(Timestamp after) override {
    if (failing) return fail(Errc::StoreError, "disk I/O error (injected)");
    return StoreWrapper::nextDeadline(after);
  }
  Result<std::vector<DueRun>> listDue(const DueQuery& query) override {
    if (failing) return fail(Errc::StoreError, "disk I/O error (injected)");
    return StoreWrapper::listDue(query);
  }
};

}  // namespace

TEST_CASE("after a store failure the timer tries again a second later, then recovers") {
  auto reads = std::make_shared<FailingReads>(std::make_shared<MemoryStore>());
  TimerHarness t(reads);
  Engine engine(t.store, t.options());
  REQUIRE(engine.define(timed(t, "Timed", 1, 1h)));
  const Timestamp t0 = t.clock->now();
  const InstanceId first = engine.start("Timed").value();
  t.clock->awaitSleepers();
  CHECK(t.clock->sleepingUntil() == Sleeps{t0 + 1h});

  SECTION("listing the due timers fails") {
    reads->failing = true;
    t.clock->advance(1h);
    t.clock->awaitSleepers();
    CHECK(t.escalations().empty());
    CHECK(t.clock->sleepingUntil() == Sleeps{t0 + 1h + 1s});
    t.clock->advance(1s);  // it tries again: still failing
    t.clock->awaitSleepers();
    CHECK(t.clock->sleepingUntil() == Sleeps{t0 + 1h + 2s});
    reads->failing = false;
    t.clock->advance(1s);
    t.clock->awaitSleepers();
    CHECK(t.escalations() == std::map<InstanceId, std::vector<Timestamp>>{{first, {t0 + 1h + 2s}}});
    const auto trouble = t.troubles();
    REQUIRE(trouble.size() == 2);
    CHECK(asyncflow::testing::contains(trouble[0], "disk I/O error"));
  }

  SECTION("reloading the next deadline fails") {
    reads->failing = true;
    REQUIRE(engine.define(timed(t, "Other", 1, 1h)));  // makes the timer reload
    t.clock->awaitSleepers();
    CHECK(t.clock->sleepingUntil() == Sleeps{t0 + 1s});
    t.clock->advance(500ms);
    const InstanceId second = engine.start("Timed").value();  // due at t0 + 1 h + 500 ms
    reads->failing = false;
    t.clock->awaitSleepers();  // still waiting out the second: the start only noted it
    CHECK(t.clock->sleepingUntil() == Sleeps{t0 + 1s});
    t.clock->advance(500ms);
    t.clock->awaitSleepers();
    CHECK(t.clock->sleepingUntil() == Sleeps{t0 + 1h});
    t.clock->advance(1h - 1s);
    t.clock->awaitSleepers();
    CHECK(t.escalations().count(first) == 1);
    CHECK(t.clock->sleepingUntil() == Sleeps{t0 + 1h + 500ms});
    t.clock->advance(500ms);
    t.clock->awaitSleepers();
    CHECK(t.escalations().count(second) == 1);
    CHECK(asyncflow::testing::contains(t.troubles().at(0), "cannot read the next deadline"));
  }
}

TEST_CASE("in inline mode waitIdle() waits for a drive the timer thread is in") {
  // waitIdle() returned at once in inline mode, though the timer thread can
  // drive an instance there (an escalation, a takeover).
  TimerHarness t;
  Latch entered;
  Latch released;
  std::atomic<bool> finished{false};
  Process p("Blocking", 1);
  p.step(waiting("Wait").timeout(1000ms, "Esc"))
      .step(finishing("Done"))
      .step(Step("Esc",
                 [&](StepContext&) {
                   entered.countDown();
                   released.wait();
                   finished = true;
                   return StepOutcome::finish();
                 }))
      .line("Wait", "Done");
  Engine engine(t.store, t.options());
  REQUIRE(engine.define(p));
  const InstanceId id = engine.start("Blocking").value();
  t.clock->advance(1000ms);
  entered.wait();  // the timer thread runs Esc and blocks in it
  std::thread releaser([&] { released.countDown(); });
  engine.waitIdle();
  CHECK(finished);
  CHECK(engine.instance(id).value().status == InstanceStatus::Completed);
  releaser.join();
}
