// Pins TimerService (src/engine/timer_service.hpp) on its own, with fake hooks
// in place of the store and a ManualClock: what it reloads, when it fires, what
// it skips, how it retries, its lease source and change check, and its delayed
// tasks. The real thread runs; the test moves the clock and waits with
// ManualClock::awaitSleepers(), never sleeps.
#include "engine/timer_service.hpp"

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
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

  // The lease source: expiries the timer reads the earliest of (after
  // `after`), and a takeOver pass that hands every expired one over; like the
  // engine's drives, the pass itself changes nothing in the store.
  std::vector<Timestamp> leases;
  std::vector<Timestamp> leaseReloadsAfter;  // the `after` of each lease reload
  std::vector<Timestamp> takeOvers;          // the `now` of each lease pass
  // The change mark the check reads, how often it was read, and whether it fails.
  std::uint64_t mark = 0;
  std::size_t markReads = 0;
  bool failMark = false;

  TimerService::Hooks withLeases() {
    TimerService::Hooks h = hooks();
    h.nextLeaseExpiry = [this](Timestamp after) -> Result<std::optional<Timestamp>> {
      std::lock_guard lock(mutex);
      leaseReloadsAfter.push_back(after);
      std::optional<Timestamp> next;
      for (Timestamp e : leases) {
        if (e > after && (!next || e < *next)) next = e;
      }
      return next;
    };
    h.takeOver = [this](Timestamp now) {
      std::lock_guard lock(mutex);
      takeOvers.push_back(now);
      TimerPass pass;
      for (Timestamp e : leases) {
        if (e <= now) ++pass.fired;
      }
      return pass;
    };
    return h;
  }
  TimerService::Hooks withChangeMark() {
    TimerService::Hooks h = withLeases();
    h.changeMark = [this]() -> Result<std::uint64_t> {
      std::lock_guard lock(mutex);
      ++markReads;
      if (failMark) return asyncflow::fail(Errc::StoreError, "disk I/O error");
      return mark;
    };
    return h;
  }
  // Reloads so far of the deadline and of the lease expiry.
  std::pair<std::size_t, std::size_t> reloads() {
    std::lock_guard lock(mutex);
    return {reloadsAfter.size(), leaseReloadsAfter.size()};
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

TEST_CASE("cancel() drops a task that has not run, and only that one") {
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
  auto ranSoFar = [&] {
    std::lock_guard lock(mutex);
    return ran;
  };
  SECTION("without a thread") {
    TimerService timer(clock, fake.hooks(), false);
    const std::uint64_t first = timer.runAt(t0 + 1s, task(1));
    const std::uint64_t second = timer.runAt(t0 + 2s, task(2));
    const std::uint64_t third = timer.runAt(t0 + 2s, task(3));
    CHECK(first != 0);
    CHECK(second != first);
    CHECK(third != second);
    CHECK(timer.cancel(second));
    CHECK(timer.pendingTasks() == 2);
    CHECK_FALSE(timer.cancel(second));  // dropped already
    CHECK_FALSE(timer.cancel(0));       // the token of a task runAt() dropped
    CHECK_FALSE(timer.cancel(third + 100));
    CHECK(timer.runDueTasks(t0 + 5s) == 2);
    CHECK(ranSoFar() == std::vector<int>{1, 3});
    CHECK_FALSE(timer.cancel(first));  // it ran
  }
  SECTION("on the thread: a cancelled task never runs") {
    TimerService timer(clock, fake.hooks(), true);
    const std::uint64_t first = timer.runAt(t0 + 1s, task(1));
    timer.runAt(t0 + 2s, task(2));
    clock->awaitSleepers();
    REQUIRE(timer.cancel(first));
    CHECK(timer.pendingTasks() == 1);
    clock->advance(1s);
    clock->awaitSleepers();
    CHECK(ranSoFar().empty());
    CHECK(clock->sleepingUntil() == Sleeps{t0 + 2s});
    clock->advance(1s);
    clock->awaitSleepers();
    CHECK(ranSoFar() == std::vector<int>{2});
    CHECK(timer.pendingTasks() == 0);
  }
}

TEST_CASE(
    "the lease source: it sleeps until the earliest expiry, passes takeOver at it, and "
    "asks for the expiries after it next") {
  auto clock = std::make_shared<ManualClock>();
  const Timestamp t0 = clock->now();
  FakeTimers fake;
  fake.leases = {t0 + 9s, t0 + 5s};
  fake.add(t0 + 7s);
  TimerService timer(clock, fake.withLeases(), true);
  clock->awaitSleepers();
  CHECK(clock->sleepingUntil() == Sleeps{t0 + 5s});
  CHECK(fake.read([&] { return fake.leaseReloadsAfter; }) ==
        std::vector<Timestamp>{Timestamp::min()});

  clock->advance(5s);
  clock->awaitSleepers();
  CHECK(fake.read([&] { return fake.takeOvers; }) == std::vector<Timestamp>{t0 + 5s});
  CHECK(fake.read([&] { return fake.passes.empty(); }));  // no deadline was due
  // The pass changed nothing in the store (the drives do that): the lease
  // reload skips through its time, so the timer does not pass again in a loop.
  CHECK(fake.read([&] { return fake.leaseReloadsAfter.back(); }) == t0 + 5s);
  CHECK(clock->sleepingUntil() == Sleeps{t0 + 7s});  // the deadline comes first now

  clock->advance(2s);
  clock->awaitSleepers();
  CHECK(fake.read([&] { return fake.fired; }) == std::vector<Timestamp>{t0 + 7s});
  CHECK(clock->sleepingUntil() == Sleeps{t0 + 9s});

  clock->advance(2s);
  clock->awaitSleepers();
  CHECK(fake.read([&] { return fake.takeOvers; }) == std::vector<Timestamp>{t0 + 5s, t0 + 9s});
  CHECK(fake.read([&] { return fake.leaseReloadsAfter.back(); }) == t0 + 9s);
  CHECK(clock->sleepingUntil() == Sleeps{std::nullopt});
}

TEST_CASE("without lease hooks there is no lease source") {
  auto clock = std::make_shared<ManualClock>();
  const Timestamp t0 = clock->now();
  FakeTimers fake;
  fake.leases = {t0 + 1s};
  TimerService timer(clock, fake.hooks(), true);
  clock->awaitSleepers();
  CHECK(clock->sleepingUntil() == Sleeps{std::nullopt});
  clock->advance(2s);
  clock->awaitSleepers();
  CHECK(fake.read([&] { return fake.leaseReloadsAfter.empty(); }));
}

TEST_CASE("storeChanged() looks at skipped leases again, but keeps skipping undefined timers") {
  auto clock = std::make_shared<ManualClock>();
  const Timestamp t0 = clock->now();
  FakeTimers fake;
  fake.leases = {t0 + 1s};     // handed over, but still listed: the drive left it (say, live again)
  fake.undefined = {t0 + 1s};  // a deadline of a version not defined here
  TimerService timer(clock, fake.withLeases(), true);
  clock->awaitSleepers();
  clock->advance(2s);
  clock->awaitSleepers();
  CHECK(fake.read([&] { return fake.passes; }) == std::vector<Timestamp>{t0 + 2s});
  CHECK(fake.read([&] { return fake.takeOvers; }) == std::vector<Timestamp>{t0 + 2s});
  CHECK(clock->sleepingUntil() == Sleeps{std::nullopt});
  const auto timerReloads = fake.read([&] { return fake.reloadsAfter; });
  CHECK(timerReloads == std::vector<Timestamp>{Timestamp::min(), t0 + 2s});

  timer.storeChanged();  // another host offered it again, or released it
  clock->awaitSleepers();
  CHECK(fake.read([&] { return fake.leaseReloadsAfter; }) ==
        std::vector<Timestamp>{Timestamp::min(), t0 + 2s, Timestamp::min(), t0 + 2s});
  CHECK(fake.read([&] { return fake.takeOvers; }) == std::vector<Timestamp>{t0 + 2s, t0 + 2s});
  // The deadlines were reloaded too, still after the skipped one: it waits
  // for a define(), which a commit elsewhere is not.
  CHECK(fake.read([&] { return fake.reloadsAfter; }) ==
        std::vector<Timestamp>{Timestamp::min(), t0 + 2s, t0 + 2s});
  CHECK(fake.read([&] { return fake.passes.size(); }) == 1);
  CHECK(clock->sleepingUntil() == Sleeps{std::nullopt});

  timer.definitionsChanged();  // a define() looks at both again
  clock->awaitSleepers();
  CHECK(fake.read([&] { return fake.reloadsAfter.at(3); }) == Timestamp::min());
  CHECK(fake.read([&] { return fake.leaseReloadsAfter.at(4); }) == Timestamp::min());
  CHECK(fake.read([&] { return fake.passes.size(); }) == 2);
  CHECK(fake.read([&] { return fake.takeOvers.size(); }) == 3);
}

TEST_CASE("the change check reads the mark every interval and reloads only when it moved") {
  auto clock = std::make_shared<ManualClock>();
  const Timestamp t0 = clock->now();
  FakeTimers fake;
  fake.add(t0 + 10s);
  fake.leases = {t0 + 20s};
  TimerService timer(clock, fake.withChangeMark(), true, 250ms);
  clock->awaitSleepers();
  CHECK(fake.read([&] { return fake.markReads; }) == 1);
  CHECK(clock->sleepingUntil() == Sleeps{t0 + 250ms});
  const auto loaded = fake.reloads();
  CHECK(loaded == std::pair<std::size_t, std::size_t>{1, 1});

  clock->advance(250ms);  // the mark stays: nothing to reload
  clock->awaitSleepers();
  CHECK(fake.read([&] { return fake.markReads; }) == 2);
  CHECK(fake.reloads() == loaded);
  CHECK(clock->sleepingUntil() == Sleeps{t0 + 500ms});

  fake.read([&] { return fake.mark = 5; });  // another process committed
  clock->advance(250ms);
  clock->awaitSleepers();
  CHECK(fake.read([&] { return fake.markReads; }) == 3);
  CHECK(fake.reloads() == std::pair<std::size_t, std::size_t>{2, 2});
  CHECK(clock->sleepingUntil() == Sleeps{t0 + 750ms});

  clock->advance(250ms);  // still 5
  clock->awaitSleepers();
  CHECK(fake.read([&] { return fake.markReads; }) == 4);
  CHECK(fake.reloads() == std::pair<std::size_t, std::size_t>{2, 2});

  SECTION("a failing read reloads nothing, and the check asks again an interval later") {
    fake.read([&] { return fake.failMark = true; });
    clock->advance(250ms);
    clock->awaitSleepers();
    CHECK(fake.read([&] { return fake.markReads; }) == 5);
    CHECK(fake.reloads() == std::pair<std::size_t, std::size_t>{2, 2});
    CHECK(clock->sleepingUntil() == Sleeps{t0 + 1250ms});
    fake.read([&] {
      fake.failMark = false;
      return fake.mark = 6;
    });
    clock->advance(250ms);
    clock->awaitSleepers();
    CHECK(fake.read([&] { return fake.markReads; }) == 6);
    CHECK(fake.reloads() == std::pair<std::size_t, std::size_t>{3, 3});
  }
  SECTION("a moved mark looks at skipped leases again") {
    fake.read([&] {
      fake.leases = {t0 + 1s};  // expired, handed over, still listed
      return 0;
    });
    fake.read([&] { return fake.mark = 6; });
    clock->advance(250ms);  // t0 + 1 s: reloads, finds it expired, passes
    clock->awaitSleepers();
    CHECK(fake.read([&] { return fake.takeOvers; }) == std::vector<Timestamp>{t0 + 1000ms});
    CHECK(fake.read([&] { return fake.leaseReloadsAfter.back(); }) == t0 + 1000ms);
    clock->advance(250ms);  // the mark stays: the skip holds
    clock->awaitSleepers();
    CHECK(fake.read([&] { return fake.takeOvers.size(); }) == 1);
    fake.read([&] { return fake.mark = 7; });
    clock->advance(250ms);
    clock->awaitSleepers();
    CHECK(fake.read([&] { return fake.takeOvers; }) ==
          std::vector<Timestamp>{t0 + 1000ms, t0 + 1500ms});
  }
}

TEST_CASE("without a change mark hook, or with a zero interval, the timer never asks") {
  auto clock = std::make_shared<ManualClock>();
  const Timestamp t0 = clock->now();
  FakeTimers fake;
  fake.add(t0 + 10s);
  SECTION("zero interval") {
    TimerService timer(clock, fake.withChangeMark(), true, std::chrono::microseconds::zero());
    clock->awaitSleepers();
    CHECK(clock->sleepingUntil() == Sleeps{t0 + 10s});
    clock->advance(5s);
    clock->awaitSleepers();
  }
  SECTION("no hook") {
    TimerService timer(clock, fake.withLeases(), true, 250ms);
    clock->awaitSleepers();
    CHECK(clock->sleepingUntil() == Sleeps{t0 + 10s});
  }
  CHECK(fake.read([&] { return fake.markReads; }) == 0);
  CHECK(fake.reloads().first == 1);
}
