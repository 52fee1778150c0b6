// Pins SqliteStore's group commit: apply() calls that queue behind a commit in
// flight share the next transaction (one fsync), while each call's batch stays
// all-or-nothing and version-checked; a lone caller commits alone; reads do not
// wait for a commit. Groups are made deterministic by holding the database's
// write lock from a second connection: the leader waits in BEGIN IMMEDIATE while
// the test queues callers behind it, then releases the lock.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <SQLiteCpp/Database.h>

#include "store/sqlite/sqlite_store_probe.hpp"
#include "support/records.hpp"
#include "support/sqlite_support.hpp"
#include "support/sync_counting_vfs.hpp"
#include "support/test_support.hpp"

namespace {

using asyncflow::testing::TempDir;

using namespace asyncflow;
namespace fs = std::filesystem;
using asyncflow::testing::batchOf;
using asyncflow::testing::contains;
using asyncflow::testing::creationWith;
using asyncflow::testing::kT0;
using asyncflow::testing::Latch;
using asyncflow::testing::load;
using asyncflow::testing::openStore;
using asyncflow::testing::stepRun;
using asyncflow::testing::SyncCountingVfs;

using ApplyOutcome = Result<std::vector<ApplyResult>>;

// Options whose writers wait up to a minute for a lock held elsewhere: long
// enough for any test to queue its callers behind the waiting leader.
SqliteOptions patient(SqliteOptions options = {}) {
  options.busyTimeout = std::chrono::minutes(1);
  return options;
}

// An Order (version 1) waiting at `firstStep`, its OrderId "before".
ChangeSet waitingOrder(std::string firstStep = "Submit") {
  ChangeSet set = creationWith("Order", 1, InstanceStatus::Waiting,
                               {stepRun(1, std::move(firstStep), StepRunStatus::Waiting)});
  set.fields = Fields{{"OrderId", "before"}};
  return set;
}

// A version-checked update of `id` from `version`, setting field OrderId.
ChangeSet update(InstanceId id, std::uint64_t version, std::string orderId) {
  ChangeSet set = waitingOrder();
  set.instance.id = id;
  set.expectedVersion = version;
  set.instance.updatedAt = kT0 + std::chrono::seconds(1);
  set.fields = Fields{{"OrderId", std::move(orderId)}};
  set.stepRuns.clear();
  return set;
}

// Creates `count` instances in one batch; their ids.
std::vector<InstanceId> createInstances(Store& store, std::size_t count) {
  auto results = store.apply(std::vector<ChangeSet>(count, waitingOrder()));
  if (!results) FAIL("apply: " << results.error().toString());
  std::vector<InstanceId> ids;
  for (const ApplyResult& result : *results) {
    REQUIRE(result.status == ApplyStatus::Applied);
    ids.push_back(result.instance);
  }
  return ids;
}

// The single status of a one-set batch that must have been written or refused.
ApplyStatus statusOf(const ApplyOutcome& outcome) {
  if (!outcome) FAIL("apply: " << outcome.error().toString());
  REQUIRE(outcome->size() == 1);
  return outcome->front().status;
}

// apply() calls, each on its own thread, in the order they were started. Joins
// them all when it ends. Catch2 assertions stay on the test's thread.
class Callers {
 public:
  explicit Callers(SqliteStore& store) : store_(store) {}
  ~Callers() { join(); }
  Callers(const Callers&) = delete;
  Callers& operator=(const Callers&) = delete;

  // Starts apply(batch) and waits until it is in the store's commit queue, behind
  // the calls started before it (the first one leads).
  void queue(std::vector<ChangeSet> batch) {
    const std::size_t queued = SqliteStoreProbe::queuedWrites(store_);
    auto outcome = std::make_unique<ApplyOutcome>();
    threads_.emplace_back([this, &slot = *outcome, batch = std::move(batch)]() mutable {
      slot = store_.apply(std::move(batch));
    });
    outcomes_.push_back(std::move(outcome));
    while (SqliteStoreProbe::queuedWrites(store_) <= queued) std::this_thread::yield();
  }

  void join() {
    for (std::thread& thread : threads_) {
      if (thread.joinable()) thread.join();
    }
  }

  // The outcome of the i-th call; only after join().
  const ApplyOutcome& outcome(std::size_t i) const { return *outcomes_.at(i); }

 private:
  SqliteStore& store_;
  std::vector<std::thread> threads_;
  std::vector<std::unique_ptr<ApplyOutcome>> outcomes_;
};

using asyncflow::testing::WriteLock;

// Runs `threads` threads released together; each applies `perThread` one-set
// batches updating its own instance, each guarded by the version the previous
// one wrote. The number of batches that were not Applied.
int updateConcurrently(SqliteStore& store, const std::vector<InstanceId>& ids, int perThread) {
  std::vector<int> failures(ids.size(), 0);
  Latch ready(static_cast<int>(ids.size()));
  Latch go;
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < ids.size(); ++t) {
    threads.emplace_back([&, t] {
      ready.countDown();
      go.wait();
      std::uint64_t version = 1;
      for (int i = 0; i < perThread; ++i) {
        ChangeSet set = update(ids[t], version, std::to_string(i));
        HistoryEvent event;
        event.at = kT0;
        event.kind = HistoryKind::Heartbeat;
        event.detail = std::to_string(i);
        set.history.push_back(event);
        const ApplyOutcome outcome = store.apply(batchOf(std::move(set)));
        if (outcome && outcome->size() == 1 && outcome->front().status == ApplyStatus::Applied) {
          ++version;
        } else {
          ++failures[t];
        }
      }
    });
  }
  ready.wait();
  go.countDown();
  for (std::thread& thread : threads) thread.join();
  int total = 0;
  for (int f : failures) total += f;
  return total;
}

}  // namespace

TEST_CASE(
    "concurrent version-checked updates of distinct instances all apply and survive a reopen") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  constexpr int kThreads = 8;
  constexpr int kPerThread = 200;
  SqliteOptions options;
  options.synchronous = Synchronous::Normal;  // what is pinned is the grouping, not the fsync
  std::vector<InstanceId> ids;
  {
    auto store = openStore(path, patient(options));
    ids = createInstances(*store, kThreads);
    CHECK(updateConcurrently(*store, ids, kPerThread) == 0);
  }
  auto store = openStore(path, patient(options));
  for (InstanceId id : ids) {
    INFO("instance " << id);
    const InstanceSnapshot snapshot = load(*store, id);
    CHECK(snapshot.record.version == kPerThread + 1);
    CHECK(snapshot.fields == Fields{{"OrderId", std::to_string(kPerThread - 1)}});
    auto history = store->loadHistory(id);
    REQUIRE(history);
    REQUIRE(history->size() == static_cast<std::size_t>(kPerThread));
    CHECK(history->back().detail == std::to_string(kPerThread - 1));
  }
}

TEST_CASE("a lone caller commits once per batch, callers queued behind a commit share one") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  SyncCountingVfs::Installed counting;  // at synchronous=FULL, one WAL sync per commit

  SECTION("one thread: one commit per batch, as without grouping") {
    auto store = openStore(path, patient());
    const InstanceId id = createInstances(*store, 1).front();
    SyncCountingVfs::walSyncs = 0;
    for (std::uint64_t version = 1; version <= 20; ++version) {
      CHECK(statusOf(store->apply(batchOf(update(id, version, "x")))) == ApplyStatus::Applied);
    }
    CHECK(SyncCountingVfs::walSyncs == 20);
  }

  SECTION("seven callers queued behind a waiting leader commit together, after it") {
    auto store = openStore(path, patient());
    const std::vector<InstanceId> ids = createInstances(*store, 8);
    SyncCountingVfs::walSyncs = 0;
    WriteLock lock(path);
    Callers callers(*store);
    for (InstanceId id : ids) callers.queue(batchOf(update(id, 1, "after")));
    CHECK(SqliteStoreProbe::queuedWrites(*store) == 8);
    lock.release();
    callers.join();
    for (std::size_t i = 0; i < ids.size(); ++i) {
      CHECK(statusOf(callers.outcome(i)) == ApplyStatus::Applied);
      CHECK(load(*store, ids[i]).record.version == 2);
    }
    CHECK(SyncCountingVfs::walSyncs == 2);  // the leader's own group, then the other seven
    CHECK(SqliteStoreProbe::queuedWrites(*store) == 0);
  }

  SECTION("maxGroupSize caps a group; the rest form the next groups") {
    SqliteOptions options;
    options.maxGroupSize = 3;
    auto store = openStore(path, patient(options));
    const std::vector<InstanceId> ids = createInstances(*store, 8);
    SyncCountingVfs::walSyncs = 0;
    WriteLock lock(path);
    Callers callers(*store);
    for (InstanceId id : ids) callers.queue(batchOf(update(id, 1, "after")));
    lock.release();
    callers.join();
    for (std::size_t i = 0; i < ids.size(); ++i) {
      CHECK(statusOf(callers.outcome(i)) == ApplyStatus::Applied);
    }
    CHECK(SyncCountingVfs::walSyncs == 4);  // 1, then 3 + 3 + 1
  }

  SECTION("eight threads released together need fewer commits than batches") {
    auto store = openStore(path, patient());
    const std::vector<InstanceId> ids = createInstances(*store, 8);
    SyncCountingVfs::walSyncs = 0;
    CHECK(updateConcurrently(*store, ids, 25) == 0);
    CHECK(SyncCountingVfs::walSyncs < 8 * 25);
    for (InstanceId id : ids) CHECK(load(*store, id).record.version == 26);
  }
}

TEST_CASE("a batch that fails in SQL inside a group rolls back only itself") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  SyncCountingVfs::Installed counting;
  auto store = openStore(path, patient());
  const std::vector<InstanceId> ids = createInstances(*store, 3);
  const InstanceId leader = ids[0];
  const InstanceId before = ids[1];
  const InstanceId victim = ids[2];
  {
    SQLite::Database other(path, SQLite::OPEN_READWRITE);
    other.exec(
        "CREATE TRIGGER refuse BEFORE INSERT ON step_runs WHEN NEW.step = 'Boom' "
        "BEGIN SELECT RAISE(ABORT, 'injected failure'); END");
  }
  // The failing batch first writes to `victim`, then refuses a row.
  std::vector<ChangeSet> failing;
  failing.push_back(update(victim, 1, "after"));
  failing.back().stepRuns.push_back(stepRun(2, "Notify", StepRunStatus::Waiting));
  failing.push_back(waitingOrder("Boom"));

  SyncCountingVfs::walSyncs = 0;
  WriteLock lock(path);
  Callers callers(*store);
  callers.queue(batchOf(update(leader, 1, "after")));  // leads alone
  callers.queue(batchOf(update(before, 1, "after")));  // the group: before it,
  callers.queue(std::move(failing));                   // the failing batch,
  callers.queue(batchOf(waitingOrder()));              // and a create after it
  lock.release();
  callers.join();

  CHECK(SyncCountingVfs::walSyncs == 2);  // the last three shared one commit
  CHECK(statusOf(callers.outcome(0)) == ApplyStatus::Applied);
  CHECK(statusOf(callers.outcome(1)) == ApplyStatus::Applied);
  REQUIRE_FALSE(callers.outcome(2));
  CHECK(callers.outcome(2).error().code == Errc::StoreError);
  CHECK(contains(callers.outcome(2).error().message, "injected failure"));
  CHECK(contains(callers.outcome(2).error().message, "nothing was written"));
  CHECK(statusOf(callers.outcome(3)) == ApplyStatus::Applied);

  CHECK(load(*store, before).fields == Fields{{"OrderId", "after"}});
  const InstanceSnapshot untouched = load(*store, victim);
  CHECK(untouched.record.version == 1);
  CHECK(untouched.fields == Fields{{"OrderId", "before"}});
  CHECK(hasCode(store->loadStepRun(victim, 2), Errc::NotFound));
  // The refused create consumed no id: the create after it got the next one.
  CHECK(callers.outcome(3)->front().instance == victim + 1);
  CHECK(hasCode(store->loadInstance(victim + 2), Errc::NotFound));
}

TEST_CASE("when the group's transaction is lost, every batch of the group fails unwritten") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  SyncCountingVfs::Installed counting;
  std::vector<InstanceId> ids;
  std::string expected;
  {
    auto store = openStore(path, patient());
    ids = createInstances(*store, 3);
    SyncCountingVfs::walSyncs = 0;

    SECTION("a trigger's RAISE(ROLLBACK) ends the whole transaction") {
      SQLite::Database other(path, SQLite::OPEN_READWRITE);
      other.exec(
          "CREATE TRIGGER refuse BEFORE INSERT ON step_runs WHEN NEW.step = 'Boom' "
          "BEGIN SELECT RAISE(ROLLBACK, 'injected rollback'); END");
      expected = "injected rollback";
    }
    SECTION("the COMMIT's fsync fails") {
      SyncCountingVfs::failWalSync = 2;  // the leader's commit is sync 1, the group's is 2
      expected = "disk I/O error";
    }

    WriteLock lock(path);
    Callers callers(*store);
    callers.queue(batchOf(update(ids[0], 1, "after")));  // leads alone and commits
    callers.queue(batchOf(update(ids[1], 1, "after")));
    callers.queue(batchOf(update(ids[2], 1, "after")));
    callers.queue(batchOf(waitingOrder(expected == "injected rollback" ? "Boom" : "Submit")));
    lock.release();
    callers.join();

    CHECK(statusOf(callers.outcome(0)) == ApplyStatus::Applied);
    for (std::size_t i = 1; i < 4; ++i) {
      INFO("caller " << i);
      REQUIRE_FALSE(callers.outcome(i));
      CHECK(callers.outcome(i).error().code == Errc::StoreError);
      CHECK(contains(callers.outcome(i).error().message, expected));
      CHECK(contains(callers.outcome(i).error().message, "nothing was written"));
    }
    CHECK(load(*store, ids[1]).record.version == 1);
    CHECK(load(*store, ids[2]).record.version == 1);
    CHECK(hasCode(store->loadInstance(ids[2] + 1), Errc::NotFound));
    // The store goes on working.
    CHECK(statusOf(store->apply(batchOf(update(ids[1], 1, "later")))) == ApplyStatus::Applied);
  }
  auto reopened = openStore(path, patient());
  CHECK(load(*reopened, ids[0]).record.version == 2);
  CHECK(load(*reopened, ids[1]).fields == Fields{{"OrderId", "later"}});
  CHECK(load(*reopened, ids[2]).record.version == 1);
  CHECK(hasCode(reopened->loadInstance(ids[2] + 1), Errc::NotFound));
}

TEST_CASE("two callers updating one instance from one version in one group: one applies") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  SyncCountingVfs::Installed counting;
  auto store = openStore(path, patient());
  const std::vector<InstanceId> ids = createInstances(*store, 2);
  const InstanceId contested = ids[1];
  SyncCountingVfs::walSyncs = 0;
  WriteLock lock(path);
  Callers callers(*store);
  callers.queue(batchOf(update(ids[0], 1, "after")));  // leads alone
  callers.queue(batchOf(update(contested, 1, "first")));
  callers.queue(batchOf(update(contested, 1, "second")));
  lock.release();
  callers.join();

  CHECK(SyncCountingVfs::walSyncs == 2);
  // Queue order is apply order: the first writes version 2, the second then conflicts.
  CHECK(statusOf(callers.outcome(1)) == ApplyStatus::Applied);
  CHECK(statusOf(callers.outcome(2)) == ApplyStatus::Conflict);
  const InstanceSnapshot after = load(*store, contested);
  CHECK(after.record.version == 2);
  CHECK(after.fields == Fields{{"OrderId", "first"}});
}

TEST_CASE("a taken start key inside a group refuses only its own set") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  SyncCountingVfs::Installed counting;
  auto store = openStore(path, patient());
  const std::vector<InstanceId> ids = createInstances(*store, 2);
  // A key claimed before the group, and one claimed by an earlier caller in it.
  const auto claiming = [](std::string key, std::string orderId) {
    ChangeSet set = waitingOrder();
    set.fields = Fields{{"OrderId", std::move(orderId)}};
    set.startKey = StartKey{std::move(key), 7};
    return set;
  };
  const ApplyOutcome held = store->apply(batchOf(claiming("before", "holder")));
  REQUIRE(statusOf(held) == ApplyStatus::Applied);
  const InstanceId holder = held->front().instance;
  std::vector<ChangeSet> mixed;  // one caller's batch: a set that applies, then a taken key
  mixed.push_back(update(ids[1], 1, "mixed"));
  mixed.push_back(claiming("before", "mixed loser"));

  SyncCountingVfs::walSyncs = 0;
  WriteLock lock(path);
  Callers callers(*store);
  callers.queue(batchOf(update(ids[0], 1, "after")));           // 0: leads alone
  callers.queue(batchOf(claiming("before", "loser")));          // 1: taken before the group
  callers.queue(batchOf(claiming("in-group", "winner")));       // 2: claims a new key
  callers.queue(batchOf(claiming("in-group", "group loser")));  // 3: taken by 2, uncommitted
  callers.queue(std::move(mixed));                              // 4
  callers.queue(batchOf(update(ids[0], 2, "last")));            // 5: after them all
  lock.release();
  callers.join();

  CHECK(SyncCountingVfs::walSyncs == 2);  // the leader's commit, then the group's
  CHECK(statusOf(callers.outcome(0)) == ApplyStatus::Applied);
  REQUIRE(callers.outcome(1));
  CHECK(callers.outcome(1)->front().status == ApplyStatus::KeyTaken);
  CHECK(callers.outcome(1)->front().instance == holder);
  REQUIRE(callers.outcome(2));
  CHECK(callers.outcome(2)->front().status == ApplyStatus::Applied);
  const InstanceId winner = callers.outcome(2)->front().instance;
  CHECK(winner == holder + 1);  // the refused create took no id
  REQUIRE(callers.outcome(3));
  CHECK(callers.outcome(3)->front().status == ApplyStatus::KeyTaken);
  CHECK(callers.outcome(3)->front().instance == winner);
  REQUIRE(callers.outcome(4));
  REQUIRE(callers.outcome(4)->size() == 2);
  CHECK((*callers.outcome(4))[0].status == ApplyStatus::Applied);
  CHECK((*callers.outcome(4))[1].status == ApplyStatus::KeyTaken);
  CHECK((*callers.outcome(4))[1].instance == holder);
  CHECK(statusOf(callers.outcome(5)) == ApplyStatus::Applied);

  CHECK(load(*store, ids[0]).fields == Fields{{"OrderId", "last"}});
  CHECK(load(*store, ids[1]).fields == Fields{{"OrderId", "mixed"}});
  CHECK(load(*store, holder).fields == Fields{{"OrderId", "holder"}});
  CHECK(load(*store, winner).fields == Fields{{"OrderId", "winner"}});
  CHECK(hasCode(store->loadInstance(winner + 1), Errc::NotFound));
  CHECK(store->findStartKey("Order", "before").value() == StartKeyRecord{holder, 1, 7});
  CHECK(store->findStartKey("Order", "in-group").value() == StartKeyRecord{winner, 1, 7});
}

TEST_CASE("reads do not wait for a write in progress, and see it once apply returns") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  auto store = openStore(path, patient());
  const InstanceId id = createInstances(*store, 1).front();
  WriteLock lock(path);
  Callers callers(*store);
  callers.queue(batchOf(update(id, 1, "after")));  // holds the writer, waiting for the lock
  CHECK(load(*store, id).record.version == 1);
  CHECK(store->loadStepRun(id, 1)->status == StepRunStatus::Waiting);
  auto waiting = store->listWaiting(WaitingQuery{});
  REQUIRE(waiting);
  CHECK(waiting->size() == 1);
  lock.release();
  callers.join();
  CHECK(statusOf(callers.outcome(0)) == ApplyStatus::Applied);
  CHECK(load(*store, id).fields == Fields{{"OrderId", "after"}});
}

TEST_CASE("an in-memory store groups commits too, its reads sharing the one connection") {
  auto opened = SqliteStore::open(":memory:");
  REQUIRE(opened);
  SqliteStore& store = **opened;
  const std::vector<InstanceId> ids = createInstances(store, 4);
  CHECK(updateConcurrently(store, ids, 50) == 0);
  for (InstanceId id : ids) CHECK(load(store, id).record.version == 51);
}
