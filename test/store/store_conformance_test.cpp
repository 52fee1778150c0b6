// Runs the store conformance suite against asyncflow's own stores (MemoryStore,
// SqliteStore, and StoreWrapper forwarding to a MemoryStore), and pins what
// StoreWrapper adds beyond forwarding: the target accessor, shared ownership,
// and overriding one call.
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <asyncflow/testing/store_conformance.hpp>

#include "asyncflow/memory_store.hpp"
#include "asyncflow/sqlite_store.hpp"
#include "asyncflow/store.hpp"
#include "support/catch.hpp"
#include "support/printers.hpp"
#include "support/test_support.hpp"

namespace {

using asyncflow::testing::TempDir;

using asyncflow::ApplyResult;
using asyncflow::ApplyStatus;
using asyncflow::ChangeSet;
using asyncflow::MemoryStore;
using asyncflow::Result;
using asyncflow::Store;
using asyncflow::StoreWrapper;
using asyncflow::testing::checkStoreConformance;

namespace fs = std::filesystem;

// Counts apply() calls, overriding only apply() and passing the rest through.
class CountingStore final : public StoreWrapper {
 public:
  using StoreWrapper::StoreWrapper;
  Result<std::vector<ApplyResult>> apply(std::vector<ChangeSet> batch) override {
    ++applies;
    return StoreWrapper::apply(std::move(batch));
  }
  std::atomic<int> applies{0};
};

}  // namespace

TEST_CASE("MemoryStore conforms to the asyncflow Store contract") {
  checkStoreConformance([] { return std::make_shared<MemoryStore>(); });
}

TEST_CASE("SqliteStore conforms to the asyncflow Store contract") {
  TempDir dir;
  int opened = 0;
  checkStoreConformance([&]() -> std::shared_ptr<Store> {
    const fs::path file = dir.path() / ("store-" + std::to_string(++opened) + ".db");
    auto store = asyncflow::SqliteStore::open(
        file.string(), asyncflow::SqliteOptions{asyncflow::Synchronous::Normal});
    if (!store) FAIL("SqliteStore::open(" << file << "): " << store.error().toString());
    return std::move(*store);
  });
}

TEST_CASE("StoreWrapper over a MemoryStore conforms to the asyncflow Store contract") {
  checkStoreConformance(
      [] { return std::make_shared<StoreWrapper>(std::make_shared<MemoryStore>()); });
}

TEST_CASE("A StoreWrapper subclass overrides one call and still conforms") {
  checkStoreConformance(
      [] { return std::make_shared<CountingStore>(std::make_shared<MemoryStore>()); });
}

TEST_CASE("StoreWrapper exposes its target and writes through to it") {
  auto target = std::make_shared<MemoryStore>();
  CountingStore wrapper(target);
  CHECK(&wrapper.target() == target.get());

  std::vector<ChangeSet> batch(1);
  batch.front().instance.process = "Order";
  const auto results = wrapper.apply(std::move(batch));
  REQUIRE(results.has_value());
  REQUIRE(results->size() == 1);
  CHECK(results->front().status == ApplyStatus::Applied);
  CHECK(wrapper.applies == 1);
  const auto loaded = target->loadInstance(results->front().instance);
  REQUIRE(loaded.has_value());
  CHECK(loaded->record.process == "Order");
}

TEST_CASE("StoreWrapper shares ownership of its target") {
  std::weak_ptr<MemoryStore> watch;
  std::unique_ptr<CountingStore> wrapper;
  {
    auto target = std::make_shared<MemoryStore>();
    watch = target;
    wrapper = std::make_unique<CountingStore>(target);
  }
  REQUIRE_FALSE(watch.expired());
  CHECK(wrapper->apply({}).has_value());
  wrapper.reset();
  CHECK(watch.expired());
}
