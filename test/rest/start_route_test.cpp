// POST {base}/workflows/{process}/instances and GET {base}/instances/{id} over
// loopback: 201 with a Location, an Idempotency-Key that makes a retried start
// return the first instance across a restart and across hosts on one SQLite
// file, and the instance view that never shows a secret.
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include <asyncflow/sqlite_store.hpp>

#include "rest/served.hpp"

using namespace resttest;
using asyncflow::testing::TempDir;

namespace {

const std::string kStart = kBase + "/workflows/Order/instances";

httplib::Headers withIdempotencyKey(const std::string& key) {
  httplib::Headers headers = withKey();
  headers.emplace("Idempotency-Key", key);
  return headers;
}

// Checks a start's answer; returns the instance id.
InstanceId requireStarted(const httplib::Result& response, int status) {
  REQUIRE(response);
  INFO(response->body);
  CHECK(response->status == status);
  CHECK(response->get_header_value("Content-Type") == "application/json");
  const Json body = Json::parse(response->body);
  CHECK(body.size() == 3);
  CHECK(body.value("process", "") == "Order");
  CHECK(body.value("processVersion", 0) == 3);
  const auto id = body.value("instanceId", InstanceId{0});
  CHECK(id > 0);
  CHECK(response->get_header_value("Location") == kBase + "/instances/" + std::to_string(id));
  return id;
}

std::shared_ptr<Store> sqliteAt(const std::string& path) {
  auto store = SqliteStore::open(path);
  REQUIRE(store);
  return std::shared_ptr<Store>(std::move(*store));
}

std::size_t instancesWaiting(Served& s) { return s.engine.waiting().value().steps.size(); }

}  // namespace

TEST_CASE("start: 201 with the instance, its Location, and the fields of the body") {
  Served s;
  const InstanceId id =
      requireStarted(s.post(kStart, R"({"dataFields": {"OrderId": "A-17", "Amount": 5}})"), 201);
  const InstanceInfo info = s.engine.instance(id).value();
  CHECK(info.status == InstanceStatus::Waiting);
  CHECK(info.currentStep == "Submit");
  CHECK(info.fields.get<std::string>("OrderId").value() == "A-17");
  CHECK(info.fields.get<std::int64_t>("Amount").value() == 5);
  CHECK(info.fields.get<std::string>("Status").value() == "Pending");  // the declared default
}

TEST_CASE("start: K2's empty bodies start with the defaults") {
  Served s;
  std::string body;
  SECTION("no body") { body = ""; }
  SECTION("[]") { body = "[]"; }
  SECTION("{}") { body = "{}"; }
  const InstanceId id = requireStarted(s.post(kStart, body), 201);
  CHECK(s.engine.instance(id).value().fields.get<std::string>("Note").value() == "none");
}

TEST_CASE("start: without an Idempotency-Key every call starts another instance") {
  Served s;
  const InstanceId first = requireStarted(s.post(kStart, "{}"), 201);
  const InstanceId second = requireStarted(s.post(kStart, "{}"), 201);
  CHECK(first != second);
  CHECK(instancesWaiting(s) == 2);
}

TEST_CASE("start: a retried request with the same Idempotency-Key returns the first instance") {
  Served s;
  const std::string body = R"({"dataFields": {"OrderId": "A-17"}})";
  const InstanceId first = requireStarted(s.post(kStart, body, withIdempotencyKey("po-17")), 201);
  const auto appliesAfterFirst = s.store().calls(StoreCall::Apply);
  const InstanceId again = requireStarted(s.post(kStart, body, withIdempotencyKey("po-17")), 200);
  CHECK(again == first);
  CHECK(s.store().calls(StoreCall::Apply) == appliesAfterFirst);  // nothing written
  CHECK(instancesWaiting(s) == 1);
  // Another key starts another instance.
  CHECK(requireStarted(s.post(kStart, body, withIdempotencyKey("po-18")), 201) != first);
}

TEST_CASE("start: the same Idempotency-Key after an engine restart returns the first instance") {
  TempDir dir;
  const std::string file = dir.file("starts.db");
  const std::string body = R"({"dataFields": {"OrderId": "A-17"}})";
  InstanceId first = 0;
  {
    Served s(keyed(), sqliteAt(file));
    first = requireStarted(s.post(kStart, body, withIdempotencyKey("po-17")), 201);
  }
  Served s(keyed(), sqliteAt(file));
  CHECK(requireStarted(s.post(kStart, body, withIdempotencyKey("po-17")), 200) == first);
  CHECK(instancesWaiting(s) == 1);
}

TEST_CASE("start: two hosts on one SQLite file, one retried request each, one instance") {
  TempDir dir;
  const std::string file = dir.file("shared.db");
  Served a(keyed(), sqliteAt(file));
  Served b(keyed(), sqliteAt(file));
  const std::string body = R"({"dataFields": {"OrderId": "A-17"}})";
  std::optional<httplib::Result> answers[2];
  asyncflow::testing::Latch ready(2);  // both callers are about to send
  std::thread other([&] {
    ready.countDown();
    ready.wait();
    answers[1].emplace(b.post(kStart, body, withIdempotencyKey("po-17")));
  });
  ready.countDown();
  ready.wait();
  answers[0].emplace(a.post(kStart, body, withIdempotencyKey("po-17")));
  other.join();
  REQUIRE(*answers[0]);
  REQUIRE(*answers[1]);
  // Exactly one created it, whichever won.
  CHECK((*answers[0])->status + (*answers[1])->status == 201 + 200);
  const InstanceId first = requireStarted(*answers[0], (*answers[0])->status);
  CHECK(requireStarted(*answers[1], (*answers[1])->status) == first);
  CHECK(instancesWaiting(a) == 1);
}

TEST_CASE("start: refusals change nothing") {
  Served s;
  requireStarted(s.post(kStart, "{}", withIdempotencyKey("po-17")), 201);
  const auto applies = s.store().calls(StoreCall::Apply);
  Json body;
  SECTION("the key was used with other fields: 422 KeyReused") {
    body = requireError(
        s.post(kStart, R"({"dataFields": {"OrderId": "B-2"}})", withIdempotencyKey("po-17")), 422,
        "KeyReused");
  }
  SECTION("an Idempotency-Key over 255 bytes: 400") {
    body = requireError(s.post(kStart, "{}", withIdempotencyKey(std::string(256, 'k'))), 400,
                        "InvalidArgument");
  }
  SECTION("an Idempotency-Key that is not printable ASCII: 400") {
    body = requireError(s.post(kStart, "{}", withIdempotencyKey("cl\xc3\xa9")), 400,
                        "InvalidArgument");
  }
  SECTION("an unknown process: 404") {
    body = requireError(s.post(kBase + "/workflows/Nope/instances", "{}"), 404, "NotFound");
  }
  SECTION("an undeclared field: 422") {
    body =
        requireError(s.post(kStart, R"({"dataFields": {"Colour": "red"}})"), 422, "InvalidField");
    CHECK(body["message"].get<std::string>().find("Colour") != std::string::npos);
  }
  SECTION("a field of the wrong type: 422") {
    body =
        requireError(s.post(kStart, R"({"dataFields": {"Amount": "five"}})"), 422, "InvalidField");
  }
  SECTION("an XML field that is not well-formed: 422") {
    body = requireError(s.post(kStart, R"({"xmlFields": {"Note": "<a>"}})"), 422, "InvalidField");
  }
  SECTION("a misspelt member: 400") {
    body = requireError(s.post(kStart, R"({"datafields": {}})"), 400, "InvalidArgument");
  }
  SECTION("without credentials: 401") {
    body = requireError(s.post(kStart, "{}", {}), 401, "Unauthenticated");
  }
  CHECK(s.store().calls(StoreCall::Apply) == applies);
  CHECK(instancesWaiting(s) == 1);
}

TEST_CASE("start: a store error is 503 with nothing written, and the retry then starts it once") {
  Served s;
  s.store().failNth(1, asyncflow::testing::Fault::IoError);
  requireError(s.post(kStart, "{}", withIdempotencyKey("po-17")), 503, "StoreError");
  CHECK(instancesWaiting(s) == 0);
  const InstanceId id = requireStarted(s.post(kStart, "{}", withIdempotencyKey("po-17")), 201);
  CHECK(requireStarted(s.post(kStart, "{}", withIdempotencyKey("po-17")), 200) == id);
}

TEST_CASE("GET instance: status, current step, fields and the open serial's id, never its secret") {
  Served s;
  const InstanceId id =
      requireStarted(s.post(kStart, R"({"dataFields": {"OrderId": "A-17", "Rate": 1.5}})"), 201);
  const std::string serial = s.flow.serial;
  auto response = s.get(kBase + "/instances/" + std::to_string(id));
  REQUIRE(response);
  CHECK(response->status == 200);
  CHECK(response->body.find(secretOf(serial)) == std::string::npos);
  const Json body = Json::parse(response->body);
  CHECK(body["instanceId"] == id);
  CHECK(body["process"] == "Order");
  CHECK(body["processVersion"] == 3);
  CHECK(body["status"] == "Waiting");
  CHECK(body["currentStep"] == "Submit");
  CHECK(body["currentStepStatus"] == "Waiting");
  CHECK(body["fields"]["OrderId"] == "A-17");
  CHECK(body["fields"]["Rate"] == 1.5);
  CHECK(body["fields"]["Status"] == "Pending");
  CHECK(body["fields"]["Amount"].is_null());
  CHECK(body["error"].is_null());
  REQUIRE(body["openSerials"].size() == 1);
  const std::string serialId = serial.substr(0, serial.find('_', serial.find('_') + 1));
  CHECK(body["openSerials"][0]["serialId"] == serialId);
  CHECK(body["openSerials"][0]["step"] == "Submit");
  CHECK(body["openSerials"][0]["status"] == "Waiting");

  // Once the step is finished there is no open serial left.
  requireNoContent(s.post(route(serial, "finish"), "[]"));
  const Json done = Json::parse(s.get(kBase + "/instances/" + std::to_string(id))->body);
  CHECK(done["status"] == "Completed");
  CHECK(done["openSerials"].empty());
}

TEST_CASE("GET instance: a malformed id is 400, an unknown one 404") {
  Served s;
  for (const char* id : {"0", "-1", "01", "abc", "1e3", "99999999999999999999"}) {
    INFO(id);
    requireError(s.get(kBase + "/instances/" + id), 400, "InvalidArgument");
  }
  requireError(s.get(kBase + "/instances/424242"), 404, "NotFound");
  requireError(s.get(kBase + "/instances/1", {}), 401, "Unauthenticated");
}
