// Pins TimerService (src/engine/timer_service.hpp) on its own, with fake hooks
// in place of the store and a ManualClock: what it reloads, when it fires, what
// it skips, how it retries, and its delayed tasks. The real thread runs; the
// test moves the clock and waits with ManualClock::awaitSleepers(), never sleeps.
#include "engine/timer_service.hpp"

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "support/catch.hpp"
#include "support/test_support.hpp"

using namespace std::chrono_literals;
using asyncflow::Errc;
using asyncflow::Error;
using asyncflow::LogLevel;
using asyncflow::ManualClock;
using asyncflow::Result;
using asyncflow::Timestamp;
using asyncflow::detail::TimerPass;
using asyncflow::detail::TimerService;

namespace {

using Sleeps = std::vector<std::optional<Timestamp>>;

// A fake store of deadlines: the timer reads the earliest after `after`, and a
// pass "fires" every deadline due, except those marked undefined.
struct FakeTimers {
  std::mutex mutex;
  std::vector<Timestamp> deadlines;
  std::vector<Timestamp> undefined;  // due ones that cannot fire
  std::vector<Timestamp> fired;
  std::vector<Timestamp> reloadsAfter;  // the `after` of each reload
  std::vector<Timestamp> passes;        // the `now` of each pass
  bool failReads = false;
  std::vector<std::string> logged;

  TimerService::Hooks hooks() {
    TimerService::Hooks h;
    h.nextDeadline = [this](Timestamp after) -> Result<std::optional<Timestamp>> {
      std::lock_guard lock(mutex);
      reloadsAfter.push_back(after);
      if (failReads) return asyncflow::fail(Errc::StoreError, "disk I/O error");
      std::optional<Timestamp> next;
      for (Timestamp d : deadlines) {
        if (d > after && (!next || d < *next)) next = d;
      }
      for (Timestamp d : undefined) {
        if (d > after && (!next || d < *next)) next = d;
      }
      return next;
    };
    h.fireDue = [this](Timestamp now) {
      std::lock_guard lock(mutex);
      passes.push_back(now);
      TimerPass pass;
      if (failReads) {
        pass.failure = Error(Errc::StoreError, "disk I/O error");
        return pass;
      }
      std::vector<Timestamp> left;
      for (Timestamp d : deadlines) {
        if (d <= now) {
          fired.push_back(d);
          ++pass.fired;
        } else {
          left.push_back(d);
        }
      }
      deadlines = left;
      for (Timestamp d : undefined) {
        if (d <= now) ++pass.notFired;
      }
      return pass;
    };
    h.log = [this](LogLevel, std::string_view line) {
      std::lock_guard lock(mutex);
      logged.emplace_back(line);
    };
    return h;
  }
  void add(Timestamp d) {
    std::lock_guard lock(mutex);
    deadlines.push_back(d);
  }
  template <class F>
  auto read(F f) {
    std::lock_guard lock(mutex);
    return f();
  }
};

}  // namespace

TEST_CASE("it loads the earliest deadline, sleeps until it, fires, and reloads") {
  auto clock = std::make_shared<ManualClock>();
  const Timestamp t0 = clock->now();
  FakeTimers fake;
  fake.add(t0 + 10s);
  fake.add(t0 + 5s);
  TimerService timer(clock, fake.hooks(), true);
  clock->awaitSleepers();
  CHECK(clock->sleepingUntil() == Sleeps{t0 + 5s});
  clock->advance(5s);
  clock->awaitSleepers();
  CHECK(fake.read([&] { return fake.fired; }) == std::vector<Timestamp>{t0 + 5s});
  CHECK(clock->sleepingUntil() == Sleeps{t0 + 10s});
  clock->advance(20s);
  clock->awaitSleepers();
  CHECK(fake.read([&] { return fake.fired; }) == std::vector<Timestamp>{t0 + 5s, t0 + 10s});
  CHECK(clock->sleepingUntil() == Sleeps{std::nullopt});
  CHECK(fake.read([&] { return fake.passes; }) == std::vector<Timestamp>{t0 + 5s, t0 + 25s});
}

TEST_CASE(
    "a noted deadline earlier than the one it sleeps for wakes it, and a later one does not") {
  auto clock = std::make_shared<ManualClock>();
  const Timestamp t0 = clock->now();
  FakeTimers fake;
  fake.add(t0 + 10s);
  TimerService timer(clock, fake.hooks(), true);
  clock->awaitSleepers();
  const auto reloads = fake.read([&] { return fake.reloadsAfter.size(); });
  fake.add(t0 + 20s);
  timer.noteDeadline(t0 + 20s);
  clock->awaitSleepers();
  CHECK(clock->sleepingUntil() == Sleeps{t0 + 10s});
  fake.add(t0 + 3s);
  timer.noteDeadline(t0 + 3s);
  clock->awaitSleepers();
  CHECK(clock->sleepingUntil() == Sleeps{t0 + 3s});
  CHECK(fake.read([&] { return fake.reloadsAfter.size(); }) == reloads);  // noted, not reloaded
}

TEST_CASE("nothing due at the deadline it slept for: it reloads and sleeps for the next") {
  auto clock = std::make_shared<ManualClock>();
  const Timestamp t0 = clock->now();
  FakeTimers fake;
  fake.add(t0 + 5s);
  fake.add(t0 + 8s);
  TimerService timer(clock, fake.hooks(), true);
  clock->awaitSleepers();
  fake.read([&] {
    fake.deadlines = {t0 + 8s};  // the first was completed: no note
    return 0;
  });
  clock->advance(5s);
  clock->awaitSleepers();
  CHECK(fake.read([&] { return fake.fired.empty(); }));
  CHECK(clock->sleepingUntil() == Sleeps{t0 + 8s});
}

TEST_CASE("due timers that cannot fire are skipped until the definitions change") {
  auto clock = std::make_shared<ManualClock>();
  const Timestamp t0 = clock->now();
  FakeTimers fake;
  fake.undefined = {t0 + 1s};
  fake.add(t0 + 4s);
  TimerService timer(clock, fake.hooks(), true);
  clock->awaitSleepers();
  CHECK(clock->sleepingUntil() == Sleeps{t0 + 1s});
  clock->advance(2s);
  clock->awaitSleepers();
  // It asked for deadlines after the pass's time: not the stuck one again.
  CHECK(fake.read([&] { return fake.reloadsAfter.back(); }) == t0 + 2s);
  CHECK(clock->sleepingUntil() == Sleeps{t0 + 4s});
  clock->advance(2s);
  clock->awaitSleepers();
  CHECK(fake.read([&] { return fake.fired; }) == std::vector<Timestamp>{t0 + 4s});
  const auto passes = fake.read([&] { return fake.passes.size(); });
  CHECK(passes == 2);  // no loop on the stuck timer

  fake.read([&] {
    fake.deadlines = fake.undefined;  // now defined
    fake.undefined.clear();
    return 0;
  });
  timer.definitionsChanged();
  clock->awaitSleepers();
  CHECK(fake.read([&] { return fake.reloadsAfter.back(); }) == Timestamp::min());
  CHECK(fake.read([&] { return fake.fired; }) == std::vector<Timestamp>{t0 + 4s, t0 + 1s});
}

TEST_CASE("a failing store is asked again after kRetryAfterFailure, and the failure logged") {
  auto clock = std::make_shared<ManualClock>();
  const Timestamp t0 = clock->now();
  FakeTimers fake;
  fake.failReads = true;
  fake.add(t0 + 1s);
  TimerService timer(clock, fake.hooks(), true);
  clock->awaitSleepers();
  CHECK(clock->sleepingUntil() == Sleeps{t0 + TimerService::kRetryAfterFailure});
  fake.read([&] { return fake.failReads = false; });
  clock->advance(1s);
  clock->awaitSleepers();  // reloads, finds t0 + 1s due, fires it
  CHECK(fake.read([&] { return fake.fired; }) == std::vector<Timestamp>{t0 + 1s});
  CHECK(fake.read([&] { return fake.logged.size(); }) == 1);
  CHECK(
      asyncflow::testing::contains(fake.read([&] { return fake.logged.at(0); }), "disk I/O error"));
}

TEST_CASE("tasks run at their time, in time order, and without a thread, by runDueTasks") {
  auto clock = std::make_shared<ManualClock>();
  const Timestamp t0 = clock->now();
  FakeTimers fake;
  std::mutex mutex;
  std::vector<int> ran;
  auto task = [&](int n) {
    return [&, n] {
      std::lock_guard lock(mutex);
      ran.push_back(n);
    };
  };
  SECTION("on the thread") {
    TimerService timer(clock, fake.hooks(), true);
    timer.runAt(t0 + 3s, task(3));
    timer.runAt(t0 + 1s, task(1));
    timer.runAt(t0 + 2s, task(2));
    clock->awaitSleepers();
    CHECK(clock->sleepingUntil() == Sleeps{t0 + 1s});
    CHECK(timer.pendingTasks() == 3);
    clock->advance(2s);
    clock->awaitSleepers();
    {
      std::lock_guard lock(mutex);
      CHECK(ran == std::vector<int>{1, 2});
    }
    timer.stop();  // drops the rest
    CHECK(timer.pendingTasks() == 0);
    timer.runAt(t0, task(4));  // after stop: dropped
    CHECK(timer.pendingTasks() == 0);
  }
  SECTION("without a thread: no alarm, the host runs them") {
    TimerService timer(clock, fake.hooks(), false);
    timer.runAt(t0 + 1s, task(1));
    timer.runAt(t0, task(0));
    CHECK(clock->sleepingUntil().empty());
    CHECK(timer.runDueTasks(t0) == 1);
    CHECK(timer.runDueTasks(t0 + 1s) == 1);
    CHECK(timer.runDueTasks(t0 + 1h) == 0);
    std::lock_guard lock(mutex);
    CHECK(ran == std::vector<int>{0, 1});
  }
}
