// Pins what MemoryStore promises beyond the Store contract, which the conformance
// suite (store_conformance_test.cpp) checks: ids are consecutive, 1, 2, 3, ...,
// with no gaps, not even after a conflict or under concurrent creates; and what
// declare's refusals of a step say (store/declaration, which SqliteStore shares).
#include "asyncflow/memory_store.hpp"

#include <cstdint>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "asyncflow/store.hpp"
#include "support/catch.hpp"
#include "support/printers.hpp"
#include "support/records.hpp"

namespace {

using asyncflow::ApplyStatus;
using asyncflow::ChangeSet;
using asyncflow::InstanceId;
using asyncflow::MemoryStore;
using asyncflow::testing::applyBatch;
using asyncflow::testing::create;
using asyncflow::testing::creation;
using asyncflow::testing::processDeclaration;
using asyncflow::testing::stepDeclaration;

}  // namespace

TEST_CASE("MemoryStore assigns consecutive ids, a conflict consumes none") {
  MemoryStore store;
  CHECK(create(store) == 1);

  std::vector<ChangeSet> batch{creation(), creation()};
  ChangeSet missing = creation();
  missing.instance.id = 3;  // not there yet: a Conflict that must not take id 3
  missing.expectedVersion = 1;
  batch.insert(batch.begin() + 1, missing);
  const auto results = applyBatch(store, std::move(batch));
  REQUIRE(results.size() == 3);
  CHECK(results[0].instance == 2);
  CHECK(results[1].status == ApplyStatus::Conflict);
  CHECK(results[2].instance == 3);

  CHECK(applyBatch(store, {}).empty());
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

TEST_CASE("declare's refusal of a step names the process version, the step and what is wrong") {
  using asyncflow::StepKind;
  MemoryStore store;
  const auto refusal = [&](std::vector<asyncflow::StepDeclaration> steps) {
    auto declared = store.declare(processDeclaration("Order", 2, {}, std::move(steps)));
    REQUIRE_FALSE(declared.has_value());
    CHECK(declared.error().code == asyncflow::Errc::InvalidArgument);
    return declared.error().message;
  };
  const std::string prefix = "cannot declare Order version 2: ";
  const std::string nothing = "; nothing was written";
  CHECK(refusal({stepDeclaration("", StepKind::Sync)}) ==
        prefix + "a step name is empty" + nothing);
  CHECK(refusal(
            {stepDeclaration("Ship", StepKind::Sync), stepDeclaration("Ship", StepKind::Async)}) ==
        prefix + "step Ship is declared twice" + nothing);
  CHECK(refusal({stepDeclaration("Ship", static_cast<StepKind>(42))}) ==
        prefix + "step Ship has kind 42, which is no StepKind" + nothing);
  CHECK(refusal({stepDeclaration("Ship", StepKind::Async, -1)}) ==
        prefix + "step Ship has a negative heartbeat (-1 us)" + nothing);
}
