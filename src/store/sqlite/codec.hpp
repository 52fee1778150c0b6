// How records' values are bound to and read from SQLite columns (internal to
// the SQLite store): timestamps as INTEGER microseconds, "not yet" as NULL,
// enumerations by name, strings byte-exact, field values with their type name.
//
// Reads throw (std::runtime_error) on what the database should not hold, and
// binds throw std::length_error for a string SQLite cannot store; the store's
// mapExceptions turns both into a StoreError.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <SQLiteCpp/Column.h>
#include <SQLiteCpp/Statement.h>

#include "asyncflow/clock.hpp"
#include "asyncflow/value.hpp"
#include "store/enum_names.hpp"
#include "store/micros.hpp"

namespace asyncflow::detail::sqlite {

// SQLite's default SQLITE_MAX_LENGTH: a longer string or blob cannot be stored.
constexpr std::size_t kMaxBytes = 1'000'000'000;

using detail::fromMicros;
using detail::toMicros;

// The text of a column, byte-exact (embedded NULs included); empty for NULL.
std::string bytesOf(const SQLite::Column& column);

// Binds `text` with its explicit length; throws std::length_error beyond kMaxBytes.
void bindText(SQLite::Statement& statement, int index, const std::string& text);

// Binds the name of an enumerator (statusName, typeName, ...) as text, without a
// copy: those names are NUL-terminated literals that outlive every statement.
inline void bindName(SQLite::Statement& statement, int index, std::string_view name) {
  statement.bindNoCopy(index, name.data());
}

// Binds `t` as INTEGER microseconds since the Unix epoch.
inline void bindTime(SQLite::Statement& statement, int index, Timestamp t) {
  statement.bind(index, static_cast<std::int64_t>(toMicros(t)));
}

// As bindTime, but the epoch ("not yet") is NULL.
void bindTimeOrNull(SQLite::Statement& statement, int index, Timestamp t);

// The column's timestamp; the epoch for NULL.
Timestamp timeOrEpoch(const SQLite::Column& column);

// Binds a field's type name to `index` and its value to `index + 1`.
void bindValue(SQLite::Statement& statement, int index, const Value& value);

// Reads the type name at column `index` and the value at `index + 1`. A value
// whose storage class does not fit its type (an operator's edit, or corruption)
// is an error naming the field.
Value readValue(const SQLite::Statement& row, int index, const std::string& name);

// A page size for a LIMIT parameter: `limit`, capped at INT64_MAX.
std::int64_t limitOf(std::size_t limit) noexcept;

using detail::parseName;

}  // namespace asyncflow::detail::sqlite
