// What the REST add-on's tests share: an engine with the routes mounted on a
// real httplib::Server on a loopback port, a flow with one async step, and the
// checks every refusal must pass (a JSON error, nothing changed).
#pragma once

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <asyncflow/rest.hpp>
#include <asyncflow/testing/fault_injection.hpp>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "support/catch.hpp"
#include "support/test_support.hpp"

namespace resttest {

using namespace asyncflow;
using namespace std::chrono_literals;
using asyncflow::testing::FaultInjectingStore;
using asyncflow::testing::Harness;
using asyncflow::testing::StoreCall;
using Json = nlohmann::json;

inline const std::string kKey = "k-7Hq2-test-api-key";
inline const std::string kBase = "/api/workflow/v1";

inline httplib::Headers withKey(const std::string& key = kKey) { return {{"X-API-Key", key}}; }

inline rest::Options keyed(std::vector<std::string> keys = {kKey}) {
  rest::Options options;
  options.authorizer = rest::apiKeyAuthorizer(std::move(keys));
  return options;
}

// Submit (async: timeout 1 h escalating to Escalate, heartbeats every 10 min,
// error line Repair) -> Notify, which ends the instance. Escalate and Repair are
// reached only by the escalation and error lines.
// A string one thread writes and another reads: the start handler runs on the
// server's thread when an instance is started over HTTP, and the test reads the
// serial on its own (the socket between them is invisible to TSan).
class SharedString {
 public:
  SharedString& operator=(std::string value) {
    std::lock_guard lock(mutex_);
    value_ = std::move(value);
    return *this;
  }
  operator std::string() const {  // NOLINT: reads like the string it holds
    std::lock_guard lock(mutex_);
    return value_;
  }

 private:
  mutable std::mutex mutex_;
  std::string value_;
};

struct Flow {
  SharedString serial;  // written by the start handler, on the thread that runs it
  std::function<StartOutcome(AsyncStepContext&)> submit = [](AsyncStepContext&) {
    return StartOutcome::wait();
  };

  static Step ending(const std::string& name) {
    return Step(name, [](StepContext&) { return StepOutcome::finish(); });
  }

  Process process() {
    Process p("Order", 3);
    p.field("OrderId", Type::String)
        .field("Status", Type::String, "Pending")
        .field("Amount", Type::Int64)
        .field("Rate", Type::Double)
        .field("Flag", Type::Bool)
        .field("Note", Type::String, "none")
        .step(AsyncStep("Submit",
                        [this](AsyncStepContext& ctx) {
                          serial = ctx.serial();
                          return submit(ctx);
                        })
                  .timeout(1h, "Escalate")
                  .heartbeat(10min)
                  .onError("Repair"))
        .step(ending("Notify"))
        .step(ending("Escalate"))
        .step(ending("Repair"));
    return p;
  }
};

// An engine over a FaultInjectingStore (over a MemoryStore) with a manual clock, its
// routes mounted on a server listening on a loopback port, and a client.
class Served {
 public:
  // `configure` sets the server up before it listens (timeouts, limits).
  explicit Served(rest::Options options = keyed(), std::shared_ptr<Store> store = nullptr,
                  const std::function<void(httplib::Server&)>& configure = {})
      : store_(std::make_shared<FaultInjectingStore>(store ? store : h.store)),
        engine(store_, h.options()) {
    REQUIRE(engine.define(flow.process()));
    REQUIRE(rest::mount(server, engine, std::move(options)));
    if (configure) configure(server);
    port = server.bind_to_any_port("127.0.0.1");
    REQUIRE(port > 0);
    // The socket listens from here on: a client may connect before the thread runs.
    listener_ = std::thread([this] { server.listen_after_bind(); });
  }
  ~Served() {
    // stop() is a no-op until the accept loop runs.
    while (!server.is_running()) std::this_thread::yield();
    server.stop();
    listener_.join();
  }
  Served(const Served&) = delete;
  Served& operator=(const Served&) = delete;

  // Starts an instance waiting at Submit; returns its serial.
  std::string start(Fields fields = {{"OrderId", "A-17"}}) {
    id = engine.start("Order", std::move(fields)).value();
    return flow.serial;
  }

  FaultInjectingStore& store() { return *store_; }

  httplib::Client client() const { return httplib::Client("127.0.0.1", port); }

  httplib::Result post(const std::string& path, const std::string& body,
                       const httplib::Headers& headers = withKey()) const {
    return client().Post(path, headers, body, "application/json");
  }
  httplib::Result get(const std::string& path, const httplib::Headers& headers = withKey()) const {
    return client().Get(path, headers);
  }

  Harness h;
  Flow flow;

 private:
  std::shared_ptr<FaultInjectingStore> store_;

 public:
  Engine engine;  // outlives the server's handlers (declared before it)
  httplib::Server server;
  int port = 0;
  InstanceId id = 0;

 private:
  std::thread listener_;
};

inline std::string route(const std::string& serial, const std::string& action = {},
                         const std::string& base = kBase) {
  return base + "/serverEvents/" + serial + (action.empty() ? "" : "/" + action);
}

// The secret part of a serial: after the second '_'.
inline std::string secretOf(const std::string& serial) {
  return serial.substr(serial.find('_', serial.find('_') + 1) + 1);
}

inline std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

// Checks that `response` is a JSON error with `status` and `error`, and that its
// body holds neither SQL, nor SQLite's name, nor the secrets in `secrets`.
inline Json requireError(const httplib::Result& response, int status, const std::string& error,
                         const std::vector<std::string>& secrets = {}) {
  REQUIRE(response);
  CHECK(response->status == status);
  CHECK(response->get_header_value("Content-Type") == "application/json");
  const Json body = Json::parse(response->body);
  REQUIRE(body.is_object());
  CHECK(body.size() == 2);
  CHECK(body.value("error", "") == error);
  CHECK(body.value("message", "") != "");
  const std::string text = lower(response->body);
  CHECK(text.find("select") == std::string::npos);
  CHECK(text.find("sqlite") == std::string::npos);
  CHECK(text.find("exception") == std::string::npos);
  for (const auto& secret : secrets) CHECK(response->body.find(secret) == std::string::npos);
  return body;
}

inline void requireNoContent(const httplib::Result& response) {
  REQUIRE(response);
  CHECK(response->status == 204);
  CHECK(response->body.empty());
}

// Everything a refused request must leave as it was.
struct Stored {
  InstanceInfo info;
  std::vector<HistoryEvent> history;
  std::optional<Timestamp> deadline;
  std::uint64_t applies = 0;

  static Stored of(Served& s) {
    Stored out;
    out.info = s.engine.instance(s.id).value();
    out.history = s.engine.history(s.id).value();
    if (auto step = s.engine.serverEvent(std::string(s.flow.serial))) out.deadline = step->deadline;
    out.applies = s.store().calls(StoreCall::Apply);
    return out;
  }
};

inline void requireUnchanged(const Stored& before, Served& s) {
  const Stored after = Stored::of(s);
  CHECK(after.info.status == before.info.status);
  CHECK(after.info.currentStep == before.info.currentStep);
  CHECK(after.info.currentStepStatus == before.info.currentStepStatus);
  CHECK(after.info.fields == before.info.fields);
  CHECK(after.info.error == before.info.error);
  CHECK(after.info.updatedAt == before.info.updatedAt);
  CHECK(after.history == before.history);
  CHECK(after.deadline == before.deadline);
  CHECK(after.applies == before.applies);  // nothing was even attempted
}

}  // namespace resttest
