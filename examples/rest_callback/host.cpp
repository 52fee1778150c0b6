// rest_callback_host: a host application with asyncflow on SQLite and the REST
// add-on mounted on its HTTP server. Its async step calls the external system
// (the example's rest_callback_erp) over HTTP with the step's serial and the
// callback URL, uses the HTTP response before it waits (the seed's forum
// question), and waits; the ERP later POSTs {callbackUrl}/finish, and the
// process completes.
//
//   Validate (step) -> SubmitToErp (async step: HTTP out, then wait) -> Record (step)
//
// Usage: rest_callback_host --erp URL|- [--order ID]... [--expect-refusal ID]...
//                           [--api-key KEY] [--db PATH] [--timeout SECONDS]
//   --erp -              read the ERP's address from its first output line on
//                        stdin (`rest_callback_erp | rest_callback_host --erp -`),
//                        relay its other lines, and stop it (POST /stop) at the end
//   --order ID           start a PurchaseOrder for ID (default: PO-1001)
//   --expect-refusal ID  also start ID, and expect the ERP to refuse it (HTTP
//                        500) so that its step and instance fail
//   --timeout SECONDS    how long to wait for the instances to end (default 30)
//
// Exits 0 when every instance ended as expected, 1 otherwise.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <iostream>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include <asyncflow/asyncflow.hpp>
#include <asyncflow/rest.hpp>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "loopback.hpp"

namespace {

using namespace asyncflow;
using nlohmann::json;
using rest_callback::splitUrl;

std::mutex printMutex;
template <class... Parts>
void say(const Parts&... parts) {
  std::lock_guard lock(printMutex);
  (std::cout << ... << parts) << std::endl;
}

std::string dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

const std::string kBasePath = "/api/workflow/v1";  // asyncflow::rest's default, K2's

struct Options {
  std::string erp;  // the ERP's URL, or "-"
  std::vector<std::string> orders;
  std::set<std::string> expectRefusal;
  std::string apiKey = "demo-key";  // a demo's key: a real host reads it from its secrets
  std::string db;                   // empty: a scratch file, removed at the end
  std::chrono::seconds timeout{30};
};

// What the SubmitToErp step needs to know; selfUrl is set once the server is bound.
struct Endpoints {
  std::string erpUrl;   // e.g. http://127.0.0.1:41234
  std::string selfUrl;  // e.g. http://127.0.0.1:40000
  std::string apiKey;
};

// The async step's start handler: the outbound REST call, and what it does with
// the answer before the step waits.
StartOutcome submitToErp(AsyncStepContext& ctx, const Endpoints& endpoints) {
  const std::string orderId = ctx.fields().getOr<std::string>("OrderId", "");
  const std::string callbackUrl = endpoints.selfUrl + kBasePath + "/serverEvents/" + ctx.serial();
  const json order = {
      {"serialNumber", ctx.serial()}, {"callbackUrl", callbackUrl}, {"orderId", orderId}};
  say("  [step]   SubmitToErp: POST ", endpoints.erpUrl, "/orders ", dump(order));

  httplib::Client client(endpoints.erpUrl);
  client.set_connection_timeout(std::chrono::seconds(2));
  client.set_read_timeout(std::chrono::seconds(10));
  auto response = client.Post("/orders", dump(order), "application/json");
  if (!response) {
    return StartOutcome::fail("ERP unreachable: " + httplib::to_string(response.error()));
  }

  // The seed's forum question: the HTTP response is the handler's to use. Its
  // field writes are stored with the step's outcome, before the wait begins.
  const int status = response->status;
  const std::string body = response->body.substr(0, 200);
  ctx.fields().set("ErpHttpStatus", std::int64_t{status});
  if (status < 200 || status > 299) {
    say("  [step]   SubmitToErp: ERP answered HTTP ", status, " ", body, "; failing the step");
    return StartOutcome::fail("ERP answered HTTP " + std::to_string(status) + ": " + body);
  }
  const json answer = json::parse(response->body, nullptr, /*allow_exceptions=*/false);
  if (!answer.is_object() || !answer.contains("ticket") || !answer["ticket"].is_string()) {
    return StartOutcome::fail("ERP answered HTTP " + std::to_string(status) +
                              " without a ticket: " + body);
  }
  ctx.fields().set("ErpTicket", answer["ticket"].get<std::string>());
  say("  [step]   SubmitToErp: ERP answered HTTP ", status, " ", body,
      "; ErpTicket=", answer["ticket"].get<std::string>(), "; waiting for ", callbackUrl,
      "/finish");
  // K2's "Try it out!": the same call the ERP makes, for a person with curl.
  say("  [step]   SubmitToErp: by hand: curl -X POST -H \"X-API-Key: ", endpoints.apiKey,
      "\" -H \"Content-Type: application/json\" -d '{\"dataFields\": {\"ApprovedBy\": "
      "\"you\", \"ErpStatus\": \"Approved\"}}' ",
      callbackUrl, "/finish");
  return StartOutcome::wait();
}

Process purchaseOrder(const Endpoints& endpoints) {
  Process p("PurchaseOrder", 1);
  p.field("OrderId", Type::String)
      .field("ErpHttpStatus", Type::Int64, 0)
      .field("ErpTicket", Type::String)
      .field("ErpStatus", Type::String, "Pending")
      .field("ApprovedBy", Type::String)
      .step(Step("Validate",
                 [](StepContext& ctx) {
                   const auto orderId = ctx.fields().getOr<std::string>("OrderId", "");
                   say("  [step]   Validate: order ", orderId);
                   if (orderId.empty()) return StepOutcome::fail("no OrderId");
                   return StepOutcome::next();
                 }))
      .step(AsyncStep("SubmitToErp",
                      [&endpoints](AsyncStepContext& ctx) { return submitToErp(ctx, endpoints); }))
      .step(Step("Record", [](StepContext& ctx) {
        say("  [step]   Record: order ", ctx.fields().getOr<std::string>("OrderId", "?"), " is ",
            ctx.fields().getOr<std::string>("ErpStatus", "?"), " by ",
            ctx.fields().getOr<std::string>("ApprovedBy", "?"), " (ticket ",
            ctx.fields().getOr<std::string>("ErpTicket", "?"), ")");
        return StepOutcome::next();
      }));
  return p;
}

// Tells the story of each instance from the engine's history, and lets main
// wait, without polling, until the instances it started have ended.
class Story : public Listener {
 public:
  void onEvent(const HistoryEvent& event) override {
    const auto id = event.instance;
    switch (event.kind) {
      case HistoryKind::Waiting:
        say("  [engine] instance ", id, " waits at '", event.step,
            "': a row in the store, no thread");
        break;
      case HistoryKind::CompletionRecorded:
        say("  [engine] instance ", id,
            ": the finish call came before the handler returned; "
            "recorded");
        break;
      case HistoryKind::StepCompleted:
        if (event.step == "SubmitToErp") {
          say("  [engine] instance ", id, ": '", event.step, "' finished (", event.detail, ")");
        }
        break;
      case HistoryKind::StepFailed:
        say("  [engine] instance ", id, ": '", event.step, "' failed: ", event.detail);
        break;
      case HistoryKind::Completed:
      case HistoryKind::Failed:
      case HistoryKind::Cancelled:
        say("  [engine] instance ", id, " ", historyKindName(event.kind));
        {
          std::lock_guard lock(mutex_);
          ended_.insert(id);
        }
        changed_.notify_all();
        break;
      default: break;
    }
  }

  // True when all of `ids` ended within `timeout`.
  bool waitForEnd(const std::vector<InstanceId>& ids, std::chrono::seconds timeout) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] {
      for (auto id : ids) {
        if (ended_.count(id) == 0) return false;
      }
      return true;
    });
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::set<InstanceId> ended_;
};

// The ERP of the pipeline form, `rest_callback_erp | rest_callback_host --erp -`:
// its stdout is our stdin. Its first line names its address, the others are
// relayed into our output until it exits (EOF).
class PipedErp {
 public:
  ~PipedErp() {
    if (!relay_.joinable()) return;
    if (state_->isEnded()) {
      relay_.join();
    } else {
      relay_.detach();  // blocked in a read, owning its state; the exit ends it
    }
  }

  // Reads up to the "[erp] listening on URL" line, then relays the other lines
  // on a thread. Returns the URL; empty when stdin ended before that line.
  std::string start() {
    const std::string marker = "listening on ";
    for (std::string line; std::getline(std::cin, line);) {
      const auto at = line.find(marker);
      if (at == std::string::npos) {
        say(line);
        continue;
      }
      url_ = line.substr(at + marker.size());
      relay_ = std::thread([state = state_] {
        for (std::string relayed; std::getline(std::cin, relayed);) say(relayed);
        state->end();
      });
      break;
    }
    return url_;
  }

  bool started() const { return !url_.empty(); }

  // Asks the ERP to exit (POST /stop) and waits until its output ends. True
  // when it did within a few seconds.
  bool stop() noexcept {
    try {
      say("[host] stopping the ERP (POST ", url_, "/stop)");
      httplib::Client client(url_);
      client.set_connection_timeout(std::chrono::seconds(2));
      client.set_read_timeout(std::chrono::seconds(5));
      auto stopped = client.Post("/stop");
      if (stopped && stopped->status == 204 && state_->waitForEnd(std::chrono::seconds(10))) {
        return true;
      }
      say("[host] the ERP did not stop");
    } catch (const std::exception& e) {
      say("[host] stopping the ERP: ", e.what());
    }
    return false;
  }

 private:
  class State {
   public:
    void end() {
      {
        std::lock_guard lock(mutex_);
        ended_ = true;
      }
      changed_.notify_all();
    }
    bool isEnded() {
      std::lock_guard lock(mutex_);
      return ended_;
    }
    bool waitForEnd(std::chrono::seconds timeout) {
      std::unique_lock lock(mutex_);
      return changed_.wait_for(lock, timeout, [this] { return ended_; });
    }

   private:
    std::mutex mutex_;
    std::condition_variable changed_;
    bool ended_ = false;
  };

  std::string url_;
  std::shared_ptr<State> state_ = std::make_shared<State>();
  std::thread relay_;
};

void printFields(std::ostream& out, const Fields& fields) {
  const char* separator = "";
  for (const auto& [name, value] : fields) {
    if (value.isNull()) continue;
    out << separator << name << "=";
    if (auto text = value.as<std::string>()) out << *text;
    if (auto number = value.as<std::int64_t>()) out << *number;
    separator = ", ";
  }
}

// Reports how the instance of `orderId` ended; true when as expected.
bool checkOutcome(Engine& engine, InstanceId id, const std::string& orderId, bool expectRefusal) {
  auto info = engine.instance(id);
  if (!info) {
    say("[host] ", orderId, ": ", info.error().toString());
    return false;
  }
  bool ok = false;
  if (expectRefusal) {
    ok = info->status == InstanceStatus::Failed &&
         info->error.find("ERP answered HTTP 500") != std::string::npos;
  } else {
    ok = info->status == InstanceStatus::Completed &&
         info->fields.getOr<std::string>("ErpStatus", "") == "Approved" &&
         !info->fields.getOr<std::string>("ErpTicket", "").empty();
  }
  std::ostringstream line;
  line << "[host] " << orderId << " (instance " << id << "): " << statusName(info->status) << "; ";
  printFields(line, info->fields);
  if (!info->error.empty()) line << "; error: " << info->error;
  line << (ok ? " -- as expected" : " -- UNEXPECTED");
  say(line.str());
  return ok;
}

bool parseArgs(int argc, char** argv, Options& options) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string arg = argv[i];
    const std::string value = argv[i + 1];
    if (arg == "--erp") {
      options.erp = value;
    } else if (arg == "--order") {
      options.orders.push_back(value);
    } else if (arg == "--expect-refusal") {
      options.orders.push_back(value);
      options.expectRefusal.insert(value);
    } else if (arg == "--api-key") {
      options.apiKey = value;
    } else if (arg == "--db") {
      options.db = value;
    } else if (arg == "--timeout") {
      const int seconds = std::atoi(value.c_str());
      if (seconds <= 0) return false;
      options.timeout = std::chrono::seconds(seconds);
    } else {
      return false;
    }
  }
  if (argc % 2 == 0 || options.erp.empty()) return false;
  if (options.orders.empty()) options.orders.push_back("PO-1001");
  return true;
}

int run(const Options& options, PipedErp& pipedErp) {
  Endpoints endpoints{options.erp, {}, options.apiKey};
  if (options.erp == "-") {
    endpoints.erpUrl = pipedErp.start();
    if (endpoints.erpUrl.empty()) {
      std::cerr << "[host] no \"listening on\" line from the ERP on stdin\n";
      return EXIT_FAILURE;
    }
    say("[host] the ERP listens on ", endpoints.erpUrl, " (its first line on stdin)");
  }
  if (!splitUrl(endpoints.erpUrl)) {
    std::cerr << "[host] --erp must be an http:// URL, got " << endpoints.erpUrl << "\n";
    return EXIT_FAILURE;
  }

  auto store = SqliteStore::open(options.db);
  if (!store) {
    std::cerr << "[host] cannot open " << options.db << ": " << store.error().toString() << "\n";
    return EXIT_FAILURE;
  }
  say("[host] store: SQLite at ", options.db);
  auto story = std::make_shared<Story>();
  EngineOptions engineOptions;
  engineOptions.listener = story;
  Engine engine(std::move(*store), engineOptions);
  if (auto defined = engine.define(purchaseOrder(endpoints)); !defined) {
    std::cerr << "[host] define failed: " << defined.error().toString() << "\n";
    return EXIT_FAILURE;
  }

  // The add-on's routes on the host's own server, behind the API key.
  httplib::Server server;
  server.set_payload_max_length(64 * 1024);
  rest::Options restOptions;
  restOptions.authorizer = rest::apiKeyAuthorizer({options.apiKey});
  restOptions.maxBodyBytes = 64 * 1024;
  if (auto mounted = rest::mount(server, engine, restOptions); !mounted) {
    std::cerr << "[host] mount failed: " << mounted.error().toString() << "\n";
    return EXIT_FAILURE;
  }
  rest_callback::LoopbackServer serving(server);  // stops before the engine goes
  const int port = serving.start();
  if (port < 0) {
    std::cerr << "[host] cannot bind 127.0.0.1\n";
    return EXIT_FAILURE;
  }
  endpoints.selfUrl = "http://127.0.0.1:" + std::to_string(port);
  say("[host] REST routes on ", endpoints.selfUrl, kBasePath, "/serverEvents/... (X-API-Key)");

  std::vector<InstanceId> ids;
  for (const auto& orderId : options.orders) {
    say("[host] starting PurchaseOrder for ", orderId);
    auto id = engine.start("PurchaseOrder", {{"OrderId", orderId}});
    if (!id) {
      std::cerr << "[host] start failed: " << id.error().toString() << "\n";
      return EXIT_FAILURE;
    }
    ids.push_back(*id);
  }

  bool ok = story->waitForEnd(ids, options.timeout);
  if (!ok) say("[host] not every instance ended within ", options.timeout.count(), " s");
  serving.stop();
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const auto& orderId = options.orders[i];
    ok = checkOutcome(engine, ids[i], orderId, options.expectRefusal.count(orderId) != 0) && ok;
  }
  return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  if (!parseArgs(argc, argv, options)) {
    std::cerr << "usage: rest_callback_host --erp URL|- [--order ID]... [--expect-refusal ID]...\n"
                 "                          [--api-key KEY] [--db PATH] [--timeout SECONDS]\n";
    return 2;
  }
  const bool scratch = options.db.empty();
  if (scratch) {
    options.db = (std::filesystem::temp_directory_path() /
                  ("asyncflow_rest_callback_" + std::to_string(::getpid()) + ".db"))
                     .string();
  }
  int result = EXIT_FAILURE;
  {
    PipedErp pipedErp;  // outlives run(): its relay may still print at the end
    try {
      result = run(options, pipedErp);
    } catch (const std::exception& e) {  // httplib and nlohmann::json may throw
      std::cerr << "[host] error: " << e.what() << "\n";
    }
    // In the pipeline form the host owns the ERP: stop it however run() ended.
    if (pipedErp.started() && !pipedErp.stop()) result = EXIT_FAILURE;
  }
  if (scratch) {
    std::error_code ignored;
    for (const char* suffix : {"", "-wal", "-shm"}) {
      std::filesystem::remove(options.db + suffix, ignored);
    }
  }
  say(result == EXIT_SUCCESS ? "[host] done: every instance ended as expected" : "[host] FAILED");
  return result;
}
