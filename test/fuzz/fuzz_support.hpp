// What the fuzz targets share: a byte reader, the field encoding their inputs
// use, byte-exact value comparison, and a check that aborts (a libFuzzer crash)
// with a message saying which property broke.
//
// Field encoding (make_corpus.py writes seeds in it), one field after another:
//   name byte   < 0x80: the declared name names[byte % names.size()]
//               >= 0x80: a raw name of (byte & 0x7f) bytes that follow (may be
//                        empty, hold NULs or invalid UTF-8, or be undeclared)
//   tag byte % 8, then its payload:
//     0 Null            1 Bool: 1 byte (& 1)       2 Int64: 8 bytes little-endian
//     3 Double: 8 bytes little-endian, the IEEE bits (any NaN, -0.0, ...)
//     4 String: 1 length byte, then that many bytes
//     5 long String: a String as in 4, then a 2-byte little-endian repeat count
//     6 small Int64: 1 signed byte     7 special Double: kSpecialDoubles[byte % 8]
// A missing byte reads as 0, so every input decodes to something.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include <asyncflow/asyncflow.hpp>

namespace asyncflow::fuzz {

// Reads an input front to back; past the end it yields zeros and empty strings.
class ByteReader {
 public:
  ByteReader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  bool empty() const noexcept { return position_ >= size_; }

  std::uint8_t byte() noexcept { return empty() ? 0 : data_[position_++]; }

  // Up to `count` bytes: fewer when the input ends first.
  std::string bytes(std::size_t count) {
    const std::size_t available = empty() ? 0 : size_ - position_;
    const std::size_t taken = count < available ? count : available;
    std::string out(reinterpret_cast<const char*>(data_ + position_), taken);
    position_ += taken;
    return out;
  }

  // A length byte, then that many bytes.
  std::string text() { return bytes(byte()); }

  std::uint64_t littleEndian(int width) noexcept {
    std::uint64_t value = 0;
    for (int i = 0; i < width; ++i) value |= std::uint64_t{byte()} << (8 * i);
    return value;
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t position_ = 0;
};

// Doubles a mutator rarely reaches by flipping bits: NaNs of both signs (quiet
// and signalling), infinities, negative zero, the smallest denormal, the largest.
inline double specialDouble(std::uint8_t index) {
  auto fromBits = [](std::uint64_t bits) {
    double d;
    std::memcpy(&d, &bits, sizeof d);
    return d;
  };
  switch (index % 8) {
    case 0: return std::numeric_limits<double>::quiet_NaN();
    case 1: return -std::numeric_limits<double>::quiet_NaN();
    case 2: return std::numeric_limits<double>::infinity();
    case 3: return -std::numeric_limits<double>::infinity();
    case 4: return -0.0;
    case 5: return std::numeric_limits<double>::denorm_min();
    case 6: return std::numeric_limits<double>::max();
    default: return fromBits(0x7ff0000000000001ULL);  // a signalling NaN
  }
}

// The longest string one long-String tag makes, so that iterations stay fast.
inline constexpr std::size_t kMaxLongString = 256 * 1024;

// One value in the encoding above.
inline Value decodeValue(ByteReader& in) {
  switch (in.byte() % 8) {
    case 0: return Value();
    case 1: return Value((in.byte() & 1) != 0);
    case 2: return Value(static_cast<std::int64_t>(in.littleEndian(8)));
    case 3: {
      const std::uint64_t bits = in.littleEndian(8);
      double d;
      std::memcpy(&d, &bits, sizeof d);
      return Value(d);
    }
    case 4: return Value(in.text());
    case 5: {
      const std::string pattern = in.text();
      const std::size_t count = in.littleEndian(2);
      std::string out;
      if (pattern.empty()) return Value(std::string(count < kMaxLongString ? count : 0, 'x'));
      while (count > 0 && out.size() + pattern.size() <= kMaxLongString &&
             out.size() / pattern.size() < count) {
        out += pattern;
      }
      return Value(std::move(out));
    }
    case 6: return Value(static_cast<std::int64_t>(static_cast<std::int8_t>(in.byte())));
    default: return Value(specialDouble(in.byte()));
  }
}

// Fields in the encoding above, at most `limit` of them; a repeated name keeps
// its last value, as Fields::set does.
inline Fields decodeFields(ByteReader& in, const std::vector<std::string>& names,
                           std::size_t limit = 16) {
  Fields fields;
  for (std::size_t i = 0; i < limit && !in.empty(); ++i) {
    const std::uint8_t nameByte = in.byte();
    std::string name = nameByte < 0x80 ? names[nameByte % names.size()] : in.bytes(nameByte & 0x7f);
    fields.set(name, decodeValue(in));
  }
  return fields;
}

// Same type and the same bytes: a double compares by its bits, so -0.0 is not
// 0.0 and NaN equals the same NaN. With `anyNaN`, every NaN equals every NaN.
inline bool identical(const Value& a, const Value& b, bool anyNaN = false) {
  if (a.type() != b.type()) return false;
  if (a.type() != Type::Double) return a == b;
  const double x = *a.as<double>();
  const double y = *b.as<double>();
  if (anyNaN && std::isnan(x) && std::isnan(y)) return true;
  return std::memcmp(&x, &y, sizeof x) == 0;
}

inline bool identical(const Fields& a, const Fields& b, bool anyNaN = false) {
  if (a.size() != b.size()) return false;
  auto left = a.begin();
  for (auto right = b.begin(); right != b.end(); ++left, ++right) {
    if (left->first != right->first || !identical(left->second, right->second, anyNaN)) {
      return false;
    }
  }
  return true;
}

// A printable rendering of bytes for failure messages: \xNN for the rest.
inline std::string shown(std::string_view bytes, std::size_t limit = 80) {
  std::string out;
  for (std::size_t i = 0; i < bytes.size() && i < limit; ++i) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char escaped[5];
      std::snprintf(escaped, sizeof escaped, "\\x%02x", c);
      out += escaped;
    }
  }
  if (bytes.size() > limit) out += "...(" + std::to_string(bytes.size()) + " bytes)";
  return out;
}

inline std::string shownValue(const Value& value) {
  char buffer[64];
  switch (value.type()) {
    case Type::Null: return "null";
    case Type::Bool: return *value.as<bool>() ? "true" : "false";
    case Type::Int64: return std::to_string(*value.as<std::int64_t>());
    case Type::Double: {
      const double d = *value.as<double>();
      std::uint64_t bits;
      std::memcpy(&bits, &d, sizeof bits);
      std::snprintf(buffer, sizeof buffer, "%.17g (bits %016llx)", d,
                    static_cast<unsigned long long>(bits));
      return buffer;
    }
    case Type::String: return "\"" + shown(*value.as<std::string>()) + "\"";
  }
  return "?";
}

inline std::string shown(const Fields& fields) {
  std::string out = "{";
  for (const auto& [name, value] : fields) {
    if (out.size() > 1) out += ", ";
    out += "'" + shown(name) + "': " + shownValue(value);
  }
  return out + "}";
}

// A property failed: say which, and abort so that libFuzzer saves the input.
[[noreturn]] inline void broken(const std::string& property, const std::string& detail = {}) {
  std::fprintf(stderr, "\n*** fuzz property broken: %s\n    %s\n", property.c_str(),
               detail.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace asyncflow::fuzz
