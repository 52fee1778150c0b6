// asyncflow_pg_bench: the engine on PostgresStore beside raw libpq doing the
// same minimal durable work, on the same server in the same run: B1, B2, B3,
// several host processes on one database, and the resume of work committed by
// another host.
//
//   ASYNCFLOW_TEST_POSTGRES=<conninfo> asyncflow_pg_bench [--instances N] [--runs R]
//                                                        [--only b1|b2|b3|hosts|resume]
//
// A throwaway server: `asyncflow_pg_fixture start STATE` (test/postgres), then
// ASYNCFLOW_TEST_POSTGRES="$(asyncflow_pg_fixture conninfo STATE)".
//
// B1 completion throughput: N instances wait at their only (async) step; 1 or
// 8 threads complete their share of the serials, inline. Raw: N waiting rows;
// each completion is one transaction that UPDATEs the waiting row by primary
// key and INSERTs the next step's row (BEGIN, UPDATE, INSERT, COMMIT: four
// round trips, one commit), 8 threads on a connection each. Beside each figure:
// commits (Store::apply calls) and round trips per completion. Medians of R runs.
//
// B2 completion latency: instances of "Cycle" wait; one at a time, from just
// before completeServerEvent to the first line of the next (sync) step's
// handler, with 2 workers and inline. Raw: one completion transaction (BEGIN,
// UPDATE, INSERT, COMMIT) timed alone.
//
// B3 cycles: start("Cycle") then completeServerEvent, one thread, inline. Raw
// bound: the engine's commits per cycle made as one-row INSERTs in autocommit
// (one round trip, one commit each); the bound is that rate / commits per cycle.
//
// Hosts: H = 1, 2, 4 host processes (this program, re-executed) on one schema,
// each with 2 threads completing its share of N waiting instances of B1's
// process, released together; the figure is N / the time until the last
// finished. Raw: H x 2 connections in one process doing B1's raw transaction.
//
// CPU (B1 and hosts): the engine processes' own CPU (getrusage) and the rest of
// the machine's busy time over the timed part (/proc/stat; the server's, as
// nothing else runs), per completion, and how busy the cores were.
//
// Resume: a host process that defines "Resume" (timer thread on, 2 workers)
// and this process, a second host that does not, on one schema. One at a time,
// this host completes a waiting step with the wall clock in a field; the other
// host, woken by NOTIFY, runs the next step, whose handler reports the wall
// clock minus that field. Raw: a transaction that UPDATEs, INSERTs and NOTIFYs,
// to a LISTENing connection in another thread, timed until poll() sees it.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <poll.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <libpq-fe.h>
#include <spawn.h>

#include "asyncflow/postgres_store.hpp"
#include "measure.hpp"
#include "store/postgres/round_trips.hpp"
#include "workload.hpp"

namespace asyncflow::bench {
namespace {

// A libpq connection for the baseline and the set-up; throws on any error.
class Raw {
 public:
  explicit Raw(const std::string& conninfo) : conn_(PQconnectdb(conninfo.c_str())) {
    if (PQstatus(conn_) != CONNECTION_OK) fail(PQerrorMessage(conn_));
    PQsetNoticeProcessor(
        conn_, [](void*, const char*) {}, nullptr);
  }
  ~Raw() { PQfinish(conn_); }
  Raw(const Raw&) = delete;
  Raw& operator=(const Raw&) = delete;

  void exec(const std::string& sql) { check(PQexec(conn_, sql.c_str())); }
  void prepare(const char* name, const char* sql) {
    check(PQprepare(conn_, name, sql, 0, nullptr));
  }
  PGconn* connection() { return conn_; }
  // The first column of the first row of `sql`, as a number.
  long long count(const std::string& sql) {
    PGresult* r = PQexec(conn_, sql.c_str());
    const long long value = PQntuples(r) > 0 ? std::atoll(PQgetvalue(r, 0, 0)) : 0;
    check(r);
    return value;
  }
  // Runs a prepared statement with one text parameter; the rows it touched.
  long run(const char* name, const std::string& value) {
    const char* values[] = {value.c_str()};
    PGresult* r = PQexecPrepared(conn_, name, 1, values, nullptr, nullptr, 0);
    const long touched = std::atol(PQcmdTuples(r));
    check(r);
    return touched;
  }

 private:
  [[noreturn]] static void fail(const std::string& message) {
    throw std::runtime_error("libpq: " + message);
  }
  void check(PGresult* r) {
    const auto status = PQresultStatus(r);
    std::string message = PQresultErrorMessage(r);
    PQclear(r);
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) fail(message);
  }
  PGconn* conn_;
};

// The server's WAL syncs so far (pg_stat_wal, PostgreSQL 14+). A backend
// reports its counts when its connection closes, so read it after a run's
// connections are gone.
double walSyncsSoFar(const std::string& conninfo) {
  Raw c(conninfo);
  return static_cast<double>(c.count("SELECT wal_sync FROM pg_stat_wal"));
}

struct Config {
  std::string conninfo;
  std::size_t instances = 2000;
  std::size_t samples = 500;  // B2 and resume: completions timed one at a time
  int runs = 5;
  std::string only;  // one part ("b1", "b2", "b3", "hosts", "resume"); empty: all
};

struct Sample {
  double perSecond = 0;
  double commitsPerCompletion = 0;
  double roundTripsPerCompletion = 0;
  // Where the CPU went, in µs per completion: the engine's processes (this
  // one, or the host processes), and the rest of the machine's busy time,
  // which is the server's (nothing else runs); and how busy the cores were.
  double clientMicros = 0;
  double serverMicros = 0;
  double busyPercent = 0;
  // The server's WAL syncs (fdatasync) per completion, from pg_stat_wal: below
  // 1 when it flushes several transactions' commits at once (group commit).
  double walSyncs = 0;
};

// CPU seconds this process has used (user + system), from getrusage().
double ownCpuSeconds() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// The machine's busy and total CPU time from /proc/stat, in seconds.
struct MachineCpu {
  double busy = 0;
  double total = 0;
};

MachineCpu machineCpu() {
  std::FILE* stat = std::fopen("/proc/stat", "r");
  if (stat == nullptr) return {};
  unsigned long long v[8] = {};
  const int read = std::fscanf(stat, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
                               &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]);
  std::fclose(stat);
  if (read != 8) return {};
  const double tick = static_cast<double>(::sysconf(_SC_CLK_TCK));
  const double idle = static_cast<double>(v[3] + v[4]);
  double total = 0;
  for (unsigned long long x : v) total += static_cast<double>(x);
  return MachineCpu{(total - idle) / tick, total / tick};
}

// Fills in `sample`'s CPU figures for `n` completions, from the machine's CPU
// over the run and the engine processes' own CPU in it.
void accountCpu(Sample& sample, const MachineCpu& before, const MachineCpu& after,
                double clientSeconds, double n) {
  const double busy = after.busy - before.busy;
  const double total = after.total - before.total;
  sample.clientMicros = clientSeconds / n * 1e6;
  sample.serverMicros = std::max(0.0, busy - clientSeconds) / n * 1e6;
  sample.busyPercent = total > 0 ? 100 * busy / total : 0;
}

const char* kSchema = "asyncflow_bench_b1";

void dropSchema(const Config& config, const std::string& schema) {
  Raw setup(config.conninfo);
  setup.exec(fmt::format("DROP SCHEMA IF EXISTS {} CASCADE", schema));
}

std::shared_ptr<CountingStore> openStore(const Config& config, const std::string& schema,
                                         std::size_t pool) {
  PostgresOptions options;
  options.schema = schema;
  options.poolSize = pool;
  std::shared_ptr<Store> opened = orThrow(PostgresStore::open(config.conninfo, options), "open");
  return std::make_shared<CountingStore>(std::move(opened));
}

// A fresh table of `count` rows waiting at run 1, for the raw transactions.
void prepareRawTable(const Config& config, std::size_t count) {
  Raw setup(config.conninfo);
  setup.exec("DROP TABLE IF EXISTS asyncflow_bench_raw");
  setup.exec(
      "CREATE TABLE asyncflow_bench_raw (instance_id bigint, run bigint, status text NOT NULL, "
      "PRIMARY KEY (instance_id, run))");
  setup.exec(fmt::format(
      "INSERT INTO asyncflow_bench_raw SELECT i, 1, 'Waiting' FROM generate_series(1, {}) i",
      count));
  setup.exec("VACUUM ANALYZE asyncflow_bench_raw");
}

void prepareRawStatements(Raw& c) {
  c.prepare("done",
            "UPDATE asyncflow_bench_raw SET status = 'Completed' "
            "WHERE instance_id = $1 AND run = 1 AND status = 'Waiting'");
  c.prepare("next", "INSERT INTO asyncflow_bench_raw VALUES ($1, 2, 'Ready')");
}

// B1's raw completion: one transaction, four round trips.
void rawCompletion(Raw& c, std::size_t instance, const char* notify = nullptr) {
  const std::string id = std::to_string(instance);
  c.exec("BEGIN");
  if (c.run("done", id) != 1) throw std::runtime_error("raw: row " + id + " not waiting");
  c.run("next", id);
  if (notify != nullptr) c.exec(notify);
  c.exec("COMMIT");
}

// p50 and p99 in microseconds, with round trips per completion.
struct Latency {
  double p50 = 0;
  double p99 = 0;
  double roundTrips = 0;
};

std::int64_t wallMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}
Sample engineRun(const Config& config, unsigned threads);

// engineRun() with the WAL syncs of its completions (the store closes its
// connections first, so that their counts are reported).
Sample engineRunWithSyncs(const Config& config, unsigned threads, double& syncsBefore);

Sample engineRun(const Config& config, unsigned threads) {
  double syncsBefore = 0;
  Sample sample = engineRunWithSyncs(config, threads, syncsBefore);
  sample.walSyncs =
      (walSyncsSoFar(config.conninfo) - syncsBefore) / static_cast<double>(config.instances);
  return sample;
}

Sample engineRunWithSyncs(const Config& config, unsigned threads, double& syncsBefore) {
  {
    Raw setup(config.conninfo);
    setup.exec(fmt::format("DROP SCHEMA IF EXISTS {} CASCADE", kSchema));
  }
  PostgresOptions options;
  options.schema = kSchema;
  options.poolSize = threads + 1;
  std::shared_ptr<Store> opened = orThrow(PostgresStore::open(config.conninfo, options), "open");
  auto store = std::make_shared<CountingStore>(std::move(opened));
  Engine engine(store, engineOptions(0));
  orThrow(engine.define(waitProcess()), "define Order");
  for (std::size_t i = 0; i < config.instances; ++i) {
    orThrow(engine.start("Order", orderFields()), "start");
  }
  const std::vector<std::string> serials = waitingSerials(engine);
  const std::uint64_t applies = store->applies();
  const std::uint64_t trips = detail::pg::roundTrips();
  syncsBefore = walSyncsSoFar(config.conninfo);
  const MachineCpu machineBefore = machineCpu();
  const double ownBefore = ownCpuSeconds();
  const double seconds = timeOnThreads(threads, [&](unsigned thread) {
    const Share share = shareOf(serials.size(), threads, thread);
    for (std::size_t i = share.begin; i < share.end; ++i) {
      orThrow(engine.completeServerEvent(serials[i]), "completeServerEvent");
    }
  });
  const double own = ownCpuSeconds() - ownBefore;
  const MachineCpu machineAfter = machineCpu();
  const double n = static_cast<double>(serials.size());
  Sample sample{n / seconds, static_cast<double>(store->applies() - applies) / n,
                static_cast<double>(detail::pg::roundTrips() - trips) / n};
  accountCpu(sample, machineBefore, machineAfter, own, n);
  expectNoneWaiting(engine);
  return sample;
}

Sample rawRun(const Config& config, unsigned threads) {
  prepareRawTable(config, config.instances);
  const double syncsBefore = walSyncsSoFar(config.conninfo);
  std::vector<std::unique_ptr<Raw>> connections;
  for (unsigned i = 0; i < threads; ++i) {
    auto c = std::make_unique<Raw>(config.conninfo);
    prepareRawStatements(*c);
    connections.push_back(std::move(c));
  }
  const MachineCpu machineBefore = machineCpu();
  const double ownBefore = ownCpuSeconds();
  const double seconds = timeOnThreads(threads, [&](unsigned thread) {
    Raw& c = *connections[thread];
    const Share share = shareOf(config.instances, threads, thread);
    for (std::size_t i = share.begin; i < share.end; ++i) rawCompletion(c, i + 1);
  });
  const double own = ownCpuSeconds() - ownBefore;
  const MachineCpu machineAfter = machineCpu();
  const double n = static_cast<double>(config.instances);
  Sample sample{n / seconds, 1, 4};
  accountCpu(sample, machineBefore, machineAfter, own, n);
  connections.clear();
  sample.walSyncs = (walSyncsSoFar(config.conninfo) - syncsBefore) / n;
  return sample;
}

// --- B2 -----------------------------------------------------------------------------------

Latency engineLatency(const Config& config, std::size_t workers) {
  dropSchema(config, kSchema);
  HandlerProbe probe;  // outlives the engine, whose handler calls it
  auto store = openStore(config, kSchema, 3);
  Engine engine(store, engineOptions(workers));
  orThrow(engine.define(cycleProcess({}, [&probe] { probe.arrive(); })), "define Cycle");
  for (std::size_t i = 0; i < config.samples; ++i) {
    orThrow(engine.start("Cycle", orderFields()), "start");
  }
  engine.waitIdle();  // with workers, the starts' handlers run after start() returned
  const std::vector<std::string> serials = waitingSerials(engine);
  if (serials.size() != config.samples) throw std::runtime_error("B2: not every instance waits");
  std::vector<double> micros;
  const std::uint64_t trips = detail::pg::roundTrips();
  for (const std::string& serial : serials) {
    const SteadyClock::time_point called = SteadyClock::now();
    orThrow(engine.completeServerEvent(serial), "completeServerEvent");
    micros.push_back(microsBetween(called, probe.awaitArrival()));
    engine.waitIdle();
  }
  expectNoneWaiting(engine);
  const double n = static_cast<double>(serials.size());
  return Latency{percentile(micros, 50), percentile(micros, 99),
                 static_cast<double>(detail::pg::roundTrips() - trips) / n};
}

Latency rawLatency(const Config& config) {
  prepareRawTable(config, config.samples);
  Raw c(config.conninfo);
  prepareRawStatements(c);
  std::vector<double> micros;
  for (std::size_t i = 1; i <= config.samples; ++i) {
    const SteadyClock::time_point began = SteadyClock::now();
    rawCompletion(c, i);
    micros.push_back(microsBetween(began, SteadyClock::now()));
  }
  return Latency{percentile(micros, 50), percentile(micros, 99), 4};
}

// --- B3 -----------------------------------------------------------------------------------

struct CycleRate {
  double perSecond = 0;
  double commitsPerCycle = 0;
  double roundTripsPerCycle = 0;
};

CycleRate engineCycles(const Config& config) {
  dropSchema(config, kSchema);
  std::string serial;  // the "external system": remembers the serial it was handed
  auto store = openStore(config, kSchema, 2);
  Engine engine(store, engineOptions(0));
  orThrow(engine.define(cycleProcess([&serial](const std::string& s) { serial = s; })),
          "define Cycle");
  const std::uint64_t applies = store->applies();
  const std::uint64_t trips = detail::pg::roundTrips();
  const SteadyClock::time_point began = SteadyClock::now();
  for (std::size_t i = 0; i < config.instances; ++i) {
    orThrow(engine.start("Cycle", orderFields()), "start Cycle");
    orThrow(engine.completeServerEvent(serial), "completeServerEvent");
  }
  const double seconds = secondsSince(began);
  expectNoneWaiting(engine);
  const double n = static_cast<double>(config.instances);
  return CycleRate{n / seconds, static_cast<double>(store->applies() - applies) / n,
                   static_cast<double>(detail::pg::roundTrips() - trips) / n};
}

double rawCycleBound(const Config& config, double commitsPerCycle) {
  Raw c(config.conninfo);
  c.exec("DROP TABLE IF EXISTS asyncflow_bench_rows");
  c.exec("CREATE TABLE asyncflow_bench_rows (id bigserial PRIMARY KEY, payload text NOT NULL)");
  c.prepare("row", "INSERT INTO asyncflow_bench_rows (payload) VALUES ($1)");
  const auto commits = static_cast<std::size_t>(
      std::llround(static_cast<double>(config.instances) * commitsPerCycle));
  const SteadyClock::time_point began = SteadyClock::now();
  for (std::size_t i = 0; i < commits; ++i) c.run("row", "payload");
  const double commitsPerSecond = static_cast<double>(commits) / secondsSince(began);
  c.exec("DROP TABLE asyncflow_bench_rows");
  return commitsPerSecond / commitsPerCycle;
}

// Starts `count` instances of `process` on a fresh `schema` (an engine of its
// own, inline, no timer) and returns their serials once each waits.
std::vector<std::string> startWaiting(const Config& config, const char* schema,
                                      const Process& process, std::size_t count,
                                      const Fields& fields = {}) {
  dropSchema(config, schema);
  auto store = openStore(config, schema, 2);
  EngineOptions options = engineOptions(0);
  options.timerThread = false;
  Engine engine(store, options);
  orThrow(engine.define(process), "define " + process.name());
  for (std::size_t i = 0; i < count; ++i) orThrow(engine.start(process.name(), fields), "start");
  return waitingSerials(engine);
}

// --- host processes -----------------------------------------------------------------------

// This program re-executed as a host: `in` is its stdin, `out` its stdout.
struct HostProcess {
  pid_t pid = -1;
  std::FILE* in = nullptr;
  std::FILE* out = nullptr;
};

HostProcess spawnHost(const std::vector<std::string>& args) {
  int toChild[2];
  int fromChild[2];
  if (::pipe(toChild) != 0 || ::pipe(fromChild) != 0) throw std::runtime_error("pipe failed");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, toChild[0], STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, fromChild[1], STDOUT_FILENO);
  for (int fd : {toChild[0], toChild[1], fromChild[0], fromChild[1]}) {
    posix_spawn_file_actions_addclose(&actions, fd);
  }
  std::vector<std::string> argv = {"/proc/self/exe"};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> raw;
  for (std::string& arg : argv) raw.push_back(arg.data());
  raw.push_back(nullptr);
  HostProcess host;
  const int spawned =
      posix_spawn(&host.pid, "/proc/self/exe", &actions, nullptr, raw.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(toChild[0]);
  ::close(fromChild[1]);
  if (spawned != 0) throw std::runtime_error("posix_spawn failed");
  host.in = ::fdopen(toChild[1], "w");
  host.out = ::fdopen(fromChild[0], "r");
  return host;
}

std::string readLine(std::FILE* from) {
  std::string line;
  for (int c = std::fgetc(from); c != '\n'; c = std::fgetc(from)) {
    if (c == EOF) throw std::runtime_error("a host process ended early");
    line += static_cast<char>(c);
  }
  return line;
}

void writeLine(std::FILE* to, const std::string& line) {
  std::fputs((line + "\n").c_str(), to);
  std::fflush(to);
}

void awaitHost(HostProcess& host) {
  std::fclose(host.in);
  std::fclose(host.out);
  int status = 0;
  ::waitpid(host.pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw std::runtime_error("a host process failed");
  }
}

const char* kHostsSchema = "asyncflow_bench_hosts";
constexpr unsigned kHostThreads = 2;

// A host of the hosts figure: reads its serials (one per line, then an empty
// line), opens the store and defines the process, says "ready", waits for "go",
// completes them on kHostThreads threads, and says "done <applies> <round trips>".
int hostMain(const Config& config) {
  std::vector<std::string> serials;
  for (std::string line = readLine(stdin); !line.empty(); line = readLine(stdin)) {
    serials.push_back(line);
  }
  auto store = openStore(config, kHostsSchema, kHostThreads + 1);
  EngineOptions options = engineOptions(0);
  options.timerThread = false;
  Engine engine(store, options);
  orThrow(engine.define(waitProcess()), "define Order");
  writeLine(stdout, "ready");
  if (readLine(stdin) != "go") return 1;
  const std::uint64_t applies = store->applies();
  const std::uint64_t trips = detail::pg::roundTrips();
  const double cpu = ownCpuSeconds();
  timeOnThreads(kHostThreads, [&](unsigned thread) {
    const Share share = shareOf(serials.size(), kHostThreads, thread);
    for (std::size_t i = share.begin; i < share.end; ++i) {
      orThrow(engine.completeServerEvent(serials[i]), "completeServerEvent");
    }
  });
  writeLine(stdout, fmt::format("done {} {} {:.6f}", store->applies() - applies,
                                detail::pg::roundTrips() - trips, ownCpuSeconds() - cpu));
  return 0;
}

Sample hostsRun(const Config& config, unsigned hosts) {
  const std::vector<std::string> serials =
      startWaiting(config, kHostsSchema, waitProcess(), config.instances, orderFields());
  std::vector<HostProcess> children;
  for (unsigned h = 0; h < hosts; ++h) {
    children.push_back(spawnHost({"host"}));
    const Share share = shareOf(serials.size(), hosts, h);
    for (std::size_t i = share.begin; i < share.end; ++i) writeLine(children.back().in, serials[i]);
    writeLine(children.back().in, "");
  }
  for (HostProcess& child : children) {
    if (readLine(child.out) != "ready") throw std::runtime_error("a host is not ready");
  }
  const double syncsBefore = walSyncsSoFar(config.conninfo);
  const MachineCpu machineBefore = machineCpu();
  const SteadyClock::time_point began = SteadyClock::now();
  for (HostProcess& child : children) writeLine(child.in, "go");
  double applies = 0;
  double trips = 0;
  double hostsCpu = 0;
  for (HostProcess& child : children) {
    unsigned long long a = 0;
    unsigned long long t = 0;
    double cpu = 0;
    if (std::sscanf(readLine(child.out).c_str(), "done %llu %llu %lf", &a, &t, &cpu) != 3) {
      throw std::runtime_error("a host did not finish");
    }
    applies += static_cast<double>(a);
    trips += static_cast<double>(t);
    hostsCpu += cpu;
  }
  const double seconds = secondsSince(began);
  const MachineCpu machineAfter = machineCpu();
  for (HostProcess& child : children) awaitHost(child);
  const double walSyncsAfterHosts = walSyncsSoFar(config.conninfo);
  {
    auto store = openStore(config, kHostsSchema, 1);
    Engine engine(store, engineOptions(0));
    expectNoneWaiting(engine);
  }
  const double n = static_cast<double>(serials.size());
  Sample sample{n / seconds, applies / n, trips / n};
  accountCpu(sample, machineBefore, machineAfter, hostsCpu, n);
  sample.walSyncs = (walSyncsAfterHosts - syncsBefore) / n;
  return sample;
}

// --- resume by another host ---------------------------------------------------------------

const char* kResumeSchema = "asyncflow_bench_resume";

// "Resume": an async step, then a sync step whose handler gets the field SentAt.
Process resumeProcess(std::function<void(std::int64_t)> onWork) {
  Process process("Resume", 1);
  process.field("SentAt", Type::Int64)
      .step(AsyncStep("Wait", [](AsyncStepContext&) { return StartOutcome::wait(); }))
      .step(Step("Work", [onWork = std::move(onWork)](StepContext& ctx) {
        if (onWork) onWork(ctx.fields().getOr<std::int64_t>("SentAt", 0));
        return StepOutcome::next();
      }));
  return process;
}

// The host that defines "Resume": says "ready", then "latency <micros>" as each
// Work step starts, and exits once `samples` have.
int resumeHostMain(const Config& config) {
  std::mutex mutex;
  std::condition_variable done;
  std::size_t seen = 0;
  auto store = openStore(config, kResumeSchema, 3);
  EngineOptions options = engineOptions(2);
  options.timerThread = true;  // with the store's NOTIFY watch: woken by the other host
  Engine engine(store, options);
  orThrow(engine.define(resumeProcess([&](std::int64_t sentAt) {
    const std::int64_t now = wallMicros();  // first: what the figure measures
    std::lock_guard lock(mutex);
    writeLine(stdout, fmt::format("latency {}", now - sentAt));
    ++seen;
    done.notify_one();
  })),
          "define Resume");
  writeLine(stdout, "ready");
  std::unique_lock lock(mutex);
  done.wait(lock, [&] { return seen >= config.samples; });
  lock.unlock();
  engine.waitIdle();
  return 0;
}

Latency engineResume(const Config& config) {
  const std::vector<std::string> serials =
      startWaiting(config, kResumeSchema, resumeProcess({}), config.samples);
  HostProcess other = spawnHost({"resume-host", "--samples", std::to_string(config.samples)});
  if (readLine(other.out) != "ready") throw std::runtime_error("the resuming host is not ready");
  // This host does not define "Resume": a completion is recorded here and run there.
  auto store = openStore(config, kResumeSchema, 2);
  EngineOptions options = engineOptions(0);
  options.timerThread = false;
  Engine engine(store, options);
  std::vector<double> micros;
  const std::uint64_t trips = detail::pg::roundTrips();
  for (const std::string& serial : serials) {
    orThrow(engine.completeServerEvent(serial, {{"SentAt", wallMicros()}}), "completeServerEvent");
    long long latency = 0;
    if (std::sscanf(readLine(other.out).c_str(), "latency %lld", &latency) != 1) {
      throw std::runtime_error("the resuming host said something else");
    }
    micros.push_back(static_cast<double>(latency));
  }
  const double n = static_cast<double>(serials.size());
  const double perCompletion = static_cast<double>(detail::pg::roundTrips() - trips) / n;
  awaitHost(other);
  return Latency{percentile(micros, 50), percentile(micros, 99), perCompletion};
}

// Raw: a completion transaction with a NOTIFY, timed until a connection that
// LISTENs, in another thread, has it.
Latency rawResume(const Config& config) {
  prepareRawTable(config, config.samples);
  Raw writer(config.conninfo);
  prepareRawStatements(writer);
  Raw listener(config.conninfo);
  listener.exec("LISTEN asyncflow_bench");
  HandlerProbe probe;
  std::atomic<bool> stop{false};
  std::thread listening([&] {
    PGconn* conn = listener.connection();
    while (!stop.load()) {
      pollfd fd{PQsocket(conn), POLLIN, 0};
      if (::poll(&fd, 1, 50) <= 0) continue;
      PQconsumeInput(conn);
      while (PGnotify* notify = PQnotifies(conn)) {
        PQfreemem(notify);
        probe.arrive();
      }
    }
  });
  std::vector<double> micros;
  for (std::size_t i = 1; i <= config.samples; ++i) {
    const SteadyClock::time_point began = SteadyClock::now();
    rawCompletion(writer, i, "NOTIFY asyncflow_bench");
    micros.push_back(microsBetween(began, probe.awaitArrival()));
  }
  stop = true;
  listening.join();
  return Latency{percentile(micros, 50), percentile(micros, 99), 5};
}

bool wanted(const Config& config, const char* part) {
  return config.only.empty() || config.only == part;
}

// Medians of the CPU figures of `samples`, as a table's last three cells.
std::string cpuCells(const std::vector<Sample>& samples) {
  std::vector<double> client, server, busy, syncs;
  for (const Sample& sample : samples) {
    client.push_back(sample.clientMicros);
    server.push_back(sample.serverMicros);
    busy.push_back(sample.busyPercent);
    syncs.push_back(sample.walSyncs);
  }
  return fmt::format("{:.0f} | {:.0f} | {:.0f}% | {:.2f}", median(client), median(server),
                     median(busy), median(syncs));
}

void runB1(const Config& config) {
  std::cout
      << "| figure | engine | raw libpq | ratio | commits/completion | round trips/completion "
         "(engine; raw 4) | engine CPU µs/completion | server CPU µs/completion | cores busy "
         "| WAL syncs/completion |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n";
  double rawOneThread = 0;
  for (unsigned threads : {1u, 8u}) {
    std::vector<double> engine, raw, commits, trips;
    std::vector<Sample> samples, rawSamples;
    for (int r = 0; r < config.runs; ++r) {
      const Sample sample = engineRun(config, threads);
      samples.push_back(sample);
      engine.push_back(sample.perSecond);
      commits.push_back(sample.commitsPerCompletion);
      trips.push_back(sample.roundTripsPerCompletion);
      rawSamples.push_back(rawRun(config, threads));
      raw.push_back(rawSamples.back().perSecond);
      std::cerr << fmt::format("  B1 {} thread(s), run {}: engine {:.0f}/s, raw {:.0f}/s\n",
                               threads, r + 1, engine.back(), raw.back());
    }
    const double e = median(engine);
    const double w = median(raw);
    if (threads == 1) rawOneThread = w;
    std::cout << fmt::format(
        "| B1 completions/s, {} thread{} | {:.0f} | {:.0f} | {:.2f}x | {:.2f} | {:.2f} | {} |\n"
        "| raw libpq, the same | | | | 1.00 | 4.00 | {} |\n",
        threads, threads == 1 ? "" : "s", e, w, e / w, median(commits), median(trips),
        cpuCells(samples), cpuCells(rawSamples));
    if (threads == 8) {
      std::cout << fmt::format("\nB1 8 threads against raw's 1-thread rate: {:.2f}x\n\n",
                               e / rawOneThread);
    }
  }
}

// A latency row: medians over the runs of each run's p50 and p99.
void printLatency(const std::string& figure, const std::vector<Latency>& engine,
                  const std::vector<Latency>& raw) {
  auto medianOf = [](const std::vector<Latency>& runs, double Latency::*field) {
    std::vector<double> values;
    for (const Latency& l : runs) values.push_back(l.*field);
    return median(values);
  };
  const double e50 = medianOf(engine, &Latency::p50);
  const double w50 = medianOf(raw, &Latency::p50);
  std::cout << fmt::format(
      "| {} | {:.0f} / {:.0f} µs | {:.0f} / {:.0f} µs | {:.1f}x | {:.2f} | {:.0f} |\n", figure, e50,
      medianOf(engine, &Latency::p99), w50, medianOf(raw, &Latency::p99), e50 / w50,
      medianOf(engine, &Latency::roundTrips), medianOf(raw, &Latency::roundTrips));
}

void runB2(const Config& config) {
  std::cout << "| figure | engine p50 / p99 | raw libpq p50 / p99 | p50 ratio | engine round "
               "trips/completion | raw round trips |\n|---|--:|--:|--:|--:|--:|\n";
  for (std::size_t workers : {std::size_t{2}, std::size_t{0}}) {
    std::vector<Latency> engine, raw;
    for (int r = 0; r < config.runs; ++r) {
      engine.push_back(engineLatency(config, workers));
      raw.push_back(rawLatency(config));
      std::cerr << fmt::format("  B2 {} workers, run {}: engine p50 {:.0f} µs, raw p50 {:.0f} µs\n",
                               workers, r + 1, engine.back().p50, raw.back().p50);
    }
    printLatency(workers == 0 ? "B2 completion to next step, inline"
                              : "B2 completion to next step, pool (2 workers)",
                 engine, raw);
  }
  std::cout << "\n";
}

void runB3(const Config& config) {
  std::cout << "| figure | engine | raw bound | ratio | commits/cycle | round trips/cycle (engine; "
               "raw 1 per commit) |\n|---|--:|--:|--:|--:|--:|\n";
  std::vector<double> engine, raw, commits, trips;
  for (int r = 0; r < config.runs; ++r) {
    const CycleRate rate = engineCycles(config);
    engine.push_back(rate.perSecond);
    commits.push_back(rate.commitsPerCycle);
    trips.push_back(rate.roundTripsPerCycle);
    raw.push_back(rawCycleBound(config, rate.commitsPerCycle));
    std::cerr << fmt::format("  B3 run {}: engine {:.0f}/s, raw bound {:.0f}/s\n", r + 1,
                             engine.back(), raw.back());
  }
  std::cout << fmt::format(
      "| B3 cycles/s, 1 thread | {:.0f} | {:.0f} | {:.2f}x | {:.2f} | {:.2f} |\n\n", median(engine),
      median(raw), median(engine) / median(raw), median(commits), median(trips));
}

void runHosts(const Config& config) {
  std::cout << fmt::format(
      "| figure | engine | raw libpq (hosts x {} connections, one process) | ratio | "
      "commits/completion | round trips/completion | engine against 1 host | hosts' CPU "
      "µs/completion | server CPU µs/completion | cores busy | WAL syncs/completion |\n"
      "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
      kHostThreads);
  double oneHost = 0;
  for (unsigned hosts : {1u, 2u, 4u}) {
    std::vector<double> engine, raw, commits, trips;
    std::vector<Sample> samples;
    for (int r = 0; r < config.runs; ++r) {
      const Sample sample = hostsRun(config, hosts);
      samples.push_back(sample);
      engine.push_back(sample.perSecond);
      commits.push_back(sample.commitsPerCompletion);
      trips.push_back(sample.roundTripsPerCompletion);
      raw.push_back(rawRun(config, hosts * kHostThreads).perSecond);
      std::cerr << fmt::format("  {} host(s), run {}: engine {:.0f}/s, raw {:.0f}/s\n", hosts,
                               r + 1, engine.back(), raw.back());
    }
    const double e = median(engine);
    if (hosts == 1) oneHost = e;
    std::cout << fmt::format(
        "| completions/s, {} host process{} x {} threads | {:.0f} | {:.0f} | {:.2f}x | {:.2f} | "
        "{:.2f} | {:.2f}x | {} |\n",
        hosts, hosts == 1 ? "" : "es", kHostThreads, e, median(raw), e / median(raw),
        median(commits), median(trips), e / oneHost, cpuCells(samples));
  }
  std::cout << "\n";
  dropSchema(config, kHostsSchema);
}

void runResume(const Config& config) {
  std::cout
      << "| figure | engine p50 / p99 | raw libpq p50 / p99 | p50 ratio | engine round "
         "trips/completion (completing host) | raw round trips |\n|---|--:|--:|--:|--:|--:|\n";
  std::vector<Latency> engine, raw;
  for (int r = 0; r < config.runs; ++r) {
    engine.push_back(engineResume(config));
    raw.push_back(rawResume(config));
    std::cerr << fmt::format(
        "  resume run {}: engine p50 {:.0f} µs p99 {:.0f} µs, raw p50 {:.0f} µs\n", r + 1,
        engine.back().p50, engine.back().p99, raw.back().p50);
  }
  printLatency("resume by another host: completion to its next step", engine, raw);
  std::cout << "\n";
  dropSchema(config, kResumeSchema);
}

int run(const Config& config) {
  std::cout << fmt::format(
      "asyncflow on PostgreSQL beside raw libpq: {} instances (B1, B3, hosts), {} timed "
      "completions (B2, resume), medians of {} runs (engine, then raw, in each run)\n\n",
      config.instances, config.samples, config.runs);
  if (wanted(config, "b1")) runB1(config);
  if (wanted(config, "b2")) runB2(config);
  if (wanted(config, "b3")) runB3(config);
  if (wanted(config, "hosts")) runHosts(config);
  if (wanted(config, "resume")) runResume(config);
  Raw cleanup(config.conninfo);
  cleanup.exec(fmt::format("DROP SCHEMA IF EXISTS {} CASCADE", kSchema));
  cleanup.exec("DROP TABLE IF EXISTS asyncflow_bench_raw");
  return 0;
}

}  // namespace
}  // namespace asyncflow::bench

int main(int argc, char** argv) {
  asyncflow::bench::Config config;
  if (const char* conninfo = std::getenv("ASYNCFLOW_TEST_POSTGRES")) config.conninfo = conninfo;
  std::string mode;  // "host" or "resume-host": a host process of the figures above
  int first = 1;
  if (argc > 1 && argv[1][0] != '-') {
    mode = argv[1];
    first = 2;
  }
  for (int i = first; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--instances") {
      config.instances = std::stoul(argv[i + 1]);
    } else if (flag == "--samples") {
      config.samples = std::stoul(argv[i + 1]);
    } else if (flag == "--runs") {
      config.runs = std::stoi(argv[i + 1]);
    } else if (flag == "--only") {
      config.only = argv[i + 1];
    } else {
      std::cerr << "usage: asyncflow_pg_bench [--instances N] [--samples S] [--runs R] "
                   "[--only b1|b2|b3|hosts|resume]\n";
      return 2;
    }
  }
  if (config.conninfo.empty()) {
    std::cerr << "asyncflow_pg_bench: set ASYNCFLOW_TEST_POSTGRES to a libpq conninfo\n";
    return 2;
  }
  try {
    if (mode == "host") return asyncflow::bench::hostMain(config);
    if (mode == "resume-host") return asyncflow::bench::resumeHostMain(config);
    if (!mode.empty()) {
      std::cerr << "asyncflow_pg_bench: unknown mode " << mode << "\n";
      return 2;
    }
    return asyncflow::bench::run(config);
  } catch (const std::exception& e) {
    std::cerr << "asyncflow_pg_bench: " << e.what() << "\n";
    return 1;
  }
}
