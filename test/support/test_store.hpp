// The store a multi-process test names with one string, so that the same test
// (and the host processes it spawns, through argv) runs on SQLite and on
// PostgreSQL: "postgres:<schema>" is that schema on the test server
// (postgres/pg_test_server.hpp: ASYNCFLOW_TEST_POSTGRES or the ctest fixture),
// anything else a SQLite file path.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

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

// A connection of its own to the store `spec` names, for tests that read the
// stored rows in SQL, as an operator's sqlite3 or psql would: both stores have
// the same tables and columns, so plain SQL over them reads the same on both
// (a PostgreSQL connection has the schema on its search_path). For one thread.
// Every call throws std::runtime_error, with the server's or SQLite's message,
// when the query fails.
class TestSql {
 public:
  using Row = std::vector<std::optional<std::string>>;  // nullopt: NULL

  virtual ~TestSql() = default;

  // The rows of `sql`, each value as text: integers in decimal, a SQLite
  // real as %.17g, a PostgreSQL value in its text form.
  virtual std::vector<Row> rows(const std::string& sql) = 0;
  // Runs `sql`, a statement that changes rows; how many it changed.
  virtual std::int64_t change(const std::string& sql) = 0;
  // The tables of the store (views not included), by name.
  virtual std::vector<std::string> tables() = 0;
  // The columns of table `table`, in their order.
  virtual std::vector<std::string> columns(const std::string& table) = 0;
  // The first column of the first row of `sql`, as an integer; 0 for NULL.
  std::int64_t count(const std::string& sql);
};

// Opens a TestSql on `spec` (a SQLite file read-write, without creating it; or
// the schema of a "postgres:" spec, which need not exist yet). Throws
// std::runtime_error when it cannot.
std::unique_ptr<TestSql> openTestSql(const std::string& spec);

// Every row of every table of `sql` but those named in `leaveOutTables`,
// sorted, each value byte-exact (NULL apart from text), table by table with
// the column names: equal before and after exactly when nothing changed.
// Columns named "table.column" in `leaveOutColumns` (wall clocks) are left out.
std::string dumpTables(TestSql& sql, const std::vector<std::string>& leaveOutTables = {},
                       const std::vector<std::string>& leaveOutColumns = {});

}  // namespace asyncflow::testing
