#include "store/postgres/codec.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <variant>

#include <fmt/format.h>

namespace asyncflow::detail::pg {
namespace {

// The length of the well-formed UTF-8 sequence at `s[i]` (Unicode's table 3-7:
// no overlong forms, no surrogates, nothing past U+10FFFF); 0 when there is none.
std::size_t sequenceAt(std::string_view s, std::size_t i) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char lead = byte(i);
  const std::size_t left = s.size() - i;
  const auto tail = [&](std::size_t k) { return (byte(k) & 0xC0) == 0x80; };
  if (lead >= 0x01 && lead <= 0x7F) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return left >= 2 && tail(i + 1) ? 2 : 0;
  if (lead >= 0xE0 && lead <= 0xEF) {
    if (left < 3 || !tail(i + 1) || !tail(i + 2)) return 0;
    const unsigned char second = byte(i + 1);
    if (lead == 0xE0 && second < 0xA0) return 0;  // overlong
    if (lead == 0xED && second > 0x9F) return 0;  // a surrogate
    return 3;
  }
  if (lead >= 0xF0 && lead <= 0xF4) {
    if (left < 4 || !tail(i + 1) || !tail(i + 2) || !tail(i + 3)) return 0;
    const unsigned char second = byte(i + 1);
    if (lead == 0xF0 && second < 0x90) return 0;  // overlong
    if (lead == 0xF4 && second > 0x8F) return 0;  // past U+10FFFF
    return 4;
  }
  return 0;  // NUL, a continuation byte, or a lead byte no sequence starts with
}

int hexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

[[noreturn]] void badValue(const std::string& name, Type type, std::string_view text) {
  throw std::runtime_error(
      fmt::format("field '{}' holds '{}', which is not a {}", name, text, typeName(type)));
}

}  // namespace

std::string encodeText(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (std::size_t i = 0; i < bytes.size();) {
    if (bytes[i] == '\\') {
      out += "\\\\";
      ++i;
      continue;
    }
    const std::size_t n = sequenceAt(bytes, i);
    if (n == 0) {
      out += fmt::format("\\x{:02x}", static_cast<unsigned char>(bytes[i]));
      ++i;
      continue;
    }
    out.append(bytes.substr(i, n));
    i += n;
  }
  return out;
}

std::string decodeText(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '\\') {
      out += text[i];
      continue;
    }
    if (i + 1 < text.size() && text[i + 1] == '\\') {
      out += '\\';
      ++i;
      continue;
    }
    const int high = i + 3 < text.size() && text[i + 1] == 'x' ? hexDigit(text[i + 2]) : -1;
    const int low = high >= 0 ? hexDigit(text[i + 3]) : -1;
    if (low < 0) {
      throw std::runtime_error(
          fmt::format("the database holds text with a bad escape at byte {}", i));
    }
    out += static_cast<char>(high * 16 + low);
    i += 3;
  }
  return out;
}

void addTimeOrNull(Params& params, Timestamp t) {
  if (t == Timestamp{}) {
    params.addNull();
  } else {
    addTime(params, t);
  }
}

void addOptionalTime(Params& params, const std::optional<Timestamp>& t) {
  if (t) {
    addTime(params, *t);
  } else {
    params.addNull();
  }
}

Timestamp timeOf(const PgResult& result, int row, int column) {
  return fromMicros(result.int64(row, column));
}

Timestamp timeOrEpoch(const PgResult& result, int row, int column) {
  return result.isNull(row, column) ? Timestamp{} : timeOf(result, row, column);
}

std::optional<Timestamp> optionalTime(const PgResult& result, int row, int column) {
  if (result.isNull(row, column)) return std::nullopt;
  return timeOf(result, row, column);
}

void addValue(Params& params, const Value& value) {
  params.add(std::string(typeName(value.type())));
  std::visit(
      [&](const auto& v) {
        using V = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<V, std::monostate>) {
          params.addNull();
        } else if constexpr (std::is_same_v<V, bool>) {
          params.add(std::string(v ? "true" : "false"));
        } else if constexpr (std::is_same_v<V, std::int64_t>) {
          params.add(v);
        } else if constexpr (std::is_same_v<V, double>) {
          params.add(fmt::format("{}", v));  // shortest round-trip: nan, inf, -0, 1e+300
        } else {
          addText(params, v);
        }
      },
      value.variant());
}

Value readValue(const PgResult& result, int row, int typeColumn, const std::string& name) {
  const Type type = nameOf<Type>(result, row, typeColumn, "field type");
  const int column = typeColumn + 1;
  const bool null = result.isNull(row, column);
  const std::string_view text = result.text(row, column);
  switch (type) {
    case Type::Null:
      if (null) return Value();
      break;
    case Type::Bool:
      if (text == "true") return Value(true);
      if (text == "false") return Value(false);
      break;
    case Type::Int64: {
      std::int64_t n = 0;
      const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), n);
      if (!null && error == std::errc() && end == text.data() + text.size()) return Value(n);
      break;
    }
    case Type::Double: {
      double d = 0;
      const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), d);
      if (!null && error == std::errc() && end == text.data() + text.size()) return Value(d);
      break;
    }
    case Type::String:
      if (!null) return Value(decodeText(text));
      break;
  }
  badValue(name, type, null ? std::string_view("NULL") : text);
}

std::int64_t limitOf(std::size_t limit) noexcept {
  return static_cast<std::int64_t>(
      std::min<std::size_t>(limit, static_cast<std::size_t>(INT64_MAX)));
}

}  // namespace asyncflow::detail::pg
