// Engine::startOnce: at most one instance per (process, idempotency key), across
// repeats, a newer version, a restart on the same SQLite file, and engines that
// share one file and race. A repeat reports the first instance and runs nothing;
// other fields are KeyReused; every error writes nothing. Races are made
// deterministic with a latch between the key's look-up and the create.
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include <asyncflow/testing/fault_injection.hpp>

#include "model/start_key.hpp"
#include "support/catch.hpp"
#include "support/test_support.hpp"

using namespace asyncflow;
using asyncflow::testing::contains;
using asyncflow::testing::errorOf;
using asyncflow::testing::Fault;
using asyncflow::testing::FaultInjectingStore;
using asyncflow::testing::FaultScope;
using asyncflow::testing::Harness;
using asyncflow::testing::info;
using asyncflow::testing::Latch;
using asyncflow::testing::StoreCall;
using asyncflow::testing::TempDir;

namespace {

// Order: Validate (sync) -> Submit (async, waits) -> Notify (sync). Counts the
// handlers' runs; thread-safe, for the races.
struct OrderFlow {
  std::mutex mutex;
  std::vector<std::string> ran;  // step names, in order

  void note(const char* step) {
    std::lock_guard lock(mutex);
    ran.push_back(step);
  }
  std::vector<std::string> steps() {
    std::lock_guard lock(mutex);
    return ran;
  }

  Process process(int version = 1) {
    Process p("Order", version);
    p.field("OrderId", Type::String)
        .field("Amount", Type::Double, 0.0)
        .field("Count", Type::Int64, 0)
        .step(Step("Validate",
                   [this](StepContext&) {
                     note("Validate");
                     return StepOutcome::next();
                   }))
        .step(AsyncStep("Submit",
                        [this](AsyncStepContext&) {
                          note("Submit");
                          return StartOutcome::wait();
                        }))
        .step(Step("Notify", [this](StepContext&) {
          note("Notify");
          return StepOutcome::next();
        }));
    return p;
  }
};

const std::vector<std::string> kFirstLeg = {"Validate", "Submit"};

// A store whose first `racers` findStartKey calls each wait, after reading,
// until all of them have read: every racer then finds the key free and tries
// to create. Later calls pass straight through.
class LookUpTogether final : public StoreWrapper {
 public:
  LookUpTogether(std::shared_ptr<Store> target, std::shared_ptr<Latch> allRead,
                 std::shared_ptr<std::atomic<int>> gated)
      : StoreWrapper(std::move(target)), allRead_(std::move(allRead)), gated_(std::move(gated)) {}

  Result<std::optional<StartKeyRecord>> findStartKey(std::string_view process,
                                                     std::string_view key) override {
    auto found = StoreWrapper::findStartKey(process, key);
    if (gated_->fetch_sub(1) > 0) {
      allRead_->countDown();
      allRead_->wait();
    }
    return found;
  }

 private:
  std::shared_ptr<Latch> allRead_;
  std::shared_ptr<std::atomic<int>> gated_;
};

// The number of instances in the store: ids are assigned from 1 without gaps.
InstanceId instanceCount(Store& store) {
  InstanceId count = 0;
  while (store.loadInstance(count + 1)) ++count;
  return count;
}

}  // namespace

TEST_CASE("startOnce starts like start, and a repeat reports the instance and runs nothing") {
  Harness h;
  OrderFlow flow;
  Engine engine(h.store, h.options());
  REQUIRE(engine.define(flow.process(1)));

  auto first = engine.startOnce("Order", "order-A-17", {{"OrderId", "A-17"}, {"Count", 2}});
  REQUIRE(first);
  CHECK(first->created);
  CHECK(first->id == 1);
  CHECK(first->process == "Order");
  CHECK(first->processVersion == 1);
  CHECK(flow.steps() == kFirstLeg);
  const InstanceInfo waiting = info(engine, first->id);
  CHECK(waiting.status == InstanceStatus::Waiting);
  CHECK(waiting.currentStep == "Submit");
  CHECK(waiting.currentRun == 2);
  CHECK(contains(waiting.serial, "1_2_"));
  // The declared defaults overlaid by the fields, as start() does.
  CHECK(waiting.fields == Fields{{"OrderId", "A-17"}, {"Amount", 0.0}, {"Count", 2}});
  const auto history = engine.history(first->id).value();
  std::vector<std::string> ran = kFirstLeg;

  SECTION("a repeat, also after a newer version is defined") {
    const int newer = GENERATE(0, 2);
    if (newer != 0) REQUIRE(engine.define(flow.process(newer)));
    auto again = engine.startOnce("Order", "order-A-17", {{"OrderId", "A-17"}, {"Count", 2}});
    REQUIRE(again);
    CHECK_FALSE(again->created);
    CHECK(again->id == first->id);
    CHECK(again->process == "Order");
    CHECK(again->processVersion == 1);  // the first start's, not the newest
  }
  SECTION("a repeat after the instance moved on") {
    REQUIRE(engine.completeServerEvent(waiting.serial, {}));
    CHECK(info(engine, first->id).status == InstanceStatus::Completed);
    CHECK(info(engine, first->id).currentRun == 3);
    auto again = engine.startOnce("Order", "order-A-17", {{"OrderId", "A-17"}, {"Count", 2}});
    REQUIRE(again);
    CHECK_FALSE(again->created);
    CHECK(again->id == first->id);
    ran.push_back("Notify");  // run by the completion
  }

  // Nothing ran again and nothing was written by the repeat.
  CHECK(flow.steps() == ran);
  CHECK(instanceCount(*h.store) == 1);
  const auto after = engine.history(first->id).value();
  CHECK(std::vector<HistoryEvent>(after.begin(), after.begin() + history.size()) == history);
  // Another key, or start(), makes another instance.
  auto other = engine.startOnce("Order", "order-A-18", {{"OrderId", "A-17"}, {"Count", 2}});
  REQUIRE(other);
  CHECK(other->created);
  CHECK(other->id == 2);
  CHECK(engine.start("Order", {{"OrderId", "A-17"}}).value() == 3);
}

TEST_CASE("a key repeated with other fields is KeyReused and writes nothing") {
  Harness h;
  OrderFlow flow;
  auto store = std::make_shared<FaultInjectingStore>(h.store);
  Engine engine(store, h.options());
  REQUIRE(engine.define(flow.process()));
  const Fields fields{{"OrderId", "A-17"}, {"Amount", 12.0}};
  auto first = engine.startOnce("Order", "order-A-17", fields);
  REQUIRE(first);
  const auto history = engine.history(first->id).value();

  const std::vector<Fields> others = {
      {{"OrderId", "A-18"}, {"Amount", 12.0}},                // another value
      {{"OrderId", "A-17"}, {"Amount", 12}},                  // the same number, another type
      {{"OrderId", "A-17"}},                                  // a field fewer
      {{"OrderId", "A-17"}, {"Amount", 12.0}, {"Count", 0}},  // one more, if only the default
      {},
      {{"Undeclared", 1}},  // KeyReused before the fields are checked
  };
  for (const Fields& other : others) {
    INFO("fields " << Catch::StringMaker<Fields>::convert(other));
    store->resetCounters();
    const Error error = errorOf(engine.startOnce("Order", "order-A-17", other));
    CHECK(error.code == Errc::KeyReused);
    CHECK(contains(error.message, "order-A-17"));
    CHECK(contains(error.message, "instance 1"));
    CHECK(store->calls(StoreCall::Apply) == 0);
    CHECK(store->calls() == 1);  // the key's look-up
  }
  CHECK(flow.steps() == kFirstLeg);
  CHECK(instanceCount(*h.store) == 1);
  CHECK(engine.history(first->id).value() == history);
  // The first fields still repeat.
  auto again = engine.startOnce("Order", "order-A-17", fields);
  REQUIRE(again);
  CHECK_FALSE(again->created);
  CHECK(again->id == first->id);
}

TEST_CASE("a malformed idempotency key is InvalidArgument before any store call") {
  Harness h;
  OrderFlow flow;
  auto store = std::make_shared<FaultInjectingStore>(h.store);
  Engine engine(store, h.options());
  REQUIRE(engine.define(flow.process()));
  store->resetCounters();
  const std::vector<std::string> keys = {
      "",     std::string(256, 'k'), "line\nbreak", std::string("nul\0", 4),
      "\x01", "caf\xc3\xa9",         " padded",     "padded ",
  };
  for (const std::string& key : keys) {
    INFO("key of " << key.size() << " bytes");
    const Error error = errorOf(engine.startOnce("Order", key, {{"OrderId", "A-17"}}));
    CHECK(error.code == Errc::InvalidArgument);
    CHECK(contains(error.message, "idempotency key"));
  }
  // Checked before the process: an unknown process with a bad key says the key.
  CHECK(errorOf(engine.startOnce("Nope", "", {})).code == Errc::InvalidArgument);
  CHECK(store->calls() == 0);
  CHECK(flow.steps().empty());
  // The longest key, and spaces inside one, are fine.
  CHECK(engine.startOnce("Order", std::string(255, 'k'), {}).value().created);
  CHECK(engine.startOnce("Order", "order A 17", {}).value().created);
}

TEST_CASE("startOnce: NotFound for an unknown process, InvalidField as start, nothing claimed") {
  Harness h;
  OrderFlow flow;
  auto store = std::make_shared<FaultInjectingStore>(h.store);
  Engine engine(store, h.options());
  REQUIRE(engine.define(flow.process()));
  store->resetCounters();

  const Error unknown = errorOf(engine.startOnce("Invoice", "key-1", {}));
  CHECK(unknown.code == Errc::NotFound);
  CHECK(contains(unknown.message, "Invoice"));
  CHECK(store->calls() == 0);

  for (const Fields& bad : std::vector<Fields>{{{"Undeclared", 1}}, {{"Count", "three"}}}) {
    INFO("fields " << Catch::StringMaker<Fields>::convert(bad));
    const Error error = errorOf(engine.startOnce("Order", "key-1", bad));
    CHECK(error.code == Errc::InvalidField);
    CHECK(error == errorOf(engine.start("Order", bad)));
  }
  CHECK(store->calls(StoreCall::Apply) == 0);
  CHECK(instanceCount(*h.store) == 0);
  CHECK(h.store->findStartKey("Order", "key-1").value() == std::nullopt);
  // A refused call claimed nothing: the key is still free for a valid start.
  auto started = engine.startOnce("Order", "key-1", {{"Count", 3}});
  REQUIRE(started);
  CHECK(started->created);
  CHECK(h.store->findStartKey("Order", "key-1").value()->instance == started->id);
}

TEST_CASE("a store failure fails startOnce with nothing written, and the repeated call succeeds") {
  Harness h;
  OrderFlow flow;
  auto store = std::make_shared<FaultInjectingStore>(h.store);
  Engine engine(store, h.options());
  REQUIRE(engine.define(flow.process()));

  SECTION("the create's commit fails") { store->failNth(1, Fault::DiskFull); }
  SECTION("the key's look-up fails") { store->failNth(1, Fault::IoError, FaultScope::AnyCall); }

  const Error error = errorOf(engine.startOnce("Order", "order-A-17", {{"OrderId", "A-17"}}));
  CHECK(error.code == Errc::StoreError);
  CHECK(contains(error.message, "injected by FaultInjectingStore"));
  CHECK_FALSE(store->armed());
  CHECK(instanceCount(*h.store) == 0);
  CHECK(h.store->findStartKey("Order", "order-A-17").value() == std::nullopt);
  CHECK(flow.steps().empty());

  auto retried = engine.startOnce("Order", "order-A-17", {{"OrderId", "A-17"}});
  REQUIRE(retried);
  CHECK(retried->created);
  CHECK(retried->id == 1);
  CHECK(flow.steps() == kFirstLeg);
  CHECK(h.store->findStartKey("Order", "order-A-17").value() ==
        StartKeyRecord{1, 1, detail::fingerprintOf({{"OrderId", "A-17"}})});
}

TEST_CASE("a repeat on a reopened SQLite file reports the instance started before the restart") {
  TempDir dir;
  const std::string path = dir.file("workflows.db");
  Harness h;  // its clock and random source; the stores are the file's
  OrderFlow before;
  Started first;
  {
    auto store = SqliteStore::open(path);
    REQUIRE(store);
    Engine engine(std::shared_ptr<Store>(std::move(*store)), h.options());
    REQUIRE(engine.define(before.process()));
    first = engine.startOnce("Order", "order-A-17", {{"OrderId", "A-17"}}).value();
    REQUIRE(first.created);
  }
  CHECK(before.steps() == kFirstLeg);

  OrderFlow after;
  auto store = SqliteStore::open(path);
  REQUIRE(store);
  Engine engine(std::shared_ptr<Store>(std::move(*store)), h.options());
  REQUIRE(engine.define(after.process(1)));
  REQUIRE(engine.define(after.process(2)));
  auto again = engine.startOnce("Order", "order-A-17", {{"OrderId", "A-17"}});
  REQUIRE(again);
  CHECK_FALSE(again->created);
  CHECK(again->id == first.id);
  CHECK(again->processVersion == 1);
  CHECK(after.steps().empty());  // recovery found nothing to re-run, the repeat ran nothing
  CHECK(hasCode(engine.instance(first.id + 1), Errc::NotFound));
  CHECK(hasCode(engine.startOnce("Order", "order-A-17", {{"OrderId", "A-18"}}), Errc::KeyReused));
}

TEST_CASE("a host in another OS process sees the key a first host claimed, on one SQLite file") {
  TempDir dir;
  const std::string path = dir.file("workflows.db");
  // The parent's host opens the file first and stays open throughout.
  OrderFlow parentFlow;
  auto parentStore = SqliteStore::open(path);
  REQUIRE(parentStore);
  Harness h;
  EngineOptions options = h.options();
  Engine parent(std::shared_ptr<Store>(std::move(*parentStore)), options);
  REQUIRE(parent.define(parentFlow.process()));

  // A second host in a child process claims the key and reports the id on a pipe.
  int ids[2];
  REQUIRE(::pipe(ids) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::close(ids[0]);
    InstanceId id = 0;
    int code = 1;
    {
      OrderFlow flow;
      auto store = SqliteStore::open(path);
      if (store) {
        EngineOptions childOptions;  // the child's own clock, random source and timer
        childOptions.timerThread = false;
        Engine engine(std::shared_ptr<Store>(std::move(*store)), childOptions);
        if (engine.define(flow.process())) {
          auto started = engine.startOnce("Order", "order-A-17", {{"OrderId", "A-17"}});
          if (started && started->created) {
            id = started->id;
            code = 0;
          }
        }
      }
    }
    const bool written = ::write(ids[1], &id, sizeof id) == static_cast<ssize_t>(sizeof id);
    ::_exit(written ? code : 1);
  }
  ::close(ids[1]);
  InstanceId childId = 0;
  REQUIRE(::read(ids[0], &childId, sizeof childId) == static_cast<ssize_t>(sizeof childId));
  ::close(ids[0]);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  REQUIRE(childId > 0);

  auto again = parent.startOnce("Order", "order-A-17", {{"OrderId", "A-17"}});
  REQUIRE(again);
  CHECK_FALSE(again->created);
  CHECK(again->id == childId);
  CHECK(parentFlow.steps().empty());  // the parent ran nothing for it
  CHECK(hasCode(parent.startOnce("Order", "order-A-17", {{"OrderId", "B-2"}}), Errc::KeyReused));
}

TEST_CASE("concurrent startOnce calls with one key create one instance, and all report it") {
  // Both callers read the key as free before either creates: one create
  // applies, the other is KeyTaken and reads the winner's claim.
  const bool twoEngines = GENERATE(false, true);
  INFO((twoEngines ? "two engines on one SQLite file" : "two threads on one engine"));
  TempDir dir;
  Harness h;
  auto allRead = std::make_shared<Latch>(2);
  auto gated = std::make_shared<std::atomic<int>>(2);
  OrderFlow flow;
  std::vector<std::unique_ptr<Engine>> engines;
  std::shared_ptr<Store> inspect;
  if (twoEngines) {
    const std::string path = dir.file("shared.db");
    for (int i = 0; i < 2; ++i) {
      auto opened = SqliteStore::open(path);
      REQUIRE(opened);
      auto store = std::make_shared<LookUpTogether>(std::shared_ptr<Store>(std::move(*opened)),
                                                    allRead, gated);
      engines.push_back(std::make_unique<Engine>(store, h.options()));
      inspect = store;
    }
  } else {
    auto store = std::make_shared<LookUpTogether>(h.store, allRead, gated);
    engines.push_back(std::make_unique<Engine>(store, h.options()));
    inspect = h.store;
  }
  for (auto& engine : engines) REQUIRE(engine->define(flow.process()));

  std::vector<Result<Started>> results(2);
  Latch go;
  std::vector<std::thread> callers;
  for (std::size_t i = 0; i < 2; ++i) {
    callers.emplace_back([&, i] {
      Engine& engine = *engines[i % engines.size()];
      go.wait();
      results[i] = engine.startOnce("Order", "order-A-17", {{"OrderId", "A-17"}});
    });
  }
  go.countDown();
  for (std::thread& caller : callers) caller.join();

  REQUIRE(results[0]);
  REQUIRE(results[1]);
  CHECK(results[0]->id == results[1]->id);
  CHECK(results[0]->created != results[1]->created);
  CHECK(results[0]->processVersion == 1);
  CHECK(results[1]->processVersion == 1);
  CHECK(gated->load() < 0);          // the loser looked the key up again
  CHECK(flow.steps() == kFirstLeg);  // the winner ran the first leg, once
  CHECK(instanceCount(*inspect) == 1);
  CHECK(inspect->findStartKey("Order", "order-A-17").value()->instance == results[0]->id);
}

TEST_CASE("a racing startOnce with other fields that loses is KeyReused") {
  Harness h;
  auto allRead = std::make_shared<Latch>(2);
  auto gated = std::make_shared<std::atomic<int>>(2);
  OrderFlow flow;
  auto store = std::make_shared<LookUpTogether>(h.store, allRead, gated);
  Engine engine(store, h.options());
  REQUIRE(engine.define(flow.process()));

  std::vector<Result<Started>> results(2);
  std::vector<std::thread> callers;
  for (std::size_t i = 0; i < 2; ++i) {
    callers.emplace_back([&, i] {
      results[i] = engine.startOnce("Order", "order-A-17", {{"OrderId", std::to_string(i)}});
    });
  }
  for (std::thread& caller : callers) caller.join();

  // One of them created; the other, having lost, found other fields.
  REQUIRE(results[0].has_value() != results[1].has_value());
  const std::size_t winner = results[0] ? 0 : 1;
  CHECK(results[winner]->created);
  CHECK(results[1 - winner].error().code == Errc::KeyReused);
  CHECK(instanceCount(*h.store) == 1);
  CHECK(info(engine, results[winner]->id).fields.get<std::string>("OrderId").value() ==
        std::to_string(winner));
}
