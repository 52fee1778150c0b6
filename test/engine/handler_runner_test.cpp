// Pins runHandler (src/engine/handler_runner.hpp): a handler's outcome as a
// Decision, only the fields it changed as its writes, and a throw or a bad
// write as Fail without the writes.
#include "engine/handler_runner.hpp"

#include <memory>
#include <stdexcept>
#include <string>

#include "support/catch.hpp"
#include "support/test_support.hpp"

using namespace asyncflow;
using asyncflow::detail::Decision;
using asyncflow::detail::runHandler;

namespace {

struct Ran {
  std::shared_ptr<const detail::CompiledProcess> process;
  Decision decision;
};

Ran run(Process p, const std::string& step) {
  auto compiled = detail::compileProcess(p);
  REQUIRE(compiled.has_value());
  InstanceSnapshot snapshot;
  snapshot.record.id = 3;
  snapshot.record.process = p.name();
  snapshot.record.processVersion = p.version();
  snapshot.fields.set("Status", "Pending").set("Count", std::int64_t{1});
  StepRunRecord r;
  r.instance = 3;
  r.run = 4;
  r.step = step;
  r.attempt = 2;
  r.secret = "BBBBBBBBBBBBBBBBBBBBBB";
  const auto& compiledStep = (*compiled)->steps[(*compiled)->stepIndex.at(step)];
  r.kind = compiledStep.kind;
  return Ran{*compiled, runHandler(**compiled, compiledStep, snapshot, r)};
}

Process with(Step step) {
  Process p("P", 1);
  p.field("Status", Type::String).field("Count", Type::Int64).field("Rate", Type::Double);
  p.step(std::move(step));
  return p;
}

}  // namespace

TEST_CASE("a sync handler's outcome and the fields it changed, validated") {
  const Ran ran = run(with(Step("S",
                                [](StepContext& ctx) {
                                  CHECK(ctx.attempt() == 2);
                                  CHECK(ctx.instanceId() == 3);
                                  ctx.fields().set("Status", "Pending");  // unchanged: not a write
                                  ctx.fields().set("Count", std::int64_t{2});
                                  ctx.fields().set("Rate", std::int64_t{3});  // Int64 to Double
                                  return StepOutcome::goTo("S");
                                })),
                      "S");
  CHECK(ran.decision.kind == Decision::Kind::GoTo);
  CHECK(ran.decision.text == "S");
  CHECK(ran.decision.writes == Fields{{"Count", std::int64_t{2}}, {"Rate", 3.0}});
}

TEST_CASE("an async handler sees its serial, and its outcome maps to Wait, Complete or Fail") {
  auto step = [](StartOutcome outcome) {
    return AsyncStep("A", [outcome](AsyncStepContext& ctx) {
      CHECK(ctx.serial() == "3_4_BBBBBBBBBBBBBBBBBBBBBB");
      return outcome;
    });
  };
  auto runAsync = [&](StartOutcome outcome) {
    Process p("P", 1);
    p.step(step(outcome));
    return run(p, "A").decision;
  };
  CHECK(runAsync(StartOutcome::wait()).kind == Decision::Kind::Wait);
  CHECK(runAsync(StartOutcome::complete()).kind == Decision::Kind::Complete);
  const Decision failed = runAsync(StartOutcome::fail("ERP down"));
  CHECK(failed.kind == Decision::Kind::Fail);
  CHECK(failed.text == "ERP down");
}

TEST_CASE("a throwing handler, or a bad write, decides Fail and drops every write") {
  const Ran threw = run(with(Step("S",
                                  [](StepContext& ctx) -> StepOutcome {
                                    ctx.fields().set("Count", std::int64_t{9});
                                    throw std::runtime_error("boom");
                                  })),
                        "S");
  CHECK(threw.decision.kind == Decision::Kind::Fail);
  CHECK(threw.decision.text == "boom");
  CHECK(threw.decision.writes.empty());

  const Ran bad = run(with(Step("S",
                                [](StepContext& ctx) {
                                  ctx.fields().set("Count", std::int64_t{9});
                                  ctx.fields().set("Undeclared", "x");
                                  return StepOutcome::next();
                                })),
                      "S");
  CHECK(bad.decision.kind == Decision::Kind::Fail);
  CHECK(asyncflow::testing::contains(bad.decision.text, "'Undeclared'"));
  CHECK(bad.decision.writes.empty());

  const Ran odd = run(with(Step("S", [](StepContext&) -> StepOutcome { throw 42; })), "S");
  CHECK(odd.decision.kind == Decision::Kind::Fail);
  CHECK(odd.decision.text == "unknown exception");
}
