// Pins the clocks' alarms (include/asyncflow/clock.hpp): a ManualClock's alarm
// sleeps until the clock is moved to its deadline or it is woken, a wake-up is
// kept until the next sleep, and awaitSleepers/sleepingUntil tell a test what
// a sleeping thread waits for. The real-time alarm is checked only for what
// needs no waiting.
#include "asyncflow/clock.hpp"

#include <chrono>
#include <optional>
#include <thread>
#include <vector>

#include "support/catch.hpp"
#include "support/test_support.hpp"

using namespace std::chrono_literals;
using asyncflow::Alarm;
using asyncflow::ManualClock;
using asyncflow::Timestamp;
using Sleeps = std::vector<std::optional<Timestamp>>;

TEST_CASE("a manual alarm sleeps until the clock reaches its deadline") {
  auto clock = std::make_shared<ManualClock>();
  const Timestamp t0 = clock->now();
  auto alarm = clock->newAlarm();
  std::thread sleeper([&] { alarm->sleepUntil(t0 + 5s); });
  clock->awaitSleepers();
  CHECK(clock->sleepingUntil() == Sleeps{t0 + 5s});
  clock->advance(4s);
  clock->awaitSleepers();  // not yet due: it still sleeps
  CHECK(clock->sleepingUntil() == Sleeps{t0 + 5s});
  clock->advance(1s);
  sleeper.join();  // it returned
  CHECK(clock->sleepingUntil().empty());
}

TEST_CASE("wake ends a sleep, and a wake before the sleep is kept for it") {
  auto clock = std::make_shared<ManualClock>();
  auto alarm = clock->newAlarm();
  std::thread forever([&] { alarm->sleepUntil(std::nullopt); });
  clock->awaitSleepers();
  CHECK(clock->sleepingUntil() == Sleeps{std::nullopt});
  alarm->wake();
  forever.join();
  alarm->wake();                    // nobody sleeps: kept
  alarm->sleepUntil(std::nullopt);  // returns at once
  alarm->sleepUntil(clock->now());  // a deadline already reached: returns at once
  SUCCEED("no sleep blocked");
}

TEST_CASE("awaitSleepers waits for every alarm of the clock, and set() moves it both ways") {
  auto clock = std::make_shared<ManualClock>();
  const Timestamp t0 = clock->now();
  auto a = clock->newAlarm();
  auto b = clock->newAlarm();
  std::thread first([&] { a->sleepUntil(t0 + 2s); });
  std::thread second([&] { b->sleepUntil(t0 + 1s); });
  clock->awaitSleepers(2);
  CHECK(clock->sleepingUntil() == Sleeps{t0 + 1s, t0 + 2s});
  clock->set(t0 + 1s);
  second.join();
  // awaitSleepers counts every alarm of the clock: b must sleep again for it.
  std::thread again([&] { b->sleepUntil(std::nullopt); });
  clock->awaitSleepers(2);
  CHECK(clock->sleepingUntil() == Sleeps{t0 + 2s, std::nullopt});
  clock->set(t0);  // backwards: wakes nobody
  CHECK(clock->now() == t0);
  clock->set(t0 + 3s);
  first.join();
  b->wake();
  again.join();
}

TEST_CASE("the default alarm of a real-time clock returns at once when due or woken") {
  auto clock = asyncflow::systemClock();
  auto alarm = clock->newAlarm();
  alarm->sleepUntil(clock->now() - 1s);  // already past
  alarm->wake();
  alarm->sleepUntil(std::nullopt);  // woken before: returns at once
  std::thread waker([&] { alarm->wake(); });
  alarm->sleepUntil(std::nullopt);  // returns once woken (or at once, if it came first)
  waker.join();
  SUCCEED("no sleep blocked");
}
