// PostgresStore on a real server (the ctest fixture's throwaway one, or
// ASYNCFLOW_TEST_POSTGRES): the store conformance suite, the codec's byte-exact
// text, open()'s refusals, and the migration taken once by racing hosts.
#include "asyncflow/postgres_store.hpp"

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "asyncflow/asyncflow.hpp"
#include "asyncflow/testing/store_conformance.hpp"
#include "postgres/pg_test_server.hpp"
#include "store/postgres/codec.hpp"
#include "store/postgres/pq.hpp"
#include "store/postgres/round_trips.hpp"
#include "support/catch.hpp"
#include "support/test_support.hpp"

using namespace asyncflow;
using asyncflow::testing::checkStoreConformance;

namespace {

// Runs `sql` on a connection of its own; the error text, empty on success.
std::string execute(const std::string& conninfo, const std::string& sql) {
  PGconn* conn = PQconnectdb(conninfo.c_str());
  std::string error;
  if (PQstatus(conn) != CONNECTION_OK) {
    error = PQerrorMessage(conn);
  } else {
    PQsetNoticeProcessor(
        conn, [](void*, const char*) {}, nullptr);
    PGresult* r = PQexec(conn, sql.c_str());
    const auto status = PQresultStatus(r);
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) error = PQresultErrorMessage(r);
    PQclear(r);
  }
  PQfinish(conn);
  return error;
}

// Fresh schema names for this process, dropped at the end of the scope.
class Schemas {
 public:
  explicit Schemas(std::string conninfo) : conninfo_(std::move(conninfo)) {}
  ~Schemas() {
    for (const std::string& schema : made_)
      execute(conninfo_, "DROP SCHEMA IF EXISTS " + schema + " CASCADE");
  }
  Schemas(const Schemas&) = delete;
  Schemas& operator=(const Schemas&) = delete;

  std::string fresh(const std::string& prefix) {
    std::string schema = prefix + "_" + std::to_string(::getpid()) + "_" + std::to_string(++count_);
    execute(conninfo_, "DROP SCHEMA IF EXISTS " + schema + " CASCADE");
    made_.push_back(schema);
    return schema;
  }

 private:
  std::string conninfo_;
  std::vector<std::string> made_;
  int count_ = 0;
};

std::string conninfoOrSkip() {
  auto server = asyncflow::testing::pgTestServer();
  if (!server) FAIL("no PostgreSQL server: set ASYNCFLOW_TEST_POSTGRES or run through ctest");
  return server->conninfo;
}

std::unique_ptr<PostgresStore> openOrFail(const std::string& conninfo, PostgresOptions options) {
  auto store = PostgresStore::open(conninfo, options);
  if (!store) FAIL("PostgresStore::open: " << store.error().toString());
  return std::move(*store);
}

}  // namespace

TEST_CASE("PostgresStore conforms to the asyncflow Store contract") {
  const std::string conninfo = conninfoOrSkip();
  Schemas schemas(conninfo);
  checkStoreConformance([&]() -> std::shared_ptr<Store> {
    PostgresOptions options;
    options.schema = schemas.fresh("conformance");
    return openOrFail(conninfo, options);
  });
}

TEST_CASE("the codec writes any bytes as readable text and reads them back exactly") {
  using detail::pg::decodeText;
  using detail::pg::encodeText;
  CHECK(encodeText("plain caf\xc3\xa9") == "plain caf\xc3\xa9");
  CHECK(encodeText("a\\b") == "a\\\\b");
  CHECK(encodeText(std::string("a\0b", 3)) == "a\\x00b");
  CHECK(encodeText("\xff\xc3\x28") == "\\xff\\xc3(");
  CHECK(encodeText("\xed\xa0\x80") == "\\xed\\xa0\\x80");  // a surrogate is not UTF-8
  CHECK(encodeText("\xe0\x80\xaf") == "\\xe0\\x80\\xaf");  // nor an overlong form
  CHECK(encodeText("\xf0\x9f\x98\x80") == "\xf0\x9f\x98\x80");
  for (const std::string& bytes :
       {std::string(), std::string("\\x41"), std::string("\0\0", 2),
        std::string("\xf4\x90\x80\x80"), std::string("tail\\"), std::string("\xc3")}) {
    CHECK(decodeText(encodeText(bytes)) == bytes);
  }
  CHECK_THROWS(decodeText("lone \\ backslash"));
  CHECK_THROWS(decodeText("bad \\xZZ escape"));
  CHECK_THROWS(decodeText("short \\x4"));
}

namespace {

// A create of one Running instance with no runs, as a host's start writes it.
ChangeSet someCreate() {
  ChangeSet set;
  set.instance.process = "Watched";
  set.instance.processVersion = 1;
  set.instance.status = InstanceStatus::Running;
  return set;
}

}  // namespace

// Counts calls from another thread; awaits a count without sleeping.
class Calls {
 public:
  void add() {
    std::lock_guard lock(mutex_);
    ++count_;
    changed_.notify_all();
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

TEST_CASE("a watch is called once it listens, then after each commit of another store object") {
  const std::string conninfo = conninfoOrSkip();
  Schemas schemas(conninfo);
  PostgresOptions options;
  options.schema = schemas.fresh("watch");
  auto a = openOrFail(conninfo, options);
  auto b = openOrFail(conninfo, options);

  Calls calls;
  auto watch = a->watchChanges([&] { calls.add(); });
  REQUIRE(watch != nullptr);
  calls.awaitAtLeast(1);  // it listens: what came before may have been missed
  REQUIRE(b->apply({someCreate()}).has_value());
  calls.awaitAtLeast(2);  // B's commit reached A's listener
  REQUIRE(b->apply({someCreate()}).has_value());
  calls.awaitAtLeast(3);
  watch.reset();  // returns with no call in progress
}

namespace {

// A connection of the test's own that LISTENs on a schema's channel.
class ChannelListener {
 public:
  ChannelListener(const std::string& conninfo, const std::string& schema)
      : conn_(PQconnectdb(conninfo.c_str())), channel_("asyncflow_" + schema) {
    REQUIRE(PQstatus(conn_) == CONNECTION_OK);
    PQclear(PQexec(conn_, ("LISTEN " + channel_).c_str()));
  }
  ~ChannelListener() { PQfinish(conn_); }
  ChannelListener(const ChannelListener&) = delete;
  ChannelListener& operator=(const ChannelListener&) = delete;

  // How many notifications came before a mark that this connection sends
  // itself now: notifications arrive in commit order, so every commit that
  // returned before this call and announced itself is counted.
  int countBeforeMark() {
    PQclear(PQexec(conn_, ("NOTIFY " + channel_ + ", 'mark'").c_str()));
    int count = 0;
    for (;;) {
      REQUIRE(PQconsumeInput(conn_) == 1);
      while (PGnotify* n = PQnotifies(conn_)) {
        const bool mark = std::string(n->extra) == "mark";
        PQfreemem(n);
        if (mark) return count;
        ++count;
      }
      pollfd fd{PQsocket(conn_), POLLIN, 0};
      REQUIRE(::poll(&fd, 1, -1) == 1);
    }
  }

 private:
  PGconn* conn_;
  std::string channel_;
};

}  // namespace

TEST_CASE(
    "a commit announces itself when it leaves another host work: a lease, a deadline or a "
    "completion to run, not a finished instance") {
  const std::string conninfo = conninfoOrSkip();
  Schemas schemas(conninfo);
  PostgresOptions options;
  options.schema = schemas.fresh("announce");
  auto store = openOrFail(conninfo, options);
  ChannelListener listener(conninfo, options.schema);

  // A Running instance: a lease to take over if its host dies.
  auto created = store->apply({someCreate()});
  REQUIRE(created);
  CHECK(listener.countBeforeMark() == 1);
  auto loaded = store->loadInstance(created->front().instance);
  REQUIRE(loaded);

  // Finished: nobody has work from it.
  ChangeSet finish;
  finish.instance = loaded->record;
  finish.expectedVersion = loaded->record.version;
  finish.instance.status = InstanceStatus::Completed;
  REQUIRE(store->apply({finish}).has_value());
  CHECK(listener.countBeforeMark() == 0);
  REQUIRE(store->apply({someCreate()}).has_value());
  CHECK(listener.countBeforeMark() == 1);

  // Waiting with a deadline: another host's timer may fire it.
  auto second = store->loadInstance(2);
  REQUIRE(second);
  ChangeSet wait;
  wait.instance = second->record;
  wait.expectedVersion = second->record.version;
  wait.instance.status = InstanceStatus::Waiting;
  wait.instance.currentRun = wait.instance.lastRun = 1;
  StepRunRecord run;
  run.instance = 2;
  run.run = 1;
  run.step = "Wait";
  run.kind = StepKind::Async;
  run.status = StepRunStatus::Waiting;
  run.attempt = 1;
  run.deadline = Timestamp{} + std::chrono::hours(1);
  wait.stepRuns.push_back(run);
  REQUIRE(store->apply({wait}).has_value());
  CHECK(listener.countBeforeMark() == 1);

  // Waiting with nothing due (the deadline gone): no work for anyone; then a
  // completion recorded for a host that defines the version: work.
  auto waiting = store->loadInstance(2);
  REQUIRE(waiting);
  ChangeSet quiet;
  quiet.instance = waiting->record;
  quiet.expectedVersion = waiting->record.version;
  run.deadline.reset();
  quiet.stepRuns.push_back(run);
  REQUIRE(store->apply({quiet}).has_value());
  CHECK(listener.countBeforeMark() == 0);
  auto again = store->loadInstance(2);
  REQUIRE(again);
  ChangeSet completion;
  completion.instance = again->record;
  completion.expectedVersion = again->record.version;
  run.hasCompletion = true;
  completion.stepRuns.push_back(run);
  REQUIRE(store->apply({completion}).has_value());
  CHECK(listener.countBeforeMark() == 1);
}

TEST_CASE(
    "an implicit transaction commits at its end, and one abandoned or failed halfway commits "
    "nothing and closes its connection") {
  using asyncflow::detail::pg::Call;
  using asyncflow::detail::pg::Connection;
  using asyncflow::detail::pg::PgError;
  const std::string conninfo = conninfoOrSkip();
  Schemas schemas(conninfo);
  const std::string schema = schemas.fresh("implicit");
  REQUIRE(execute(conninfo, "CREATE SCHEMA " + schema + "; CREATE TABLE " + schema +
                                ".t (k integer PRIMARY KEY)") == "");
  auto insert = [&](int k) {
    return Call{"INSERT INTO " + schema + ".t VALUES (" + std::to_string(k) + ")", true, {}};
  };
  auto rows = [&] {
    Connection reader(conninfo, 10);
    return reader.exec("SELECT k FROM " + schema + ".t ORDER BY k").rows();
  };

  {
    Connection c(conninfo, 10);
    c.beginImplicit();
    std::vector<Call> first{insert(1)};
    c.exchange(first);
    CHECK(rows() == 0);  // not committed before the end
    std::vector<Call> last{insert(2)};
    c.end(last);
    CHECK(rows() == 2);
    CHECK(c.ok());
    CHECK(c.idle());
  }
  {
    Connection c(conninfo, 10);
    c.beginImplicit();
    std::vector<Call> first{insert(3)};
    c.exchange(first);
    c.abandonImplicit();  // as a writer does when anything goes wrong before the end
    CHECK_FALSE(c.ok());
    CHECK(rows() == 2);
  }
  {
    Connection c(conninfo, 10);
    c.beginImplicit();
    std::vector<Call> calls{insert(4), insert(1)};  // the second violates the key
    CHECK_THROWS_AS(c.exchange(calls), PgError);
    CHECK_FALSE(c.ok());
    CHECK(rows() == 2);
  }
}

TEST_CASE(
    "a host that defines nothing completes a serial, and the defining host on another store "
    "object moves the instance on through the push alone") {
  const std::string conninfo = conninfoOrSkip();
  Schemas schemas(conninfo);
  PostgresOptions options;
  options.schema = schemas.fresh("push");
  std::shared_ptr<Store> hostStore = openOrFail(conninfo, options);
  std::shared_ptr<Store> batchStore = openOrFail(conninfo, options);

  asyncflow::testing::Latch reported;
  std::atomic<int> reports{0};
  Process p("Export", 1);
  p.field("Rows", Type::Int64, std::int64_t{0})
      .step(AsyncStep("Queue", [](AsyncStepContext&) { return StartOutcome::wait(); }))
      .step(Step("Report",
                 [&](StepContext& ctx) {
                   CHECK(ctx.fields().getOr<std::int64_t>("Rows", -1) == 1284);
                   ++reports;
                   reported.countDown();
                   return StepOutcome::finish();
                 }))
      .line("Queue", "Report");

  EngineOptions hostOptions;
  hostOptions.timerThread = true;
  hostOptions.changeCheckInterval = std::chrono::milliseconds::zero();  // the push alone
  Engine host(hostStore, hostOptions);
  REQUIRE(host.define(p));
  const InstanceId id = host.start("Export").value();
  const std::string serial = host.instance(id).value().serial;

  EngineOptions batchOptions;
  batchOptions.timerThread = false;
  Engine batch(batchStore, batchOptions);  // defines nothing
  CHECK(batch.completeServerEvent(serial, {{"Nope", 1}}).error().code == Errc::InvalidField);
  REQUIRE(batch.completeServerEvent(serial, {{"Rows", std::int64_t{1284}}}));
  reported.wait();
  host.waitIdle();
  CHECK(host.instance(id).value().status == InstanceStatus::Completed);
  CHECK(reports == 1);
}

namespace {

// The conninfo with `key=value` appended (a later keyword wins in libpq).
std::string with(const std::string& conninfo, const std::string& setting) {
  return conninfo + " " + setting;
}

// A TCP port on 127.0.0.1 where nothing listens (bound, then let go).
int closedPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
  socklen_t size = sizeof address;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size);
  ::close(fd);
  return ntohs(address.sin_port);
}

// The rows of a one-column query, as text.
std::vector<std::string> column(const std::string& conninfo, const std::string& sql) {
  PGconn* conn = PQconnectdb(conninfo.c_str());
  std::vector<std::string> rows;
  PGresult* r = PQexec(conn, sql.c_str());
  for (int i = 0; i < PQntuples(r); ++i) rows.emplace_back(PQgetvalue(r, i, 0));
  PQclear(r);
  PQfinish(conn);
  return rows;
}

}  // namespace

TEST_CASE("open() refuses bad options and bad servers with a clear error, and changes nothing") {
  const std::string conninfo = conninfoOrSkip();
  Schemas schemas(conninfo);
  PostgresOptions options;
  options.schema = schemas.fresh("refused");

  SECTION("a schema name that would need quoting") {
    for (const std::string& name : {std::string(), std::string("Upper"), std::string("1st"),
                                    std::string("semi;colon"), std::string(64, 'a')}) {
      PostgresOptions bad = options;
      bad.schema = name;
      auto store = PostgresStore::open(conninfo, bad);
      REQUIRE_FALSE(store);
      CHECK(store.error().code == Errc::InvalidArgument);
      CHECK(store.error().message.find("PostgresOptions::schema") != std::string::npos);
    }
  }
  SECTION("a pool size of 0 or above 256") {
    for (std::size_t size : {std::size_t{0}, std::size_t{257}}) {
      PostgresOptions bad = options;
      bad.poolSize = size;
      auto store = PostgresStore::open(conninfo, bad);
      REQUIRE_FALSE(store);
      CHECK(store.error().code == Errc::InvalidArgument);
      CHECK(store.error().message.find("poolSize") != std::string::npos);
    }
  }
  SECTION("no server at the address") {
    auto store = PostgresStore::open(
        with(conninfo, "host=127.0.0.1 port=" + std::to_string(closedPort())), options);
    REQUIRE_FALSE(store);
    CHECK(store.error().code == Errc::StoreError);
    CHECK(store.error().message.find("Connection refused") != std::string::npos);
  }
  SECTION("a wrong password") {
    auto server = asyncflow::testing::pgTestServer();
    if (server->external) {
      WARN("not checked: an external server's authentication is its own");
      return;
    }
    auto store = PostgresStore::open(with(conninfo, "password=wrong"), options);
    REQUIRE_FALSE(store);
    CHECK(store.error().code == Errc::StoreError);
    CHECK(store.error().message.find("password authentication failed") != std::string::npos);
  }
  SECTION("a schema of another application") {
    REQUIRE(execute(conninfo, "CREATE SCHEMA " + options.schema + "; CREATE TABLE " +
                                  options.schema + ".orders (id int)") == "");
    auto store = PostgresStore::open(conninfo, options);
    REQUIRE_FALSE(store);
    CHECK(store.error().code == Errc::StoreError);
    CHECK(store.error().message.find("not an asyncflow schema") != std::string::npos);
    CHECK(column(conninfo,
                 "SELECT table_name FROM information_schema.tables WHERE "
                 "table_schema = '" +
                     options.schema + "'") == std::vector<std::string>{"orders"});
  }
  SECTION("a schema newer than this library's") {
    REQUIRE(PostgresStore::open(conninfo, options).has_value());
    REQUIRE(execute(conninfo, "INSERT INTO " + options.schema +
                                  ".asyncflow_migrations VALUES (99, 'from the future', 0)") == "");
    auto store = PostgresStore::open(conninfo, options);
    REQUIRE_FALSE(store);
    CHECK(store.error().code == Errc::StoreError);
    CHECK(store.error().message.find("schema version 99 is newer") != std::string::npos);
    CHECK(column(conninfo, "SELECT count(*) FROM " + options.schema + ".asyncflow_migrations") ==
          std::vector<std::string>{std::to_string(PostgresStore::schemaVersion() + 1)});
  }
}

TEST_CASE("hosts that open a new schema at the same moment all open it, and it is migrated once") {
  const std::string conninfo = conninfoOrSkip();
  Schemas schemas(conninfo);
  PostgresOptions options;
  options.schema = schemas.fresh("race");
  constexpr int kHosts = 6;
  std::vector<std::string> errors(kHosts);
  std::vector<std::thread> hosts;
  for (int i = 0; i < kHosts; ++i) {
    hosts.emplace_back([&, i] {
      auto store = PostgresStore::open(conninfo, options);
      errors[i] = store ? "ok" : store.error().toString();
    });
  }
  for (std::thread& host : hosts) host.join();
  CHECK(errors == std::vector<std::string>(kHosts, "ok"));
  CHECK(column(conninfo, "SELECT count(*) FROM " + options.schema + ".asyncflow_migrations") ==
        std::vector<std::string>{std::to_string(PostgresStore::schemaVersion())});
}

TEST_CASE("a version 1 schema migrates to the current one: its runs are on the main path") {
  const std::string conninfo = conninfoOrSkip();
  Schemas schemas(conninfo);
  PostgresOptions options;
  options.schema = schemas.fresh("from_v1");
  InstanceId id = 0;
  {
    auto store = openOrFail(conninfo, options);
    auto created = store->apply({asyncflow::testing::detail::creation()});
    REQUIRE(created);
    id = created->front().instance;
  }
  // Back to what schema version 1 was: no branch column, one migration.
  const std::string s = options.schema;
  REQUIRE(execute(conninfo, "ALTER TABLE " + s + ".step_runs DROP COLUMN branch; DELETE FROM " + s +
                                ".asyncflow_migrations WHERE version > 1") == "");
  auto store = openOrFail(conninfo, options);
  CHECK(column(conninfo, "SELECT version FROM " + s + ".asyncflow_migrations ORDER BY version") ==
        std::vector<std::string>{"1", "2"});
  CHECK(PostgresStore::schemaVersion() == 2);
  auto run = store->loadStepRun(id, 1);
  REQUIRE(run);
  CHECK(run->branch == 0);
  CHECK(column(conninfo, "SELECT branch FROM " + s + ".step_runs") ==
        std::vector<std::string>{"0"});
}

namespace {

// A connection of the test's own, as an operator's psql or another
// application would hold one.
class Session {
 public:
  explicit Session(const std::string& conninfo)
      : conn_(PQconnectdb((conninfo + " application_name=asyncflow_test").c_str())) {
    REQUIRE(PQstatus(conn_) == CONNECTION_OK);
    PQsetNoticeProcessor(
        conn_, [](void*, const char*) {}, nullptr);
  }
  ~Session() { PQfinish(conn_); }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // The first column of each row; fails the test on an error.
  std::vector<std::string> rows(const std::string& sql) {
    PGresult* r = PQexec(conn_, sql.c_str());
    const auto status = PQresultStatus(r);
    INFO(sql << ": " << PQresultErrorMessage(r));
    CHECK((status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK));
    std::vector<std::string> out;
    for (int i = 0; i < PQntuples(r); ++i) out.emplace_back(PQgetvalue(r, i, 0));
    PQclear(r);
    return out;
  }

  // Waits, asking the server (never sleeping), until a connection named
  // `application` waits for a lock; its backend's pid.
  std::string awaitBlocked(const std::string& application) {
    const auto giveUp = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < giveUp) {
      auto pids = rows("SELECT pid FROM pg_stat_activity WHERE application_name = '" + application +
                       "' AND wait_event_type = 'Lock'");
      if (!pids.empty()) return pids.front();
    }
    FAIL("no connection of the store waited for the lock within 60 s");
    return {};
  }

 private:
  PGconn* conn_;
};

using asyncflow::testing::detail::creation;
using asyncflow::testing::detail::load;
using asyncflow::testing::detail::updateOf;

}  // namespace

TEST_CASE("a statement the server cuts off at statementTimeout is StoreError and writes nothing") {
  const std::string conninfo = conninfoOrSkip();
  Schemas schemas(conninfo);
  PostgresOptions options;
  options.schema = schemas.fresh("timeout");
  options.statementTimeout = std::chrono::milliseconds(200);
  auto store = openOrFail(conninfo, options);
  auto created = store->apply({creation()});
  REQUIRE(created);
  const InstanceId id = created->front().instance;
  const InstanceSnapshot before = load(*store, id);
  ChangeSet update = updateOf(before);
  update.fields.set("OrderId", "B-2");

  Session other(conninfo);
  other.rows("BEGIN");
  other.rows("LOCK TABLE " + options.schema + ".instances IN ACCESS EXCLUSIVE MODE");
  auto cut = store->apply({update});  // waits for the lock until the timeout
  REQUIRE_FALSE(cut);
  CHECK(cut.error().code == Errc::StoreError);
  CHECK(cut.error().message.find("statement timeout") != std::string::npos);
  other.rows("COMMIT");

  CHECK(load(*store, id).record.version == before.record.version);
  CHECK(load(*store, id).fields == before.fields);
  auto again = store->apply({update});
  REQUIRE(again);
  CHECK(again->front().status == ApplyStatus::Applied);
  CHECK(load(*store, id).fields.getOr<std::string>("OrderId", "") == "B-2");
}

TEST_CASE(
    "a connection dropped in a batch's last round trip is StoreError with nothing written, one "
    "dropped in its first runs the batch again on a new connection, and the next calls work") {
  const std::string conninfo = conninfoOrSkip();
  Schemas schemas(conninfo);
  PostgresOptions options;
  options.schema = schemas.fresh("dropped");
  // Its connections by name: tests of other schemas share the server.
  auto store = openOrFail(with(conninfo, "application_name=" + options.schema), options);
  auto created = store->apply({creation()});
  REQUIRE(created);
  const InstanceId id = created->front().instance;
  const InstanceSnapshot before = load(*store, id);
  ChangeSet update = updateOf(before);
  update.fields.set("OrderId", "C-3");

  // Cut in the last round trip (the guarded UPDATE went through; the field's
  // upsert waits for the lock): the store asks the server whether the
  // transaction committed (it did not), and the call fails with nothing written.
  Session other(conninfo);
  other.rows("BEGIN");
  // Row locks, not table locks: a new connection of the store (which prepares
  // its statements) and the check of a lost commit's outcome are not held up.
  other.rows("SELECT 1 FROM " + options.schema +
             ".fields WHERE instance_id = " + std::to_string(id) + " FOR UPDATE");
  Result<std::vector<ApplyResult>> cut = std::vector<ApplyResult>{};
  std::thread writer([&] { cut = store->apply({update}); });
  const std::string pid = other.awaitBlocked(options.schema);
  other.rows("SELECT pg_terminate_backend(" + pid + ")");
  writer.join();
  other.rows("COMMIT");
  REQUIRE_FALSE(cut);
  CHECK(cut.error().code == Errc::StoreError);
  INFO(cut.error().message);

  // Reads and writes go on, on a new connection.
  CHECK(load(*store, id).record.version == before.record.version);
  CHECK(load(*store, id).fields == before.fields);

  // Cut in the first round trip (the UPDATE waits for the lock): nothing was
  // committed, as when a connection broke while idle, so the batch runs again
  // on a new connection, and succeeds once the lock is free.
  other.rows("BEGIN");
  other.rows("SELECT 1 FROM " + options.schema + ".instances WHERE id = " + std::to_string(id) +
             " FOR UPDATE");
  Result<std::vector<ApplyResult>> again = std::vector<ApplyResult>{};
  std::thread second([&] { again = store->apply({update}); });
  const std::string first = other.awaitBlocked(options.schema);
  other.rows("SELECT pg_terminate_backend(" + first + ")");
  other.rows("COMMIT");
  second.join();
  INFO((again ? std::string("ok") : again.error().toString()));
  REQUIRE(again);
  CHECK(again->front().status == ApplyStatus::Applied);
  CHECK(load(*store, id).fields.getOr<std::string>("OrderId", "") == "C-3");
  // Every connection of the store dropped while idle: no call fails for it.
  other.rows("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '" +
             options.schema + "'");
  CHECK(store->loadInstance(id).has_value());
  ChangeSet next = updateOf(load(*store, id));
  auto afterDrop = store->apply({next});
  INFO((afterDrop ? std::string("ok") : afterDrop.error().toString()));
  CHECK(afterDrop.has_value());
  CHECK(store->changeMark().has_value());
}

TEST_CASE(
    "loadInstanceRun reads the instance and the run in one round trip, and a connection dropped "
    "while idle costs it no failed read") {
  const std::string conninfo = conninfoOrSkip();
  Schemas schemas(conninfo);
  PostgresOptions options;
  options.schema = schemas.fresh("instance_run");
  options.poolSize = 1;  // one connection, so the drop below is the one the read uses
  auto store = openOrFail(with(conninfo, "application_name=" + options.schema), options);
  auto created = store->apply({creation()});
  REQUIRE(created);
  const InstanceId id = created->front().instance;
  REQUIRE(store->loadInstanceRun(id, 1).has_value());  // the connection is open and prepared

  const std::uint64_t before = detail::pg::roundTrips();
  auto both = store->loadInstanceRun(id, 1);
  CHECK(detail::pg::roundTrips() - before == 1);
  REQUIRE(both);
  CHECK(both->snapshot.record == load(*store, id).record);
  CHECK(both->run.run == 1);

  Session other(conninfo);
  other.rows("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '" +
             options.schema + "'");
  auto again = store->loadInstanceRun(id, 1);
  INFO((again ? std::string("ok") : again.error().toString()));
  REQUIRE(again);
  CHECK(again->snapshot.record.version == both->snapshot.record.version);

  auto missing = store->loadInstanceRun(id + 1, 1);
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code == Errc::NotFound);
  CHECK(missing.error().message == "no instance " + std::to_string(id + 1));
  auto noRun = store->loadInstanceRun(id, 9);
  REQUIRE_FALSE(noRun);
  CHECK(noRun.error().code == Errc::NotFound);
  CHECK(noRun.error().message == "no step run " + std::to_string(id) + "_9");
}
