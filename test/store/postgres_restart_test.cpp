// PostgresStore across a restart of its server (pg_ctl restart, through the
// fixture): the store and the engine on it go on with no host restart, and
// what was acknowledged before is there after. Each case runs alone
// (RESTARTS_SERVER): it restarts the server every other test shares.
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>

#include <unistd.h>

#include <libpq-fe.h>

#include "asyncflow/asyncflow.hpp"
#include "asyncflow/postgres_store.hpp"
#include "asyncflow/testing/store_conformance.hpp"
#include "postgres/pg_test_server.hpp"
#include "support/catch.hpp"

using namespace asyncflow;
using asyncflow::testing::detail::creation;
using asyncflow::testing::detail::load;
using asyncflow::testing::detail::updateOf;

namespace {

std::string conninfoOrFail() {
  auto server = asyncflow::testing::pgTestServer();
  if (!server) FAIL("no PostgreSQL server: set ASYNCFLOW_TEST_POSTGRES or run through ctest");
  return server->conninfo;
}

// True when this server can be restarted here (the fixture's, not an external one).
bool restartable() {
  auto server = asyncflow::testing::pgTestServer();
  if (server && server->external) {
    WARN("not checked: ASYNCFLOW_TEST_POSTGRES names a server the tests may not restart");
    return false;
  }
  return true;
}

void restart() {
  std::string error;
  INFO(error);
  REQUIRE(asyncflow::testing::restartPgTestServer(error));
}

// A schema of its own, dropped at the end.
struct Schema {
  explicit Schema(std::string conninfo_, std::string name_)
      : conninfo(std::move(conninfo_)), name(std::move(name_) + "_" + std::to_string(::getpid())) {
    drop();
  }
  ~Schema() { drop(); }
  void drop() const {
    PGconn* conn = PQconnectdb(conninfo.c_str());
    PQsetNoticeProcessor(
        conn, [](void*, const char*) {}, nullptr);
    PQclear(PQexec(conn, ("DROP SCHEMA IF EXISTS " + name + " CASCADE").c_str()));
    PQfinish(conn);
  }
  std::string conninfo;
  std::string name;
};

class Calls {
 public:
  void add() {
    std::lock_guard lock(mutex_);
    ++count_;
    changed_.notify_all();
  }
  int count() {
    std::lock_guard lock(mutex_);
    return count_;
  }
  void awaitAtLeast(int n) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return count_ >= n; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  int count_ = 0;
};

std::unique_ptr<PostgresStore> openOrFail(const std::string& conninfo, const std::string& schema) {
  PostgresOptions options;
  options.schema = schema;
  options.poolSize = 3;
  auto store = PostgresStore::open(conninfo, options);
  if (!store) FAIL("PostgresStore::open: " << store.error().toString());
  return std::move(*store);
}

}  // namespace

TEST_CASE(
    "after a server restart the store reads, writes, marks changes and pushes again with no "
    "failed call") {
  if (!restartable()) return;
  const std::string conninfo = conninfoOrFail();
  Schema schema(conninfo, "restart_store");
  auto a = openOrFail(conninfo, schema.name);
  auto b = openOrFail(conninfo, schema.name);
  auto created = a->apply({creation()});
  REQUIRE(created);
  const InstanceId id = created->front().instance;
  const InstanceSnapshot before = load(*a, id);
  Calls calls;
  auto watch = a->watchChanges([&] { calls.add(); });
  REQUIRE(watch != nullptr);
  calls.awaitAtLeast(1);
  REQUIRE(a->changeMark().has_value());

  restart();

  // Every pooled connection broke while idle: the first call finds it and
  // goes on, on a new one.
  auto loaded = a->loadInstance(id);
  INFO((loaded ? std::string("ok") : loaded.error().toString()));
  REQUIRE(loaded);
  CHECK(loaded->record.version == before.record.version);
  ChangeSet update = updateOf(*loaded);
  update.fields.set("OrderId", "after the restart");
  auto applied = a->apply({update});
  INFO((applied ? std::string("ok") : applied.error().toString()));
  REQUIRE(applied);
  CHECK(applied->front().status == ApplyStatus::Applied);
  CHECK(a->changeMark().has_value());
  // The watch listens again, says so, and hears B's commits as before.
  calls.awaitAtLeast(2);
  const int heard = calls.count();
  auto other = b->apply({creation()});
  INFO((other ? std::string("ok") : other.error().toString()));
  REQUIRE(other);
  calls.awaitAtLeast(heard + 1);
}

TEST_CASE(
    "an engine whose server restarts keeps every acknowledged completion and finishes its "
    "instances, with no host restart") {
  if (!restartable()) return;
  const std::string conninfo = conninfoOrFail();
  Schema schema(conninfo, "restart_engine");
  std::shared_ptr<Store> store = openOrFail(conninfo, schema.name);
  Process p("Order", 1);
  p.field("Total", Type::Int64, std::int64_t{0})
      .step(AsyncStep("Approve", [](AsyncStepContext&) { return StartOutcome::wait(); }))
      .step(Step("Ship", [](StepContext&) { return StepOutcome::finish(); }))
      .line("Approve", "Ship");
  EngineOptions options;
  options.timerThread = false;
  Engine engine(store, options);
  REQUIRE(engine.define(p));
  const InstanceId done = engine.start("Order").value();
  const InstanceId waiting = engine.start("Order").value();
  REQUIRE(engine.completeServerEvent(engine.instance(done).value().serial,
                                     {{"Total", std::int64_t{7}}}));

  restart();

  auto first = engine.instance(done);
  REQUIRE(first);
  CHECK(first->status == InstanceStatus::Completed);
  CHECK(first->fields.getOr<std::int64_t>("Total", 0) == 7);
  auto serial = engine.instance(waiting);
  REQUIRE(serial);
  auto completed = engine.completeServerEvent(serial->serial, {{"Total", std::int64_t{9}}});
  INFO((completed ? std::string("ok") : completed.error().toString()));
  REQUIRE(completed);
  CHECK(engine.instance(waiting).value().status == InstanceStatus::Completed);
}
