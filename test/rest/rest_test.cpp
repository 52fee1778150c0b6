// The REST add-on over loopback: a real httplib::Server with the routes mounted
// and a real httplib::Client calling them. Every route's success, every error
// status, the security rules (credentials first, nothing changed without them,
// no SQL or secret in a body) and mount()'s own checks.
#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <asyncflow/rest.hpp>
#include <asyncflow/testing/fault_injection.hpp>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "rest/served.hpp"
#include "support/catch.hpp"
#include "support/test_support.hpp"

using namespace asyncflow;
using namespace std::chrono_literals;
using asyncflow::testing::Fault;
using asyncflow::testing::FaultInjectingStore;
using asyncflow::testing::Harness;
using asyncflow::testing::Latch;
using asyncflow::testing::StoreCall;
using Json = nlohmann::json;

using namespace resttest;

// ---------------------------------------------------------------------------
// Each route's success

TEST_CASE("finish: 204, the step completes with the data fields and the instance moves on") {
  Served s;
  const std::string serial = s.start();
  const auto response = s.post(route(serial, "finish"), R"({"dataFields": {
      "Status": "Approved", "Amount": 120, "Rate": 1.5, "Flag": true, "Note": null}})");
  requireNoContent(response);

  const InstanceInfo info = s.engine.instance(s.id).value();
  CHECK(info.status == InstanceStatus::Completed);
  CHECK(info.currentStep == "Notify");
  CHECK(info.fields.get<std::string>("Status").value() == "Approved");
  CHECK(info.fields.get<std::int64_t>("Amount").value() == 120);
  CHECK(info.fields.get<double>("Rate").value() == 1.5);
  CHECK(info.fields.get<bool>("Flag").value());
  REQUIRE(info.fields.find("Note") != nullptr);
  CHECK(info.fields.find("Note")->isNull());
  CHECK(info.fields.get<std::string>("OrderId").value() == "A-17");
}

TEST_CASE("finish: K2's shapes of an empty completion are accepted") {
  Served s;
  SECTION("no body") { requireNoContent(s.post(route(s.start(), "finish"), "")); }
  SECTION("empty dataFields") {
    requireNoContent(s.post(route(s.start(), "finish"), R"({"dataFields": {}})"));
  }
  SECTION("an empty object") { requireNoContent(s.post(route(s.start(), "finish"), "{}")); }
  CHECK(s.engine.instance(s.id).value().status == InstanceStatus::Completed);
  CHECK(s.engine.instance(s.id).value().fields.get<std::string>("Status").value() == "Pending");
}

TEST_CASE("finish: an integer is accepted for a Double field, and a percent-encoded serial") {
  Served s;
  const std::string serial = s.start();
  std::string encoded = serial;
  encoded.replace(encoded.find('_'), 1, "%5F");
  requireNoContent(s.post(route(encoded, "finish"), R"({"dataFields": {"Rate": 2}})"));
  CHECK(s.engine.instance(s.id).value().fields.get<double>("Rate").value() == 2.0);
}

TEST_CASE("fail: 204, the step fails with the reason and follows its error line") {
  Served s;
  const std::string serial = s.start();
  requireNoContent(
      s.post(route(serial, "fail"),
             R"({"reason": "credit limit exceeded", "dataFields": {"Note": "limit"}})"));

  const InstanceInfo info = s.engine.instance(s.id).value();
  CHECK(info.status == InstanceStatus::Completed);
  CHECK(info.currentStep == "Repair");
  CHECK(info.fields.get<std::string>("Note").value() == "limit");
  const auto history = s.engine.history(s.id).value();
  const bool recorded = std::any_of(history.begin(), history.end(), [](const HistoryEvent& e) {
    return e.kind == HistoryKind::StepFailed && e.step == "Submit" &&
           e.detail.find("credit limit exceeded") != std::string::npos;
  });
  CHECK(recorded);
  // The serial now answers StepFailed.
  requireError(s.post(route(serial, "finish"), ""), 409, "StepFailed", {secretOf(serial)});
}

TEST_CASE("fail: without a reason the engine's default reason is recorded") {
  Served s;
  requireNoContent(s.post(route(s.start(), "fail"), ""));
  CHECK(s.engine.instance(s.id).value().currentStep == "Repair");
}

TEST_CASE("heartbeat: 204 and the deadline moves to the heartbeat interval from now") {
  Served s;
  const std::string serial = s.start();
  const Timestamp t0 = s.h.clock->now();
  CHECK(s.engine.serverEvent(serial).value().deadline == t0 + 1h);

  s.h.clock->advance(55min);
  requireNoContent(s.post(route(serial, "heartbeat"), ""));
  CHECK(s.engine.serverEvent(serial).value().deadline == t0 + 55min + 10min);

  // The old deadline passes without a timeout; the step still waits.
  s.h.clock->advance(6min);
  CHECK(s.engine.runDueTimers().value() == 0);
  CHECK(s.engine.instance(s.id).value().status == InstanceStatus::Waiting);
  const auto history = s.engine.history(s.id).value();
  CHECK(history.back().kind == HistoryKind::Heartbeat);

  SECTION("an empty JSON object is an empty body") {
    requireNoContent(s.post(route(serial, "heartbeat"), "{}"));
  }
  SECTION("a heartbeat takes no data fields") {
    requireError(s.post(route(serial, "heartbeat"), R"({"dataFields": {"Note": "x"}})"), 400,
                 "InvalidArgument");
  }
}

TEST_CASE("GET: 200 with the waiting step as JSON") {
  Served s;
  const std::string serial = s.start();
  const auto response = s.get(route(serial));
  REQUIRE(response);
  CHECK(response->status == 200);
  CHECK(response->get_header_value("Content-Type") == "application/json");
  const Json body = Json::parse(response->body);
  CHECK(body == Json{{"serialNumber", serial},
                     {"instanceId", s.id},
                     {"process", "Order"},
                     {"processVersion", 3},
                     {"step", "Submit"},
                     // ManualClock starts at 1,700,000,000 s; the timeout is 1 h.
                     {"waitingSince", "2023-11-14T22:13:20.000000Z"},
                     {"deadline", "2023-11-14T23:13:20.000000Z"}});
  // A look-up changes nothing.
  CHECK(s.engine.instance(s.id).value().status == InstanceStatus::Waiting);
}

TEST_CASE("GET: a step whose handler has not returned is not waiting yet") {
  Served s;
  std::optional<Json> seen;
  s.flow.submit = [&](AsyncStepContext& ctx) {
    // The external system looks the serial up before the start handler returns.
    s.h.clock->advance(1500us);
    const auto response = s.get(route(ctx.serial()));
    if (response && response->status == 200) seen = Json::parse(response->body);
    return StartOutcome::wait();
  };
  s.start();
  REQUIRE(seen);
  CHECK((*seen)["step"] == "Submit");
  CHECK((*seen)["waitingSince"].is_null());
  CHECK((*seen)["deadline"].is_null());
  // Once it waits, its time shows to the microsecond.
  const Json now = Json::parse(s.get(route(s.flow.serial))->body);
  CHECK(now["waitingSince"] == "2023-11-14T22:13:20.001500Z");
}

// ---------------------------------------------------------------------------
// 400

TEST_CASE("400: a malformed body changes nothing") {
  Served s;
  const std::string serial = s.start();
  const Stored before = Stored::of(s);
  Json body;
  SECTION("malformed JSON") {
    body = requireError(s.post(route(serial, "finish"), R"({"dataFields": {"Status": )"), 400,
                        "InvalidArgument");
    CHECK(body["message"].get<std::string>().find("malformed JSON") != std::string::npos);
  }
  SECTION("trailing bytes after the JSON") {
    requireError(s.post(route(serial, "finish"), "{} {}"), 400, "InvalidArgument");
  }
  SECTION("invalid UTF-8 in a string") {
    requireError(s.post(route(serial, "finish"), "{\"dataFields\": {\"Note\": \"\xff\"}}"), 400,
                 "InvalidArgument");
  }
  SECTION("not an object") {
    requireError(s.post(route(serial, "finish"), "[1, 2]"), 400, "InvalidArgument");
  }
  SECTION("dataFields not an object") {
    body = requireError(s.post(route(serial, "finish"), R"({"dataFields": [1, 2]})"), 400,
                        "InvalidArgument");
    CHECK(body["message"].get<std::string>().find("dataFields") != std::string::npos);
  }
  SECTION("dataFields null") {
    requireError(s.post(route(serial, "finish"), R"({"dataFields": null})"), 400,
                 "InvalidArgument");
  }
  SECTION("a misspelt member is not ignored") {
    body = requireError(s.post(route(serial, "finish"), R"({"datafields": {"Status": "X"}})"), 400,
                        "InvalidArgument");
    CHECK(body["message"].get<std::string>().find("'datafields'") != std::string::npos);
  }
  SECTION("a reason that is not a string") {
    requireError(s.post(route(serial, "fail"), R"({"reason": 42})"), 400, "InvalidArgument");
  }
  requireUnchanged(before, s);
}

TEST_CASE("400: a malformed serial, on every route") {
  Served s;
  const std::string serial = s.start();
  const Stored before = Stored::of(s);
  // A secret one character off: well-formed, wrong.
  std::string wrongSecret = serial;
  wrongSecret.back() = wrongSecret.back() == 'A' ? 'B' : 'A';
  for (const std::string& bad : {std::string("not-a-serial"), std::string("1_1"), wrongSecret,
                                 std::string("1_1_%00"), std::string(5000, '7')}) {
    INFO(bad.substr(0, 40));
    for (const std::string action : {"finish", "fail", "heartbeat"}) {
      requireError(s.post(route(bad, action), "{}"), 400, "InvalidSerial",
                   {secretOf(serial), secretOf(wrongSecret)});
    }
    requireError(s.get(route(bad)), 400, "InvalidSerial", {secretOf(serial)});
  }
  requireUnchanged(before, s);
}

// ---------------------------------------------------------------------------
// 401 and 403: credentials first, and nothing changes without them

TEST_CASE("401: without valid credentials no route does anything") {
  Served s;
  const std::string serial = s.start();
  const Stored before = Stored::of(s);

  const std::vector<std::pair<std::string, httplib::Headers>> refused = {
      {"no key", {}},
      {"a wrong key", withKey("k-7Hq2-test-api-kez")},
      {"a prefix of the key", withKey(kKey.substr(0, kKey.size() - 1))},
      {"the key with a suffix", withKey(kKey + "x")},
      {"an empty key", withKey("")},
      {"the key in another header", {{"Authorization", "Bearer " + kKey}}},
  };
  for (const auto& [what, headers] : refused) {
    INFO(what);
    // Valid bodies: only the credentials are wrong. Malformed ones: credentials
    // come before the body is even parsed.
    for (const std::string body : {R"({"dataFields": {"Status": "Approved"}})", "{oops"}) {
      for (const std::string action : {"finish", "fail", "heartbeat"}) {
        const auto response = s.post(route(serial, action), body, headers);
        requireError(response, 401, "Unauthenticated", {kKey, secretOf(serial)});
        CHECK(response->get_header_value("WWW-Authenticate") == R"(ApiKey header="X-API-Key")");
      }
    }
    requireError(s.get(route(serial), headers), 401, "Unauthenticated", {kKey, secretOf(serial)});
    // Even the answer for an unknown serial or route waits for credentials.
    requireError(s.post(route("99_1_AAAAAAAAAAAAAAAAAAAAAA", "finish"), "{}", headers), 401,
                 "Unauthenticated");
    requireError(s.get(kBase + "/nothing/here", headers), 401, "Unauthenticated");
  }
  requireUnchanged(before, s);
  // The step still completes for the right key.
  requireNoContent(s.post(route(serial, "finish"), "{}"));
}

TEST_CASE("403: an authorizer that knows the caller but forbids the route") {
  rest::Options options;
  options.authorizer = [](const rest::RequestInfo& request) {
    const auto key = request.header("x-api-key");  // header names are case-insensitive
    if (!key) return rest::Access::Unauthenticated;
    if (*key == "reader") {
      return request.method == "GET" ? rest::Access::Allow : rest::Access::Forbidden;
    }
    if (*key == "writer") return rest::Access::Allow;
    if (*key == "broken") throw std::runtime_error("authorizer bug");
    return rest::Access::Unauthenticated;
  };
  Served s(options);
  const std::string serial = s.start();
  const Stored before = Stored::of(s);

  for (const std::string action : {"finish", "fail", "heartbeat"}) {
    const auto response = s.post(route(serial, action), "{}", withKey("reader"));
    requireError(response, 403, "Forbidden", {secretOf(serial)});
    CHECK_FALSE(response->has_header("WWW-Authenticate"));
    // An authorizer that throws forbids; its message goes nowhere.
    const auto broken = s.post(route(serial, action), "{}", withKey("broken"));
    requireError(broken, 403, "Forbidden");
    CHECK(broken->body.find("authorizer bug") == std::string::npos);
  }
  requireUnchanged(before, s);

  const auto read = s.get(route(serial), withKey("reader"));
  REQUIRE(read);
  CHECK(read->status == 200);
  requireNoContent(s.post(route(serial, "finish"), "{}", withKey("writer")));
}

TEST_CASE("the authorizer sees the request's method, decoded path, headers and address") {
  std::vector<std::string> seen;
  std::mutex mutex;
  rest::Options options;
  options.authorizer = [&](const rest::RequestInfo& request) {
    std::lock_guard lock(mutex);
    seen.push_back(std::string(request.method) + " " + std::string(request.path) + " " +
                   std::string(request.header("X-Caller").value_or("-")) + " " +
                   std::string(request.remoteAddress));
    return rest::Access::Allow;
  };
  Served s(options);
  const std::string serial = s.start();
  REQUIRE(s.client().Get(route(serial) + "?x=1", {{"X-Caller", "erp"}}));
  std::string encoded = serial;
  encoded.replace(encoded.find('_'), 1, "%5F");
  REQUIRE(s.client().Post(route(encoded, "heartbeat"), "", "application/json"));
  std::lock_guard lock(mutex);
  CHECK(seen == std::vector<std::string>{"GET " + route(serial) + " erp 127.0.0.1",
                                         "POST " + route(serial, "heartbeat") + " - 127.0.0.1"});
}

TEST_CASE("apiKeyAuthorizer: any configured key in its header, and an empty key never matches") {
  auto info = [](std::optional<std::string> value, std::string name = "X-API-Key") {
    rest::RequestInfo request;
    request.method = "POST";
    request.path = "/api/workflow/v1/serverEvents/1_1/finish";
    request.header = [value = std::move(value), name = std::move(name)](
                         std::string_view asked) -> std::optional<std::string_view> {
      if (!value || lower(std::string(asked)) != lower(name)) return std::nullopt;
      return std::string_view(*value);
    };
    return request;
  };
  const auto two = rest::apiKeyAuthorizer({"first-key", "second-key-longer"});
  CHECK(two(info("first-key")) == rest::Access::Allow);
  CHECK(two(info("second-key-longer")) == rest::Access::Allow);
  CHECK(two(info("second-key")) == rest::Access::Unauthenticated);
  CHECK(two(info("first-key ")) == rest::Access::Unauthenticated);
  CHECK(two(info(std::nullopt)) == rest::Access::Unauthenticated);
  CHECK(two(info("first-key", "X-Other")) == rest::Access::Unauthenticated);

  const auto empty = rest::apiKeyAuthorizer({"", "real"});
  CHECK(empty(info("")) == rest::Access::Unauthenticated);
  CHECK(empty(info("real")) == rest::Access::Allow);
  CHECK(rest::apiKeyAuthorizer({})(info("")) == rest::Access::Unauthenticated);

  const auto custom = rest::apiKeyAuthorizer({"k"}, "X-Token");
  CHECK(custom(info("k", "x-token")) == rest::Access::Allow);
  CHECK(custom(info("k")) == rest::Access::Unauthenticated);

  rest::RequestInfo headerless;  // no header function at all
  CHECK(two(headerless) == rest::Access::Unauthenticated);
}

TEST_CASE("401 carries the configured challenge") {
  rest::Options options = keyed();
  options.authorizer = rest::apiKeyAuthorizer({kKey}, "X-Token");
  options.challenge = R"(ApiKey header="X-Token")";
  Served s(options);
  const auto response = s.post(route(s.start(), "finish"), "{}");  // the key in X-API-Key
  requireError(response, 401, "Unauthenticated");
  CHECK(response->get_header_value("WWW-Authenticate") == R"(ApiKey header="X-Token")");
  requireNoContent(s.post(route(s.flow.serial, "finish"), "{}", {{"X-Token", kKey}}));
}

// ---------------------------------------------------------------------------
// 404, 409

TEST_CASE("404: an unknown serial, and an unknown route under the base path") {
  Served s;
  const std::string serial = s.start();
  const Stored before = Stored::of(s);
  const std::string unknown = "99_1_" + secretOf(serial);
  for (const std::string action : {"finish", "fail", "heartbeat"}) {
    requireError(s.post(route(unknown, action), "{}"), 404, "NotFound", {secretOf(serial)});
  }
  requireError(s.get(route(unknown)), 404, "NotFound", {secretOf(serial)});

  // Routes that do not exist answer JSON too, and never echo the path.
  for (const std::string& path : {kBase, kBase + "/", kBase + "/serverEvents",
                                  route(serial, "complete"), route(serial) + "/finish/more"}) {
    INFO(path);
    requireError(s.get(path), 404, "NotFound", {secretOf(serial)});
    requireError(s.post(path, "{}"), 404, "NotFound", {secretOf(serial)});
  }
  requireError(s.client().Put(route(serial, "finish"), withKey(), "{}", "application/json"), 404,
               "NotFound");
  requireError(s.client().Delete(route(serial), withKey()), 404, "NotFound");
  requireError(s.post(route(serial), "{}"), 404, "NotFound");  // GET-only path
  // A serial holding an encoded '/' is not one path segment.
  requireError(s.post(route("1%2F1_x", "finish"), "{}"), 404, "NotFound");
  requireUnchanged(before, s);

  // Paths outside the base path are not ours.
  const auto outside = s.get("/api/workflow/v2/serverEvents/" + serial);
  REQUIRE(outside);
  CHECK(outside->status == 404);
  CHECK(outside->body.empty());
}

TEST_CASE("409: a step that already completed, timed out or was cancelled") {
  Served s;
  const std::string serial = s.start();
  const std::vector<std::string> secrets = {secretOf(serial)};
  std::string error;
  SECTION("already completed") {
    requireNoContent(s.post(route(serial, "finish"), R"({"dataFields": {"Status": "Approved"}})"));
    error = "AlreadyCompleted";
  }
  SECTION("timed out") {
    s.h.clock->advance(1h);
    REQUIRE(s.engine.runDueTimers().value() == 1);
    error = "TimedOut";
  }
  SECTION("cancelled") {
    REQUIRE(s.engine.cancel(s.id, "customer withdrew"));
    error = "Cancelled";
  }
  const Stored before = Stored::of(s);
  for (const std::string action : {"finish", "fail"}) {
    requireError(s.post(route(serial, action), R"({"dataFields": {"Status": "Late"}})"), 409, error,
                 secrets);
  }
  requireError(s.post(route(serial, "heartbeat"), ""), 409, error, secrets);
  requireError(s.get(route(serial)), 409, error, secrets);
  requireUnchanged(before, s);
}

TEST_CASE("409: concurrent finishes of one serial, exactly one succeeds") {
  Served s;
  const std::string serial = s.start();
  constexpr int kCallers = 6;
  std::atomic<int> done{0};
  std::atomic<int> already{0};
  std::atomic<int> other{0};
  Latch ready(kCallers);
  std::vector<std::thread> callers;
  for (int i = 0; i < kCallers; ++i) {
    callers.emplace_back([&, i] {
      ready.countDown();
      ready.wait();
      const auto response = s.post(route(serial, "finish"),
                                   R"({"dataFields": {"Amount": )" + std::to_string(i) + "}}");
      if (response && response->status == 204) {
        ++done;
      } else if (response && response->status == 409 &&
                 response->body.find("AlreadyCompleted") != std::string::npos) {
        ++already;
      } else {
        ++other;
      }
    });
  }
  for (auto& caller : callers) caller.join();
  CHECK(done == 1);
  CHECK(already == kCallers - 1);
  CHECK(other == 0);
  CHECK(s.engine.instance(s.id).value().status == InstanceStatus::Completed);
}

// ---------------------------------------------------------------------------
// 413

TEST_CASE("413: a body over maxBodyBytes is refused unparsed, and the connection stays usable") {
  rest::Options options = keyed();
  options.maxBodyBytes = 64;
  Served s(options);
  const std::string serial = s.start();
  const Stored before = Stored::of(s);

  const std::string head = R"({"dataFields": {"Note": ")";
  const std::string tail = R"("}})";
  const std::string fits = head + std::string(64 - head.size() - tail.size(), 'x') + tail;
  const std::string over = head + std::string(65 - head.size() - tail.size(), 'x') + tail;
  REQUIRE(fits.size() == 64);
  REQUIRE(over.size() == 65);

  SECTION("by its Content-Length") {
    requireError(s.post(route(serial, "finish"), over), 413, "PayloadTooLarge");
    requireError(s.post(route(serial, "fail"), std::string(1 << 20, '{')), 413, "PayloadTooLarge");
    requireUnchanged(before, s);
  }
  SECTION("as it arrives, chunked") {
    const auto response = s.client().Post(
        route(serial, "finish"), withKey(),
        [&](std::size_t, httplib::DataSink& sink) {
          for (int i = 0; i < 4; ++i) sink.write(over.data(), over.size());
          sink.done();
          return true;
        },
        "application/json");
    requireError(response, 413, "PayloadTooLarge");
    requireUnchanged(before, s);
  }
  SECTION("a refused body is read to its end: the next request on the connection works") {
    // Left unread, 100 kB without a line break would be read as the next
    // request's line, and the next real request would get httplib's 414.
    const std::string unbroken(100'000, ' ');
    auto client = s.client();
    client.set_keep_alive(true);
    requireError(client.Post(route(serial, "finish"), withKey(), unbroken, "application/json"), 413,
                 "PayloadTooLarge");
    requireError(client.Post(route(serial, "finish"), {}, unbroken, "application/json"), 401,
                 "Unauthenticated");
    requireError(client.Post(kBase + "/unknown", withKey(), unbroken, "application/json"), 404,
                 "NotFound");
    requireUnchanged(before, s);
    requireNoContent(client.Post(route(serial, "finish"), withKey(), fits, "application/json"));
    CHECK(s.engine.instance(s.id).value().status == InstanceStatus::Completed);
  }
  SECTION("exactly maxBodyBytes is accepted") {
    requireNoContent(s.post(route(serial, "finish"), fits));
  }
}

// ---------------------------------------------------------------------------
// 422

TEST_CASE("422: an undeclared field or a value of the wrong type changes nothing") {
  Served s;
  const std::string serial = s.start();
  const Stored before = Stored::of(s);
  std::string body;
  std::string field;
  SECTION("undeclared") {
    body = R"({"dataFields": {"Status": "Approved", "Colour": "red"}})";
    field = "Colour";
  }
  SECTION("a string for an Int64") {
    body = R"({"dataFields": {"Amount": "120"}})";
    field = "Amount";
  }
  SECTION("a fraction for an Int64") {
    body = R"({"dataFields": {"Amount": 1.5}})";
    field = "Amount";
  }
  SECTION("a number for a String") {
    body = R"({"dataFields": {"Status": 1}})";
    field = "Status";
  }
  SECTION("a string for a Bool") {
    body = R"({"dataFields": {"Flag": "true"}})";
    field = "Flag";
  }
  SECTION("an array") {
    body = R"({"dataFields": {"Note": ["a", "b"]}})";
    field = "Note";
  }
  SECTION("an object") {
    body = R"({"dataFields": {"Note": {"text": "a"}}})";
    field = "Note";
  }
  SECTION("an integer beyond int64") {
    body = R"({"dataFields": {"Amount": 9223372036854775808}})";
    field = "Amount";
  }
  for (const std::string action : {"finish", "fail"}) {
    const Json error =
        requireError(s.post(route(serial, action), body), 422, "InvalidField", {secretOf(serial)});
    CHECK(error["message"].get<std::string>().find(field) != std::string::npos);
  }
  requireUnchanged(before, s);
}

TEST_CASE("the integer limits of Int64 are accepted") {
  Served s;
  requireNoContent(
      s.post(route(s.start(), "finish"), R"({"dataFields": {"Amount": 9223372036854775807}})"));
  CHECK(s.engine.instance(s.id).value().fields.get<std::int64_t>("Amount").value() ==
        std::numeric_limits<std::int64_t>::max());
  requireNoContent(
      s.post(route(s.start(), "finish"), R"({"dataFields": {"Amount": -9223372036854775808}})"));
  CHECK(s.engine.instance(s.id).value().fields.get<std::int64_t>("Amount").value() ==
        std::numeric_limits<std::int64_t>::min());
}

// ---------------------------------------------------------------------------
// 503, 500

namespace {
// Collects what the routes log.
struct Logged {
  std::mutex mutex;
  std::vector<std::string> lines;

  LogSink sink() {
    return [this](LogLevel level, std::string_view line) {
      std::lock_guard lock(mutex);
      lines.push_back(std::string(level == LogLevel::Error ? "E " : "? ") + std::string(line));
    };
  }
  std::vector<std::string> taken() {
    std::lock_guard lock(mutex);
    std::vector<std::string> out;
    out.swap(lines);
    return out;
  }
};
}  // namespace

TEST_CASE("503: a store error writes nothing, says nothing of the store, and may be retried") {
  Logged logged;
  rest::Options options = keyed();
  options.log = logged.sink();
  Served s(options);
  const std::string serial = s.start();
  const Stored before = Stored::of(s);
  s.store().failNth(1, Fault::IoError);
  const auto response =
      s.post(route(serial, "finish"), R"({"dataFields": {"Status": "Approved"}})");
  const Json error = requireError(response, 503, "StoreError", {secretOf(serial)});
  CHECK(response->get_header_value("Retry-After") == "1");
  CHECK(response->body.find("injected") == std::string::npos);
  CHECK(response->body.find("disk") == std::string::npos);
  const Stored after = Stored::of(s);
  CHECK(after.history == before.history);
  CHECK(after.info.status == InstanceStatus::Waiting);
  // The host's log has what the client was not told, and not the secret.
  const auto lines = logged.taken();
  REQUIRE(lines.size() == 1);
  CHECK(lines[0].find(
            "E rest: finish: StoreError: disk I/O error (injected by FaultInjectingStore") == 0);
  CHECK(lines[0].find(secretOf(serial)) == std::string::npos);

  requireNoContent(s.post(route(serial, "finish"), R"({"dataFields": {"Status": "Approved"}})"));
  CHECK(s.engine.instance(s.id).value().status == InstanceStatus::Completed);
}

TEST_CASE("503: a real SQLite store error carries no SQL or SQLite text") {
  asyncflow::testing::TempDir dir;
  SqliteOptions sqlite;
  sqlite.maxPageCount = 64;  // a full disk, soon
  auto opened = SqliteStore::open(dir.file("full.db"), sqlite);
  REQUIRE(opened);
  Served s(keyed(), std::shared_ptr<Store>(std::move(*opened)));
  const std::string serial = s.start();
  const std::string big = R"({"dataFields": {"Note": ")" + std::string(200'000, 'n') + R"("}})";
  const auto response = s.post(route(serial, "finish"), big);
  requireError(response, 503, "StoreError", {secretOf(serial)});
  CHECK(s.engine.instance(s.id).value().status == InstanceStatus::Waiting);
}

namespace {
// A store whose reads throw with a message no client may see.
class ThrowingStore final : public StoreWrapper {
 public:
  using StoreWrapper::StoreWrapper;
  Result<StepRunRecord> loadStepRun(InstanceId instance, std::int64_t run) override {
    if (throwing) throw std::runtime_error("SELECT secret FROM step_runs; sqlite stack trace");
    return StoreWrapper::loadStepRun(instance, run);
  }
  std::atomic<bool> throwing{false};
};
}  // namespace

TEST_CASE("500: an internal error says only that, and the host's log the rest") {
  Harness h;
  auto throwing = std::make_shared<ThrowingStore>(h.store);
  Logged logged;
  rest::Options options = keyed();
  options.log = logged.sink();
  Served s(options, throwing);
  const std::string serial = s.start();
  throwing->throwing = true;
  for (const std::string action : {"finish", "fail", "heartbeat"}) {
    const Json error =
        requireError(s.post(route(serial, action), "{}"), 500, "Internal", {secretOf(serial)});
    CHECK(error["message"] == "internal error");
  }
  requireError(s.get(route(serial)), 500, "Internal", {secretOf(serial)});
  const auto lines = logged.taken();
  REQUIRE(lines.size() == 4);
  CHECK(lines[0].find("E rest: finish: Internal: ") == 0);
  CHECK(lines[3].find("E rest: serverEvent: Internal: ") == 0);
  for (const auto& line : lines)
    CHECK(line.find("SELECT secret FROM step_runs") != std::string::npos);
}

TEST_CASE("httpStatus maps every Errc") {
  CHECK(rest::httpStatus(Errc::InvalidSerial) == 400);
  CHECK(rest::httpStatus(Errc::InvalidArgument) == 400);
  CHECK(rest::httpStatus(Errc::NotFound) == 404);
  CHECK(rest::httpStatus(Errc::AlreadyCompleted) == 409);
  CHECK(rest::httpStatus(Errc::TimedOut) == 409);
  CHECK(rest::httpStatus(Errc::StepFailed) == 409);
  CHECK(rest::httpStatus(Errc::Cancelled) == 409);
  CHECK(rest::httpStatus(Errc::InvalidField) == 422);
  CHECK(rest::httpStatus(Errc::StoreError) == 503);
  CHECK(rest::httpStatus(Errc::Conflict) == 503);
  CHECK(rest::httpStatus(Errc::ProcessNotDefined) == 503);
  CHECK(rest::httpStatus(Errc::Internal) == 500);
  CHECK(rest::httpStatus(Errc::InvalidProcess) == 500);
  CHECK(rest::httpStatus(Errc::AmbiguousKey) == 500);
}

// ---------------------------------------------------------------------------
// mount()

TEST_CASE("mount refuses unsafe options and then mounts nothing") {
  Harness h;
  Engine engine(h.store, h.options());
  httplib::Server server;

  std::vector<std::pair<std::string, rest::Options>> refused;
  refused.push_back({"no authorizer", rest::Options{}});
  for (const std::string base :
       {"", "/", "api/workflow", "/api/workflow/", "/api//workflow", "/api/./workflow",
        "/api/../workflow", "/api/%2e%2e", "/api workflow", "/api?x", "/api#x", "/api\n"}) {
    rest::Options options = keyed();
    options.basePath = base;
    refused.push_back({"base path '" + base + "'", options});
  }
  rest::Options zero = keyed();
  zero.maxBodyBytes = 0;
  refused.push_back({"maxBodyBytes 0", zero});
  rest::Options injected = keyed();
  injected.challenge = "ApiKey\r\nSet-Cookie: x=1";
  refused.push_back({"a challenge with a line break", injected});

  for (const auto& [what, options] : refused) {
    INFO(what);
    const auto mounted = rest::mount(server, engine, options);
    REQUIRE_FALSE(mounted);
    CHECK(mounted.error().code == Errc::InvalidArgument);
  }

  // Nothing was mounted: the server answers httplib's own bare 404.
  const int port = server.bind_to_any_port("127.0.0.1");
  std::thread listener([&] { server.listen_after_bind(); });
  const auto response =
      httplib::Client("127.0.0.1", port).Get(kBase + "/serverEvents/1_1", withKey());
  while (!server.is_running()) std::this_thread::yield();
  server.stop();
  listener.join();
  REQUIRE(response);
  CHECK(response->status == 404);
  CHECK(response->body.empty());
}

TEST_CASE("a custom base path: routes move there, and its characters are literal") {
  rest::Options options = keyed();
  options.basePath = "/hooks/k2.v1";
  Served s(options);
  const std::string serial = s.start();
  const std::string base = "/hooks/k2.v1";

  REQUIRE(s.get(route(serial, "", base)));
  CHECK(s.get(route(serial, "", base))->status == 200);
  // '.' is not a wildcard, and the default base path is not mounted.
  for (const std::string& other : {std::string("/hooks/k2Xv1"), kBase}) {
    const auto response = s.post(route(serial, "finish", other), "{}");
    REQUIRE(response);
    CHECK(response->status == 404);
    CHECK(response->body.empty());
  }
  requireNoContent(s.post(route(serial, "finish", base), "{}"));
  CHECK(s.engine.instance(s.id).value().status == InstanceStatus::Completed);
}
