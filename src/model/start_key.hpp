// Idempotent starts (internal, pure): which idempotency keys Engine::startOnce
// admits, and the fingerprint of a start's fields that tells a repeated start
// from a key reused for another one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "asyncflow/error.hpp"
#include "asyncflow/fields.hpp"

namespace asyncflow::detail {

// The longest idempotency key, in bytes.
inline constexpr std::size_t kMaxStartKeyBytes = 255;

// Whether `key` may name a start: 1 to kMaxStartKeyBytes bytes of printable
// ASCII (0x20 to 0x7E), with no space first or last (an HTTP header's value
// loses those, so such a key could not be sent twice the same way). Otherwise
// InvalidArgument saying why; the message quotes the key through quoted().
Result<void> checkStartKey(std::string_view key);

// 64-bit FNV-1a over a canonical encoding of `fields`: the count, then per field
// in name order its name (length-prefixed), its Type as one byte, and its value
// (a bool as one byte, an int64 as 8 bytes, a double as the 8 bytes of its IEEE
// bits, a string length-prefixed; lengths and numbers little-endian, 8 bytes).
// Equal Fields give equal fingerprints; a different name, type (1 and 1.0
// differ) or value gives another, but for a 2^-64 chance. Stores keep
// fingerprints, so the encoding is frozen: changing it makes every stored key
// look reused.
std::uint64_t fingerprintOf(const Fields& fields) noexcept;

}  // namespace asyncflow::detail
