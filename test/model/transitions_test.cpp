// Pins the step-run state machine (src/model/transitions.hpp) on its own, with
// no store and no thread: for every (run status, event) pair, the move it makes
// or the refusal it answers, as one table; then the moves that depend on more
// than the status (what a handler decided, a recorded completion, escalation,
// heartbeat intervals, error lines).
#include "model/transitions.hpp"

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "asyncflow/process.hpp"
#include "asyncflow/records.hpp"
#include "asyncflow/step.hpp"
#include "model/process_model.hpp"
#include "support/catch.hpp"
#include "support/test_support.hpp"

namespace {

using namespace std::chrono_literals;
using asyncflow::AsyncStep;
using asyncflow::AsyncStepContext;
using asyncflow::ChangeSet;
using asyncflow::Errc;
using asyncflow::Fields;
using asyncflow::HistoryKind;
using asyncflow::InstanceSnapshot;
using asyncflow::InstanceStatus;
using asyncflow::Process;
using asyncflow::Result;
using asyncflow::SerialForm;
using asyncflow::StartOutcome;
using asyncflow::Step;
using asyncflow::StepContext;
using asyncflow::StepKind;
using asyncflow::StepOutcome;
using asyncflow::StepRunRecord;
using asyncflow::StepRunStatus;
using asyncflow::Timestamp;
using asyncflow::Type;
using asyncflow::detail::Decision;
using asyncflow::detail::RunEvent;
using asyncflow::detail::ServerEvent;
using asyncflow::detail::Transitions;
using asyncflow::testing::contains;

const Timestamp kT0 = Timestamp(std::chrono::seconds(1'700'000'000));
const Timestamp kNow = kT0 + 2h;  // past the waiting run's deadline of kT0 + 1h

// Approve (async: 1 h timeout escalating to Escalate, 10 min heartbeat, error
// line to Repair) -> Notify -> Escalate -> Repair, and a sync step Check.
std::shared_ptr<const asyncflow::detail::CompiledProcess> orderProcess() {
  auto wait = [](AsyncStepContext&) { return StartOutcome::wait(); };
  auto next = [](StepContext&) { return StepOutcome::next(); };
  Process p("Order", 1);
  p.field("Status", Type::String)
      .field("Ticket", Type::String)
      .step(AsyncStep("Approve", wait).timeout(1h, "Escalate").heartbeat(10min).onError("Repair"))
      .step(Step("Notify", next))
      .step(Step("Escalate", next))
      .step(Step("Repair", next))
      .step(AsyncStep("Plain", wait))
      .step(Step("Check", next));
  auto compiled = asyncflow::detail::compileProcess(p);
  REQUIRE(compiled.has_value());
  return *compiled;
}

// The instance status that goes with a run status when that run is the
// instance's current one.
InstanceStatus instanceStatusFor(StepRunStatus run) {
  switch (run) {
    case StepRunStatus::Ready:
    case StepRunStatus::Starting: return InstanceStatus::Running;
    case StepRunStatus::Waiting: return InstanceStatus::Waiting;
    case StepRunStatus::Completed: return InstanceStatus::Completed;
    case StepRunStatus::Failed:
    case StepRunStatus::TimedOut: return InstanceStatus::Failed;
    case StepRunStatus::Cancelled: return InstanceStatus::Cancelled;
  }
  return InstanceStatus::Running;
}

// Instance 7 at version 3 whose current run 2 of `step` has `status`.
struct Case {
  InstanceSnapshot snapshot;
  StepRunRecord run;
};

Case caseOf(StepRunStatus status, std::string step = "Approve", StepKind kind = StepKind::Async) {
  Case c;
  c.snapshot.record.id = 7;
  c.snapshot.record.process = "Order";
  c.snapshot.record.processVersion = 1;
  c.snapshot.record.status = instanceStatusFor(status);
  c.snapshot.record.version = 3;
  c.snapshot.record.currentRun = 2;
  c.snapshot.record.lastRun = 2;
  c.snapshot.record.createdAt = kT0;
  c.snapshot.record.updatedAt = kT0;
  c.snapshot.fields.set("Status", "Pending").set("Ticket", nullptr);
  c.run.instance = 7;
  c.run.run = 2;
  c.run.step = std::move(step);
  c.run.kind = kind;
  c.run.status = status;
  c.run.attempt = 1;
  c.run.secret = kind == StepKind::Async ? "AAAAAAAAAAAAAAAAAAAAAA" : "";
  c.run.createdAt = kT0;
  if (status == StepRunStatus::Waiting) {
    c.run.waitingSince = kT0;
    c.run.deadline = kT0 + 1h;
  }
  if (asyncflow::isTerminal(status)) c.run.finishedAt = kT0;
  if (status == StepRunStatus::Failed) c.snapshot.record.error = "step 'Approve' failed: no";
  return c;
}

// The run `set` writes with this run number.
const StepRunRecord* runIn(const ChangeSet& set, std::int64_t run) {
  for (const StepRunRecord& r : set.stepRuns) {
    if (r.run == run) return &r;
  }
  return nullptr;
}

// What a change set did to run 2, in the words of the table below.
std::string describe(const ChangeSet& set, const Case& before) {
  REQUIRE(set.expectedVersion == before.snapshot.record.version);
  const StepRunRecord* run = runIn(set, 2);
  std::string out;
  if (run == nullptr) {
    out = "unchanged";
  } else if (run->status == before.run.status && run->hasCompletion && !before.run.hasCompletion) {
    out = "recorded";
  } else if (run->status == before.run.status && run->attempt == before.run.attempt) {
    out = run->deadline != before.run.deadline ? "deadline moved" : "noted";
  } else {
    out = std::string(asyncflow::statusName(run->status));
    if (run->attempt != before.run.attempt) out += " attempt " + std::to_string(run->attempt);
  }
  if (const StepRunRecord* next = runIn(set, 3)) {
    out += ", new run of " + next->step + " attempt " + std::to_string(next->attempt);
  }
  return out;
}

// Sends `event` to the run of `c` the way the engine does (admission first),
// and says what happened: the move, or "refused: <Errc>", or "Internal".
std::string send(RunEvent event, const Case& c) {
  static const auto process = orderProcess();
  asyncflow::testing::CountingRandom random;
  const Transitions transitions(SerialForm::WithSecret, random);
  auto refused = [](const asyncflow::Error& error) {
    if (error.code == Errc::Internal) return std::string("Internal");
    return "refused: " + std::string(asyncflow::errcName(error.code));
  };
  auto outcome = [&](const Result<ChangeSet>& set) {
    return set ? describe(*set, c) : refused(set.error());
  };
  switch (event) {
    case RunEvent::Crash: return outcome(Transitions::restartAfterCrash(c.snapshot, c.run, kNow));
    case RunEvent::HandlerReturned: {
      Decision wait;
      wait.kind = Decision::Kind::Wait;
      return outcome(transitions.close(*process, c.snapshot, c.run, wait, kNow));
    }
    case RunEvent::Complete:
    case RunEvent::Fail:
    case RunEvent::Heartbeat: {
      ServerEvent e;
      e.kind = event == RunEvent::Complete ? ServerEvent::Kind::Complete
               : event == RunEvent::Fail   ? ServerEvent::Kind::Fail
                                           : ServerEvent::Kind::Heartbeat;
      if (auto admitted = Transitions::admit(c.snapshot, c.run, e.kind); !admitted) {
        return refused(admitted.error());
      }
      return outcome(transitions.applyEvent(*process, c.snapshot, c.run, e, kNow));
    }
    case RunEvent::Deadline: {
      if (!Transitions::isDue(c.run, kNow)) {
        // Not due is a no-op for the timer; the transition itself refuses it.
        auto direct = transitions.timeOut(*process, c.snapshot, c.run, kNow);
        return "not due, " + outcome(direct);
      }
      return outcome(transitions.timeOut(*process, c.snapshot, c.run, kNow));
    }
    case RunEvent::Cancel: {
      std::optional<StepRunRecord> open;
      if (asyncflow::detail::openRunOf(c.snapshot.record)) open = c.run;
      return outcome(Transitions::cancel(c.snapshot, open, "withdrawn", kNow));
    }
    case RunEvent::Retry: {
      if (auto admitted = Transitions::admitRetry(c.snapshot.record); !admitted) {
        return refused(admitted.error());
      }
      return outcome(transitions.retry(*process, c.snapshot, c.run, kNow));
    }
  }
  return "?";
}

}  // namespace

TEST_CASE("every (run status, event) pair: the move it makes, or its refusal") {
  using S = StepRunStatus;
  using E = RunEvent;
  const std::vector<E> events = {E::Crash,     E::HandlerReturned, E::Complete, E::Fail,
                                 E::Heartbeat, E::Deadline,        E::Cancel,   E::Retry};
  // One row per status, one column per event above.
  const std::map<S, std::vector<std::string>> table = {
      {S::Ready,
       {"Starting attempt 2", "Internal", "recorded", "recorded", "noted", "not due, Internal",
        "Cancelled", "refused: InvalidArgument"}},
      {S::Starting,
       {"Starting attempt 2", "Waiting", "recorded", "recorded", "noted", "not due, Internal",
        "Cancelled", "refused: InvalidArgument"}},
      {S::Waiting,
       {"Internal", "Internal", "Completed, new run of Notify attempt 1",
        "Failed, new run of Repair attempt 1", "deadline moved",
        "TimedOut, new run of Escalate "
        "attempt 1",
        "Cancelled", "refused: InvalidArgument"}},
      {S::Completed,
       {"Internal", "Internal", "refused: AlreadyCompleted", "refused: AlreadyCompleted",
        "refused: AlreadyCompleted", "not due, Internal", "refused: AlreadyCompleted",
        "refused: InvalidArgument"}},
      {S::Failed,
       {"Internal", "Internal", "refused: StepFailed", "refused: StepFailed", "refused: StepFailed",
        "not due, Internal", "refused: StepFailed", "unchanged, new run of Approve attempt 2"}},
      {S::TimedOut,
       {"Internal", "Internal", "refused: TimedOut", "refused: TimedOut", "refused: TimedOut",
        "not due, Internal", "refused: StepFailed", "unchanged, new run of Approve attempt 2"}},
      {S::Cancelled,
       {"Internal", "Internal", "refused: Cancelled", "refused: Cancelled", "refused: Cancelled",
        "not due, Internal", "refused: Cancelled", "refused: Cancelled"}},
  };
  REQUIRE(table.size() == 7);  // every StepRunStatus
  for (const auto& [status, row] : table) {
    REQUIRE(row.size() == events.size());
    for (std::size_t i = 0; i < events.size(); ++i) {
      INFO(asyncflow::statusName(status) << " on " << asyncflow::detail::runEventName(events[i]));
      CHECK(send(events[i], caseOf(status)) == row[i]);
    }
  }
}

TEST_CASE("an Internal refusal names the run, its status and the event") {
  static const auto process = orderProcess();
  asyncflow::testing::CountingRandom random;
  const Transitions transitions(SerialForm::WithSecret, random);
  const Case c = caseOf(StepRunStatus::Completed);
  auto timedOut = transitions.timeOut(*process, c.snapshot, c.run, kNow);
  REQUIRE_FALSE(timedOut.has_value());
  CHECK(timedOut.error().code == Errc::Internal);
  CHECK(contains(timedOut.error().message, "7_2"));
  CHECK(contains(timedOut.error().message, "Completed"));
  CHECK(contains(timedOut.error().message, "Deadline"));
  CHECK_FALSE(contains(timedOut.error().message, c.run.secret));
  auto restarted = Transitions::restartAfterCrash(c.snapshot, c.run, kNow);
  REQUIRE_FALSE(restarted.has_value());
  CHECK(contains(restarted.error().message, "Crash"));
}

TEST_CASE("a run with a completion recorded refuses another, but takes a heartbeat") {
  for (StepRunStatus status : {StepRunStatus::Ready, StepRunStatus::Starting}) {
    INFO(asyncflow::statusName(status));
    Case c = caseOf(status);
    c.run.hasCompletion = true;
    c.run.completion.set("Status", "Approved");
    CHECK(send(RunEvent::Complete, c) == "refused: AlreadyCompleted");
    CHECK(send(RunEvent::Fail, c) == "refused: AlreadyCompleted");
    CHECK(send(RunEvent::Heartbeat, c) == "noted");
    // A look-up (no event) is still answered.
    CHECK(Transitions::admit(c.snapshot, c.run, std::nullopt).has_value());
  }
}

TEST_CASE("a synchronous step's run takes no server event: NotFound") {
  for (StepRunStatus status : {StepRunStatus::Starting, StepRunStatus::Completed}) {
    const Case c = caseOf(status, "Check", StepKind::Sync);
    for (auto kind :
         {ServerEvent::Kind::Complete, ServerEvent::Kind::Fail, ServerEvent::Kind::Heartbeat}) {
      auto admitted = Transitions::admit(c.snapshot, c.run, kind);
      REQUIRE_FALSE(admitted.has_value());
      CHECK(admitted.error().code == Errc::NotFound);
      CHECK(contains(admitted.error().message, "not an async step"));
    }
  }
}

TEST_CASE("a cancelled instance refuses events for a run that is still open") {
  Case c = caseOf(StepRunStatus::Waiting);
  c.snapshot.record.status = InstanceStatus::Cancelled;
  auto admitted = Transitions::admit(c.snapshot, c.run, ServerEvent::Kind::Complete);
  REQUIRE_FALSE(admitted.has_value());
  CHECK(admitted.error().code == Errc::Cancelled);
}

TEST_CASE("what a handler decides closes a Starting run") {
  static const auto process = orderProcess();
  asyncflow::testing::CountingRandom random;
  const Transitions transitions(SerialForm::WithSecret, random);
  auto close = [&](Decision decision, Case c = caseOf(StepRunStatus::Starting)) {
    auto set = transitions.close(*process, c.snapshot, c.run, std::move(decision), kNow);
    REQUIRE(set.has_value());
    return *set;
  };
  auto decided = [](Decision::Kind kind, std::string text = {}) {
    Decision d;
    d.kind = kind;
    d.text = std::move(text);
    return d;
  };

  SECTION("Wait: the run waits with its deadline, the instance Waiting") {
    Decision wait = decided(Decision::Kind::Wait);
    wait.writes.set("Ticket", "T-1");
    const ChangeSet set = close(wait);
    const StepRunRecord* run = runIn(set, 2);
    REQUIRE(run != nullptr);
    CHECK(run->status == StepRunStatus::Waiting);
    CHECK(run->waitingSince == kNow);
    CHECK(run->deadline == kNow + 1h);
    CHECK(set.instance.status == InstanceStatus::Waiting);
    CHECK(set.fields == Fields{{"Ticket", "T-1"}});
    REQUIRE(set.history.size() == 1);
    CHECK(set.history[0].kind == HistoryKind::Waiting);
    CHECK(set.history[0].detail == "7_2");  // the serial's ids, never its secret
  }
  SECTION("Wait after a completion arrived: completed at once, its fields after the handler's") {
    Case c = caseOf(StepRunStatus::Starting);
    c.run.hasCompletion = true;
    c.run.completion.set("Status", "Approved");
    Decision wait = decided(Decision::Kind::Wait);
    wait.writes.set("Status", "Submitted").set("Ticket", "T-1");
    const ChangeSet set = close(wait, c);
    CHECK(runIn(set, 2)->status == StepRunStatus::Completed);
    CHECK(runIn(set, 2)->completion.empty());
    CHECK(set.fields == Fields{{"Status", "Approved"}, {"Ticket", "T-1"}});
    CHECK(runIn(set, 3)->step == "Notify");
  }
  SECTION("Wait after a failure arrived: the failure wins, the error line follows") {
    Case c = caseOf(StepRunStatus::Starting);
    c.run.hasCompletion = true;
    c.run.error = "credit refused";
    c.run.completion.set("Status", "Refused");
    const ChangeSet set = close(decided(Decision::Kind::Wait), c);
    CHECK(runIn(set, 2)->status == StepRunStatus::Failed);
    CHECK(runIn(set, 2)->error == "credit refused");
    CHECK(set.fields == Fields{{"Status", "Refused"}});
    CHECK(runIn(set, 3)->step == "Repair");
  }
  SECTION("Fail without an error line: the instance fails with the reason") {
    Case c = caseOf(StepRunStatus::Starting, "Plain");
    const ChangeSet set = close(decided(Decision::Kind::Fail, "ERP down"), c);
    CHECK(runIn(set, 2)->status == StepRunStatus::Failed);
    CHECK(set.instance.status == InstanceStatus::Failed);
    CHECK(set.instance.error == "step 'Plain' failed: ERP down");
  }
  SECTION("Finish ends the instance; GoTo an unknown step fails it, naming both") {
    CHECK(close(decided(Decision::Kind::Finish)).instance.status == InstanceStatus::Completed);
    const ChangeSet set = close(decided(Decision::Kind::GoTo, "Nowhere"));
    CHECK(set.instance.status == InstanceStatus::Failed);
    CHECK(contains(set.instance.error, "Nowhere"));
    CHECK(contains(set.instance.error, "Approve"));
  }
  SECTION("GoTo a known step schedules it") {
    const ChangeSet set = close(decided(Decision::Kind::GoTo, "Escalate"));
    CHECK(runIn(set, 3)->step == "Escalate");
    CHECK(set.instance.currentRun == 3);
    CHECK(set.instance.lastRun == 3);
  }
}

TEST_CASE("a deadline escalates, or without an escalation fails the instance") {
  static const auto process = orderProcess();
  asyncflow::testing::CountingRandom random;
  const Transitions transitions(SerialForm::WithSecret, random);
  Case c = caseOf(StepRunStatus::Waiting, "Plain");
  c.run.deadline = kT0;
  auto set = transitions.timeOut(*process, c.snapshot, c.run, kNow);
  REQUIRE(set.has_value());
  CHECK(runIn(*set, 2)->status == StepRunStatus::TimedOut);
  CHECK(set->instance.status == InstanceStatus::Failed);
  CHECK(set->instance.error == "step 'Plain' timed out");
  // isDue: at or after the deadline only.
  CHECK(Transitions::isDue(c.run, kT0));
  CHECK_FALSE(Transitions::isDue(c.run, kT0 - 1us));
}

TEST_CASE("a heartbeat moves a waiting deadline by the interval, else by the timeout") {
  static const auto process = orderProcess();
  asyncflow::testing::CountingRandom random;
  const Transitions transitions(SerialForm::WithSecret, random);
  ServerEvent beat;
  beat.kind = ServerEvent::Kind::Heartbeat;
  const Case approve = caseOf(StepRunStatus::Waiting);
  auto set = transitions.applyEvent(*process, approve.snapshot, approve.run, beat, kNow);
  REQUIRE(set.has_value());
  CHECK(runIn(*set, 2)->deadline == kNow + 10min);
  CHECK(set->history.at(0).detail == "deadline moved");
  // Plain has no timeout: the heartbeat is recorded and moves nothing.
  const Case plain = caseOf(StepRunStatus::Waiting, "Plain");
  Case noDeadline = plain;
  noDeadline.run.deadline.reset();
  set = transitions.applyEvent(*process, noDeadline.snapshot, noDeadline.run, beat, kNow);
  REQUIRE(set.has_value());
  CHECK_FALSE(runIn(*set, 2)->deadline.has_value());
  CHECK(set->history.at(0).kind == HistoryKind::Heartbeat);
  CHECK(set->history.at(0).detail.empty());
}

TEST_CASE("a run whose step the defined version lacks is ProcessNotDefined, not a crash") {
  static const auto process = orderProcess();
  asyncflow::testing::CountingRandom random;
  const Transitions transitions(SerialForm::WithSecret, random);
  const Case c = caseOf(StepRunStatus::Waiting, "Vanished");
  auto set = transitions.timeOut(*process, c.snapshot, c.run, kNow);
  REQUIRE_FALSE(set.has_value());
  CHECK(set.error().code == Errc::ProcessNotDefined);
  CHECK(contains(set.error().message, "Vanished"));
}

TEST_CASE("start writes the instance, its defaults and its first run, with a secret") {
  static const auto process = orderProcess();
  asyncflow::testing::CountingRandom random;
  const Transitions withSecret(SerialForm::WithSecret, random);
  auto set = withSecret.start(*process, Fields{{"Status", "New"}}, kT0);
  REQUIRE(set.has_value());
  CHECK(set->instance.id == 0);
  CHECK(set->instance.status == InstanceStatus::Running);
  CHECK(set->fields == Fields{{"Status", "New"}, {"Ticket", nullptr}});
  REQUIRE(set->stepRuns.size() == 1);
  CHECK(set->stepRuns[0].status == StepRunStatus::Starting);
  CHECK(set->stepRuns[0].secret.size() == 22);
  CHECK(set->history.at(0).kind == HistoryKind::Started);
  const Transitions bare(SerialForm::Bare, random);
  CHECK(bare.start(*process, {}, kT0)->stepRuns[0].secret.empty());
}

namespace {

using asyncflow::InstanceRecord;
using asyncflow::detail::LeaseState;
using asyncflow::detail::leaseStateOf;

InstanceRecord leased(InstanceStatus status, std::string owner, std::optional<Timestamp> expiry) {
  InstanceRecord record;
  record.id = 7;
  record.status = status;
  record.leaseOwner = std::move(owner);
  record.leaseExpiry = expiry;
  return record;
}

// recordEvent() of `kind` (with `heartbeat` as the declared interval) must
// succeed; the set it writes.
ChangeSet recorded(const Case& c, ServerEvent::Kind kind, Fields fields = {},
                   std::string reason = {},
                   std::optional<std::chrono::microseconds> heartbeat = std::nullopt) {
  ServerEvent event;
  event.kind = kind;
  event.fields = std::move(fields);
  event.reason = std::move(reason);
  auto set = Transitions::recordEvent(c.snapshot, c.run, std::move(event), heartbeat, kNow);
  REQUIRE(set.has_value());
  return *set;
}

}  // namespace

TEST_CASE("leaseStateOf: none, live, expired (at its expiry already) and offered") {
  const Timestamp now = kT0;
  CHECK(leaseStateOf(leased(InstanceStatus::Running, "", std::nullopt), now) == LeaseState::None);
  CHECK(leaseStateOf(leased(InstanceStatus::Running, "web-1/00", std::nullopt), now) ==
        LeaseState::None);
  CHECK(leaseStateOf(leased(InstanceStatus::Running, "web-1/00", now + 1us), now) ==
        LeaseState::Live);
  CHECK(leaseStateOf(leased(InstanceStatus::Running, "web-1/00", now), now) == LeaseState::Expired);
  CHECK(leaseStateOf(leased(InstanceStatus::Running, "web-1/00", now - 1h), now) ==
        LeaseState::Expired);
  // Offered: no owner but an expiry, whenever that is.
  CHECK(leaseStateOf(leased(InstanceStatus::Running, "", now), now) == LeaseState::Offered);
  CHECK(leaseStateOf(leased(InstanceStatus::Running, "", now + 1h), now) == LeaseState::Offered);
  // Only a Running instance carries a lease, whatever its record says.
  for (InstanceStatus status : {InstanceStatus::Waiting, InstanceStatus::Completed,
                                InstanceStatus::Failed, InstanceStatus::Cancelled}) {
    INFO(asyncflow::statusName(status));
    CHECK(leaseStateOf(leased(status, "web-1/00", now + 1h), now) == LeaseState::None);
    CHECK(leaseStateOf(leased(status, "", now), now) == LeaseState::None);
  }
}

TEST_CASE("takeLease and offerLease write the lease of a Running set, and clear any other's") {
  ChangeSet set;
  set.instance.status = InstanceStatus::Running;
  Transitions::takeLease(set, "web-1/00", kT0 + 30s);
  CHECK(set.instance.leaseOwner == "web-1/00");
  CHECK(set.instance.leaseExpiry == kT0 + 30s);
  CHECK(leaseStateOf(set.instance, kT0) == LeaseState::Live);

  Transitions::offerLease(set, kT0 + 5s);
  CHECK(set.instance.leaseOwner.empty());
  CHECK(set.instance.leaseExpiry == kT0 + 5s);  // expired at once: any host may take it
  CHECK(leaseStateOf(set.instance, kT0 + 5s) == LeaseState::Offered);

  for (InstanceStatus status : {InstanceStatus::Waiting, InstanceStatus::Completed,
                                InstanceStatus::Failed, InstanceStatus::Cancelled}) {
    INFO(asyncflow::statusName(status));
    ChangeSet other;
    other.instance = leased(status, "old/11", kT0 + 1h);
    Transitions::takeLease(other, "web-1/00", kT0 + 30s);
    CHECK(other.instance.leaseOwner.empty());
    CHECK_FALSE(other.instance.leaseExpiry.has_value());
    other.instance = leased(status, "old/11", kT0 + 1h);
    Transitions::offerLease(other, kT0);
    CHECK(other.instance.leaseOwner.empty());
    CHECK_FALSE(other.instance.leaseExpiry.has_value());
  }
}

TEST_CASE(
    "recordEvent on a Waiting run: the completion is recorded, the deadline cleared, and "
    "the instance runs again") {
  const Case c = caseOf(StepRunStatus::Waiting);
  REQUIRE(c.run.deadline.has_value());

  SECTION("a completion") {
    const ChangeSet set = recorded(c, ServerEvent::Kind::Complete, Fields{{"Status", "Approved"}});
    CHECK(set.expectedVersion == c.snapshot.record.version);
    const StepRunRecord* run = runIn(set, 2);
    REQUIRE(run != nullptr);
    CHECK(run->status == StepRunStatus::Waiting);  // closed by a host that defines the version
    CHECK(run->hasCompletion);
    CHECK(run->completion == Fields{{"Status", "Approved"}});
    CHECK(run->error.empty());
    CHECK_FALSE(run->deadline.has_value());
    CHECK_FALSE(Transitions::isDue(*run, kNow + 24h));
    CHECK(set.instance.status == InstanceStatus::Running);
    CHECK(set.fields.empty());  // the fields stay on the run until it is closed
    CHECK(runIn(set, 3) == nullptr);
    REQUIRE(set.history.size() == 1);
    CHECK(set.history[0].kind == HistoryKind::CompletionRecorded);
    CHECK(set.history[0].run == 2);
    CHECK(set.history[0].detail == "for a host that defines version 1");
    // A host that defines the version closes it with what was recorded.
    const auto decision = Transitions::recordedDecision(*run);
    REQUIRE(decision.has_value());
    CHECK(decision->kind == Decision::Kind::Complete);
  }
  SECTION("a failure, with its reason, or the generic one") {
    ChangeSet set =
        recorded(c, ServerEvent::Kind::Fail, Fields{{"Status", "Refused"}}, "no credit");
    const StepRunRecord* run = runIn(set, 2);
    REQUIRE(run != nullptr);
    CHECK(run->status == StepRunStatus::Waiting);
    CHECK(run->hasCompletion);
    CHECK(run->error == "no credit");
    CHECK(run->completion == Fields{{"Status", "Refused"}});
    CHECK_FALSE(run->deadline.has_value());
    CHECK(set.instance.status == InstanceStatus::Running);
    CHECK(set.history.at(0).detail == "failure: no credit; for a host that defines version 1");
    const auto decision = Transitions::recordedDecision(*run);
    REQUIRE(decision.has_value());
    CHECK(decision->kind == Decision::Kind::Fail);
    CHECK(decision->text == "no credit");

    set = recorded(c, ServerEvent::Kind::Fail);
    CHECK(runIn(set, 2)->error == "the external system reported a failure");
  }
}

TEST_CASE("recordEvent on a Starting run records the completion as applyEvent does") {
  static const auto process = orderProcess();
  asyncflow::testing::CountingRandom random;
  const Transitions transitions(SerialForm::WithSecret, random);
  const Case c = caseOf(StepRunStatus::Starting);
  ServerEvent complete;
  complete.kind = ServerEvent::Kind::Complete;
  complete.fields = Fields{{"Status", "Approved"}};
  const ChangeSet byRecord = recorded(c, complete.kind, complete.fields);
  auto byApply = transitions.applyEvent(*process, c.snapshot, c.run, complete, kNow);
  REQUIRE(byApply.has_value());
  CHECK(byRecord.stepRuns == byApply->stepRuns);
  CHECK(byRecord.instance == byApply->instance);
  CHECK(byRecord.instance.status == InstanceStatus::Running);  // as it was
  REQUIRE(byRecord.history.size() == 1);
  CHECK(byRecord.history[0].kind == HistoryKind::CompletionRecorded);
  CHECK(byRecord.history[0].detail.empty());
  const StepRunRecord* run = runIn(byRecord, 2);
  CHECK(run->status == StepRunStatus::Starting);
  CHECK(run->hasCompletion);
  // Applied by close() when the handler returns, not by recordedDecision().
  CHECK_FALSE(Transitions::recordedDecision(*run).has_value());

  const ChangeSet failed = recorded(c, ServerEvent::Kind::Fail, {}, "ERP down");
  CHECK(runIn(failed, 2)->error == "ERP down");
  CHECK(failed.history.at(0).detail == "failure: ERP down");
  CHECK(failed.instance.status == InstanceStatus::Running);
}

TEST_CASE("recordEvent of a heartbeat moves a waiting deadline by the interval given, if any") {
  const Case c = caseOf(StepRunStatus::Waiting);
  SECTION("with an interval") {
    const ChangeSet set = recorded(c, ServerEvent::Kind::Heartbeat, {}, {}, 10min);
    CHECK(runIn(set, 2)->deadline == kNow + 10min);
    CHECK(runIn(set, 2)->status == StepRunStatus::Waiting);
    CHECK(set.instance.status == InstanceStatus::Waiting);
    CHECK(set.history.at(0).kind == HistoryKind::Heartbeat);
    CHECK(set.history.at(0).detail == "deadline moved");
  }
  SECTION("without one: recorded, nothing moves") {
    const ChangeSet set = recorded(c, ServerEvent::Kind::Heartbeat);
    CHECK(runIn(set, 2)->deadline == c.run.deadline);
    CHECK(set.history.at(0).kind == HistoryKind::Heartbeat);
    CHECK(set.history.at(0).detail.empty());
  }
  SECTION("on a Waiting run whose completion is recorded: nothing moves") {
    Case done = caseOf(StepRunStatus::Waiting);
    done.run.hasCompletion = true;
    done.run.deadline.reset();
    done.snapshot.record.status = InstanceStatus::Running;
    const ChangeSet set = recorded(done, ServerEvent::Kind::Heartbeat, {}, {}, 10min);
    CHECK_FALSE(runIn(set, 2)->deadline.has_value());
    CHECK(set.history.at(0).detail.empty());
  }
  SECTION("on a Starting run: recorded, no deadline") {
    const ChangeSet set =
        recorded(caseOf(StepRunStatus::Starting), ServerEvent::Kind::Heartbeat, {}, {}, 10min);
    CHECK_FALSE(runIn(set, 2)->deadline.has_value());
    CHECK(set.history.at(0).kind == HistoryKind::Heartbeat);
  }
}

TEST_CASE("recordEvent refuses what admit() refuses first: a finished run, a second completion") {
  for (StepRunStatus status : {StepRunStatus::Completed, StepRunStatus::Failed,
                               StepRunStatus::TimedOut, StepRunStatus::Cancelled}) {
    INFO(asyncflow::statusName(status));
    const Case c = caseOf(status);
    ServerEvent event;
    event.kind = ServerEvent::Kind::Complete;
    auto set = Transitions::recordEvent(c.snapshot, c.run, event, std::nullopt, kNow);
    REQUIRE_FALSE(set.has_value());
    CHECK(set.error().code == Errc::Internal);
  }
  Case twice = caseOf(StepRunStatus::Waiting);
  twice.run.hasCompletion = true;
  ServerEvent again;
  again.kind = ServerEvent::Kind::Complete;
  auto set = Transitions::recordEvent(twice.snapshot, twice.run, again, std::nullopt, kNow);
  REQUIRE_FALSE(set.has_value());
  CHECK(set.error().code == Errc::Internal);
}

TEST_CASE("recordedDecision: only a Waiting run with a recorded completion or failure") {
  Case c = caseOf(StepRunStatus::Waiting);
  CHECK_FALSE(Transitions::recordedDecision(c.run).has_value());  // nothing recorded
  c.run.hasCompletion = true;
  c.run.completion.set("Status", "Approved");
  auto decision = Transitions::recordedDecision(c.run);
  REQUIRE(decision.has_value());
  CHECK(decision->kind == Decision::Kind::Complete);
  CHECK(decision->writes.empty());  // close() merges the run's completion itself
  c.run.error = "refused";
  decision = Transitions::recordedDecision(c.run);
  REQUIRE(decision.has_value());
  CHECK(decision->kind == Decision::Kind::Fail);
  CHECK(decision->text == "refused");
  for (StepRunStatus status : {StepRunStatus::Ready, StepRunStatus::Starting,
                               StepRunStatus::Completed, StepRunStatus::Failed}) {
    INFO(asyncflow::statusName(status));
    Case other = caseOf(status);
    other.run.hasCompletion = true;
    CHECK_FALSE(Transitions::recordedDecision(other.run).has_value());
  }
}

TEST_CASE("a recorded completion closes its Waiting run through close(), as if it just arrived") {
  static const auto process = orderProcess();
  asyncflow::testing::CountingRandom random;
  const Transitions transitions(SerialForm::WithSecret, random);
  const Case waiting = caseOf(StepRunStatus::Waiting);
  Case c = waiting;
  c.run = *runIn(recorded(waiting, ServerEvent::Kind::Complete, Fields{{"Status", "Approved"}}), 2);
  c.snapshot.record.status = InstanceStatus::Running;
  auto set =
      transitions.close(*process, c.snapshot, c.run, *Transitions::recordedDecision(c.run), kNow);
  REQUIRE(set.has_value());
  CHECK(runIn(*set, 2)->status == StepRunStatus::Completed);
  CHECK(set->fields == Fields{{"Status", "Approved"}});
  CHECK(runIn(*set, 3)->step == "Notify");

  c.run =
      *runIn(recorded(waiting, ServerEvent::Kind::Fail, Fields{{"Status", "Refused"}}, "no"), 2);
  set = transitions.close(*process, c.snapshot, c.run, *Transitions::recordedDecision(c.run), kNow);
  REQUIRE(set.has_value());
  CHECK(runIn(*set, 2)->status == StepRunStatus::Failed);
  CHECK(runIn(*set, 2)->error == "no");
  CHECK(set->fields == Fields{{"Status", "Refused"}});
  CHECK(runIn(*set, 3)->step == "Repair");  // the error line
}

TEST_CASE("a Waiting run with a completion recorded refuses another, but takes a heartbeat") {
  Case c = caseOf(StepRunStatus::Waiting);
  c.run.hasCompletion = true;
  c.run.completion.set("Status", "Approved");
  c.run.deadline.reset();
  c.snapshot.record.status = InstanceStatus::Running;
  for (auto kind : {ServerEvent::Kind::Complete, ServerEvent::Kind::Fail}) {
    auto admitted = Transitions::admit(c.snapshot, c.run, kind);
    REQUIRE_FALSE(admitted.has_value());
    CHECK(admitted.error().code == Errc::AlreadyCompleted);
    CHECK(contains(admitted.error().message, "7_2"));
  }
  CHECK(Transitions::admit(c.snapshot, c.run, ServerEvent::Kind::Heartbeat).has_value());
  CHECK(Transitions::admit(c.snapshot, c.run, std::nullopt).has_value());
}

TEST_CASE("a Waiting run with a completion recorded is never due, even past a deadline") {
  Case c = caseOf(StepRunStatus::Waiting);
  REQUIRE(Transitions::isDue(c.run, kNow));
  c.run.hasCompletion = true;  // a deadline left in place (recordEvent clears it)
  CHECK_FALSE(Transitions::isDue(c.run, kNow));
  CHECK_FALSE(Transitions::isDue(c.run, kNow + 24h));
}
