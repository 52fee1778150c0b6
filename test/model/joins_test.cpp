// Pins the join machine of parallel branches (src/model/joins.hpp) on its own:
// for every (run status, join state, event) triple, the move it makes or the
// refusal it answers, as one table over a join of two branches under All; then
// what depends on the rule and the counts (Any, AtLeast, opening, retry).
#include "model/joins.hpp"

#include <cstddef>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "support/catch.hpp"
#include "support/test_support.hpp"

namespace {

using asyncflow::Errc;
using asyncflow::StepRunStatus;
using asyncflow::detail::BranchState;
using asyncflow::detail::Join;
using asyncflow::detail::JoinEvent;
using asyncflow::detail::JoinMove;
using asyncflow::detail::JoinRule;
using asyncflow::detail::JoinSource;
using asyncflow::detail::JoinState;
using asyncflow::detail::JoinThen;
using asyncflow::testing::contains;

using Runs = std::vector<StepRunStatus>;

const Runs kAllRuns = {StepRunStatus::Ready,     StepRunStatus::Starting, StepRunStatus::Waiting,
                       StepRunStatus::Completed, StepRunStatus::Failed,   StepRunStatus::TimedOut,
                       StepRunStatus::Cancelled};
const Runs kOpenRuns = {StepRunStatus::Ready, StepRunStatus::Starting, StepRunStatus::Waiting};
const Runs kFailedRuns = {StepRunStatus::Failed, StepRunStatus::TimedOut};
const Runs kClosedRuns = {StepRunStatus::Completed, StepRunStatus::Failed, StepRunStatus::TimedOut,
                          StepRunStatus::Cancelled};
const std::vector<JoinState> kAllStates = {JoinState::Open, JoinState::Fired, JoinState::Broken,
                                           JoinState::TimedOut, JoinState::Cancelled};
const std::vector<JoinEvent> kAllEvents = {JoinEvent::Arrive, JoinEvent::BranchFailed,
                                           JoinEvent::Deadline, JoinEvent::Cancel,
                                           JoinEvent::Retry};

// The state a branch whose latest run is `run` is in, when it sends nothing.
BranchState branchOf(StepRunStatus run) {
  switch (run) {
    case StepRunStatus::Completed: return BranchState::Arrived;
    case StepRunStatus::Failed:
    case StepRunStatus::TimedOut: return BranchState::Failed;
    case StepRunStatus::Cancelled: return BranchState::Cancelled;
    default: return BranchState::Open;
  }
}

// The other branch of the table's join, as a join in `state` has it: still
// open while the join is, arrived once it fired, failed when it broke it,
// cancelled when the join timed out or was cancelled.
BranchState otherOf(JoinState state) {
  switch (state) {
    case JoinState::Open: return BranchState::Open;
    case JoinState::Fired: return BranchState::Arrived;
    case JoinState::Broken: return BranchState::Failed;
    case JoinState::TimedOut:
    case JoinState::Cancelled: return BranchState::Cancelled;
  }
  return BranchState::Open;
}

// The table's join: All over two branches; branch 0 is the source, whose run
// is `run` (Open while it sends Arrive or BranchFailed, as a sender is).
Join tableJoin(JoinState state, JoinEvent event, StepRunStatus run) {
  const bool sends = event == JoinEvent::Arrive || event == JoinEvent::BranchFailed;
  return Join{JoinRule::all(), state, {sends ? BranchState::Open : branchOf(run), otherOf(state)}};
}

// One row: a (join state, event) pair and the run statuses it covers, with
// what they give: a refusal, or the join after, what the instance does, the
// source's run after the move, and the branches cancelled and rerun.
struct Row {
  JoinState state;
  JoinEvent event;
  Runs runs;
  std::optional<Errc> refusal;
  JoinState after = JoinState::Open;
  JoinThen then = JoinThen::Wait;
  std::vector<BranchState> branchesAfter;
  std::optional<StepRunStatus> runAfter;  // none: as it was
  std::vector<std::size_t> cancel;
  std::vector<std::size_t> rerun;
};

Row refused(JoinState state, JoinEvent event, Runs runs, Errc code) {
  return Row{state, event, std::move(runs), code, {}, {}, {}, {}, {}, {}};
}

Row moves(JoinState state, JoinEvent event, Runs runs, JoinState after, JoinThen then,
          std::vector<BranchState> branchesAfter, std::optional<StepRunStatus> runAfter = {},
          std::vector<std::size_t> cancel = {}, std::vector<std::size_t> rerun = {}) {
  return Row{state,
             event,
             std::move(runs),
             std::nullopt,
             after,
             then,
             std::move(branchesAfter),
             runAfter,
             std::move(cancel),
             std::move(rerun)};
}

const BranchState kOpen = BranchState::Open;
const BranchState kArrived = BranchState::Arrived;
const BranchState kFailed = BranchState::Failed;
const BranchState kCancelled = BranchState::Cancelled;

// Every (join state, event) pair, every run status once. Internal rows are the
// pairs only a bug can bring: a closed join's branches sending, a join or a
// source that contradicts itself.
std::vector<Row> table() {
  const Errc internal = Errc::Internal;
  return {
      // Open: All of 2, the other branch still open.
      moves(JoinState::Open, JoinEvent::Arrive, {StepRunStatus::Completed}, JoinState::Open,
            JoinThen::Wait, {kArrived, kOpen}),
      refused(JoinState::Open, JoinEvent::Arrive,
              {StepRunStatus::Ready, StepRunStatus::Starting, StepRunStatus::Waiting,
               StepRunStatus::Failed, StepRunStatus::TimedOut, StepRunStatus::Cancelled},
              internal),
      moves(JoinState::Open, JoinEvent::BranchFailed, kFailedRuns, JoinState::Broken,
            JoinThen::Broke, {kFailed, kCancelled}, std::nullopt, {1}),
      refused(JoinState::Open, JoinEvent::BranchFailed,
              {StepRunStatus::Ready, StepRunStatus::Starting, StepRunStatus::Waiting,
               StepRunStatus::Completed, StepRunStatus::Cancelled},
              internal),
      moves(JoinState::Open, JoinEvent::Deadline, kOpenRuns, JoinState::TimedOut,
            JoinThen::Escalate, {kCancelled, kCancelled}, StepRunStatus::Cancelled, {0, 1}),
      moves(JoinState::Open, JoinEvent::Deadline, {StepRunStatus::Completed}, JoinState::TimedOut,
            JoinThen::Escalate, {kArrived, kCancelled}, std::nullopt, {1}),
      // A failed or cancelled branch leaves All of 2 out of reach: it would have broken.
      refused(JoinState::Open, JoinEvent::Deadline,
              {StepRunStatus::Failed, StepRunStatus::TimedOut, StepRunStatus::Cancelled}, internal),
      moves(JoinState::Open, JoinEvent::Cancel, kOpenRuns, JoinState::Cancelled,
            JoinThen::Cancelled, {kCancelled, kCancelled}, StepRunStatus::Cancelled, {0, 1}),
      moves(JoinState::Open, JoinEvent::Cancel, {StepRunStatus::Completed}, JoinState::Cancelled,
            JoinThen::Cancelled, {kArrived, kCancelled}, std::nullopt, {1}),
      refused(JoinState::Open, JoinEvent::Cancel,
              {StepRunStatus::Failed, StepRunStatus::TimedOut, StepRunStatus::Cancelled}, internal),
      refused(JoinState::Open, JoinEvent::Retry, kAllRuns, internal),

      // Fired: both arrived.
      refused(JoinState::Fired, JoinEvent::Arrive, kAllRuns, internal),
      refused(JoinState::Fired, JoinEvent::BranchFailed, kAllRuns, internal),
      refused(JoinState::Fired, JoinEvent::Deadline, kAllRuns, internal),
      moves(JoinState::Fired, JoinEvent::Cancel, {StepRunStatus::Completed}, JoinState::Fired,
            JoinThen::Past, {kArrived, kArrived}),
      refused(JoinState::Fired, JoinEvent::Cancel,
              {StepRunStatus::Ready, StepRunStatus::Starting, StepRunStatus::Waiting,
               StepRunStatus::Failed, StepRunStatus::TimedOut, StepRunStatus::Cancelled},
              internal),
      refused(JoinState::Fired, JoinEvent::Retry, kAllRuns, internal),

      // Broken: the other branch failed.
      refused(JoinState::Broken, JoinEvent::Arrive, kAllRuns, internal),
      refused(JoinState::Broken, JoinEvent::BranchFailed, kAllRuns, internal),
      refused(JoinState::Broken, JoinEvent::Deadline, kAllRuns, internal),
      moves(JoinState::Broken, JoinEvent::Cancel, {StepRunStatus::Completed}, JoinState::Cancelled,
            JoinThen::Cancelled, {kArrived, kFailed}),
      moves(JoinState::Broken, JoinEvent::Cancel, kFailedRuns, JoinState::Cancelled,
            JoinThen::Cancelled, {kFailed, kFailed}),
      moves(JoinState::Broken, JoinEvent::Cancel, {StepRunStatus::Cancelled}, JoinState::Cancelled,
            JoinThen::Cancelled, {kCancelled, kFailed}),
      refused(JoinState::Broken, JoinEvent::Cancel, kOpenRuns, internal),
      moves(JoinState::Broken, JoinEvent::Retry, {StepRunStatus::Completed}, JoinState::Open,
            JoinThen::Rerun, {kArrived, kOpen}, std::nullopt, {}, {1}),
      moves(JoinState::Broken, JoinEvent::Retry,
            {StepRunStatus::Failed, StepRunStatus::TimedOut, StepRunStatus::Cancelled},
            JoinState::Open, JoinThen::Rerun, {kOpen, kOpen}, std::nullopt, {}, {0, 1}),
      refused(JoinState::Broken, JoinEvent::Retry, kOpenRuns, internal),

      // TimedOut: the other branch was cancelled by the deadline.
      refused(JoinState::TimedOut, JoinEvent::Arrive, kAllRuns, internal),
      refused(JoinState::TimedOut, JoinEvent::BranchFailed, kAllRuns, internal),
      refused(JoinState::TimedOut, JoinEvent::Deadline, kAllRuns, internal),
      moves(JoinState::TimedOut, JoinEvent::Cancel, {StepRunStatus::Completed}, JoinState::TimedOut,
            JoinThen::Past, {kArrived, kCancelled}),
      moves(JoinState::TimedOut, JoinEvent::Cancel, kFailedRuns, JoinState::TimedOut,
            JoinThen::Past, {kFailed, kCancelled}),
      moves(JoinState::TimedOut, JoinEvent::Cancel, {StepRunStatus::Cancelled}, JoinState::TimedOut,
            JoinThen::Past, {kCancelled, kCancelled}),
      refused(JoinState::TimedOut, JoinEvent::Cancel, kOpenRuns, internal),
      moves(JoinState::TimedOut, JoinEvent::Retry, {StepRunStatus::Completed}, JoinState::Open,
            JoinThen::Rerun, {kArrived, kOpen}, std::nullopt, {}, {1}),
      moves(JoinState::TimedOut, JoinEvent::Retry,
            {StepRunStatus::Failed, StepRunStatus::TimedOut, StepRunStatus::Cancelled},
            JoinState::Open, JoinThen::Rerun, {kOpen, kOpen}, std::nullopt, {}, {0, 1}),
      refused(JoinState::TimedOut, JoinEvent::Retry, kOpenRuns, internal),

      // Cancelled: everything was cancelled with the instance.
      refused(JoinState::Cancelled, JoinEvent::Arrive, kAllRuns, internal),
      refused(JoinState::Cancelled, JoinEvent::BranchFailed, kAllRuns, internal),
      refused(JoinState::Cancelled, JoinEvent::Deadline, kAllRuns, internal),
      refused(JoinState::Cancelled, JoinEvent::Cancel, kClosedRuns, Errc::Cancelled),
      refused(JoinState::Cancelled, JoinEvent::Cancel, kOpenRuns, internal),
      refused(JoinState::Cancelled, JoinEvent::Retry, kClosedRuns, Errc::Cancelled),
      refused(JoinState::Cancelled, JoinEvent::Retry, kOpenRuns, internal),
  };
}

std::string describe(JoinState state, JoinEvent event, StepRunStatus run) {
  return std::string(asyncflow::detail::joinStateName(state)) + " on " +
         std::string(asyncflow::detail::joinEventName(event)) + ", the source's run " +
         std::string(asyncflow::statusName(run));
}

}  // namespace

TEST_CASE("the join table names every (run status, join state, event) triple once") {
  std::set<std::tuple<JoinState, JoinEvent, StepRunStatus>> seen;
  for (const Row& row : table()) {
    for (StepRunStatus run : row.runs) {
      INFO(describe(row.state, row.event, run));
      CHECK(seen.insert({row.state, row.event, run}).second);
    }
  }
  CHECK(seen.size() == kAllStates.size() * kAllEvents.size() * kAllRuns.size());
}

TEST_CASE("every (run status, join state, event) triple makes the table's move or refusal") {
  for (const Row& row : table()) {
    for (StepRunStatus run : row.runs) {
      INFO(describe(row.state, row.event, run));
      const Join before = tableJoin(row.state, row.event, run);
      auto move = asyncflow::detail::joinOn(before, row.event, JoinSource{0, run});
      if (row.refusal) {
        REQUIRE_FALSE(move);
        CHECK(move.error().code == *row.refusal);
        if (*row.refusal == Errc::Internal) CHECK(contains(move.error().message, "join: "));
        continue;
      }
      INFO((move ? std::string("moved") : move.error().toString()));
      REQUIRE(move);
      CHECK(move->join.state == row.after);
      CHECK(move->join.rule == before.rule);
      CHECK(move->then == row.then);
      CHECK(move->join.branches == row.branchesAfter);
      CHECK(asyncflow::detail::runAfter(*move, 0, run) == row.runAfter.value_or(run));
      CHECK(move->cancel == row.cancel);
      CHECK(move->rerun == row.rerun);
    }
  }
}

TEST_CASE("Any: the first arrival fires the join and cancels the branches still open") {
  const Join race{JoinRule::any(), JoinState::Open, {kOpen, kOpen, kFailed}};
  auto move = asyncflow::detail::joinOn(race, JoinEvent::Arrive, {1, StepRunStatus::Completed});
  REQUIRE(move);
  CHECK(move->join.state == JoinState::Fired);
  CHECK(move->then == JoinThen::RunJoinStep);
  CHECK(move->join.branches == std::vector<BranchState>{kCancelled, kArrived, kFailed});
  CHECK(move->cancel == std::vector<std::size_t>{0});
  CHECK(asyncflow::detail::runAfter(*move, 0, StepRunStatus::Waiting) == StepRunStatus::Cancelled);
  CHECK(asyncflow::detail::runAfter(*move, 2, StepRunStatus::Failed) == StepRunStatus::Failed);

  // A failure leaves it open while another branch can still arrive, and breaks
  // it when none can.
  const Join two{JoinRule::any(), JoinState::Open, {kOpen, kOpen}};
  auto first = asyncflow::detail::joinOn(two, JoinEvent::BranchFailed, {0, StepRunStatus::Failed});
  REQUIRE(first);
  CHECK(first->join.state == JoinState::Open);
  CHECK(first->then == JoinThen::Wait);
  CHECK(first->cancel.empty());
  auto second =
      asyncflow::detail::joinOn(first->join, JoinEvent::BranchFailed, {1, StepRunStatus::TimedOut});
  REQUIRE(second);
  CHECK(second->join.state == JoinState::Broken);
  CHECK(second->then == JoinThen::Broke);
  CHECK(second->join.branches == std::vector<BranchState>{kFailed, kFailed});
}

TEST_CASE("All: the last arrival fires the join with nothing left to cancel") {
  const Join all{JoinRule::all(), JoinState::Open, {kArrived, kOpen, kArrived}};
  auto move = asyncflow::detail::joinOn(all, JoinEvent::Arrive, {1, StepRunStatus::Completed});
  REQUIRE(move);
  CHECK(move->join.state == JoinState::Fired);
  CHECK(move->then == JoinThen::RunJoinStep);
  CHECK(move->join.branches == std::vector<BranchState>(3, kArrived));
  CHECK(move->cancel.empty());
  CHECK(move->rerun.empty());
}

TEST_CASE("AtLeast: the join fires at its count, and breaks when the count is out of reach") {
  const Join two{JoinRule::atLeast(2), JoinState::Open, {kOpen, kOpen, kOpen, kOpen}};
  auto one = asyncflow::detail::joinOn(two, JoinEvent::Arrive, {2, StepRunStatus::Completed});
  REQUIRE(one);
  CHECK(one->join.state == JoinState::Open);
  CHECK(one->then == JoinThen::Wait);
  auto fired =
      asyncflow::detail::joinOn(one->join, JoinEvent::Arrive, {0, StepRunStatus::Completed});
  REQUIRE(fired);
  CHECK(fired->join.state == JoinState::Fired);
  CHECK(fired->then == JoinThen::RunJoinStep);
  CHECK(fired->join.branches ==
        std::vector<BranchState>{kArrived, kCancelled, kArrived, kCancelled});
  CHECK(fired->cancel == std::vector<std::size_t>{1, 3});

  // 3 of 4: one failure leaves it reachable, the second breaks it.
  const Join three{JoinRule::atLeast(3), JoinState::Open, {kOpen, kOpen, kOpen, kOpen}};
  auto failed =
      asyncflow::detail::joinOn(three, JoinEvent::BranchFailed, {3, StepRunStatus::Failed});
  REQUIRE(failed);
  CHECK(failed->join.state == JoinState::Open);
  auto broke =
      asyncflow::detail::joinOn(failed->join, JoinEvent::BranchFailed, {1, StepRunStatus::Failed});
  REQUIRE(broke);
  CHECK(broke->join.state == JoinState::Broken);
  CHECK(broke->then == JoinThen::Broke);
  CHECK(broke->cancel == std::vector<std::size_t>{0, 2});

  // Retry reruns every branch that did not arrive; the arrival stands.
  const Join broken{JoinRule::atLeast(2), JoinState::Broken, {kArrived, kFailed, kCancelled}};
  auto retried = asyncflow::detail::joinOn(broken, JoinEvent::Retry, {1, StepRunStatus::Failed});
  REQUIRE(retried);
  CHECK(retried->join.state == JoinState::Open);
  CHECK(retried->then == JoinThen::Rerun);
  CHECK(retried->join.branches == std::vector<BranchState>{kArrived, kOpen, kOpen});
  CHECK(retried->rerun == std::vector<std::size_t>{1, 2});
  CHECK(retried->cancel.empty());
}

TEST_CASE("a join opens over its branches, broken at once when its count exceeds them") {
  auto open = asyncflow::detail::openJoin(JoinRule::all(), 3);
  REQUIRE(open);
  CHECK(open->join.state == JoinState::Open);
  CHECK(open->then == JoinThen::Wait);
  CHECK(open->join.branches == std::vector<BranchState>(3, kOpen));

  auto tooFew = asyncflow::detail::openJoin(JoinRule::atLeast(3), 2);
  REQUIRE(tooFew);
  CHECK(tooFew->join.state == JoinState::Broken);
  CHECK(tooFew->then == JoinThen::Broke);
  CHECK(tooFew->cancel == std::vector<std::size_t>{0, 1});
  CHECK(tooFew->join.branches == std::vector<BranchState>(2, kCancelled));
  // It can still be cancelled with its instance.
  auto cancelled =
      asyncflow::detail::joinOn(tooFew->join, JoinEvent::Cancel, {0, StepRunStatus::Cancelled});
  REQUIRE(cancelled);
  CHECK(cancelled->join.state == JoinState::Cancelled);
  // No rerun can meet it: the retry is refused and changes nothing.
  auto retry =
      asyncflow::detail::joinOn(tooFew->join, JoinEvent::Retry, {0, StepRunStatus::Cancelled});
  REQUIRE_FALSE(retry);
  CHECK(retry.error().code == Errc::InvalidArgument);
  CHECK(retry.error().message == "the join needs 3 arrivals of 2 branches: a retry cannot meet it");

  // No branch at all, or nothing needed: refused.
  for (const JoinRule& rule : {JoinRule::all(), JoinRule::any(), JoinRule::atLeast(1)}) {
    auto none = asyncflow::detail::openJoin(rule, 0);
    REQUIRE_FALSE(none);
    CHECK(none.error().code == Errc::InvalidArgument);
    CHECK(none.error().message == "a join over no branches");
  }
  auto zero = asyncflow::detail::openJoin(JoinRule::atLeast(0), 2);
  REQUIRE_FALSE(zero);
  CHECK(zero.error().code == Errc::InvalidArgument);
  CHECK(zero.error().message == "a join that needs 0 arrivals");
  CHECK(asyncflow::detail::arrivalsNeeded(JoinRule::all(), 5) == 5);
  CHECK(asyncflow::detail::arrivalsNeeded(JoinRule::any(), 5) == 1);
  CHECK(asyncflow::detail::arrivalsNeeded(JoinRule::atLeast(4), 5) == 4);
}

TEST_CASE("a join that contradicts itself, or a source it does not have, is Internal naming why") {
  auto check = [](const Join& join, JoinEvent event, JoinSource source, const std::string& why) {
    auto move = asyncflow::detail::joinOn(join, event, source);
    REQUIRE_FALSE(move);
    CHECK(move.error().code == Errc::Internal);
    CHECK(move.error().message == "join: " + why);
  };
  check(Join{JoinRule::all(), JoinState::Open, {kOpen, kOpen}}, JoinEvent::Arrive,
        {2, StepRunStatus::Completed}, "no branch 2 of 2");
  check(Join{JoinRule::any(), JoinState::Open, {kArrived, kOpen}}, JoinEvent::Cancel,
        {1, StepRunStatus::Waiting}, "Open with 1 of 1 arrived");
  check(Join{JoinRule::all(), JoinState::Open, {kFailed, kOpen}}, JoinEvent::Cancel,
        {1, StepRunStatus::Waiting}, "Open out of reach: 0 arrived, 1 open, 2 needed");
  check(Join{JoinRule::any(), JoinState::Fired, {kArrived, kOpen}}, JoinEvent::Cancel,
        {0, StepRunStatus::Completed}, "Fired with 1 open branches");
  check(Join{JoinRule::all(), JoinState::Fired, {kArrived, kCancelled}}, JoinEvent::Cancel,
        {0, StepRunStatus::Completed}, "Fired with 1 of 2 arrived");
  check(Join{JoinRule::any(), JoinState::TimedOut, {kArrived, kCancelled}}, JoinEvent::Cancel,
        {0, StepRunStatus::Completed}, "TimedOut with 1 of 1 arrived");
  check(Join{JoinRule::atLeast(0), JoinState::Open, {kOpen}}, JoinEvent::Cancel,
        {0, StepRunStatus::Waiting}, "an AtLeast rule of 0");
  check(Join{JoinRule::all(), JoinState::Open, {kOpen, kOpen}}, JoinEvent::Cancel,
        {0, StepRunStatus::Completed}, "branch 0 is Open but its run is Completed");
  check(Join{JoinRule::all(), JoinState::Open, {kArrived, kOpen}}, JoinEvent::Arrive,
        {0, StepRunStatus::Completed}, "branch 0 (Arrived, its run Completed) cannot send Arrive");
  check(Join{JoinRule::all(), JoinState::Open, {kOpen, kOpen}}, JoinEvent::BranchFailed,
        {0, StepRunStatus::Cancelled},
        "branch 0 (Open, its run Cancelled) cannot send BranchFailed");
  check(Join{JoinRule::all(), JoinState::Fired, {kArrived, kArrived}}, JoinEvent::Deadline,
        {0, StepRunStatus::Completed}, "no transition from Fired on Deadline");
}

TEST_CASE("every join state, branch state and join event has its name") {
  using asyncflow::detail::branchStateName;
  using asyncflow::detail::joinEventName;
  using asyncflow::detail::joinStateName;
  std::set<std::string> names;
  for (JoinState s : kAllStates) names.insert(std::string(joinStateName(s)));
  CHECK(names == std::set<std::string>{"Open", "Fired", "Broken", "TimedOut", "Cancelled"});
  names.clear();
  for (BranchState s : {kOpen, kArrived, kFailed, kCancelled}) {
    names.insert(std::string(branchStateName(s)));
  }
  CHECK(names == std::set<std::string>{"Open", "Arrived", "Failed", "Cancelled"});
  names.clear();
  for (JoinEvent e : kAllEvents) names.insert(std::string(joinEventName(e)));
  CHECK(names == std::set<std::string>{"Arrive", "BranchFailed", "Deadline", "Cancel", "Retry"});
}
