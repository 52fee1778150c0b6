// The PostgreSQL server a test binary runs against: the external server of
// ASYNCFLOW_TEST_POSTGRES, else the throwaway one of the ctest fixture
// (asyncflow_pg_fixture, test/postgres/CMakeLists.txt), found through the state
// file named by ASYNCFLOW_PG_STATE. ctest sets ASYNCFLOW_PG_STATE and
// ASYNCFLOW_PG_FIXTURE on the tests of asyncflow_postgres_tests(). No libpq here.
#pragma once

#include <optional>
#include <string>

namespace asyncflow::testing {

struct PgTestServer {
  // libpq conninfo: keyword=value for the fixture's server (host=127.0.0.1,
  // dbname=asyncflow_test, user postgres with a password), as given for an
  // external one.
  std::string conninfo;
  // True for a server the tests did not start (ASYNCFLOW_TEST_POSTGRES, also
  // when the fixture recorded it): restartPgTestServer() cannot restart it.
  bool external = false;
};

// ASYNCFLOW_TEST_POSTGRES if set and not empty, else the conninfo of the state
// file ASYNCFLOW_PG_STATE; nullopt when neither is there (no server for tests).
std::optional<PgTestServer> pgTestServer();

// Restarts the fixture's server on the same port and data, through
// `$ASYNCFLOW_PG_FIXTURE restart $ASYNCFLOW_PG_STATE`, and waits for it: when it
// returns true the server accepts connections again, and every connection made
// before is broken. False with `error` set when it failed, when the server is
// external, or when the variables are missing. Not for tests that share the
// server with others running at the same time (asyncflow_postgres_tests'
// RESTARTS_SERVER runs such a test alone).
bool restartPgTestServer(std::string& error);

}  // namespace asyncflow::testing
