// The store a multi-process test names with one string, so that the same test
// (and the host processes it spawns, through argv) runs on SQLite and on
// PostgreSQL: "postgres:<schema>" is that schema on the test server
// (postgres/pg_test_server.hpp: ASYNCFLOW_TEST_POSTGRES or the ctest fixture),
// anything else a SQLite file path.
#pragma once

#include <memory>
#include <string>

#include "asyncflow/error.hpp"
#include "asyncflow/store.hpp"

namespace asyncflow::testing {

// Whether `spec` names a PostgreSQL schema.
bool isPostgresSpec(const std::string& spec);

// Opens the store `spec` names (a SQLite file with the default options, or a
// PostgresStore with a pool of `poolSize`). StoreError when this build has no
// PostgreSQL store or no test server for a "postgres:" spec.
Result<std::unique_ptr<Store>> openTestStore(const std::string& spec, std::size_t poolSize = 4);

// Drops every schema whose name starts with the schema of `spec` (a test's
// stores are that name and names made from it); nothing for a SQLite path
// (the test's scratch directory holds its files). Never fails the test.
void dropTestStores(const std::string& spec);

}  // namespace asyncflow::testing
