// The step lifecycle: timeouts and escalation, failure from outside, heartbeats,
// retry, history, listeners and logs, versions, business keys.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "model/serial.hpp"
#include "support/catch.hpp"
#include "support/test_support.hpp"

using namespace asyncflow;
using namespace std::chrono_literals;
using asyncflow::testing::Harness;
using asyncflow::testing::info;

namespace {

// Submit (async, configurable) -> Notify; Escalate and Repair are reached only
// by the escalation and error lines.
struct Flow {
  std::vector<std::string> ran;
  std::string serial;
  int attempt = 0;
  std::function<StartOutcome(AsyncStepContext&)> submit = [](AsyncStepContext&) {
    return StartOutcome::wait();
  };
  std::function<void(AsyncStep&)> configure = [](AsyncStep&) {};

  Step record(const std::string& name) {
    return Step(name, [this, name](StepContext&) {
      ran.push_back(name);
      return StepOutcome::finish();
    });
  }

  Process process(int version = 1) {
    AsyncStep submitStep("Submit", [this](AsyncStepContext& ctx) {
      ran.push_back("Submit");
      serial = ctx.serial();
      attempt = ctx.attempt();
      return submit(ctx);
    });
    configure(submitStep);
    Process p("Order", version);
    p.field("OrderId", Type::String)
        .field("Status", Type::String, "Pending")
        .field("Reason", Type::String)
        .step(submitStep)
        .step(record("Notify"))
        .step(record("Escalate"))
        .step(record("Repair"));
    return p;
  }
};

std::vector<HistoryKind> kinds(const std::vector<HistoryEvent>& events) {
  std::vector<HistoryKind> out;
  for (const auto& e : events) out.push_back(e.kind);
  return out;
}

}  // namespace

TEST_CASE("a timeout escalates when the deadline passes, and not before") {
  Harness h;
  Flow flow;
  flow.configure = [](AsyncStep& s) { s.timeout(1h, "Escalate"); };
  Engine engine(h.store, h.options());
  REQUIRE(engine.define(flow.process()));
  const Timestamp t0 = h.clock->now();
  auto id = engine.start("Order", {}).value();

  auto page = engine.waiting().value();
  REQUIRE(page.steps.size() == 1);
  REQUIRE(page.steps[0].deadline);
  CHECK(*page.steps[0].deadline == t0 + 1h);

  CHECK(engine.runDueTimers().value() == 0);
  h.clock->advance(59min);
  CHECK(engine.runDueTimers().value() == 0);
  CHECK(info(engine, id).status == InstanceStatus::Waiting);

  h.clock->advance(1min);
  CHECK(engine.runDueTimers().value() == 1);
  auto escalated = info(engine, id);
  CHECK(escalated.status == InstanceStatus::Completed);
  CHECK(escalated.currentStep == "Escalate");
  CHECK(flow.ran == std::vector<std::string>{"Submit", "Escalate"});
  CHECK(hasCode(engine.completeServerEvent(flow.serial, {}), Errc::TimedOut));
  CHECK(engine.runDueTimers().value() == 0);  // fired once
  const auto trail = kinds(engine.history(id).value());
  CHECK(std::find(trail.begin(), trail.end(), HistoryKind::TimedOut) != trail.end());
}

TEST_CASE("a timeout without an escalation step fails the instance") {
  Harness h;
  Flow flow;
  flow.configure = [](AsyncStep& s) { s.timeout(10min); };
  Engine engine(h.store, h.options());
  REQUIRE(engine.define(flow.process()));
  auto id = engine.start("Order", {}).value();
  h.clock->advance(10min);
  CHECK(engine.runDueTimers().value() == 1);
  auto failed = info(engine, id);
  CHECK(failed.status == InstanceStatus::Failed);
  CHECK(failed.currentStepStatus == StepRunStatus::TimedOut);
  CHECK(failed.error.find("timed out") != std::string::npos);
}

TEST_CASE("a completion before the deadline disarms the timer") {
  Harness h;
  Flow flow;
  flow.configure = [](AsyncStep& s) { s.timeout(1h, "Escalate"); };
  Engine engine(h.store, h.options());
  REQUIRE(engine.define(flow.process()));
  auto id = engine.start("Order", {}).value();
  h.clock->advance(30min);
  REQUIRE(engine.completeServerEvent(flow.serial, {{"Status", "Approved"}}));
  h.clock->advance(2h);
  CHECK(engine.runDueTimers().value() == 0);
  CHECK(info(engine, id).currentStep == "Notify");
}

TEST_CASE("the timer thread sleeps until the earliest deadline and fires it") {
  // The real clock: the only test here that waits for time to pass. It waits on
  // the escalation itself (bounded), and asserts what happened, not how fast.
  std::mutex mutex;
  std::condition_variable escalated;
  bool done = false;
  Process p("Timed", 1);
  p.step(AsyncStep("Wait", [](AsyncStepContext&) { return StartOutcome::wait(); })
             .timeout(20ms, "Escalate"))
      .step(Step("Never", [](StepContext&) { return StepOutcome::next(); }))
      .step(Step("Escalate", [&](StepContext&) {
        std::lock_guard lock(mutex);
        done = true;
        escalated.notify_all();
        return StepOutcome::finish();
      }));
  Engine engine(std::make_shared<MemoryStore>());  // system clock, timer thread on
  REQUIRE(engine.define(p));
  auto id = engine.start("Timed", {}).value();
  {
    std::unique_lock lock(mutex);
    REQUIRE(escalated.wait_for(lock, 30s, [&] { return done; }));
  }
  engine.waitIdle();
  CHECK(engine.instance(id).value().currentStep == "Escalate");
}

TEST_CASE("failServerEvent fails the step, the error line or the instance failure follows") {
  Harness h;
  Flow flow;
  Engine engine(h.store, h.options());

  SECTION("with an error line, the instance goes on there, with the failure's fields") {
    flow.configure = [](AsyncStep& s) { s.onError("Repair"); };
    REQUIRE(engine.define(flow.process()));
    auto id = engine.start("Order", {}).value();
    REQUIRE(engine.failServerEvent(flow.serial, "ERP rejected the order",
                                   {{"Reason", "credit limit"}}));
    auto repaired = info(engine, id);
    CHECK(repaired.status == InstanceStatus::Completed);
    CHECK(repaired.currentStep == "Repair");
    CHECK(repaired.fields.get<std::string>("Reason") == std::string("credit limit"));
    CHECK(flow.ran == std::vector<std::string>{"Submit", "Repair"});
    CHECK(hasCode(engine.completeServerEvent(flow.serial, {}), Errc::StepFailed));
    CHECK(hasCode(engine.failServerEvent(flow.serial, "again"), Errc::StepFailed));
  }

  SECTION("without one, the instance fails with the reason") {
    REQUIRE(engine.define(flow.process()));
    auto id = engine.start("Order", {}).value();
    REQUIRE(engine.failServerEvent(flow.serial, "ERP rejected the order"));
    auto failed = info(engine, id);
    CHECK(failed.status == InstanceStatus::Failed);
    CHECK(failed.currentStepStatus == StepRunStatus::Failed);
    CHECK(failed.error.find("ERP rejected the order") != std::string::npos);
  }

  SECTION("a failure that arrives while the handler runs fails the step when it returns") {
    flow.submit = [&](AsyncStepContext& ctx) {
      CHECK(engine.failServerEvent(ctx.serial(), "refused at once", {{"Reason", "early"}}));
      CHECK(hasCode(engine.completeServerEvent(ctx.serial(), {}), Errc::AlreadyCompleted));
      return StartOutcome::wait();
    };
    REQUIRE(engine.define(flow.process()));
    auto id = engine.start("Order", {}).value();
    auto failed = info(engine, id);
    CHECK(failed.status == InstanceStatus::Failed);
    CHECK(failed.error.find("refused at once") != std::string::npos);
    CHECK(failed.fields.get<std::string>("Reason") == std::string("early"));
  }

  SECTION("its errors are the completion's, and change nothing") {
    REQUIRE(engine.define(flow.process()));
    auto id = engine.start("Order", {}).value();
    CHECK(hasCode(engine.failServerEvent("nonsense", "x"), Errc::InvalidSerial));
    CHECK(hasCode(engine.failServerEvent(flow.serial, "x", {{"Bogus", 1}}), Errc::InvalidField));
    CHECK(info(engine, id).status == InstanceStatus::Waiting);
  }
}

TEST_CASE("a sync step's error line catches fail() and throws") {
  Harness h;
  Engine engine(h.store, h.options());
  std::vector<std::string> ran;
  Process p("Sync", 1);
  p.step(Step("Work", [](StepContext&) -> StepOutcome { throw std::runtime_error("boom"); })
             .onError("Recover"))
      .step(Step("Recover", [&](StepContext&) {
        ran.push_back("Recover");
        return StepOutcome::next();
      }));
  REQUIRE(engine.define(p));
  auto id = engine.start("Sync", {}).value();
  CHECK(ran == std::vector<std::string>{"Recover"});
  CHECK(info(engine, id).status == InstanceStatus::Completed);
  const auto trail = engine.history(id).value();
  REQUIRE(trail.size() >= 3);
  CHECK(trail[2].kind == HistoryKind::StepFailed);
  CHECK(trail[2].detail == "boom");
}

TEST_CASE("heartbeats move the deadline by the heartbeat interval") {
  Harness h;
  Flow flow;
  flow.configure = [](AsyncStep& s) { s.timeout(1h, "Escalate").heartbeat(10min); };
  Engine engine(h.store, h.options());
  REQUIRE(engine.define(flow.process()));
  const Timestamp t0 = h.clock->now();
  auto id = engine.start("Order", {}).value();

  h.clock->advance(55min);
  REQUIRE(engine.heartbeat(flow.serial));
  CHECK(*engine.waiting().value().steps.at(0).deadline == t0 + 65min);
  h.clock->advance(6min);  // past the original deadline
  CHECK(engine.runDueTimers().value() == 0);
  CHECK(info(engine, id).status == InstanceStatus::Waiting);
  h.clock->advance(4min);
  CHECK(engine.runDueTimers().value() == 1);
  CHECK(info(engine, id).currentStep == "Escalate");

  const auto trail = kinds(engine.history(id).value());
  CHECK(std::count(trail.begin(), trail.end(), HistoryKind::Heartbeat) == 1);
  CHECK(hasCode(engine.heartbeat(flow.serial), Errc::TimedOut));
  CHECK(hasCode(engine.heartbeat("1_99_AAAAAAAAAAAAAAAAAAAAAA"), Errc::NotFound));
}

TEST_CASE("a heartbeat without a timeout is recorded and moves nothing") {
  Harness h;
  Flow flow;
  Engine engine(h.store, h.options());
  REQUIRE(engine.define(flow.process()));
  auto id = engine.start("Order", {}).value();
  REQUIRE(engine.heartbeat(flow.serial));
  CHECK(!engine.waiting().value().steps.at(0).deadline);
  REQUIRE(engine.completeServerEvent(flow.serial, {}));
  CHECK(hasCode(engine.heartbeat(flow.serial), Errc::AlreadyCompleted));
  CHECK(info(engine, id).status == InstanceStatus::Completed);
}

TEST_CASE("retry re-runs the failed step with a new serial and a higher attempt") {
  Harness h;
  Flow flow;
  flow.submit = [&flow](AsyncStepContext&) {
    return flow.attempt == 1 ? StartOutcome::fail("ERP down") : StartOutcome::wait();
  };
  Engine engine(h.store, h.options());
  REQUIRE(engine.define(flow.process()));
  auto id = engine.start("Order", {}).value();
  REQUIRE(info(engine, id).status == InstanceStatus::Failed);
  const std::string oldSerial = flow.serial;

  REQUIRE(engine.retry(id));
  CHECK(flow.attempt == 2);
  CHECK(flow.serial != oldSerial);
  auto waiting = info(engine, id);
  CHECK(waiting.status == InstanceStatus::Waiting);
  CHECK(waiting.error.empty());
  CHECK(hasCode(engine.completeServerEvent(oldSerial, {}), Errc::StepFailed));
  REQUIRE(engine.completeServerEvent(flow.serial, {}));
  CHECK(info(engine, id).status == InstanceStatus::Completed);

  const auto trail = kinds(engine.history(id).value());
  CHECK(std::count(trail.begin(), trail.end(), HistoryKind::Retried) == 1);

  SECTION("only a failed instance can be retried") {
    CHECK(hasCode(engine.retry(id), Errc::InvalidArgument));  // completed
    CHECK(hasCode(engine.retry(99), Errc::NotFound));
    auto waitingId = engine.start("Order", {}).value();  // attempt 1 fails again...
    REQUIRE(engine.retry(waitingId));                    // ...and now waits
    CHECK(hasCode(engine.retry(waitingId), Errc::InvalidArgument));
    REQUIRE(engine.cancel(waitingId, "stop"));
    CHECK(hasCode(engine.retry(waitingId), Errc::Cancelled));
  }
}

TEST_CASE("a timed-out step can be retried, its old serial keeps answering TimedOut") {
  Harness h;
  Flow flow;
  flow.configure = [](AsyncStep& s) { s.timeout(5min); };
  Engine engine(h.store, h.options());
  REQUIRE(engine.define(flow.process()));
  auto id = engine.start("Order", {}).value();
  const std::string oldSerial = flow.serial;
  h.clock->advance(5min);
  REQUIRE(engine.runDueTimers().value() == 1);
  REQUIRE(engine.retry(id));
  CHECK(flow.attempt == 2);
  CHECK(hasCode(engine.completeServerEvent(oldSerial, {}), Errc::TimedOut));
  REQUIRE(engine.completeServerEvent(flow.serial, {}));
  CHECK(info(engine, id).status == InstanceStatus::Completed);
}

TEST_CASE("history is the audit trail, with the injected time and no secrets") {
  Harness h;
  Flow flow;
  Engine engine(h.store, h.options());
  REQUIRE(engine.define(flow.process()));
  const Timestamp t0 = h.clock->now();
  auto id = engine.start("Order", {}).value();
  h.clock->advance(2min);
  REQUIRE(engine.completeServerEvent(flow.serial, {{"Status", "Approved"}}));

  const auto trail = engine.history(id).value();
  CHECK(kinds(trail) == std::vector<HistoryKind>{
                            HistoryKind::Started, HistoryKind::StepStarted, HistoryKind::Waiting,
                            HistoryKind::StepCompleted, HistoryKind::StepStarted,
                            HistoryKind::StepCompleted, HistoryKind::Completed});
  CHECK(trail[0].detail == "Order version 1");
  CHECK(trail[1].step == "Submit");
  CHECK(trail[2].detail == detail::formatSerial(id, 1, {}));
  CHECK(trail[2].at == t0);
  CHECK(trail[3].detail == "Status");
  CHECK(trail[3].at == t0 + 2min);
  for (const auto& e : trail) {
    CHECK(e.instance == id);
    CHECK(e.detail.find(detail::parseSerial(flow.serial).value().secret) == std::string::npos);
  }
  CHECK(hasCode(engine.history(42), Errc::NotFound));
}

TEST_CASE("a listener and a log sink hear of every durable transition") {
  struct Recorder final : Listener {
    std::mutex mutex;
    std::vector<HistoryEvent> events;
    void onEvent(const HistoryEvent& e) override {
      std::lock_guard lock(mutex);
      events.push_back(e);
    }
  };
  struct Thrower final : Listener {
    void onEvent(const HistoryEvent&) override { throw std::runtime_error("listener bug"); }
  };
  Harness h;
  Flow flow;
  auto recorder = std::make_shared<Recorder>();
  std::vector<std::string> lines;
  EngineOptions options = h.options();
  options.listener = recorder;
  options.log = [&lines](LogLevel level, std::string_view line) {
    if (level == LogLevel::Info) lines.emplace_back(line);
  };
  Engine engine(h.store, options);
  REQUIRE(engine.define(flow.process()));
  auto id = engine.start("Order", {}).value();
  REQUIRE(engine.completeServerEvent(flow.serial, {}));
  CHECK(recorder->events == engine.history(id).value());
  CHECK(lines.size() == recorder->events.size());
  CHECK(lines.front().find("instance 1: Started") != std::string::npos);

  SECTION("a listener that throws changes nothing") {
    EngineOptions throwing = h.options();
    throwing.listener = std::make_shared<Thrower>();
    Engine other(h.store, throwing);
    REQUIRE(other.define(flow.process()));
    auto second = other.start("Order", {}).value();
    REQUIRE(other.completeServerEvent(flow.serial, {}));
    CHECK(info(other, second).status == InstanceStatus::Completed);
  }
}

TEST_CASE("versions: start uses the newest, a waiting instance resumes on its own") {
  Harness h;
  std::vector<std::string> ran;
  std::string serial;
  auto version = [&](int v) {
    Process p("Order", v);
    p.step(AsyncStep("Submit", [&serial](AsyncStepContext& ctx) {
       serial = ctx.serial();
       return StartOutcome::wait();
     })).step(Step("Notify", [&ran, v](StepContext&) {
      ran.push_back("Notify v" + std::to_string(v));
      return StepOutcome::next();
    }));
    return p;
  };
  Engine engine(h.store, h.options());
  REQUIRE(engine.define(version(1)));
  auto old = engine.start("Order", {}).value();
  const std::string oldSerial = serial;
  REQUIRE(engine.define(version(2)));
  auto current = engine.start("Order", {}).value();
  CHECK(info(engine, current).processVersion == 2);

  REQUIRE(engine.completeServerEvent(oldSerial, {}));
  CHECK(ran == std::vector<std::string>{"Notify v1"});
  REQUIRE(engine.completeServerEvent(serial, {}));
  CHECK(ran == std::vector<std::string>{"Notify v1", "Notify v2"});

  SECTION("a host without the version records the completion; a host with it moves on") {
    auto waiting = engine.start("Order", {}).value();  // v2
    Engine onlyV1(h.store, h.options());
    REQUIRE(onlyV1.define(version(1)));
    REQUIRE(onlyV1.completeServerEvent(serial, {}));  // checked against v2's stored declaration
    CHECK(ran == std::vector<std::string>{"Notify v1", "Notify v2"});  // nothing ran here
    CHECK(info(onlyV1, waiting).status == InstanceStatus::Running);    // offered to any host
    CHECK(onlyV1.waiting().value().steps.empty());  // finished: no longer listed as waiting
    CHECK(hasCode(onlyV1.completeServerEvent(serial, {}), Errc::AlreadyCompleted));
    CHECK(onlyV1.runDueTimers().value() == 0);  // onlyV1 cannot run v2: it leaves it
    CHECK(info(onlyV1, waiting).status == InstanceStatus::Running);
    CHECK(engine.runDueTimers().value() == 0);  // the host with v2 takes it over
    CHECK(ran == std::vector<std::string>{"Notify v1", "Notify v2", "Notify v2"});
    CHECK(info(engine, waiting).status == InstanceStatus::Completed);
    CHECK(info(engine, old).status == InstanceStatus::Completed);
  }
}

TEST_CASE("business keys: complete by the external system's own id") {
  Harness h;
  Flow flow;
  flow.configure = [](AsyncStep& s) { s.correlate("OrderId"); };
  Engine engine(h.store, h.options());
  REQUIRE(engine.define(flow.process()));
  auto a1 = engine.start("Order", {{"OrderId", "A-1"}}).value();
  auto a2 = engine.start("Order", {{"OrderId", "A-2"}}).value();
  auto a3 = engine.start("Order", {{"OrderId", "A-3"}}).value();
  auto a3b = engine.start("Order", {{"OrderId", "A-3"}}).value();

  REQUIRE(engine.completeServerEventByKey("Order", "Submit", "A-2", {{"Status", "Approved"}}));
  CHECK(info(engine, a2).status == InstanceStatus::Completed);
  CHECK(info(engine, a2).fields.get<std::string>("Status") == std::string("Approved"));
  CHECK(info(engine, a1).status == InstanceStatus::Waiting);

  CHECK(hasCode(engine.completeServerEventByKey("Order", "Submit", "A-2", {}), Errc::NotFound));
  CHECK(hasCode(engine.completeServerEventByKey("Order", "Submit", "A-9", {}), Errc::NotFound));
  CHECK(hasCode(engine.completeServerEventByKey("Other", "Submit", "A-1", {}), Errc::NotFound));
  CHECK(hasCode(engine.completeServerEventByKey("Order", "Notify", "A-1", {}), Errc::NotFound));
  CHECK(hasCode(engine.completeServerEventByKey("Order", "Submit", "", {}), Errc::InvalidArgument));
  CHECK(hasCode(engine.completeServerEventByKey("Order", "Submit", "A-3", {}), Errc::AmbiguousKey));
  CHECK(hasCode(engine.completeServerEventByKey("Order", "Submit", "A-1", {{"Bogus", 1}}),
                Errc::InvalidField));
  CHECK(info(engine, a3).status == InstanceStatus::Waiting);
  CHECK(info(engine, a3b).status == InstanceStatus::Waiting);
  CHECK(info(engine, a1).status == InstanceStatus::Waiting);
}

TEST_CASE("define rejects broken lifecycle settings") {
  Harness h;
  Engine engine(h.store, h.options());
  auto wait = [](AsyncStepContext&) { return StartOutcome::wait(); };
  auto with = [&](AsyncStep step) {
    Process p("Bad", 1);
    p.field("Key", Type::String).step(std::move(step));
    return p;
  };
  auto rejected = [&](const Process& p, std::string_view culprit) {
    auto result = engine.define(p);
    REQUIRE(hasCode(result, Errc::InvalidProcess));
    CHECK(result.error().message.find(culprit) != std::string::npos);
  };
  rejected(with(AsyncStep("S", wait).timeout(1h, "Nowhere")), "Nowhere");
  rejected(with(AsyncStep("S", wait).onError("Missing")), "Missing");
  rejected(with(AsyncStep("S", wait).timeout(0ms, "S")), "positive timeout");
  rejected(with(AsyncStep("S", wait).heartbeat(1min)), "heartbeat");
  rejected(with(AsyncStep("S", wait).correlate("Undeclared")), "Undeclared");
  Process syncBad("Bad", 1);
  syncBad.step(Step("S", [](StepContext&) { return StepOutcome::next(); }).onError("Gone"));
  rejected(syncBad, "Gone");
  CHECK(engine.define(with(AsyncStep("S", wait).timeout(1h).heartbeat(1min).correlate("Key"))));
}
