// Engine semantics: the async step's wait-and-resume cycle, every row of the
// completeServerEvent outcome table, early completion, routing and failures.
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <asyncflow/testing/fault_injection.hpp>

#include "model/serial.hpp"
#include "support/catch.hpp"
#include "support/test_support.hpp"

using namespace asyncflow;
using asyncflow::testing::Fault;
using asyncflow::testing::FaultInjectingStore;
using asyncflow::testing::Harness;
using asyncflow::testing::info;
using asyncflow::testing::Latch;

namespace {

// Order: Validate (sync) -> Submit (async) -> Notify (sync). The async step's
// behaviour is the test's to choose; Notify records that it ran.
struct OrderFlow {
  std::function<StartOutcome(AsyncStepContext&)> submit = [](AsyncStepContext&) {
    return StartOutcome::wait();
  };
  std::vector<std::string> ran;  // step names, in order
  std::string lastSerial;
  int lastAttempt = 0;

  Process process(int version = 1) {
    Process p("Order", version);
    p.field("OrderId", Type::String)
        .field("Status", Type::String, "Pending")
        .field("Amount", Type::Double, 0.0)
        .field("Ticket", Type::String)
        .field("Count", Type::Int64, 0)
        .step(Step("Validate",
                   [this](StepContext&) {
                     ran.push_back("Validate");
                     return StepOutcome::next();
                   }))
        .step(AsyncStep("Submit",
                        [this](AsyncStepContext& ctx) {
                          ran.push_back("Submit");
                          lastSerial = ctx.serial();
                          lastAttempt = ctx.attempt();
                          return submit(ctx);
                        }))
        .step(Step("Notify", [this](StepContext&) {
          ran.push_back("Notify");
          return StepOutcome::next();
        }));
    return p;
  }
};

// Everything a caller can observe about an instance, for "state unchanged" checks.
struct Observed {
  InstanceStatus status;
  std::string step;
  StepRunStatus stepStatus;
  Fields fields;
  bool operator==(const Observed& o) const {
    return status == o.status && step == o.step && stepStatus == o.stepStatus && fields == o.fields;
  }
};

Observed observe(const Engine& engine, InstanceId id) {
  auto i = info(engine, id);
  return Observed{i.status, i.currentStep, i.currentStepStatus, i.fields};
}

}  // namespace

TEST_CASE("an async step waits, and completeServerEvent resumes the process with its fields") {
  Harness h;
  OrderFlow flow;
  Engine engine(h.store, h.options());
  REQUIRE(engine.define(flow.process()));

  auto id = engine.start("Order", {{"OrderId", "A-17"}});
  REQUIRE(id);
  CHECK(flow.ran == std::vector<std::string>{"Validate", "Submit"});

  auto waiting = info(engine, *id);
  CHECK(waiting.status == InstanceStatus::Waiting);
  CHECK(waiting.currentStep == "Submit");
  CHECK(waiting.currentStepStatus == StepRunStatus::Waiting);
  CHECK(waiting.serial == flow.lastSerial);
  CHECK(flow.lastAttempt == 1);

  REQUIRE(engine.completeServerEvent(flow.lastSerial, {{"Status", "Approved"}}));
  CHECK(flow.ran == std::vector<std::string>{"Validate", "Submit", "Notify"});

  auto done = info(engine, *id);
  CHECK(done.status == InstanceStatus::Completed);
  CHECK(done.currentStep == "Notify");
  CHECK(done.fields.get<std::string>("Status") == std::string("Approved"));
  CHECK(done.fields.get<std::string>("OrderId") == std::string("A-17"));
}

TEST_CASE("the serial is durable before the start handler runs") {
  Harness h;
  OrderFlow flow;
  Engine engine(h.store, h.options());
  std::optional<InstanceInfo> seenInside;
  flow.submit = [&](AsyncStepContext& ctx) {
    // The store already knows the run, under the serial the handler was given.
    seenInside = engine.instance(ctx.instanceId()).value();
    return StartOutcome::wait();
  };
  REQUIRE(engine.define(flow.process()));
  auto id = engine.start("Order", {});
  REQUIRE(id);
  REQUIRE(seenInside);
  CHECK(seenInside->currentStep == "Submit");
  CHECK(seenInside->currentStepStatus == StepRunStatus::Starting);
  CHECK(seenInside->serial == flow.lastSerial);
}

TEST_CASE("an async step uses the outbound call's response to set fields before it waits") {
  Harness h;
  OrderFlow flow;
  flow.submit = [](AsyncStepContext& ctx) {
    const std::string response = "ticket=T-99;status=202";  // what the external system answered
    ctx.fields().set("Ticket", response.substr(7, 4));
    return StartOutcome::wait();
  };
  Engine engine(h.store, h.options());
  REQUIRE(engine.define(flow.process()));
  auto id = engine.start("Order", {});
  REQUIRE(id);
  auto waiting = info(engine, *id);
  CHECK(waiting.status == InstanceStatus::Waiting);
  CHECK(waiting.fields.get<std::string>("Ticket") == std::string("T-99"));
}

TEST_CASE("StartOutcome::fail and a non-2xx style response fail the step and the instance") {
  Harness h;
  OrderFlow flow;
  flow.submit = [](AsyncStepContext& ctx) {
    ctx.fields().set("Ticket", "none");
    return StartOutcome::fail("ERP answered 503");
  };
  Engine engine(h.store, h.options());
  REQUIRE(engine.define(flow.process()));
  auto id = engine.start("Order", {});
  REQUIRE(id);
  auto failed = info(engine, *id);
  CHECK(failed.status == InstanceStatus::Failed);
  CHECK(failed.currentStepStatus == StepRunStatus::Failed);
  CHECK(failed.error.find("ERP answered 503") != std::string::npos);
  CHECK(flow.ran == std::vector<std::string>{"Validate", "Submit"});
  // A failed step's writes are kept (they are the evidence of what happened).
  CHECK(failed.fields.get<std::string>("Ticket") == std::string("none"));

  auto late = engine.completeServerEvent(flow.lastSerial, {});
  CHECK(hasCode(late, Errc::StepFailed));
}

TEST_CASE("StartOutcome::complete skips the wait") {
  Harness h;
  OrderFlow flow;
  flow.submit = [](AsyncStepContext&) { return StartOutcome::complete(); };
  Engine engine(h.store, h.options());
  REQUIRE(engine.define(flow.process()));
  auto id = engine.start("Order", {});
  REQUIRE(id);
  CHECK(flow.ran == std::vector<std::string>{"Validate", "Submit", "Notify"});
  CHECK(info(engine, *id).status == InstanceStatus::Completed);
  CHECK(hasCode(engine.completeServerEvent(flow.lastSerial, {}), Errc::AlreadyCompleted));
}

TEST_CASE("completeServerEvent outcome table") {
  Harness h;
  OrderFlow flow;
  Engine engine(h.store, h.options());
  REQUIRE(engine.define(flow.process()));
  auto id = engine.start("Order", {{"OrderId", "A-1"}});
  REQUIRE(id);
  const std::string serial = flow.lastSerial;
  const Observed before = observe(engine, *id);

  SECTION("malformed serials are InvalidSerial and change nothing") {
    for (std::string bad : {std::string(), std::string("garbage"), std::string("1"),
                            std::string("1_"), std::string("x_2"), std::string("01_2"),
                            serial + "x", serial.substr(0, serial.size() - 1)}) {
      INFO("serial: " << bad);
      CHECK(hasCode(engine.completeServerEvent(bad, {{"Status", "X"}}), Errc::InvalidSerial));
    }
    CHECK(observe(engine, *id) == before);
  }

  SECTION("a bare serial is InvalidSerial when the engine requires secrets") {
    const auto parts = detail::parseSerial(serial).value();
    const std::string bare = detail::formatSerial(parts.instance, parts.run, {});
    CHECK(hasCode(engine.completeServerEvent(bare, {}), Errc::InvalidSerial));
    CHECK(observe(engine, *id) == before);
  }

  SECTION("the right ids with a wrong secret are InvalidSerial") {
    const auto parts = detail::parseSerial(serial).value();
    std::string secret = parts.secret;
    secret[0] = secret[0] == 'A' ? 'B' : 'A';
    auto result =
        engine.completeServerEvent(detail::formatSerial(parts.instance, parts.run, secret), {});
    CHECK(hasCode(result, Errc::InvalidSerial));
    CHECK(observe(engine, *id) == before);
  }

  SECTION("a well-formed serial nobody issued is NotFound") {
    const auto parts = detail::parseSerial(serial).value();
    CHECK(hasCode(engine.completeServerEvent(
                      detail::formatSerial(parts.instance + 100, parts.run, parts.secret), {}),
                  Errc::NotFound));
    CHECK(hasCode(engine.completeServerEvent(
                      detail::formatSerial(parts.instance, parts.run + 1, parts.secret), {}),
                  Errc::NotFound));
    CHECK(observe(engine, *id) == before);
  }

  SECTION("a field the process does not declare is InvalidField naming it") {
    auto result = engine.completeServerEvent(serial, {{"Status", "Approved"}, {"Bogus", 1}});
    REQUIRE(hasCode(result, Errc::InvalidField));
    CHECK(result.error().message.find("Bogus") != std::string::npos);
    CHECK(observe(engine, *id) == before);
    // The rejected call consumed nothing: a valid completion still works.
    CHECK(engine.completeServerEvent(serial, {{"Status", "Approved"}}));
  }

  SECTION("a field of the wrong type is InvalidField naming it") {
    auto result = engine.completeServerEvent(serial, {{"Count", "three"}});
    REQUIRE(hasCode(result, Errc::InvalidField));
    CHECK(result.error().message.find("Count") != std::string::npos);
    CHECK(observe(engine, *id) == before);
  }

  SECTION("an Int64 for a Double field is accepted and stored as a double") {
    REQUIRE(engine.completeServerEvent(serial, {{"Amount", 12}}));
    const InstanceInfo completed = info(engine, *id);
    const Value* amount = completed.fields.find("Amount");
    REQUIRE(amount != nullptr);
    CHECK(amount->type() == Type::Double);
    CHECK(amount->as<double>() == 12.0);
  }

  SECTION("a second completion is AlreadyCompleted and changes nothing") {
    REQUIRE(engine.completeServerEvent(serial, {{"Status", "Approved"}}));
    const Observed after = observe(engine, *id);
    CHECK(hasCode(engine.completeServerEvent(serial, {{"Status", "Rejected"}}),
                  Errc::AlreadyCompleted));
    CHECK(observe(engine, *id) == after);
    CHECK(flow.ran.size() == 3);  // Notify ran once
  }

  SECTION("a cancelled instance's serial is Cancelled") {
    REQUIRE(engine.cancel(*id, "customer withdrew"));
    auto cancelled = info(engine, *id);
    CHECK(cancelled.status == InstanceStatus::Cancelled);
    CHECK(cancelled.currentStepStatus == StepRunStatus::Cancelled);
    CHECK(cancelled.error == "customer withdrew");
    const Observed afterCancel = observe(engine, *id);
    CHECK(hasCode(engine.completeServerEvent(serial, {{"Status", "Approved"}}), Errc::Cancelled));
    CHECK(observe(engine, *id) == afterCancel);
    CHECK(flow.ran.size() == 2);
  }

  SECTION("a timed-out step run's serial is TimedOut") {
    // Timers arrive with the step-lifecycle work; the mapping from a stored
    // TimedOut run to the TimedOut code is pinned here through the store.
    const auto parts = detail::parseSerial(serial).value();
    auto snapshot = h.store->loadInstance(*id).value();
    auto run = h.store->loadStepRun(*id, parts.run).value();
    run.status = StepRunStatus::TimedOut;
    ChangeSet set;
    set.instance = snapshot.record;
    set.instance.status = InstanceStatus::Failed;
    set.expectedVersion = snapshot.record.version;
    set.stepRuns.push_back(run);
    REQUIRE(h.store->apply({set}).value().front().status == ApplyStatus::Applied);
    CHECK(hasCode(engine.completeServerEvent(serial, {}), Errc::TimedOut));
  }
}

TEST_CASE("a store failure is StoreError, writes nothing, and a retry succeeds") {
  Harness h;
  auto failing = std::make_shared<FaultInjectingStore>(h.store);
  OrderFlow flow;
  Engine engine(failing, h.options());
  REQUIRE(engine.define(flow.process()));

  SECTION("during completeServerEvent") {
    auto id = engine.start("Order", {});
    REQUIRE(id);
    const Observed before = observe(engine, *id);
    failing->failNth(1, Fault::IoError);
    CHECK(hasCode(engine.completeServerEvent(flow.lastSerial, {{"Status", "Approved"}}),
                  Errc::StoreError));
    CHECK(observe(engine, *id) == before);
    CHECK(flow.ran.size() == 2);  // the continuation did not run
    REQUIRE(engine.completeServerEvent(flow.lastSerial, {{"Status", "Approved"}}));
    CHECK(info(engine, *id).status == InstanceStatus::Completed);
  }

  SECTION("during start") {
    failing->failNth(1, Fault::IoError);
    CHECK(hasCode(engine.start("Order", {}), Errc::StoreError));
    CHECK(hasCode(engine.instance(1), Errc::NotFound));
    CHECK(flow.ran.empty());
    auto id = engine.start("Order", {});
    REQUIRE(id);
    CHECK(*id == 1);
  }

  SECTION("during cancel") {
    auto id = engine.start("Order", {});
    REQUIRE(id);
    const Observed before = observe(engine, *id);
    failing->failNth(1, Fault::IoError);
    CHECK(hasCode(engine.cancel(*id, "stop"), Errc::StoreError));
    CHECK(observe(engine, *id) == before);
    CHECK(engine.cancel(*id, "stop"));
  }
}

TEST_CASE("early completion: a completion that arrives while the handler runs is not lost") {
  Harness h;
  OrderFlow flow;
  Engine engine(h.store, h.options());

  SECTION("the external system answers inside the outbound call") {
    flow.submit = [&](AsyncStepContext& ctx) {
      // A fast external system calls back before the handler has returned.
      auto early = engine.completeServerEvent(ctx.serial(), {{"Status", "Approved"}});
      CHECK(early);
      CHECK(info(engine, ctx.instanceId()).currentStepStatus == StepRunStatus::Starting);
      return StartOutcome::wait();
    };
    REQUIRE(engine.define(flow.process()));
    auto id = engine.start("Order", {});
    REQUIRE(id);
    auto done = info(engine, *id);
    CHECK(done.status == InstanceStatus::Completed);
    CHECK(done.fields.get<std::string>("Status") == std::string("Approved"));
    CHECK(flow.ran == std::vector<std::string>{"Validate", "Submit", "Notify"});
  }

  SECTION("from another thread, while the handler is blocked") {
    Latch handlerStarted;
    Latch completionRecorded;
    flow.submit = [&](AsyncStepContext& ctx) {
      ctx.fields().set("Ticket", "T-1");
      handlerStarted.countDown();
      completionRecorded.wait();
      return StartOutcome::wait();
    };
    REQUIRE(engine.define(flow.process()));
    Result<InstanceId> id = fail(Errc::Internal, "not started");
    std::thread host([&] { id = engine.start("Order", {}); });
    handlerStarted.wait();
    const std::string serial = h.store->loadStepRun(1, 2).value().secret;
    const std::string full = detail::formatSerial(1, 2, serial);
    auto early = engine.completeServerEvent(full, {{"Status", "Approved"}});
    CHECK(early);
    auto second = engine.completeServerEvent(full, {{"Status", "Rejected"}});
    CHECK(hasCode(second, Errc::AlreadyCompleted));
    completionRecorded.countDown();
    host.join();
    REQUIRE(id);
    auto done = info(engine, *id);
    CHECK(done.status == InstanceStatus::Completed);
    // Both the handler's writes and the completion's fields landed.
    CHECK(done.fields.get<std::string>("Ticket") == std::string("T-1"));
    CHECK(done.fields.get<std::string>("Status") == std::string("Approved"));
    CHECK(flow.ran == std::vector<std::string>{"Validate", "Submit", "Notify"});
  }

  SECTION("an early completion with a bad field is refused and records nothing") {
    flow.submit = [&](AsyncStepContext& ctx) {
      CHECK(
          hasCode(engine.completeServerEvent(ctx.serial(), {{"Nope", true}}), Errc::InvalidField));
      return StartOutcome::wait();
    };
    REQUIRE(engine.define(flow.process()));
    auto id = engine.start("Order", {});
    REQUIRE(id);
    CHECK(info(engine, *id).status == InstanceStatus::Waiting);
  }

  SECTION("an early completion's fields also land when the handler completes on its own") {
    flow.submit = [&](AsyncStepContext& ctx) {
      CHECK(engine.completeServerEvent(ctx.serial(), {{"Status", "Approved"}}));
      return StartOutcome::complete();
    };
    REQUIRE(engine.define(flow.process()));
    auto id = engine.start("Order", {});
    REQUIRE(id);
    auto done = info(engine, *id);
    CHECK(done.status == InstanceStatus::Completed);
    CHECK(done.fields.get<std::string>("Status") == std::string("Approved"));
  }

  SECTION("an early completion does not rescue a handler that fails") {
    flow.submit = [&](AsyncStepContext& ctx) {
      CHECK(engine.completeServerEvent(ctx.serial(), {{"Status", "Approved"}}));
      return StartOutcome::fail("outbound call failed");
    };
    REQUIRE(engine.define(flow.process()));
    auto id = engine.start("Order", {});
    REQUIRE(id);
    auto failed = info(engine, *id);
    CHECK(failed.status == InstanceStatus::Failed);
    CHECK(failed.fields.get<std::string>("Status") == std::string("Pending"));
    CHECK(hasCode(engine.completeServerEvent(flow.lastSerial, {}), Errc::StepFailed));
  }
}

TEST_CASE("a handler that throws fails its step with the exception's message") {
  Harness h;
  OrderFlow flow;
  Engine engine(h.store, h.options());

  SECTION("async start handler") {
    flow.submit = [](AsyncStepContext& ctx) -> StartOutcome {
      ctx.fields().set("Ticket", "lost");
      throw std::runtime_error("connection refused");
    };
    REQUIRE(engine.define(flow.process()));
    auto id = engine.start("Order", {});
    REQUIRE(id);
    auto failed = info(engine, *id);
    CHECK(failed.status == InstanceStatus::Failed);
    CHECK(failed.currentStep == "Submit");
    CHECK(failed.currentStepStatus == StepRunStatus::Failed);
    CHECK(failed.error.find("connection refused") != std::string::npos);
    CHECK(failed.fields.get<std::string>("Ticket").error().code == Errc::InvalidField);  // null
    CHECK(hasCode(engine.completeServerEvent(flow.lastSerial, {}), Errc::StepFailed));
  }

  SECTION("sync handler, with a non-std exception") {
    Process p("Throws", 1);
    p.step(Step("Boom", [](StepContext&) -> StepOutcome { throw 42; }));
    REQUIRE(engine.define(p));
    auto id = engine.start("Throws", {});
    REQUIRE(id);
    auto failed = info(engine, *id);
    CHECK(failed.status == InstanceStatus::Failed);
    CHECK(failed.error.find("unknown exception") != std::string::npos);
  }
}

TEST_CASE("a handler that writes an undeclared or mistyped field fails its step, naming it") {
  Harness h;
  Engine engine(h.store, h.options());
  Process p("Writes", 1);
  p.field("Count", Type::Int64, 0).step(Step("Write", [](StepContext& ctx) {
    ctx.fields().set("Undeclared", 1);
    return StepOutcome::next();
  }));
  Process q("Mistyped", 1);
  q.field("Count", Type::Int64, 0).step(Step("Write", [](StepContext& ctx) {
    ctx.fields().set("Count", "many");
    return StepOutcome::next();
  }));
  REQUIRE(engine.define(p));
  REQUIRE(engine.define(q));

  auto undeclared = info(engine, engine.start("Writes", {}).value());
  CHECK(undeclared.status == InstanceStatus::Failed);
  CHECK(undeclared.error.find("Undeclared") != std::string::npos);
  CHECK(!undeclared.fields.contains("Undeclared"));

  auto mistyped = info(engine, engine.start("Mistyped", {}).value());
  CHECK(mistyped.status == InstanceStatus::Failed);
  CHECK(mistyped.error.find("Count") != std::string::npos);
  CHECK(mistyped.fields.get<std::int64_t>("Count") == std::int64_t{0});
}

TEST_CASE("a chain of sync steps runs in order and carries fields") {
  Harness h;
  Engine engine(h.store, h.options());
  Process p("Chain", 1);
  p.field("Trail", Type::String, "")
      .step(Step("A",
                 [](StepContext& ctx) {
                   ctx.fields().set("Trail", ctx.fields().get<std::string>("Trail").value() + "a");
                   return StepOutcome::next();
                 }))
      .step(Step("B",
                 [](StepContext& ctx) {
                   ctx.fields().set("Trail", ctx.fields().get<std::string>("Trail").value() + "b");
                   return StepOutcome::next();
                 }))
      .step(Step("C", [](StepContext& ctx) {
        ctx.fields().set("Trail", ctx.fields().get<std::string>("Trail").value() + "c");
        return StepOutcome::next();
      }));
  REQUIRE(engine.define(p));
  auto done = info(engine, engine.start("Chain", {}).value());
  CHECK(done.status == InstanceStatus::Completed);
  CHECK(done.currentStep == "C");
  CHECK(done.fields.get<std::string>("Trail") == std::string("abc"));
}

TEST_CASE("lines route by rules on the fields") {
  Harness h;
  Engine engine(h.store, h.options());
  std::vector<std::string> ran;
  auto record = [&ran](std::string name) {
    return Step(name, [&ran, name](StepContext&) {
      ran.push_back(name);
      return StepOutcome::next();
    });
  };
  std::string serial;
  Process p("Branch", 1);
  p.field("Status", Type::String, "Pending")
      .step(AsyncStep("Decide",
                      [&serial](AsyncStepContext& ctx) {
                        serial = ctx.serial();
                        return StartOutcome::wait();
                      }))
      .step(record("Approve"))
      .step(record("Reject"))
      .line("Decide", "Approve",
            [](const Fields& f) { return f.get<std::string>("Status") == std::string("Approved"); })
      .line("Decide", "Reject", [](const Fields& f) {
        return f.get<std::string>("Status") == std::string("Rejected");
      });
  REQUIRE(engine.define(p));

  SECTION("the first matching line wins") {
    auto id = engine.start("Branch", {}).value();
    REQUIRE(engine.completeServerEvent(serial, {{"Status", "Rejected"}}));
    CHECK(ran == std::vector<std::string>{"Reject"});
    CHECK(info(engine, id).status == InstanceStatus::Completed);
  }

  SECTION("no matching line fails the instance, naming the step") {
    auto id = engine.start("Branch", {}).value();
    REQUIRE(engine.completeServerEvent(serial, {{"Status", "Unknown"}}));
    auto failed = info(engine, id);
    CHECK(failed.status == InstanceStatus::Failed);
    CHECK(failed.error.find("no line from step 'Decide'") != std::string::npos);
    CHECK(ran.empty());
    // The completion itself was accepted and recorded.
    CHECK(hasCode(engine.completeServerEvent(serial, {}), Errc::AlreadyCompleted));
  }
}

TEST_CASE("a rule that throws fails the instance with its message") {
  Harness h;
  Engine engine(h.store, h.options());
  Process p("BadRule", 1);
  p.step(Step("A", [](StepContext&) { return StepOutcome::next(); }))
      .step(Step("B", [](StepContext&) { return StepOutcome::next(); }))
      .line("A", "B", [](const Fields&) -> bool { throw std::runtime_error("rule exploded"); });
  REQUIRE(engine.define(p));
  auto failed = info(engine, engine.start("BadRule", {}).value());
  CHECK(failed.status == InstanceStatus::Failed);
  CHECK(failed.error.find("rule exploded") != std::string::npos);
}

TEST_CASE("StepOutcome::goTo, finish and fail") {
  Harness h;
  Engine engine(h.store, h.options());
  std::vector<std::string> ran;
  Process p("Jumps", 1);
  p.field("Loops", Type::Int64, 0)
      .field("Mode", Type::String, "loop")
      .step(Step("Start",
                 [&](StepContext& ctx) {
                   ran.push_back("Start");
                   const auto mode = ctx.fields().get<std::string>("Mode").value();
                   if (mode == "finish") return StepOutcome::finish();
                   if (mode == "fail") return StepOutcome::fail("told to fail");
                   if (mode == "nowhere") return StepOutcome::goTo("Nowhere");
                   return StepOutcome::goTo("Loop");
                 }))
      .step(Step("Skipped",
                 [&](StepContext&) {
                   ran.push_back("Skipped");
                   return StepOutcome::next();
                 }))
      .step(Step("Loop", [&](StepContext& ctx) {
        ran.push_back("Loop");
        const auto loops = ctx.fields().get<std::int64_t>("Loops").value() + 1;
        ctx.fields().set("Loops", loops);
        return loops < 3 ? StepOutcome::goTo("Loop") : StepOutcome::next();
      }));
  REQUIRE(engine.define(p));

  SECTION("goTo jumps, and may loop") {
    auto done = info(engine, engine.start("Jumps", {}).value());
    CHECK(done.status == InstanceStatus::Completed);
    CHECK(done.fields.get<std::int64_t>("Loops") == std::int64_t{3});
    CHECK(ran == std::vector<std::string>{"Start", "Loop", "Loop", "Loop"});
  }
  SECTION("finish ends the instance at once") {
    auto done = info(engine, engine.start("Jumps", {{"Mode", "finish"}}).value());
    CHECK(done.status == InstanceStatus::Completed);
    CHECK(ran == std::vector<std::string>{"Start"});
  }
  SECTION("fail fails the step and the instance") {
    auto failed = info(engine, engine.start("Jumps", {{"Mode", "fail"}}).value());
    CHECK(failed.status == InstanceStatus::Failed);
    CHECK(failed.currentStepStatus == StepRunStatus::Failed);
    CHECK(failed.error.find("told to fail") != std::string::npos);
  }
  SECTION("goTo an unknown step fails the instance, naming it") {
    auto failed = info(engine, engine.start("Jumps", {{"Mode", "nowhere"}}).value());
    CHECK(failed.status == InstanceStatus::Failed);
    CHECK(failed.error.find("Nowhere") != std::string::npos);
  }
}

TEST_CASE("serials: a secret per step run, so guessed or borrowed serials complete nothing") {
  Harness h;
  OrderFlow flow;
  Engine engine(h.store, h.options());
  REQUIRE(engine.define(flow.process()));
  auto first = engine.start("Order", {}).value();
  const std::string serialOne = flow.lastSerial;
  auto second = engine.start("Order", {}).value();
  const std::string serialTwo = flow.lastSerial;

  const auto one = detail::parseSerial(serialOne).value();
  const auto two = detail::parseSerial(serialTwo).value();
  CHECK(one.instance == first);
  CHECK(two.instance == second);
  CHECK(one.secret.size() == detail::kSecretChars);
  CHECK(one.secret != two.secret);

  // An incremented serial (another instance's ids, this secret) is refused.
  CHECK(hasCode(engine.completeServerEvent(detail::formatSerial(two.instance, two.run, one.secret),
                                           {{"Status", "Approved"}}),
                Errc::InvalidSerial));
  CHECK(info(engine, second).status == InstanceStatus::Waiting);
  CHECK(info(engine, first).status == InstanceStatus::Waiting);
  // The real serials work.
  CHECK(engine.completeServerEvent(serialTwo, {}));
  CHECK(info(engine, second).status == InstanceStatus::Completed);
  CHECK(info(engine, first).status == InstanceStatus::Waiting);
}

TEST_CASE("bare K2 serials, opted into for trusted networks") {
  Harness h;
  OrderFlow flow;
  Engine engine(h.store, h.options(SerialForm::Bare));
  REQUIRE(engine.define(flow.process()));
  auto id = engine.start("Order", {}).value();
  CHECK(flow.lastSerial == std::to_string(id) + "_2");  // Validate was run 1
  REQUIRE(engine.completeServerEvent(flow.lastSerial, {{"Status", "Approved"}}));
  CHECK(info(engine, id).status == InstanceStatus::Completed);

  SECTION("a sync step's run has no server event") {
    CHECK(hasCode(engine.completeServerEvent(std::to_string(id) + "_1", {}), Errc::NotFound));
  }

  SECTION("a run issued with a secret still needs it in bare mode") {
    Engine secure(h.store, h.options());
    REQUIRE(secure.define(flow.process()));
    auto guarded = secure.start("Order", {}).value();
    const auto parts = detail::parseSerial(flow.lastSerial).value();
    REQUIRE(!parts.secret.empty());
    CHECK(hasCode(engine.completeServerEvent(detail::formatSerial(guarded, parts.run, {}), {}),
                  Errc::InvalidSerial));
    CHECK(engine.completeServerEvent(flow.lastSerial, {}));
  }
}

TEST_CASE("cancel ends an instance and its wait") {
  Harness h;
  OrderFlow flow;
  Engine engine(h.store, h.options());
  REQUIRE(engine.define(flow.process()));

  CHECK(hasCode(engine.cancel(77, "none"), Errc::NotFound));

  auto id = engine.start("Order", {}).value();
  REQUIRE(engine.cancel(id, "withdrawn"));
  CHECK(hasCode(engine.cancel(id, "again"), Errc::Cancelled));

  flow.submit = [](AsyncStepContext&) { return StartOutcome::complete(); };
  auto done = engine.start("Order", {}).value();
  CHECK(hasCode(engine.cancel(done, "late"), Errc::AlreadyCompleted));

  flow.submit = [](AsyncStepContext&) { return StartOutcome::fail("no"); };
  auto failed = engine.start("Order", {}).value();
  CHECK(hasCode(engine.cancel(failed, "late"), Errc::StepFailed));
}

TEST_CASE("cancel while the start handler runs drops the handler's result") {
  Harness h;
  OrderFlow flow;
  Engine engine(h.store, h.options());
  flow.submit = [&](AsyncStepContext& ctx) {
    REQUIRE(engine.cancel(ctx.instanceId(), "operator"));
    ctx.fields().set("Ticket", "T-9");
    return StartOutcome::wait();
  };
  REQUIRE(engine.define(flow.process()));
  auto id = engine.start("Order", {}).value();
  auto cancelled = info(engine, id);
  CHECK(cancelled.status == InstanceStatus::Cancelled);
  CHECK(cancelled.currentStepStatus == StepRunStatus::Cancelled);
  CHECK(!cancelled.fields.get<std::string>("Ticket"));
  CHECK(hasCode(engine.completeServerEvent(flow.lastSerial, {}), Errc::Cancelled));
}

TEST_CASE("instance() of an unknown id is NotFound") {
  Harness h;
  Engine engine(h.store, h.options());
  CHECK(hasCode(engine.instance(1), Errc::NotFound));
  CHECK(hasCode(engine.instance(-5), Errc::NotFound));
}

TEST_CASE("continuations on worker threads") {
  Harness h;
  OrderFlow flow;
  EngineOptions options = h.options();
  options.workers = 2;
  Engine engine(h.store, options);
  REQUIRE(engine.define(flow.process()));

  auto id = engine.start("Order", {{"OrderId", "W-1"}});
  REQUIRE(id);
  engine.waitIdle();
  REQUIRE(info(engine, *id).status == InstanceStatus::Waiting);

  REQUIRE(engine.completeServerEvent(flow.lastSerial, {{"Status", "Approved"}}));
  engine.waitIdle();
  auto done = info(engine, *id);
  CHECK(done.status == InstanceStatus::Completed);
  CHECK(done.fields.get<std::string>("Status") == std::string("Approved"));
  CHECK(flow.ran == std::vector<std::string>{"Validate", "Submit", "Notify"});
}

TEST_CASE("timestamps come from the injected clock") {
  Harness h;
  OrderFlow flow;
  Engine engine(h.store, h.options());
  REQUIRE(engine.define(flow.process()));
  const Timestamp t0 = h.clock->now();
  auto id = engine.start("Order", {}).value();
  h.clock->advance(std::chrono::minutes(5));
  REQUIRE(engine.completeServerEvent(flow.lastSerial, {}));
  auto done = info(engine, id);
  CHECK(done.createdAt == t0);
  CHECK(done.updatedAt == t0 + std::chrono::minutes(5));
  const auto parts = detail::parseSerial(flow.lastSerial).value();
  auto run = h.store->loadStepRun(id, parts.run).value();
  CHECK(run.waitingSince == t0);
  CHECK(run.finishedAt == t0 + std::chrono::minutes(5));
}

TEST_CASE("NaN is refused as a field value, since no store can keep it") {
  Harness h;
  OrderFlow flow;
  Engine engine(h.store, h.options());
  REQUIRE(engine.define(flow.process()));
  const double nan = std::numeric_limits<double>::quiet_NaN();
  auto refused = engine.start("Order", {{"Amount", nan}});
  REQUIRE(hasCode(refused, Errc::InvalidField));
  CHECK(refused.error().message.find("Amount") != std::string::npos);

  auto id = engine.start("Order", {}).value();
  CHECK(
      hasCode(engine.completeServerEvent(flow.lastSerial, {{"Amount", nan}}), Errc::InvalidField));
  CHECK(info(engine, id).status == InstanceStatus::Waiting);

  Process bad("NanDefault", 1);
  bad.field("X", Type::Double, nan).step(Step("A", [](StepContext&) {
    return StepOutcome::next();
  }));
  CHECK(hasCode(engine.define(bad), Errc::InvalidProcess));
}

TEST_CASE("waiting() lists waiting steps, filtered and paged") {
  Harness h;
  OrderFlow flow;
  Engine engine(h.store, h.options());
  REQUIRE(engine.define(flow.process()));
  Process other("Other", 1);
  other.step(AsyncStep("Hold", [](AsyncStepContext&) { return StartOutcome::wait(); }));
  REQUIRE(engine.define(other));

  std::vector<std::string> orderSerials;
  for (int i = 0; i < 12; ++i) {
    engine.start("Order", {}).value();
    orderSerials.push_back(flow.lastSerial);
    if (i % 3 == 0) REQUIRE(engine.start("Other", {}));
  }
  h.clock->advance(std::chrono::seconds(1));
  REQUIRE(engine.completeServerEvent(orderSerials[5], {}));  // no longer waiting

  SECTION("every page once, in order, with the serial and when it began to wait") {
    WaitingFilter filter;
    filter.process = "Order";
    filter.limit = 5;
    std::vector<std::string> seen;
    for (;;) {
      auto page = engine.waiting(filter);
      REQUIRE(page);
      for (const auto& step : page->steps) {
        CHECK(step.process == "Order");
        CHECK(step.processVersion == 1);
        CHECK(step.step == "Submit");
        CHECK(step.waitingSince == Timestamp(std::chrono::seconds(1'700'000'000)));
        CHECK(!step.deadline);
        seen.push_back(step.serial);
      }
      if (!page->next) break;
      filter.after = *page->next;
    }
    std::vector<std::string> expected = orderSerials;
    expected.erase(expected.begin() + 5);
    CHECK(seen == expected);
  }

  SECTION("filter by step, across processes") {
    WaitingFilter filter;
    filter.step = "Hold";
    auto page = engine.waiting(filter).value();
    CHECK(page.steps.size() == 4);
    CHECK(!page.next);
    filter.step.clear();
    CHECK(engine.waiting(filter).value().steps.size() == 11 + 4);
  }

  SECTION("a bad page size is InvalidArgument") {
    WaitingFilter filter;
    filter.limit = 0;
    CHECK(hasCode(engine.waiting(filter), Errc::InvalidArgument));
    filter.limit = 10'001;
    CHECK(hasCode(engine.waiting(filter), Errc::InvalidArgument));
  }

  SECTION("waiting steps hold nothing in the engine") {
    CHECK(engine.stats().drivingInstances == 0);
    CHECK(engine.stats().queuedContinuations == 0);
  }
}

TEST_CASE("recovery re-runs a step left mid-way, with the same serial and a higher attempt") {
  // A store error on the handler's commit leaves the run Starting, exactly as a
  // crash between the handler and its commit would.
  Harness h;
  auto failing = std::make_shared<FaultInjectingStore>(h.store);
  OrderFlow flow;
  std::string firstSerial;
  {
    Engine crashed(failing, h.options());
    flow.submit = [&](AsyncStepContext& ctx) {
      firstSerial = ctx.serial();
      failing->failNth(1, Fault::IoError);  // the commit after this handler fails
      return StartOutcome::wait();
    };
    REQUIRE(crashed.define(flow.process()));
    auto id = crashed.start("Order", {});
    REQUIRE(id);
    auto stuck = info(crashed, *id);
    REQUIRE(stuck.status == InstanceStatus::Running);
    REQUIRE(stuck.currentStepStatus == StepRunStatus::Starting);
  }

  flow.ran.clear();
  flow.submit = [](AsyncStepContext&) { return StartOutcome::wait(); };
  Engine engine(h.store, h.options());
  REQUIRE(engine.define(flow.process()));  // recovers on define
  CHECK(flow.ran == std::vector<std::string>{"Submit"});
  CHECK(flow.lastSerial == firstSerial);
  CHECK(flow.lastAttempt == 2);
  CHECK(info(engine, 1).status == InstanceStatus::Waiting);
  REQUIRE(engine.completeServerEvent(firstSerial, {{"Status", "Approved"}}));
  CHECK(info(engine, 1).status == InstanceStatus::Completed);

  SECTION("recover() finds nothing more to do") { CHECK(engine.recover().value() == 0); }
}

TEST_CASE("recover() re-drives every defined process, recoverOnDefine can be turned off") {
  // The store fails the step's own commit (the second apply, after start's):
  // the run is left Starting, as a crash mid-step would leave it.
  Harness h;
  auto failing = std::make_shared<FaultInjectingStore>(h.store);
  failing->failNth(2, Fault::IoError);
  int syncAttempt = 0;
  Process p("Sync", 1);
  p.field("Done", Type::Bool, false).step(Step("Work", [&](StepContext& ctx) {
    syncAttempt = ctx.attempt();
    ctx.fields().set("Done", true);
    return StepOutcome::next();
  }));
  {
    Engine crashing(failing, h.options());
    REQUIRE(crashing.define(p));
    REQUIRE(crashing.start("Sync", {}));
    REQUIRE(info(crashing, 1).currentStepStatus == StepRunStatus::Starting);
  }
  syncAttempt = 0;
  EngineOptions options = h.options();
  options.recoverOnDefine = false;
  Engine engine(h.store, options);
  REQUIRE(engine.define(p));
  CHECK(syncAttempt == 0);
  CHECK(info(engine, 1).status == InstanceStatus::Running);
  CHECK(engine.recover().value() == 1);
  CHECK(syncAttempt == 2);
  auto done = info(engine, 1);
  CHECK(done.status == InstanceStatus::Completed);
  CHECK(done.fields.get<bool>("Done") == true);
}

TEST_CASE(
    "serverEvent(serial) looks up the step a serial names, with completeServerEvent's errors") {
  Harness h;
  OrderFlow flow;
  Engine engine(h.store, h.options());
  REQUIRE(engine.define(flow.process()));
  const Timestamp t0 = h.clock->now();
  const InstanceId id = engine.start("Order", {}).value();
  const std::string serial = flow.lastSerial;

  auto step = engine.serverEvent(serial);
  REQUIRE(step);
  CHECK(step->serial == serial);
  CHECK(step->instance == id);
  CHECK(step->process == "Order");
  CHECK(step->processVersion == 1);
  CHECK(step->step == "Submit");
  CHECK(step->waitingSince == t0);
  CHECK_FALSE(step->deadline.has_value());

  const auto parts = detail::parseSerial(serial).value();
  const std::string wrongSecret =
      detail::formatSerial(id, parts.run, std::string(detail::kSecretChars, 'A'));
  CHECK(hasCode(engine.serverEvent(wrongSecret), Errc::InvalidSerial));
  // This engine issues secrets: a bare serial is refused before any lookup.
  CHECK(hasCode(engine.serverEvent(detail::formatSerial(id, parts.run, {})), Errc::InvalidSerial));
  CHECK(hasCode(engine.serverEvent("not a serial"), Errc::InvalidSerial));
  CHECK(hasCode(engine.serverEvent(detail::formatSerial(id + 7, 1, parts.secret)), Errc::NotFound));
  // Run 1 is the sync step Validate, which has no secret: not an async step's serial.
  CHECK(
      hasCode(engine.serverEvent(detail::formatSerial(id, 1, parts.secret)), Errc::InvalidSerial));

  REQUIRE(engine.completeServerEvent(serial, {}));
  CHECK(hasCode(engine.serverEvent(serial), Errc::AlreadyCompleted));

  engine.start("Order", {}).value();
  const std::string cancelled = flow.lastSerial;
  REQUIRE(engine.cancel(detail::parseSerial(cancelled)->instance, "operator"));
  CHECK(hasCode(engine.serverEvent(cancelled), Errc::Cancelled));
}
