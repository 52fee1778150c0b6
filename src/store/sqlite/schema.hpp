// The SQLite store's schema: its migrations, and how a file is identified,
// configured and brought up to date when it is opened (internal to the SQLite
// store). Each call throws SQLite::Exception on a SQLite failure (the caller's
// mapExceptions maps it) and returns StoreError for a file asyncflow must not use.
#pragma once

#include <string>

#include <SQLiteCpp/Database.h>

#include "asyncflow/error.hpp"
#include "asyncflow/sqlite_store.hpp"

namespace asyncflow::detail::sqlite {

// PRAGMA application_id of every asyncflow database: "AFLW" in ASCII. A file
// with tables but another id belongs to another application and is left alone.
constexpr int kApplicationId = 0x41464C57;

// The version of the newest migration: what SqliteStore::schemaVersion() reports.
int latestSchemaVersion() noexcept;

// The file's schema version (0 when it is empty), or StoreError when asyncflow
// must not use it: another application's, an asyncflow file without its
// migrations table, or a schema newer than this library's. Only reads, in one
// transaction: a foreign file is not modified.
Result<int> identify(SQLite::Database& db, const std::string& path);

// Sets the connection's page size (for a new file), WAL journal mode,
// synchronous level and page cap. StoreError when WAL cannot be switched on.
Result<void> configure(SQLite::Database& db, const std::string& path, const SqliteOptions& options);

// Applies the migrations newer than `version`, each in one transaction; none
// (and no lock taken) when the file is current. Another process may be opening
// the same file: each transaction identifies the file again under the write
// lock and skips what that process applied meanwhile.
Result<void> migrate(SQLite::Database& db, const std::string& path, int version);

}  // namespace asyncflow::detail::sqlite
