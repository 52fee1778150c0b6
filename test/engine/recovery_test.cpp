// Recovery after a real crash: a child process runs the engine on a SQLite
// file and dies (_exit) mid-step; a new engine in the parent opens the same file
// and re-drives what the crash left. And a waiting step costs a row, not memory:
// 10,000 waits survive the engine and are completed by a new one.
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include "support/catch.hpp"
#include "support/test_support.hpp"

using namespace asyncflow;

namespace {

using asyncflow::testing::TempDir;

constexpr int kCrashed = 42;

// Runs `body` in a forked child and returns its exit code. The child never
// returns into the test framework: it ends with _exit, as a crash would.
int inChild(const std::function<void()>& body) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    body();
    ::_exit(0);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  return WEXITSTATUS(status);
}

std::shared_ptr<Store> openStore(const std::string& path) {
  SqliteOptions options;
  options.synchronous = Synchronous::Normal;  // survives a process crash, which is what we test
  auto store = SqliteStore::open(path, options);
  if (!store) {
    FAIL("open " << path << ": " << store.error().toString());
  }
  return std::move(*store);
}

// In the child, where Catch must not be used: open or die with a distinct code.
std::shared_ptr<Store> openStoreInChild(const std::string& path) {
  SqliteOptions options;
  options.synchronous = Synchronous::Normal;
  auto store = SqliteStore::open(path, options);
  if (!store) ::_exit(3);
  return std::move(*store);
}

void writeFile(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

std::string readFile(const std::string& path) {
  std::ifstream in(path);
  std::string text;
  std::getline(in, text);
  return text;
}

// Wait (async) -> After (sync). Both handlers are the caller's.
Process waitThenAfter(AsyncStep::Handler wait, Step::Handler after) {
  Process p("Recover", 1);
  p.field("Status", Type::String, "Pending")
      .field("After", Type::Int64, 0)
      .step(AsyncStep("Wait", std::move(wait)))
      .step(Step("After", std::move(after)));
  return p;
}

// The host after a crash comes back once the dead process's leases expired
// (EngineOptions::leaseDuration: 30 s by default): its clock reads an hour on.
// Without a timer thread, which would take the expired leases over too (on its
// own thread, racing define()'s recovery that these tests watch).
EngineOptions afterTheLease() {
  EngineOptions o;
  o.timerThread = false;
  o.clock = std::make_shared<ManualClock>(
      std::chrono::time_point_cast<std::chrono::microseconds>(std::chrono::system_clock::now()) +
      std::chrono::hours(1));
  return o;
}

}  // namespace

TEST_CASE("a sync step interrupted by a crash re-runs, seeing attempt 2") {
  TempDir dir;
  const std::string db = dir.file("workflows.db");
  auto define = [](Step::Handler charge, int& prepared) {
    Process p("Payment", 1);
    p.field("Charged", Type::Bool, false)
        .step(Step("Prepare",
                   [&prepared](StepContext&) {
                     ++prepared;
                     return StepOutcome::next();
                   }))
        .step(Step("Charge", std::move(charge)));
    return p;
  };

  REQUIRE(inChild([&] {
            int prepared = 0;
            Engine engine(openStoreInChild(db));
            if (!engine.define(
                    define([](StepContext&) -> StepOutcome { ::_exit(kCrashed); }, prepared))) {
              ::_exit(4);
            }
            (void)engine.start("Payment", {});
            ::_exit(5);  // not reached: Charge crashed the process
          }) == kCrashed);

  int prepared = 0;
  int chargeAttempt = 0;
  Engine engine(openStore(db), afterTheLease());
  auto before = engine.instance(1).value();
  CHECK(before.currentStep == "Charge");
  CHECK(before.currentStepStatus == StepRunStatus::Starting);

  REQUIRE(engine.define(define(
      [&](StepContext& ctx) {
        chargeAttempt = ctx.attempt();
        ctx.fields().set("Charged", true);
        return StepOutcome::next();
      },
      prepared)));
  CHECK(chargeAttempt == 2);
  CHECK(prepared == 0);  // the committed step before the crash does not run again
  auto after = engine.instance(1).value();
  CHECK(after.status == InstanceStatus::Completed);
  CHECK(after.fields.get<bool>("Charged") == true);
}

TEST_CASE("an async step's start handler re-runs after a crash with the same serial") {
  TempDir dir;
  const std::string db = dir.file("workflows.db");
  const std::string serialFile = dir.file("serial.txt");

  REQUIRE(inChild([&] {
            Engine engine(openStoreInChild(db));
            auto p = waitThenAfter(
                [&](AsyncStepContext& ctx) -> StartOutcome {
                  writeFile(serialFile, ctx.serial());  // handed to the external system...
                  ::_exit(kCrashed);                    // ...and the host dies
                },
                [](StepContext&) { return StepOutcome::next(); });
            if (!engine.define(p)) ::_exit(4);
            (void)engine.start("Recover", {});
            ::_exit(5);
          }) == kCrashed);
  const std::string handedOut = readFile(serialFile);
  REQUIRE(!handedOut.empty());

  std::string seenSerial;
  int seenAttempt = 0;
  Engine engine(openStore(db), afterTheLease());
  REQUIRE(engine.define(waitThenAfter(
      [&](AsyncStepContext& ctx) {
        seenSerial = ctx.serial();
        seenAttempt = ctx.attempt();
        return StartOutcome::wait();
      },
      [](StepContext& ctx) {
        ctx.fields().set("After", ctx.attempt());
        return StepOutcome::next();
      })));
  CHECK(seenSerial == handedOut);
  CHECK(seenAttempt == 2);
  CHECK(engine.instance(1).value().status == InstanceStatus::Waiting);

  // The external system, holding the serial from before the crash, completes it.
  REQUIRE(engine.completeServerEvent(handedOut, {{"Status", "Done"}}));
  auto done = engine.instance(1).value();
  CHECK(done.status == InstanceStatus::Completed);
  CHECK(done.fields.get<std::string>("Status") == std::string("Done"));
  CHECK(done.fields.get<std::int64_t>("After") == std::int64_t{1});
}

TEST_CASE("a completion committed before its next steps ran continues after a crash") {
  // Dies right after the completion's commit, before the next step's handler.
  struct DieAfterApply final : StoreWrapper {
    using StoreWrapper::StoreWrapper;
    std::atomic<bool> armed{false};
    Result<std::vector<ApplyResult>> apply(std::vector<ChangeSet> batch) override {
      auto result = StoreWrapper::apply(std::move(batch));
      if (armed) ::_exit(kCrashed);
      return result;
    }
  };
  TempDir dir;
  const std::string db = dir.file("workflows.db");

  REQUIRE(inChild([&] {
            auto store = std::make_shared<DieAfterApply>(openStoreInChild(db));
            Engine engine(store);
            std::string serial;
            auto p = waitThenAfter(
                [&](AsyncStepContext& ctx) {
                  serial = ctx.serial();
                  return StartOutcome::wait();
                },
                [](StepContext&) -> StepOutcome { ::_exit(6); });
            if (!engine.define(p) || !engine.start("Recover", {})) ::_exit(4);
            store->armed = true;
            (void)engine.completeServerEvent(serial, {{"Status", "Approved"}});
            ::_exit(5);
          }) == kCrashed);

  Engine engine(openStore(db), [] {
    EngineOptions o = afterTheLease();
    o.recoverOnDefine = false;
    return o;
  }());
  // The completion is durable: its fields are in, the next step is scheduled.
  auto before = engine.instance(1).value();
  CHECK(before.status == InstanceStatus::Running);
  CHECK(before.currentStep == "After");
  CHECK(before.fields.get<std::string>("Status") == std::string("Approved"));

  int afterAttempt = 0;
  REQUIRE(engine.define(waitThenAfter([](AsyncStepContext&) { return StartOutcome::wait(); },
                                      [&](StepContext& ctx) {
                                        afterAttempt = ctx.attempt();
                                        return StepOutcome::next();
                                      })));
  CHECK(engine.recover().value() == 1);
  CHECK(afterAttempt == 2);  // scheduled as started, so the re-run counts as a second attempt
  CHECK(engine.instance(1).value().status == InstanceStatus::Completed);
}

TEST_CASE("an early completion recorded before a crash is applied when the re-run waits") {
  TempDir dir;
  const std::string db = dir.file("workflows.db");

  REQUIRE(inChild([&] {
            Engine engine(openStoreInChild(db));
            auto p = waitThenAfter(
                [&](AsyncStepContext& ctx) -> StartOutcome {
                  // The external system answers inside the outbound call...
                  if (!engine.completeServerEvent(ctx.serial(), {{"Status", "Early"}})) ::_exit(7);
                  ::_exit(kCrashed);  // ...and the host dies before the handler returns.
                },
                [](StepContext&) { return StepOutcome::next(); });
            if (!engine.define(p)) ::_exit(4);
            (void)engine.start("Recover", {});
            ::_exit(5);
          }) == kCrashed);

  int handlerRuns = 0;
  bool afterRan = false;
  Engine engine(openStore(db), afterTheLease());
  REQUIRE(engine.define(waitThenAfter(
      [&](AsyncStepContext&) {
        ++handlerRuns;
        return StartOutcome::wait();
      },
      [&](StepContext&) {
        afterRan = true;
        return StepOutcome::next();
      })));
  CHECK(handlerRuns == 1);
  CHECK(afterRan);
  auto done = engine.instance(1).value();
  CHECK(done.status == InstanceStatus::Completed);
  CHECK(done.fields.get<std::string>("Status") == std::string("Early"));
}

TEST_CASE("10,000 waiting steps survive the engine, a new engine completes every one") {
  constexpr int kInstances = 10'000;
  TempDir dir;
  const std::string db = dir.file("workflows.db");
  std::atomic<int> afterRuns{0};
  auto process = [&] {
    return waitThenAfter([](AsyncStepContext&) { return StartOutcome::wait(); },
                         [&](StepContext&) {
                           ++afterRuns;
                           return StepOutcome::next();
                         });
  };

  {
    Engine engine(openStore(db), afterTheLease());
    REQUIRE(engine.define(process()));
    for (int i = 0; i < kInstances; ++i) REQUIRE(engine.start("Recover", {}));
    // Every one waits, and the engine holds nothing for any of them.
    CHECK(engine.stats().drivingInstances == 0);
    CHECK(engine.stats().queuedContinuations == 0);
  }  // the engine and its store are gone: only the file remains

  Engine engine(openStore(db), afterTheLease());
  REQUIRE(engine.define(process()));
  CHECK(engine.recover().value() == 0);  // waiting is not a crash: nothing to re-drive

  // The external system knows the serials; here they come from waiting().
  std::vector<std::string> serials;
  WaitingFilter filter;
  filter.limit = 1000;
  for (;;) {
    auto page = engine.waiting(filter).value();
    for (const auto& step : page.steps) serials.push_back(step.serial);
    if (!page.next) break;
    filter.after = *page.next;
  }
  REQUIRE(serials.size() == kInstances);

  int failures = 0;
  for (const auto& serial : serials) {
    if (!engine.completeServerEvent(serial, {{"Status", "Done"}})) ++failures;
  }
  CHECK(failures == 0);
  CHECK(afterRuns == kInstances);
  CHECK(engine.waiting().value().steps.empty());
  CHECK(engine.instance(kInstances).value().status == InstanceStatus::Completed);
}
