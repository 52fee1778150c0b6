// The join of parallel branches (internal; DESIGN.md section 9): how a join
// moves when one of its branches arrives or fails, when its deadline passes,
// and when the instance is cancelled or retried. Pure: no store, no thread.
//
// A split starts several branches, each a path of steps with its own open run.
// A branch ends in one of three ways: it *arrives* (its route reaches the join
// step), it *fails* (a run failed or timed out and no error or escalation line
// took it on), or it is *cancelled*. The join counts them against its rule
// (All, Any, AtLeast n) and decides what becomes of itself, of the branches
// still open, and of the instance:
//
//   Open ──arrive, enough now──▶ Fired      the join's step runs; the branches still
//                                           open are cancelled (with All none is)
//   Open ──arrive, not yet──▶ Open
//   Open ──branch failed, still reachable──▶ Open
//   Open ──branch failed, out of reach──▶ Broken   the open branches cancelled; the
//                                           join's error line, or the instance fails
//   Open ──deadline──▶ TimedOut             the open branches cancelled; the join's
//                                           escalation line, or the instance fails
//   Open | Broken ──cancel──▶ Cancelled     the open branches cancelled
//   Broken | TimedOut ──retry──▶ Open       every branch that did not arrive runs
//                                           its last step again (those the join
//                                           cancelled too: only the join stopped
//                                           them); arrivals stand; a deadline
//                                           starts again from the retry
//   Fired | TimedOut ──cancel──▶ (the same) the instance is past the join: cancelling
//                                           it is the instance's and its runs' move
//
// "Reachable": the arrivals so far plus the branches still open can still
// reach the rule's count. A pair with no move above is Internal naming the
// state and the event (only a bug makes it: the engine consults the join only
// for events its branches can send), except that a Cancelled join refuses
// cancel and retry with Errc::Cancelled, as a cancelled instance does, and a
// retry of a join that no rerun can meet (AtLeast n over fewer than n branches)
// is InvalidArgument.
#pragma once

#include <cstddef>
#include <string_view>
#include <vector>

#include "asyncflow/error.hpp"
#include "asyncflow/records.hpp"

namespace asyncflow::detail {

// How many arrivals fire a join.
struct JoinRule {
  enum class Kind {
    All,      // every branch (AND)
    Any,      // the first arrival (OR); the others are cancelled
    AtLeast,  // `count` arrivals (N-of-M); the others are cancelled
  };
  Kind kind = Kind::All;
  std::size_t count = 0;  // AtLeast only: 1 or more

  static JoinRule all() noexcept { return JoinRule{Kind::All, 0}; }
  static JoinRule any() noexcept { return JoinRule{Kind::Any, 0}; }
  static JoinRule atLeast(std::size_t n) noexcept { return JoinRule{Kind::AtLeast, n}; }

  friend bool operator==(const JoinRule& a, const JoinRule& b) noexcept {
    return a.kind == b.kind && a.count == b.count;
  }
};

// The arrivals that fire a join of `branches` branches under `rule`: All:
// `branches`; Any: 1; AtLeast: its count. May exceed `branches` (an AtLeast
// whose split started fewer branches): such a join breaks when it opens.
std::size_t arrivalsNeeded(const JoinRule& rule, std::size_t branches) noexcept;

// Where a join stands.
enum class JoinState {
  Open,       // branches are running; not enough have arrived
  Fired,      // enough arrived: the instance went on at the join's step
  Broken,     // too many branches failed for the rule to be met
  TimedOut,   // the join's deadline passed first
  Cancelled,  // the instance was cancelled while the join was open or broken
};

// Where one branch of a join stands.
enum class BranchState {
  Open,       // its path has an open run (Ready, Starting or Waiting)
  Arrived,    // its path reached the join
  Failed,     // its path failed with no line to take it on
  Cancelled,  // cancelled: by the join (fired, broken, timed out) or the instance
};

// What a join receives.
enum class JoinEvent {
  Arrive,        // a branch's route reached the join
  BranchFailed,  // a branch's run failed or timed out and nothing took it on
  Deadline,      // the join's deadline passed
  Cancel,        // the instance is cancelled
  Retry,         // the failed instance is retried at the broken or timed-out join
};

// "Open", "Arrive", ... Never fail.
std::string_view joinStateName(JoinState state) noexcept;
std::string_view branchStateName(BranchState state) noexcept;
std::string_view joinEventName(JoinEvent event) noexcept;

// A join as the instance keeps it: its rule, its state and one entry per
// branch, in the order the split started them.
struct Join {
  JoinRule rule;
  JoinState state = JoinState::Open;
  std::vector<BranchState> branches;

  friend bool operator==(const Join& a, const Join& b) {
    return a.rule == b.rule && a.state == b.state && a.branches == b.branches;
  }
};

// A join just opened over `branches` branches, all Open: Broken at once when
// the rule needs more arrivals than there are branches (an AtLeast over a
// split whose rules started fewer), with `then` Broke for the caller.
// InvalidArgument for no branches at all, or an AtLeast of 0 (define() refuses
// both; nothing could ever arrive, or nothing need).
struct JoinMove;
Result<JoinMove> openJoin(const JoinRule& rule, std::size_t branches);

// The event's sender: the branch it concerns and the status of that branch's
// latest run. Arrive: the branch's run that just Completed, the branch still
// Open. BranchFailed: its run that just Failed or TimedOut, the branch still
// Open. Deadline, Cancel, Retry: any branch, whose run status must agree with
// its state (Open: Ready, Starting or Waiting; Arrived: Completed; Failed:
// Failed or TimedOut; Cancelled: Cancelled); the move says what becomes of it.
struct JoinSource {
  std::size_t branch = 0;
  StepRunStatus run = StepRunStatus::Ready;
};

// What the instance does after a join's move.
enum class JoinThen {
  Wait,         // the join is open: the other branches go on
  RunJoinStep,  // the join fired: a run of the join's step starts
  Broke,        // the join broke: its error line, or the instance fails
  Escalate,     // the join timed out: its escalation line, or the instance fails
  Cancelled,    // the join was cancelled with the instance
  Rerun,        // the join reopened (retry): the branches in `rerun` start again
  Past,         // the join was already closed: nothing of it changes
};

// A join's move: the join after it, what the instance does, and the branches
// whose open run is cancelled now or that start again (indices into
// Join::branches, ascending).
struct JoinMove {
  Join join;
  JoinThen then = JoinThen::Wait;
  std::vector<std::size_t> cancel;
  std::vector<std::size_t> rerun;
};

// The status a branch's latest run has after `move`: Cancelled when the move
// cancels the branch and the run is open; otherwise `run` as it was (a branch
// that reruns gets a new run; its old one keeps its status).
StepRunStatus runAfter(const JoinMove& move, std::size_t branch, StepRunStatus run) noexcept;

// The join's move on `event` from `source` (see the machine above). Internal
// when the join contradicts itself (a closed join with an open branch, an
// Open join already met or out of reach, a Fired one short of its count), when
// the source's branch does not exist or its run status disagrees with its
// state, and for every pair the machine has no move for; Cancelled for cancel
// or retry of a Cancelled join; InvalidArgument for a retry no rerun can meet.
Result<JoinMove> joinOn(const Join& join, JoinEvent event, JoinSource source);

}  // namespace asyncflow::detail
