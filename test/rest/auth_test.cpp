// The authorizers over loopback: HTTP Basic (RFC 7617) beside the API key, the
// 401 challenge each one names, and mount() refusing a misconfigured one.
#include <string>
#include <vector>

#include "rest/served.hpp"

using namespace resttest;

namespace {

const std::vector<rest::BasicUser> kUsers = {{"erp", "s3cret:with colon"}, {"batch", "other"}};

rest::Options basic(std::vector<rest::BasicUser> users = kUsers, std::string realm = "orders") {
  rest::Options options;
  options.authorizer = rest::basicAuthorizer(std::move(users), std::move(realm));
  return options;
}

httplib::Headers authorization(const std::string& value) { return {{"Authorization", value}}; }

// RFC 4648 base64 with padding, written out here so that the test does not
// share the add-on's encoder.
std::string base64(const std::string& text) {
  const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  unsigned bits = 0;
  int count = 0;
  for (unsigned char c : text) {
    bits = (bits << 8) | c;
    count += 8;
    while (count >= 6) {
      count -= 6;
      out += alphabet[(bits >> count) & 63];
    }
  }
  if (count > 0) out += alphabet[(bits << (6 - count)) & 63];
  while (out.size() % 4 != 0) out += '=';
  return out;
}

// "Basic " and the base64 of "name:password", as a client sends it.
std::string basicHeader(const std::string& name, const std::string& password) {
  return "Basic " + base64(name + ":" + password);
}

}  // namespace

TEST_CASE("basic: every configured account is let in, through httplib's own Basic support") {
  Served s(basic());
  const std::string serial = s.start();
  auto client = s.client();
  client.set_basic_auth("batch", "other");
  auto response = client.Get(route(serial));
  REQUIRE(response);
  CHECK(response->status == 200);

  // A password holding ':' is fine: only the name may not.
  requireNoContent(s.post(route(serial, "finish"), "[]",
                          authorization(basicHeader("erp", "s3cret:with colon"))));
  CHECK(s.engine.instance(s.id).value().status == InstanceStatus::Completed);
}

TEST_CASE("basic: the scheme's name in any case, and spaces around the credentials") {
  Served s(basic());
  const std::string token = base64("batch:other");
  for (const std::string& value : {"basic " + token, "BASIC " + token, "Basic   " + token + "  "}) {
    INFO(value);
    auto response = s.get(route(s.start()), authorization(value));
    REQUIRE(response);
    CHECK(response->status == 200);
  }
}

TEST_CASE("basic: wrong or missing credentials are 401 with the Basic challenge, nothing changed") {
  Served s(basic());
  const std::string serial = s.start();
  const Stored before = Stored::of(s);
  httplib::Headers headers;
  SECTION("no Authorization header") {}
  SECTION("a wrong password") { headers = authorization(basicHeader("erp", "s3cret")); }
  SECTION("an unknown user") { headers = authorization(basicHeader("nobody", "other")); }
  SECTION("one user's name with another's password") {
    headers = authorization(basicHeader("erp", "other"));
  }
  SECTION("another scheme") { headers = authorization("Bearer abc"); }
  SECTION("the scheme without credentials") { headers = authorization("Basic"); }
  SECTION("an API key instead") { headers = withKey(); }
  auto response = s.post(route(serial, "finish"), R"({"dataFields": {"Status": "X"}})", headers);
  requireError(response, 401, "Unauthenticated");
  CHECK(response->get_header_value("WWW-Authenticate") ==
        R"(Basic realm="orders", charset="UTF-8")");
  requireUnchanged(before, s);
}

TEST_CASE("each authorizer's 401 names its own scheme, and Options::challenge overrides it") {
  SECTION("the API key's header") {
    rest::Options options;
    options.authorizer = rest::apiKeyAuthorizer({kKey}, "X-Token");
    Served s(options);
    auto response = s.get(route(s.start()), {});
    requireError(response, 401, "Unauthenticated");
    CHECK(response->get_header_value("WWW-Authenticate") == R"(ApiKey header="X-Token")");
  }
  SECTION("an explicit challenge") {
    rest::Options options = basic();
    options.challenge = R"(Basic realm="elsewhere")";
    Served s(options);
    auto response = s.get(route(s.start()), {});
    requireError(response, 401, "Unauthenticated");
    CHECK(response->get_header_value("WWW-Authenticate") == R"(Basic realm="elsewhere")");
  }
  SECTION("a custom authorizer that names none") {
    rest::Options options;
    options.authorizer = [](const rest::RequestInfo&) { return rest::Access::Unauthenticated; };
    Served s(options);
    auto response = s.get(route(s.start()), {});
    requireError(response, 401, "Unauthenticated");
    CHECK(response->get_header_value("WWW-Authenticate") == R"(ApiKey header="X-API-Key")");
  }
}

TEST_CASE("basic: mount refuses a misconfigured account or realm and mounts nothing") {
  struct Case {
    const char* what;
    std::vector<rest::BasicUser> users;
    std::string realm;
    const char* expected;
  };
  const std::vector<Case> cases = {
      {"an empty name", {{"", "pw"}}, "orders", "a user name is empty"},
      {"a name with ':'", {{"a:b", "pw"}}, "orders", "holds ':'"},
      {"a name with a line break", {{"a\nb", "pw"}}, "orders", "control character"},
      {"an empty password", {{"erp", ""}}, "orders", "has no password"},
      {"a realm with a quote", kUsers, "a\"b", "the realm"},
      {"a realm with a line break", kUsers, "a\r\nSet-Cookie: x=1", "the realm"},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    Engine engine(std::make_shared<MemoryStore>());
    httplib::Server server;
    auto mounted = rest::mount(server, engine, basic(c.users, c.realm));
    REQUIRE_FALSE(mounted);
    CHECK(mounted.error().code == Errc::InvalidArgument);
    CHECK(mounted.error().message.find(c.expected) != std::string::npos);
    CHECK_FALSE(rest::openApiDocument(basic(c.users, c.realm)));
  }
}

TEST_CASE("basic: an empty account list lets nobody in") {
  Served s(basic({}));
  requireError(s.get(route(s.start()), authorization(basicHeader("erp", "pw"))), 401,
               "Unauthenticated");
}
