// wait_and_resume: a process whose middle step hands its serial to an external
// system and waits; the external system later completes it with data fields, and
// the process continues at once.
//
//   Validate (step) -> SubmitToErp (async step: waits) -> Notify (step)
//
// The "ERP" is simulated by a thread with a job queue. It answers the outbound
// call at once (a ticket number), works on the order, then calls
// engine.completeServerEvent(serial, fields) like a real system would call the
// REST endpoint.
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>

#include <unistd.h>

#include <asyncflow/asyncflow.hpp>

namespace {

using namespace asyncflow;

std::mutex printMutex;
template <class... Parts>
void say(const Parts&... parts) {
  std::lock_guard lock(printMutex);
  (std::cout << ... << parts) << std::endl;
}

// The simulated external system: accepts jobs (serial + order) and finishes
// each one later by calling back into the engine.
class Erp {
 public:
  struct Response {
    bool accepted = false;
    std::string ticket;
  };

  // The outbound call an async step makes. Returns at once, like an HTTP 202.
  Response submit(const std::string& serial, const std::string& orderId) {
    std::lock_guard lock(mutex_);
    jobs_.push_back(Job{serial, orderId});
    ready_.notify_one();
    return Response{true, "ERP-" + std::to_string(1000 + jobs_.size())};
  }

  // Works off one job: decides, then completes the waiting step with fields.
  void runOneJob(Engine& engine) {
    Job job;
    {
      std::unique_lock lock(mutex_);
      ready_.wait(lock, [this] { return !jobs_.empty(); });
      job = jobs_.front();
      jobs_.pop_front();
    }
    say("  [erp]    processed order ", job.orderId, "; calling completeServerEvent(\"", job.serial,
        "\")");
    auto done = engine.completeServerEvent(job.serial,
                                           {{"Status", "Approved"}, {"ApprovedBy", "erp-batch"}});
    if (!done) say("  [erp]    completion refused: ", done.error().toString());
  }

 private:
  struct Job {
    std::string serial;
    std::string orderId;
  };
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Job> jobs_;
};

void printState(Engine& engine, InstanceId id) {
  auto info = engine.instance(id);
  if (!info) {
    say("  [host]   instance ", id, ": ", info.error().toString());
    return;
  }
  say("  [host]   instance ", id, " is ", statusName(info->status), " at step '", info->currentStep,
      "' (", statusName(info->currentStepStatus), ")");
}

// The store: SQLite in a scratch file by default, or memory with --memory.
// A SQLite store lives in `path`, which the caller removes at the end.
std::shared_ptr<Store> openStore(int argc, char** argv, std::string& path) {
  if (argc > 1 && std::string(argv[1]) == "--memory") {
    say("[host] store: in memory");
    return std::make_shared<MemoryStore>();
  }
  path = (std::filesystem::temp_directory_path() /
          ("asyncflow_wait_and_resume_" + std::to_string(::getpid()) + ".db"))
             .string();
  auto store = SqliteStore::open(path);
  if (!store) {
    std::cerr << "cannot open " << path << ": " << store.error().toString() << "\n";
    return nullptr;
  }
  say("[host] store: SQLite at ", path);
  return std::move(*store);
}

}  // namespace

int main(int argc, char** argv) {
  Erp erp;
  std::string storePath;
  auto store = openStore(argc, argv, storePath);
  if (!store) return EXIT_FAILURE;
  Engine engine(store);

  Process order("OrderApproval", 1);
  order.field("OrderId", Type::String)
      .field("Amount", Type::Double, 0.0)
      .field("Status", Type::String, "Pending")
      .field("ErpTicket", Type::String)
      .field("ApprovedBy", Type::String)
      .step(Step("Validate",
                 [](StepContext& ctx) {
                   auto amount = ctx.fields().get<double>("Amount");
                   say("  [step]   Validate: order ",
                       ctx.fields().getOr<std::string>("OrderId", "?"), ", amount ",
                       amount.value_or(0.0));
                   if (!amount || *amount <= 0) return StepOutcome::fail("amount must be positive");
                   return StepOutcome::next();
                 }))
      .step(AsyncStep("SubmitToErp",
                      [&erp](AsyncStepContext& ctx) {
                        say("  [step]   SubmitToErp: handing serial ", ctx.serial(), " to the ERP");
                        auto response = erp.submit(ctx.serial(),
                                                   ctx.fields().getOr<std::string>("OrderId", ""));
                        // Use the outbound call's response before waiting.
                        ctx.fields().set("ErpTicket", response.ticket);
                        if (!response.accepted)
                          return StartOutcome::fail("the ERP refused the order");
                        say("  [step]   SubmitToErp: ERP answered ticket ", response.ticket,
                            "; waiting");
                        return StartOutcome::wait();
                      }))
      .step(Step("Notify", [](StepContext& ctx) {
        say("  [step]   Notify: order ", ctx.fields().getOr<std::string>("OrderId", "?"), " is ",
            ctx.fields().getOr<std::string>("Status", "?"), " (ticket ",
            ctx.fields().getOr<std::string>("ErpTicket", "?"), ", by ",
            ctx.fields().getOr<std::string>("ApprovedBy", "?"), ")");
        return StepOutcome::next();
      }));

  if (auto defined = engine.define(order); !defined) {
    std::cerr << "define failed: " << defined.error().toString() << "\n";
    return EXIT_FAILURE;
  }

  say("[host] starting OrderApproval for A-17");
  auto id = engine.start("OrderApproval", {{"OrderId", "A-17"}, {"Amount", 120.5}});
  if (!id) {
    std::cerr << "start failed: " << id.error().toString() << "\n";
    return EXIT_FAILURE;
  }
  printState(engine, *id);
  say("[host] the step is now only a record in the store; no thread waits for it");

  say("[erp] the external system finishes its work");
  std::thread external([&] { erp.runOneJob(engine); });
  external.join();

  printState(engine, *id);
  auto info = engine.instance(*id);
  const bool ok = info && info->status == InstanceStatus::Completed &&
                  info->fields.getOr<std::string>("Status", "") == "Approved";
  say(ok ? "[host] done: the process continued with the external system's fields"
         : "[host] unexpected final state");
  if (!storePath.empty()) {
    for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(storePath + suffix);
  }
  return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
