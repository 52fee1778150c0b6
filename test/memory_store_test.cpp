// Pins MemoryStore through the Store interface (ids, versions, upserts, optimistic
// concurrency, copies, thread safety) and StoreWrapper's forwarding.
#include "asyncflow/memory_store.hpp"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "asyncflow/error.hpp"
#include "asyncflow/fields.hpp"
#include "asyncflow/store.hpp"
#include "catch.hpp"
#include "printers.hpp"

namespace {

using asyncflow::ApplyResult;
using asyncflow::ApplyStatus;
using asyncflow::ChangeSet;
using asyncflow::Errc;
using asyncflow::Fields;
using asyncflow::hasCode;
using asyncflow::InstanceId;
using asyncflow::InstanceSnapshot;
using asyncflow::InstanceStatus;
using asyncflow::MemoryStore;
using asyncflow::Result;
using asyncflow::StepKind;
using asyncflow::StepRunRecord;
using asyncflow::StepRunStatus;
using asyncflow::Store;
using asyncflow::StoreWrapper;
using asyncflow::Timestamp;

const Timestamp kT0 = Timestamp(std::chrono::seconds(1'700'000'000));

StepRunRecord stepRun(std::int64_t run, std::string step,
                      StepRunStatus status = StepRunStatus::Starting) {
  StepRunRecord r;
  r.run = run;
  r.step = std::move(step);
  r.kind = StepKind::Async;
  r.status = status;
  r.attempt = 1;
  r.secret = "c2VjcmV0";
  r.createdAt = kT0;
  return r;
}

// A change set that creates an instance of "Order" with one step run.
ChangeSet creation(Fields fields = {{"OrderId", "A-1"}}) {
  ChangeSet set;
  set.instance.process = "Order";
  set.instance.processVersion = 2;
  set.instance.status = InstanceStatus::Running;
  set.instance.currentRun = 1;
  set.instance.lastRun = 1;
  set.instance.createdAt = kT0;
  set.instance.updatedAt = kT0;
  set.fields = std::move(fields);
  set.stepRuns.push_back(stepRun(1, "Submit"));
  return set;
}

// A change set that updates `current` (as loaded) expecting its version.
ChangeSet updateOf(const InstanceSnapshot& current) {
  ChangeSet set;
  set.instance = current.record;
  set.expectedVersion = current.record.version;
  set.instance.updatedAt = current.record.updatedAt + std::chrono::seconds(1);
  return set;
}

std::vector<ApplyResult> applyAll(Store& store, std::vector<ChangeSet> batch) {
  auto results = store.apply(std::move(batch));
  REQUIRE(results.has_value());
  return *results;
}

ApplyResult applyOne(Store& store, ChangeSet set) {
  std::vector<ChangeSet> batch;
  batch.push_back(std::move(set));
  auto results = applyAll(store, std::move(batch));
  REQUIRE(results.size() == 1);
  return results.front();
}

InstanceId create(Store& store, ChangeSet set = creation()) {
  const ApplyResult result = applyOne(store, std::move(set));
  REQUIRE(result.status == ApplyStatus::Applied);
  return result.instance;
}

InstanceSnapshot load(Store& store, InstanceId id) {
  auto snapshot = store.loadInstance(id);
  REQUIRE(snapshot.has_value());
  return *snapshot;
}

}  // namespace

// --- create and load --------------------------------------------------------------

TEST_CASE("create assigns ids 1, 2, ... and version 1") {
  MemoryStore store;
  CHECK(create(store) == 1);
  CHECK(create(store) == 2);
  CHECK(create(store) == 3);
  for (InstanceId id : {1, 2, 3}) {
    const InstanceSnapshot snapshot = load(store, id);
    CHECK(snapshot.record.id == id);
    CHECK(snapshot.record.version == 1);
  }
}

TEST_CASE("create ignores expectedVersion and any version in the header") {
  MemoryStore store;
  ChangeSet set = creation();
  set.expectedVersion = 41;
  set.instance.version = 99;
  const InstanceId id = create(store, std::move(set));
  CHECK(load(store, id).record.version == 1);
}

TEST_CASE("create in one batch assigns consecutive ids in order") {
  MemoryStore store;
  std::vector<ChangeSet> batch;
  batch.push_back(creation({{"OrderId", "first"}}));
  batch.push_back(creation({{"OrderId", "second"}}));
  const auto results = applyAll(store, std::move(batch));
  REQUIRE(results.size() == 2);
  CHECK(results[0].status == ApplyStatus::Applied);
  CHECK(results[0].instance == 1);
  CHECK(results[1].status == ApplyStatus::Applied);
  CHECK(results[1].instance == 2);
  CHECK(load(store, 1).fields.get<std::string>("OrderId").value() == "first");
  CHECK(load(store, 2).fields.get<std::string>("OrderId").value() == "second");
}

TEST_CASE("loadInstance returns the created header and fields") {
  MemoryStore store;
  ChangeSet set = creation({{"OrderId", "A-17"}, {"Amount", 12.5}, {"Urgent", true}});
  set.instance.error = "none yet";
  const InstanceId id = create(store, set);

  const InstanceSnapshot snapshot = load(store, id);
  asyncflow::InstanceRecord expected = set.instance;
  expected.id = id;
  expected.version = 1;
  CHECK(snapshot.record == expected);
  CHECK(snapshot.fields == set.fields);
}

TEST_CASE("create fills in the instance of its step runs; loadStepRun returns them") {
  MemoryStore store;
  create(store);  // id 1, so the next id differs from the default 0 and from 1
  ChangeSet set = creation();
  set.stepRuns.front().instance = 0;
  StepRunRecord second = stepRun(2, "Notify", StepRunStatus::Ready);
  second.instance = 777;  // whatever the caller wrote, the store's id wins
  second.hasCompletion = true;
  second.completion = Fields{{"Status", "Approved"}};
  second.error = "early";
  set.stepRuns.push_back(second);
  const InstanceId id = create(store, set);
  REQUIRE(id == 2);

  auto first = store.loadStepRun(id, 1);
  REQUIRE(first.has_value());
  StepRunRecord expectedFirst = set.stepRuns[0];
  expectedFirst.instance = id;
  CHECK(*first == expectedFirst);

  auto loaded = store.loadStepRun(id, 2);
  REQUIRE(loaded.has_value());
  StepRunRecord expectedSecond = second;
  expectedSecond.instance = id;
  CHECK(*loaded == expectedSecond);
}

TEST_CASE("unknown ids are NotFound") {
  MemoryStore store;
  SECTION("empty store") {
    CHECK(hasCode(store.loadInstance(1), Errc::NotFound));
    CHECK(hasCode(store.loadInstance(0), Errc::NotFound));
    CHECK(hasCode(store.loadStepRun(1, 1), Errc::NotFound));
  }
  SECTION("an existing instance") {
    const InstanceId id = create(store);
    CHECK(hasCode(store.loadInstance(id + 1), Errc::NotFound));
    CHECK(hasCode(store.loadInstance(-1), Errc::NotFound));
    CHECK(hasCode(store.loadStepRun(id, 2), Errc::NotFound));
    CHECK(hasCode(store.loadStepRun(id, 0), Errc::NotFound));
    CHECK(hasCode(store.loadStepRun(id + 1, 1), Errc::NotFound));
  }
}

// --- update --------------------------------------------------------------------------

TEST_CASE("update with the expected version applies and bumps the version") {
  MemoryStore store;
  const InstanceId id = create(store, creation({{"OrderId", "A-1"}, {"Status", "Pending"}}));
  const InstanceSnapshot before = load(store, id);

  ChangeSet set = updateOf(before);
  set.instance.status = InstanceStatus::Waiting;
  set.instance.error = "e";
  set.fields = Fields{{"Status", "Approved"}, {"Ticket", 42}};
  const ApplyResult result = applyOne(store, set);
  CHECK(result.status == ApplyStatus::Applied);
  CHECK(result.instance == id);

  const InstanceSnapshot after = load(store, id);
  CHECK(after.record.version == before.record.version + 1);
  CHECK(after.record.status == InstanceStatus::Waiting);
  CHECK(after.record.error == "e");
  CHECK(after.record.updatedAt == set.instance.updatedAt);
  CHECK(after.record.createdAt == before.record.createdAt);
  // Upserted: changed fields replaced, new ones added, untouched ones kept.
  CHECK(after.fields == Fields{{"OrderId", "A-1"}, {"Status", "Approved"}, {"Ticket", 42}});

  SECTION("a second update expects the new version") {
    ChangeSet again = updateOf(after);
    CHECK(applyOne(store, again).status == ApplyStatus::Applied);
    CHECK(load(store, id).record.version == before.record.version + 2);
  }
}

TEST_CASE("update writes the version as expectedVersion + 1, not the header's") {
  MemoryStore store;
  const InstanceId id = create(store);
  ChangeSet set = updateOf(load(store, id));
  set.instance.version = 1000;
  REQUIRE(applyOne(store, set).status == ApplyStatus::Applied);
  CHECK(load(store, id).record.version == 2);
}

TEST_CASE("update inserts new step runs and replaces existing ones by (instance, run)") {
  MemoryStore store;
  const InstanceId id = create(store);
  const InstanceId other = create(store);

  ChangeSet set = updateOf(load(store, id));
  StepRunRecord closed = stepRun(1, "Submit", StepRunStatus::Completed);
  closed.instance = id;
  closed.hasCompletion = true;
  closed.completion = Fields{{"Status", "Approved"}};
  closed.finishedAt = kT0 + std::chrono::seconds(5);
  StepRunRecord next = stepRun(2, "Notify", StepRunStatus::Starting);
  next.instance = id;
  set.instance.currentRun = 2;
  set.instance.lastRun = 2;
  set.stepRuns = {closed, next};
  REQUIRE(applyOne(store, set).status == ApplyStatus::Applied);

  auto run1 = store.loadStepRun(id, 1);
  REQUIRE(run1.has_value());
  CHECK(*run1 == closed);
  auto run2 = store.loadStepRun(id, 2);
  REQUIRE(run2.has_value());
  CHECK(*run2 == next);
  CHECK(load(store, id).record.currentRun == 2);

  // The other instance's run 1 has the same run number and is untouched.
  auto otherRun = store.loadStepRun(other, 1);
  REQUIRE(otherRun.has_value());
  CHECK(otherRun->status == StepRunStatus::Starting);
  CHECK(otherRun->step == "Submit");
  CHECK(hasCode(store.loadStepRun(other, 2), Errc::NotFound));
}

TEST_CASE("update with a stale version is a Conflict and writes nothing") {
  MemoryStore store;
  const InstanceId id = create(store, creation({{"OrderId", "A-1"}}));
  const InstanceSnapshot original = load(store, id);
  REQUIRE(applyOne(store, updateOf(original)).status == ApplyStatus::Applied);
  const InstanceSnapshot current = load(store, id);
  REQUIRE(current.record.version == 2);
  const StepRunRecord run1 = store.loadStepRun(id, 1).value();

  ChangeSet stale = updateOf(original);  // expects version 1
  SECTION("an older version") {}
  SECTION("a newer version") { stale.expectedVersion = 3; }
  stale.instance.status = InstanceStatus::Failed;
  stale.instance.error = "stale";
  stale.fields = Fields{{"OrderId", "overwritten"}, {"New", 1}};
  StepRunRecord replaced = stepRun(1, "Submit", StepRunStatus::Failed);
  replaced.instance = id;
  stale.stepRuns = {replaced, stepRun(2, "Inserted")};

  const ApplyResult result = applyOne(store, stale);
  CHECK(result.status == ApplyStatus::Conflict);
  CHECK(result.instance == id);

  const InstanceSnapshot after = load(store, id);
  CHECK(after.record == current.record);
  CHECK(after.fields == current.fields);
  CHECK(store.loadStepRun(id, 1).value() == run1);
  CHECK(hasCode(store.loadStepRun(id, 2), Errc::NotFound));
}

TEST_CASE("a batch reports each set's status in order") {
  MemoryStore store;
  const InstanceId a = create(store, creation({{"OrderId", "a"}}));
  const InstanceId b = create(store, creation({{"OrderId", "b"}}));
  const InstanceSnapshot a1 = load(store, a);
  const InstanceSnapshot b1 = load(store, b);

  ChangeSet good = updateOf(a1);
  good.fields = Fields{{"OrderId", "a-good"}};
  // Stale because `good` (earlier in the same batch) moves a to version 2.
  ChangeSet stale = updateOf(a1);
  stale.fields = Fields{{"OrderId", "a-stale"}};
  ChangeSet goodForB = updateOf(b1);
  goodForB.fields = Fields{{"OrderId", "b-good"}};

  std::vector<ChangeSet> batch;
  batch.push_back(good);
  batch.push_back(stale);
  batch.push_back(goodForB);
  const auto results = applyAll(store, std::move(batch));
  REQUIRE(results.size() == 3);
  CHECK(results[0].status == ApplyStatus::Applied);
  CHECK(results[0].instance == a);
  CHECK(results[1].status == ApplyStatus::Conflict);
  CHECK(results[1].instance == a);
  CHECK(results[2].status == ApplyStatus::Applied);
  CHECK(results[2].instance == b);

  CHECK(load(store, a).record.version == 2);
  CHECK(load(store, a).fields.get<std::string>("OrderId").value() == "a-good");
  CHECK(load(store, b).record.version == 2);
  CHECK(load(store, b).fields.get<std::string>("OrderId").value() == "b-good");
}

TEST_CASE("a batch may create and then update in order") {
  MemoryStore store;
  const InstanceId existing = create(store);
  ChangeSet update = updateOf(load(store, existing));
  update.fields = Fields{{"OrderId", "updated"}};

  std::vector<ChangeSet> batch;
  batch.push_back(creation({{"OrderId", "created"}}));
  batch.push_back(update);
  const auto results = applyAll(store, std::move(batch));
  REQUIRE(results.size() == 2);
  CHECK(results[0].status == ApplyStatus::Applied);
  CHECK(results[0].instance == existing + 1);
  CHECK(results[1].status == ApplyStatus::Applied);
  CHECK(load(store, existing + 1).fields.get<std::string>("OrderId").value() == "created");
  CHECK(load(store, existing).fields.get<std::string>("OrderId").value() == "updated");
}

TEST_CASE("an empty batch applies nothing and answers no results") {
  MemoryStore store;
  CHECK(applyAll(store, {}).empty());
  CHECK(create(store) == 1);
}

TEST_CASE("update of an instance that does not exist is a Conflict and creates nothing") {
  MemoryStore store;
  ChangeSet set = creation();
  set.instance.id = 5;
  set.expectedVersion = 1;
  const ApplyResult result = applyOne(store, set);
  CHECK(result.status == ApplyStatus::Conflict);
  CHECK(result.instance == 5);
  CHECK(hasCode(store.loadInstance(5), Errc::NotFound));
  CHECK(hasCode(store.loadStepRun(5, 1), Errc::NotFound));
  // The failed update consumed no id.
  CHECK(create(store) == 1);
}

// --- copies ----------------------------------------------------------------------------

TEST_CASE("returned snapshots and step runs are copies") {
  MemoryStore store;
  const InstanceId id = create(store, creation({{"OrderId", "A-1"}}));

  InstanceSnapshot snapshot = load(store, id);
  snapshot.record.status = InstanceStatus::Cancelled;
  snapshot.record.version = 50;
  snapshot.fields.set("OrderId", "mutated");
  snapshot.fields.set("Extra", true);

  StepRunRecord run = store.loadStepRun(id, 1).value();
  run.status = StepRunStatus::Failed;
  run.step = "mutated";

  const InstanceSnapshot again = load(store, id);
  CHECK(again.record.status == InstanceStatus::Running);
  CHECK(again.record.version == 1);
  CHECK(again.fields == Fields{{"OrderId", "A-1"}});
  const StepRunRecord runAgain = store.loadStepRun(id, 1).value();
  CHECK(runAgain.status == StepRunStatus::Starting);
  CHECK(runAgain.step == "Submit");
}

TEST_CASE("the store keeps copies of what it was given") {
  MemoryStore store;
  ChangeSet set = creation({{"OrderId", "A-1"}});
  std::vector<ChangeSet> batch{set};
  const auto results = applyAll(store, batch);
  REQUIRE(results.size() == 1);
  batch.front().fields.set("OrderId", "changed after apply");
  batch.front().instance.status = InstanceStatus::Failed;
  CHECK(load(store, 1).fields == Fields{{"OrderId", "A-1"}});
  CHECK(load(store, 1).record.status == InstanceStatus::Running);
}

// --- StoreWrapper ----------------------------------------------------------------------

namespace {

// Counts every call, overriding only apply() and passing the rest through.
class CountingStore final : public StoreWrapper {
 public:
  using StoreWrapper::StoreWrapper;
  Result<std::vector<ApplyResult>> apply(std::vector<ChangeSet> batch) override {
    ++applies;
    setsSeen += static_cast<int>(batch.size());
    return StoreWrapper::apply(std::move(batch));
  }
  int applies = 0;
  int setsSeen = 0;
};

}  // namespace

TEST_CASE("StoreWrapper forwards every call to its target") {
  auto target = std::make_shared<MemoryStore>();
  CountingStore wrapper(target);
  Store& store = wrapper;
  CHECK(&wrapper.target() == target.get());

  const InstanceId id = create(store, creation({{"OrderId", "via wrapper"}}));
  CHECK(id == 1);
  CHECK(wrapper.applies == 1);
  CHECK(wrapper.setsSeen == 1);

  // Written through the wrapper: visible in the target.
  CHECK(load(*target, id).fields.get<std::string>("OrderId").value() == "via wrapper");
  // Written to the target: visible through the wrapper, which adds nothing.
  ChangeSet update = updateOf(load(*target, id));
  update.fields = Fields{{"OrderId", "direct"}};
  REQUIRE(applyOne(*target, update).status == ApplyStatus::Applied);
  CHECK(wrapper.applies == 1);
  const InstanceSnapshot seen = load(store, id);
  CHECK(seen.record.version == 2);
  CHECK(seen.fields.get<std::string>("OrderId").value() == "direct");
  auto run = store.loadStepRun(id, 1);
  REQUIRE(run.has_value());
  CHECK(*run == target->loadStepRun(id, 1).value());

  // Results, conflicts and errors flow back unchanged.
  ChangeSet stale = updateOf(load(store, id));
  stale.expectedVersion = 1;
  std::vector<ChangeSet> batch;
  batch.push_back(stale);
  batch.push_back(updateOf(load(store, id)));
  const auto results = applyAll(store, std::move(batch));
  CHECK(wrapper.applies == 2);
  CHECK(wrapper.setsSeen == 3);
  REQUIRE(results.size() == 2);
  CHECK(results[0].status == ApplyStatus::Conflict);
  CHECK(results[1].status == ApplyStatus::Applied);
  CHECK(hasCode(store.loadInstance(id + 1), Errc::NotFound));
  CHECK(hasCode(store.loadStepRun(id, 9), Errc::NotFound));
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
  CHECK(create(*wrapper) == 1);
  wrapper.reset();
  CHECK(watch.expired());
}

// --- threads ---------------------------------------------------------------------------

namespace {

// Lets `count` threads start their loops together, so they contend from the
// first iteration instead of finishing before the next thread is created.
class StartGate {
 public:
  explicit StartGate(int count) : waiting_(count) {}
  void arriveAndWait() {
    waiting_.fetch_sub(1);
    while (waiting_.load() > 0) std::this_thread::yield();
  }

 private:
  std::atomic<int> waiting_;
};

}  // namespace

TEST_CASE("MemoryStore is safe to use from several threads") {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 250;
  MemoryStore store;

  SECTION("concurrent creates get distinct ids 1..N") {
    std::vector<std::vector<InstanceId>> ids(kThreads);
    std::atomic<int> failures{0};
    StartGate gate(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        gate.arriveAndWait();
        for (int i = 0; i < kPerThread; ++i) {
          std::vector<ChangeSet> batch;
          batch.push_back(creation({{"Thread", t}, {"Index", i}}));
          auto results = store.apply(std::move(batch));
          if (!results || results->size() != 1 || results->front().status != ApplyStatus::Applied) {
            ++failures;
            continue;
          }
          ids[t].push_back(results->front().instance);
        }
      });
    }
    for (auto& thread : threads) thread.join();

    CHECK(failures == 0);
    std::set<InstanceId> distinct;
    for (const auto& perThread : ids) distinct.insert(perThread.begin(), perThread.end());
    CHECK(distinct.size() == kThreads * kPerThread);
    CHECK(*distinct.begin() == 1);
    CHECK(*distinct.rbegin() == kThreads * kPerThread);
    // Each id holds the fields of the create that got it.
    int mismatched = 0;
    for (int t = 0; t < kThreads; ++t) {
      for (int i = 0; i < static_cast<int>(ids[t].size()); ++i) {
        auto snapshot = store.loadInstance(ids[t][i]);
        if (!snapshot || snapshot->fields != Fields{{"Thread", t}, {"Index", i}}) ++mismatched;
      }
    }
    CHECK(mismatched == 0);
  }

  SECTION("concurrent version-guarded updates of one instance lose none") {
    // Each thread reloads and retries on Conflict; every increment lands once.
    const InstanceId id = create(store, creation({{"Counter", 0}}));
    std::atomic<int> errors{0};
    StartGate gate(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&] {
        gate.arriveAndWait();
        for (int i = 0; i < kPerThread; ++i) {
          for (;;) {
            auto current = store.loadInstance(id);
            if (!current) {
              ++errors;
              return;
            }
            ChangeSet set = updateOf(*current);
            set.fields =
                Fields{{"Counter", current->fields.getOr<std::int64_t>("Counter", -1) + 1}};
            std::vector<ChangeSet> batch;
            batch.push_back(std::move(set));
            auto results = store.apply(std::move(batch));
            if (!results || results->size() != 1) {
              ++errors;
              return;
            }
            if (results->front().status == ApplyStatus::Applied) break;
          }
        }
      });
    }
    for (auto& thread : threads) thread.join();

    CHECK(errors == 0);
    const InstanceSnapshot after = load(store, id);
    CHECK(after.fields.get<std::int64_t>("Counter").value() == kThreads * kPerThread);
    CHECK(after.record.version == 1 + kThreads * kPerThread);
  }
}
