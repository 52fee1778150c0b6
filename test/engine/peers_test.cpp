// Pins Peers (src/engine/peers.hpp): the timers of one process that read one
// Store object, told at once when one of them commits something the others
// should look at. Real TimerService threads with fake hooks on one ManualClock;
// a timer that is told reloads both its earliest deadline and its earliest lease
// expiry, which the hooks count. After each call the test waits with
// ManualClock::awaitSleepers() until every timer sleeps again, never sleeps.
#include "engine/peers.hpp"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>

#include "asyncflow/memory_store.hpp"
#include "engine/timer_service.hpp"
#include "support/catch.hpp"
#include "support/test_support.hpp"

using asyncflow::LogLevel;
using asyncflow::ManualClock;
using asyncflow::MemoryStore;
using asyncflow::Result;
using asyncflow::Store;
using asyncflow::Timestamp;
using asyncflow::detail::Peers;
using asyncflow::detail::TimerPass;
using asyncflow::detail::TimerService;

namespace {

// A timer thread over an empty fake store that counts its reloads.
struct CountedTimer {
  explicit CountedTimer(std::shared_ptr<ManualClock> clock)
      : timer(std::move(clock), hooks(), true) {}

  // Reloads of the earliest deadline and of the earliest lease expiry.
  std::size_t deadlineReloads() const { return deadlines.load(); }
  std::size_t leaseReloads() const { return leases.load(); }

  TimerService::Hooks hooks() {
    TimerService::Hooks h;
    h.nextDeadline = [this](Timestamp) -> Result<std::optional<Timestamp>> {
      ++deadlines;
      return std::nullopt;
    };
    h.fireDue = [](Timestamp) { return TimerPass{}; };
    h.log = [](LogLevel, std::string_view) {};
    h.nextLeaseExpiry = [this](Timestamp) -> Result<std::optional<Timestamp>> {
      ++leases;
      return std::nullopt;
    };
    h.takeOver = [](Timestamp) { return TimerPass{}; };
    return h;
  }

  std::atomic<std::size_t> deadlines{0};
  std::atomic<std::size_t> leases{0};
  TimerService timer;  // last: its thread uses the counters
};

// Joins `timer` to the peers of `store` for its scope: it leaves before the
// timer goes, as Peers requires, also when a check fails.
class Joined {
 public:
  Joined(const Store* store, TimerService* timer) : store_(store), timer_(timer) {
    Peers::join(store_, timer_);
  }
  ~Joined() { leave(); }
  Joined(const Joined&) = delete;
  Joined& operator=(const Joined&) = delete;
  void leave() {
    if (timer_ != nullptr) Peers::leave(store_, timer_);
    timer_ = nullptr;
  }

 private:
  const Store* store_;
  TimerService* timer_;
};

struct Reloads {
  std::size_t deadlines = 0;
  std::size_t leases = 0;
  bool operator==(const Reloads& o) const { return deadlines == o.deadlines && leases == o.leases; }
};

Reloads reloadsOf(const CountedTimer& t) { return Reloads{t.deadlineReloads(), t.leaseReloads()}; }

Reloads plusOne(Reloads r) { return Reloads{r.deadlines + 1, r.leases + 1}; }

}  // namespace

namespace Catch {
template <>
struct StringMaker<Reloads> {
  static std::string convert(const Reloads& r) {
    return "{deadlines " + std::to_string(r.deadlines) + ", leases " + std::to_string(r.leases) +
           "}";
  }
};
}  // namespace Catch

TEST_CASE("tell reloads the other timers of the same store, not the teller's nor another store's") {
  auto clock = std::make_shared<ManualClock>();
  MemoryStore shared;
  MemoryStore other;
  CountedTimer teller(clock);
  CountedTimer peer(clock);
  CountedTimer elsewhere(clock);
  Joined tellerJoined(&shared, &teller.timer);
  Joined peerJoined(&shared, &peer.timer);
  Joined elsewhereJoined(&other, &elsewhere.timer);
  clock->awaitSleepers(3);
  const Reloads tellerBefore = reloadsOf(teller);
  const Reloads peerBefore = reloadsOf(peer);
  const Reloads elsewhereBefore = reloadsOf(elsewhere);
  REQUIRE(peerBefore == Reloads{1, 1});  // the first load

  Peers::tell(&shared, &teller.timer);
  clock->awaitSleepers(3);
  CHECK(reloadsOf(peer) == plusOne(peerBefore));
  CHECK(reloadsOf(teller) == tellerBefore);
  CHECK(reloadsOf(elsewhere) == elsewhereBefore);

  SECTION("each tell is one more reload") {
    Peers::tell(&shared, &teller.timer);
    clock->awaitSleepers(3);
    CHECK(reloadsOf(peer) == plusOne(plusOne(peerBefore)));
  }
  SECTION("a timer that left is not told any more") {
    peerJoined.leave();
    Peers::tell(&shared, &teller.timer);
    clock->awaitSleepers(3);
    CHECK(reloadsOf(peer) == plusOne(peerBefore));
    CHECK(reloadsOf(teller) == tellerBefore);
  }
  SECTION("the other store's peers hear only of that store") {
    Peers::tell(&other, &teller.timer);  // the teller is not of that store: all of its timers
    clock->awaitSleepers(3);
    CHECK(reloadsOf(elsewhere) == plusOne(elsewhereBefore));
    CHECK(reloadsOf(peer) == plusOne(peerBefore));
    CHECK(reloadsOf(teller) == tellerBefore);
  }
}

TEST_CASE("every other timer of the store is told, however many there are") {
  auto clock = std::make_shared<ManualClock>();
  MemoryStore shared;
  CountedTimer teller(clock);
  CountedTimer first(clock);
  CountedTimer second(clock);
  Joined a(&shared, &teller.timer);
  Joined b(&shared, &first.timer);
  Joined c(&shared, &second.timer);
  clock->awaitSleepers(3);
  const Reloads before = reloadsOf(first);
  REQUIRE(reloadsOf(second) == before);

  Peers::tell(&shared, &teller.timer);
  clock->awaitSleepers(3);
  CHECK(reloadsOf(first) == plusOne(before));
  CHECK(reloadsOf(second) == plusOne(before));

  // The teller is told when another one tells.
  const Reloads tellerBefore = reloadsOf(teller);
  Peers::tell(&shared, &second.timer);
  clock->awaitSleepers(3);
  CHECK(reloadsOf(teller) == plusOne(tellerBefore));
  CHECK(reloadsOf(first) == plusOne(plusOne(before)));
  CHECK(reloadsOf(second) == plusOne(before));
}

TEST_CASE("a store whose timers all left, or never joined, tells nobody, and may be joined again") {
  auto clock = std::make_shared<ManualClock>();
  MemoryStore shared;
  MemoryStore unknown;
  CountedTimer teller(clock);
  CountedTimer peer(clock);
  Joined tellerJoined(&shared, &teller.timer);
  {
    Joined peerJoined(&shared, &peer.timer);
    clock->awaitSleepers(2);
  }
  tellerJoined.leave();
  Peers::leave(&unknown, &peer.timer);  // never joined: no effect
  const Reloads before = reloadsOf(peer);
  Peers::tell(&shared, &teller.timer);
  Peers::tell(&unknown, nullptr);
  clock->awaitSleepers(2);
  CHECK(reloadsOf(peer) == before);

  Joined again(&shared, &peer.timer);
  Peers::tell(&shared, &teller.timer);
  clock->awaitSleepers(2);
  CHECK(reloadsOf(peer) == plusOne(before));
}
