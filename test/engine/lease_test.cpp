// Several hosts on one store (DESIGN.md section 8), as two Engines of one
// process on ONE MemoryStore object with one ManualClock: the lease a start
// writes, which host may run a handler, takeover of an expired lease (and the
// old owner's late commit that must not land), renewal of a long handler's
// lease, the hand-over of an orderly ~Engine, completion, failure and heartbeat
// on a host that does not define the version, the declaration a define() must
// match, and the clock skew between hosts. Leases are read from the store
// itself. Handlers that must still be running block on a latch on a worker;
// the timer thread, where one acts, is driven through the clock
// (ManualClock::awaitSleepers); nothing sleeps.
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "model/serial.hpp"
#include "support/catch.hpp"
#include "support/records.hpp"
#include "support/test_support.hpp"

using namespace asyncflow;
using namespace std::chrono_literals;
using asyncflow::testing::contains;
using asyncflow::testing::CountingRandom;
using asyncflow::testing::info;
using asyncflow::testing::Latch;

namespace {

using Sleeps = std::vector<std::optional<Timestamp>>;

// An instance's lease as the store holds it; the expiry as text ("none" for
// none), so that a failing check shows it.
struct Lease {
  std::string owner;
  std::string expiry;
  bool operator==(const Lease& o) const { return owner == o.owner && expiry == o.expiry; }
};

Lease leased(std::string owner, std::optional<Timestamp> expiry) {
  return Lease{std::move(owner), asyncflow::testing::detail::describe(expiry)};
}
const Lease kNoLease = leased("", std::nullopt);

// No Catch assertion: handlers call it on engine threads.
Lease leaseIn(Store& store, InstanceId id) {
  auto snapshot = store.loadInstance(id);
  if (!snapshot) return Lease{"<" + snapshot.error().toString() + ">", ""};
  return leased(snapshot->record.leaseOwner, snapshot->record.leaseExpiry);
}

// One handler run: on which host, of which step, with which attempt, and the
// lease the store held for the instance while it ran.
struct Ran {
  std::string host;
  std::string step;
  int attempt = 0;
  Lease lease;
  bool operator==(const Ran& o) const {
    return host == o.host && step == o.step && attempt == o.attempt && lease == o.lease;
  }
};

// Holds a handler inside once: it signals entered, then blocks until release().
class Hold {
 public:
  void enterAndWait() {
    entered_.countDown();
    released_.wait();
  }
  void awaitEntered() { entered_.wait(); }
  void release() { released_.countDown(); }

 private:
  Latch entered_;
  Latch released_;
};

// Releases `hold` when the scope ends, so that a failing check never leaves a
// worker blocked (and ~Engine waiting for it). Declare it after the engines.
class ReleaseAtEnd {
 public:
  explicit ReleaseAtEnd(Hold& hold) : hold_(hold) {}
  ~ReleaseAtEnd() { hold_.release(); }
  ReleaseAtEnd(const ReleaseAtEnd&) = delete;
  ReleaseAtEnd& operator=(const ReleaseAtEnd&) = delete;

 private:
  Hold& hold_;
};

// The hosts' shared store, clock and random source (so that owner ids differ),
// and the handler runs of every host.
struct Hosts {
  std::shared_ptr<MemoryStore> store = std::make_shared<MemoryStore>();
  std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>();
  std::shared_ptr<CountingRandom> random = std::make_shared<CountingRandom>();

  // 30 s leases; no change check (engines on one store object tell each other).
  EngineOptions options(std::size_t workers, bool timerThread) const {
    EngineOptions o;
    o.clock = clock;
    o.random = random;
    o.workers = workers;
    o.timerThread = timerThread;
    o.changeCheckInterval = std::chrono::milliseconds::zero();
    o.leaseDuration = 30s;
    return o;
  }

  void ran(Ran run) {
    std::lock_guard lock(mutex);
    runs.push_back(std::move(run));
    threads.push_back(std::this_thread::get_id());
  }
  std::vector<Ran> ranSoFar() {
    std::lock_guard lock(mutex);
    return runs;
  }
  // The thread of each run in ranSoFar().
  std::vector<std::thread::id> threadsSoFar() {
    std::lock_guard lock(mutex);
    return threads;
  }

  std::mutex mutex;
  std::vector<Ran> runs;
  std::vector<std::thread::id> threads;
};

// How a host defines Job version 1; a define() with anything but the defaults
// declares it differently.
struct Shape {
  Hold* hold = nullptr;  // Work blocks in it on its first run
  bool extraField = false;
  bool extraStep = false;
  std::chrono::minutes heartbeat = 10min;
};

// Job: Work (sync) -> Check (sync) -> Submit (async: 1 h timeout escalating to
// Esc, heartbeat, error line to Repair) -> Notify; Esc and Repair finish. Each
// handler records its run on `host`; Work sets By to the host.
Process job(Hosts& hosts, std::string host, Shape shape = {}) {
  auto record = [&hosts, host](StepContext& ctx) {
    hosts.ran(Ran{host, ctx.stepName(), ctx.attempt(), leaseIn(*hosts.store, ctx.instanceId())});
  };
  auto hold = std::make_shared<std::atomic<Hold*>>(shape.hold);
  auto finish = [record](StepContext& ctx) {
    record(ctx);
    return StepOutcome::finish();
  };
  Process p("Job", 1);
  p.field("By", Type::String, "").field("Status", Type::String, "");
  if (shape.extraField) p.field("Extra", Type::Int64, 0);
  p.step(Step("Work",
              [record, host, hold](StepContext& ctx) {
                record(ctx);
                ctx.fields().set("By", host);
                if (Hold* h = hold->exchange(nullptr)) h->enterAndWait();
                return StepOutcome::next();
              }))
      .step(Step("Check",
                 [record](StepContext& ctx) {
                   record(ctx);
                   return StepOutcome::next();
                 }))
      .step(AsyncStep("Submit",
                      [record](AsyncStepContext& ctx) {
                        record(ctx);
                        return StartOutcome::wait();
                      })
                .timeout(1h, "Esc")
                .heartbeat(shape.heartbeat)
                .onError("Repair"))
      .step(Step("Notify", finish))
      .step(Step("Esc", finish))
      .step(Step("Repair", finish))
      .line("Submit", "Notify");
  if (shape.extraStep) p.step(Step("Extra", finish));
  return p;
}

// Ping: one async step with a 30 min timeout and no heartbeat interval.
Process ping() {
  Process p("Ping", 1);
  p.step(AsyncStep("Wait", [](AsyncStepContext&) { return StartOutcome::wait(); }).timeout(30min));
  return p;
}

InstanceSnapshot stored(Hosts& hosts, InstanceId id) {
  return asyncflow::testing::load(*hosts.store, id);
}
StepRunRecord storedRun(Hosts& hosts, InstanceId id, std::int64_t run) {
  return asyncflow::testing::detail::loadRun(*hosts.store, id, run);
}

std::string byOf(const Engine& engine, InstanceId id) {
  return info(engine, id).fields.getOr<std::string>("By", "?");
}

// What the timers sleep towards, as text ("until woken" for none).
std::string describe(const Sleeps& sleeps) {
  std::string out;
  for (const auto& until : sleeps) {
    if (!out.empty()) out += ", ";
    out += until ? asyncflow::testing::detail::describe(*until) : std::string("until woken");
  }
  return "[" + out + "]";
}

std::string errorOf(const Result<void>& result) {
  return result ? std::string("ok") : result.error().toString();
}

}  // namespace

namespace Catch {
template <>
struct StringMaker<Lease> {
  static std::string convert(const Lease& l) {
    return "{owner '" + l.owner + "', expiry " + l.expiry + "}";
  }
};
template <>
struct StringMaker<Ran> {
  static std::string convert(const Ran& r) {
    return "{" + r.host + " " + r.step + " attempt " + std::to_string(r.attempt) + " under " +
           StringMaker<Lease>::convert(r.lease) + "}";
  }
};
}  // namespace Catch

TEST_CASE("a start writes this engine's lease, and a waiting or completed instance holds none") {
  Hosts h;
  Engine a(h.store, h.options(0, false));
  REQUIRE(a.define(job(h, "A")));
  const Timestamp t0 = h.clock->now();
  const Lease mine = leased(a.owner(), t0 + 30s);

  const InstanceId id = a.start("Job").value();
  // Written in the start's commit, before the first handler ran: no extra commit.
  CHECK(h.ranSoFar() == std::vector<Ran>{{"A", "Work", 1, mine},
                                         {"A", "Check", 1, mine},
                                         {"A", "Submit", 1, mine}});
  CHECK(info(a, id).status == InstanceStatus::Waiting);
  CHECK(leaseIn(*h.store, id) == kNoLease);

  h.clock->advance(1min);
  REQUIRE(a.completeServerEvent(info(a, id).serial));
  // The completion's commit leases the instance again for the step it schedules.
  CHECK(h.ranSoFar().back() == Ran{"A", "Notify", 1, leased(a.owner(), t0 + 1min + 30s)});
  CHECK(info(a, id).status == InstanceStatus::Completed);
  CHECK(leaseIn(*h.store, id) == kNoLease);
}

TEST_CASE("the owner id is the ownerName, a slash and 16 hex digits from the random source") {
  Hosts h;
  EngineOptions named = h.options(0, false);
  named.ownerName = "web-1";
  Engine a(h.store, named);
  CHECK(a.owner() == "web-1/0001020304050607");  // CountingRandom's first 8 bytes
  Engine b(h.store, h.options(0, false));
  CHECK(b.owner() == "08090a0b0c0d0e0f");  // no name: the digits alone

  REQUIRE(a.define(job(h, "A")));
  a.start("Job").value();
  CHECK(h.ranSoFar().at(0).lease.owner == "web-1/0001020304050607");
}

TEST_CASE(
    "another host leaves an instance under a live lease alone, takes it over with attempt 2 "
    "once it expired, and the old owner's late commit does not land") {
  bool byTimer = false;
  SECTION("by runDueTimers()") { byTimer = false; }
  SECTION("by its timer thread") { byTimer = true; }

  Hosts h;
  Hold hold;
  Engine a(h.store, h.options(1, false));  // stalls: no timer renews its lease
  Engine b(h.store, h.options(0, byTimer));
  ReleaseAtEnd releaseAtEnd(hold);
  REQUIRE(a.define(job(h, "A", Shape{&hold})));
  const Timestamp t0 = h.clock->now();
  const InstanceId id = a.start("Job").value();
  hold.awaitEntered();  // A's Work runs on A's worker, under A's lease
  const InstanceSnapshot before = stored(h, id);
  CHECK(leaseIn(*h.store, id) == leased(a.owner(), t0 + 30s));

  REQUIRE(b.define(job(h, "B")));                // recovers its instances: not this one
  CHECK(b.recover().value() == 1);               // looked at, left alone
  CHECK(stored(h, id).record == before.record);  // not even a lease written
  CHECK(h.ranSoFar().size() == 1);

  if (byTimer) {
    h.clock->awaitSleepers();
    // The expiry, nothing earlier.
    CHECK(describe(h.clock->sleepingUntil()) == describe(Sleeps{t0 + 30s}));
    h.clock->advance(30s);
    h.clock->awaitSleepers();
  } else {
    h.clock->advance(30s - 1us);
    CHECK(b.runDueTimers().value() == 0);
    CHECK(h.ranSoFar().size() == 1);       // still live
    h.clock->advance(1us);                 // an expiry equal to now has passed
    CHECK(b.runDueTimers().value() == 0);  // no deadline fired; the lease was taken over
  }
  const Lease bs = leased(b.owner(), t0 + 60s);
  CHECK(h.ranSoFar() == std::vector<Ran>{{"A", "Work", 1, leased(a.owner(), t0 + 30s)},
                                         {"B", "Work", 2, bs},
                                         {"B", "Check", 1, bs},
                                         {"B", "Submit", 1, bs}});
  CHECK(storedRun(h, id, 1).attempt == 2);

  hold.release();  // A's handler returns after B took over: its commit is refused
  a.waitIdle();
  CHECK(h.ranSoFar().size() == 4);  // A ran nothing more
  const InstanceInfo now = info(a, id);
  CHECK(now.status == InstanceStatus::Waiting);
  CHECK(now.currentStep == "Submit");
  CHECK(byOf(a, id) == "B");
  CHECK(storedRun(h, id, 1).status == StepRunStatus::Completed);
  CHECK(storedRun(h, id, 1).attempt == 2);
  CHECK(now.currentRun == 3);  // Work, Check, Submit: no run of A's decision
}

TEST_CASE(
    "a handler running longer than a third of the lease has it renewed, so another host "
    "does not take over at the first expiry") {
  Hosts h;
  Hold hold;
  Engine a(h.store, h.options(1, true));
  Engine b(h.store, h.options(0, false));
  ReleaseAtEnd releaseAtEnd(hold);
  REQUIRE(a.define(job(h, "A", Shape{&hold})));
  REQUIRE(b.define(job(h, "B")));
  const Timestamp t0 = h.clock->now();
  const InstanceId id = a.start("Job").value();
  hold.awaitEntered();
  h.clock->awaitSleepers();
  // The renewal sweep, a third in.
  CHECK(describe(h.clock->sleepingUntil()) == describe(Sleeps{t0 + 10s}));
  CHECK(leaseIn(*h.store, id) == leased(a.owner(), t0 + 30s));

  h.clock->advance(10s + 1ms);
  h.clock->awaitSleepers();
  CHECK(leaseIn(*h.store, id) == leased(a.owner(), t0 + 10s + 1ms + 30s));
  // The next sweep.
  CHECK(describe(h.clock->sleepingUntil()) == describe(Sleeps{t0 + 20s + 1ms}));

  h.clock->advance(20s - 1ms);  // the first expiry; the sweep due since t0 + 20 s runs now
  h.clock->awaitSleepers();
  CHECK(leaseIn(*h.store, id) == leased(a.owner(), t0 + 60s));
  CHECK(b.runDueTimers().value() == 0);
  CHECK(b.recover().value() == 1);
  CHECK(h.ranSoFar().size() == 1);  // B ran nothing

  hold.release();
  a.waitIdle();
  h.clock->awaitSleepers();
  const Lease as = leased(a.owner(), t0 + 60s);
  CHECK(h.ranSoFar() == std::vector<Ran>{{"A", "Work", 1, leased(a.owner(), t0 + 30s)},
                                         {"A", "Check", 1, as},
                                         {"A", "Submit", 1, as}});
  CHECK(info(a, id).status == InstanceStatus::Waiting);
  CHECK(byOf(a, id) == "A");  // the renewals did not cost the handler its commit
}

namespace {

// A ManualClock whose alarms say when they are woken, once armed: ~Engine
// wakes its timer's alarm to stop it right after it told its drives to stop,
// so the first wake after arm() (with nothing else going on) means "stopping".
class WatchedClock final : public Clock {
 public:
  explicit WatchedClock(std::shared_ptr<ManualClock> inner) : inner_(std::move(inner)) {}
  Timestamp now() override { return inner_->now(); }
  std::unique_ptr<Alarm> newAlarm() override {
    return std::make_unique<WatchedAlarm>(inner_->newAlarm(), *this);
  }
  void arm() { armed_ = true; }
  void awaitWoken() { woken_.wait(); }

 private:
  class WatchedAlarm final : public Alarm {
   public:
    WatchedAlarm(std::unique_ptr<Alarm> inner, WatchedClock& clock)
        : inner_(std::move(inner)), clock_(clock) {}
    void sleepUntil(std::optional<Timestamp> deadline) override { inner_->sleepUntil(deadline); }
    void wake() override {
      if (clock_.armed_.exchange(false)) clock_.woken_.countDown();
      inner_->wake();
    }

   private:
    std::unique_ptr<Alarm> inner_;
    WatchedClock& clock_;
  };

  std::shared_ptr<ManualClock> inner_;
  std::atomic<bool> armed_{false};
  Latch woken_;
};

}  // namespace

TEST_CASE(
    "an orderly ~Engine offers the instance it was about to drive, and another host takes it "
    "with the attempt unchanged") {
  Hosts h;
  Hold hold;
  auto watched = std::make_shared<WatchedClock>(h.clock);
  EngineOptions stopping = h.options(1, true);
  stopping.clock = watched;
  auto a = std::make_unique<Engine>(h.store, stopping);
  Engine b(h.store, h.options(0, false));
  ReleaseAtEnd releaseAtEnd(hold);
  REQUIRE(a->define(job(h, "A", Shape{&hold})));
  REQUIRE(b.define(job(h, "B")));
  const Timestamp t0 = h.clock->now();
  const std::string aOwner = a->owner();
  const InstanceId id = a->start("Job").value();
  hold.awaitEntered();

  watched->arm();
  std::thread destroyer([&] { a.reset(); });
  watched->awaitWoken();  // ~Engine has told the drives to stop
  hold.release();         // Work returns; its decision commits; Check is next
  destroyer.join();

  // Offered: no owner, expired at once.
  CHECK(leaseIn(*h.store, id) == leased("", t0));
  const InstanceSnapshot left = stored(h, id);
  CHECK(left.record.status == InstanceStatus::Running);
  const StepRunRecord next = storedRun(h, id, left.record.currentRun);
  CHECK(next.step == "Check");
  CHECK(next.status == StepRunStatus::Starting);
  CHECK(h.ranSoFar().size() == 1);  // A did not begin it

  REQUIRE(b.recover());
  const Lease bs = leased(b.owner(), t0 + 30s);
  CHECK(h.ranSoFar() == std::vector<Ran>{{"A", "Work", 1, leased(aOwner, t0 + 30s)},
                                         {"B", "Check", 1, bs},
                                         {"B", "Submit", 1, bs}});
  CHECK(info(b, id).status == InstanceStatus::Waiting);
  CHECK(byOf(b, id) == "A");  // A's Work committed before it let go
}

TEST_CASE(
    "a host without the version completes a waiting step: checked against the declaration, "
    "recorded, and offered to a host that defines it") {
  Hosts h;
  Engine a(h.store, h.options(0, false));
  Engine b(h.store, h.options(0, false));  // defines nothing
  REQUIRE(a.define(job(h, "A")));
  const Timestamp t0 = h.clock->now();
  const InstanceId id = a.start("Job").value();
  const std::string serial = info(a, id).serial;
  const std::int64_t runId = info(a, id).currentRun;
  REQUIRE(storedRun(h, id, runId).deadline == t0 + 1h);
  const std::uint64_t version = stored(h, id).record.version;

  SECTION("undeclared and wrongly typed fields are InvalidField, and change nothing") {
    auto undeclared = b.completeServerEvent(serial, {{"Nope", 1}});
    REQUIRE(hasCode(undeclared, Errc::InvalidField));
    CHECK(contains(undeclared.error().message, "Nope"));
    auto wrongType = b.completeServerEvent(serial, {{"Status", 5}});
    REQUIRE(hasCode(wrongType, Errc::InvalidField));
    CHECK(contains(wrongType.error().message, "Status"));
    auto failing = b.failServerEvent(serial, "no", {{"Nope", 1}});
    CHECK(hasCode(failing, Errc::InvalidField));
    CHECK(stored(h, id).record.version == version);
    CHECK(info(a, id).status == InstanceStatus::Waiting);
  }

  SECTION("a valid completion") {
    h.clock->advance(1min);
    REQUIRE(b.completeServerEvent(serial, {{"Status", "Approved"}}));
    const InstanceSnapshot after = stored(h, id);
    CHECK(after.record.status == InstanceStatus::Running);
    CHECK(leaseIn(*h.store, id) == leased("", t0 + 1min));  // offered
    const StepRunRecord run = storedRun(h, id, runId);
    CHECK(run.status == StepRunStatus::Waiting);
    CHECK(run.hasCompletion);
    CHECK(run.completion == Fields{{"Status", "Approved"}});
    CHECK_FALSE(run.deadline.has_value());
    CHECK(after.fields.getOr<std::string>("Status", "?") == "");  // applied when closed
    const auto history = asyncflow::testing::detail::loadHistory(*h.store, id);
    REQUIRE_FALSE(history.empty());
    CHECK(history.back().kind == HistoryKind::CompletionRecorded);

    // No longer listed, no longer completable, no longer due.
    CHECK(b.waiting().value().steps.empty());
    CHECK(a.waiting().value().steps.empty());
    CHECK(hasCode(b.completeServerEvent(serial), Errc::AlreadyCompleted));
    CHECK(hasCode(a.completeServerEvent(serial), Errc::AlreadyCompleted));
    CHECK(hasCode(b.failServerEvent(serial, "late"), Errc::AlreadyCompleted));
    CHECK_FALSE(asyncflow::testing::detail::nextDeadline(*h.store).has_value());
    h.clock->advance(2h);
    CHECK(asyncflow::testing::detail::listDue(*h.store, h.clock->now(), 10).empty());
    CHECK(h.ranSoFar().size() == 3);  // B ran nothing, nor could it

    // The host that defines it closes the run with the completion and moves on.
    CHECK(a.runDueTimers().value() == 0);  // no deadline fired
    CHECK(h.ranSoFar().back().step == "Notify");
    CHECK(info(a, id).status == InstanceStatus::Completed);
    CHECK(info(a, id).fields.getOr<std::string>("Status", "?") == "Approved");
    CHECK(storedRun(h, id, runId).status == StepRunStatus::Completed);
    for (const Ran& run : h.ranSoFar()) CHECK(run.step != "Esc");
  }

  SECTION("a failure is recorded likewise, and applied as a failure by the defining host") {
    REQUIRE(b.failServerEvent(serial, "credit refused", {{"Status", "Refused"}}));
    CHECK(stored(h, id).record.status == InstanceStatus::Running);
    CHECK(leaseIn(*h.store, id) == leased("", t0));
    const StepRunRecord run = storedRun(h, id, runId);
    CHECK(run.status == StepRunStatus::Waiting);
    CHECK(run.hasCompletion);
    CHECK(run.error == "credit refused");
    CHECK_FALSE(run.deadline.has_value());
    CHECK(hasCode(b.completeServerEvent(serial), Errc::AlreadyCompleted));

    REQUIRE(a.recover());
    CHECK(storedRun(h, id, runId).status == StepRunStatus::Failed);
    CHECK(storedRun(h, id, runId).error == "credit refused");
    CHECK(h.ranSoFar().back().step == "Repair");  // the error line
    CHECK(info(a, id).status == InstanceStatus::Completed);
    CHECK(info(a, id).fields.getOr<std::string>("Status", "?") == "Refused");
  }

  SECTION("a heartbeat moves the deadline by the declared interval") {
    h.clock->advance(5min);
    REQUIRE(b.heartbeat(serial));
    CHECK(storedRun(h, id, runId).deadline == t0 + 5min + 10min);  // Submit's heartbeat()
    CHECK(stored(h, id).record.status == InstanceStatus::Waiting);
    CHECK(leaseIn(*h.store, id) == kNoLease);

    REQUIRE(a.define(ping()));  // no heartbeat interval: the timeout
    const InstanceId pinged = a.start("Ping").value();
    h.clock->advance(1min);
    REQUIRE(b.heartbeat(info(a, pinged).serial));
    CHECK(storedRun(h, pinged, 1).deadline == t0 + 6min + 30min);
  }
}

TEST_CASE(
    "the defining host's timer takes an offered instance at once when both engines share "
    "the store object") {
  Hosts h;
  Engine a(h.store, h.options(0, true));
  Engine b(h.store, h.options(0, false));  // defines nothing
  REQUIRE(a.define(job(h, "A")));
  const Timestamp t0 = h.clock->now();
  const InstanceId id = a.start("Job").value();
  h.clock->awaitSleepers();
  REQUIRE(info(a, id).status == InstanceStatus::Waiting);

  REQUIRE(b.completeServerEvent(info(b, id).serial, {{"Status", "Approved"}}));
  h.clock->awaitSleepers();  // B told A's timer: no change check, no clock move
  CHECK(h.clock->now() == t0);
  CHECK(info(a, id).status == InstanceStatus::Completed);
  CHECK(h.ranSoFar().back() == Ran{"A", "Notify", 1, leased(a.owner(), t0 + 30s)});
}

TEST_CASE(
    "define() in inline mode moves an offered instance on before it returns, on the caller's "
    "thread, though its timer thread runs") {
  // The report: run 3 of external_batch printed the instance still Running.
  // define() told its timer of the new version before it recovered: the timer
  // thread took the offered instance, define()'s own drive found it taken and
  // returned, and the host exited before the next step ran.
  Hosts h;
  {
    Engine a(h.store, h.options(0, false));
    REQUIRE(a.define(job(h, "A")));
    const InstanceId id = a.start("Job").value();
    Engine b(h.store, h.options(0, false));  // defines nothing
    REQUIRE(b.completeServerEvent(info(b, id).serial, {{"Status", "Approved"}}));
    REQUIRE(info(b, id).status == InstanceStatus::Running);
  }
  const InstanceId id = 1;
  const std::size_t before = h.ranSoFar().size();
  Engine c(h.store, h.options(0, true));
  h.clock->awaitSleepers();  // its timer saw the offer, of a version not defined here
  REQUIRE(c.define(job(h, "C")));
  CHECK(info(c, id).status == InstanceStatus::Completed);
  const std::vector<Ran> runs = h.ranSoFar();
  REQUIRE(runs.size() == before + 1);
  CHECK(runs.back().host == "C");
  CHECK(runs.back().step == "Notify");
  CHECK(h.threadsSoFar().back() == std::this_thread::get_id());
}

TEST_CASE(
    "on another Store object of the same store, the change check finds the offered instance "
    "within its interval") {
  Hosts h;
  EngineOptions checking = h.options(0, true);
  checking.changeCheckInterval = 250ms;
  Engine a(h.store, checking);
  Engine b(std::make_shared<StoreWrapper>(h.store), h.options(0, false));  // not a peer of A
  REQUIRE(a.define(job(h, "A")));
  const Timestamp t0 = h.clock->now();
  const InstanceId id = a.start("Job").value();
  h.clock->awaitSleepers();
  CHECK(describe(h.clock->sleepingUntil()) == describe(Sleeps{t0 + 250ms}));

  REQUIRE(b.completeServerEvent(info(b, id).serial));
  h.clock->awaitSleepers();
  CHECK(info(a, id).status == InstanceStatus::Running);  // not told: offered, waiting
  h.clock->advance(250ms);
  h.clock->awaitSleepers();
  CHECK(info(a, id).status == InstanceStatus::Completed);
}

TEST_CASE(
    "define() of a version declared with other fields or steps is InvalidProcess naming "
    "both, and defines nothing") {
  Hosts h;
  Engine a(h.store, h.options(0, false));
  Engine b(h.store, h.options(0, false));
  REQUIRE(a.define(job(h, "A")));
  const std::string stored =
      "fields [By:String, Status:String], steps [Check:Sync, Esc:Sync, Notify:Sync, Repair:Sync, "
      "Submit:Async/600000000us, Work:Sync]";

  std::string mine;
  Shape shape;
  SECTION("another field") {
    shape.extraField = true;
    mine =
        "fields [By:String, Extra:Int64, Status:String], steps [Check:Sync, Esc:Sync, "
        "Notify:Sync, Repair:Sync, Submit:Async/600000000us, Work:Sync]";
  }
  SECTION("another step") {
    shape.extraStep = true;
    mine =
        "fields [By:String, Status:String], steps [Check:Sync, Esc:Sync, Extra:Sync, Notify:Sync, "
        "Repair:Sync, Submit:Async/600000000us, Work:Sync]";
  }
  SECTION("another heartbeat interval") {
    shape.heartbeat = 5min;
    mine =
        "fields [By:String, Status:String], steps [Check:Sync, Esc:Sync, Notify:Sync, "
        "Repair:Sync, Submit:Async/300000000us, Work:Sync]";
  }
  auto refused = b.define(job(h, "B", shape));
  REQUIRE(hasCode(refused, Errc::InvalidProcess));
  INFO(refused.error().message);
  CHECK(contains(refused.error().message, "'Job' version 1"));
  CHECK(contains(refused.error().message, "declared in the store with " + stored));
  CHECK(contains(refused.error().message, "this definition has " + mine));
  CHECK(hasCode(b.start("Job"), Errc::NotFound));  // nothing registered
  // The same declaration is accepted on any host.
  CHECK(errorOf(b.define(job(h, "B"))) == "ok");
  CHECK(b.start("Job").has_value());
}

TEST_CASE("a completion of a version no host ever defined is ProcessNotDefined") {
  Hosts h;
  Engine b(h.store, h.options(0, false));
  StepRunRecord waiting = asyncflow::testing::stepRun(1, "Submit", StepRunStatus::Waiting);
  waiting.secret = "AAAAAAAAAAAAAAAAAAAAAA";
  const InstanceId id = asyncflow::testing::create(
      *h.store, asyncflow::testing::creationWith("Ghost", 1, InstanceStatus::Waiting, {waiting}));
  const std::string serial = detail::formatSerial(id, 1, waiting.secret);
  const std::uint64_t version = stored(h, id).record.version;

  auto completed = b.completeServerEvent(serial);
  REQUIRE(hasCode(completed, Errc::ProcessNotDefined));
  CHECK(contains(completed.error().message, "'Ghost' version 1"));
  CHECK(hasCode(b.failServerEvent(serial, "no"), Errc::ProcessNotDefined));
  CHECK(hasCode(b.heartbeat(serial), Errc::ProcessNotDefined));
  CHECK(stored(h, id).record.version == version);
}

TEST_CASE("with maxClockSkew another host's lease counts as live until its expiry plus the skew") {
  Hosts h;
  Hold hold;
  Engine a(h.store, h.options(1, false));
  EngineOptions skewed = h.options(0, false);
  skewed.maxClockSkew = 5s;
  Engine b(h.store, skewed);
  ReleaseAtEnd releaseAtEnd(hold);
  REQUIRE(a.define(job(h, "A", Shape{&hold})));
  const Timestamp t0 = h.clock->now();
  const InstanceId id = a.start("Job").value();
  hold.awaitEntered();
  REQUIRE(b.define(job(h, "B")));

  h.clock->advance(30s);  // expired by A's clock, live by B's
  CHECK(b.runDueTimers().value() == 0);
  CHECK(b.recover().value() == 1);
  h.clock->advance(5s - 1us);
  CHECK(b.runDueTimers().value() == 0);
  CHECK(h.ranSoFar().size() == 1);
  h.clock->advance(1us);
  CHECK(b.runDueTimers().value() == 0);
  REQUIRE(h.ranSoFar().size() >= 2);
  CHECK(h.ranSoFar().at(1) == Ran{"B", "Work", 2, leased(b.owner(), t0 + 35s + 30s)});

  hold.release();
  a.waitIdle();
  CHECK(byOf(a, id) == "B");
}

// The timer's first reload asks for leases after Timestamp::min(): with a
// skew, subtracting it once wrapped around to near Timestamp::max(), so the
// timer never loaded an expiry and never took a lease over.
TEST_CASE(
    "with maxClockSkew the timer sleeps until another host's lease expiry plus the skew, "
    "then takes it over") {
  Hosts h;
  Hold hold;
  Engine a(h.store, h.options(1, false));
  EngineOptions skewed = h.options(0, true);
  skewed.maxClockSkew = 5s;
  Engine b(h.store, skewed);
  ReleaseAtEnd releaseAtEnd(hold);
  REQUIRE(a.define(job(h, "A", Shape{&hold})));
  const Timestamp t0 = h.clock->now();
  a.start("Job").value();
  hold.awaitEntered();
  REQUIRE(b.define(job(h, "B")));  // its timer reloads: A's lease is there to find

  h.clock->awaitSleepers();
  CHECK(describe(h.clock->sleepingUntil()) == describe(Sleeps{t0 + 35s}));
  h.clock->advance(30s);
  h.clock->awaitSleepers();
  CHECK(h.ranSoFar().size() == 1);  // live by B's clock
  h.clock->advance(5s);
  h.clock->awaitSleepers();
  REQUIRE(h.ranSoFar().size() >= 2);
  CHECK(h.ranSoFar().at(1) == Ran{"B", "Work", 2, leased(b.owner(), t0 + 35s + 30s)});
}

// Two listings queue drives of one instance (recover() and the timer's
// takeover of its expired lease); the first to run takes it over and leaves
// it mid-process (it yields after each step). A later drive from a listing
// finds this engine's own lease: the engine took it since, nothing crashed,
// so no step re-runs with a new attempt. (They once did: a stale recovery
// request bumped the attempt of whatever step the instance had reached.) And
// the timer, listing the same expired lease again while its drive waits for
// the worker, queues no second drive.
TEST_CASE(
    "drives queued by listings run an instance this engine took over since without a new "
    "attempt, and a lease listed twice is queued once") {
  Hosts h;
  Hold holdA;
  Hold holdB;
  Engine a(h.store, h.options(1, false));  // stalls in Work: its lease expires
  EngineOptions yielding = h.options(1, false);
  yielding.maxStepsPerDrive = 1;
  Engine b(h.store, yielding);
  ReleaseAtEnd releaseA(holdA);
  ReleaseAtEnd releaseB(holdB);
  REQUIRE(a.define(job(h, "A", Shape{&holdA})));
  const InstanceId id = a.start("Job").value();
  holdA.awaitEntered();
  REQUIRE(b.define(job(h, "B", Shape{&holdB})));  // A's lease is live: left alone
  b.waitIdle();
  const InstanceId other = b.start("Job").value();
  holdB.awaitEntered();  // B's only worker is busy with its own instance

  h.clock->advance(30s);            // A's lease expired
  CHECK(b.recover().value() == 2);  // both listed: a drive of each queued
  CHECK(b.runDueTimers().value() == 0);
  CHECK(b.stats().queuedContinuations == 3);  // and a takeover drive of A's
  CHECK(b.runDueTimers().value() == 0);       // A's listed again ...
  CHECK(b.stats().queuedContinuations == 3);  // ... and not queued again

  holdB.release();
  b.waitIdle();
  for (InstanceId each : {id, other}) {
    INFO("instance " << each);
    CHECK(info(b, each).status == InstanceStatus::Waiting);
    CHECK(info(b, each).currentStep == "Submit");
    CHECK(storedRun(h, each, 1).attempt == (each == id ? 2 : 1));  // Work: taken over
    CHECK(storedRun(h, each, 2).attempt == 1);                     // Check
    CHECK(storedRun(h, each, 3).attempt == 1);                     // Submit
  }
  std::vector<std::string> reruns;
  for (const Ran& r : h.ranSoFar()) {
    if (r.attempt != 1) reruns.push_back(r.host + " " + r.step + " " + std::to_string(r.attempt));
  }
  CHECK(reruns == std::vector<std::string>{"B Work 2"});
  CHECK(h.ranSoFar().size() == 7);  // A's Work; B's Work, Check, Submit of each

  holdA.release();
  a.waitIdle();
  CHECK(byOf(a, id) == "B");  // A's late commit did not land
}
