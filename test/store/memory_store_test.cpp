// Pins what MemoryStore promises beyond the Store contract, which the conformance
// suite (store_conformance_test.cpp) checks: ids are consecutive, 1, 2, 3, ...,
// with no gaps, not even after a conflict or under concurrent creates.
#include "asyncflow/memory_store.hpp"

#include <cstdint>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "asyncflow/store.hpp"
#include "support/catch.hpp"
#include "support/printers.hpp"

namespace {

using asyncflow::ApplyResult;
using asyncflow::ApplyStatus;
using asyncflow::ChangeSet;
using asyncflow::InstanceId;
using asyncflow::MemoryStore;

ChangeSet creation() {
  ChangeSet set;
  set.instance.process = "Order";
  set.instance.processVersion = 1;
  return set;
}

std::vector<ApplyResult> applyAll(MemoryStore& store, std::vector<ChangeSet> batch) {
  auto results = store.apply(std::move(batch));
  REQUIRE(results.has_value());
  return *results;
}

InstanceId create(MemoryStore& store) {
  const auto results = applyAll(store, {creation()});
  REQUIRE(results.size() == 1);
  REQUIRE(results.front().status == ApplyStatus::Applied);
  return results.front().instance;
}

}  // namespace

TEST_CASE("MemoryStore assigns consecutive ids, a conflict consumes none") {
  MemoryStore store;
  CHECK(create(store) == 1);

  std::vector<ChangeSet> batch{creation(), creation()};
  ChangeSet missing = creation();
  missing.instance.id = 3;  // not there yet: a Conflict that must not take id 3
  missing.expectedVersion = 1;
  batch.insert(batch.begin() + 1, missing);
  const auto results = applyAll(store, std::move(batch));
  REQUIRE(results.size() == 3);
  CHECK(results[0].instance == 2);
  CHECK(results[1].status == ApplyStatus::Conflict);
  CHECK(results[2].instance == 3);

  CHECK(applyAll(store, {}).empty());
  CHECK(create(store) == 4);
}

TEST_CASE("MemoryStore assigns ids 1..N without gaps to concurrent creates") {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 100;
  MemoryStore store;
  std::vector<std::vector<InstanceId>> ids(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&store, &ids, t] {
      for (int i = 0; i < kPerThread; ++i) {
        auto results = store.apply({creation()});
        if (results && results->size() == 1) ids[t].push_back(results->front().instance);
      }
    });
  }
  for (auto& thread : threads) thread.join();

  std::set<InstanceId> distinct;
  for (const auto& perThread : ids) distinct.insert(perThread.begin(), perThread.end());
  REQUIRE(distinct.size() == kThreads * kPerThread);
  CHECK(*distinct.begin() == 1);
  CHECK(*distinct.rbegin() == kThreads * kPerThread);
}
