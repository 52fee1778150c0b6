#include "support/test_store.hpp"

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string_view>
#include <vector>

#include <SQLiteCpp/Database.h>
#include <SQLiteCpp/Statement.h>
#include <sqlite3.h>

#include "asyncflow/sqlite_store.hpp"

#ifdef ASYNCFLOW_TEST_STORE_POSTGRES
#include <libpq-fe.h>

#include "asyncflow/postgres_store.hpp"
#include "postgres/pg_test_server.hpp"
#endif

namespace asyncflow::testing {
namespace {

constexpr std::string_view kPrefix = "postgres:";

class SqliteSql final : public TestSql {
 public:
  explicit SqliteSql(const std::string& path) : db_(path, SQLite::OPEN_READWRITE, 5000) {}

  std::vector<Row> rows(const std::string& sql) override {
    try {
      SQLite::Statement query(db_, sql);
      std::vector<Row> out;
      while (query.executeStep()) {
        Row row;
        for (int c = 0; c < query.getColumnCount(); ++c) row.push_back(text(query.getColumn(c)));
        out.push_back(std::move(row));
      }
      return out;
    } catch (const SQLite::Exception& e) {
      throw std::runtime_error(std::string("SQLite: ") + e.what());
    }
  }

  std::int64_t change(const std::string& sql) override {
    try {
      return db_.exec(sql);
    } catch (const SQLite::Exception& e) {
      throw std::runtime_error(std::string("SQLite: ") + e.what());
    }
  }

  std::vector<std::string> tables() override {
    return firstColumn(rows("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"));
  }

  std::vector<std::string> columns(const std::string& table) override {
    return firstColumn(rows("SELECT name FROM pragma_table_info('" + table + "') ORDER BY cid"));
  }

 private:
  static std::optional<std::string> text(const SQLite::Column& column) {
    switch (column.getType()) {
      case SQLITE_NULL: return std::nullopt;
      case SQLITE_INTEGER: return std::to_string(column.getInt64());
      case SQLITE_FLOAT: {
        char buffer[40];
        std::snprintf(buffer, sizeof buffer, "%.17g", column.getDouble());
        return std::string(buffer);
      }
      default: {
        const char* data = static_cast<const char*>(column.getBlob());
        return std::string(data == nullptr ? "" : data,
                           static_cast<std::size_t>(column.getBytes()));
      }
    }
  }

  static std::vector<std::string> firstColumn(const std::vector<Row>& rows) {
    std::vector<std::string> out;
    for (const Row& row : rows) out.push_back(row.at(0).value_or(""));
    return out;
  }

  SQLite::Database db_;
};

#ifdef ASYNCFLOW_TEST_STORE_POSTGRES
class PostgresSql final : public TestSql {
 public:
  PostgresSql(const std::string& conninfo, const std::string& schema)
      : conn_(PQconnectdb(conninfo.c_str())), schema_(schema) {
    if (PQstatus(conn_) != CONNECTION_OK) {
      const std::string message = PQerrorMessage(conn_);
      PQfinish(conn_);
      throw std::runtime_error("PostgreSQL: " + message);
    }
    PQsetNoticeProcessor(
        conn_, [](void*, const char*) {}, nullptr);
    // The names are the tests' own ([a-z0-9_]), so they need no quoting.
    change("SET search_path TO " + schema);
  }
  ~PostgresSql() override { PQfinish(conn_); }
  PostgresSql(const PostgresSql&) = delete;
  PostgresSql& operator=(const PostgresSql&) = delete;

  std::vector<Row> rows(const std::string& sql) override {
    PGresult* result = run(sql);
    std::vector<Row> out;
    for (int r = 0; r < PQntuples(result); ++r) {
      Row row;
      for (int c = 0; c < PQnfields(result); ++c) {
        if (PQgetisnull(result, r, c)) {
          row.emplace_back(std::nullopt);
        } else {
          row.emplace_back(std::string(PQgetvalue(result, r, c),
                                       static_cast<std::size_t>(PQgetlength(result, r, c))));
        }
      }
      out.push_back(std::move(row));
    }
    PQclear(result);
    return out;
  }

  std::int64_t change(const std::string& sql) override {
    PGresult* result = run(sql);
    const std::string changed = PQcmdTuples(result);
    PQclear(result);
    return changed.empty() ? 0 : std::stoll(changed);
  }

  std::vector<std::string> tables() override {
    return firstColumn(
        rows("SELECT table_name FROM information_schema.tables WHERE table_schema = '" + schema_ +
             "' AND table_type = 'BASE TABLE' ORDER BY table_name"));
  }

  std::vector<std::string> columns(const std::string& table) override {
    return firstColumn(
        rows("SELECT column_name FROM information_schema.columns WHERE table_schema = '" + schema_ +
             "' AND table_name = '" + table + "' ORDER BY ordinal_position"));
  }

 private:
  PGresult* run(const std::string& sql) {
    PGresult* result = PQexec(conn_, sql.c_str());
    const ExecStatusType status = PQresultStatus(result);
    if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
      const std::string message = PQresultErrorMessage(result);
      PQclear(result);
      throw std::runtime_error("PostgreSQL: " + message);
    }
    return result;
  }

  static std::vector<std::string> firstColumn(const std::vector<Row>& rows) {
    std::vector<std::string> out;
    for (const Row& row : rows) out.push_back(row.at(0).value_or(""));
    return out;
  }

  PGconn* conn_;
  std::string schema_;
};
#endif

// Appends `value` to `out` so that no two sequences of values append the same bytes.
void put(std::string& out, const std::optional<std::string>& value) {
  if (!value) {
    out += "N;";
    return;
  }
  out += std::to_string(value->size()) + ":" + *value + ";";
}

}  // namespace

std::int64_t TestSql::count(const std::string& sql) {
  const std::vector<Row> found = rows(sql);
  if (found.empty() || found.front().empty() || !found.front().front()) return 0;
  return std::stoll(*found.front().front());
}

std::unique_ptr<TestSql> openTestSql(const std::string& spec) {
  if (!isPostgresSpec(spec)) return std::make_unique<SqliteSql>(spec);
#ifdef ASYNCFLOW_TEST_STORE_POSTGRES
  auto server = pgTestServer();
  if (!server) throw std::runtime_error("no PostgreSQL test server (ASYNCFLOW_PG_STATE)");
  return std::make_unique<PostgresSql>(server->conninfo, spec.substr(kPrefix.size()));
#else
  throw std::runtime_error("this build has no PostgreSQL store: " + spec);
#endif
}

std::string dumpTables(TestSql& sql, const std::vector<std::string>& leaveOutTables,
                       const std::vector<std::string>& leaveOutColumns) {
  auto listed = [](const std::vector<std::string>& names, const std::string& name) {
    return std::find(names.begin(), names.end(), name) != names.end();
  };
  std::string out;
  for (const std::string& table : sql.tables()) {
    if (listed(leaveOutTables, table)) continue;
    std::string select;
    std::string order;
    int kept = 0;
    for (const std::string& column : sql.columns(table)) {
      if (listed(leaveOutColumns, table + "." + column)) continue;
      const char* comma = kept == 0 ? "" : ", ";
      ++kept;
      select += comma + std::string("\"") + column + "\"";
      order += comma + std::to_string(kept);
      put(out, column);
    }
    put(out, table);
    if (kept == 0) continue;
    for (const TestSql::Row& row :
         sql.rows("SELECT " + select + " FROM \"" + table + "\" ORDER BY " + order)) {
      for (const auto& value : row) put(out, value);
      out += "\n";
    }
  }
  return out;
}

bool isPostgresSpec(const std::string& spec) { return spec.rfind(kPrefix, 0) == 0; }

Result<std::unique_ptr<Store>> openTestStore(const std::string& spec, std::size_t poolSize) {
  if (!isPostgresSpec(spec)) {
    auto store = SqliteStore::open(spec);
    if (!store) return tl::unexpected(store.error());
    return std::unique_ptr<Store>(std::move(*store));
  }
#ifdef ASYNCFLOW_TEST_STORE_POSTGRES
  auto server = pgTestServer();
  if (!server) return fail(Errc::StoreError, "no PostgreSQL test server (ASYNCFLOW_PG_STATE)");
  PostgresOptions options;
  options.schema = spec.substr(kPrefix.size());
  options.poolSize = poolSize;
  auto store = PostgresStore::open(server->conninfo, options);
  if (!store) return tl::unexpected(store.error());
  return std::unique_ptr<Store>(std::move(*store));
#else
  (void)poolSize;
  return fail(Errc::StoreError, "this build has no PostgreSQL store: " + spec);
#endif
}

void dropTestStores(const std::string& spec) {
  if (!isPostgresSpec(spec)) return;
#ifdef ASYNCFLOW_TEST_STORE_POSTGRES
  auto server = pgTestServer();
  if (!server) return;
  PGconn* conn = PQconnectdb(server->conninfo.c_str());
  PQsetNoticeProcessor(
      conn, [](void*, const char*) {}, nullptr);
  const std::string prefix = spec.substr(kPrefix.size());
  // The names are the tests' own ([a-z0-9_]), so they need no quoting.
  PGresult* names = PQexec(
      conn,
      ("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, '" + prefix + "')").c_str());
  std::vector<std::string> schemas;
  for (int i = 0; i < PQntuples(names); ++i) schemas.emplace_back(PQgetvalue(names, i, 0));
  PQclear(names);
  for (const std::string& schema : schemas) {
    PQclear(PQexec(conn, ("DROP SCHEMA IF EXISTS " + schema + " CASCADE").c_str()));
  }
  PQfinish(conn);
#endif
}

}  // namespace asyncflow::testing
