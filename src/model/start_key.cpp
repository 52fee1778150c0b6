#include "model/start_key.hpp"

#include <cstring>
#include <string>
#include <type_traits>
#include <variant>

#include <fmt/format.h>

#include "util/text.hpp"

namespace asyncflow::detail {
namespace {

// FNV-1a, 64 bits, fed one piece of the encoding at a time.
class Fnv1a {
 public:
  void bytes(const void* data, std::size_t size) noexcept {
    const auto* p = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < size; ++i) hash_ = (hash_ ^ p[i]) * kPrime;
  }
  void byte(unsigned char b) noexcept { bytes(&b, 1); }
  // Little-endian whatever the host's byte order.
  void u64(std::uint64_t v) noexcept {
    for (int i = 0; i < 8; ++i) byte(static_cast<unsigned char>(v >> (8 * i)));
  }
  void text(std::string_view s) noexcept {
    u64(s.size());
    bytes(s.data(), s.size());
  }
  std::uint64_t value() const noexcept { return hash_; }

 private:
  static constexpr std::uint64_t kPrime = 1099511628211ull;
  std::uint64_t hash_ = 14695981039346656037ull;  // the offset basis
};

}  // namespace

Result<void> checkStartKey(std::string_view key) {
  if (key.empty()) return fail(Errc::InvalidArgument, "the idempotency key is empty");
  if (key.size() > kMaxStartKeyBytes) {
    return fail(Errc::InvalidArgument,
                fmt::format("the idempotency key '{}' is {} bytes long; at most {} are allowed",
                            quoted(key), key.size(), kMaxStartKeyBytes));
  }
  for (std::size_t i = 0; i < key.size(); ++i) {
    const auto c = static_cast<unsigned char>(key[i]);
    if (c < 0x20 || c > 0x7e) {
      return fail(Errc::InvalidArgument,
                  fmt::format("the idempotency key '{}' holds byte 0x{:02x} at {}; only "
                              "printable ASCII is allowed",
                              quoted(key), c, i));
    }
  }
  if (key.front() == ' ' || key.back() == ' ') {
    return fail(Errc::InvalidArgument,
                fmt::format("the idempotency key '{}' starts or ends with a space", quoted(key)));
  }
  return {};
}

std::uint64_t fingerprintOf(const Fields& fields) noexcept {
  Fnv1a hash;
  hash.u64(fields.size());
  for (const auto& [name, value] : fields) {
    hash.text(name);
    hash.byte(static_cast<unsigned char>(value.type()));
    std::visit(
        [&hash](const auto& v) {
          using V = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<V, bool>) {
            hash.byte(v ? 1 : 0);
          } else if constexpr (std::is_same_v<V, std::int64_t>) {
            hash.u64(static_cast<std::uint64_t>(v));
          } else if constexpr (std::is_same_v<V, double>) {
            std::uint64_t bits = 0;
            static_assert(sizeof bits == sizeof v);
            std::memcpy(&bits, &v, sizeof bits);
            hash.u64(bits);
          } else if constexpr (std::is_same_v<V, std::string>) {
            hash.text(v);
          }
        },
        value.variant());
  }
  return hash.value();
}

}  // namespace asyncflow::detail
