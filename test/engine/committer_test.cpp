// Pins Committer and retryOnConflict (src/engine/committer.hpp): what reaches
// the store, who hears of an applied set and who does not, and the one
// conflict loop of the engine.
#include "engine/committer.hpp"

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "asyncflow/memory_store.hpp"
#include "asyncflow/testing/fault_injection.hpp"
#include "support/catch.hpp"
#include "support/test_support.hpp"

using namespace asyncflow;
using asyncflow::detail::Attempt;
using asyncflow::detail::Committer;
using asyncflow::detail::Done;
using asyncflow::detail::kLostRace;
using asyncflow::detail::kMaxWriteRetries;
using asyncflow::detail::retryOnConflict;
using asyncflow::testing::contains;

namespace {

const Timestamp kT0 = Timestamp(std::chrono::seconds(1'700'000'000));

class Heard final : public Listener {
 public:
  void onEvent(const HistoryEvent& event) override {
    events.push_back(event);
    if (throws) throw std::runtime_error("listener down");
  }
  std::vector<HistoryEvent> events;
  bool throws = false;
};

ChangeSet creation(std::optional<Timestamp> deadline) {
  ChangeSet set;
  set.instance.process = "Order";
  set.instance.processVersion = 1;
  set.instance.status = InstanceStatus::Waiting;
  set.instance.currentRun = 1;
  set.instance.lastRun = 1;
  set.instance.createdAt = kT0;
  set.instance.updatedAt = kT0;
  StepRunRecord run;
  run.run = 1;
  run.step = "Approve";
  run.kind = StepKind::Async;
  run.status = StepRunStatus::Waiting;
  run.attempt = 1;
  run.createdAt = kT0;
  run.deadline = deadline;
  set.stepRuns.push_back(run);
  HistoryEvent waiting;
  waiting.at = kT0;
  waiting.kind = HistoryKind::Waiting;
  waiting.run = 1;
  waiting.step = "Approve";
  set.history.push_back(waiting);
  return set;
}

}  // namespace

TEST_CASE("an applied set reaches the listener, the log and the timer, with its instance id") {
  MemoryStore store;
  auto heard = std::make_shared<Heard>();
  std::vector<std::string> lines;
  std::vector<Timestamp> deadlines;
  Committer committer(
      store, heard, [&](LogLevel, std::string_view line) { lines.emplace_back(line); },
      [&](Timestamp d) { deadlines.push_back(d); });
  auto applied = committer.commit(creation(kT0 + std::chrono::hours(1)));
  REQUIRE(applied.has_value());
  CHECK(applied->status == ApplyStatus::Applied);
  CHECK(applied->instance == 1);
  REQUIRE(heard->events.size() == 1);
  CHECK(heard->events[0].instance == 1);
  CHECK(heard->events[0].kind == HistoryKind::Waiting);
  CHECK(lines == std::vector<std::string>{"instance 1: Waiting 'Approve'"});
  CHECK(deadlines == std::vector<Timestamp>{kT0 + std::chrono::hours(1)});
  CHECK(store.loadInstance(1).has_value());
}

TEST_CASE("a conflict writes nothing and tells nobody") {
  MemoryStore store;
  auto heard = std::make_shared<Heard>();
  int deadlines = 0;
  Committer committer(store, heard, {}, [&](Timestamp) { ++deadlines; });
  REQUIRE(committer.commit(creation(std::nullopt)));
  heard->events.clear();
  ChangeSet stale = creation(kT0);
  stale.instance.id = 1;
  stale.expectedVersion = 7;  // the stored version is 1
  auto applied = committer.commit(stale);
  REQUIRE(applied.has_value());
  CHECK(applied->status == ApplyStatus::Conflict);
  CHECK(heard->events.empty());
  CHECK(deadlines == 0);
  CHECK(store.loadInstance(1)->record.version == 1);
}

TEST_CASE(
    "a store error is returned and logged at Warning, and a throwing listener changes nothing") {
  auto memory = std::make_shared<MemoryStore>();
  asyncflow::testing::FaultInjectingStore faults(memory);
  auto heard = std::make_shared<Heard>();
  std::vector<std::pair<LogLevel, std::string>> lines;
  Committer committer(
      faults, heard,
      [&](LogLevel level, std::string_view line) { lines.emplace_back(level, line); }, {});
  faults.failNth(1, asyncflow::testing::Fault::DiskFull);
  auto failed = committer.commit(creation(std::nullopt));
  REQUIRE_FALSE(failed.has_value());
  CHECK(failed.error().code == Errc::StoreError);
  REQUIRE(lines.size() == 1);
  CHECK(lines[0].first == LogLevel::Warning);
  CHECK(contains(lines[0].second, "database or disk is full"));
  CHECK(heard->events.empty());

  heard->throws = true;
  auto applied = committer.commit(creation(std::nullopt));  // durable despite the listener
  REQUIRE(applied.has_value());
  CHECK(applied->status == ApplyStatus::Applied);
  CHECK(memory->loadInstance(applied->instance).has_value());
}

TEST_CASE("retryOnConflict retries lost races, stops at a value or an error, and bounds the loop") {
  int tries = 0;
  auto value = retryOnConflict(detail::Subject{5}, [&]() -> Attempt<int> {
    if (++tries < 3) return kLostRace;
    return std::optional<int>(42);
  });
  REQUIRE(value.has_value());
  CHECK(*value == 42);
  CHECK(tries == 3);

  tries = 0;
  Result<void> refused = retryOnConflict(detail::Subject{5}, [&]() -> Attempt<Done> {
    ++tries;
    return fail(Errc::Cancelled, "instance 5 was cancelled");
  });
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().code == Errc::Cancelled);
  CHECK(tries == 1);

  tries = 0;
  Result<void> done = retryOnConflict(detail::Subject{5}, [&]() -> Attempt<Done> {
    ++tries;
    return Done{};
  });
  CHECK(done.has_value());

  tries = 0;
  Result<void> busy = retryOnConflict(detail::Subject{5, 2}, [&]() -> Attempt<Done> {
    ++tries;
    return kLostRace;
  });
  REQUIRE_FALSE(busy.has_value());
  CHECK(busy.error().code == Errc::Conflict);
  CHECK(busy.error().message == "step run 5_2 kept changing under this call; retry");
  CHECK(tries == kMaxWriteRetries);
}
