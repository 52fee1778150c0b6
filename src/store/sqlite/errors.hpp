// SQLite failures as asyncflow errors (internal to the SQLite store).
//
// Every exception SQLiteCpp, the codec or an allocation throws is mapped here,
// at the store's boundary, to a StoreError naming the operation: none crosses
// the Store interface.
#pragma once

#include <exception>
#include <new>
#include <string_view>
#include <utility>

#include <SQLiteCpp/Exception.h>
#include <fmt/format.h>

#include "asyncflow/error.hpp"

namespace asyncflow::detail::sqlite {

// What a SQLite result code means for a caller, without the SQL; e.g. "disk I/O
// error". Never fails.
std::string_view describe(const SQLite::Exception& e) noexcept;

// Whether `e` says the file is not a SQLite database (SQLITE_NOTADB).
bool isNotADatabase(const SQLite::Exception& e) noexcept;

// StoreError "{operation}: {describe(e)} ({e.what()})".
Error storeError(std::string_view operation, const SQLite::Exception& e);

// Runs `body` (returning a Result), mapping every exception it throws to a
// StoreError for `operation`: a SQLite exception to `sqliteError(e)`, others to
// "{operation}: out of memory", "{operation}: {what()}" or "{operation}: unknown
// error".
template <class F, class SqliteError>
auto mapExceptions(std::string_view operation, F&& body, SqliteError&& sqliteError)
    -> decltype(body()) {
  try {
    return std::forward<F>(body)();
  } catch (const SQLite::Exception& e) {
    return tl::unexpected(sqliteError(e));
  } catch (const std::bad_alloc&) {
    return fail(Errc::StoreError, fmt::format("{}: out of memory", operation));
  } catch (const std::exception& e) {
    return fail(Errc::StoreError, fmt::format("{}: {}", operation, e.what()));
  } catch (...) {
    return fail(Errc::StoreError, fmt::format("{}: unknown error", operation));
  }
}

// As above, with storeError(operation, e) for a SQLite exception.
template <class F>
auto mapExceptions(std::string_view operation, F&& body) -> decltype(body()) {
  return mapExceptions(operation, std::forward<F>(body), [operation](const SQLite::Exception& e) {
    return storeError(operation, e);
  });
}

}  // namespace asyncflow::detail::sqlite
