// Pins Engine::define (what it rejects, with InvalidProcess naming the culprit,
// and what it accepts) and the errors of Engine::start around it.
#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "asyncflow/clock.hpp"
#include "asyncflow/engine.hpp"
#include "asyncflow/error.hpp"
#include "asyncflow/memory_store.hpp"
#include "asyncflow/process.hpp"
#include "asyncflow/step.hpp"
#include "support/catch.hpp"
#include "support/test_support.hpp"

namespace {

using asyncflow::AsyncStep;
using asyncflow::AsyncStepContext;
using asyncflow::Engine;
using asyncflow::EngineOptions;
using asyncflow::Errc;
using asyncflow::Error;
using asyncflow::Fields;
using asyncflow::InstanceId;
using asyncflow::InstanceStatus;
using asyncflow::Process;
using asyncflow::Result;
using asyncflow::StartOutcome;
using asyncflow::Step;
using asyncflow::StepContext;
using asyncflow::StepOutcome;
using asyncflow::Type;

// An engine over a fresh MemoryStore, with a manual clock, running inline.
struct Fixture {
  Fixture() : engine(std::make_shared<asyncflow::MemoryStore>(), options()) {}

  static EngineOptions options() {
    EngineOptions o;
    o.clock = std::make_shared<asyncflow::ManualClock>();
    return o;
  }

  Engine engine;
};

using asyncflow::testing::contains;
using asyncflow::testing::errorOf;

Step finishing(std::string name) {
  return Step(std::move(name), [](StepContext&) { return StepOutcome::next(); });
}

AsyncStep waiting(std::string name) {
  return AsyncStep(std::move(name), [](AsyncStepContext&) { return StartOutcome::wait(); });
}

// Defines `process`, which must be rejected, and returns the error's message
// after checking its code.
std::string rejection(Engine& engine, const Process& process) {
  const Error error = errorOf(engine.define(process));
  CHECK(error.code == Errc::InvalidProcess);
  return error.message;
}

}  // namespace

// --- define: rejections -------------------------------------------------------

TEST_CASE("define rejects a process with no steps, naming the process") {
  Fixture f;
  Process empty("Empty", 1);
  empty.field("X", Type::String);
  const std::string message = rejection(f.engine, empty);
  CHECK(contains(message, "Empty"));
  CHECK(contains(message, "no steps"));
}

TEST_CASE("define rejects an empty process name") {
  Fixture f;
  Process nameless("", 1);
  nameless.step(finishing("A"));
  const std::string message = rejection(f.engine, nameless);
  CHECK(contains(message, "name is empty"));
}

TEST_CASE("define rejects two steps with the same name, naming it") {
  Fixture f;
  Process p("Dup", 1);
  SECTION("two sync steps") { p.step(finishing("Twice")).step(finishing("Twice")); }
  SECTION("a sync and an async step") { p.step(finishing("Twice")).step(waiting("Twice")); }
  SECTION("an async and a sync step") { p.step(waiting("Twice")).step(finishing("Twice")); }
  const std::string message = rejection(f.engine, p);
  CHECK(contains(message, "'Twice'"));
}

TEST_CASE("define rejects a step with an empty name") {
  Fixture f;
  Process p("P", 1);
  SECTION("sync") { p.step(finishing("A")).step(finishing("")); }
  SECTION("async") { p.step(finishing("A")).step(waiting("")); }
  const std::string message = rejection(f.engine, p);
  CHECK(contains(message, "empty name"));
  CHECK(contains(message, "step"));
}

TEST_CASE("define rejects a step whose handler is empty, naming the step") {
  Fixture f;
  Process p("P", 1);
  SECTION("Step") { p.step(finishing("A")).step(Step("NoHandler", Step::Handler{})); }
  SECTION("AsyncStep") {
    p.step(finishing("A")).step(AsyncStep("NoHandler", AsyncStep::Handler{}));
  }
  const std::string message = rejection(f.engine, p);
  CHECK(contains(message, "'NoHandler'"));
  CHECK(contains(message, "handler"));
}

TEST_CASE("define rejects a field with an empty name") {
  Fixture f;
  Process p("P", 1);
  p.field("Good", Type::String).field("", Type::Int64).step(finishing("A"));
  const std::string message = rejection(f.engine, p);
  CHECK(contains(message, "field"));
  CHECK(contains(message, "empty name"));
}

TEST_CASE("define rejects a field declared twice, naming it") {
  Fixture f;
  Process p("P", 1);
  SECTION("same type") { p.field("Amount", Type::Int64).field("Amount", Type::Int64); }
  SECTION("different types") { p.field("Amount", Type::Int64).field("Amount", Type::String); }
  p.step(finishing("A"));
  const std::string message = rejection(f.engine, p);
  CHECK(contains(message, "'Amount'"));
  CHECK(contains(message, "twice"));
}

TEST_CASE("define rejects a field declared with Type::Null, naming it") {
  Fixture f;
  Process p("P", 1);
  p.field("Nothing", Type::Null).step(finishing("A"));
  const std::string message = rejection(f.engine, p);
  CHECK(contains(message, "'Nothing'"));
  CHECK(contains(message, "Null"));
}

TEST_CASE("define rejects a default of the wrong type, naming the field") {
  Fixture f;
  Process p("P", 1);
  std::string culprit;
  SECTION("String field with an Int64 default") {
    p.field("Label", Type::String, 42);
    culprit = "'Label'";
  }
  SECTION("Bool field with a String default") {
    p.field("Flag", Type::Bool, "yes");
    culprit = "'Flag'";
  }
  SECTION("Int64 field with a Double default") {
    p.field("Count", Type::Int64, 1.5);
    culprit = "'Count'";
  }
  p.step(finishing("A"));
  const std::string message = rejection(f.engine, p);
  CHECK(contains(message, culprit));
}

TEST_CASE("define rejects a line from an unknown step, naming it") {
  Fixture f;
  Process p("P", 1);
  p.step(finishing("A")).step(finishing("B")).line("Ghost", "B");
  const std::string message = rejection(f.engine, p);
  CHECK(contains(message, "'Ghost'"));
}

TEST_CASE("define rejects a line to an unknown step, naming it") {
  Fixture f;
  Process p("P", 1);
  p.step(finishing("A")).step(finishing("B")).line("A", "Nowhere");
  const std::string message = rejection(f.engine, p);
  CHECK(contains(message, "'Nowhere'"));
}

TEST_CASE("define rejects a name and version already defined, the first stays in use") {
  Fixture f;
  std::vector<std::string> ran;
  Process first("Twice", 3);
  first.step(Step("First", [&](StepContext&) {
    ran.push_back("first");
    return StepOutcome::next();
  }));
  Process second("Twice", 3);
  second.step(Step("Second", [&](StepContext&) {
    ran.push_back("second");
    return StepOutcome::next();
  }));

  REQUIRE(f.engine.define(first).has_value());
  const std::string message = rejection(f.engine, second);
  CHECK(contains(message, "'Twice'"));
  CHECK(contains(message, "3"));

  auto id = f.engine.start("Twice");
  REQUIRE(id.has_value());
  CHECK(ran == std::vector<std::string>{"first"});
  auto info = f.engine.instance(*id);
  REQUIRE(info.has_value());
  CHECK(info->status == InstanceStatus::Completed);
  CHECK(info->currentStep == "First");
}

TEST_CASE("define rejects a cycle that no rule and no async step breaks, naming its steps") {
  Fixture f;
  Process p("Loop", 1);
  std::string cycle;
  SECTION("two lines without rules") {
    p.step(finishing("A")).step(finishing("B")).line("A", "B").line("B", "A");
    cycle = "'A' -> 'B' -> 'A'";
  }
  SECTION("a line to itself") {
    p.step(finishing("Start")).step(finishing("Poll")).line("Poll", "Poll");
    cycle = "'Poll' -> 'Poll'";
  }
  SECTION("a step without lines continues with the next, whose line goes back") {
    p.step(finishing("A")).step(finishing("B")).step(finishing("C")).line("C", "B");
    cycle = "'B' -> 'C' -> 'B'";
  }
  SECTION("a rule on a later line does not break it: the first line always wins") {
    p.step(finishing("A"))
        .step(finishing("B"))
        .step(finishing("Done"))
        .line("A", "B")
        .line("B", "A")
        .line("B", "Done", [](const Fields&) { return true; });
    cycle = "'A' -> 'B' -> 'A'";
  }
  const std::string message = rejection(f.engine, p);
  CHECK(contains(message, cycle));
  CHECK(contains(message, "cycle"));
  CHECK(errorOf(f.engine.start("Loop")).code == Errc::NotFound);
}

TEST_CASE("a cycle with a rule or an async step on it is accepted") {
  Fixture f;
  Process ruled("Ruled", 1);
  ruled.field("Valid", Type::Bool, false)
      .step(Step("Validate", [](StepContext&) { return StepOutcome::next(); }))
      .step(Step("Repair",
                 [](StepContext& ctx) {
                   ctx.fields().set("Valid", true);
                   return StepOutcome::next();
                 }))
      .step(finishing("Done"))
      .line("Validate", "Done", [](const Fields& f) { return f.getOr("Valid", false); })
      .line("Validate", "Repair")
      .line("Repair", "Validate");
  REQUIRE(f.engine.define(ruled).has_value());
  auto id = f.engine.start("Ruled");
  REQUIRE(id.has_value());
  CHECK(f.engine.instance(*id)->status == InstanceStatus::Completed);

  Process waits("Waits", 1);
  waits.step(finishing("A")).step(waiting("B")).line("A", "B").line("B", "A");
  CHECK(f.engine.define(waits).has_value());
}

TEST_CASE("define rejects a timeout or heartbeat of zero or less, naming the step") {
  Fixture f;
  Process p("Timed", 1);
  SECTION("timeout 0") { p.step(waiting("Wait").timeout(std::chrono::milliseconds(0))); }
  SECTION("timeout -1 ms with an escalation") {
    p.step(waiting("Wait").timeout(std::chrono::milliseconds(-1), "Wait"));
  }
  SECTION("heartbeat 0") {
    p.step(waiting("Wait").timeout(std::chrono::hours(1)).heartbeat(std::chrono::milliseconds(0)));
  }
  SECTION("heartbeat -5 ms") {
    p.step(waiting("Wait").timeout(std::chrono::hours(1)).heartbeat(std::chrono::milliseconds(-5)));
  }
  const std::string message = rejection(f.engine, p);
  CHECK(contains(message, "'Wait'"));
  CHECK(contains(message, "positive"));
}

TEST_CASE("a rejected define leaves nothing behind") {
  Fixture f;
  Process p("Broken", 1);
  SECTION("no steps") {}
  SECTION("bad line") { p.step(finishing("A")).line("A", "Missing"); }
  SECTION("bad default") { p.field("X", Type::Bool, "no").step(finishing("A")); }
  SECTION("duplicate step") { p.step(finishing("A")).step(finishing("A")); }
  REQUIRE(errorOf(f.engine.define(p)).code == Errc::InvalidProcess);

  CHECK(errorOf(f.engine.start("Broken")).code == Errc::NotFound);
  CHECK(errorOf(f.engine.instance(1)).code == Errc::NotFound);
}

// --- define: accepted -----------------------------------------------------------

TEST_CASE("an Int64 default for a Double field is accepted and stored as a Double") {
  Fixture f;
  Process p("Convert", 1);
  p.field("X", Type::Double, 7).step(finishing("A"));
  REQUIRE(f.engine.define(p).has_value());

  auto id = f.engine.start("Convert");
  REQUIRE(id.has_value());
  auto info = f.engine.instance(*id);
  REQUIRE(info.has_value());
  const asyncflow::Value* x = info->fields.find("X");
  REQUIRE(x != nullptr);
  CHECK(x->type() == Type::Double);
  CHECK(x->as<double>().value() == 7.0);
}

TEST_CASE("an Int64 given to start for a Double field is stored as a Double") {
  Fixture f;
  Process p("Convert", 1);
  p.field("X", Type::Double).step(finishing("A"));
  REQUIRE(f.engine.define(p).has_value());

  auto id = f.engine.start("Convert", {{"X", 3}});
  REQUIRE(id.has_value());
  auto info = f.engine.instance(*id);
  REQUIRE(info.has_value());
  const asyncflow::Value* x = info->fields.find("X");
  REQUIRE(x != nullptr);
  CHECK(x->type() == Type::Double);
  CHECK(x->as<double>().value() == 3.0);
}

TEST_CASE("declared fields start with their defaults, or null without one") {
  Fixture f;
  Process p("Defaults", 1);
  p.field("Status", Type::String, "Pending")
      .field("Count", Type::Int64)
      .field("Flag", Type::Bool, false)
      .step(finishing("A"));
  REQUIRE(f.engine.define(p).has_value());

  auto id = f.engine.start("Defaults", {{"Flag", true}});
  REQUIRE(id.has_value());
  auto info = f.engine.instance(*id);
  REQUIRE(info.has_value());
  CHECK(info->fields.get<std::string>("Status").value() == "Pending");
  REQUIRE(info->fields.find("Count") != nullptr);
  CHECK(info->fields.find("Count")->isNull());
  CHECK(info->fields.get<bool>("Flag").value() == true);
}

TEST_CASE("a process with no lines runs its steps in declaration order") {
  Fixture f;
  std::vector<std::string> order;
  auto recording = [&](std::string name) {
    return Step(name, [&order, name](StepContext& ctx) {
      CHECK(ctx.stepName() == name);
      order.push_back(name);
      return StepOutcome::next();
    });
  };
  Process p("Sequence", 1);
  p.step(recording("One")).step(recording("Two")).step(recording("Three"));
  REQUIRE(f.engine.define(p).has_value());

  auto id = f.engine.start("Sequence");
  REQUIRE(id.has_value());
  CHECK(order == std::vector<std::string>{"One", "Two", "Three"});
  auto info = f.engine.instance(*id);
  REQUIRE(info.has_value());
  CHECK(info->status == InstanceStatus::Completed);
  CHECK(info->currentStep == "Three");
}

TEST_CASE("start uses the newest defined version of a process") {
  Fixture f;
  std::vector<int> ran;
  auto version = [&](int v) {
    Process p("Versioned", v);
    p.step(Step("Only", [&ran, v](StepContext& ctx) {
      CHECK(ctx.processVersion() == v);
      ran.push_back(v);
      return StepOutcome::next();
    }));
    return p;
  };

  SECTION("defined in ascending order") {
    REQUIRE(f.engine.define(version(1)).has_value());
    REQUIRE(f.engine.define(version(2)).has_value());
  }
  SECTION("defined in descending order") {
    REQUIRE(f.engine.define(version(2)).has_value());
    REQUIRE(f.engine.define(version(1)).has_value());
  }

  auto id = f.engine.start("Versioned");
  REQUIRE(id.has_value());
  CHECK(ran == std::vector<int>{2});
  auto info = f.engine.instance(*id);
  REQUIRE(info.has_value());
  CHECK(info->process == "Versioned");
  CHECK(info->processVersion == 2);
}

// --- start errors ----------------------------------------------------------------

TEST_CASE("start errors create no instance") {
  Fixture f;
  int runs = 0;
  Process p("Order", 1);
  p.field("OrderId", Type::String).field("Amount", Type::Double).step(Step("A", [&](StepContext&) {
    ++runs;
    return StepOutcome::next();
  }));
  REQUIRE(f.engine.define(p).has_value());

  SECTION("unknown process") {
    const Error error = errorOf(f.engine.start("NoSuchProcess"));
    CHECK(error.code == Errc::NotFound);
    CHECK(contains(error.message, "NoSuchProcess"));
  }
  SECTION("an undeclared field") {
    const Error error = errorOf(f.engine.start("Order", {{"OrderId", "A-1"}, {"Colour", "red"}}));
    CHECK(error.code == Errc::InvalidField);
    CHECK(contains(error.message, "'Colour'"));
  }
  SECTION("a wrongly typed field") {
    const Error error = errorOf(f.engine.start("Order", {{"OrderId", 17}}));
    CHECK(error.code == Errc::InvalidField);
    CHECK(contains(error.message, "'OrderId'"));
  }
  SECTION("a String for a Double field") {
    const Error error = errorOf(f.engine.start("Order", {{"Amount", "12.5"}}));
    CHECK(error.code == Errc::InvalidField);
    CHECK(contains(error.message, "'Amount'"));
  }

  CHECK(runs == 0);
  CHECK(errorOf(f.engine.instance(1)).code == Errc::NotFound);
  auto id = f.engine.start("Order", {{"OrderId", "A-2"}});
  REQUIRE(id.has_value());
  CHECK(*id == InstanceId{1});
  CHECK(runs == 1);
}
