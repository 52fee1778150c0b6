// The routes as the real curl binary (and a bare socket, and httplib's own
// client) call them: a POST without Content-Length answered at once, K2's
// Swagger call with [] finishing a waiting step, Basic auth with curl -u, and a
// retried start with one Idempotency-Key.
//
// The server's read timeout is set to 30 s: a route that waited for a body
// that never comes would answer 400 only after it. Each call must answer its
// status well before that (10 s); the measured times are printed, not asserted
// any tighter (speed belongs in benchmarks, not in timed tests).
#include <chrono>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <asyncflow/sqlite_store.hpp>
#include <spawn.h>

#include "rest/served.hpp"

extern char** environ;

using namespace resttest;

namespace {

// What one curl run printed: its -w line and the body it received.
struct CurlAnswer {
  int status = 0;
  double seconds = 0;
  std::string headers;
  std::string body;
};

// Runs curl with `args` (URL included) and returns the status, curl's own
// time_total, the response headers and the body. Fails the test if curl does.
CurlAnswer curl(std::vector<std::string> args) {
  std::vector<std::string> argv = {
      ASYNCFLOW_CURL, "-sS", "-D", "-", "-w", "\n%{http_code} %{time_total}"};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> pointers;
  for (std::string& arg : argv) pointers.push_back(arg.data());
  pointers.push_back(nullptr);

  int pipeEnds[2];
  REQUIRE(pipe(pipeEnds) == 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipeEnds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, pipeEnds[0]);
  pid_t pid = 0;
  const int spawned =
      posix_spawn(&pid, argv[0].c_str(), &actions, nullptr, pointers.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(pipeEnds[1]);
  REQUIRE(spawned == 0);
  std::string output;
  char buffer[4096];
  for (ssize_t n; (n = read(pipeEnds[0], buffer, sizeof buffer)) > 0;) output.append(buffer, n);
  close(pipeEnds[0]);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  INFO(output);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);

  CurlAnswer answer;
  const auto lastLine = output.rfind('\n');
  std::istringstream(output.substr(lastLine + 1)) >> answer.status >> answer.seconds;
  output.resize(lastLine);
  const auto split = output.find("\r\n\r\n");
  REQUIRE(split != std::string::npos);
  answer.headers = output.substr(0, split + 2);
  answer.body = output.substr(split + 4);
  return answer;
}

std::string url(const Served& s, const std::string& path) {
  return "http://127.0.0.1:" + std::to_string(s.port) + path;
}

const std::vector<std::string> kKeyHeader = {"-H", "X-API-Key: " + kKey};

void report(const std::string& what, int status, double seconds) {
  std::cout << "measured: " << what << ": " << status << " in " << seconds * 1000 << " ms\n";
}

// A loopback connection that sends requests as written, byte for byte.
class RawConnection {
 public:
  explicit RawConnection(int port) : fd_(socket(AF_INET, SOCK_STREAM, 0)) {
    REQUIRE(fd_ >= 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<std::uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
  }
  ~RawConnection() { close(fd_); }
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;

  void send(const std::string& request) {
    REQUIRE(write(fd_, request.data(), request.size()) == static_cast<ssize_t>(request.size()));
  }

  // Reads until `text` has arrived (or the server closed the connection).
  std::string readUntil(const std::string& text) {
    char buffer[4096];
    while (received_.find(text) == std::string::npos) {
      const ssize_t n = read(fd_, buffer, sizeof buffer);
      if (n <= 0) break;
      received_.append(buffer, static_cast<std::size_t>(n));
    }
    return received_;
  }

 private:
  int fd_;
  std::string received_;
};

auto longReadTimeout = [](httplib::Server& server) { server.set_read_timeout(30, 0); };

}  // namespace

TEST_CASE("curl: every body-less POST is answered at once") {
  Served s(keyed(), nullptr, longReadTimeout);
  struct Route {
    std::string name;
    std::string path;
    int status;
  };
  const std::string serial = s.start();
  const std::vector<Route> routes = {
      {"heartbeat", route(serial, "heartbeat"), 204},
      {"finish", route(serial, "finish"), 204},
      {"fail", route(s.start(), "fail"), 204},
      {"start", kBase + "/workflows/Order/instances", 201},
      {"unknown route", kBase + "/nothing", 404},
  };
  for (const Route& r : routes) {
    INFO(r.name);
    // -X POST without -d: curl sends neither Content-Length nor Transfer-Encoding.
    std::vector<std::string> args = kKeyHeader;
    args.insert(args.end(), {"-X", "POST", url(s, r.path)});
    const CurlAnswer answer = curl(args);
    CHECK(answer.status == r.status);
    CHECK(answer.seconds < 10.0);
    report("curl -X POST " + r.name + " (no body)", answer.status, answer.seconds);
  }
  CHECK(s.engine.instance(s.id).value().status == InstanceStatus::Completed);
}

TEST_CASE("a bare socket: a body-less POST, then a second request on the same connection") {
  Served s(keyed(), nullptr, longReadTimeout);
  const std::string serial = s.start();
  const std::string request = "POST " + route(serial, "heartbeat") +
                              " HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: " + kKey + "\r\n\r\n";
  const std::string last = "GET " + route(serial) +
                           " HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: " + kKey +
                           "\r\nConnection: close\r\n\r\n";
  RawConnection connection(s.port);
  const auto before = std::chrono::steady_clock::now();
  connection.send(request);
  // A 204 ends with its headers.
  const std::string firstAnswer = connection.readUntil("\r\n\r\n");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - before).count();
  CHECK(firstAnswer.find("HTTP/1.1 204") == 0);
  CHECK(seconds < 10.0);
  // The connection is still in step: the next request on it is answered.
  connection.send(last);
  const std::string answers = connection.readUntil("\"serialNumber\"");
  INFO(answers);
  CHECK(answers.find("HTTP/1.1 200", firstAnswer.size()) != std::string::npos);
  const int status = firstAnswer.size() > 12 ? std::stoi(firstAnswer.substr(9, 3)) : 0;
  report("socket POST heartbeat (no body), then a GET on the same connection", status, seconds);
}

TEST_CASE("httplib's client: an empty POST body is answered at once too") {
  Served s(keyed(), nullptr, longReadTimeout);
  const std::string serial = s.start();
  for (const std::string& action : {std::string("heartbeat"), std::string("finish")}) {
    const auto before = std::chrono::steady_clock::now();
    auto response = s.client().Post(route(serial, action), withKey(), "", "application/json");
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - before).count();
    REQUIRE(response);
    CHECK(response->status == 204);
    CHECK(seconds < 10.0);
    report("httplib Post " + action + " (empty body)", response->status, seconds);
  }
}

TEST_CASE("curl: K2's flow from the seed, a step waits and [] finishes it") {
  Served s;
  const std::string serial = s.start();
  CHECK(s.engine.instance(s.id).value().status == InstanceStatus::Waiting);
  std::vector<std::string> args = kKeyHeader;
  args.insert(args.end(), {"-H", "Content-Type: application/json", "-d", "[]",
                           url(s, route(serial, "finish"))});
  const CurlAnswer answer = curl(args);
  CHECK(answer.status == 204);
  CHECK(answer.body.empty());
  report("curl -d '[]' finish", answer.status, answer.seconds);
  const InstanceInfo info = s.engine.instance(s.id).value();
  CHECK(info.status == InstanceStatus::Completed);
  CHECK(info.currentStep == "Notify");
}

TEST_CASE("curl: -u with an account passes Basic auth, a wrong password gets the challenge") {
  rest::Options options;
  options.authorizer = rest::basicAuthorizer({{"erp", "pa:ss"}}, "orders");
  Served s(options);
  const std::string serial = s.start();

  const CurlAnswer refused =
      curl({"-u", "erp:wrong", "-X", "POST", url(s, route(serial, "finish"))});
  CHECK(refused.status == 401);
  CHECK(refused.headers.find("WWW-Authenticate: Basic realm=\"orders\"") != std::string::npos);
  CHECK(s.engine.instance(s.id).value().status == InstanceStatus::Waiting);

  const CurlAnswer allowed =
      curl({"-u", "erp:pa:ss", "-H", "Content-Type: application/json", "-d",
            R"({"dataFields": {"Status": "Approved"}})", url(s, route(serial, "finish"))});
  CHECK(allowed.status == 204);
  report("curl -u finish", allowed.status, allowed.seconds);
  CHECK(s.engine.instance(s.id).value().fields.get<std::string>("Status").value() == "Approved");
}

TEST_CASE("curl: a start retried with its Idempotency-Key returns the first instance") {
  Served s;
  std::vector<std::string> args = kKeyHeader;
  args.insert(args.end(), {"-H", "Idempotency-Key: po-17", "-H", "Content-Type: application/json",
                           "-d", R"({"dataFields": {"OrderId": "A-17"}})",
                           url(s, kBase + "/workflows/Order/instances")});
  const CurlAnswer first = curl(args);
  const CurlAnswer again = curl(args);
  CHECK(first.status == 201);
  CHECK(again.status == 200);
  report("curl start (new key)", first.status, first.seconds);
  report("curl start (same key again)", again.status, again.seconds);
  CHECK(Json::parse(first.body)["instanceId"] == Json::parse(again.body)["instanceId"]);
  CHECK(first.headers.find("Location: " + kBase + "/instances/") != std::string::npos);
}

TEST_CASE(
    "curl: the same Idempotency-Key after a host restart on SQLite returns the first instance") {
  asyncflow::testing::TempDir dir;
  const std::string file = dir.file("starts.db");
  auto openStore = [&] {
    auto store = SqliteStore::open(file);
    REQUIRE(store);
    return std::shared_ptr<Store>(std::move(*store));
  };
  auto startWithKey = [](const Served& s) {
    std::vector<std::string> args = kKeyHeader;
    args.insert(args.end(),
                {"-H", "Idempotency-Key: po-1001", "-H", "Content-Type: application/json", "-d",
                 R"({"dataFields": {"OrderId": "PO-1001"}})",
                 url(s, kBase + "/workflows/Order/instances")});
    return curl(args);
  };
  CurlAnswer first;
  {
    Served s(keyed(), openStore());
    first = startWithKey(s);
    CHECK(first.status == 201);
    report("curl start on SQLite (new key)", first.status, first.seconds);
  }
  Served s(keyed(), openStore());  // a new host process's engine on the same file
  const CurlAnswer again = startWithKey(s);
  CHECK(again.status == 200);
  report("curl start on SQLite after a restart (same key)", again.status, again.seconds);
  CHECK(Json::parse(again.body)["instanceId"] == Json::parse(first.body)["instanceId"]);
  CHECK(s.engine.waiting().value().steps.size() == 1);
}

TEST_CASE("curl: every K2 body shape on finish and fail is 204") {
  Served s;
  struct Shape {
    std::string name;
    std::string action;
    std::string body;
  };
  const std::vector<Shape> shapes = {
      {"finish []", "finish", "[]"},
      {"finish {}", "finish", "{}"},
      {"finish, an empty body", "finish", ""},
      {"finish dataFields + xmlFields", "finish",
       R"({"dataFields": {"Status": "Approved"}, "xmlFields": {"Note": "<invoice no=\"7\"/>"}})"},
      {"fail []", "fail", "[]"},
      {"fail reason + dataFields + xmlFields", "fail",
       R"({"reason": "refused", "dataFields": {"Status": "Refused"}, "xmlFields": {"Note": "<r/>"}})"},
  };
  for (const Shape& shape : shapes) {
    INFO(shape.name);
    const std::string serial = s.start();
    std::vector<std::string> args = kKeyHeader;
    args.insert(args.end(), {"-H", "Content-Type: application/json", "-d", shape.body,
                             url(s, route(serial, shape.action))});
    const CurlAnswer answer = curl(args);
    CHECK(answer.status == 204);
    report("curl " + shape.name, answer.status, answer.seconds);
    CHECK(s.engine.instance(s.id).value().status == InstanceStatus::Completed);
  }
}
