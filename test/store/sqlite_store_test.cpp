// Pins what is specific to SqliteStore: data surviving a reopen byte-exactly,
// WAL and synchronous, the versioned schema and how open() treats files that are
// not (or not yet) its own, busy handling, all-or-nothing batches, the schema an
// operator reads, leases, declarations and changeMark across two stores on one
// file, and an engine resuming on a reopened file. The Store contract shared
// with every store is the conformance suite's.
#include "asyncflow/sqlite_store.hpp"

#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <SQLiteCpp/Database.h>
#include <SQLiteCpp/Statement.h>

#include "store/sqlite/statements.hpp"
#include "support/records.hpp"
#include "support/sqlite_support.hpp"
#include "support/sync_counting_vfs.hpp"
#include "support/test_support.hpp"

namespace {

using asyncflow::testing::TempDir;

using namespace asyncflow;
namespace fs = std::filesystem;
using asyncflow::testing::applyBatch;
using asyncflow::testing::contains;
using asyncflow::testing::CountingRandom;
using asyncflow::testing::create;
using asyncflow::testing::creation;
using asyncflow::testing::errorOf;
using asyncflow::testing::kT0;
using asyncflow::testing::load;
using asyncflow::testing::openStore;
using asyncflow::testing::readBytes;
using asyncflow::testing::stepRun;
using asyncflow::testing::SyncCountingVfs;
using asyncflow::testing::updateOf;
using asyncflow::testing::writeBytes;

constexpr int kAsyncflowApplicationId = 0x41464C57;  // "AFLW"

// A second connection to the store's file, as an operator or another process.
SQLite::Database connect(const std::string& path) {
  return SQLite::Database(path, SQLite::OPEN_READWRITE);
}

// Fields of every type, with the values most likely to be mangled on the way.
Fields edgeFields() {
  Fields f;
  f.set("Empty", "");
  f.set("WithNuls", std::string("a\0b\0\0c", 6));
  f.set("InvalidUtf8", std::string("\xff\xfe\xc3\x28 \x80", 6));
  f.set("Unicode", "Zürich — 東京");
  f.set("Int64Min", std::numeric_limits<std::int64_t>::min());
  f.set("Int64Max", std::numeric_limits<std::int64_t>::max());
  f.set("Zero", 0);
  f.set("NegativeZero", -0.0);
  f.set("Largest", std::numeric_limits<double>::max());
  f.set("Tiniest", std::numeric_limits<double>::denorm_min());
  f.set("Third", 1.0 / 3.0);
  f.set("Whole", 2.0);  // a double, even though it has no fraction
  f.set("Infinity", -std::numeric_limits<double>::infinity());
  f.set("True", true);
  f.set("False", false);
  f.set("Null", nullptr);
  return f;
}

// The fields' values compare equal, and so does the sign of every double.
void checkSameFields(const Fields& actual, const Fields& expected) {
  CHECK(actual == expected);
  for (const auto& [name, value] : expected) {
    const Value* got = actual.find(name);
    REQUIRE(got != nullptr);
    CHECK(got->type() == value.type());
    if (value.type() == Type::Double) {
      INFO(name);
      CHECK(std::signbit(std::get<double>(got->variant())) ==
            std::signbit(std::get<double>(value.variant())));
    }
  }
}

}  // namespace

// --- durability of what is stored ------------------------------------------------------

TEST_CASE("an instance, its fields and its step runs survive close and reopen exactly") {
  TempDir dir;
  const std::string path = dir.file("store.db");

  ChangeSet set = creation("Order", 1, edgeFields());
  set.instance.status = InstanceStatus::Waiting;
  set.instance.currentRun = 4;
  set.instance.lastRun = 4;
  set.instance.error = std::string("err\0or", 6);
  set.instance.updatedAt = kT0 + std::chrono::microseconds(123'456);
  // Kept as written, even on a Waiting instance; an owner of any bytes; before 1970.
  set.instance.leaseOwner = std::string("host\0\xff", 6);
  set.instance.leaseExpiry = Timestamp(std::chrono::microseconds(-7));

  // Closed, with a completion that was applied, and every timestamp set.
  StepRunRecord closed = stepRun(1, "Submit", StepRunStatus::Completed);
  closed.attempt = 3;
  closed.hasCompletion = true;
  closed.error = "late";
  closed.waitingSince = kT0 + std::chrono::seconds(1);
  closed.finishedAt = kT0 + std::chrono::seconds(2);
  closed.deadline = kT0 + std::chrono::hours(24);
  // Early completion still pending, with fields of every type; before 1970.
  StepRunRecord early = stepRun(2, "Approve", StepRunStatus::Starting);
  early.hasCompletion = true;
  early.completion = edgeFields();
  early.createdAt = Timestamp(std::chrono::microseconds(-1'500'001));
  // Waiting with a deadline; a bare serial (no secret).
  StepRunRecord waiting = stepRun(3, "Wait", StepRunStatus::Waiting);
  waiting.secret.clear();
  waiting.waitingSince = kT0 + std::chrono::microseconds(1);
  waiting.deadline = Timestamp{};  // a deadline at the epoch is still a deadline
  // A sync run at the epoch with nothing set.
  StepRunRecord plain;
  plain.run = 4;
  plain.step = "Validate";
  plain.kind = StepKind::Sync;
  plain.status = StepRunStatus::Ready;
  set.stepRuns = {closed, early, waiting, plain};

  InstanceId id = 0;
  {
    auto store = openStore(path);
    id = create(*store, set);
  }
  auto store = openStore(path);

  const InstanceSnapshot snapshot = load(*store, id);
  InstanceRecord expected = set.instance;
  expected.id = id;
  expected.version = 1;
  CHECK(snapshot.record == expected);
  checkSameFields(snapshot.fields, set.fields);

  for (StepRunRecord run : set.stepRuns) {
    run.instance = id;
    auto loaded = store->loadStepRun(id, run.run);
    REQUIRE(loaded.has_value());
    CHECK(*loaded == run);
    checkSameFields(loaded->completion, run.completion);
  }
}

TEST_CASE("a NaN double is stored as NULL and reads back as NaN") {
  TempDir dir;
  auto store = openStore(dir.file("store.db"));
  const InstanceId id =
      create(*store, creation("Order", 1, {{"Ratio", std::numeric_limits<double>::quiet_NaN()}}));
  const InstanceSnapshot snapshot = load(*store, id);
  const Value* ratio = snapshot.fields.find("Ratio");
  REQUIRE(ratio != nullptr);
  REQUIRE(ratio->type() == Type::Double);
  CHECK(std::isnan(std::get<double>(ratio->variant())));
}

TEST_CASE("instance ids are never reused, even after the newest instance is deleted") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  auto store = openStore(path);
  CHECK(create(*store) == 1);
  CHECK(create(*store) == 2);
  {
    SQLite::Database operatorDb = connect(path);
    operatorDb.exec("DELETE FROM step_runs WHERE instance_id = 2");
    operatorDb.exec("DELETE FROM fields WHERE instance_id = 2");
    operatorDb.exec("DELETE FROM instances WHERE id = 2");
  }
  CHECK(hasCode(store->loadInstance(2), Errc::NotFound));
  CHECK(create(*store) == 3);
}

// --- journal and durability settings ---------------------------------------------------

namespace {

// Applies `count` batches of one new instance each.
void createEach(Store& store, int count) {
  for (int i = 0; i < count; ++i) create(store);
}

}  // namespace

TEST_CASE("the journal is WAL, and synchronous is FULL by default and NORMAL when asked") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  SyncCountingVfs::Installed counting;

  SECTION("default: FULL syncs the WAL on every commit, once per batch") {
    auto store = openStore(path);
    {
      SQLite::Database other = connect(path);
      CHECK(other.execAndGet("PRAGMA journal_mode").getString() == "wal");
    }
    SyncCountingVfs::walSyncs = 0;
    createEach(*store, 5);
    CHECK(SyncCountingVfs::walSyncs >= 5);

    // A batch is one transaction: ten change sets, one commit.
    std::vector<ChangeSet> batch(10, creation());
    SyncCountingVfs::walSyncs = 0;
    CHECK(applyBatch(*store, std::move(batch)).size() == 10);
    CHECK(SyncCountingVfs::walSyncs == 1);
  }

  SECTION("NORMAL: commits do not sync; the WAL is synced at checkpoints only") {
    SqliteOptions options;
    options.synchronous = Synchronous::Normal;
    auto store = openStore(path, options);
    SyncCountingVfs::walSyncs = 0;
    createEach(*store, 5);
    CHECK(SyncCountingVfs::walSyncs == 0);
    CHECK(load(*store, 5).record.id == 5);
  }
}

TEST_CASE("a new file gets the page size asked for, an existing file keeps its own") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  const auto pageSizeOf = [&] { return connect(path).execAndGet("PRAGMA page_size").getInt(); };

  SECTION("default: 1 KiB pages") {
    openStore(path);
    CHECK(pageSizeOf() == 1024);
  }
  SECTION("a chosen size is used for a new file and ignored when it is reopened") {
    SqliteOptions options;
    options.pageSize = 4096;
    createEach(*openStore(path, options), 3);
    CHECK(pageSizeOf() == 4096);
    auto reopened = openStore(path);  // default 1024: the file keeps 4096
    CHECK(load(*reopened, 3).record.id == 3);
    CHECK(pageSizeOf() == 4096);
  }
  SECTION("a size that is not a power of two from 512 to 65536 is refused, creating nothing") {
    for (const int bad : {0, -1024, 256, 1000, 131072}) {
      CAPTURE(bad);
      SqliteOptions options;
      options.pageSize = bad;
      auto store = SqliteStore::open(path, options);
      REQUIRE_FALSE(store);
      CHECK(store.error().code == Errc::InvalidArgument);
      CHECK(contains(store.error().message, "page size"));
      CHECK_FALSE(fs::exists(path));
    }
  }
}

// --- the schema and its versions --------------------------------------------------------

TEST_CASE("a new database records schema versions 1 to 6 and asyncflow's application id") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  openStore(path);
  openStore(path);  // reopening applies nothing again

  SQLite::Database db = connect(path);
  CHECK(SqliteStore::schemaVersion() == 6);
  CHECK(db.execAndGet("PRAGMA application_id").getInt() == kAsyncflowApplicationId);
  SQLite::Statement migrations(
      db, "SELECT version, description, applied_at FROM asyncflow_migrations ORDER BY version");
  for (int version = 1; version <= 6; ++version) {
    INFO("migration " << version);
    REQUIRE(migrations.executeStep());
    CHECK(migrations.getColumn(0).getInt() == version);
    CHECK_FALSE(migrations.getColumn(1).getString().empty());
    CHECK(migrations.getColumn(2).getInt64() > 0);
  }
  CHECK_FALSE(migrations.executeStep());
  for (const char* table : {"instances", "fields", "step_runs", "completion_fields", "history",
                            "start_keys", "process_versions", "process_fields", "process_steps"}) {
    INFO(table);
    CHECK(db.tableExists(table));
  }
}

TEST_CASE("a database with a newer schema is refused and left unchanged") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  {
    auto store = openStore(path);
    create(*store);
  }
  {
    SQLite::Database db = connect(path);
    db.exec("INSERT INTO asyncflow_migrations VALUES (99, 'from the future', 0)");
  }
  const std::string before = readBytes(path);

  const Error error = errorOf(SqliteStore::open(path));
  CHECK(error.code == Errc::StoreError);
  CHECK(contains(error.message, "schema version 99 is newer than this library's 6"));
  CHECK(readBytes(path) == before);
  CHECK_FALSE(fs::exists(path + "-wal"));
}

TEST_CASE("a database with an older schema is migrated to the current one") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  {
    // Version 0: asyncflow's id and an empty migrations table, nothing else.
    SQLite::Database db(path, SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE);
    db.exec("PRAGMA application_id = " + std::to_string(kAsyncflowApplicationId));
    db.exec(
        "CREATE TABLE asyncflow_migrations (version INTEGER PRIMARY KEY, "
        "description TEXT NOT NULL, applied_at INTEGER NOT NULL)");
  }
  auto store = openStore(path);
  CHECK(create(*store) == 1);
  SQLite::Database db = connect(path);
  CHECK(db.execAndGet("SELECT group_concat(version) FROM asyncflow_migrations").getString() ==
        "1,2,3,4,5,6");
  CHECK(db.execAndGet("PRAGMA journal_mode").getString() == "wal");
}

namespace {

// Schema version 1 of the 0.x series (migration 1 and the table recording it),
// so a test can build the file an older asyncflow left behind. Nothing is
// released before 1.0, so until then migration 1 may still be redone in place
// and this copy is refreshed to match it (last when its CHECKs became OR-chains).
// From 1.0 on it is frozen as released: never edit it.
constexpr const char* kSchemaVersion1Sql = R"sql(
CREATE TABLE asyncflow_migrations (
  version     INTEGER PRIMARY KEY,
  description TEXT    NOT NULL,
  applied_at  INTEGER NOT NULL  -- microseconds since the Unix epoch
);
INSERT INTO asyncflow_migrations
  VALUES (1, 'instances, fields, step runs, completion fields and the waiting_steps view', 1);
CREATE TABLE instances (
  id              INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused
  process         TEXT    NOT NULL,
  process_version INTEGER NOT NULL,
  status          TEXT    NOT NULL
                  CHECK (status = 'Running' OR status = 'Waiting' OR status = 'Completed'
                      OR status = 'Failed' OR status = 'Cancelled'),
  version         INTEGER NOT NULL,  -- optimistic-concurrency counter
  current_run     INTEGER NOT NULL,
  last_run        INTEGER NOT NULL,
  error           TEXT    NOT NULL,
  created_at      INTEGER NOT NULL,
  updated_at      INTEGER NOT NULL
);

-- Recovery: the Running instances of one process version, in id order.
CREATE INDEX instances_running ON instances (process, process_version)
  WHERE status = 'Running';

CREATE TABLE fields (
  instance_id INTEGER NOT NULL REFERENCES instances (id),
  name        TEXT    NOT NULL,
  type        TEXT    NOT NULL CHECK (type = 'Null' OR type = 'Bool' OR type = 'Int64'
                      OR type = 'Double' OR type = 'String'),
  value,
  PRIMARY KEY (instance_id, name)
) WITHOUT ROWID;

-- The key (instance_id, run) is what a serial "{instance_id}_{run}_{secret}" names.
CREATE TABLE step_runs (
  instance_id    INTEGER NOT NULL REFERENCES instances (id),
  run            INTEGER NOT NULL,
  step           TEXT    NOT NULL,
  kind           TEXT    NOT NULL CHECK (kind = 'Sync' OR kind = 'Async'),
  status         TEXT    NOT NULL CHECK (status = 'Ready' OR status = 'Starting' OR status = 'Waiting'
                      OR status = 'Completed' OR status = 'Failed' OR status = 'TimedOut'
                      OR status = 'Cancelled'),
  attempt        INTEGER NOT NULL,
  secret         TEXT    NOT NULL,  -- '' for a bare serial
  has_completion INTEGER NOT NULL,  -- 0 or 1
  error          TEXT    NOT NULL,
  created_at     INTEGER NOT NULL,
  waiting_since  INTEGER,           -- NULL: never waited
  finished_at    INTEGER,           -- NULL: open
  deadline       INTEGER,           -- NULL: no timeout
  PRIMARY KEY (instance_id, run)
) WITHOUT ROWID;

-- Waiting runs in serial order, all of them or of one step; and the timers.
CREATE INDEX step_runs_waiting ON step_runs (instance_id, run)
  WHERE status = 'Waiting';
CREATE INDEX step_runs_waiting_step ON step_runs (step, instance_id, run)
  WHERE status = 'Waiting';
CREATE INDEX step_runs_waiting_deadline ON step_runs (deadline)
  WHERE status = 'Waiting' AND deadline IS NOT NULL;

-- The fields of a completion that arrived before its step waited.
CREATE TABLE completion_fields (
  instance_id INTEGER NOT NULL,
  run         INTEGER NOT NULL,
  name        TEXT    NOT NULL,
  type        TEXT    NOT NULL CHECK (type = 'Null' OR type = 'Bool' OR type = 'Int64'
                      OR type = 'Double' OR type = 'String'),
  value,
  PRIMARY KEY (instance_id, run, name),
  FOREIGN KEY (instance_id, run) REFERENCES step_runs (instance_id, run)
) WITHOUT ROWID;

-- For operators: what waits, under which serial, since when (UTC).
CREATE VIEW waiting_steps AS
SELECT r.instance_id || '_' || r.run ||
         CASE WHEN r.secret = '' THEN '' ELSE '_' || r.secret END AS serial,
       r.instance_id,
       i.process,
       i.process_version,
       r.step,
       datetime(r.waiting_since / 1000000, 'unixepoch') AS waiting_since,
       datetime(r.deadline / 1000000, 'unixepoch') AS deadline
FROM step_runs AS r JOIN instances AS i ON i.id = r.instance_id
WHERE r.status = 'Waiting';
)sql";

}  // namespace

TEST_CASE("a version 1 database with a waiting run migrates to 6 and keeps working") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  const std::int64_t t0 = 1'700'000'000'000'000;  // kT0 in microseconds
  {
    // What asyncflow 1 wrote: an instance waiting in run 2, after a completed run 1,
    // with an early completion pending on run 3.
    SQLite::Database db(path, SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE);
    db.exec("PRAGMA application_id = " + std::to_string(kAsyncflowApplicationId));
    db.exec("PRAGMA journal_mode = WAL");
    db.exec(kSchemaVersion1Sql);
    db.exec(
        "INSERT INTO instances (process, process_version, status, version, current_run, "
        "last_run, error, created_at, updated_at) "
        "VALUES ('Order', 2, 'Waiting', 3, 2, 3, '', 1700000000000000, 1700000000000007)");
    db.exec("INSERT INTO fields VALUES (1, 'OrderId', 'String', 'A-17')");
    db.exec(
        "INSERT INTO step_runs VALUES "
        "(1, 1, 'Submit', 'Sync', 'Completed', 1, '', 0, '', 1700000000000000, NULL, "
        "1700000000000001, NULL), "
        "(1, 2, 'Approve', 'Async', 'Waiting', 1, 'c2VjcmV0', 0, '', 1700000000000002, "
        "1700000000000003, NULL, 1700003600000000), "
        "(1, 3, 'Audit', 'Async', 'Starting', 1, 'c2VjcmV0', 1, '', 1700000000000004, NULL, "
        "NULL, NULL)");
    db.exec("INSERT INTO completion_fields VALUES (1, 3, 'Audited', 'Bool', 1)");
  }

  auto store = openStore(path);
  {
    SQLite::Database db = connect(path);
    CHECK(db.execAndGet("SELECT group_concat(version) FROM asyncflow_migrations").getString() ==
          "1,2,3,4,5,6");
    CHECK(db.execAndGet("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND "
                        "name = 'step_runs_waiting_key'")
              .getInt() == 1);
    CHECK(db.execAndGet("SELECT count(*) FROM step_runs WHERE correlation_key IS NOT NULL")
              .getInt() == 0);
  }

  // The old rows read back whole, with no correlation key.
  StepRunRecord waiting = stepRun(2, "Approve", StepRunStatus::Waiting);
  waiting.instance = 1;
  waiting.secret = "c2VjcmV0";
  waiting.createdAt = Timestamp(std::chrono::microseconds(t0 + 2));
  waiting.waitingSince = Timestamp(std::chrono::microseconds(t0 + 3));
  waiting.deadline = kT0 + std::chrono::hours(1);
  auto loaded = store->loadStepRun(1, 2);
  REQUIRE(loaded.has_value());
  CHECK(loaded->correlationKey.empty());
  CHECK(*loaded == waiting);
  auto early = store->loadStepRun(1, 3);
  REQUIRE(early.has_value());
  CHECK(early->completion == Fields{{"Audited", true}});
  const InstanceSnapshot before = load(*store, 1);
  CHECK(before.record.version == 3);
  CHECK(before.fields == Fields{{"OrderId", "A-17"}});
  auto rows = store->listWaiting(WaitingQuery{});
  REQUIRE(rows.has_value());
  REQUIRE(rows->size() == 1);
  CHECK(rows->front().run == waiting);

  // The new queries work on the old rows.
  CHECK(store->nextDeadline(Timestamp::min()).value() == waiting.deadline);
  DueQuery due;
  due.now = *waiting.deadline - std::chrono::microseconds(1);
  CHECK(store->listDue(due).value().empty());
  due.now = *waiting.deadline;
  CHECK(store->listDue(due).value() == std::vector<DueRun>{{{1, 2}, *waiting.deadline}});
  CHECK(store->findByKey(KeyQuery{"Order", "Approve", "A-17", 2}).value().empty());
  // As in every store, the empty key means "no key" and finds nothing.
  CHECK(store->findByKey(KeyQuery{"Order", "Approve", "", 2}).value().empty());
  CHECK(store->loadHistory(1).value().empty());

  // And the old rows take keys and history.
  ChangeSet set = updateOf(before);
  StepRunRecord keyed = waiting;
  keyed.correlationKey = "A-17";
  set.stepRuns = {keyed};
  HistoryEvent event;
  event.at = kT0;
  event.kind = HistoryKind::Heartbeat;
  event.run = 2;
  event.step = "Approve";
  set.history = {event};
  REQUIRE(applyBatch(*store, {set}).front().status == ApplyStatus::Applied);
  CHECK(store->findByKey(KeyQuery{"Order", "Approve", "A-17", 2}).value() ==
        std::vector<StepRunKey>{{1, 2}});
  CHECK(store->findByKey(KeyQuery{"Order", "Approve", "", 2}).value().empty());
  event.instance = 1;
  CHECK(store->loadHistory(1).value() == std::vector<HistoryEvent>{event});
  SQLite::Database db = connect(path);
  CHECK(db.execAndGet("SELECT correlation_key FROM waiting_steps").getString() == "A-17");

  // Start keys: none on the old instance, and new creates claim them.
  CHECK(store->findStartKey("Order", "A-17").value() == std::nullopt);
  ChangeSet claiming = creation();
  claiming.startKey = StartKey{"A-17", 42};
  REQUIRE(applyBatch(*store, {claiming}).front().status == ApplyStatus::Applied);
  CHECK(store->findStartKey("Order", "A-17").value() == StartKeyRecord{2, 1, 42});
  const ApplyResult taken = applyBatch(*store, {claiming}).front();
  CHECK(taken.status == ApplyStatus::KeyTaken);
  CHECK(taken.instance == 2);
}

TEST_CASE("start keys survive a reopen with all 64 bits of their fingerprint, readable in SQL") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  constexpr std::uint64_t kHighBit = 0xfedcba9876543210ull;  // negative as an int64
  ChangeSet first = creation("Order", 2);
  first.startKey = StartKey{"order-17", kHighBit};
  ChangeSet second = creation("Invoice", 1);
  second.startKey = StartKey{"order-17", 7};
  {
    auto store = openStore(path);
    CHECK(create(*store, first) == 1);
    CHECK(create(*store, second) == 2);
  }
  auto store = openStore(path);
  CHECK(store->findStartKey("Order", "order-17").value() == StartKeyRecord{1, 2, kHighBit});
  CHECK(store->findStartKey("Invoice", "order-17").value() == StartKeyRecord{2, 1, 7});
  const ApplyResult taken = applyBatch(*store, {first}).front();
  CHECK(taken.status == ApplyStatus::KeyTaken);
  CHECK(taken.instance == 1);

  SQLite::Database db = connect(path);
  SQLite::Statement rows(db,
                         "SELECT process, idempotency_key, instance_id, fingerprint, created_at "
                         "FROM start_keys ORDER BY instance_id");
  REQUIRE(rows.executeStep());
  CHECK(rows.getColumn(0).getString() == "Order");
  CHECK(rows.getColumn(1).getString() == "order-17");
  CHECK(rows.getColumn(2).getInt64() == 1);
  CHECK(static_cast<std::uint64_t>(rows.getColumn(3).getInt64()) == kHighBit);
  CHECK(rows.getColumn(4).getInt64() == 1'700'000'000'000'001);  // the instance's createdAt
  REQUIRE(rows.executeStep());
  CHECK(rows.getColumn(0).getString() == "Invoice");
  CHECK_FALSE(rows.executeStep());
}

namespace {

// Migrations 2 and 3 of the 0.x series, with the rows recording them, so that
// with kSchemaVersion1Sql a test builds the file asyncflow at schema 3 left
// behind. Refreshed only while those migrations may still be redone in place
// (before 1.0); from 1.0 on it is frozen as released: never edit it.
constexpr const char* kSchemaVersions2And3Sql = R"sql(
INSERT INTO asyncflow_migrations
  VALUES (2, 'correlation keys of step runs, the history table, waiting_steps with the key', 2);
INSERT INTO asyncflow_migrations VALUES (3, 'the idempotency keys of Engine::startOnce', 3);

ALTER TABLE step_runs ADD COLUMN correlation_key TEXT;

CREATE INDEX step_runs_waiting_key ON step_runs (step, correlation_key)
  WHERE status = 'Waiting' AND correlation_key IS NOT NULL;

CREATE TABLE history (
  instance_id INTEGER NOT NULL REFERENCES instances (id),
  seq         INTEGER NOT NULL,
  at          INTEGER NOT NULL,
  kind        TEXT    NOT NULL
              CHECK (kind = 'Started' OR kind = 'StepStarted' OR kind = 'Waiting'
                      OR kind = 'CompletionRecorded' OR kind = 'StepCompleted' OR kind = 'StepFailed'
                      OR kind = 'TimedOut' OR kind = 'Heartbeat' OR kind = 'Retried'
                      OR kind = 'Completed' OR kind = 'Failed' OR kind = 'Cancelled'),
  run         INTEGER NOT NULL,  -- 0 for an entry about the instance itself
  step        TEXT    NOT NULL,  -- '' for an entry about the instance itself
  detail      TEXT    NOT NULL,
  PRIMARY KEY (instance_id, seq)
) WITHOUT ROWID;

DROP VIEW waiting_steps;
CREATE VIEW waiting_steps AS
SELECT r.instance_id || '_' || r.run ||
         CASE WHEN r.secret = '' THEN '' ELSE '_' || r.secret END AS serial,
       r.instance_id,
       i.process,
       i.process_version,
       r.step,
       datetime(r.waiting_since / 1000000, 'unixepoch') AS waiting_since,
       datetime(r.deadline / 1000000, 'unixepoch') AS deadline,
       r.correlation_key
FROM step_runs AS r JOIN instances AS i ON i.id = r.instance_id
WHERE r.status = 'Waiting';

CREATE TABLE start_keys (
  process         TEXT    NOT NULL,
  idempotency_key TEXT    NOT NULL,
  instance_id     INTEGER NOT NULL REFERENCES instances (id),
  fingerprint     INTEGER NOT NULL,  -- of the start's fields: 64 bits, read as signed
  created_at      INTEGER NOT NULL,  -- the instance's created_at
  PRIMARY KEY (process, idempotency_key)
) WITHOUT ROWID;
)sql";

}  // namespace

TEST_CASE("a version 3 database migrates to 6: its instances have no lease, and take leases") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  {
    // What asyncflow at schema 3 wrote: an instance Running mid-step (claimed by
    // a start key) and one waiting.
    SQLite::Database db(path, SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE);
    db.exec("PRAGMA application_id = " + std::to_string(kAsyncflowApplicationId));
    db.exec("PRAGMA journal_mode = WAL");
    db.exec(kSchemaVersion1Sql);
    db.exec(kSchemaVersions2And3Sql);
    db.exec(
        "INSERT INTO instances (process, process_version, status, version, current_run, "
        "last_run, error, created_at, updated_at) VALUES "
        "('Order', 1, 'Running', 2, 1, 1, '', 1700000000000001, 1700000000000002), "
        "('Order', 1, 'Waiting', 3, 1, 1, '', 1700000000000003, 1700000000000004)");
    db.exec("INSERT INTO fields VALUES (1, 'OrderId', 'String', 'A-1')");
    db.exec(
        "INSERT INTO step_runs VALUES "
        "(1, 1, 'Submit', 'Async', 'Starting', 1, 'c2VjcmV0', 0, '', 1700000000000001, NULL, "
        "NULL, NULL, NULL), "
        "(2, 1, 'Submit', 'Async', 'Waiting', 1, 'c2VjcmV0', 0, '', 1700000000000003, "
        "1700000000000004, NULL, NULL, 'A-2')");
    db.exec("INSERT INTO start_keys VALUES ('Order', 'order-1', 1, 9, 1700000000000001)");
  }

  auto store = openStore(path);
  {
    SQLite::Database db = connect(path);
    CHECK(db.execAndGet("SELECT group_concat(version) FROM asyncflow_migrations").getString() ==
          "1,2,3,4,5,6");
    CHECK(db.execAndGet("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND "
                        "name = 'instances_lease_expiry'")
              .getInt() == 1);
    CHECK(db.tableExists("process_versions"));
    CHECK(db.tableExists("process_fields"));
    CHECK(db.execAndGet("SELECT count(*) FROM instances WHERE lease_owner = '' AND "
                        "lease_expiry IS NULL")
              .getInt() == 2);
  }

  // The old instances read back whole, without a lease.
  InstanceRecord running;
  running.id = 1;
  running.process = "Order";
  running.processVersion = 1;
  running.status = InstanceStatus::Running;
  running.version = 2;
  running.currentRun = 1;
  running.lastRun = 1;
  running.createdAt = kT0 + std::chrono::microseconds(1);
  running.updatedAt = kT0 + std::chrono::microseconds(2);
  const InstanceSnapshot before = load(*store, 1);
  CHECK(before.record == running);
  CHECK(before.fields == Fields{{"OrderId", "A-1"}});
  CHECK(load(*store, 2).record.leaseExpiry == std::nullopt);
  CHECK(store->nextLeaseExpiry(Timestamp::min(), {}).value() == std::nullopt);
  CHECK(store->listExpiredLeases(LeaseQuery{kT0 + std::chrono::hours(1), std::nullopt, 10})
            .value()
            .empty());
  CHECK(store->loadDeclaration("Order", 1).value() == std::nullopt);
  // What migrations 2 and 3 brought still works.
  CHECK(store->findStartKey("Order", "order-1").value() == StartKeyRecord{1, 1, 9});
  CHECK(store->findByKey(KeyQuery{"Order", "Submit", "A-2", 2}).value() ==
        std::vector<StepRunKey>{{2, 1}});

  // The old instance takes a lease, and the lease queries find it.
  ChangeSet leased = updateOf(before);
  leased.instance.leaseOwner = "host-a";
  leased.instance.leaseExpiry = kT0 + std::chrono::seconds(30);
  REQUIRE(applyBatch(*store, {leased}).front().status == ApplyStatus::Applied);
  CHECK(load(*store, 1).record.leaseOwner == "host-a");
  CHECK(store->nextLeaseExpiry(Timestamp::min(), {}).value() == leased.instance.leaseExpiry);
  CHECK(store->listExpiredLeases(LeaseQuery{kT0 + std::chrono::seconds(30), std::nullopt, 10})
            .value() ==
        std::vector<ExpiredLease>{{1, "Order", 1, "host-a", kT0 + std::chrono::seconds(30)}});
  // And its version takes a declaration.
  const ProcessDeclaration declared =
      asyncflow::testing::processDeclaration("Order", 1, {{"OrderId", Type::String}});
  CHECK(store->declare(declared).value() == declared);
  CHECK(store->loadDeclaration("Order", 1).value() == declared);
}

namespace {

// Migration 4 of the 0.x series, with the row recording it, so that with
// kSchemaVersion1Sql and kSchemaVersions2And3Sql a test builds the file
// asyncflow at schema 4 left behind. Refreshed only while migration 4 may still
// be redone in place (before 1.0); from 1.0 on it is frozen as released: never
// edit it.
constexpr const char* kSchemaVersion4Sql = R"sql(
INSERT INTO asyncflow_migrations VALUES
  (4, 'leases of running instances, and the declared fields of each process version', 4);

ALTER TABLE instances ADD COLUMN lease_owner TEXT NOT NULL DEFAULT '';
ALTER TABLE instances ADD COLUMN lease_expiry INTEGER;

CREATE INDEX instances_lease_expiry ON instances (lease_expiry, id)
  WHERE status = 'Running' AND lease_expiry IS NOT NULL;

CREATE TABLE process_versions (
  process     TEXT    NOT NULL,
  version     INTEGER NOT NULL,
  declared_at INTEGER NOT NULL,  -- the declaring host's wall clock
  PRIMARY KEY (process, version)
) WITHOUT ROWID;

CREATE TABLE process_fields (
  process TEXT    NOT NULL,
  version INTEGER NOT NULL,
  name    TEXT    NOT NULL,
  type    TEXT    NOT NULL CHECK (type = 'Null' OR type = 'Bool' OR type = 'Int64'
                  OR type = 'Double' OR type = 'String'),
  PRIMARY KEY (process, version, name),
  FOREIGN KEY (process, version) REFERENCES process_versions (process, version)
) WITHOUT ROWID;
)sql";

}  // namespace

TEST_CASE("a version 4 database migrates to 6: its declarations keep their fields, have no steps") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  {
    // What asyncflow at schema 4 wrote: two declared versions (one without
    // fields), a run waiting for the external system, and a waiting run whose
    // completion a host that does not define its version recorded.
    SQLite::Database db(path, SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE);
    db.exec("PRAGMA application_id = " + std::to_string(kAsyncflowApplicationId));
    db.exec("PRAGMA journal_mode = WAL");
    db.exec(kSchemaVersion1Sql);
    db.exec(kSchemaVersions2And3Sql);
    db.exec(kSchemaVersion4Sql);
    db.exec(
        "INSERT INTO process_versions VALUES ('Order', 1, 1700000000000000), "
        "('Order', 2, 1700000000000001)");
    db.exec(
        "INSERT INTO process_fields VALUES ('Order', 1, 'Status', 'String'), "
        "('Order', 1, 'OrderId', 'String')");
    db.exec(
        "INSERT INTO instances (process, process_version, status, version, current_run, "
        "last_run, error, created_at, updated_at) VALUES "
        "('Order', 1, 'Waiting', 2, 1, 1, '', 1700000000000001, 1700000000000002), "
        "('Order', 1, 'Waiting', 3, 1, 1, '', 1700000000000003, 1700000000000004)");
    db.exec(
        "INSERT INTO step_runs VALUES "
        "(1, 1, 'Approve', 'Async', 'Waiting', 1, 'c2VjcmV0', 0, '', 1700000000000001, "
        "1700000000000002, NULL, NULL, 'A-1'), "
        "(2, 1, 'Approve', 'Async', 'Waiting', 1, 'c2VjcmV0', 1, '', 1700000000000003, "
        "1700000000000004, NULL, NULL, 'A-2')");
    db.exec("INSERT INTO completion_fields VALUES (2, 1, 'Status', 'String', 'Approved')");
  }

  auto store = openStore(path);
  {
    SQLite::Database db = connect(path);
    CHECK(db.execAndGet("SELECT group_concat(version) FROM asyncflow_migrations").getString() ==
          "1,2,3,4,5,6");
    CHECK(db.tableExists("process_steps"));
    CHECK(db.execAndGet("SELECT count(*) FROM process_steps").getInt() == 0);
    // The recreated view leaves out the run with a completion recorded.
    CHECK(db.execAndGet("SELECT group_concat(serial) FROM waiting_steps").getString() ==
          "1_1_c2VjcmV0");
  }

  // Runs written before migration 6 are on the main path.
  CHECK(store->loadStepRun(1, 1).value().branch == 0);
  CHECK(store->loadStepRun(2, 1).value().branch == 0);

  // The old declarations read back whole, with no steps.
  using asyncflow::testing::processDeclaration;
  using asyncflow::testing::stepDeclaration;
  const ProcessDeclaration order1 =
      processDeclaration("Order", 1, {{"OrderId", Type::String}, {"Status", Type::String}});
  CHECK(store->loadDeclaration("Order", 1).value() == order1);
  CHECK(store->loadDeclaration("Order", 2).value() == processDeclaration("Order", 2));
  // A declaration with steps of an old version finds the old one, which stays.
  const std::vector<StepDeclaration> steps{stepDeclaration("Approve", StepKind::Async, 30'000'000)};
  CHECK(store->declare(processDeclaration("Order", 1, order1.fields, steps)).value() == order1);
  CHECK(store->loadDeclaration("Order", 1).value() == order1);
  // A new version takes steps.
  const ProcessDeclaration order3 = processDeclaration("Order", 3, order1.fields, steps);
  CHECK(store->declare(order3).value() == order3);
  CHECK(store->loadDeclaration("Order", 3).value() == order3);

  // The old waiting runs: the one with a completion is kept, and not listed.
  auto rows = store->listWaiting(WaitingQuery{});
  REQUIRE(rows.has_value());
  REQUIRE(rows->size() == 1);
  CHECK(rows->front().run.instance == 1);
  const StepRunRecord recorded = store->loadStepRun(2, 1).value();
  CHECK(recorded.hasCompletion);
  CHECK(recorded.completion == Fields{{"Status", "Approved"}});
}

TEST_CASE("leases, declared fields and declared steps are readable with plain SQL") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  auto store = openStore(path);
  create(*store, asyncflow::testing::leasedCreation("host-a", kT0 + std::chrono::seconds(30)));
  create(*store, asyncflow::testing::leasedCreation("", kT0 + std::chrono::seconds(5)));
  create(*store);  // no lease
  using asyncflow::testing::stepDeclaration;
  REQUIRE(store->declare(asyncflow::testing::processDeclaration(
      "Order", 2, {{"Status", Type::String}, {"Amount", Type::Double}, {"Urgent", Type::Bool}},
      {stepDeclaration("Submit", StepKind::Sync), stepDeclaration("Approve", StepKind::Async, 0),
       stepDeclaration("Ship", StepKind::Async, 30'000'000)})));
  REQUIRE(store->declare(asyncflow::testing::processDeclaration("Order", 1)));

  SQLite::Database db = connect(path);
  SQLite::Statement leases(db, "SELECT id, lease_owner, lease_expiry FROM instances ORDER BY id");
  std::vector<std::string> rows;
  while (leases.executeStep()) {
    rows.push_back(leases.getColumn(0).getString() + " '" + leases.getColumn(1).getString() + "' " +
                   (leases.getColumn(2).isNull() ? "NULL" : leases.getColumn(2).getString()));
  }
  CHECK(rows == std::vector<std::string>{"1 'host-a' 1700000030000000", "2 '' 1700000005000000",
                                         "3 '' NULL"});

  SQLite::Statement fields(db,
                           "SELECT process, version, name, type FROM process_fields "
                           "ORDER BY process, version, name");
  rows.clear();
  while (fields.executeStep()) {
    rows.push_back(fields.getColumn(0).getString() + " " + fields.getColumn(1).getString() + " " +
                   fields.getColumn(2).getString() + " " + fields.getColumn(3).getString());
  }
  CHECK(rows == std::vector<std::string>{"Order 2 Amount Double", "Order 2 Status String",
                                         "Order 2 Urgent Bool"});
  // Kinds by name, heartbeats in microseconds (NULL: a heartbeat moves nothing).
  SQLite::Statement steps(db,
                          "SELECT process, version, step, kind, heartbeat_us FROM process_steps "
                          "ORDER BY process, version, step");
  rows.clear();
  while (steps.executeStep()) {
    rows.push_back(steps.getColumn(0).getString() + " " + steps.getColumn(1).getString() + " " +
                   steps.getColumn(2).getString() + " " + steps.getColumn(3).getString() + " " +
                   (steps.getColumn(4).isNull() ? "NULL" : steps.getColumn(4).getString()));
  }
  CHECK(rows == std::vector<std::string>{"Order 2 Approve Async 0", "Order 2 Ship Async 30000000",
                                         "Order 2 Submit Sync NULL"});
  // A version without fields is declared all the same.
  SQLite::Statement versions(db,
                             "SELECT process, version, declared_at FROM process_versions "
                             "ORDER BY process, version");
  rows.clear();
  while (versions.executeStep()) {
    rows.push_back(versions.getColumn(0).getString() + " " + versions.getColumn(1).getString());
    CHECK(versions.getColumn(2).getInt64() > 1'700'000'000'000'000);  // the wall clock, in us
  }
  CHECK(rows == std::vector<std::string>{"Order 1", "Order 2"});
}

TEST_CASE("the lease queries read the partial index on lease expiry, not every instance") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  openStore(path);
  SQLite::Database db = connect(path);
  // The store's own statements, prepared here to ask SQLite for their plans.
  detail::sqlite::Reads reads(db);
  const auto planOf = [&](const SQLite::Statement& statement) {
    SQLite::Statement explain(db, "EXPLAIN QUERY PLAN " + statement.getQuery());
    std::string plan;
    while (explain.executeStep()) plan += explain.getColumn(3).getString() + "\n";
    return plan;
  };
  for (const SQLite::Statement* statement : {&reads.nextLeaseExpiry, &reads.expiredLeases}) {
    const std::string plan = planOf(*statement);
    INFO(statement->getQuery() << "\n" << plan);
    CHECK(contains(plan, "instances_lease_expiry"));
    CHECK_FALSE(contains(plan, "TEMP B-TREE"));  // the index gives the order
  }
}

TEST_CASE("two SqliteStores on one file: a commit through either changes the other's changeMark") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  auto first = openStore(path);
  auto second = openStore(path);
  std::uint64_t firstMark = first->changeMark().value();
  std::uint64_t secondMark = second->changeMark().value();
  // Whether a store's mark moved since the last look; remembers the new one.
  const auto moved = [](SqliteStore& store, std::uint64_t& mark) {
    const std::uint64_t next = store.changeMark().value();
    const bool differs = next != mark;
    mark = next;
    return differs;
  };
  CHECK_FALSE(moved(*second, secondMark));

  const InstanceId id = create(*first);
  CHECK(moved(*second, secondMark));
  CHECK(moved(*first, firstMark));
  CHECK_FALSE(moved(*second, secondMark));

  // Reads through either store, and a Conflict through one, commit nothing.
  const InstanceSnapshot original = load(*first, id);
  CHECK(load(*second, id).record == original.record);
  CHECK_FALSE(moved(*second, secondMark));
  REQUIRE(applyBatch(*first, {updateOf(original)}).front().status == ApplyStatus::Applied);
  CHECK(moved(*second, secondMark));
  CHECK(applyBatch(*first, {updateOf(original)}).front().status == ApplyStatus::Conflict);
  CHECK_FALSE(moved(*second, secondMark));
  CHECK(moved(*first, firstMark));  // the Applied update before
  CHECK_FALSE(moved(*first, firstMark));

  // The other way round: the second store writes, the first sees it.
  create(*second);
  CHECK(moved(*first, firstMark));
  CHECK(moved(*second, secondMark));

  // A declaration through one is the other's: the second's different one loses.
  const ProcessDeclaration winner =
      asyncflow::testing::processDeclaration("Order", 1, {{"OrderId", Type::String}});
  CHECK(first->declare(winner).value() == winner);
  CHECK(moved(*second, secondMark));
  CHECK(second->loadDeclaration("Order", 1).value() == winner);
  CHECK(second->declare(asyncflow::testing::processDeclaration("Order", 1)).value() == winner);
  CHECK_FALSE(moved(*second, secondMark));
  CHECK(moved(*first, firstMark));
  CHECK_FALSE(moved(*first, firstMark));

  // An operator's commit through a third connection counts too.
  connect(path).exec("UPDATE instances SET error = 'edited by hand' WHERE id = 1");
  CHECK(moved(*first, firstMark));
  CHECK(moved(*second, secondMark));
}

TEST_CASE("a SqliteStore on a memory database counts its own commits in changeMark") {
  // No file, so no read-only connection and no data_version to ask: the count alone.
  auto store = openStore(":memory:");
  std::uint64_t mark = store->changeMark().value();
  const InstanceId id = create(*store);
  CHECK(store->changeMark().value() != mark);
  mark = store->changeMark().value();
  const InstanceSnapshot original = load(*store, id);
  CHECK(store->changeMark().value() == mark);
  REQUIRE(applyBatch(*store, {updateOf(original)}).front().status == ApplyStatus::Applied);
  CHECK(store->changeMark().value() != mark);
  mark = store->changeMark().value();
  CHECK(applyBatch(*store, {updateOf(original)}).front().status == ApplyStatus::Conflict);
  CHECK(store->changeMark().value() == mark);
  REQUIRE(store->declare(asyncflow::testing::processDeclaration("Order", 1)));
  CHECK(store->changeMark().value() != mark);
}

TEST_CASE("two SqliteStores on one file declaring the same versions at once agree on each") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  constexpr int kStores = 2;
  constexpr int kVersions = 30;
  std::vector<std::shared_ptr<SqliteStore>> stores;
  for (int s = 0; s < kStores; ++s) stores.push_back(openStore(path));
  std::vector<std::vector<ProcessDeclaration>> results(kStores);
  std::vector<std::string> errors(kStores);
  std::vector<std::thread> threads;
  for (int s = 0; s < kStores; ++s) {
    threads.emplace_back([&, s] {
      for (int v = 1; v <= kVersions; ++v) {
        auto stored = stores[s]->declare(asyncflow::testing::processDeclaration(
            "Order", v, {{"ByStore" + std::to_string(s), Type::Int64}}));
        if (!stored) {
          errors[s] = stored.error().toString();
          return;
        }
        results[s].push_back(*stored);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int s = 0; s < kStores; ++s) REQUIRE(errors[s] == "");
  for (int v = 1; v <= kVersions; ++v) {
    INFO("version " << v);
    const auto stored = stores[0]->loadDeclaration("Order", v).value();
    REQUIRE(stored.has_value());
    for (int s = 0; s < kStores; ++s) CHECK(results[s][static_cast<std::size_t>(v - 1)] == *stored);
  }
  SQLite::Database db = connect(path);
  CHECK(db.execAndGet("SELECT count(*) FROM process_fields").getInt() == kVersions);
}

TEST_CASE("a SQLite database of another application is refused and left unchanged") {
  TempDir dir;
  const std::string path = dir.file("other.db");
  {
    SQLite::Database db(path, SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE);
    db.exec("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)");
    db.exec("INSERT INTO orders (total) VALUES (12.5)");
  }
  SECTION("without an application id") {}
  SECTION("with another application id") {
    SQLite::Database db = connect(path);
    db.exec("PRAGMA application_id = 1234");
  }
  const std::string before = readBytes(path);

  const Error error = errorOf(SqliteStore::open(path));
  CHECK(error.code == Errc::StoreError);
  CHECK(contains(error.message, path + " is not an asyncflow database"));
  CHECK(readBytes(path) == before);
  CHECK_FALSE(fs::exists(path + "-wal"));
  CHECK_FALSE(fs::exists(path + "-journal"));
}

TEST_CASE("an empty database with another application's id is refused") {
  TempDir dir;
  const std::string path = dir.file("other.db");
  {
    SQLite::Database db(path, SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE);
    db.exec("PRAGMA application_id = 1234");
  }
  const std::string before = readBytes(path);
  CHECK(contains(errorOf(SqliteStore::open(path)).message, "is not an asyncflow database"));
  CHECK(readBytes(path) == before);
}

TEST_CASE("a file that is not a database is refused and left unchanged") {
  TempDir dir;
  const std::string path = dir.file("notes.txt");
  std::string text;
  SECTION("a short text file") { text = "hello, asyncflow\n"; }
  SECTION("a text file longer than a page") {
    for (int i = 0; i < 1000; ++i) text += "line " + std::to_string(i) + " of the notes\n";
  }
  writeBytes(path, text);

  const Error error = errorOf(SqliteStore::open(path));
  CHECK(error.code == Errc::StoreError);
  CHECK(contains(error.message, path + " is not a database"));
  CHECK(readBytes(path) == text);
  CHECK_FALSE(fs::exists(path + "-wal"));
}

TEST_CASE("a path in a missing directory is a StoreError") {
  TempDir dir;
  const Error error = errorOf(SqliteStore::open(dir.file("missing/store.db")));
  CHECK(error.code == Errc::StoreError);
  CHECK(contains(error.message, "cannot open"));
}

TEST_CASE("a corrupt asyncflow database gives StoreErrors, never a crash") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  constexpr int kInstances = 300;
  {
    auto store = openStore(path);
    for (int i = 0; i < kInstances; ++i) {
      create(*store, creation("Order", 1,
                              {{"OrderId", "order-" + std::to_string(i)},
                               {"Notes", std::string(200, static_cast<char>('a' + i % 26))}}));
    }
  }
  std::string bytes = readBytes(path);
  constexpr std::size_t kPage = 4096;
  REQUIRE(bytes.size() >= 20 * kPage);
  const std::size_t pages = bytes.size() / kPage;
  std::size_t first = 0;
  std::size_t end = 0;
  SECTION("pages in the middle of the file") {
    first = pages / 3;
    end = 2 * pages / 3;
  }
  SECTION("the first page, with the header and the schema") {
    first = 0;
    end = 1;
  }
  // Garbage from a fixed-seed generator.
  std::mt19937 garbage(20240601);
  for (std::size_t page = first; page < end; ++page) {
    for (std::size_t i = 0; i < kPage; ++i) {
      bytes[page * kPage + i] = static_cast<char>(garbage() & 0xff);
    }
  }
  writeBytes(path, bytes);

  int storeErrors = 0;
  auto expectStoreError = [&](const Error& error) {
    INFO(error.toString());
    CHECK(error.code == Errc::StoreError);
    ++storeErrors;
  };
  auto opened = SqliteStore::open(path);
  if (!opened) {
    expectStoreError(opened.error());
  } else {
    SqliteStore& store = **opened;
    for (InstanceId id = 1; id <= kInstances; ++id) {
      if (auto snapshot = store.loadInstance(id); !snapshot) expectStoreError(snapshot.error());
      if (auto run = store.loadStepRun(id, 1); !run) {
        if (run.error().code != Errc::NotFound) expectStoreError(run.error());
      }
    }
    WaitingQuery everything;
    everything.limit = 1000;
    if (auto rows = store.listWaiting(everything); !rows) expectStoreError(rows.error());
    RunningQuery running{"Order", 1, 0, 1000};
    if (auto ids = store.listRunning(running); !ids) expectStoreError(ids.error());
    if (auto next = store.nextDeadline(Timestamp::min()); !next) expectStoreError(next.error());
    if (auto due = store.listDue(DueQuery{kT0, std::nullopt, 1000}); !due) {
      expectStoreError(due.error());
    }
    if (auto keys = store.findByKey(KeyQuery{"Order", "Submit", "", 1000}); !keys) {
      expectStoreError(keys.error());
    }
    for (InstanceId id = 1; id <= kInstances; id += 37) {
      if (auto history = store.loadHistory(id); !history) expectStoreError(history.error());
    }
    if (auto next = store.nextLeaseExpiry(Timestamp::min(), {}); !next)
      expectStoreError(next.error());
    if (auto expired = store.listExpiredLeases(LeaseQuery{kT0, std::nullopt, 1000}); !expired) {
      expectStoreError(expired.error());
    }
    if (auto declared = store.loadDeclaration("Order", 1); !declared) {
      expectStoreError(declared.error());
    }
    if (auto declared = store.declare(ProcessDeclaration{"Order", 1, {}, {}}); !declared) {
      expectStoreError(declared.error());
    }
    std::vector<ChangeSet> batch;
    batch.push_back(creation());
    if (auto applied = store.apply(std::move(batch)); !applied) expectStoreError(applied.error());
  }
  CHECK(storeErrors > 0);
}

// --- locking and transactions ------------------------------------------------------------

TEST_CASE("a write lock held elsewhere fails apply after the busy timeout, writing nothing") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  SqliteOptions options;
  options.busyTimeout = std::chrono::milliseconds(50);
  auto store = openStore(path, options);
  const InstanceId existing = create(*store);

  SQLite::Database other = connect(path);
  other.exec("BEGIN IMMEDIATE");

  std::vector<ChangeSet> batch;
  batch.push_back(creation());
  batch.push_back(updateOf(load(*store, existing)));  // reads still work under the lock
  const auto started = std::chrono::steady_clock::now();
  const Error error = errorOf(store->apply(batch));
  CHECK(std::chrono::steady_clock::now() - started >= std::chrono::milliseconds(50));
  CHECK(error.code == Errc::StoreError);
  CHECK(contains(error.message, "database is busy"));
  CHECK(contains(error.message, "nothing was written"));
  CHECK(load(*store, existing).record.version == 1);
  CHECK(hasCode(store->loadInstance(existing + 1), Errc::NotFound));

  other.exec("COMMIT");
  const auto results = applyBatch(*store, batch);
  REQUIRE(results.size() == 2);
  CHECK(results[0].status == ApplyStatus::Applied);
  CHECK(results[0].instance == existing + 1);
  CHECK(results[1].status == ApplyStatus::Applied);
  CHECK(load(*store, existing).record.version == 2);
}

TEST_CASE("an up-to-date database opens and reads while another connection holds the write lock") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  const InstanceId id = create(*openStore(path));

  SQLite::Database other = connect(path);
  other.exec("BEGIN IMMEDIATE");
  SqliteOptions options;
  options.busyTimeout = std::chrono::milliseconds(50);
  auto store = openStore(path, options);
  CHECK(load(*store, id).record.id == id);
  other.exec("ROLLBACK");
}

TEST_CASE("a batch whose later set fails in SQL rolls back the earlier sets too") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  auto store = openStore(path);
  const InstanceId existing = create(*store, creation("Order", 1, {{"OrderId", "before"}}));

  ChangeSet first = updateOf(load(*store, existing));
  first.fields = Fields{{"OrderId", "after"}};
  first.stepRuns = {stepRun(2, "Notify", StepRunStatus::Starting)};
  ChangeSet second = creation();
  std::string expected;

  SECTION("a constraint of the schema refuses a row") {
    // Not reachable through the engine: a status no version of asyncflow has.
    second.stepRuns.front().status = static_cast<StepRunStatus>(42);
    expected = "constraint";
  }
  SECTION("the database fails a statement (an operator's trigger, like a full disk would)") {
    SQLite::Database other = connect(path);
    other.exec(
        "CREATE TRIGGER refuse BEFORE INSERT ON step_runs WHEN NEW.step = 'Boom' "
        "BEGIN SELECT RAISE(ABORT, 'injected failure'); END");
    second.stepRuns.front().step = "Boom";
    expected = "injected failure";
  }

  std::vector<ChangeSet> batch;
  batch.push_back(first);
  batch.push_back(second);
  const Error error = errorOf(store->apply(std::move(batch)));
  CHECK(error.code == Errc::StoreError);
  CHECK(contains(error.message, expected));

  const InstanceSnapshot after = load(*store, existing);
  CHECK(after.record.version == 1);
  CHECK(after.fields == Fields{{"OrderId", "before"}});
  CHECK(hasCode(store->loadStepRun(existing, 2), Errc::NotFound));
  CHECK(hasCode(store->loadInstance(existing + 1), Errc::NotFound));
  // The store is usable afterwards; the rolled-back create consumed no id.
  CHECK(create(*store) == existing + 1);
}

// --- what an operator sees ----------------------------------------------------------------

TEST_CASE("fields and waiting steps are readable with plain SQL") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  auto store = openStore(path);
  ChangeSet set = creation(
      "Order", 2,
      {{"OrderId", "A-17"}, {"Amount", 12.5}, {"Urgent", true}, {"Count", 3}, {"Note", nullptr}});
  set.instance.status = InstanceStatus::Waiting;
  StepRunRecord waiting = stepRun(1, "SubmitToErp", StepRunStatus::Waiting);
  waiting.secret = "Q2hhbmdlTWUxMjM0NTY3OA";
  waiting.waitingSince = Timestamp(std::chrono::seconds(1'700'000'000));
  waiting.deadline = Timestamp(std::chrono::seconds(1'700'086'400));
  waiting.correlationKey = "ERP-4711";
  set.stepRuns = {waiting};
  const InstanceId id = create(*store, set);
  ChangeSet bare = creation();
  bare.stepRuns.front().status = StepRunStatus::Waiting;
  bare.stepRuns.front().secret.clear();
  const InstanceId bareId = create(*store, bare);
  // Finished by the external system, waiting for a host that defines its
  // version: not in the view.
  ChangeSet recorded = creation();
  recorded.stepRuns.front().status = StepRunStatus::Waiting;
  recorded.stepRuns.front().hasCompletion = true;
  recorded.stepRuns.front().completion = Fields{{"Status", "Approved"}};
  create(*store, recorded);

  SQLite::Database db = connect(path);
  SQLite::Statement fields(db,
                           "SELECT name, type, value FROM fields WHERE instance_id = ? "
                           "ORDER BY name");
  fields.bind(1, static_cast<std::int64_t>(id));
  std::vector<std::string> rows;
  while (fields.executeStep()) {
    rows.push_back(fields.getColumn(0).getString() + " " + fields.getColumn(1).getString() + " " +
                   (fields.getColumn(2).isNull() ? "NULL" : fields.getColumn(2).getString()));
  }
  CHECK(rows == std::vector<std::string>{"Amount Double 12.5", "Count Int64 3", "Note Null NULL",
                                         "OrderId String A-17", "Urgent Bool 1"});

  SQLite::Statement view(db,
                         "SELECT serial, instance_id, process, process_version, step, "
                         "waiting_since, deadline, correlation_key FROM waiting_steps "
                         "ORDER BY instance_id");
  REQUIRE(view.executeStep());
  CHECK(view.getColumn(0).getString() == std::to_string(id) + "_1_Q2hhbmdlTWUxMjM0NTY3OA");
  CHECK(view.getColumn(1).getInt64() == id);
  CHECK(view.getColumn(2).getString() == "Order");
  CHECK(view.getColumn(3).getInt() == 2);
  CHECK(view.getColumn(4).getString() == "SubmitToErp");
  CHECK(view.getColumn(5).getString() == "2023-11-14 22:13:20");
  CHECK(view.getColumn(6).getString() == "2023-11-15 22:13:20");
  CHECK(view.getColumn(7).getString() == "ERP-4711");
  REQUIRE(view.executeStep());
  CHECK(view.getColumn(0).getString() == std::to_string(bareId) + "_1");
  CHECK(view.getColumn(6).isNull());
  CHECK(view.getColumn(7).isNull());  // no key: NULL, not ''
  CHECK_FALSE(view.executeStep());
}

namespace {

HistoryEvent historyEvent(HistoryKind kind, std::int64_t run, std::string step,
                          std::string detail) {
  HistoryEvent event;
  event.at = kT0 + std::chrono::microseconds(run);
  event.kind = kind;
  event.run = run;
  event.step = std::move(step);
  event.detail = std::move(detail);
  return event;
}

// Every history row, "instance seq kind run step detail", in (instance, seq) order.
std::vector<std::string> historyRows(const std::string& path) {
  SQLite::Database db = connect(path);
  SQLite::Statement rows(db,
                         "SELECT instance_id, seq, at, kind, run, step, detail FROM history "
                         "ORDER BY instance_id, seq");
  std::vector<std::string> out;
  while (rows.executeStep()) {
    out.push_back(rows.getColumn(0).getString() + " " + rows.getColumn(1).getString() + " " +
                  rows.getColumn(3).getString() + " " + rows.getColumn(4).getString() + " '" +
                  rows.getColumn(5).getString() + "' '" + rows.getColumn(6).getString() + "'");
    CHECK(rows.getColumn(2).getInt64() == 1'700'000'000'000'000 + rows.getColumn(4).getInt64());
  }
  return out;
}

}  // namespace

TEST_CASE("history is readable with plain SQL, numbered per instance in write order") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  auto store = openStore(path);
  ChangeSet first = creation();
  first.history = {historyEvent(HistoryKind::Started, 0, "", "version 2"),
                   historyEvent(HistoryKind::StepStarted, 1, "Submit", "")};
  const InstanceId a = create(*store, first);
  const InstanceId b = create(*store, creation());

  // One batch: a, b, a again; each instance numbers its own entries.
  ChangeSet waits = updateOf(load(*store, a));
  waits.history = {historyEvent(HistoryKind::Waiting, 1, "Submit", "1_1_c2VjcmV0")};
  ChangeSet cancels = updateOf(load(*store, b));
  cancels.history = {historyEvent(HistoryKind::Cancelled, 0, "", "by the operator")};
  ChangeSet completes = updateOf(load(*store, a));
  completes.expectedVersion += 1;
  completes.history = {historyEvent(HistoryKind::StepCompleted, 1, "Submit", "Status=Ok"),
                       historyEvent(HistoryKind::Completed, 0, "", "")};
  const auto results = applyBatch(*store, {waits, cancels, completes});
  REQUIRE(results.size() == 3);
  for (const ApplyResult& result : results) CHECK(result.status == ApplyStatus::Applied);

  CHECK(historyRows(path) == std::vector<std::string>{
                                 "1 1 Started 0 '' 'version 2'",
                                 "1 2 StepStarted 1 'Submit' ''",
                                 "1 3 Waiting 1 'Submit' '1_1_c2VjcmV0'",
                                 "1 4 StepCompleted 1 'Submit' 'Status=Ok'",
                                 "1 5 Completed 0 '' ''",
                                 "2 1 Cancelled 0 '' 'by the operator'",
                             });
  auto loaded = store->loadHistory(a);
  REQUIRE(loaded.has_value());
  REQUIRE(loaded->size() == 5);
  CHECK(loaded->at(4).kind == HistoryKind::Completed);
}

TEST_CASE("a Conflict or a failed batch leaves no history row") {
  TempDir dir;
  const std::string path = dir.file("store.db");
  auto store = openStore(path);
  ChangeSet first = creation();
  first.history = {historyEvent(HistoryKind::Started, 0, "", "version 2")};
  const InstanceId id = create(*store, first);
  const InstanceSnapshot original = load(*store, id);
  REQUIRE(applyBatch(*store, {updateOf(original)}).front().status == ApplyStatus::Applied);
  const std::vector<std::string> before = historyRows(path);
  REQUIRE(before.size() == 1);

  SECTION("a stale version") {
    ChangeSet stale = updateOf(original);
    stale.history = {historyEvent(HistoryKind::Failed, 0, "", "stale")};
    CHECK(applyBatch(*store, {stale}).front().status == ApplyStatus::Conflict);
  }
  SECTION("a batch rolled back by a later set's error: the earlier set's history goes too") {
    ChangeSet good = updateOf(load(*store, id));
    good.history = {historyEvent(HistoryKind::Heartbeat, 1, "Submit", "")};
    ChangeSet bad = creation();
    // Not reachable through the engine: a kind no version of asyncflow has.
    bad.history = {historyEvent(static_cast<HistoryKind>(42), 0, "", "")};
    const Error error = errorOf(store->apply({good, bad}));
    CHECK(error.code == Errc::StoreError);
    CHECK(contains(error.message, "constraint"));
    CHECK(load(*store, id).record.version == 2);
  }
  CHECK(historyRows(path) == before);
}

TEST_CASE("listWaiting pages by run, not by completion field") {
  TempDir dir;
  auto store = openStore(dir.file("store.db"));
  // Four waiting runs. The first carries three completion fields, so the SQL
  // joins it into three rows: without hasCompletion, a record no engine writes,
  // which the store lists as written. The second has a completion recorded, so
  // listWaiting leaves it out (its fields too).
  for (int i = 0; i < 4; ++i) {
    ChangeSet set = creation("Order", 2);
    set.stepRuns.front().status = StepRunStatus::Waiting;
    if (i == 0) set.stepRuns.front().completion = Fields{{"A", 1}, {"B", "two"}, {"C", 3.0}};
    if (i == 1) {
      set.stepRuns.front().hasCompletion = true;
      set.stepRuns.front().completion = Fields{{"D", 4}, {"E", 5}};
    }
    create(*store, set);
  }
  WaitingQuery query;
  query.limit = 2;
  auto page = store->listWaiting(query);
  REQUIRE(page.has_value());
  REQUIRE(page->size() == 2);
  CHECK(page->at(0).run.instance == 1);
  CHECK(page->at(0).run.completion == Fields{{"A", 1}, {"B", "two"}, {"C", 3.0}});
  CHECK(page->at(0).process == "Order");
  CHECK(page->at(0).processVersion == 2);
  CHECK(page->at(1).run.instance == 3);
  CHECK(page->at(1).run.completion.empty());

  query.afterInstance = 3;
  query.afterRun = 1;
  page = store->listWaiting(query);
  REQUIRE(page.has_value());
  REQUIRE(page->size() == 1);
  CHECK(page->at(0).run.instance == 4);
}

// --- the engine on a SQLite file ------------------------------------------------------------

namespace {

Process orderProcess() {
  Process p("OrderApproval", 1);
  p.field("OrderId", Type::String)
      .field("Status", Type::String, "Pending")
      .field("Notified", Type::Bool, false)
      .step(AsyncStep("SubmitToErp", [](AsyncStepContext&) { return StartOutcome::wait(); }))
      .step(Step("Notify", [](StepContext& ctx) {
        ctx.fields().set("Notified", true);
        return StepOutcome::next();
      }));
  return p;
}

EngineOptions engineOptions() {
  EngineOptions options;
  options.clock = std::make_shared<ManualClock>();
  options.random = std::make_shared<CountingRandom>();
  return options;
}

}  // namespace

TEST_CASE("an engine waits and resumes on a SQLite file, also after the file is reopened") {
  TempDir dir;
  const std::string path = dir.file("workflows.db");
  InstanceId first = 0;
  InstanceId second = 0;
  std::string secondSerial;
  {
    Engine engine(openStore(path), engineOptions());
    REQUIRE(engine.define(orderProcess()));
    auto started = engine.start("OrderApproval", {{"OrderId", "A-17"}});
    REQUIRE(started);
    first = *started;
    const InstanceInfo waiting = engine.instance(first).value();
    CHECK(waiting.status == InstanceStatus::Waiting);
    CHECK(waiting.currentStep == "SubmitToErp");
    REQUIRE(engine.completeServerEvent(waiting.serial, {{"Status", "Approved"}}));
    const InstanceInfo done = engine.instance(first).value();
    CHECK(done.status == InstanceStatus::Completed);
    CHECK(done.fields.get<std::string>("Status").value() == "Approved");
    CHECK(done.fields.get<bool>("Notified").value());

    auto another = engine.start("OrderApproval", {{"OrderId", "B-2"}});
    REQUIRE(another);
    second = *another;
    secondSerial = engine.instance(second).value().serial;
  }

  Engine engine(openStore(path), engineOptions());
  REQUIRE(engine.define(orderProcess()));
  auto page = engine.waiting();
  REQUIRE(page);
  REQUIRE(page->steps.size() == 1);
  CHECK(page->steps[0].serial == secondSerial);
  CHECK(page->steps[0].instance == second);

  REQUIRE(engine.completeServerEvent(secondSerial, {{"Status", "Rejected"}}));
  const InstanceInfo done = engine.instance(second).value();
  CHECK(done.status == InstanceStatus::Completed);
  CHECK(done.fields.get<std::string>("OrderId").value() == "B-2");
  CHECK(done.fields.get<std::string>("Status").value() == "Rejected");
  CHECK(done.fields.get<bool>("Notified").value());
  CHECK(engine.instance(first).value().status == InstanceStatus::Completed);
  CHECK(hasCode(engine.completeServerEvent(secondSerial, {}), Errc::AlreadyCompleted));
}
