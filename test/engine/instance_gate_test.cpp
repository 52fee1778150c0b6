// Pins InstanceGate (one thread per instance, "one more pass"), InstanceSet and DriveBackoff
// (src/engine/instance_gate.hpp) on their own.
#include "engine/instance_gate.hpp"

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "support/catch.hpp"
#include "support/test_support.hpp"

using namespace std::chrono_literals;
using asyncflow::detail::DriveBackoff;
using asyncflow::detail::InstanceGate;
using asyncflow::detail::InstanceSet;

TEST_CASE("the first to enter drives, and later callers do not, and may ask for one more pass") {
  InstanceGate gate;
  CHECK(gate.enter(5, true));
  CHECK(gate.size() == 1);
  CHECK_FALSE(gate.enter(5, false));  // taken, no pass asked for
  CHECK_FALSE(gate.leaveOrLoop(5));   // no pass asked: 5 is free
  CHECK(gate.size() == 0);

  CHECK(gate.enter(5, false));
  CHECK_FALSE(gate.enter(5, true));  // asks for a pass
  CHECK_FALSE(gate.enter(5, true));  // asking twice is one pass
  CHECK(gate.leaveOrLoop(5));        // drive again, still held
  CHECK(gate.size() == 1);
  CHECK_FALSE(gate.enter(5, false));
  CHECK_FALSE(gate.leaveOrLoop(5));
  CHECK(gate.size() == 0);
}

TEST_CASE("instances are independent, and leave() lets go whatever was asked") {
  InstanceGate gate;
  CHECK(gate.enter(1, true));
  CHECK(gate.enter(2, true));
  CHECK(gate.size() == 2);
  CHECK_FALSE(gate.enter(1, true));
  gate.leave(1);  // a pass was asked for, but the driver hands the instance on
  CHECK(gate.size() == 1);
  CHECK(gate.enter(1, true));
  CHECK_FALSE(gate.leaveOrLoop(1));
  CHECK_FALSE(gate.leaveOrLoop(2));
  CHECK(gate.size() == 0);
  CHECK_FALSE(gate.leaveOrLoop(3));  // never entered: nothing held
}

TEST_CASE("threads racing for one instance: never two drivers, no asked-for pass lost") {
  // Each thread asks 2,000 times to drive instance 9. A request either drives
  // or hands a pass to the driver; every request is served by some pass.
  InstanceGate gate;
  std::atomic<int> drivers{0};
  std::atomic<int> most{0};
  std::atomic<long> passes{0};
  std::atomic<long> requests{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 2000; ++i) {
        ++requests;
        if (!gate.enter(9, true)) continue;
        do {
          const int now = ++drivers;
          int seen = most.load();
          while (now > seen && !most.compare_exchange_weak(seen, now)) {
          }
          ++passes;
          --drivers;
        } while (gate.leaveOrLoop(9));
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(most == 1);
  CHECK(passes >= 1);
  CHECK(passes <= requests);
  CHECK(gate.size() == 0);
}

TEST_CASE("the back-off doubles from 100 ms to at most 10 s, per instance, until a success") {
  DriveBackoff backoff;
  CHECK(backoff.failed(1) == 100ms);
  CHECK(backoff.failed(1) == 200ms);
  CHECK(backoff.failed(1) == 400ms);
  CHECK(backoff.failed(2) == 100ms);  // another instance starts over
  for (int i = 0; i < 10; ++i) (void)backoff.failed(1);
  CHECK(backoff.failed(1) == 10'000ms);
  CHECK(backoff.size() == 2);
  backoff.succeeded(1);
  CHECK(backoff.failed(1) == 100ms);
  backoff.succeeded(1);
  backoff.succeeded(2);
  backoff.succeeded(3);  // never failed: nothing to forget
  CHECK(backoff.size() == 0);
}

TEST_CASE("an instance set holds each instance once, until it is removed") {
  InstanceSet set;
  CHECK(set.add(1));
  CHECK_FALSE(set.add(1));  // in already
  CHECK(set.add(2));
  CHECK(set.size() == 2);
  CHECK(set.contains(1));
  set.remove(1);
  CHECK_FALSE(set.contains(1));
  CHECK(set.contains(2));
  CHECK(set.size() == 1);
  CHECK(set.add(1));
  set.remove(3);  // never in: no effect
  CHECK(set.size() == 2);
}
