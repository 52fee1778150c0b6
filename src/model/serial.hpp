// Serial numbers: "{instance}_{run}" plus "_{secret}" (internal).
//
// The grammar (include/asyncflow/records.hpp shows it above SerialForm, for
// users; this file implements it), e.g. "5_31_3R8RjEscrCCJnyXWIy7JOh":
//
//   serial = instance "_" run [ "_" secret ]
//   instance, run: positive decimals without sign or leading zero, within int64
//   secret: kSecretChars characters of [A-Za-z0-9_-]
//
// newSecret writes only [A-Za-z0-9]{22}, 128 random bits in base62. Secrets
// stored before base62 are base64url and may also hold '-' and '_', so
// parseSerial splits on the first two '_' only: the rest is the secret.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "asyncflow/error.hpp"
#include "asyncflow/random.hpp"
#include "asyncflow/step.hpp"

namespace asyncflow::detail {

// Bytes of randomness in a secret, and the length of every secret: base62 of a
// 128-bit number needs 22 digits (62^22 > 2^128), as unpadded base64url of 16
// bytes needs 22 characters.
inline constexpr std::size_t kSecretBytes = 16;
inline constexpr std::size_t kSecretChars = 22;

// A serial taken apart. `secret` is empty for a bare serial.
struct SerialParts {
  InstanceId instance = 0;
  std::int64_t run = 0;
  std::string secret;
};

// "5_31" or "5_31_<secret>".
std::string formatSerial(InstanceId instance, std::int64_t run, std::string_view secret);

// Parses a serial of the grammar above. InvalidSerial (with the reason) unless
// it is two ids, optionally followed by '_' and a secret of exactly
// kSecretChars base64url characters (which include the base62 ones).
Result<SerialParts> parseSerial(std::string_view serial);

// A new secret: kSecretBytes from `random`, read as one big-endian number and
// written as kSecretChars base62 digits (0-9, A-Z, a-z), zero-padded on the
// left. Distinct bytes give distinct secrets, so uniform bytes draw uniformly
// among 2^128 secrets. Fails with the source's error.
Result<std::string> newSecret(RandomSource& random);

}  // namespace asyncflow::detail
