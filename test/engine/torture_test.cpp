// Concurrency torture: eight threads, released together by a latch, hammer
// overlapping serials of the same few instances at once with
// completeServerEvent, failServerEvent, heartbeat, cancel, retry and timer runs
// on a manual clock; on SqliteStore (group commit) and MemoryStore, inline and
// with two workers. Nothing asserted depends on who wins. Afterwards every step
// run has ended exactly once (one terminal history entry, or Cancelled), at
// most one complete-or-fail per run succeeded and its outcome is the run's,
// every success left its trace in the history, every instance is in a
// consistent final state, and the losers got only documented error codes.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "model/serial.hpp"
#include "support/catch.hpp"
#include "support/test_support.hpp"

using namespace asyncflow;
using asyncflow::testing::CountingRandom;
using asyncflow::testing::Latch;
using asyncflow::testing::TempDir;

namespace {

constexpr int kThreads = 8;
constexpr int kInstances = 128;
constexpr int kOpsPerThread = 2000;
constexpr std::int64_t kRounds = 3;  // Wait -> After cycles before an instance ends
// The threads all aim at the same few instances at a time: the target window
// moves on every kOpsPerWindow operations, counted across all threads.
constexpr int kOpsPerWindow = 100;
constexpr int kWindow = 3;

enum class Backend { Sqlite, Memory };

// The serials start handlers were given, per instance in run order.
class Serials {
 public:
  void record(InstanceId id, const std::string& serial) {
    std::lock_guard lock(mutex_);
    auto& list = byInstance_[id];
    for (const std::string& known : list) {
      if (known == serial) return;
    }
    list.push_back(serial);
  }
  // The newest serial of `id`, or (when `stale`) any of its serials.
  std::string pick(InstanceId id, bool stale, std::mt19937& random) {
    std::lock_guard lock(mutex_);
    const auto& list = byInstance_.at(id);
    return stale ? list[random() % list.size()] : list.back();
  }
  std::size_t count(InstanceId id) {
    std::lock_guard lock(mutex_);
    return byInstance_[id].size();
  }

 private:
  std::mutex mutex_;
  std::map<InstanceId, std::vector<std::string>> byInstance_;
};

// Holds some start handlers open until a hammering thread has made a call at
// their serial, so that completions, failures and heartbeats also arrive while
// the handler runs (the early path) and race with its commit. Never waits for
// time, and never deadlocks: a held handler also goes on as soon as no
// hammering thread is left free to make that call (each has finished or is
// itself held in a handler).
class HandlerGate {
 public:
  // From now on handlers are held; `threads` hammering threads are running.
  void open(int threads) {
    std::lock_guard lock(mutex_);
    free_ = threads;
    open_ = true;
  }
  // Marks the calling thread as a hammering thread.
  static void joinHammering() { hammering_ = true; }
  // A hammering thread has made all its calls.
  void leaveHammering() {
    std::lock_guard lock(mutex_);
    --free_;
    changed_.notify_all();
  }
  // A hammering thread has made a call at `serial`.
  void touch(const std::string& serial) {
    std::lock_guard lock(mutex_);
    touched_.insert(serial);
    changed_.notify_all();
  }
  // engine.waitIdle() from a hammering thread, which meanwhile is not free to
  // release a handler held on a worker (that handler keeps the engine busy).
  void idle(Engine& engine) {
    {
      std::lock_guard lock(mutex_);
      --free_;
      changed_.notify_all();
    }
    engine.waitIdle();
    std::lock_guard lock(mutex_);
    ++free_;
  }
  // In a start handler: waits until `serial` is touched or no thread is free to touch it.
  void hold(const std::string& serial) {
    std::unique_lock lock(mutex_);
    if (!open_) return;
    ++held_;
    if (hammering_) --free_;
    changed_.notify_all();
    changed_.wait(lock, [&] { return touched_.count(serial) != 0 || free_ <= 0; });
    if (hammering_) ++free_;
  }
  int held() {
    std::lock_guard lock(mutex_);
    return held_;
  }

 private:
  static thread_local bool hammering_;
  std::mutex mutex_;
  std::condition_variable changed_;
  bool open_ = false;
  int free_ = 0;  // hammering threads neither finished nor held
  int held_ = 0;  // handlers held so far
  std::set<std::string> touched_;
};

thread_local bool HandlerGate::hammering_ = false;

// Wait (async, 1 h timeout, 10 min heartbeats, no error line) -> After (sync,
// counts Rounds) -> back to Wait, a new run with a new serial, until kRounds
// rounds are done -> End (sync), and the instance completes. A failure or
// time-out fails the instance, which retry() revives. The handler of every
// even-numbered run is held at the gate after handing out its serial.
Process torturedProcess(Serials& serials, HandlerGate& gate) {
  Process p("Torture", 1);
  p.field("Winner", Type::Int64)
      .field("Reason", Type::String)
      .field("Rounds", Type::Int64, 0)
      .step(AsyncStep("Wait",
                      [&serials, &gate](AsyncStepContext& ctx) {
                        serials.record(ctx.instanceId(), ctx.serial());
                        if (detail::parseSerial(ctx.serial()).value().run % 2 == 0) {
                          gate.hold(ctx.serial());
                        }
                        return StartOutcome::wait();
                      })
                .timeout(std::chrono::hours(1))
                .heartbeat(std::chrono::minutes(10)))
      .step(Step("After",
                 [](StepContext& ctx) {
                   ctx.fields().set("Rounds", ctx.fields().getOr<std::int64_t>("Rounds", 0) + 1);
                   return StepOutcome::next();
                 }))
      .step(Step("End", [](StepContext&) { return StepOutcome::next(); }))
      .line("After", "Wait",
            [](const Fields& f) { return f.getOr<std::int64_t>("Rounds", 0) < kRounds; })
      .line("After", "End");
  return p;
}

enum class OpKind { Complete, Fail, Heartbeat, Cancel, Retry, Tick };

const char* nameOf(OpKind kind) {
  switch (kind) {
    case OpKind::Complete: return "complete";
    case OpKind::Fail: return "fail";
    case OpKind::Heartbeat: return "heartbeat";
    case OpKind::Cancel: return "cancel";
    case OpKind::Retry: return "retry";
    case OpKind::Tick: return "tick";
  }
  return "?";
}

// One call a thread made and what it got.
struct Op {
  OpKind kind = OpKind::Tick;
  InstanceId instance = 0;
  std::string serial;         // server events only
  std::int64_t token = 0;     // the Winner a completion sent
  std::optional<Errc> error;  // none: it succeeded
};

// The codes a loser may get: the documented outcomes of calling at a step or
// instance that someone else moved on. Conflict is documented as "retry".
bool isDocumentedLoss(OpKind kind, Errc code) {
  switch (kind) {
    case OpKind::Complete:
    case OpKind::Fail:
    case OpKind::Heartbeat:
      return code == Errc::AlreadyCompleted || code == Errc::StepFailed || code == Errc::TimedOut ||
             code == Errc::Cancelled || code == Errc::Conflict;
    case OpKind::Cancel:
      return code == Errc::AlreadyCompleted || code == Errc::StepFailed ||
             code == Errc::Cancelled || code == Errc::Conflict;
    case OpKind::Retry:
      return code == Errc::InvalidArgument || code == Errc::Cancelled || code == Errc::Conflict;
    case OpKind::Tick: return false;
  }
  return false;
}

// One thread's share of the torture: kOpsPerThread calls after the latch opens.
std::vector<Op> hammer(int thread, Engine& engine, ManualClock& clock, Serials& serials,
                       HandlerGate& gate, const std::vector<InstanceId>& ids,
                       std::atomic<int>& opsDone, Latch& go) {
  HandlerGate::joinHammering();
  std::mt19937 random(1000 + static_cast<unsigned>(thread));
  std::vector<Op> ops;
  ops.reserve(kOpsPerThread);
  go.wait();
  for (int i = 0; i < kOpsPerThread; ++i) {
    const int window = opsDone.fetch_add(1) / kOpsPerWindow;
    Op op;
    op.instance =
        ids[static_cast<std::size_t>(window + static_cast<int>(random() % kWindow)) % ids.size()];
    const unsigned dice = random() % 1000;
    op.kind = dice < 330   ? OpKind::Complete
              : dice < 460 ? OpKind::Fail
              : dice < 650 ? OpKind::Heartbeat
              : dice < 655 ? OpKind::Cancel
              : dice < 960 ? OpKind::Retry
                           : OpKind::Tick;
    const bool stale = random() % 5 == 0;  // an older serial of the instance
    Result<void> result;
    switch (op.kind) {
      case OpKind::Complete:
        op.serial = serials.pick(op.instance, stale, random);
        op.token = thread * 1'000'000 + i;
        result = engine.completeServerEvent(op.serial, {{"Winner", op.token}});
        break;
      case OpKind::Fail:
        op.serial = serials.pick(op.instance, stale, random);
        result = engine.failServerEvent(op.serial, "failed by thread " + std::to_string(thread),
                                        {{"Reason", "thread " + std::to_string(thread)}});
        break;
      case OpKind::Heartbeat:
        op.serial = serials.pick(op.instance, stale, random);
        result = engine.heartbeat(op.serial);
        break;
      case OpKind::Cancel: result = engine.cancel(op.instance, "cancelled by a thread"); break;
      case OpKind::Retry: result = engine.retry(op.instance); break;
      case OpKind::Tick: {
        // Time moves only when the continuations queued so far have run, as
        // it does between the calls of one thread in inline mode.
        gate.idle(engine);
        clock.advance(std::chrono::minutes(7));
        auto fired = engine.runDueTimers();
        if (!fired) result = tl::unexpected(fired.error());
        break;
      }
    }
    if (!result) op.error = result.error().code;
    if (!op.serial.empty()) gate.touch(op.serial);
    ops.push_back(std::move(op));
  }
  gate.leaveHammering();
  return ops;
}

// What the threads' successes were, by serial and by instance.
struct Wins {
  std::map<std::string, std::vector<const Op*>> endings;  // successful complete or fail
  std::map<std::string, int> heartbeats;
  std::map<InstanceId, int> cancels;
  std::map<InstanceId, int> retries;
};

// Tallies of the whole run, for the report line.
struct Tally {
  std::map<std::string, int> calls;
  std::map<std::string, int> successes;
  std::map<std::string, int> losses;  // by error code
  std::map<std::string, int> runOutcomes;
  std::map<std::string, int> instanceOutcomes;
  int earlyCompletions = 0;  // completions recorded before their step waited
};

bool isTerminalEntry(HistoryKind kind) {
  return kind == HistoryKind::StepCompleted || kind == HistoryKind::StepFailed ||
         kind == HistoryKind::TimedOut;
}

bool isInstanceEnd(HistoryKind kind) {
  return kind == HistoryKind::Completed || kind == HistoryKind::Failed ||
         kind == HistoryKind::Cancelled;
}

// Checks one instance after the torture against its history, its step runs
// and the successes the threads saw.
void checkInstance(Engine& engine, Store& store, InstanceId id, const Wins& wins, Tally& tally) {
  INFO("instance " << id);
  auto info = engine.instance(id);
  REQUIRE(info);
  auto snapshot = store.loadInstance(id);
  REQUIRE(snapshot);
  auto history = engine.history(id);
  REQUIRE(history);
  const InstanceStatus status = info->status;
  tally.instanceOutcomes[std::string(statusName(status))] += 1;
  CHECK(status != InstanceStatus::Running);  // waitIdle: nothing is left mid-step

  std::map<std::int64_t, std::vector<HistoryKind>> endingsByRun;
  std::map<std::int64_t, int> recordedByRun;
  std::map<std::int64_t, int> heartbeatsByRun;
  int retried = 0;
  int cancelledEntries = 0;
  std::vector<HistoryKind> instanceEnds;
  for (const HistoryEvent& e : *history) {
    if (isTerminalEntry(e.kind)) endingsByRun[e.run].push_back(e.kind);
    if (e.kind == HistoryKind::CompletionRecorded) ++recordedByRun[e.run];
    if (e.kind == HistoryKind::Heartbeat) ++heartbeatsByRun[e.run];
    if (e.kind == HistoryKind::Retried) ++retried;
    if (e.kind == HistoryKind::Cancelled) ++cancelledEntries;
    if (isInstanceEnd(e.kind)) {
      CHECK(e.run == 0);
      instanceEnds.push_back(e.kind);
    }
  }

  const auto cancels = wins.cancels.count(id) ? wins.cancels.at(id) : 0;
  const auto retries = wins.retries.count(id) ? wins.retries.at(id) : 0;
  // A successful cancel is the instance's end; a later one answers Cancelled.
  CHECK(cancels <= 1);
  CHECK((cancels == 1) == (status == InstanceStatus::Cancelled));
  CHECK(cancelledEntries == cancels);
  // Each successful retry left one Retried entry and one new Wait run, and
  // reopened an instance that had ended once.
  CHECK(retried == retries);
  CHECK(instanceEnds.size() == static_cast<std::size_t>(retries) + (isTerminal(status) ? 1u : 0u));
  if (!instanceEnds.empty() && isTerminal(status)) {
    const HistoryKind last = instanceEnds.back();
    CHECK(((status == InstanceStatus::Completed && last == HistoryKind::Completed) ||
           (status == InstanceStatus::Failed && last == HistoryKind::Failed) ||
           (status == InstanceStatus::Cancelled && last == HistoryKind::Cancelled)));
  }

  int waitRuns = 0;
  int completedWaitRuns = 0;
  int afterRuns = 0;
  int completedAfterRuns = 0;
  int endRuns = 0;
  std::optional<std::int64_t> winningToken;  // of the newest completed Wait run
  for (std::int64_t run = 1; run <= snapshot->record.lastRun; ++run) {
    INFO("run " << run);
    auto record = store.loadStepRun(id, run);
    REQUIRE(record);
    const StepRunStatus runStatus = record->status;
    tally.runOutcomes[std::string(statusName(runStatus))] += 1;
    tally.earlyCompletions += recordedByRun[run];
    const auto& endings = endingsByRun[run];

    // Exactly one terminal outcome: one entry, or Cancelled (the instance's
    // Cancelled entry ends it), or none yet while it waits.
    switch (runStatus) {
      case StepRunStatus::Completed:
        CHECK(endings == std::vector<HistoryKind>{HistoryKind::StepCompleted});
        break;
      case StepRunStatus::Failed:
        CHECK(endings == std::vector<HistoryKind>{HistoryKind::StepFailed});
        break;
      case StepRunStatus::TimedOut:
        CHECK(endings == std::vector<HistoryKind>{HistoryKind::TimedOut});
        break;
      case StepRunStatus::Cancelled:
        CHECK(endings.empty());
        CHECK(status == InstanceStatus::Cancelled);
        CHECK(run == snapshot->record.currentRun);
        break;
      case StepRunStatus::Waiting:
        CHECK(endings.empty());
        CHECK(status == InstanceStatus::Waiting);
        CHECK(run == snapshot->record.currentRun);
        break;
      case StepRunStatus::Ready:
      case StepRunStatus::Starting: FAIL_CHECK("a run is left " << statusName(runStatus)); break;
    }
    CHECK(recordedByRun[run] <= 1);

    if (record->step != "Wait") {
      // Sync steps end by themselves, unless a cancel comes first.
      CHECK((runStatus == StepRunStatus::Completed || runStatus == StepRunStatus::Cancelled));
      if (record->step == "After") {
        ++afterRuns;
        if (runStatus == StepRunStatus::Completed) ++completedAfterRuns;
      } else {
        ++endRuns;
      }
      continue;
    }
    ++waitRuns;
    const std::string serial = detail::formatSerial(id, run, record->secret);
    // At most one complete-or-fail of this serial succeeded, and the run's
    // outcome is that one's (or Cancelled, when a cancel came before the
    // handler returned); without one, the run could only time out, be
    // cancelled or still wait.
    const auto found = wins.endings.find(serial);
    const std::size_t endingWins = found == wins.endings.end() ? 0 : found->second.size();
    CHECK(endingWins <= 1);
    if (endingWins == 1) {
      const Op& winner = *found->second.front();
      if (winner.kind == OpKind::Complete) {
        CHECK((runStatus == StepRunStatus::Completed || runStatus == StepRunStatus::Cancelled));
        if (runStatus == StepRunStatus::Completed) winningToken = winner.token;
      } else {
        CHECK((runStatus == StepRunStatus::Failed || runStatus == StepRunStatus::Cancelled));
      }
    } else {
      CHECK((runStatus == StepRunStatus::TimedOut || runStatus == StepRunStatus::Cancelled ||
             runStatus == StepRunStatus::Waiting));
    }
    if (runStatus == StepRunStatus::Completed) ++completedWaitRuns;
    // Every successful heartbeat left exactly one entry.
    const auto beats = wins.heartbeats.find(serial);
    CHECK(heartbeatsByRun[run] == (beats == wins.heartbeats.end() ? 0 : beats->second));
  }
  // Every completed Wait run led to one After run; every completed After run
  // to a new Wait run, or after the last round to End; every successful retry
  // to a new Wait run.
  CHECK(afterRuns == completedWaitRuns);
  CHECK(completedAfterRuns <= kRounds);
  CHECK(endRuns == (completedAfterRuns == kRounds ? 1 : 0));
  CHECK(waitRuns == 1 + retries + completedAfterRuns - endRuns);
  CHECK(info->fields.getOr<std::int64_t>("Rounds", -1) == completedAfterRuns);
  // The fields are the winners': Winner is what the newest completion sent.
  const Value* winner = info->fields.find("Winner");
  REQUIRE(winner != nullptr);
  if (winningToken) {
    CHECK(winner->as<std::int64_t>().value() == *winningToken);
  } else {
    CHECK(winner->isNull());
  }
  if (status == InstanceStatus::Completed) CHECK(endRuns == 1);
}

std::string describe(const std::map<std::string, int>& counts) {
  std::string out;
  for (const auto& [name, count] : counts) {
    if (!out.empty()) out += ", ";
    out += name + " " + std::to_string(count);
  }
  return out;
}

}  // namespace

TEST_CASE("torture: many threads end overlapping serials, and every step run ends exactly once") {
  const Backend backend = GENERATE(Backend::Sqlite, Backend::Memory);
  const std::size_t workers = GENERATE(std::size_t{0}, std::size_t{2});
  const char* storeName = backend == Backend::Sqlite ? "SqliteStore" : "MemoryStore";
  INFO(storeName << ", workers: " << workers);

  TempDir dir;
  std::shared_ptr<Store> store;
  if (backend == Backend::Sqlite) {
    SqliteOptions sqlite;
    sqlite.synchronous = Synchronous::Normal;  // group commit stays on (maxGroupSize 256)
    auto opened = SqliteStore::open(dir.file("torture.db"), sqlite);
    REQUIRE(opened);
    store = std::shared_ptr<Store>(std::move(*opened));
  } else {
    store = std::make_shared<MemoryStore>();
  }
  auto clock = std::make_shared<ManualClock>();
  EngineOptions options;
  options.workers = workers;
  options.clock = clock;
  options.random = std::make_shared<CountingRandom>();
  options.timerThread = false;  // the threads fire timers themselves, after moving the clock
  Serials serials;
  HandlerGate gate;
  std::vector<std::vector<Op>> results(kThreads);
  {
    Engine engine(store, options);
    REQUIRE(engine.define(torturedProcess(serials, gate)));
    std::vector<InstanceId> ids;
    for (int i = 0; i < kInstances; ++i) {
      auto id = engine.start("Torture", {});
      REQUIRE(id);
      ids.push_back(*id);
    }
    engine.waitIdle();
    for (InstanceId id : ids) REQUIRE(serials.count(id) == 1);

    Latch go;
    std::atomic<int> opsDone{0};
    gate.open(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        results[static_cast<std::size_t>(t)] =
            hammer(t, engine, *clock, serials, gate, ids, opsDone, go);
      });
    }
    go.countDown();
    for (auto& thread : threads) thread.join();
    engine.waitIdle();

    Wins wins;
    Tally tally;
    std::vector<std::string> undocumented;
    for (const auto& ops : results) {
      REQUIRE(ops.size() == static_cast<std::size_t>(kOpsPerThread));
      for (const Op& op : ops) {
        tally.calls[nameOf(op.kind)] += 1;
        if (op.error) {
          if (!isDocumentedLoss(op.kind, *op.error)) {
            undocumented.push_back(std::string(nameOf(op.kind)) + " got " +
                                   std::string(errcName(*op.error)));
          }
          tally.losses[std::string(errcName(*op.error))] += 1;
          continue;
        }
        tally.successes[nameOf(op.kind)] += 1;
        switch (op.kind) {
          case OpKind::Complete:
          case OpKind::Fail: wins.endings[op.serial].push_back(&op); break;
          case OpKind::Heartbeat: wins.heartbeats[op.serial] += 1; break;
          case OpKind::Cancel: wins.cancels[op.instance] += 1; break;
          case OpKind::Retry: wins.retries[op.instance] += 1; break;
          case OpKind::Tick: break;
        }
      }
    }
    CHECK(undocumented == std::vector<std::string>{});
    for (InstanceId id : ids) checkInstance(engine, *store, id, wins, tally);

    std::cout << "torture (" << storeName << ", " << workers << " workers): " << kThreads
              << " threads, " << kThreads * kOpsPerThread << " calls on " << kInstances
              << " instances: " << describe(tally.calls)
              << "; succeeded: " << describe(tally.successes)
              << "; lost with: " << describe(tally.losses)
              << "; step runs: " << describe(tally.runOutcomes)
              << "; instances: " << describe(tally.instanceOutcomes)
              << "; handlers held: " << gate.held()
              << "; early completions: " << tally.earlyCompletions << "\n";
    // The torture did torture. Only completions are asserted: which other
    // kinds of call win depends on the interleaving.
    CHECK(tally.successes["complete"] > 0);
    CHECK(gate.held() > 0);
  }
}
