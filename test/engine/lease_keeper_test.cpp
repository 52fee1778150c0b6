// Pins LeaseKeeper (src/engine/lease_keeper.hpp) on its own: which handlers are
// in flight under which lease, which of them a sweep must renew, and the one
// sweep it asks the engine to schedule (and to cancel once the last handler
// returned), with no engine, store or thread.
#include "engine/lease_keeper.hpp"

#include <chrono>
#include <vector>

#include "support/catch.hpp"

using namespace std::chrono_literals;
using asyncflow::InstanceId;
using asyncflow::Timestamp;
using asyncflow::detail::LeaseKeeper;

namespace {

const Timestamp kT0 = Timestamp(std::chrono::seconds(1'700'000'000));

using Ids = std::vector<InstanceId>;

}  // namespace

TEST_CASE("a sweep runs every third of the lease") {
  CHECK(LeaseKeeper(30s).sweepInterval() == 10s);
  CHECK(LeaseKeeper(3ms).sweepInterval() == 1ms);
}

TEST_CASE("the first handler in flight asks for a sweep, the others do not") {
  LeaseKeeper keeper(30s);
  CHECK(keeper.inFlight() == 0);
  CHECK(keeper.begin(1, kT0 + 30s));
  CHECK_FALSE(keeper.begin(2, kT0 + 31s));
  CHECK_FALSE(keeper.begin(3, kT0 + 32s));
  CHECK(keeper.inFlight() == 3);
}

TEST_CASE("end() of the last handler returns the scheduled sweep's token, of the others 0") {
  LeaseKeeper keeper(30s);
  REQUIRE(keeper.begin(1, kT0 + 30s));
  keeper.sweepScheduled(41);
  REQUIRE_FALSE(keeper.begin(2, kT0 + 30s));
  CHECK(keeper.end(2) == 0);  // one still runs: the sweep stays
  CHECK(keeper.inFlight() == 1);
  CHECK(keeper.end(1) == 41);  // the last: cancel the sweep
  CHECK(keeper.inFlight() == 0);
  // Nothing is scheduled any more: the next handler asks for a new sweep.
  CHECK(keeper.begin(3, kT0 + 40s));
  keeper.sweepScheduled(42);
  CHECK(keeper.end(3) == 42);
}

TEST_CASE("end() of the last handler is 0 when the sweep was asked for but not scheduled") {
  LeaseKeeper keeper(30s);
  REQUIRE(keeper.begin(1, kT0 + 30s));
  CHECK(keeper.end(1) == 0);  // no token was ever set
  CHECK(keeper.begin(2, kT0 + 30s));
}

TEST_CASE("end() returns the token of the latest sweep, once") {
  LeaseKeeper keeper(30s);
  REQUIRE(keeper.begin(1, kT0 + 30s));
  keeper.sweepScheduled(7);
  REQUIRE(keeper.sweepAgain());  // the first sweep ran: the next one is scheduled
  keeper.sweepScheduled(8);
  CHECK(keeper.end(1) == 8);
  REQUIRE(keeper.begin(2, kT0 + 30s));
  CHECK(keeper.end(2) == 0);  // 8 was handed out already; no new one was scheduled
}

TEST_CASE("sweepAgain is true while handlers run, and false clears the mark") {
  LeaseKeeper keeper(30s);
  REQUIRE(keeper.begin(1, kT0 + 30s));
  keeper.sweepScheduled(1);
  CHECK(keeper.sweepAgain());
  CHECK_FALSE(keeper.begin(2, kT0 + 30s));  // still scheduled: no second sweep

  SECTION("the handlers end between sweeps: the last end() takes the token") {
    CHECK(keeper.end(1) == 0);
    CHECK(keeper.end(2) == 1);
    CHECK_FALSE(keeper.sweepAgain());
  }
  SECTION("a sweep that finds none in flight stops, and the next begin() asks again") {
    // The sweep task ran while the last handler ended (its cancel came too late).
    keeper.end(1);
    keeper.end(2);
    CHECK_FALSE(keeper.sweepAgain());
    CHECK(keeper.begin(3, kT0 + 30s));
  }
}

TEST_CASE("due() lists the handlers with less than two thirds of the lease left") {
  LeaseKeeper keeper(30s);
  keeper.begin(1, kT0 + 30s);
  keeper.begin(2, kT0 + 40s);
  CHECK(keeper.due(kT0).empty());
  CHECK(keeper.due(kT0 + 10s).empty());  // exactly two thirds left: not yet
  CHECK(keeper.due(kT0 + 10s + 1us) == Ids{1});
  CHECK(keeper.due(kT0 + 20s + 1us) == Ids{1, 2});
  CHECK(keeper.due(kT0 + 1h) == Ids{1, 2});  // expired ones too: renew what is left
  keeper.end(1);
  CHECK(keeper.due(kT0 + 1h) == Ids{2});
}

TEST_CASE("renewed() moves a handler's expiry later, never earlier, and adds none") {
  LeaseKeeper keeper(30s);
  keeper.begin(1, kT0 + 30s);
  REQUIRE(keeper.due(kT0 + 15s) == Ids{1});
  keeper.renewed(1, kT0 + 45s);
  CHECK(keeper.due(kT0 + 15s).empty());
  CHECK(keeper.due(kT0 + 25s + 1us) == Ids{1});
  keeper.renewed(1, kT0 + 31s);  // an older renewal committed late: ignored
  CHECK(keeper.due(kT0 + 25s).empty());
  keeper.renewed(9, kT0 + 45s);  // not in flight (its handler returned meanwhile)
  CHECK(keeper.inFlight() == 1);
  CHECK(keeper.due(kT0 + 1h) == Ids{1});
}
