#include "model/serial.hpp"

#include <array>

#include <fmt/format.h>

namespace asyncflow::detail {
namespace {

// The digits of a new secret, in the order of their value.
constexpr char kBase62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

// Every character a stored secret may hold: base62 now, base64url before.
bool isBase64Url(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_';
}

// Parses a positive decimal id without sign or leading zero that fits int64.
bool parseId(std::string_view text, std::int64_t& out) {
  if (text.empty() || text.size() > 19 || text[0] == '0') return false;
  std::uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + static_cast<std::uint64_t>(c - '0');
  }
  if (value > static_cast<std::uint64_t>(INT64_MAX)) return false;
  out = static_cast<std::int64_t>(value);
  return true;
}

// The big-endian number in `bytes` as kSecretChars base62 digits, zero-padded:
// schoolbook division by 62, one digit per pass, least significant first.
std::string encodeBase62(std::array<std::uint8_t, kSecretBytes> bytes) {
  std::string out(kSecretChars, kBase62[0]);
  for (std::size_t digit = kSecretChars; digit-- > 0;) {
    unsigned remainder = 0;
    for (std::uint8_t& byte : bytes) {
      const unsigned value = remainder * 256 + byte;
      byte = static_cast<std::uint8_t>(value / 62);
      remainder = value % 62;
    }
    out[digit] = kBase62[remainder];
  }
  return out;
}

}  // namespace

std::string formatSerial(InstanceId instance, std::int64_t run, std::string_view secret) {
  if (secret.empty()) return fmt::format("{}_{}", instance, run);
  return fmt::format("{}_{}_{}", instance, run, secret);
}

Result<SerialParts> parseSerial(std::string_view serial) {
  // Cap what is echoed back: a hostile serial may be huge or binary, and a real
  // secret must not reach a log, even behind a mistyped separator. Only the
  // leading ids are shown: digits and at most two '_', then "..." and the length.
  auto shown = [&] {
    constexpr std::size_t kShown = 40;
    std::size_t visible = 0;
    for (int separators = 0; visible < serial.size() && visible < kShown;) {
      const char c = serial[visible];
      if (c == '_') {
        ++visible;
        if (++separators == 2) break;  // what follows may be a secret, digits or not
      } else if (c >= '0' && c <= '9') {
        ++visible;
      } else {
        break;
      }
    }
    std::string text(serial.substr(0, visible));
    if (visible < serial.size()) text += fmt::format("... ({} bytes)", serial.size());
    return text;
  };
  if (serial.empty()) return fail(Errc::InvalidSerial, "the serial is empty");

  SerialParts parts;
  const auto first = serial.find('_');
  if (first == std::string_view::npos) {
    return fail(Errc::InvalidSerial, fmt::format("serial '{}' is not of the form "
                                                 "{{instance}}_{{run}}[_{{secret}}]",
                                                 shown()));
  }
  const auto second = serial.find('_', first + 1);
  const auto runText = serial.substr(
      first + 1, second == std::string_view::npos ? std::string_view::npos : second - first - 1);
  if (!parseId(serial.substr(0, first), parts.instance) || !parseId(runText, parts.run)) {
    return fail(Errc::InvalidSerial,
                fmt::format("serial '{}' does not start with two positive ids", shown()));
  }
  if (second != std::string_view::npos) {
    const auto secret = serial.substr(second + 1);
    bool valid = secret.size() == kSecretChars;
    for (char c : secret) valid = valid && isBase64Url(c);
    if (!valid) {
      return fail(Errc::InvalidSerial, fmt::format("serial '{}' has a malformed secret", shown()));
    }
    parts.secret = std::string(secret);
  }
  return parts;
}

Result<std::string> newSecret(RandomSource& random) {
  std::array<std::uint8_t, kSecretBytes> bytes{};
  if (auto filled = random.fill(bytes.data(), bytes.size()); !filled) {
    return tl::unexpected(filled.error());
  }
  return encodeBase62(bytes);
}

}  // namespace asyncflow::detail
