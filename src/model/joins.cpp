#include "model/joins.hpp"

#include <algorithm>
#include <string>
#include <utility>

#include <fmt/format.h>

namespace asyncflow::detail {

namespace {

bool isOpenRun(StepRunStatus run) noexcept {
  return run == StepRunStatus::Ready || run == StepRunStatus::Starting ||
         run == StepRunStatus::Waiting;
}

bool isFailedRun(StepRunStatus run) noexcept {
  return run == StepRunStatus::Failed || run == StepRunStatus::TimedOut;
}

// Whether a branch in `state` may have its latest run in `run`.
bool agrees(BranchState state, StepRunStatus run) noexcept {
  switch (state) {
    case BranchState::Open: return isOpenRun(run);
    case BranchState::Arrived: return run == StepRunStatus::Completed;
    case BranchState::Failed: return isFailedRun(run);
    case BranchState::Cancelled: return run == StepRunStatus::Cancelled;
  }
  return false;
}

std::size_t countOf(const Join& join, BranchState state) {
  return static_cast<std::size_t>(std::count(join.branches.begin(), join.branches.end(), state));
}

tl::unexpected<Error> internal(std::string message) {
  return fail(Errc::Internal, "join: " + std::move(message));
}

tl::unexpected<Error> noMove(const Join& join, JoinEvent event) {
  return internal(
      fmt::format("no transition from {} on {}", joinStateName(join.state), joinEventName(event)));
}

// Why `join` contradicts itself, or empty.
std::string contradiction(const Join& join) {
  const std::size_t needed = arrivalsNeeded(join.rule, join.branches.size());
  const std::size_t arrived = countOf(join, BranchState::Arrived);
  const std::size_t open = countOf(join, BranchState::Open);
  if (join.rule.kind == JoinRule::Kind::AtLeast && join.rule.count == 0) {
    return "an AtLeast rule of 0";
  }
  if (join.state == JoinState::Open) {
    if (arrived >= needed) return fmt::format("Open with {} of {} arrived", arrived, needed);
    if (arrived + open < needed) {
      return fmt::format("Open out of reach: {} arrived, {} open, {} needed", arrived, open,
                         needed);
    }
    return {};
  }
  if (open > 0) return fmt::format("{} with {} open branches", joinStateName(join.state), open);
  if (join.state == JoinState::Fired && arrived < needed) {
    return fmt::format("Fired with {} of {} arrived", arrived, needed);
  }
  if ((join.state == JoinState::Broken || join.state == JoinState::TimedOut) && arrived >= needed) {
    return fmt::format("{} with {} of {} arrived", joinStateName(join.state), arrived, needed);
  }
  return {};
}

// Cancels every open branch of `move.join`, noting each in `move.cancel`.
void cancelOpen(JoinMove& move) {
  for (std::size_t i = 0; i < move.join.branches.size(); ++i) {
    if (move.join.branches[i] == BranchState::Open) {
      move.join.branches[i] = BranchState::Cancelled;
      move.cancel.push_back(i);
    }
  }
}

JoinMove closeWith(const Join& join, JoinState state, JoinThen then) {
  JoinMove move{join, then, {}, {}};
  move.join.state = state;
  cancelOpen(move);
  return move;
}

// Arrive and BranchFailed: the sender's branch closes one way or the other.
Result<JoinMove> onBranchEnd(const Join& join, JoinEvent event, JoinSource source) {
  if (join.state != JoinState::Open) return noMove(join, event);
  const bool arrive = event == JoinEvent::Arrive;
  if (join.branches[source.branch] != BranchState::Open ||
      (arrive ? source.run != StepRunStatus::Completed : !isFailedRun(source.run))) {
    return internal(fmt::format("branch {} ({}, its run {}) cannot send {}", source.branch,
                                branchStateName(join.branches[source.branch]),
                                statusName(source.run), joinEventName(event)));
  }
  JoinMove move{join, JoinThen::Wait, {}, {}};
  move.join.branches[source.branch] = arrive ? BranchState::Arrived : BranchState::Failed;
  const std::size_t needed = arrivalsNeeded(join.rule, join.branches.size());
  const std::size_t arrived = countOf(move.join, BranchState::Arrived);
  const std::size_t open = countOf(move.join, BranchState::Open);
  if (arrived >= needed) return closeWith(move.join, JoinState::Fired, JoinThen::RunJoinStep);
  if (arrived + open < needed) return closeWith(move.join, JoinState::Broken, JoinThen::Broke);
  return move;
}

}  // namespace

std::size_t arrivalsNeeded(const JoinRule& rule, std::size_t branches) noexcept {
  switch (rule.kind) {
    case JoinRule::Kind::All: return branches;
    case JoinRule::Kind::Any: return 1;
    case JoinRule::Kind::AtLeast: return rule.count;
  }
  return branches;
}

std::string_view joinStateName(JoinState state) noexcept {
  switch (state) {
    case JoinState::Open: return "Open";
    case JoinState::Fired: return "Fired";
    case JoinState::Broken: return "Broken";
    case JoinState::TimedOut: return "TimedOut";
    case JoinState::Cancelled: return "Cancelled";
  }
  return "?";
}

std::string_view branchStateName(BranchState state) noexcept {
  switch (state) {
    case BranchState::Open: return "Open";
    case BranchState::Arrived: return "Arrived";
    case BranchState::Failed: return "Failed";
    case BranchState::Cancelled: return "Cancelled";
  }
  return "?";
}

std::string_view joinEventName(JoinEvent event) noexcept {
  switch (event) {
    case JoinEvent::Arrive: return "Arrive";
    case JoinEvent::BranchFailed: return "BranchFailed";
    case JoinEvent::Deadline: return "Deadline";
    case JoinEvent::Cancel: return "Cancel";
    case JoinEvent::Retry: return "Retry";
  }
  return "?";
}

Result<JoinMove> openJoin(const JoinRule& rule, std::size_t branches) {
  if (branches == 0) return fail(Errc::InvalidArgument, "a join over no branches");
  if (rule.kind == JoinRule::Kind::AtLeast && rule.count == 0) {
    return fail(Errc::InvalidArgument, "a join that needs 0 arrivals");
  }
  Join join{rule, JoinState::Open, std::vector<BranchState>(branches, BranchState::Open)};
  if (arrivalsNeeded(rule, branches) > branches) {
    return closeWith(join, JoinState::Broken, JoinThen::Broke);
  }
  return JoinMove{std::move(join), JoinThen::Wait, {}, {}};
}

StepRunStatus runAfter(const JoinMove& move, std::size_t branch, StepRunStatus run) noexcept {
  const bool cancelled = std::binary_search(move.cancel.begin(), move.cancel.end(), branch);
  return cancelled && isOpenRun(run) ? StepRunStatus::Cancelled : run;
}

Result<JoinMove> joinOn(const Join& join, JoinEvent event, JoinSource source) {
  if (std::string why = contradiction(join); !why.empty()) return internal(why);
  if (source.branch >= join.branches.size()) {
    return internal(fmt::format("no branch {} of {}", source.branch, join.branches.size()));
  }
  const bool sends = event == JoinEvent::Arrive || event == JoinEvent::BranchFailed;
  if (!sends && !agrees(join.branches[source.branch], source.run)) {
    return internal(fmt::format("branch {} is {} but its run is {}", source.branch,
                                branchStateName(join.branches[source.branch]),
                                statusName(source.run)));
  }
  switch (event) {
    case JoinEvent::Arrive:
    case JoinEvent::BranchFailed: return onBranchEnd(join, event, source);
    case JoinEvent::Deadline:
      if (join.state != JoinState::Open) return noMove(join, event);
      return closeWith(join, JoinState::TimedOut, JoinThen::Escalate);
    case JoinEvent::Cancel:
      if (join.state == JoinState::Cancelled) {
        return fail(Errc::Cancelled, "the join was cancelled with its instance");
      }
      if (join.state == JoinState::Fired || join.state == JoinState::TimedOut) {
        return JoinMove{join, JoinThen::Past, {}, {}};
      }
      return closeWith(join, JoinState::Cancelled, JoinThen::Cancelled);
    case JoinEvent::Retry: {
      if (join.state == JoinState::Cancelled) {
        return fail(Errc::Cancelled, "the join was cancelled with its instance");
      }
      if (join.state != JoinState::Broken && join.state != JoinState::TimedOut) {
        return noMove(join, event);
      }
      const std::size_t needed = arrivalsNeeded(join.rule, join.branches.size());
      if (needed > join.branches.size()) {
        return fail(Errc::InvalidArgument,
                    fmt::format("the join needs {} arrivals of {} branches: a retry cannot meet it",
                                needed, join.branches.size()));
      }
      JoinMove move{join, JoinThen::Rerun, {}, {}};
      move.join.state = JoinState::Open;
      for (std::size_t i = 0; i < move.join.branches.size(); ++i) {
        if (move.join.branches[i] != BranchState::Arrived) {
          move.join.branches[i] = BranchState::Open;
          move.rerun.push_back(i);
        }
      }
      return move;
    }
  }
  return noMove(join, event);
}

}  // namespace asyncflow::detail
