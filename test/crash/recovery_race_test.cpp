// A bug the crash harness found, pinned deterministically: recovery counts a
// re-run (attempt() one higher) even when its attempt bump loses the
// optimistic-concurrency race to a completion that arrives at that moment.
//
// The harness's external system keeps the serials handed to it before a crash
// and completes them after the restart, while recovery re-runs their start
// handlers; a completion recorded between recovery's read and its write made
// the write conflict, and the retry ran the handler with the old attempt().
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <asyncflow/testing/fault_injection.hpp>

#include "support/catch.hpp"
#include "support/test_support.hpp"

using namespace asyncflow;
using asyncflow::testing::Fault;
using asyncflow::testing::FaultInjectingStore;
using asyncflow::testing::Harness;

namespace {

// Before the first write that restarts a run after a crash (a Starting run with
// attempt 2), lets `interloper` write first, so that write then conflicts.
class InterleavingStore final : public StoreWrapper {
 public:
  using StoreWrapper::StoreWrapper;
  std::function<void()> interloper;

  Result<std::vector<ApplyResult>> apply(std::vector<ChangeSet> batch) override {
    if (interloper && restartsARun(batch)) {
      auto run = std::move(interloper);
      interloper = nullptr;
      run();
    }
    return StoreWrapper::apply(std::move(batch));
  }

 private:
  static bool restartsARun(const std::vector<ChangeSet>& batch) {
    for (const ChangeSet& set : batch) {
      for (const StepRunRecord& run : set.stepRuns) {
        if (run.status == StepRunStatus::Starting && run.attempt == 2) return true;
      }
    }
    return false;
  }
};

// One async step, Wait; its handler records the attempt it saw and the serial,
// then runs `also`.
Process waitOnly(std::vector<int>& attempts, std::string& serial,
                 std::function<void()> also = nullptr) {
  Process p("Race", 1);
  p.field("Token", Type::String)
      .step(AsyncStep("Wait", [&attempts, &serial, also](AsyncStepContext& ctx) {
        attempts.push_back(ctx.attempt());
        serial = ctx.serial();
        if (also) also();
        return StartOutcome::wait();
      }));
  return p;
}

}  // namespace

TEST_CASE("a re-run after a crash sees attempt 2 even when a completion races recovery's write") {
  Harness h;
  std::string serial;
  InstanceId id = 0;
  {
    // The first engine runs the start handler, whose commit then fails: the run
    // stays Starting with attempt 1, as a crash after the handler would leave it.
    std::vector<int> attempts;
    auto failing = std::make_shared<FaultInjectingStore>(h.store);
    Engine engine(failing, h.options());
    REQUIRE(
        engine.define(waitOnly(attempts, serial, [&] { failing->failNth(1, Fault::IoError); })));
    auto started = engine.start("Race");
    REQUIRE(started);
    id = *started;
    REQUIRE(attempts == std::vector<int>{1});
  }
  REQUIRE(h.store->loadStepRun(id, 1)->status == StepRunStatus::Starting);

  // The restarted engine recovers the run. Just before recovery writes attempt
  // 2, the external system, which kept the serial, completes the step.
  auto racing = std::make_shared<InterleavingStore>(h.store);
  Engine engine(racing, h.options());
  Result<void> early = fail(Errc::Internal, "the completion never ran");
  racing->interloper = [&] { early = engine.completeServerEvent(serial, {{"Token", "t"}}); };
  std::vector<int> attempts;
  std::string rerunSerial;
  REQUIRE(engine.define(waitOnly(attempts, rerunSerial)));

  REQUIRE(early);                          // recorded while the run was Starting
  CHECK(attempts == std::vector<int>{2});  // the re-run is counted: attempt() > 1
  CHECK(rerunSerial == serial);            // with the same serial
  auto run = h.store->loadStepRun(id, 1);
  REQUIRE(run);
  CHECK(run->attempt == 2);
  CHECK(run->status == StepRunStatus::Completed);  // the early completion applied at once
  auto info = engine.instance(id);
  REQUIRE(info);
  CHECK(info->status == InstanceStatus::Completed);
  CHECK(info->fields.get<std::string>("Token").value() == "t");
}
