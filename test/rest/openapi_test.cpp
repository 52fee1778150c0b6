// GET {base}/openapi.json: an OpenAPI 3.1 description generated from the
// route table, whose routes are exactly the ones mounted: each documented route
// is answered by its own handler, and paths next to them fall through to 404.
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "rest/served.hpp"

using namespace resttest;

namespace {

// The routes this add-on promises (rest.hpp), as "METHOD /path".
const std::set<std::string> kPromised = {
    "POST /serverEvents/{serialNumber}/finish",
    "POST /serverEvents/{serialNumber}/fail",
    "POST /serverEvents/{serialNumber}/heartbeat",
    "GET /serverEvents/{serialNumber}",
    "POST /workflows/{process}/instances",
    "GET /instances/{instanceId}",
    "GET /openapi.json",
};

std::string upper(std::string text) {
  for (char& c : text) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return text;
}

Json fetched(const Served& s) {
  auto response = s.get(kBase + "/openapi.json");
  REQUIRE(response);
  REQUIRE(response->status == 200);
  CHECK(response->get_header_value("Content-Type") == "application/json");
  return Json::parse(response->body);
}

// Whether `response` is the answer for a path no route has.
bool isNoSuchRoute(const httplib::Result& response) {
  if (!response || response->status != 404) return false;
  return Json::parse(response->body).value("message", "").find("no such route") == 0;
}

}  // namespace

TEST_CASE("openapi.json describes exactly the promised routes") {
  Served s;
  const Json document = fetched(s);
  CHECK(document["openapi"] == "3.1.0");
  CHECK(document["servers"][0]["url"] == kBase);
  std::set<std::string> described;
  for (const auto& [path, operations] : document["paths"].items()) {
    for (const auto& [method, operation] : operations.items()) {
      described.insert(upper(method) + " " + path);
      CHECK(operation.contains("operationId"));
      CHECK(operation["responses"].contains("401"));
      CHECK(operation["responses"].contains("503"));
    }
  }
  CHECK(described == kPromised);
}

TEST_CASE("every described route is answered by its own handler, and nothing else is routed") {
  Served s;
  const std::string serial = s.start();
  const Json document = fetched(s);
  for (const auto& [path, operations] : document["paths"].items()) {
    std::string concrete = path;
    auto replace = [&](const std::string& name, const std::string& value) {
      if (auto at = concrete.find("{" + name + "}"); at != std::string::npos) {
        concrete.replace(at, name.size() + 2, value);
      }
    };
    replace("serialNumber", serial);
    replace("process", "Order");
    replace("instanceId", std::to_string(s.id));
    for (const auto& [method, operation] : operations.items()) {
      INFO(method << " " << concrete);
      auto response = method == "get" ? s.get(kBase + concrete) : s.post(kBase + concrete, "[]");
      REQUIRE(response);
      CHECK_FALSE(isNoSuchRoute(response));
      // Each answers one of the statuses it documents.
      CHECK(operation["responses"].contains(std::to_string(response->status)));
      if (path == "/serverEvents/{serialNumber}/finish") s.start();  // a new wait for fail
    }
  }
  for (const std::string& path : std::vector<std::string>{
           "/serverEvents/" + serial + "/finished", "/serverEvents", "/workflows/Order",
           "/workflows/Order/instances/1", "/instances", "/openapi.yaml", "/"}) {
    INFO(path);
    CHECK(isNoSuchRoute(s.get(kBase + path)));
    CHECK(isNoSuchRoute(s.post(kBase + path, "{}")));
  }
  // A GET route does not answer POST, nor a POST route GET.
  CHECK(isNoSuchRoute(s.post(kBase + "/instances/" + std::to_string(s.id), "{}")));
  CHECK(isNoSuchRoute(s.get(kBase + "/workflows/Order/instances")));
}

TEST_CASE("openApiDocument is what the route serves, and follows the options") {
  rest::Options options = keyed();
  options.basePath = "/k2/v2";
  Served s(options);
  auto served = s.get("/k2/v2/openapi.json");
  REQUIRE(served);
  const auto document = rest::openApiDocument(options);
  REQUIRE(document);
  CHECK(*document == served->body);
  const Json json = Json::parse(*document);
  CHECK(json["servers"][0]["url"] == "/k2/v2");
  CHECK(json["components"]["securitySchemes"]["apiKey"]["name"] == "X-API-Key");
  CHECK(json["security"][0].contains("apiKey"));
}

TEST_CASE("the security scheme follows the authorizer") {
  SECTION("Basic") {
    rest::Options options;
    options.authorizer = rest::basicAuthorizer({{"erp", "pw"}});
    const Json json = Json::parse(rest::openApiDocument(options).value());
    CHECK(json["components"]["securitySchemes"]["basic"]["scheme"] == "basic");
    CHECK(json["security"][0].contains("basic"));
  }
  SECTION("a custom authorizer names none") {
    rest::Options options;
    options.authorizer = [](const rest::RequestInfo&) { return rest::Access::Allow; };
    const Json json = Json::parse(rest::openApiDocument(options).value());
    CHECK_FALSE(json.contains("security"));
    CHECK_FALSE(json["components"].contains("securitySchemes"));
  }
}

TEST_CASE("openapi.json asks for credentials like every route") {
  Served s;
  requireError(s.get(kBase + "/openapi.json", {}), 401, "Unauthenticated");
}

TEST_CASE("openApiDocument refuses the options mount refuses") {
  rest::Options options = keyed();
  options.basePath = "no-slash";
  auto document = rest::openApiDocument(options);
  REQUIRE_FALSE(document);
  CHECK(document.error().code == Errc::InvalidArgument);
  CHECK_FALSE(rest::openApiDocument(rest::Options{}));
}
