// Pins what every public operation does when the store fails (issue 6): at each
// write point, and at each store call, with each kind of failure (disk full,
// busy, I/O error), on MemoryStore and on SqliteStore.
//
// The contract, checked against a no-fault run of the same operation:
//  - a failure at or before the acknowledging write (the commit after which the
//    call may report success) makes the call return StoreError naming the
//    failure; the stored state is exactly as before the call, and the same call
//    made again succeeds and ends in the no-fault run's state;
//  - a failure after it (while the engine drives the instance on) leaves the
//    call successful and the instance where its last commit left it; recover()
//    then carries it to the no-fault end state, having re-run the interrupted
//    step once (attempt one higher, one "after a crash" entry in its history).
// Operations: start, completeServerEvent, completeServerEventByKey,
// failServerEvent, heartbeat, cancel, retry, runDueTimers firing a timeout,
// define()'s recovery, recover(), and the reads instance, history and waiting.
// Faults come from asyncflow::testing::FaultInjectingStore; the "real" full disk
// from a SQLite file capped with SqliteOptions::maxPageCount, alone and in a
// group commit. Last, the timer thread must retry a timer whose commit failed.
//
// Built a second time as fault_injection_pg_test with ASYNCFLOW_FAULTS_ON_POSTGRES:
// the same matrix on PostgresStore (a fresh schema of the test server per run,
// its rows compared in SQL over a connection of its own), and nothing else.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <unistd.h>

#include <SQLiteCpp/Database.h>
#include <SQLiteCpp/Statement.h>
#include <asyncflow/testing/fault_injection.hpp>
#include <asyncflow/testing/store_conformance.hpp>
#include <sqlite3.h>

#include "store/sqlite/sqlite_store_probe.hpp"
#include "support/sqlite_support.hpp"
#include "support/test_store.hpp"
#include "support/test_support.hpp"

namespace {

using namespace asyncflow;
using namespace std::chrono_literals;
using asyncflow::testing::contains;
using asyncflow::testing::CountingRandom;
using asyncflow::testing::Fault;
using asyncflow::testing::FaultInjectingStore;
using asyncflow::testing::faultMessage;
using asyncflow::testing::FaultPlan;
using asyncflow::testing::FaultScope;
using asyncflow::testing::openStore;
using asyncflow::testing::StoreCall;
using asyncflow::testing::storeCallName;
using asyncflow::testing::TempDir;
namespace described = asyncflow::testing::detail;

constexpr Fault kFaults[] = {Fault::DiskFull, Fault::Busy, Fault::IoError};

std::string faultName(Fault fault) {
  switch (fault) {
    case Fault::DiskFull: return "DiskFull";
    case Fault::Busy: return "Busy";
    case Fault::IoError: return "IoError";
  }
  return "?";
}

// A call's result without its value.
template <class T>
Result<void> asVoid(const Result<T>& result) {
  if (!result) return tl::unexpected(result.error());
  return {};
}

// --- the processes ------------------------------------------------------------------------

// Validate (sync) -> Submit (async: waits, times out after 1 h to Escalate,
// heartbeats every 2 h, keyed by OrderId, fails over to Repair) -> Notify.
Process orderProcess() {
  Process order("Order", 1);
  order.field("OrderId", Type::String)
      .field("Status", Type::String, "Pending")
      .field("Validated", Type::Bool, false)
      .field("Ticket", Type::String)
      .field("Outcome", Type::String)
      .field("Reason", Type::String)
      .step(Step("Validate",
                 [](StepContext& ctx) {
                   ctx.fields().set("Validated", true);
                   return StepOutcome::next();
                 }))
      .step(AsyncStep("Submit",
                      [](AsyncStepContext& ctx) {
                        ctx.fields().set("Ticket", "T-" + ctx.serial());
                        return StartOutcome::wait();
                      })
                .timeout(1h, "Escalate")
                .heartbeat(2h)
                .correlate("OrderId")
                .onError("Repair"))
      .step(Step("Notify",
                 [](StepContext& ctx) {
                   ctx.fields().set("Outcome", "notified");
                   return StepOutcome::finish();
                 }))
      .step(Step("Escalate",
                 [](StepContext& ctx) {
                   ctx.fields().set("Outcome", "escalated");
                   return StepOutcome::finish();
                 }))
      .step(Step("Repair", [](StepContext& ctx) {
        ctx.fields().set("Outcome", "repaired");
        return StepOutcome::finish();
      }));
  return order;
}

// Call (async, no timeout, no error line: a failure fails the instance) -> Done.
Process fragileProcess() {
  Process fragile("Fragile", 1);
  fragile.field("Note", Type::String)
      .step(AsyncStep("Call", [](AsyncStepContext&) { return StartOutcome::wait(); }))
      .step(Step("Done", [](StepContext&) { return StepOutcome::finish(); }));
  return fragile;
}

// --- the stored state, read in full -------------------------------------------------------

// Every instance (ids 1, 2, ... without gaps), its fields, step runs (with their
// completion fields) and history, read through the Store interface; for a
// SqliteStore also every row of every table, read with SQL.
struct StoreState {
  std::vector<InstanceSnapshot> instances;
  std::vector<std::vector<StepRunRecord>> runs;      // per instance, run 1, 2, ...
  std::vector<std::vector<HistoryEvent>> histories;  // per instance
  std::string sql;                                   // empty for a MemoryStore
};

// The Store-interface part, one record a line, so a failure shows where two differ.
std::string describe(const StoreState& state) {
  std::string out;
  for (std::size_t i = 0; i < state.instances.size(); ++i) {
    out += "instance " + described::describe(state.instances[i].record) + "\n";
    out += "  fields " + described::describe(state.instances[i].fields) + "\n";
    for (const StepRunRecord& run : state.runs[i])
      out += "  run " + described::describe(run) + "\n";
    for (const HistoryEvent& event : state.histories[i]) {
      out += "  history " + described::describe(event) + "\n";
    }
  }
  return out;
}

std::string sqlValue(const SQLite::Column& column) {
  switch (column.getType()) {
    case SQLITE_NULL: return "NULL";
    case SQLITE_INTEGER: return std::to_string(column.getInt64());
    case SQLITE_FLOAT: {
      char text[40];
      std::snprintf(text, sizeof text, "%.17g", column.getDouble());
      return text;
    }
    case SQLITE_TEXT: return described::describeBytes(column.getString());
    default: {
      std::string hex = "x'";
      const auto* bytes = static_cast<const unsigned char*>(column.getBlob());
      for (int i = 0; i < column.getBytes(); ++i) {
        char byte[3];
        std::snprintf(byte, sizeof byte, "%02x", bytes[i]);
        hex += byte;
      }
      return hex + "'";
    }
  }
}

// Every row of every table but asyncflow_migrations (its applied_at is the wall
// clock at open), sorted by all columns; sqlite_sequence included. The wall
// clock columns (process_versions.declared_at) are left out.
std::string sqlDump(const std::string& path) {
  SQLite::Database db(path, SQLite::OPEN_READONLY);
  std::vector<std::string> tables;
  SQLite::Statement list(db,
                         "SELECT name FROM sqlite_master WHERE type = 'table' "
                         "AND name <> 'asyncflow_migrations' ORDER BY name");
  while (list.executeStep()) tables.push_back(list.getColumn(0).getString());
  std::string out;
  for (const std::string& table : tables) {
    const std::string what = table == "process_versions" ? "process, version" : "*";
    const std::string from = " FROM \"" + table + "\"";
    const int columns = SQLite::Statement(db, "SELECT " + what + from).getColumnCount();
    std::string order;
    for (int c = 1; c <= columns; ++c) order += (c == 1 ? "" : ", ") + std::to_string(c);
    SQLite::Statement rows(db, "SELECT " + what + from + " ORDER BY " + order);
    out += table + ":\n";
    while (rows.executeStep()) {
      out += " ";
      for (int c = 0; c < columns; ++c) out += " " + sqlValue(rows.getColumn(c));
      out += "\n";
    }
  }
  return out;
}

// Every row of every table of the PostgreSQL schema, as sqlDump() for SQLite.
std::string postgresDump(asyncflow::testing::TestSql& sql) {
  return asyncflow::testing::dumpTables(sql, {"asyncflow_migrations"},
                                        {"process_versions.declared_at"});
}

StoreState readState(Store& store, const std::function<std::string()>& dump) {
  StoreState state;
  for (InstanceId id = 1;; ++id) {
    auto snapshot = store.loadInstance(id);
    if (!snapshot) {
      REQUIRE(snapshot.error().code == Errc::NotFound);
      break;
    }
    std::vector<StepRunRecord> runs;
    // One past lastRun too: a run the header does not count would be half-written.
    for (std::int64_t run = 1; run <= snapshot->record.lastRun + 1; ++run) {
      auto record = store.loadStepRun(id, run);
      if (!record && run > snapshot->record.lastRun) break;
      if (!record) FAIL("loadStepRun: " << record.error().toString());
      runs.push_back(*record);
    }
    auto history = store.loadHistory(id);
    if (!history) FAIL("loadHistory: " << history.error().toString());
    state.instances.push_back(std::move(*snapshot));
    state.runs.push_back(std::move(runs));
    state.histories.push_back(std::move(*history));
  }
  if (dump) state.sql = dump();
  return state;
}

[[maybe_unused]] StoreState readState(Store& store, const std::string& sqlitePath) {
  return readState(store, [&] { return sqlDump(sqlitePath); });
}

// Equal through the Store interface and, when `withSql`, row for row in SQL.
void checkSameState(const StoreState& actual, const StoreState& expected, bool withSql = true) {
  CHECK(describe(actual) == describe(expected));
  if (withSql) CHECK(actual.sql == expected.sql);
}

// --- a world: a store under a fault injector under an engine ------------------------------

enum class StoreKind { Memory, Sqlite, Postgres };

std::string storeName(StoreKind kind) {
  switch (kind) {
    case StoreKind::Memory: return "MemoryStore";
    case StoreKind::Sqlite: return "SqliteStore";
    case StoreKind::Postgres: return "PostgresStore";
  }
  return "?";
}

// The stores this executable runs the matrix on.
std::vector<StoreKind> storeKinds() {
#ifdef ASYNCFLOW_FAULTS_ON_POSTGRES
  return {StoreKind::Postgres};
#else
  return {StoreKind::Memory, StoreKind::Sqlite};
#endif
}

// A schema of the test server no other World (and no other test process) uses.
std::string freshPostgresSpec() {
  static int made = 0;
  return "postgres:faults_" + std::to_string(::getpid()) + "_" + std::to_string(++made);
}

// Between the fault injector and the real store: while recording, logs every
// call that reaches the store and the whole state after each write. Used from
// one thread (the engine runs inline).
class RecordingStore final : public StoreWrapper {
 public:
  RecordingStore(std::shared_ptr<Store> target, std::function<StoreState()> read)
      : StoreWrapper(std::move(target)), read_(std::move(read)) {}

  // Starts a log whose first state is the current one.
  void record() {
    calls_.clear();
    states_.assign(1, read_());
    recording_ = true;
  }
  void stop() { recording_ = false; }
  const std::vector<StoreCall>& calls() const { return calls_; }
  // states()[k]: the state after the k-th write (0: when record() was called).
  const std::vector<StoreState>& states() const { return states_; }

  Result<InstanceSnapshot> loadInstance(InstanceId id) override {
    note(StoreCall::LoadInstance);
    return StoreWrapper::loadInstance(id);
  }
  Result<StepRunRecord> loadStepRun(InstanceId instance, std::int64_t run) override {
    note(StoreCall::LoadStepRun);
    return StoreWrapper::loadStepRun(instance, run);
  }
  Result<std::vector<ApplyResult>> apply(std::vector<ChangeSet> batch) override {
    note(StoreCall::Apply);
    auto result = StoreWrapper::apply(std::move(batch));
    if (recording_ && result) states_.push_back(read_());
    return result;
  }
  Result<std::vector<WaitingRow>> listWaiting(const WaitingQuery& query) override {
    note(StoreCall::ListWaiting);
    return StoreWrapper::listWaiting(query);
  }
  Result<std::vector<InstanceId>> listRunning(const RunningQuery& query) override {
    note(StoreCall::ListRunning);
    return StoreWrapper::listRunning(query);
  }
  Result<std::optional<Timestamp>> nextDeadline(Timestamp after) override {
    note(StoreCall::NextDeadline);
    return StoreWrapper::nextDeadline(after);
  }
  Result<std::vector<DueRun>> listDue(const DueQuery& query) override {
    note(StoreCall::ListDue);
    return StoreWrapper::listDue(query);
  }
  Result<std::vector<StepRunKey>> findByKey(const KeyQuery& query) override {
    note(StoreCall::FindByKey);
    return StoreWrapper::findByKey(query);
  }
  Result<std::vector<HistoryEvent>> loadHistory(InstanceId id) override {
    note(StoreCall::LoadHistory);
    return StoreWrapper::loadHistory(id);
  }
  Result<std::optional<StartKeyRecord>> findStartKey(std::string_view process,
                                                     std::string_view key) override {
    note(StoreCall::FindStartKey);
    return StoreWrapper::findStartKey(process, key);
  }
  Result<std::optional<Timestamp>> nextLeaseExpiry(Timestamp after,
                                                   std::string_view notOwnedBy) override {
    note(StoreCall::NextLeaseExpiry);
    return StoreWrapper::nextLeaseExpiry(after, notOwnedBy);
  }
  Result<std::vector<ExpiredLease>> listExpiredLeases(const LeaseQuery& query) override {
    note(StoreCall::ListExpiredLeases);
    return StoreWrapper::listExpiredLeases(query);
  }
  Result<ProcessDeclaration> declare(const ProcessDeclaration& declaration) override {
    note(StoreCall::Declare);
    return StoreWrapper::declare(declaration);
  }
  Result<std::optional<ProcessDeclaration>> loadDeclaration(std::string_view process,
                                                            int version) override {
    note(StoreCall::LoadDeclaration);
    return StoreWrapper::loadDeclaration(process, version);
  }
  Result<std::uint64_t> changeMark() override {
    note(StoreCall::ChangeMark);
    return StoreWrapper::changeMark();
  }

 private:
  void note(StoreCall call) {
    if (recording_) calls_.push_back(call);
  }

  std::function<StoreState()> read_;
  bool recording_ = false;
  std::vector<StoreCall> calls_;
  std::vector<StoreState> states_;
};

// An inline engine (bare serials, manual clock, timer thread off) over
// FaultInjectingStore -> RecordingStore -> a fresh MemoryStore or SQLite file.
class World {
 public:
  explicit World(StoreKind kind) {
    if (kind == StoreKind::Sqlite) {
      dir_.emplace();
      path_ = dir_->file("faults.db");
      SqliteOptions options;
      options.synchronous = Synchronous::Normal;  // durability is not under test here
      real_ = openStore(path_, options);
      dump_ = [this] { return sqlDump(path_); };
    } else if (kind == StoreKind::Postgres) {
      postgres_ = freshPostgresSpec();
      auto opened = asyncflow::testing::openTestStore(postgres_, 1);
      if (!opened) FAIL("PostgresStore: " << opened.error().toString());
      real_ = std::shared_ptr<Store>(std::move(*opened));
      sql_ = asyncflow::testing::openTestSql(postgres_);
      dump_ = [this] { return postgresDump(*sql_); };
    } else {
      real_ = std::make_shared<MemoryStore>();
    }
    recorder = std::make_shared<RecordingStore>(real_, [this] { return state(); });
    faults = std::make_shared<FaultInjectingStore>(recorder);
    newEngine(true);
  }
  ~World() {
    engine.reset();
    faults.reset();
    recorder.reset();
    real_.reset();
    sql_.reset();
    if (!postgres_.empty()) asyncflow::testing::dropTestStores(postgres_);
  }
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  // Replaces the engine with one that has no process defined yet.
  void newEngine(bool recoverOnDefine) {
    engine.reset();
    EngineOptions options;
    options.serials = SerialForm::Bare;  // no secrets drawn: a retried run is identical
    options.clock = clock;
    options.random = random;
    options.timerThread = false;
    options.recoverOnDefine = recoverOnDefine;
    engine = std::make_unique<Engine>(faults, options);
  }

  void defineAll() {
    REQUIRE(engine->define(orderProcess()));
    REQUIRE(engine->define(fragileProcess()));
  }

  InstanceId startOrder(const std::string& orderId) {
    auto id = engine->start("Order", {{"OrderId", orderId}});
    if (!id) FAIL("start: " << id.error().toString());
    return *id;
  }

  std::string serialOf(InstanceId id) {
    auto info = engine->instance(id);
    if (!info) FAIL("instance: " << info.error().toString());
    return info->serial;
  }

  StoreState state() { return readState(*real_, dump_); }

  std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>();
  std::shared_ptr<CountingRandom> random = std::make_shared<CountingRandom>();
  std::shared_ptr<RecordingStore> recorder;
  std::shared_ptr<FaultInjectingStore> faults;
  std::unique_ptr<Engine> engine;
  InstanceId subject = 0;  // the instance the operation is about
  std::string serial;      // its waiting run's serial

 private:
  std::optional<TempDir> dir_;
  std::string path_;
  std::string postgres_;  // the "postgres:" spec of its schema, for PostgresStore
  std::unique_ptr<asyncflow::testing::TestSql> sql_;
  std::function<std::string()> dump_;  // the rows in SQL; empty for MemoryStore
  std::shared_ptr<Store> real_;
};

// --- the operations under test -------------------------------------------------------------

// Which of an operation's store calls make it return an error when they fail.
enum class Acknowledgement {
  FirstWrite,  // the calls up to and including its first write; the rest drive on
  Listing,     // define()/recover(): declaring, listing the instances to recover; every
               // write drives on
  ReadOnly,    // a read: every call
};

struct Scenario {
  const char* name;
  std::size_t writes;  // apply() calls of a no-fault run: its write points
  Acknowledgement acknowledgement;
  std::function<void(World&)> setup;
  std::function<Result<void>(World&)> operation;
  // What to call after the operation failed: the operation again, or recover().
  std::function<Result<void>(World&)> again;
  // Checks what the no-fault run ends with.
  std::function<void(const StoreState&, World&)> checkEnd;
};

// The engine clock's time as the engine records it (whole microseconds).
Timestamp now(const World& world) {
  return std::chrono::time_point_cast<std::chrono::microseconds>(world.clock->now());
}

const InstanceSnapshot& instanceIn(const StoreState& state, InstanceId id) {
  REQUIRE(id >= 1);
  REQUIRE(static_cast<std::size_t>(id) <= state.instances.size());
  return state.instances[static_cast<std::size_t>(id - 1)];
}

const StepRunRecord& runIn(const StoreState& state, InstanceId id, std::int64_t run) {
  const auto& runs = state.runs.at(static_cast<std::size_t>(id - 1));
  REQUIRE(run >= 1);
  REQUIRE(static_cast<std::size_t>(run) <= runs.size());
  return runs[static_cast<std::size_t>(run - 1)];
}

// Every scenario starts here: both processes defined, and a bystander instance
// (Fragile, id 1) waiting, which no operation may touch.
void defineAndStartBystander(World& w) {
  w.defineAll();
  REQUIRE(w.engine->start("Fragile", {{"Note", "bystander"}}));
}

// An Order instance waiting at Submit; its id and serial in w.subject and w.serial.
void orderWaiting(World& w) {
  defineAndStartBystander(w);
  w.subject = w.startOrder("A-1");
  w.serial = w.serialOf(w.subject);
}

// An Order instance that a crash left Running in Validate (the commit after its
// handler failed), and a new engine that has not defined Order yet.
void orderCrashedInValidate(World& w, bool recoverOnDefine) {
  defineAndStartBystander(w);
  w.faults->failNth(2, Fault::IoError);  // start's create commits; the next one fails
  w.subject = w.startOrder("A-1");
  REQUIRE_FALSE(w.faults->armed());
  const StoreState crashed = w.state();
  REQUIRE(instanceIn(crashed, w.subject).record.status == InstanceStatus::Running);
  REQUIRE(runIn(crashed, w.subject, 1).status == StepRunStatus::Starting);
  w.newEngine(recoverOnDefine);
}

void checkStatus(const StoreState& end, InstanceId id, InstanceStatus status) {
  CHECK(instanceIn(end, id).record.status == status);
}

void checkOutcome(const StoreState& end, InstanceId id, const std::string& outcome) {
  checkStatus(end, id, InstanceStatus::Completed);
  CHECK(instanceIn(end, id).fields.get<std::string>("Outcome").value_or("") == outcome);
}

std::vector<Scenario> scenarios() {
  using A = Acknowledgement;
  std::vector<Scenario> all;

  auto start = [](World& w) { return asVoid(w.engine->start("Order", {{"OrderId", "A-1"}})); };
  all.push_back({"start", 3, A::FirstWrite, defineAndStartBystander, start, start,
                 [](const StoreState& end, World&) {
                   checkStatus(end, 2, InstanceStatus::Waiting);
                   CHECK(runIn(end, 2, 2).step == "Submit");
                 }});

  // startOnce writes what start writes, the key in its first commit; a read
  // (the key's look-up) comes before it.
  auto startOnce = [](World& w) {
    return asVoid(w.engine->startOnce("Order", "order-A-1", {{"OrderId", "A-1"}}));
  };
  all.push_back({"startOnce", 3, A::FirstWrite, defineAndStartBystander, startOnce, startOnce,
                 [](const StoreState& end, World&) {
                   checkStatus(end, 2, InstanceStatus::Waiting);
                   CHECK(runIn(end, 2, 2).step == "Submit");
                 }});
  // A repeat only reads; a fault in it fails it, and it is repeated as it was.
  auto repeat = [](World& w) -> Result<void> {
    auto started = w.engine->startOnce("Order", "order-A-1", {{"OrderId", "A-1"}});
    if (!started) return tl::unexpected(started.error());
    if (started->created || started->id != w.subject) {
      return fail(Errc::Internal, "the repeat did not report the first start's instance");
    }
    return {};
  };
  all.push_back({"startOnce (a repeat)", 0, A::ReadOnly,
                 [](World& w) {
                   defineAndStartBystander(w);
                   auto first = w.engine->startOnce("Order", "order-A-1", {{"OrderId", "A-1"}});
                   REQUIRE(first);
                   REQUIRE(first->created);
                   w.subject = first->id;
                 },
                 repeat, repeat, [](const StoreState&, World&) {}});

  auto complete = [](World& w) {
    return w.engine->completeServerEvent(w.serial, {{"Status", "Approved"}});
  };
  all.push_back(
      {"completeServerEvent", 2, A::FirstWrite, orderWaiting, complete, complete,
       [](const StoreState& end, World& w) { checkOutcome(end, w.subject, "notified"); }});

  auto byKey = [](World& w) {
    return w.engine->completeServerEventByKey("Order", "Submit", "A-1", {{"Status", "Approved"}});
  };
  all.push_back(
      {"completeServerEventByKey", 2, A::FirstWrite, orderWaiting, byKey, byKey,
       [](const StoreState& end, World& w) { checkOutcome(end, w.subject, "notified"); }});

  auto failEvent = [](World& w) {
    return w.engine->failServerEvent(w.serial, "the ERP refused", {{"Reason", "limit"}});
  };
  all.push_back(
      {"failServerEvent", 2, A::FirstWrite, orderWaiting, failEvent, failEvent,
       [](const StoreState& end, World& w) { checkOutcome(end, w.subject, "repaired"); }});

  auto heartbeat = [](World& w) { return w.engine->heartbeat(w.serial); };
  all.push_back({"heartbeat", 1, A::FirstWrite,
                 [](World& w) {
                   orderWaiting(w);
                   w.clock->advance(5min);
                 },
                 heartbeat, heartbeat,
                 [](const StoreState& end, World& w) {
                   checkStatus(end, w.subject, InstanceStatus::Waiting);
                   CHECK(runIn(end, w.subject, 2).deadline == now(w) + 2h);
                 }});

  auto cancel = [](World& w) { return w.engine->cancel(w.subject, "withdrawn"); };
  all.push_back({"cancel", 1, A::FirstWrite, orderWaiting, cancel, cancel,
                 [](const StoreState& end, World& w) {
                   checkStatus(end, w.subject, InstanceStatus::Cancelled);
                 }});

  auto retry = [](World& w) { return w.engine->retry(w.subject); };
  all.push_back({"retry", 2, A::FirstWrite,
                 [](World& w) {
                   defineAndStartBystander(w);
                   auto id = w.engine->start("Fragile", {{"Note", "subject"}});
                   REQUIRE(id);
                   w.subject = *id;
                   REQUIRE(w.engine->failServerEvent(w.serialOf(w.subject), "down"));
                 },
                 retry, retry,
                 [](const StoreState& end, World& w) {
                   checkStatus(end, w.subject, InstanceStatus::Waiting);
                   CHECK(runIn(end, w.subject, 2).attempt == 2);
                 }});

  auto timers = [](World& w) -> Result<void> {
    auto fired = w.engine->runDueTimers();
    if (!fired) return tl::unexpected(fired.error());
    if (*fired != 1) return fail(Errc::Internal, std::to_string(*fired) + " timers fired, not 1");
    return {};
  };
  all.push_back(
      {"runDueTimers", 2, A::FirstWrite,
       [](World& w) {
         orderWaiting(w);
         w.clock->advance(2h);
       },
       timers, timers,
       [](const StoreState& end, World& w) { checkOutcome(end, w.subject, "escalated"); }});

  auto recover = [](World& w) { return asVoid(w.engine->recover()); };
  all.push_back({"define (recovery)", 3, A::Listing,
                 [](World& w) {
                   orderCrashedInValidate(w, true);
                   REQUIRE(w.engine->define(fragileProcess()));
                 },
                 [](World& w) { return w.engine->define(orderProcess()); },
                 // A fault before the version was registered (storing its
                 // declaration) leaves it undefined: define it again, then recover.
                 [](World& w) -> Result<void> {
                   auto again = w.engine->define(orderProcess());
                   if (!again && again.error().code != Errc::InvalidProcess) return again;
                   return asVoid(w.engine->recover());
                 },
                 [](const StoreState& end, World& w) {
                   checkStatus(end, w.subject, InstanceStatus::Waiting);
                   CHECK(runIn(end, w.subject, 1).attempt == 2);
                 }});

  all.push_back({"recover", 3, A::Listing,
                 [](World& w) {
                   orderCrashedInValidate(w, false);
                   w.defineAll();
                 },
                 [](World& w) -> Result<void> {
                   auto recovered = w.engine->recover();
                   if (!recovered) return tl::unexpected(recovered.error());
                   if (*recovered != 1) return fail(Errc::Internal, "recovered != 1");
                   return {};
                 },
                 recover,
                 [](const StoreState& end, World& w) {
                   checkStatus(end, w.subject, InstanceStatus::Waiting);
                   CHECK(runIn(end, w.subject, 1).attempt == 2);
                 }});

  auto instance = [](World& w) { return asVoid(w.engine->instance(w.subject)); };
  auto history = [](World& w) { return asVoid(w.engine->history(w.subject)); };
  auto waiting = [](World& w) { return asVoid(w.engine->waiting()); };
  auto nothing = [](const StoreState&, World&) {};
  all.push_back({"instance", 0, A::ReadOnly, orderWaiting, instance, instance, nothing});
  all.push_back({"history", 0, A::ReadOnly, orderWaiting, history, history, nothing});
  all.push_back({"waiting", 0, A::ReadOnly, orderWaiting, waiting, waiting, nothing});
  return all;
}

// --- a no-fault run, and what a fault at one point must give --------------------------------

struct DryRun {
  std::vector<StoreCall> calls;    // the operation's store calls, in order
  std::vector<StoreState> states;  // before the operation, then after each of its writes
  // A fault at calls 1..acknowledgingCalls makes the operation fail; a later one
  // hits the continuation, which the operation does not report.
  std::size_t acknowledgingCalls = 0;
};

DryRun dryRun(const Scenario& scenario, StoreKind kind) {
  World w(kind);
  scenario.setup(w);
  w.recorder->record();
  const Result<void> result = scenario.operation(w);
  w.recorder->stop();
  if (!result) FAIL("the operation failed without a fault: " << result.error().toString());
  DryRun dry{w.recorder->calls(), w.recorder->states(), 0};
  // Its write points, pinned: the README quotes how many faults this test injects.
  REQUIRE(dry.states.size() == scenario.writes + 1);
  scenario.checkEnd(dry.states.back(), w);
  // The end is at rest: there is nothing left for recovery to do.
  auto recovered = w.engine->recover();
  REQUIRE(recovered);
  CHECK(*recovered == 0);
  checkSameState(w.state(), dry.states.back());

  const auto firstWrite = std::find(dry.calls.begin(), dry.calls.end(), StoreCall::Apply);
  switch (scenario.acknowledgement) {
    case Acknowledgement::FirstWrite:
      REQUIRE(firstWrite != dry.calls.end());
      dry.acknowledgingCalls = static_cast<std::size_t>(firstWrite - dry.calls.begin()) + 1;
      break;
    case Acknowledgement::Listing:
      // define() stores the declaration first (its one write of its own).
      while (dry.acknowledgingCalls < dry.calls.size() &&
             (dry.calls[dry.acknowledgingCalls] == StoreCall::Declare ||
              dry.calls[dry.acknowledgingCalls] == StoreCall::ListRunning)) {
        ++dry.acknowledgingCalls;
      }
      REQUIRE(dry.acknowledgingCalls > 0);
      break;
    case Acknowledgement::ReadOnly:
      REQUIRE(firstWrite == dry.calls.end());
      dry.acknowledgingCalls = dry.calls.size();
      break;
  }
  return dry;
}

// The index of the one instance whose header differs between two states.
std::size_t changedInstance(const StoreState& before, const StoreState& after) {
  REQUIRE(before.instances.size() == after.instances.size());
  std::optional<std::size_t> changed;
  for (std::size_t i = 0; i < before.instances.size(); ++i) {
    if (before.instances[i].record == after.instances[i].record) continue;
    REQUIRE_FALSE(changed);
    changed = i;
  }
  REQUIRE(changed);
  return *changed;
}

// `end` as it is when recovery re-ran the open run of instance `index` of
// `atFault` once more than a no-fault run did: one more commit of the instance,
// the run's attempt one higher, and a StepStarted entry where the history of
// `atFault` ended. Not comparable in SQL (the sql part is dropped).
StoreState withOneRerun(StoreState end, const StoreState& atFault, std::size_t index,
                        Timestamp at) {
  const InstanceRecord& header = atFault.instances[index].record;
  const StepRunRecord& open = runIn(atFault, header.id, header.currentRun);
  end.instances[index].record.version += 1;
  end.runs[index].at(static_cast<std::size_t>(open.run - 1)).attempt += 1;
  HistoryEvent rerun;
  rerun.instance = header.id;
  rerun.at = at;
  rerun.kind = HistoryKind::StepStarted;
  rerun.run = open.run;
  rerun.step = open.step;
  rerun.detail = "attempt " + std::to_string(open.attempt + 1) + ", after a crash";
  auto& history = end.histories[index];
  history.insert(history.begin() + static_cast<std::ptrdiff_t>(atFault.histories[index].size()),
                 rerun);
  end.sql.clear();
  return end;
}

struct Expected {
  StoreState state;
  bool withSql = true;
};

// What recover() must leave after a continuation stopped with `writes` of the
// no-fault run's writes done, by a fault at a write (`atWrite`) or a read.
Expected afterRecovery(const DryRun& dry, std::size_t writes, bool atWrite, Timestamp at) {
  const StoreState& end = dry.states.back();
  if (writes + 1 >= dry.states.size()) return {end, true};
  // A failed read stops a drive before its handler runs (the drive reads the
  // instance and the run, then runs the handler, then writes): recover() runs
  // it as the first time, so the end is the no-fault end, to the byte.
  if (!atWrite) return {end, true};
  const StoreState& stopped = dry.states[writes];
  const StoreState& next = dry.states[writes + 1];
  const std::size_t index = changedInstance(stopped, next);
  const InstanceRecord& header = stopped.instances[index].record;
  REQUIRE(header.status == InstanceStatus::Running);
  const StepRunRecord& open = runIn(stopped, header.id, header.currentRun);
  REQUIRE(open.status == StepRunStatus::Starting);
  const StepRunRecord& reopened = runIn(next, header.id, header.currentRun);
  // When the write that did not happen was itself recovery's re-start of the
  // run, recover() makes exactly that write: the no-fault end, to the byte.
  if (next.instances[index].record.currentRun == header.currentRun &&
      reopened.status == StepRunStatus::Starting && reopened.attempt == open.attempt + 1) {
    return {end, true};
  }
  return {withOneRerun(end, stopped, index, at), false};
}

// Runs `scenario` with the fault `plan`, which must hit its call number `call`,
// and checks the outcome against the no-fault run.
void checkFaultPoint(const Scenario& scenario, StoreKind kind, const DryRun& dry, std::size_t call,
                     FaultPlan plan) {
  World w(kind);
  scenario.setup(w);
  w.faults->resetCounters();
  w.faults->arm(plan);
  const Result<void> result = scenario.operation(w);
  const auto injected = w.faults->lastInjected();
  REQUIRE(injected);
  CHECK(w.faults->injected() == 1);
  CHECK_FALSE(w.faults->armed());
  CHECK(injected->callNumber == call);
  CHECK(storeCallName(injected->call) == storeCallName(dry.calls.at(call - 1)));
  const auto writesBefore = static_cast<std::size_t>(
      std::count(dry.calls.begin(), dry.calls.begin() + static_cast<std::ptrdiff_t>(call - 1),
                 StoreCall::Apply));

  if (call <= dry.acknowledgingCalls) {
    REQUIRE_FALSE(result.has_value());
    CHECK(result.error().code == Errc::StoreError);
    CHECK(contains(result.error().message, faultMessage(plan.fault)));
    checkSameState(w.state(), dry.states.front());
    const Result<void> again = scenario.again(w);
    if (!again) FAIL("the call made again failed: " << again.error().toString());
    checkSameState(w.state(), dry.states.back());
  } else {
    if (!result)
      FAIL("a fault after the acknowledging write failed the call: " << result.error().toString());
    checkSameState(w.state(), dry.states.at(writesBefore));
    auto recovered = w.engine->recover();
    if (!recovered) FAIL("recover: " << recovered.error().toString());
    const bool atWrite = dry.calls.at(call - 1) == StoreCall::Apply;
    const Expected expected = afterRecovery(dry, writesBefore, atWrite, now(w));
    checkSameState(w.state(), expected.state, expected.withSql);
  }
}

// Injects each kind of fault at each point of each scenario on each store:
// write points (FaultScope::Applies) or every store call (AnyCall). How many.
std::size_t runFaultMatrix(FaultScope scope) {
  std::size_t points = 0;
  for (StoreKind kind : storeKinds()) {
    for (const Scenario& scenario : scenarios()) {
      INFO(storeName(kind) << ", " << scenario.name);
      const DryRun dry = dryRun(scenario, kind);
      for (std::size_t call = 1; call <= dry.calls.size(); ++call) {
        const bool write = dry.calls[call - 1] == StoreCall::Apply;
        if (scope == FaultScope::Applies && !write) continue;
        const auto nth =
            scope == FaultScope::AnyCall
                ? call
                : static_cast<std::size_t>(std::count(
                      dry.calls.begin(), dry.calls.begin() + static_cast<std::ptrdiff_t>(call),
                      StoreCall::Apply));
        for (Fault fault : kFaults) {
          INFO("fault " << faultName(fault) << " at call " << call << " ("
                        << storeCallName(dry.calls[call - 1]) << "), the plan's nth " << nth);
          checkFaultPoint(scenario, kind, dry, call, FaultPlan{nth, 1, fault, scope});
          ++points;
        }
      }
    }
  }
  return points;
}

}  // namespace

TEST_CASE(
    "a fault at any write point of any operation: StoreError with nothing written, or a "
    "continuation that recover() completes") {
  const std::size_t points = runFaultMatrix(FaultScope::Applies);
  // 24 write points (start 3, startOnce 3, completeServerEvent 2,
  // completeServerEventByKey 2, failServerEvent 2, heartbeat 1, cancel 1, retry 2,
  // runDueTimers 2, define's recovery 3, recover 3) x 3 kinds x each store.
  CHECK(points == 72 * storeKinds().size());
  std::cout << "fault_injection_test: " << points
            << " write fault points injected (operations x write points x kinds x stores)\n";
}

TEST_CASE("a fault at any store call, reads included: the same contract") {
  const std::size_t points = runFaultMatrix(FaultScope::AnyCall);
  CHECK(points > 72 * storeKinds().size());
  std::cout << "fault_injection_test: " << points
            << " call fault points injected (operations x store calls x kinds x stores)\n";
}

#ifndef ASYNCFLOW_FAULTS_ON_POSTGRES
// --- the kit itself: every Store call is counted, named and failed ------------------------

namespace {

// Makes the Store call `call` names, with arguments that harm nothing (declare()
// stores version `version` of "Order"). The switch has no default, so that
// -Wswitch names a StoreCall left out.
Result<void> makeCall(Store& store, StoreCall call, int version = 1) {
  switch (call) {
    case StoreCall::LoadInstance: return asVoid(store.loadInstance(1));
    case StoreCall::LoadStepRun: return asVoid(store.loadStepRun(1, 1));
    case StoreCall::Apply: return asVoid(store.apply({}));
    case StoreCall::ListWaiting: return asVoid(store.listWaiting(WaitingQuery{}));
    case StoreCall::ListRunning: return asVoid(store.listRunning(RunningQuery{"Order", 1, 0, 10}));
    case StoreCall::NextDeadline: return asVoid(store.nextDeadline(Timestamp::min()));
    case StoreCall::ListDue: return asVoid(store.listDue(DueQuery{}));
    case StoreCall::FindByKey: return asVoid(store.findByKey(KeyQuery{"Order", "Submit", "k", 2}));
    case StoreCall::LoadHistory: return asVoid(store.loadHistory(1));
    case StoreCall::FindStartKey: return asVoid(store.findStartKey("Order", "k"));
    case StoreCall::NextLeaseExpiry: return asVoid(store.nextLeaseExpiry(Timestamp::min(), {}));
    case StoreCall::ListExpiredLeases: return asVoid(store.listExpiredLeases(LeaseQuery{}));
    case StoreCall::Declare:
      return asVoid(store.declare(ProcessDeclaration{"Order", version, {}, {}}));
    case StoreCall::LoadDeclaration: return asVoid(store.loadDeclaration("Order", version));
    case StoreCall::ChangeMark: return asVoid(store.changeMark());
  }
  return fail(Errc::Internal, "no such StoreCall");
}

}  // namespace

TEST_CASE("FaultInjectingStore counts and fails every Store call, each under its own name") {
  auto target = std::make_shared<MemoryStore>();
  FaultInjectingStore faults(target);
  std::set<std::string> names;
  for (std::size_t i = 0; i < testing::kStoreCalls; ++i) {
    const auto call = static_cast<StoreCall>(i);
    INFO("call " << storeCallName(call));
    names.insert(std::string(storeCallName(call)));
    (void)makeCall(faults, call);
    CHECK(faults.calls(call) == 1);
  }
  CHECK(names.size() == testing::kStoreCalls);
  CHECK(names.count("unknown") == 0);
  CHECK(faults.calls() == testing::kStoreCalls);

  // Applies, the default scope, fails apply() only: declare() goes through.
  faults.failAll(Fault::DiskFull);
  CHECK(faults.declare(ProcessDeclaration{"Order", 2, {}, {}}).has_value());
  CHECK(hasCode(faults.apply({}), Errc::StoreError));

  // AnyCall fails each of them, naming it, without reaching the target.
  const std::uint64_t mark = target->changeMark().value();
  faults.resetCounters();
  faults.failAll(Fault::IoError, FaultScope::AnyCall);
  for (std::size_t i = 0; i < testing::kStoreCalls; ++i) {
    const auto call = static_cast<StoreCall>(i);
    INFO("call " << storeCallName(call));
    const Result<void> result = makeCall(faults, call, 3);  // a declare() would store version 3
    REQUIRE_FALSE(result);
    CHECK(result.error().code == Errc::StoreError);
    CHECK(contains(result.error().message,
                   "into " + std::string(storeCallName(call)) + ", call " + std::to_string(i + 1)));
    REQUIRE(faults.lastInjected());
    CHECK(faults.lastInjected()->call == call);
  }
  CHECK(faults.injected() == testing::kStoreCalls);
  faults.disarm();
  CHECK(target->changeMark().value() == mark);
  CHECK(target->loadDeclaration("Order", 3).value() == std::nullopt);
}

// --- a real full disk: a SQLite file capped with SqliteOptions::maxPageCount ---------------

namespace {

// A store on `path` capped at `pages` pages (0: no cap), writers waiting up to a
// minute for a lock held elsewhere.
std::shared_ptr<SqliteStore> openCapped(const std::string& path, std::int64_t pages) {
  SqliteOptions options;
  options.synchronous = Synchronous::Normal;
  options.busyTimeout = std::chrono::minutes(1);
  options.maxPageCount = pages;
  return openStore(path, options);
}

EngineOptions inlineOptions() {
  EngineOptions options;
  options.serials = SerialForm::Bare;
  options.clock = std::make_shared<ManualClock>();
  options.random = std::make_shared<CountingRandom>();
  options.timerThread = false;
  return options;
}

std::int64_t pageCount(const std::string& path) {
  SQLite::Database db(path, SQLite::OPEN_READONLY);
  return db.execAndGet("PRAGMA page_count").getInt64();
}

// What filling a capped file with Order instances left.
struct Filled {
  std::size_t started = 0;      // starts that succeeded
  std::size_t leftRunning = 0;  // of them, left Running by a continuation's failed commit
  std::string orderId;          // the OrderId of the start that was refused
  Error refusal;                // why it was refused
  StoreState before;            // the state just before the refused start
};

// Starts Order instances until a start is refused; at most `limit` tries.
Filled fillUntilRefused(Engine& engine, SqliteStore& store, const std::string& path,
                        std::size_t limit = 10'000) {
  Filled filled;
  for (std::size_t i = 0; i < limit; ++i) {
    filled.orderId = "F-" + std::to_string(i);
    filled.before = readState(store, path);
    auto id = engine.start("Order", {{"OrderId", filled.orderId}});
    if (!id) {
      filled.refusal = id.error();
      return filled;
    }
    ++filled.started;
    auto info = engine.instance(*id);
    if (!info) FAIL("instance: " << info.error().toString());
    if (info->status == InstanceStatus::Running) {
      ++filled.leftRunning;  // the create fit, a later commit did not
    } else {
      CHECK(info->status == InstanceStatus::Waiting);
    }
  }
  FAIL("the file never filled up: " << limit << " starts went through");
  return filled;
}

// Every instance of `state` waits at Submit, whole: two runs, the fields both
// steps wrote. (A continuation left half-done would be Running.)
void checkAllWaiting(const StoreState& state) {
  for (const InstanceSnapshot& instance : state.instances) {
    const InstanceId id = instance.record.id;
    INFO("instance " << id);
    CHECK(instance.record.status == InstanceStatus::Waiting);
    REQUIRE(state.runs[static_cast<std::size_t>(id - 1)].size() == 2);
    CHECK(runIn(state, id, 1).status == StepRunStatus::Completed);
    CHECK(runIn(state, id, 2).status == StepRunStatus::Waiting);
    CHECK(instance.fields.get<bool>("Validated").value_or(false));
    CHECK(instance.fields.get<std::string>("Ticket").value_or("") ==
          "T-" + std::to_string(id) + "_2");
  }
}

using asyncflow::testing::WriteLock;

// Pages of 1 KiB: the schema takes about 20, the rest holds a few dozen instances.
constexpr std::int64_t kCap = 64;

}  // namespace

TEST_CASE("SqliteOptions::maxPageCount out of range is InvalidArgument and touches nothing") {
  TempDir dir;
  const std::string path = dir.file("capped.db");
  for (const std::int64_t pages :
       {std::int64_t{-1}, std::int64_t{4'294'967'295}, std::numeric_limits<std::int64_t>::min()}) {
    INFO("maxPageCount " << pages);
    SqliteOptions options;
    options.maxPageCount = pages;
    auto opened = SqliteStore::open(path, options);
    REQUIRE_FALSE(opened);
    CHECK(opened.error().code == Errc::InvalidArgument);
    CHECK(contains(opened.error().message, "maxPageCount " + std::to_string(pages)));
    CHECK_FALSE(std::filesystem::exists(path));
  }
  SqliteOptions largest;
  largest.maxPageCount = 4'294'967'294;
  CHECK(SqliteStore::open(path, largest));
}

TEST_CASE("a maxPageCount too small for the schema fails the open with a full database") {
  TempDir dir;
  SqliteOptions options;
  options.maxPageCount = 2;
  auto opened = SqliteStore::open(dir.file("tiny.db"), options);
  REQUIRE_FALSE(opened);
  CHECK(opened.error().code == Errc::StoreError);
  CHECK(contains(opened.error().message, "database or disk is full"));
}

TEST_CASE("a maxPageCount below the file's size holds the file at its size, for that open only") {
  TempDir dir;
  const std::string path = dir.file("held.db");
  {
    auto store = openCapped(path, 0);
    Engine engine(store, inlineOptions());
    REQUIRE(engine.define(orderProcess()));
    REQUIRE(engine.start("Order", {{"OrderId", "A-1"}}));
  }
  const std::int64_t size = pageCount(path);
  {
    auto store = openCapped(path, 1);
    Engine engine(store, inlineOptions());
    REQUIRE(engine.define(orderProcess()));
    const Filled filled = fillUntilRefused(engine, *store, path);
    CHECK(filled.refusal.code == Errc::StoreError);
    CHECK(contains(filled.refusal.message, "database or disk is full"));
    CHECK(pageCount(path) == size);
  }
  auto store = openCapped(path, 0);  // no cap this time: the file grows again
  Engine engine(store, inlineOptions());
  REQUIRE(engine.define(orderProcess()));
  REQUIRE(engine.start("Order", {{"OrderId", "after"}}));
  CHECK(pageCount(path) > size);
}

TEST_CASE(
    "a full SQLite file: the start that does not fit fails unwritten, the engine keeps "
    "answering, and with a larger cap recovery and the retry succeed") {
  TempDir dir;
  const std::string path = dir.file("full.db");
  Filled filled;
  {
    auto store = openCapped(path, kCap);
    Engine engine(store, inlineOptions());
    REQUIRE(engine.define(orderProcess()));
    filled = fillUntilRefused(engine, *store, path);
    CHECK(filled.refusal.code == Errc::StoreError);
    CHECK(contains(filled.refusal.message, "database or disk is full"));
    CHECK(contains(filled.refusal.message, "nothing was written"));
    REQUIRE(filled.started > 0);
    // Nothing of the refused start, in any table (sqlite_sequence included).
    checkSameState(readState(*store, path), filled.before);

    // The engine keeps answering: reads work, and the same start is refused
    // again, as cleanly.
    auto waiting = engine.waiting();
    REQUIRE(waiting);
    CHECK(waiting->steps.size() == filled.started - filled.leftRunning);
    auto first = engine.instance(1);
    REQUIRE(first);
    CHECK(first->fields.get<std::string>("OrderId").value_or("") == "F-0");
    CHECK(engine.history(1));
    auto again = engine.start("Order", {{"OrderId", filled.orderId}});
    REQUIRE_FALSE(again);
    CHECK(again.error().code == Errc::StoreError);
    checkSameState(readState(*store, path), filled.before);
    CHECK(pageCount(path) <= kCap);
  }
  auto store = openCapped(path, kCap * 4);
  Engine engine(store, inlineOptions());
  REQUIRE(engine.define(orderProcess()));  // recovers what a failed continuation left
  auto id = engine.start("Order", {{"OrderId", filled.orderId}});
  if (!id) FAIL("the retried start: " << id.error().toString());
  CHECK(*id == static_cast<InstanceId>(filled.started) + 1);
  const StoreState after = readState(*store, path);
  CHECK(after.instances.size() == filled.started + 1);
  checkAllWaiting(after);
  std::cout << "fault_injection_test: a " << kCap << "-page file held " << filled.started
            << " instances (" << filled.leftRunning
            << " left Running by a continuation that did not fit) before a start was refused\n";
}

TEST_CASE("a group commit on a full SQLite file: every batch of the group fails unwritten") {
  TempDir dir;
  const std::string path = dir.file("group.db");
  constexpr std::size_t kCallers = 4;
  Filled filled;
  {
    auto store = openCapped(path, kCap);
    Engine engine(store, inlineOptions());
    REQUIRE(engine.define(orderProcess()));
    filled = fillUntilRefused(engine, *store, path);
    const StoreState before = readState(*store, path);

    // The first caller leads alone (waiting for the lock held here), the others
    // queue behind it and form one group: each batch in its own savepoint of one
    // transaction. Each start is the one just refused, so none of them fits.
    std::vector<Result<InstanceId>> outcomes(kCallers);
    std::vector<std::thread> threads;
    {
      WriteLock lock(path);
      for (std::size_t i = 0; i < kCallers; ++i) {
        const std::size_t queued = SqliteStoreProbe::queuedWrites(*store);
        threads.emplace_back([&, i] {
          outcomes[i] = engine.start("Order", {{"OrderId", filled.orderId}});
        });
        while (SqliteStoreProbe::queuedWrites(*store) <= queued) std::this_thread::yield();
      }
      CHECK(SqliteStoreProbe::queuedWrites(*store) == kCallers);
      lock.release();
      for (std::thread& thread : threads) thread.join();
    }
    for (std::size_t i = 0; i < kCallers; ++i) {
      INFO("caller " << i << (i == 0 ? " (alone)" : " (in the group)"));
      REQUIRE_FALSE(outcomes[i]);
      CHECK(outcomes[i].error().code == Errc::StoreError);
      CHECK(contains(outcomes[i].error().message, "database or disk is full"));
      CHECK(contains(outcomes[i].error().message, "nothing was written"));
    }
    checkSameState(readState(*store, path), before);
    CHECK(SqliteStoreProbe::queuedWrites(*store) == 0);
  }
  // With room, the same starts go through.
  auto store = openCapped(path, kCap * 4);
  Engine engine(store, inlineOptions());
  REQUIRE(engine.define(orderProcess()));
  for (std::size_t i = 0; i < kCallers; ++i) {
    auto id = engine.start("Order", {{"OrderId", filled.orderId}});
    if (!id) FAIL("start " << i << ": " << id.error().toString());
  }
  const StoreState after = readState(*store, path);
  CHECK(after.instances.size() == filled.started + kCallers);
  checkAllWaiting(after);
}

// --- the timer thread after a failed commit -----------------------------------------------

namespace {

// Counts down once for each history entry of one kind it hears.
class KindLatch final : public Listener {
 public:
  explicit KindLatch(HistoryKind kind) : kind_(kind) {}
  void onEvent(const HistoryEvent& event) override {
    if (event.kind != kind_) return;
    std::lock_guard lock(mutex_);
    heard_ = true;
    changed_.notify_all();
  }
  // Whether the entry was heard within `limit` (a bound against hanging, not a
  // measurement: the test passes the moment the entry arrives).
  bool waitFor(std::chrono::seconds limit) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, limit, [this] { return heard_; });
  }

 private:
  HistoryKind kind_;
  std::mutex mutex_;
  std::condition_variable changed_;
  bool heard_ = false;
};

}  // namespace

TEST_CASE("the timer thread fires a timer again after the store failed its commit") {
  auto store = std::make_shared<MemoryStore>();
  auto faults = std::make_shared<FaultInjectingStore>(store);
  auto clock = std::make_shared<ManualClock>();
  auto completed = std::make_shared<KindLatch>(HistoryKind::Completed);
  EngineOptions options;
  options.serials = SerialForm::Bare;
  options.clock = clock;
  options.random = std::make_shared<CountingRandom>();
  options.listener = completed;
  options.timerThread = true;
  Engine engine(faults, options);
  REQUIRE(engine.define(orderProcess()));
  auto id = engine.start("Order", {{"OrderId", "A-1"}});
  REQUIRE(id);

  // The timer's commit fails once ("busy"); then the store works again. No
  // define() and no new deadline come to wake the timer: it must try again
  // itself, a second later by the engine's clock.
  clock->awaitSleepers();  // the timer sleeps until the deadline
  faults->failNth(1, Fault::Busy);
  clock->advance(2h);
  clock->awaitSleepers();  // it fired, the commit failed, it sleeps for the retry
  CHECK(faults->injected() == 1);
  CHECK(engine.instance(*id)->status == InstanceStatus::Waiting);
  clock->advance(std::chrono::seconds(1));
  CHECK(completed->waitFor(std::chrono::seconds(60)));
  CHECK(faults->injected() == 1);
  auto info = engine.instance(*id);
  REQUIRE(info);
  CHECK(info->status == InstanceStatus::Completed);
  CHECK(info->fields.get<std::string>("Outcome").value_or("") == "escalated");
}
#endif  // ASYNCFLOW_FAULTS_ON_POSTGRES
