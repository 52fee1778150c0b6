// Serial numbers: "{instance}_{run}" plus "_{secret}" (internal).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "asyncflow/error.hpp"
#include "asyncflow/random.hpp"
#include "asyncflow/step.hpp"

namespace asyncflow::detail {

// Bytes of randomness in a secret, and its base64url length without padding.
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

// Parses a serial. InvalidSerial (with the reason) unless it is two positive
// decimal ids without leading zeros that fit in int64, optionally followed by
// '_' and exactly kSecretChars base64url characters.
Result<SerialParts> parseSerial(std::string_view serial);

// A new secret: kSecretBytes from `random`, base64url-encoded.
Result<std::string> newSecret(RandomSource& random);

}  // namespace asyncflow::detail
