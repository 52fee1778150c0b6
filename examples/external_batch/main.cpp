// external_batch: the seed's scenario, as three runs of one program.
//
//   external_batch submit DIR   Run 1, the host: starts an OrderExport process
//                               whose async step writes its serial into the
//                               host's own table external_jobs (column SN) in
//                               DIR/host.db, then exits while the step waits.
//                               The wait is a row in DIR/workflows.db.
//   external_batch batch DIR    Run 2, the nightly batch system: reads the
//                               pending SN rows, does its work, and calls
//                               completeServerEvent(SN, fields). It defines
//                               nothing: the fields are checked against the
//                               declaration the host stored, and the step is
//                               finished for a host that defines the process.
//   external_batch resume DIR   Run 3, the host again: define() takes the
//                               finished instance over and it completes.
//
// Between the runs nothing is in memory: the OS process is gone. A host that
// runs all the time would take the instance over within its change check
// (EngineOptions::changeCheckInterval), without a run 3.
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include <SQLiteCpp/SQLiteCpp.h>
#include <asyncflow/asyncflow.hpp>

namespace {

using namespace asyncflow;

// The host's own database: the seed's SQL table of jobs for the external system.
class JobTable {
 public:
  explicit JobTable(const std::filesystem::path& path)
      : db_(path.string(), SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE) {
    db_.exec(
        "CREATE TABLE IF NOT EXISTS external_jobs ("
        "  SN TEXT PRIMARY KEY,"  // the step's serial number
        "  OrderId TEXT NOT NULL,"
        "  Status TEXT NOT NULL DEFAULT 'pending')");
  }

  void add(const std::string& serial, const std::string& orderId) {
    SQLite::Statement insert(db_, "INSERT INTO external_jobs (SN, OrderId) VALUES (?, ?)");
    insert.bind(1, serial);
    insert.bind(2, orderId);
    insert.exec();
  }

  struct Job {
    std::string serial;
    std::string orderId;
  };
  std::vector<Job> pending() {
    std::vector<Job> jobs;
    SQLite::Statement select(db_,
                             "SELECT SN, OrderId FROM external_jobs WHERE Status = 'pending' "
                             "ORDER BY rowid");
    while (select.executeStep()) {
      jobs.push_back(Job{select.getColumn(0).getString(), select.getColumn(1).getString()});
    }
    return jobs;
  }

  void markDone(const std::string& serial) {
    SQLite::Statement update(db_, "UPDATE external_jobs SET Status = 'done' WHERE SN = ?");
    update.bind(1, serial);
    update.exec();
  }

 private:
  SQLite::Database db_;
};

// The host's process: runs 1 and 3 define it; the batch system does not.
Process orderExport(JobTable& jobs) {
  Process p("OrderExport", 1);
  p.field("OrderId", Type::String)
      .field("ExportedRows", Type::Int64, 0)
      .field("BatchRun", Type::String)
      .step(AsyncStep("QueueForBatch",
                      [&jobs](AsyncStepContext& ctx) {
                        const std::string orderId = ctx.fields().getOr<std::string>("OrderId", "");
                        jobs.add(ctx.serial(), orderId);
                        std::cout << "  [step] QueueForBatch: wrote SN " << ctx.serial()
                                  << " for order " << orderId
                                  << " into external_jobs; waiting for the batch\n";
                        return StartOutcome::wait();
                      }))
      .step(Step("Report", [](StepContext& ctx) {
        std::cout << "  [step] Report: order " << ctx.fields().getOr<std::string>("OrderId", "?")
                  << " exported " << ctx.fields().getOr<std::int64_t>("ExportedRows", 0)
                  << " rows in batch run " << ctx.fields().getOr<std::string>("BatchRun", "?")
                  << "\n";
        return StepOutcome::next();
      }));
  return p;
}

void printInstance(Engine& engine, InstanceId id) {
  auto info = engine.instance(id);
  if (!info) {
    std::cout << "  instance " << id << ": " << info.error().toString() << "\n";
    return;
  }
  std::cout << "  instance " << id << " (" << info->process << " v" << info->processVersion
            << ") is " << statusName(info->status) << " at step '" << info->currentStep << "'";
  for (const auto& [name, value] : info->fields) {
    if (auto text = value.as<std::string>()) std::cout << ", " << name << "=" << *text;
    if (auto number = value.as<std::int64_t>()) std::cout << ", " << name << "=" << *number;
  }
  std::cout << "\n";
}

int submit(Engine& engine) {
  std::cout << "run 1 (host): starting OrderExport for order A-17\n";
  auto id = engine.start("OrderExport", {{"OrderId", "A-17"}});
  if (!id) {
    std::cerr << "start failed: " << id.error().toString() << "\n";
    return EXIT_FAILURE;
  }
  printInstance(engine, *id);
  std::cout << "run 1 (host): exiting; the waiting step is a row in workflows.db\n";
  return EXIT_SUCCESS;
}

int batch(Engine& engine, JobTable& jobs) {
  const auto pending = jobs.pending();
  std::cout << "run 2 (batch system): " << pending.size() << " pending job(s) in external_jobs\n";
  int failures = 0;
  for (const auto& job : pending) {
    // The batch's work: export the order, count the rows.
    const std::int64_t rows = 1000 + static_cast<std::int64_t>(job.orderId.size()) * 71;
    std::cout << "  [batch] exported order " << job.orderId << " (" << rows
              << " rows); completeServerEvent(\"" << job.serial << "\")\n";
    auto done =
        engine.completeServerEvent(job.serial, {{"ExportedRows", rows}, {"BatchRun", "nightly-1"}});
    if (!done) {
      std::cout << "  [batch] refused: " << done.error().toString() << "\n";
      ++failures;
      continue;
    }
    jobs.markDone(job.serial);
  }
  auto page = engine.waiting();
  if (page) std::cout << "run 2 (batch system): " << page->steps.size() << " step(s) still wait\n";
  for (InstanceId id = 1; engine.instance(id); ++id) printInstance(engine, id);
  std::cout << "run 2 (batch system): done; the host moves the finished steps on\n";
  return failures == 0 && !pending.empty() ? EXIT_SUCCESS : EXIT_FAILURE;
}

int resume(Engine& engine) {
  // define() ran the finished steps on, unless the timer thread took one first
  // (woken by a commit of another process): waitIdle() lets it finish.
  engine.waitIdle();
  std::cout << "run 3 (host): defined OrderExport again, which took over the finished steps\n";
  for (InstanceId id = 1; engine.instance(id); ++id) printInstance(engine, id);
  return EXIT_SUCCESS;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string modes[] = {"submit", "batch", "resume"};
  if (argc != 3 || std::find(std::begin(modes), std::end(modes), argv[1]) == std::end(modes)) {
    std::cerr << "usage: external_batch submit|batch|resume DIR\n";
    return 2;
  }
  const std::string mode = argv[1];
  const std::filesystem::path dir = argv[2];
  try {
    std::filesystem::create_directories(dir);
    JobTable jobs(dir / "host.db");
    auto store = SqliteStore::open((dir / "workflows.db").string());
    if (!store) {
      std::cerr << "cannot open the workflow store: " << store.error().toString() << "\n";
      return EXIT_FAILURE;
    }
    Engine engine(std::move(*store));
    if (mode == "batch") return batch(engine, jobs);  // completes serials, defines nothing
    if (auto defined = engine.define(orderExport(jobs)); !defined) {
      std::cerr << "define failed: " << defined.error().toString() << "\n";
      return EXIT_FAILURE;
    }
    return mode == "submit" ? submit(engine) : resume(engine);
  } catch (const std::exception& e) {  // the host's own SQLite table
    std::cerr << "host database error: " << e.what() << "\n";
    return EXIT_FAILURE;
  }
}
