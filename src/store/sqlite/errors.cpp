#include "store/sqlite/errors.hpp"

#include <sqlite3.h>

namespace asyncflow::detail::sqlite {

std::string_view describe(const SQLite::Exception& e) noexcept {
  const int code = e.getErrorCode();
  switch (code < 0 ? code : code & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return "database is busy: another connection held its lock for longer than the busy "
             "timeout";
    case SQLITE_FULL: return "database or disk is full";
    case SQLITE_IOERR: return "disk I/O error";
    case SQLITE_CORRUPT: return "database file is corrupt";
    case SQLITE_NOTADB: return "file is not a database";
    case SQLITE_READONLY: return "database is read-only";
    case SQLITE_PERM:
    case SQLITE_AUTH: return "access to the database was denied";
    case SQLITE_CANTOPEN: return "cannot open the database file";
    case SQLITE_NOMEM: return "out of memory";
    case SQLITE_CONSTRAINT: return "the schema refused a row (a constraint failed)";
    case SQLITE_TOOBIG: return "a value is too large for SQLite";
    default: return "SQLite failed";
  }
}

bool isNotADatabase(const SQLite::Exception& e) noexcept {
  return e.getErrorCode() >= 0 && (e.getErrorCode() & 0xff) == SQLITE_NOTADB;
}

Error storeError(std::string_view operation, const SQLite::Exception& e) {
  return Error(Errc::StoreError, fmt::format("{}: {} ({})", operation, describe(e), e.what()));
}

}  // namespace asyncflow::detail::sqlite
