#include "store/sqlite/codec.hpp"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <variant>

#include <fmt/format.h>
#include <sqlite3.h>

namespace asyncflow::detail::sqlite {

std::string bytesOf(const SQLite::Column& column) {
  // sqlite3_column_blob before sqlite3_column_bytes, as SQLite documents.
  const char* data = static_cast<const char*>(column.getBlob());
  const int size = column.getBytes();
  return size > 0 && data != nullptr ? std::string(data, static_cast<std::size_t>(size))
                                     : std::string();
}

void bindText(SQLite::Statement& statement, int index, const std::string& text) {
  if (text.size() > kMaxBytes) {
    throw std::length_error(
        fmt::format("a string of {} bytes is longer than SQLite stores", text.size()));
  }
  statement.bind(index, text);  // sqlite3_bind_text with the explicit length
}

void bindTimeOrNull(SQLite::Statement& statement, int index, Timestamp t) {
  if (t == Timestamp{}) {
    statement.bind(index);
  } else {
    bindTime(statement, index, t);
  }
}

Timestamp timeOrEpoch(const SQLite::Column& column) {
  return column.isNull() ? Timestamp{} : fromMicros(column.getInt64());
}

void bindValue(SQLite::Statement& statement, int index, const Value& value) {
  bindName(statement, index, typeName(value.type()));
  std::visit(
      [&](const auto& v) {
        using V = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<V, std::monostate>) {
          statement.bind(index + 1);
        } else if constexpr (std::is_same_v<V, bool>) {
          statement.bind(index + 1, v ? 1 : 0);
        } else if constexpr (std::is_same_v<V, std::int64_t>) {
          statement.bind(index + 1, v);
        } else if constexpr (std::is_same_v<V, double>) {
          statement.bind(index + 1, v);  // NaN becomes NULL; see readValue
        } else {
          bindText(statement, index + 1, v);
        }
      },
      value.variant());
}

Value readValue(const SQLite::Statement& row, int index, const std::string& name) {
  const Type type = parseName<Type>(std::string_view(row.getColumn(index).getText()), "field type");
  const SQLite::Column value = row.getColumn(index + 1);
  const int storage = value.getType();
  switch (type) {
    case Type::Null:
      if (storage == SQLITE_NULL) return Value();
      break;
    case Type::Bool:
      if (storage == SQLITE_INTEGER) {
        const std::int64_t b = value.getInt64();
        if (b == 0 || b == 1) return Value(b == 1);
      }
      break;
    case Type::Int64:
      if (storage == SQLITE_INTEGER) return Value(value.getInt64());
      break;
    case Type::Double:
      if (storage == SQLITE_FLOAT || storage == SQLITE_INTEGER) return Value(value.getDouble());
      if (storage == SQLITE_NULL) return Value(std::numeric_limits<double>::quiet_NaN());
      break;
    case Type::String:
      if (storage == SQLITE_TEXT || storage == SQLITE_BLOB) return Value(bytesOf(value));
      break;
  }
  throw std::runtime_error(
      fmt::format("field '{}' holds a value that is not a {}", name, typeName(type)));
}

std::int64_t limitOf(std::size_t limit) noexcept {
  return static_cast<std::int64_t>(
      std::min<std::size_t>(limit, static_cast<std::size_t>(INT64_MAX)));
}

}  // namespace asyncflow::detail::sqlite
