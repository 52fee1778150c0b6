// asyncflow_pg_bench: B1 on PostgreSQL, the engine on PostgresStore beside raw
// libpq doing the same minimal durable work, on the same server in the same run.
//
//   ASYNCFLOW_TEST_POSTGRES=<conninfo> asyncflow_pg_bench [--instances N] [--runs R]
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
#include <cstdlib>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <libpq-fe.h>

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

struct Config {
  std::string conninfo;
  std::size_t instances = 2000;
  int runs = 5;
};

struct Sample {
  double perSecond = 0;
  double commitsPerCompletion = 0;
  double roundTripsPerCompletion = 0;
};

const char* kSchema = "asyncflow_bench_b1";

Sample engineRun(const Config& config, unsigned threads) {
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
  const double seconds = timeOnThreads(threads, [&](unsigned thread) {
    const Share share = shareOf(serials.size(), threads, thread);
    for (std::size_t i = share.begin; i < share.end; ++i) {
      orThrow(engine.completeServerEvent(serials[i]), "completeServerEvent");
    }
  });
  const double n = static_cast<double>(serials.size());
  Sample sample{n / seconds, static_cast<double>(store->applies() - applies) / n,
                static_cast<double>(detail::pg::roundTrips() - trips) / n};
  expectNoneWaiting(engine);
  return sample;
}

double rawRun(const Config& config, unsigned threads) {
  {
    Raw setup(config.conninfo);
    setup.exec("DROP TABLE IF EXISTS asyncflow_bench_raw");
    setup.exec(
        "CREATE TABLE asyncflow_bench_raw (instance_id bigint, run bigint, status text NOT NULL, "
        "PRIMARY KEY (instance_id, run))");
    setup.exec(fmt::format(
        "INSERT INTO asyncflow_bench_raw SELECT i, 1, 'Waiting' FROM generate_series(1, {}) i",
        config.instances));
    setup.exec("VACUUM ANALYZE asyncflow_bench_raw");
  }
  std::vector<std::unique_ptr<Raw>> connections;
  for (unsigned i = 0; i < threads; ++i) {
    auto c = std::make_unique<Raw>(config.conninfo);
    c->prepare("done",
               "UPDATE asyncflow_bench_raw SET status = 'Completed' "
               "WHERE instance_id = $1 AND run = 1 AND status = 'Waiting'");
    c->prepare("next", "INSERT INTO asyncflow_bench_raw VALUES ($1, 2, 'Ready')");
    connections.push_back(std::move(c));
  }
  const double seconds = timeOnThreads(threads, [&](unsigned thread) {
    Raw& c = *connections[thread];
    const Share share = shareOf(config.instances, threads, thread);
    for (std::size_t i = share.begin; i < share.end; ++i) {
      const std::string id = std::to_string(i + 1);
      c.exec("BEGIN");
      if (c.run("done", id) != 1) throw std::runtime_error("raw: row " + id + " not waiting");
      c.run("next", id);
      c.exec("COMMIT");
    }
  });
  return static_cast<double>(config.instances) / seconds;
}

int run(const Config& config) {
  std::cout << fmt::format(
      "B1 on PostgreSQL: {} instances, medians of {} runs (engine, then raw, in each run)\n\n",
      config.instances, config.runs);
  std::cout
      << "| figure | engine | raw libpq | ratio | commits/completion | round trips/completion "
         "(engine; raw 4) |\n|---|--:|--:|--:|--:|--:|\n";
  double rawOneThread = 0;
  for (unsigned threads : {1u, 8u}) {
    std::vector<double> engine, raw, commits, trips;
    for (int r = 0; r < config.runs; ++r) {
      const Sample sample = engineRun(config, threads);
      engine.push_back(sample.perSecond);
      commits.push_back(sample.commitsPerCompletion);
      trips.push_back(sample.roundTripsPerCompletion);
      raw.push_back(rawRun(config, threads));
      std::cerr << fmt::format("  {} thread(s), run {}: engine {:.0f}/s, raw {:.0f}/s\n", threads,
                               r + 1, engine.back(), raw.back());
    }
    const double e = median(engine);
    const double w = median(raw);
    if (threads == 1) rawOneThread = w;
    std::cout << fmt::format(
        "| B1 completions/s, {} thread{} | {:.0f} | {:.0f} | {:.2f}x | {:.2f} | {:.2f} |\n",
        threads, threads == 1 ? "" : "s", e, w, e / w, median(commits), median(trips));
    if (threads == 8) {
      std::cout << fmt::format("\nB1 8 threads against raw's 1-thread rate: {:.2f}x\n",
                               e / rawOneThread);
    }
  }
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
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--instances") {
      config.instances = std::stoul(argv[i + 1]);
    } else if (flag == "--runs") {
      config.runs = std::stoi(argv[i + 1]);
    } else {
      std::cerr << "usage: asyncflow_pg_bench [--instances N] [--runs R]\n";
      return 2;
    }
  }
  if (config.conninfo.empty()) {
    std::cerr << "asyncflow_pg_bench: set ASYNCFLOW_TEST_POSTGRES to a libpq conninfo\n";
    return 2;
  }
  try {
    return asyncflow::bench::run(config);
  } catch (const std::exception& e) {
    std::cerr << "asyncflow_pg_bench: " << e.what() << "\n";
    return 1;
  }
}
