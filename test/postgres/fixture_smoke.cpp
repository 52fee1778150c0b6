// postgres.fixture_smoke: the server of pgTestServer() is what the PostgreSQL
// store tests assume. It answers SELECT 1 over TCP; the fixture's own server
// listens on 127.0.0.1 only with the settings the fixture writes, and refuses a
// wrong password with an authentication error; after restartPgTestServer() old
// connections are broken and new ones work on the same conninfo. An external
// server (ASYNCFLOW_TEST_POSTGRES) gets the checks that do not depend on its
// configuration. Exits 0 when every check passed, 1 after printing each failure.
#include <iostream>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <libpq-fe.h>

#include "postgres/pg_test_server.hpp"

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  std::cout << (ok ? "ok:   " : "FAIL: ") << what << "\n";
  if (!ok) ++failures;
}

// Owns a PGconn; libpq wants PQfinish also for a connection that failed.
class Connection {
 public:
  explicit Connection(PGconn* conn) : conn_(conn) {}
  ~Connection() { PQfinish(conn_); }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  bool ok() const { return PQstatus(conn_) == CONNECTION_OK; }
  std::string error() const { return PQerrorMessage(conn_); }

  // The single value `sql` returns, or "<error: ...>" text with *ok false.
  std::string value(const std::string& sql, bool* ok = nullptr) {
    PGresult* result = PQexec(conn_, sql.c_str());
    const bool good = PQresultStatus(result) == PGRES_TUPLES_OK && PQntuples(result) == 1;
    std::string text = good ? PQgetvalue(result, 0, 0) : "<error: " + error() + ">";
    PQclear(result);
    if (ok != nullptr) *ok = good;
    return text;
  }

 private:
  PGconn* conn_;
};

Connection connect(const std::string& conninfo) {
  return Connection(PQconnectdb(conninfo.c_str()));
}

// Connects with the conninfo's options but `password` in place of its password,
// through PQconninfoParse (keyword=value and URI forms alike); *hadPassword says
// whether the conninfo had one to replace.
Connection connectWithPassword(const std::string& conninfo, const std::string& password,
                               bool* hadPassword) {
  char* parseError = nullptr;
  PQconninfoOption* options = PQconninfoParse(conninfo.c_str(), &parseError);
  if (options == nullptr) {
    std::string message = parseError ? parseError : "out of memory";
    PQfreemem(parseError);
    check(false, "conninfo parses: " + message);
    *hadPassword = false;
    return Connection(nullptr);
  }
  std::vector<std::pair<std::string, std::string>> pairs;
  *hadPassword = false;
  for (PQconninfoOption* option = options; option->keyword != nullptr; ++option) {
    if (option->val == nullptr) continue;
    if (std::string(option->keyword) == "password") {
      *hadPassword = true;
      pairs.emplace_back(option->keyword, password);
    } else {
      pairs.emplace_back(option->keyword, option->val);
    }
  }
  PQconninfoFree(options);
  std::vector<const char*> keywords;
  std::vector<const char*> values;
  for (const auto& [keyword, value] : pairs) {
    keywords.push_back(keyword.c_str());
    values.push_back(value.c_str());
  }
  keywords.push_back(nullptr);
  values.push_back(nullptr);
  return Connection(PQconnectdbParams(keywords.data(), values.data(), 0));
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// ": <error>" on one line, or nothing when there is no error.
std::string because(std::string error) {
  while (!error.empty() && (error.back() == '\n' || error.back() == ' ')) error.pop_back();
  for (char& c : error) c = c == '\n' ? ' ' : c;
  return error.empty() ? error : ": " + error;
}

}  // namespace

int main() {
  const std::optional<asyncflow::testing::PgTestServer> server = asyncflow::testing::pgTestServer();
  if (!server) {
    std::cout << "FAIL: no server: set ASYNCFLOW_TEST_POSTGRES, or run through ctest "
                 "(the postgres fixture sets ASYNCFLOW_PG_STATE)\n";
    return 1;
  }
  std::cout << "server: " << (server->external ? "external" : "the fixture's") << "\n";

  Connection conn = connect(server->conninfo);
  check(conn.ok(), "connects with the conninfo" + because(conn.error()));
  if (!conn.ok()) return 1;
  check(conn.value("SELECT 1") == "1", "SELECT 1");

  if (!server->external) {
    const std::vector<std::pair<std::string, std::string>> settings = {
        {"listen_addresses", "127.0.0.1"},
        {"fsync", "on"},
        {"max_connections", "200"},
        {"server_encoding", "UTF8"}};
    for (const auto& [name, expected] : settings) {
      const std::string actual = conn.value("SHOW " + name);
      check(actual == expected, "SHOW " + name + " is " + expected + " (got " + actual + ")");
    }
    check(conn.value("SELECT current_database()") == "asyncflow_test",
          "connected to the database asyncflow_test");
  }

  bool hadPassword = false;
  Connection wrong = connectWithPassword(server->conninfo, "wrong-password", &hadPassword);
  if (hadPassword) {
    const std::string error = wrong.error();
    check(!wrong.ok(), "a wrong password is refused");
    check(contains(error, "password authentication failed"),
          "with an authentication error" + because(error));
  } else if (!server->external) {
    check(false, "the fixture's conninfo has a password");
  } else {
    std::cout << "skip: the external conninfo has no password to get wrong\n";
  }

  if (!server->external) {
    const std::string startedBefore = conn.value("SELECT pg_postmaster_start_time()");
    std::string error;
    const bool restarted = asyncflow::testing::restartPgTestServer(error);
    check(restarted, "restartPgTestServer()" + because(error));
    if (restarted) {
      bool oldWorks = true;
      conn.value("SELECT 1", &oldWorks);
      check(!oldWorks, "a connection from before the restart is broken");
      Connection again = connect(server->conninfo);
      check(again.ok(), "connects again after the restart" + because(again.error()));
      check(again.value("SELECT 1") == "1", "SELECT 1 after the restart");
      const std::string startedAfter = again.value("SELECT pg_postmaster_start_time()");
      check(startedAfter != startedBefore,
            "a new postmaster (" + startedBefore + " -> " + startedAfter + ")");
    }
  } else {
    std::string error;
    check(!asyncflow::testing::restartPgTestServer(error),
          "restartPgTestServer() refuses an external server");
  }

  std::cout << (failures == 0 ? "all checks passed\n" : "some checks failed\n");
  return failures == 0 ? 0 : 1;
}
