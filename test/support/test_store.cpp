#include "support/test_store.hpp"

#include <string_view>
#include <vector>

#include "asyncflow/sqlite_store.hpp"

#ifdef ASYNCFLOW_TEST_STORE_POSTGRES
#include <libpq-fe.h>

#include "asyncflow/postgres_store.hpp"
#include "postgres/pg_test_server.hpp"
#endif

namespace asyncflow::testing {
namespace {

constexpr std::string_view kPrefix = "postgres:";

}  // namespace

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
