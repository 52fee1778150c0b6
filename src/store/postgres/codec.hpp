// How records' values travel to and from PostgreSQL columns (internal to the
// PostgreSQL store), in libpq's text format: timestamps as bigint
// microseconds, "not yet" as NULL, enumerations by name, field values as text
// beside their type name, and every string through encodeText.
//
// Reads throw std::runtime_error (or PgError) on what the database should not
// hold; the store maps both to a StoreError.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "asyncflow/clock.hpp"
#include "asyncflow/value.hpp"
#include "store/enum_names.hpp"
#include "store/micros.hpp"
#include "store/postgres/pq.hpp"

namespace asyncflow::detail::pg {

// Any bytes as PostgreSQL text: valid UTF-8 without NUL as it is, except a
// backslash, written twice; a NUL byte and every byte that is not part of a
// well-formed UTF-8 sequence as \xHH (two lower-case hex digits). So a string
// is readable in psql, round-trips exactly, and two strings are equal exactly
// when their encodings are.
std::string encodeText(std::string_view bytes);

// The bytes encodeText(bytes) was made from; throws std::runtime_error for
// text encodeText never writes (a lone backslash, a bad escape).
std::string decodeText(std::string_view text);

// Adds `text` encoded.
inline void addText(Params& params, std::string_view text) { params.add(encodeText(text)); }

// The column's text, decoded; empty for NULL.
inline std::string textOf(const PgResult& result, int row, int column) {
  return decodeText(result.text(row, column));
}

// Adds `t` as bigint microseconds since the Unix epoch.
inline void addTime(Params& params, Timestamp t) { params.add(toMicros(t)); }

// As addTime, but the epoch ("not yet") is NULL.
void addTimeOrNull(Params& params, Timestamp t);

// As addTime, but none is NULL.
void addOptionalTime(Params& params, const std::optional<Timestamp>& t);

// The column's timestamp; throws for NULL.
Timestamp timeOf(const PgResult& result, int row, int column);

// The column's timestamp; the epoch for NULL.
Timestamp timeOrEpoch(const PgResult& result, int row, int column);

// The column's timestamp; none for NULL.
std::optional<Timestamp> optionalTime(const PgResult& result, int row, int column);

// Adds a field's type name, then its value as text (NULL for a Null value):
// Bool as true/false, Int64 in decimal, Double as the shortest text that reads
// back to the same bits (nan, inf, -inf, -0 included), String encoded.
void addValue(Params& params, const Value& value);

// The value whose type name is in column `typeColumn` and whose text is in the
// next one. A text that does not fit its type is an error naming the field.
Value readValue(const PgResult& result, int row, int typeColumn, const std::string& name);

// The enumerator named in the column; throws for a name this library does not know.
template <class Enum>
Enum nameOf(const PgResult& result, int row, int column, const char* what) {
  return parseName<Enum>(result.text(row, column), what);
}

// A page size for a LIMIT parameter: `limit`, capped at INT64_MAX.
std::int64_t limitOf(std::size_t limit) noexcept;

}  // namespace asyncflow::detail::pg
