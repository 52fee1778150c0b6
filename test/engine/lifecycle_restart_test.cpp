// The step lifecycle across a restart: engine A does the first part on a SQLite
// file and is destroyed with its store; engine B opens the same file with the
// same process definitions and continues. Deadlines, heartbeats, error lines,
// retries, history, versions, business keys, cancels and listeners must all
// come from the file, not from anything A held in memory. Time is a shared
// ManualClock and timers fire only through runDueTimers(): no test sleeps.
//
// Built a second time as lifecycle_restart_pg_test with
// ASYNCFLOW_LIFECYCLE_ON_POSTGRES: the same tests with a schema of the
// PostgreSQL test server in place of the file (each engine its own PostgresStore).
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include "support/catch.hpp"
#include "support/test_store.hpp"
#include "support/test_support.hpp"

namespace Catch {

template <>
struct StringMaker<asyncflow::HistoryKind> {
  static std::string convert(asyncflow::HistoryKind kind) {
    return std::string(asyncflow::historyKindName(kind));
  }
};

template <>
struct StringMaker<asyncflow::HistoryEvent> {
  static std::string convert(const asyncflow::HistoryEvent& e) {
    return "{instance " + std::to_string(e.instance) + " at " +
           StringMaker<asyncflow::Timestamp>::convert(e.at) + " " +
           std::string(asyncflow::historyKindName(e.kind)) + " run " + std::to_string(e.run) +
           " '" + e.step + "' \"" + e.detail + "\"}";
  }
};

}  // namespace Catch

using namespace asyncflow;
using asyncflow::testing::contains;
using asyncflow::testing::errorOf;
using std::chrono::hours;
using std::chrono::minutes;

namespace {

using asyncflow::testing::TempDir;

// The store named by a fresh spec (support/test_store.hpp): a file in `dir`, or
// a schema of the PostgreSQL test server no other test uses.
std::string freshStoreSpec(const TempDir& dir) {
#ifdef ASYNCFLOW_LIFECYCLE_ON_POSTGRES
  (void)dir;
  static int made = 0;
  return "postgres:lifecycle_" + std::to_string(::getpid()) + "_" + std::to_string(++made);
#else
  return dir.file("workflows.db");
#endif
}

// One database (file or schema) plus the clock and random source that both
// engines of a test share, so that B continues A's timeline and never repeats
// A's secrets.
struct RestartHarness {
  RestartHarness() = default;
  ~RestartHarness() { asyncflow::testing::dropTestStores(db); }
  RestartHarness(const RestartHarness&) = delete;
  RestartHarness& operator=(const RestartHarness&) = delete;

  TempDir dir;
  std::string db = freshStoreSpec(dir);
  std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>();
  std::shared_ptr<asyncflow::testing::CountingRandom> random =
      std::make_shared<asyncflow::testing::CountingRandom>();
  const Timestamp t0 = clock->now();

  // A newly opened store on the database: each engine gets its own connection.
  std::shared_ptr<Store> openStore() const {
    if (asyncflow::testing::isPostgresSpec(db)) {
      auto store = asyncflow::testing::openTestStore(db, 2);
      if (!store) FAIL("open " << db << ": " << store.error().toString());
      return std::shared_ptr<Store>(std::move(*store));
    }
    SqliteOptions options;
    options.synchronous = Synchronous::Normal;
    auto store = SqliteStore::open(db, options);
    if (!store) {
      FAIL("open " << db << ": " << store.error().toString());
    }
    return std::move(*store);
  }

  EngineOptions options() const {
    EngineOptions o;
    o.clock = clock;
    o.random = random;
    o.timerThread = false;  // timers fire only when the test calls runDueTimers()
    return o;
  }

  // Moves the shared clock to `offset` after the test's start.
  void at(std::chrono::minutes offset) const { clock->set(t0 + offset); }
};

// What the handlers of one engine's process definitions did, in call order.
struct Journal {
  struct Call {
    std::string step;
    int attempt = 0;
    int version = 0;
    std::string serial;  // async steps only
  };
  std::vector<Call> calls;
  int failSubmitOnAttempt = 0;  // Submit's start handler fails on this attempt; 0: never

  std::vector<std::string> steps() const {
    std::vector<std::string> names;
    for (const auto& call : calls) names.push_back(call.step);
    return names;
  }
};

// "Order" of `version`: Submit (async, shaped by `configure`), then Notify,
// which finishes. Escalate and Recover are reached only through a timeout's
// escalation or an error line, and finish too. Every handler writes to
// `journal`; Notify also stamps the version that ran it into HandledBy.
Process orderProcess(Journal& journal, const std::function<void(AsyncStep&)>& configure = {},
                     int version = 1) {
  AsyncStep submit("Submit", [&journal](AsyncStepContext& ctx) {
    journal.calls.push_back({"Submit", ctx.attempt(), ctx.processVersion(), ctx.serial()});
    if (ctx.attempt() == journal.failSubmitOnAttempt) {
      return StartOutcome::fail("ERP unavailable");
    }
    return StartOutcome::wait();
  });
  if (configure) configure(submit);
  auto finishing = [&journal](const char* name, bool stamp) {
    return Step(name, [&journal, name, stamp](StepContext& ctx) {
      journal.calls.push_back({name, ctx.attempt(), ctx.processVersion(), {}});
      if (stamp) ctx.fields().set("HandledBy", std::int64_t{ctx.processVersion()});
      return StepOutcome::finish();
    });
  };
  Process p("Order", version);
  p.field("OrderId", Type::String)
      .field("Status", Type::String, "Pending")
      .field("Reason", Type::String)
      .field("HandledBy", Type::Int64, 0)
      .step(std::move(submit))
      .step(finishing("Notify", true))
      .step(finishing("Escalate", false))
      .step(finishing("Recover", false));
  return p;
}

// What the first life leaves behind: one Order waiting at Submit.
struct FirstLife {
  InstanceId id = 0;
  std::string serial;
};

// The first life: an engine starts one Order, which waits at Submit, and goes
// away. `configure` adjusts Submit as in orderProcess.
FirstLife startOrderAndStop(const RestartHarness& h,
                            const std::function<void(AsyncStep&)>& configure = {}) {
  Journal journal;
  Engine a(h.openStore(), h.options());
  REQUIRE(a.define(orderProcess(journal, configure)));
  FirstLife life;
  life.id = a.start("Order", {{"OrderId", "A-17"}}).value();
  life.serial = a.instance(life.id).value().serial;
  return life;
}

// The only waiting step the engine lists; fails the test unless there is exactly one.
WaitingStep onlyWaiting(const Engine& engine) {
  auto page = engine.waiting();
  REQUIRE(page);
  REQUIRE(page->steps.size() == 1);
  return page->steps.front();
}

std::vector<HistoryKind> kindsOf(const std::vector<HistoryEvent>& events) {
  std::vector<HistoryKind> kinds;
  for (const auto& e : events) kinds.push_back(e.kind);
  return kinds;
}

// The history entries written from `from` on.
std::vector<HistoryEvent> since(const std::vector<HistoryEvent>& events, std::size_t from) {
  REQUIRE(from <= events.size());
  return {events.begin() + static_cast<std::ptrdiff_t>(from), events.end()};
}

// Records what the engine tells a listener. Thread-safe, as a Listener must be.
class RecordingListener final : public Listener {
 public:
  void onEvent(const HistoryEvent& event) override {
    std::lock_guard lock(mutex_);
    events_.push_back(event);
  }
  std::vector<HistoryEvent> events() const {
    std::lock_guard lock(mutex_);
    return events_;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<HistoryEvent> events_;
};

}  // namespace

TEST_CASE("a deadline survives a restart and escalates when it passes") {
  RestartHarness h;
  auto withDeadline = [](AsyncStep& s) { s.timeout(hours(1), "Escalate"); };
  std::string serial;
  InstanceId id = 0;
  {
    Journal journal;
    Engine a(h.openStore(), h.options());
    REQUIRE(a.define(orderProcess(journal, withDeadline)));
    id = a.start("Order", {{"OrderId", "A-17"}}).value();
    serial = a.instance(id).value().serial;
    REQUIRE(onlyWaiting(a).deadline == h.t0 + hours(1));
  }

  Journal journal;
  auto store = h.openStore();
  Engine b(store, h.options());
  REQUIRE(b.define(orderProcess(journal, withDeadline)));
  CHECK(journal.calls.empty());  // a waiting step is not re-driven by recovery

  h.at(minutes(59));
  CHECK(b.runDueTimers().value() == 0);
  const WaitingStep waiting = onlyWaiting(b);
  CHECK(waiting.serial == serial);
  CHECK(waiting.deadline == h.t0 + hours(1));
  CHECK(b.instance(id).value().status == InstanceStatus::Waiting);

  h.at(minutes(60));  // "at or before now": the deadline itself is due
  CHECK(b.runDueTimers().value() == 1);
  CHECK(store->loadStepRun(id, 1).value().status == StepRunStatus::TimedOut);
  CHECK(journal.steps() == std::vector<std::string>{"Escalate"});
  auto info = b.instance(id).value();
  CHECK(info.status == InstanceStatus::Completed);
  CHECK(info.currentStep == "Escalate");
  CHECK(b.waiting().value().steps.empty());
  CHECK(b.runDueTimers().value() == 0);  // a fired timer does not fire again

  CHECK(errorOf(b.completeServerEvent(serial, {{"Status", "Approved"}})).code == Errc::TimedOut);
  CHECK(b.instance(id).value().fields.get<std::string>("Status") == std::string("Pending"));
}

TEST_CASE("a deadline without escalation fails the instance after a restart") {
  RestartHarness h;
  auto withDeadline = [](AsyncStep& s) { s.timeout(hours(1)); };
  InstanceId id = 0;
  {
    Journal journal;
    Engine a(h.openStore(), h.options());
    REQUIRE(a.define(orderProcess(journal, withDeadline)));
    id = a.start("Order", {{"OrderId", "A-17"}}).value();
  }

  Journal journal;
  auto store = h.openStore();
  Engine b(store, h.options());
  REQUIRE(b.define(orderProcess(journal, withDeadline)));
  h.at(minutes(59));
  CHECK(b.runDueTimers().value() == 0);
  CHECK(b.instance(id).value().status == InstanceStatus::Waiting);

  h.at(minutes(61));
  CHECK(b.runDueTimers().value() == 1);
  auto info = b.instance(id).value();
  CHECK(info.status == InstanceStatus::Failed);
  CHECK(contains(info.error, "timed out"));
  CHECK(store->loadStepRun(id, 1).value().status == StepRunStatus::TimedOut);
  CHECK(journal.calls.empty());  // neither Notify nor Escalate ran
  CHECK(errorOf(b.completeServerEvent(info.serial)).code == Errc::TimedOut);
}

TEST_CASE("a heartbeat before a restart moves the deadline that the new engine honours") {
  RestartHarness h;
  auto withHeartbeat = [](AsyncStep& s) { s.timeout(hours(1), "Escalate").heartbeat(minutes(10)); };
  InstanceId id = 0;
  {
    Journal journal;
    Engine a(h.openStore(), h.options());
    REQUIRE(a.define(orderProcess(journal, withHeartbeat)));
    id = a.start("Order", {{"OrderId", "A-17"}}).value();
    h.at(minutes(55));
    REQUIRE(a.heartbeat(a.instance(id).value().serial));
    REQUIRE(onlyWaiting(a).deadline == h.t0 + minutes(65));
  }

  Journal journal;
  Engine b(h.openStore(), h.options());
  REQUIRE(b.define(orderProcess(journal, withHeartbeat)));
  CHECK(onlyWaiting(b).deadline == h.t0 + minutes(65));
  auto history = b.history(id).value();
  REQUIRE(!history.empty());
  CHECK(history.back().kind == HistoryKind::Heartbeat);
  CHECK(history.back().at == h.t0 + minutes(55));

  h.at(minutes(61));  // past the original deadline, before the moved one
  CHECK(b.runDueTimers().value() == 0);
  CHECK(b.instance(id).value().status == InstanceStatus::Waiting);
  CHECK(journal.calls.empty());

  h.at(minutes(66));
  CHECK(b.runDueTimers().value() == 1);
  CHECK(journal.steps() == std::vector<std::string>{"Escalate"});
  CHECK(b.instance(id).value().status == InstanceStatus::Completed);
}

TEST_CASE("failServerEvent after a restart follows the step's error line with the fields") {
  RestartHarness h;
  auto withErrorLine = [](AsyncStep& s) { s.onError("Recover"); };
  const auto [id, serial] = startOrderAndStop(h, withErrorLine);

  Journal journal;
  auto store = h.openStore();
  Engine b(store, h.options());
  REQUIRE(b.define(orderProcess(journal, withErrorLine)));
  REQUIRE(b.failServerEvent(serial, "credit check refused", {{"Reason", "credit limit"}}));

  CHECK(journal.steps() == std::vector<std::string>{"Recover"});
  auto info = b.instance(id).value();
  CHECK(info.status == InstanceStatus::Completed);
  CHECK(info.currentStep == "Recover");
  CHECK(info.fields.get<std::string>("Reason") == std::string("credit limit"));
  auto run = store->loadStepRun(id, 1).value();
  CHECK(run.status == StepRunStatus::Failed);
  CHECK(contains(run.error, "credit check refused"));
  CHECK(errorOf(b.completeServerEvent(serial)).code == Errc::StepFailed);
}

TEST_CASE("failServerEvent after a restart fails an instance without an error line") {
  RestartHarness h;
  const auto [id, serial] = startOrderAndStop(h);

  Journal journal;
  Engine b(h.openStore(), h.options());
  REQUIRE(b.define(orderProcess(journal)));
  REQUIRE(b.failServerEvent(serial, "credit check refused", {{"Reason", "credit limit"}}));

  CHECK(journal.calls.empty());
  auto info = b.instance(id).value();
  CHECK(info.status == InstanceStatus::Failed);
  CHECK(contains(info.error, "credit check refused"));
  CHECK(info.fields.get<std::string>("Reason") == std::string("credit limit"));
  CHECK(errorOf(b.completeServerEvent(serial)).code == Errc::StepFailed);
}

TEST_CASE("retry after a restart re-runs the failed async step with a new serial") {
  RestartHarness h;
  InstanceId id = 0;
  std::string firstSerial;
  {
    Journal journal;
    journal.failSubmitOnAttempt = 1;
    Engine a(h.openStore(), h.options());
    REQUIRE(a.define(orderProcess(journal)));
    id = a.start("Order", {{"OrderId", "A-17"}}).value();
    REQUIRE(journal.calls.size() == 1);
    firstSerial = journal.calls.front().serial;
    auto failed = a.instance(id).value();
    REQUIRE(failed.status == InstanceStatus::Failed);
    REQUIRE(contains(failed.error, "ERP unavailable"));
  }

  Journal journal;
  Engine b(h.openStore(), h.options());
  REQUIRE(b.define(orderProcess(journal)));
  CHECK(journal.calls.empty());  // a failed instance is not recovered on its own
  REQUIRE(b.retry(id));

  REQUIRE(journal.calls.size() == 1);
  const Journal::Call rerun = journal.calls.front();
  CHECK(rerun.step == "Submit");
  CHECK(rerun.attempt == 2);
  CHECK(rerun.serial != firstSerial);
  CHECK(rerun.serial.rfind(std::to_string(id) + "_2_", 0) == 0);  // a new step run: run 2
  auto waiting = b.instance(id).value();
  CHECK(waiting.status == InstanceStatus::Waiting);
  CHECK(waiting.serial == rerun.serial);
  CHECK(waiting.error.empty());

  CHECK(errorOf(b.completeServerEvent(firstSerial, {{"Status", "Approved"}})).code ==
        Errc::StepFailed);
  CHECK(b.instance(id).value().status == InstanceStatus::Waiting);
  REQUIRE(b.completeServerEvent(rerun.serial, {{"Status", "Approved"}}));
  CHECK(journal.steps() == std::vector<std::string>{"Submit", "Notify"});
  auto done = b.instance(id).value();
  CHECK(done.status == InstanceStatus::Completed);
  CHECK(done.fields.get<std::string>("Status") == std::string("Approved"));
  CHECK(errorOf(b.retry(id)).code == Errc::InvalidArgument);  // nothing failed now
}

TEST_CASE("history survives a restart, in order, with the injected timestamps") {
  RestartHarness h;
  const auto [id, serial] = startOrderAndStop(h);
  const std::string ids = std::to_string(id) + "_1";
  REQUIRE(serial.size() > ids.size() + 1);
  const std::string secret = serial.substr(ids.size() + 1);

  Journal journal;
  Engine b(h.openStore(), h.options());
  REQUIRE(b.define(orderProcess(journal)));
  auto before = b.history(id).value();
  REQUIRE(kindsOf(before) == std::vector<HistoryKind>{HistoryKind::Started,
                                                      HistoryKind::StepStarted,
                                                      HistoryKind::Waiting});
  for (const auto& e : before) {
    CHECK(e.instance == id);
    CHECK(e.at == h.t0);
  }
  CHECK(before[0].run == 0);
  CHECK(before[0].step.empty());
  CHECK(before[1].run == 1);
  CHECK(before[1].step == "Submit");
  CHECK(before[2].run == 1);
  CHECK(before[2].step == "Submit");
  CHECK(before[2].detail == ids);

  h.at(minutes(5));
  REQUIRE(b.completeServerEvent(serial, {{"Status", "Approved"}, {"Reason", "in stock"}}));
  auto after = b.history(id).value();
  REQUIRE(kindsOf(after) ==
          std::vector<HistoryKind>{HistoryKind::Started, HistoryKind::StepStarted,
                                   HistoryKind::Waiting, HistoryKind::StepCompleted,
                                   HistoryKind::StepStarted, HistoryKind::StepCompleted,
                                   HistoryKind::Completed});
  CHECK(std::vector<HistoryEvent>(after.begin(), after.begin() + 3) == before);
  for (std::size_t i = 3; i < after.size(); ++i) {
    CHECK(after[i].instance == id);
    CHECK(after[i].at == h.t0 + minutes(5));
  }
  CHECK(after[3].run == 1);
  CHECK(after[3].step == "Submit");
  CHECK(contains(after[3].detail, "Status"));
  CHECK(contains(after[3].detail, "Reason"));
  CHECK(after[4].run == 2);
  CHECK(after[4].step == "Notify");
  CHECK(after[5].run == 2);
  CHECK(after[5].step == "Notify");
  CHECK(after[6].run == 0);
  for (const auto& e : after) {
    INFO(Catch::StringMaker<HistoryEvent>::convert(e));
    CHECK_FALSE(contains(e.detail, secret));  // the history never shows a serial's secret
  }
}

TEST_CASE("after a restart an instance resumes on its own process version") {
  RestartHarness h;
  InstanceId v1Instance = 0;
  std::string serial;
  Fields fieldsBefore;
  {
    Journal journal;
    Engine a(h.openStore(), h.options());
    REQUIRE(a.define(orderProcess(journal, {}, 1)));
    v1Instance = a.start("Order", {{"OrderId", "A-17"}}).value();
    auto info = a.instance(v1Instance).value();
    serial = info.serial;
    fieldsBefore = info.fields;
    REQUIRE(info.processVersion == 1);
  }

  Journal journal;
  Engine b(h.openStore(), h.options());
  REQUIRE(b.define(orderProcess(journal, {}, 2)));

  // b does not define version 1: the stored declaration checks the fields,
  // and the completion is recorded for a host that defines it.
  CHECK(errorOf(b.completeServerEvent(serial, {{"Nope", "x"}})).code == Errc::InvalidField);
  REQUIRE(b.completeServerEvent(serial, {{"Status", "Approved"}}));
  auto still = b.instance(v1Instance).value();
  CHECK(still.status == InstanceStatus::Running);
  CHECK(still.currentStepStatus == StepRunStatus::Waiting);
  CHECK(still.fields == fieldsBefore);  // they land when the run is closed
  CHECK(journal.calls.empty());

  const InstanceId v2Instance = b.start("Order", {{"OrderId", "B-1"}}).value();
  CHECK(b.instance(v2Instance).value().processVersion == 2);
  REQUIRE(journal.calls.size() == 1);
  CHECK(journal.calls.back().version == 2);

  REQUIRE(b.define(orderProcess(journal, {}, 1)));  // takes the offered instance over
  REQUIRE(journal.calls.size() == 2);
  CHECK(journal.calls.back().step == "Notify");
  CHECK(journal.calls.back().version == 1);
  auto done = b.instance(v1Instance).value();
  CHECK(done.status == InstanceStatus::Completed);
  CHECK(done.processVersion == 1);
  CHECK(done.fields.get<std::int64_t>("HandledBy") == std::int64_t{1});
  CHECK(done.fields.get<std::string>("Status") == std::string("Approved"));

  // The newest version, not the last one defined, is what start() uses.
  const InstanceId later = b.start("Order", {{"OrderId", "B-2"}}).value();
  CHECK(b.instance(later).value().processVersion == 2);
  CHECK(journal.calls.back().version == 2);
}

TEST_CASE("business keys survive a restart") {
  RestartHarness h;
  auto byOrderId = [](AsyncStep& s) { s.correlate("OrderId"); };
  const std::vector<std::string> keys{"A-1", "A-2", "A-3", "A-3"};
  std::vector<InstanceId> ids;
  {
    Journal journal;
    Engine a(h.openStore(), h.options());
    REQUIRE(a.define(orderProcess(journal, byOrderId)));
    for (const auto& key : keys) ids.push_back(a.start("Order", {{"OrderId", key}}).value());
  }

  Journal journal;
  Engine b(h.openStore(), h.options());
  REQUIRE(b.define(orderProcess(journal, byOrderId)));

  REQUIRE(b.completeServerEventByKey("Order", "Submit", "A-2", {{"Status", "Approved"}}));
  CHECK(journal.steps() == std::vector<std::string>{"Notify"});
  for (std::size_t i = 0; i < ids.size(); ++i) {
    INFO("instance " << ids[i] << " with key " << keys[i]);
    auto info = b.instance(ids[i]).value();
    if (keys[i] == "A-2") {
      CHECK(info.status == InstanceStatus::Completed);
      CHECK(info.fields.get<std::string>("Status") == std::string("Approved"));
    } else {
      CHECK(info.status == InstanceStatus::Waiting);
      CHECK(info.fields.get<std::string>("Status") == std::string("Pending"));
    }
  }

  CHECK(errorOf(b.completeServerEventByKey("Order", "Submit", "A-9", {})).code == Errc::NotFound);

  const auto historyOf3 = b.history(ids[2]).value();
  const auto historyOf4 = b.history(ids[3]).value();
  CHECK(errorOf(b.completeServerEventByKey("Order", "Submit", "A-3", {{"Status", "Approved"}}))
            .code == Errc::AmbiguousKey);
  for (InstanceId id : {ids[2], ids[3]}) {
    auto info = b.instance(id).value();
    CHECK(info.status == InstanceStatus::Waiting);
    CHECK(info.fields.get<std::string>("Status") == std::string("Pending"));
  }
  CHECK(b.history(ids[2]).value() == historyOf3);
  CHECK(b.history(ids[3]).value() == historyOf4);
  CHECK(b.waiting().value().steps.size() == 3);
  CHECK(journal.steps() == std::vector<std::string>{"Notify"});

  CHECK(errorOf(b.completeServerEventByKey("Order", "Submit", "A-2", {})).code == Errc::NotFound);
}

TEST_CASE("cancel after a restart ends the waiting instance") {
  RestartHarness h;
  const auto [id, serial] = startOrderAndStop(h);

  Journal journal;
  auto store = h.openStore();
  Engine b(store, h.options());
  REQUIRE(b.define(orderProcess(journal)));
  h.at(minutes(3));
  REQUIRE(b.cancel(id, "customer withdrew the order"));

  auto info = b.instance(id).value();
  CHECK(info.status == InstanceStatus::Cancelled);
  CHECK(info.error == "customer withdrew the order");
  CHECK(store->loadStepRun(id, 1).value().status == StepRunStatus::Cancelled);
  CHECK(b.waiting().value().steps.empty());
  CHECK(errorOf(b.completeServerEvent(serial, {{"Status", "Approved"}})).code == Errc::Cancelled);
  CHECK(journal.calls.empty());

  auto history = b.history(id).value();
  REQUIRE(!history.empty());
  CHECK(history.back().kind == HistoryKind::Cancelled);
  CHECK(history.back().detail == "customer withdrew the order");
  CHECK(history.back().at == h.t0 + minutes(3));
  CHECK(errorOf(b.cancel(id, "again")).code == Errc::Cancelled);
}

TEST_CASE("a listener and a log sink on the new engine see exactly its transitions") {
  RestartHarness h;
  auto withDeadline = [](AsyncStep& s) { s.timeout(hours(1), "Escalate"); };
  std::vector<InstanceId> ids;
  std::vector<std::string> serials;
  {
    Journal journal;
    Engine a(h.openStore(), h.options());
    REQUIRE(a.define(orderProcess(journal, withDeadline)));
    for (const char* key : {"A-1", "A-2", "A-3"}) {
      ids.push_back(a.start("Order", {{"OrderId", key}}).value());
      serials.push_back(a.instance(ids.back()).value().serial);
    }
  }

  auto listener = std::make_shared<RecordingListener>();
  std::mutex logMutex;
  std::vector<std::pair<LogLevel, std::string>> lines;
  EngineOptions options = h.options();
  options.listener = listener;
  options.log = [&](LogLevel level, std::string_view message) {
    std::lock_guard lock(logMutex);
    lines.emplace_back(level, std::string(message));
  };

  Journal journal;
  Engine b(h.openStore(), options);
  REQUIRE(b.define(orderProcess(journal, withDeadline)));
  std::vector<std::size_t> before;
  for (InstanceId id : ids) before.push_back(b.history(id).value().size());
  CHECK(listener->events().empty());  // nothing A wrote is replayed

  // One transition of each kind: a completion, a heartbeat, and a timer.
  h.at(minutes(10));
  REQUIRE(b.completeServerEvent(serials[0], {{"Status", "Approved"}}));
  h.at(minutes(20));
  REQUIRE(b.heartbeat(serials[1]));
  h.at(minutes(60));
  REQUIRE(b.runDueTimers().value() == 1);  // the third instance's; the second's moved

  std::vector<HistoryEvent> written;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    auto events = since(b.history(ids[i]).value(), before[i]);
    written.insert(written.end(), events.begin(), events.end());
  }
  REQUIRE(written.size() >= 3);
  CHECK(listener->events() == written);

  std::vector<std::string> info;
  for (const auto& [level, message] : lines) {
    if (level == LogLevel::Info) info.push_back(message);
  }
  REQUIRE(info.size() == written.size());
  for (std::size_t i = 0; i < written.size(); ++i) {
    INFO(info[i]);
    CHECK(contains(info[i], "instance " + std::to_string(written[i].instance)));
    CHECK(contains(info[i], historyKindName(written[i].kind)));
  }
}
