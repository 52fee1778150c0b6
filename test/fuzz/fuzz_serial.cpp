// fuzz_serial: the serial parser and secret encoder (src/model/serial.hpp) on
// arbitrary bytes.
//
// Properties, each checked on every input:
// - parseSerial never crashes; it accepts the input or fails with InvalidSerial
//   and a short, printable message (a hostile serial is never echoed raw, and
//   what may be its secret not at all);
// - what it accepts is canonical: positive ids, an empty or 22-character
//   base64url secret (a new base62 one or one stored before base62, which may
//   hold '-' and '_'), and formatSerial gives back exactly the input, which
//   parses to the same parts;
// - in the other direction, ids and 16 secret bytes taken from the input: the
//   secret newSecret makes of the bytes is 22 base62 characters that decode
//   back to them, and the ids and secret format to a serial with exactly two
//   '_' that parses back to them;
// - constantTimeEquals agrees with ==.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "fuzz_support.hpp"
#include "model/serial.hpp"
#include "util/constant_time.hpp"

namespace {

using asyncflow::Errc;
using asyncflow::Result;
using asyncflow::fuzz::broken;
using asyncflow::fuzz::ByteReader;
using asyncflow::fuzz::shown;
namespace detail = asyncflow::detail;

// Hands out the fuzz input's bytes as "random" secret bytes, and keeps the
// last ones it handed out.
class BytesRandom final : public asyncflow::RandomSource {
 public:
  explicit BytesRandom(ByteReader& in) : in_(in) {}
  Result<void> fill(std::uint8_t* out, std::size_t size) override {
    last_.clear();
    for (std::size_t i = 0; i < size; ++i) {
      out[i] = in_.byte();
      last_ += static_cast<char>(out[i]);
    }
    return {};
  }
  const std::string& last() const { return last_; }

 private:
  ByteReader& in_;
  std::string last_;
};

bool isBase64Url(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_';
}

// The kSecretBytes big-endian bytes whose zero-padded base62 (0-9, A-Z, a-z) is
// `secret`, decoded apart from the encoder; empty unless `secret` is
// kSecretChars base62 digits of a number below 2^128.
std::string base62Bytes(std::string_view secret) {
  constexpr std::string_view kDigits =
      "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  if (secret.size() != detail::kSecretChars) return {};
  unsigned char bytes[detail::kSecretBytes] = {};
  for (char c : secret) {
    const auto digit = kDigits.find(c);
    if (digit == std::string_view::npos) return {};
    auto carry = static_cast<unsigned>(digit);
    for (std::size_t i = detail::kSecretBytes; i-- > 0;) {
      const unsigned value = bytes[i] * 62u + carry;
      bytes[i] = static_cast<unsigned char>(value & 0xff);
      carry = value >> 8;
    }
    if (carry != 0) return {};
  }
  return std::string(reinterpret_cast<const char*>(bytes), sizeof bytes);
}

void checkParse(std::string_view text) {
  auto parsed = detail::parseSerial(text);
  if (!parsed) {
    const auto& error = parsed.error();
    if (error.code != Errc::InvalidSerial) {
      broken("a refused serial is InvalidSerial", error.toString() + " for '" + shown(text) + "'");
    }
    // The message shows at most 40 characters of the serial, printable ones only.
    if (error.message.empty() || error.message.size() > 160) {
      broken("the message is short", error.message);
    }
    for (char c : error.message) {
      if (c < 0x20 || c >= 0x7f) broken("the message is printable", shown(error.message));
    }
    // What follows the second '_' may be a real secret: a message (which may
    // reach a log) never repeats 22 base64url characters of it.
    const auto first = text.find('_');
    const auto second = first == std::string_view::npos ? first : text.find('_', first + 1);
    if (second != std::string_view::npos && text.size() - second - 1 >= detail::kSecretChars) {
      const std::string_view secret = text.substr(second + 1, detail::kSecretChars);
      bool secretLike = true;
      for (char c : secret) secretLike = secretLike && isBase64Url(c);
      // (Unless they also stand in the part up to the second '_', which may be shown.)
      if (secretLike && error.message.find(secret) != std::string::npos &&
          text.substr(0, second + 1).find(secret) == std::string_view::npos) {
        broken("a refusal never echoes the secret", shown(error.message));
      }
    }
    return;
  }
  const auto& parts = *parsed;
  if (parts.instance <= 0 || parts.run <= 0) {
    broken("accepted ids are positive", "'" + shown(text) + "'");
  }
  if (!parts.secret.empty()) {
    bool valid = parts.secret.size() == detail::kSecretChars;
    for (char c : parts.secret) valid = valid && isBase64Url(c);
    if (!valid) broken("an accepted secret is 22 base64url characters", shown(parts.secret));
  }
  const std::string formatted = detail::formatSerial(parts.instance, parts.run, parts.secret);
  if (formatted != text) {
    broken("an accepted serial is canonical: it formats back to itself",
           "'" + shown(text) + "' formats as '" + shown(formatted) + "'");
  }
  auto again = detail::parseSerial(formatted);
  if (!again || again->instance != parts.instance || again->run != parts.run ||
      again->secret != parts.secret) {
    broken("a formatted serial parses to the same parts", "'" + shown(formatted) + "'");
  }
}

// Ids and a secret from the input: format, parse, compare.
void checkFormat(const std::uint8_t* data, std::size_t size) {
  ByteReader in(data, size);
  // Positive ids spread over the whole int64 range, small ones often.
  auto id = [&in] {
    const std::uint64_t raw = in.littleEndian(8);
    const std::int64_t value = static_cast<std::int64_t>(raw & 0x7fffffffffffffffULL);
    return value == 0 ? 1 : value;
  };
  const std::int64_t instance = id();
  const std::int64_t run = id();
  BytesRandom random(in);
  auto secret = detail::newSecret(random);
  if (!secret || secret->size() != detail::kSecretChars) {
    broken("newSecret makes 22 characters", secret ? *secret : secret.error().toString());
  }
  if (base62Bytes(*secret) != random.last()) {
    broken("newSecret is the base62 of the bytes it drew",
           "'" + *secret + "' for bytes '" + shown(random.last()) + "'");
  }
  for (const std::string& s : {*secret, std::string()}) {
    const std::string serial = detail::formatSerial(instance, run, s);
    const auto first = serial.find('_');
    const auto second = serial.find('_', first + 1);
    const bool twoSeparators =
        s.empty() ? second == std::string::npos : serial.find('_', second + 1) == std::string::npos;
    if (!twoSeparators) broken("a new serial holds '_' only as separators", "'" + serial + "'");
    auto parsed = detail::parseSerial(serial);
    if (!parsed || parsed->instance != instance || parsed->run != run || parsed->secret != s) {
      broken("a formatted serial parses back",
             "'" + serial + "': " + (parsed ? "other parts" : parsed.error().toString()));
    }
  }
  // constantTimeEquals is ==, whatever the lengths.
  const std::string rest = in.bytes(size);
  const std::string_view a(rest.data(), rest.size() / 2);
  const std::string_view b(rest.data() + rest.size() / 2, rest.size() - rest.size() / 2);
  if (detail::constantTimeEquals(a, b) != (a == b) || !detail::constantTimeEquals(a, a)) {
    broken("constantTimeEquals agrees with ==", "'" + shown(a) + "' vs '" + shown(b) + "'");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  checkParse(std::string_view(reinterpret_cast<const char*>(data), size));
  checkFormat(data, size);
  return 0;
}
