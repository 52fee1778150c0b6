// The PostgreSQL store's schema: its migrations and how a schema is told
// apart from another application's (internal to the PostgreSQL store).
#pragma once

#include <string>

#include "asyncflow/error.hpp"
#include "store/postgres/pq.hpp"

namespace asyncflow::detail::pg {

// The newest migration's version.
int latestSchemaVersion() noexcept;

// Whether `schema` is a name PostgresOptions admits: 1 to 63 of [a-z0-9_], not
// starting with a digit.
bool validSchemaName(const std::string& schema) noexcept;

// Creates `schema` if absent and applies the migrations it lacks, in one
// transaction under an advisory lock on the schema's name, so that of hosts
// starting at once one migrates and the others find it done. StoreError,
// changing nothing, when the schema holds tables but no asyncflow_migrations
// (another application's) or a version newer than this library's. Throws
// PgError when the server fails.
Result<void> migrate(Connection& connection, const std::string& schema);

}  // namespace asyncflow::detail::pg
