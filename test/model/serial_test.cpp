// Pins the serial format of DESIGN.md section 6 (src/model/serial.hpp): what is
// produced (base62 secrets), what is accepted (base64url secrets too, as stored
// before base62), and that everything else is InvalidSerial.
#include "model/serial.hpp"

#include <array>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "support/catch.hpp"
#include "support/printers.hpp"
#include "support/test_support.hpp"
#include "util/constant_time.hpp"

namespace {

using asyncflow::Errc;
using asyncflow::Error;
using asyncflow::Result;
using asyncflow::detail::constantTimeEquals;
using asyncflow::detail::formatSerial;
using asyncflow::detail::kSecretBytes;
using asyncflow::detail::kSecretChars;
using asyncflow::detail::newSecret;
using asyncflow::detail::parseSerial;
using asyncflow::testing::CountingRandom;

constexpr std::int64_t kMaxId = std::numeric_limits<std::int64_t>::max();

// A secret that parseSerial accepts: base64url of the bytes 0..15, as secrets
// were written before base62.
const std::string kSecret = "AAECAwQFBgcICQoLDA0ODw";

// A secret as newSecret writes it now: base62 of the bytes 0..15.
const std::string kBase62Secret = "000SYW7RiJxkEgOGusQGwp";

// How many secrets the statistical tests draw.
constexpr int kDraws = 100000;

// Yields the same byte forever.
class ConstantRandom final : public asyncflow::RandomSource {
 public:
  explicit ConstantRandom(std::uint8_t byte) : byte_(byte) {}

  Result<void> fill(std::uint8_t* out, std::size_t size) override {
    for (std::size_t i = 0; i < size; ++i) out[i] = byte_;
    return {};
  }

 private:
  std::uint8_t byte_;
};

// Yields a fixed sequence of 16 bytes.
class FixedRandom final : public asyncflow::RandomSource {
 public:
  explicit FixedRandom(std::vector<std::uint8_t> bytes) : bytes_(std::move(bytes)) {}

  Result<void> fill(std::uint8_t* out, std::size_t size) override {
    REQUIRE(size == bytes_.size());
    for (std::size_t i = 0; i < size; ++i) out[i] = bytes_[i];
    return {};
  }

 private:
  std::vector<std::uint8_t> bytes_;
};

// A reproducible stream from std::mt19937_64 (whose output the standard fixes),
// eight bytes per draw, low byte first.
class SeededRandom final : public asyncflow::RandomSource {
 public:
  explicit SeededRandom(std::uint64_t seed) : engine_(seed) {}

  Result<void> fill(std::uint8_t* out, std::size_t size) override {
    std::uint64_t word = 0;
    for (std::size_t i = 0; i < size; ++i) {
      if (i % 8 == 0) word = engine_();
      out[i] = static_cast<std::uint8_t>(word >> (8 * (i % 8)));
    }
    return {};
  }

 private:
  std::mt19937_64 engine_;
};

// Forwards to another source and keeps the bytes of its last fill.
class TappedRandom final : public asyncflow::RandomSource {
 public:
  explicit TappedRandom(asyncflow::RandomSource& source) : source_(source) {}

  Result<void> fill(std::uint8_t* out, std::size_t size) override {
    auto filled = source_.fill(out, size);
    last_.assign(out, out + size);
    return filled;
  }

  const std::vector<std::uint8_t>& last() const { return last_; }

 private:
  asyncflow::RandomSource& source_;
  std::vector<std::uint8_t> last_;
};

// Always fails, as an exhausted or broken entropy source would.
class BrokenRandom final : public asyncflow::RandomSource {
 public:
  Result<void> fill(std::uint8_t*, std::size_t) override {
    return asyncflow::fail(Errc::Internal, "getrandom failed: ENOSYS");
  }
};

// The serial with control bytes shown, for failure messages.
std::string printable(std::string_view text) {
  constexpr std::size_t kShown = 60;
  std::string out;
  for (char c : text.substr(0, kShown)) {
    if (c >= 0x20 && c < 0x7f) {
      out += c;
    } else {
      out += "\\x";
      out += "0123456789abcdef"[(static_cast<unsigned char>(c) >> 4) & 15];
      out += "0123456789abcdef"[static_cast<unsigned char>(c) & 15];
    }
  }
  if (text.size() > kShown) out += "...(" + std::to_string(text.size()) + " bytes)";
  return out;
}

// The 16 big-endian bytes whose zero-padded base62 (0-9, A-Z, a-z) is `secret`,
// worked out apart from newSecret: times 62 plus each digit. Nothing unless
// `secret` is kSecretChars base62 digits of a number below 2^128.
std::optional<std::vector<std::uint8_t>> base62Bytes(std::string_view secret) {
  constexpr std::string_view kDigits =
      "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  if (secret.size() != kSecretChars) return std::nullopt;
  std::vector<std::uint8_t> bytes(kSecretBytes, 0);
  for (char c : secret) {
    const auto digit = kDigits.find(c);
    if (digit == std::string_view::npos) return std::nullopt;
    auto carry = static_cast<unsigned>(digit);
    for (auto byte = bytes.rbegin(); byte != bytes.rend(); ++byte) {
      const unsigned value = *byte * 62u + carry;
      *byte = static_cast<std::uint8_t>(value & 0xff);
      carry = value >> 8;
    }
    if (carry != 0) return std::nullopt;
  }
  return bytes;
}

// Draws kDraws secrets from `source` through newSecret and formatSerial, and
// checks each serial: no '_' after its second separator, a secret of 22 letters
// and digits that is the base62 of the drawn bytes, and parseSerial gives back
// the parts. Also checks that each of the 128 bits took both values.
void checkNewSerials(asyncflow::RandomSource& source) {
  TappedRandom random(source);
  std::array<std::uint8_t, kSecretBytes> anyOne{};
  std::array<std::uint8_t, kSecretBytes> anyZero{};
  std::set<std::string> secrets;
  int bad = 0;
  std::string firstBad;
  for (int i = 0; i < kDraws; ++i) {
    const auto secret = newSecret(random);
    REQUIRE(secret.has_value());
    const std::string serial = formatSerial(5, 31, *secret);
    const auto second = serial.find('_', serial.find('_') + 1);
    const auto parts = parseSerial(serial);
    const bool good = second == 4 && serial.find('_', second + 1) == std::string::npos &&
                      serial.substr(second + 1) == *secret &&
                      base62Bytes(*secret) == random.last() && parts.has_value() &&
                      parts->instance == 5 && parts->run == 31 && parts->secret == *secret;
    if (!good && bad++ == 0) firstBad = serial;
    secrets.insert(*secret);
    for (std::size_t b = 0; b < kSecretBytes; ++b) {
      anyOne[b] |= random.last()[b];
      anyZero[b] |= static_cast<std::uint8_t>(~random.last()[b]);
    }
  }
  INFO("first bad serial: " << firstBad);
  CHECK(bad == 0);
  CHECK(secrets.size() == static_cast<std::size_t>(kDraws));
  for (std::size_t b = 0; b < kSecretBytes; ++b) {
    INFO("byte " << b);
    CHECK(anyOne[b] == 0xff);
    CHECK(anyZero[b] == 0xff);
  }
}

// Checks that `serial` is refused as InvalidSerial with a short, printable message.
void checkRejected(std::string_view serial) {
  INFO("serial '" << printable(serial) << "'");
  const auto parsed = parseSerial(serial);
  REQUIRE_FALSE(parsed.has_value());
  CHECK(parsed.error().code == Errc::InvalidSerial);
  CHECK_FALSE(parsed.error().message.empty());
  // A hostile serial is not echoed whole, nor are its control bytes.
  CHECK(parsed.error().message.size() < 200);
  bool printableOnly = true;
  for (char c : parsed.error().message) printableOnly = printableOnly && c >= 0x20 && c < 0x7f;
  CHECK(printableOnly);
}

}  // namespace

// --- formatSerial and parseSerial --------------------------------------------

TEST_CASE("formatSerial writes K2's bare instance_run shape without a secret") {
  CHECK(formatSerial(5, 31, "") == "5_31");
  CHECK(formatSerial(1, 1, "") == "1_1");
  CHECK(formatSerial(kMaxId, kMaxId, "") == "9223372036854775807_9223372036854775807");
}

TEST_CASE("formatSerial appends the secret after a third underscore") {
  CHECK(formatSerial(5, 31, kSecret) == "5_31_" + kSecret);
}

TEST_CASE("parseSerial reads a bare serial") {
  const auto parts = parseSerial("5_31");
  REQUIRE(parts.has_value());
  CHECK(parts->instance == 5);
  CHECK(parts->run == 31);
  CHECK(parts->secret.empty());
}

TEST_CASE("parseSerial reads a serial with a secret") {
  const auto parts = parseSerial("5_31_" + kSecret);
  REQUIRE(parts.has_value());
  CHECK(parts->instance == 5);
  CHECK(parts->run == 31);
  CHECK(parts->secret == kSecret);
}

TEST_CASE("parseSerial accepts every base64url character in a secret") {
  for (const std::string secret :
       {"ABCDEFGHIJKLMNOPQRSTUV", "WXYZabcdefghijklmnopqr", "stuvwxyz0123456789-_-_",
        "______________________", "----------------------"}) {
    INFO("secret " << secret);
    REQUIRE(secret.size() == kSecretChars);
    const auto parts = parseSerial("7_8_" + secret);
    REQUIRE(parts.has_value());
    CHECK(parts->secret == secret);
  }
}

TEST_CASE("parseSerial reads a secret stored before base62, with '_' and '-' inside") {
  // Old secrets are base64url: '_' may stand anywhere in them, first and last
  // included, and only the first two '_' of the serial separate.
  const std::vector<std::string> secrets = {"8PHy8_T19vf4-fr7_P3-_w", "_8PHy8_T19vf4-fr7_P3-_",
                                            "-_-_-_-_-_-_-_-_-_-_-_", std::string(21, '_') + "w"};
  for (const std::string& secret : secrets) {
    INFO("secret " << secret);
    REQUIRE(secret.size() == kSecretChars);
    const std::string serial = "5_31_" + secret;
    const auto parts = parseSerial(serial);
    REQUIRE(parts.has_value());
    CHECK(parts->instance == 5);
    CHECK(parts->run == 31);
    CHECK(parts->secret == secret);
    CHECK(formatSerial(parts->instance, parts->run, parts->secret) == serial);
  }
}

TEST_CASE("formatSerial and parseSerial round-trip") {
  const std::vector<std::int64_t> ids = {1, 9, 10, 31, 1000000007, kMaxId};
  for (std::int64_t instance : ids) {
    for (std::int64_t run : ids) {
      for (const std::string& secret : {std::string(), kSecret, kBase62Secret}) {
        const std::string serial = formatSerial(instance, run, secret);
        INFO("serial " << serial);
        const auto parts = parseSerial(serial);
        REQUIRE(parts.has_value());
        CHECK(parts->instance == instance);
        CHECK(parts->run == run);
        CHECK(parts->secret == secret);
      }
    }
  }
}

TEST_CASE("parseSerial round-trips a secret made by newSecret") {
  CountingRandom random(100);
  const auto secret = newSecret(random);
  REQUIRE(secret.has_value());
  const auto parts = parseSerial(formatSerial(12, 34, *secret));
  REQUIRE(parts.has_value());
  CHECK(parts->instance == 12);
  CHECK(parts->run == 34);
  CHECK(parts->secret == *secret);
}

TEST_CASE("parseSerial rejects an empty serial") { checkRejected(""); }

TEST_CASE("parseSerial rejects serials that are not two ids") {
  for (const char* serial : {"5", "5_", "_5", "_", "__", "5__31", "_5_31", "abc", "5-31", "5.31"}) {
    checkRejected(serial);
  }
}

TEST_CASE("parseSerial rejects zero, signed and zero-padded ids") {
  for (const char* serial : {"0_1", "1_0", "0_0", "05_1", "5_01", "00_1", "5_00", "-5_1", "5_-1",
                             "+5_1", "5_+1", "-0_1"}) {
    checkRejected(serial);
  }
}

TEST_CASE("parseSerial rejects ids that overflow int64") {
  for (const char* serial : {
           "9223372036854775808_1",    // INT64_MAX + 1
           "1_9223372036854775808",    //
           "9999999999999999999_1",    // 19 digits, fits uint64 but not int64
           "1_9999999999999999999",    //
           "18446744073709551616_1",   // 2^64, wraps to 0 in uint64
           "18446744073709551617_1",   // 2^64 + 1, wraps to 1 in uint64
           "1_18446744073709551621",   // wraps to 5
           "100000000000000000000_1",  // 21 digits
       }) {
    checkRejected(serial);
  }
}

TEST_CASE("parseSerial accepts the largest ids") {
  const auto parts = parseSerial("9223372036854775807_9223372036854775807");
  REQUIRE(parts.has_value());
  CHECK(parts->instance == kMaxId);
  CHECK(parts->run == kMaxId);
}

TEST_CASE("parseSerial rejects non-digits in ids") {
  for (const char* serial :
       {"5a_1", "a5_1", "5_1a", "5_a1", " 5_1", "5 _1", "5_ 1", "0x5_1", "5e3_1",
        "\xef\xbc\x95_1" /* fullwidth digit five */, "5_\xd9\xa1", "5\t_1"}) {
    checkRejected(serial);
  }
}

TEST_CASE("parseSerial rejects trailing garbage after a bare serial") {
  for (const char* serial : {"5_31 ", "5_31\n", "5_31x", "5_31/", "5_31?a=b", "5_31#"}) {
    checkRejected(serial);
  }
}

TEST_CASE("parseSerial rejects a secret of the wrong length") {
  checkRejected("5_31_");
  checkRejected("5_31_" + kSecret.substr(1));        // 21 characters
  checkRejected("5_31_" + kSecret + "A");            // 23 characters
  checkRejected("5_31_" + kSecret + kSecret);        // 44 characters
  checkRejected("5_31_" + kSecret + " ");            // trailing space
  checkRejected("5_31_" + kSecret + "\n");           // trailing newline
  checkRejected("5_31_" + kSecret + "_" + kSecret);  // a fourth part
}

TEST_CASE("parseSerial rejects a secret with characters outside base64url") {
  for (char bad : {'+', '/', '=', '.', ' ', '~', '%', '\x7f', '\x80', '\xff'}) {
    std::string secret = kSecret;
    secret[10] = bad;
    checkRejected("5_31_" + secret);
    secret = kSecret;
    secret.back() = bad;
    checkRejected("5_31_" + secret);
  }
  // Standard base64 padding is not base64url.
  checkRejected("5_31_AAECAwQFBgcICQoLDA0ODw==");
  checkRejected("5_31_AAECAwQFBgcICQoLDA0O==");
}

TEST_CASE("parseSerial rejects embedded NUL bytes") {
  using namespace std::string_literals;
  checkRejected(std::string_view("\0"s));
  checkRejected(std::string_view("5\0_31"s));
  checkRejected(std::string_view("5_3\0001"s));
  checkRejected(std::string_view("5_31\0"s));
  checkRejected(std::string_view("\0005_31"s));
  std::string secret = kSecret;
  secret[5] = '\0';
  checkRejected("5_31_" + secret);
  checkRejected("5_31_" + kSecret + "\0"s);
}

TEST_CASE("parseSerial rejects a 1 MiB serial without echoing it") {
  constexpr std::size_t kMiB = 1 << 20;
  checkRejected(std::string(kMiB, '1'));
  checkRejected("5_" + std::string(kMiB, '1'));
  checkRejected(std::string(kMiB, '1') + "_5");
  checkRejected("5_31_" + std::string(kMiB, 'A'));
  checkRejected(std::string(kMiB, '_'));
  checkRejected(std::string(kMiB, '\0'));
}

TEST_CASE(
    "a rejection never echoes what may be a secret, digits or a mistyped separator included") {
  // What follows the second '_', or the ids when a separator is mistyped, may be
  // a real secret: the message shows only the leading ids and the length.
  const std::string secret = "Q2hhbmdlTWUxMjM0NTY3OA";
  const std::string digits(22, '2');
  for (const std::string& serial : {"5_31_" + secret + "x", "5_31-" + secret, "__" + digits,
                                    "5__" + digits + "7", "5_31_" + digits + "_"}) {
    CAPTURE(serial);
    const auto parsed = parseSerial(serial);
    REQUIRE_FALSE(parsed.has_value());
    CHECK(parsed.error().code == Errc::InvalidSerial);
    CHECK(parsed.error().message.find(secret) == std::string::npos);
    CHECK(parsed.error().message.find(digits.substr(0, 8)) == std::string::npos);
    CHECK(parsed.error().message.find(std::to_string(serial.size()) + " bytes") !=
          std::string::npos);
  }
}

TEST_CASE("parseSerial reports each rejection as InvalidSerial, never another code") {
  // The table of DESIGN.md section 5: malformed is InvalidSerial, distinct from
  // NotFound (well-formed but unknown), which parseSerial cannot tell.
  for (const char* serial : {"", "x", "0_0", "1_1_short"}) {
    const auto parsed = parseSerial(serial);
    REQUIRE_FALSE(parsed.has_value());
    CHECK(parsed.error().code == Errc::InvalidSerial);
  }
}

// --- newSecret -------------------------------------------------------------

TEST_CASE("newSecret asks for kSecretBytes and writes them as 22 base62 digits") {
  STATIC_REQUIRE(kSecretBytes == 16);
  STATIC_REQUIRE(kSecretChars == 22);  // 62^21 < 2^128 <= 62^22

  CountingRandom random(0);
  const auto secret = newSecret(random);
  REQUIRE(secret.has_value());
  // Bytes 00 01 .. 0f as one big-endian number (Python:
  // int.from_bytes(bytes(range(16)), "big")) in base62.
  CHECK(*secret == kBase62Secret);
  CHECK(secret->size() == kSecretChars);
  CHECK(random.requests() == std::vector<std::size_t>{kSecretBytes});
}

TEST_CASE("newSecret known answers: zero, one, 61, 62, 2^127 and 2^128 - 1") {
  // The expected values come from Python's integers, not from this encoder.
  ConstantRandom zeros(0);
  CHECK(newSecret(zeros).value() == std::string(kSecretChars, '0'));
  ConstantRandom ones(0xff);
  CHECK(newSecret(ones).value() == "7n42DGM5Tflk9n8mt7Fhc7");

  auto lastByte = [](std::uint8_t byte) {
    std::vector<std::uint8_t> bytes(kSecretBytes, 0);
    bytes.back() = byte;
    return bytes;
  };
  FixedRandom one(lastByte(1));
  CHECK(newSecret(one).value() == std::string(21, '0') + "1");
  FixedRandom sixtyOne(lastByte(61));
  CHECK(newSecret(sixtyOne).value() == std::string(21, '0') + "z");
  FixedRandom sixtyTwo(lastByte(62));
  CHECK(newSecret(sixtyTwo).value() == std::string(20, '0') + "10");

  std::vector<std::uint8_t> half(kSecretBytes, 0);
  half.front() = 0x80;
  FixedRandom highBit(half);
  CHECK(newSecret(highBit).value() == "3tX16dB2jpss4tZORYcqo4");

  CountingRandom high(0xf0);  // f0 f1 .. ff
  CHECK(newSecret(high).value() == "7KejEB2hoMnyVC3MoOmLWh");
}

TEST_CASE("newSecret agrees with an independent base62 decoder on edge values") {
  std::vector<std::vector<std::uint8_t>> inputs;
  for (int bit = 0; bit < 128; ++bit) {
    std::vector<std::uint8_t> power(kSecretBytes, 0);  // 2^bit
    power[kSecretBytes - 1 - static_cast<std::size_t>(bit / 8)] =
        static_cast<std::uint8_t>(1u << (bit % 8));
    std::vector<std::uint8_t> belowPower(kSecretBytes, 0);  // 2^bit - 1
    for (int low = 0; low < bit; ++low) {
      belowPower[kSecretBytes - 1 - static_cast<std::size_t>(low / 8)] |=
          static_cast<std::uint8_t>(1u << (low % 8));
    }
    inputs.push_back(power);
    inputs.push_back(belowPower);
  }
  for (const auto& bytes : inputs) {
    FixedRandom random(bytes);
    const std::string secret = newSecret(random).value();
    INFO("secret " << secret);
    CHECK(base62Bytes(secret) == bytes);
  }
}

TEST_CASE("newSecret is injective: distinct bytes give distinct secrets") {
  // A seeded sample plus inputs one bit or one byte apart from each other.
  std::map<std::string, std::vector<std::uint8_t>> bytesOf;
  std::set<std::vector<std::uint8_t>> inputs;
  auto draw = [&](const std::vector<std::uint8_t>& bytes) {
    FixedRandom random(bytes);
    const std::string secret = newSecret(random).value();
    const auto [entry, fresh] = bytesOf.emplace(secret, bytes);
    if (!fresh && entry->second != bytes) FAIL("two inputs give the secret " << secret);
    inputs.insert(bytes);
  };
  SeededRandom seeded(20240611);
  for (int i = 0; i < kDraws; ++i) {
    std::vector<std::uint8_t> bytes(kSecretBytes);
    REQUIRE(seeded.fill(bytes.data(), bytes.size()));
    draw(bytes);
  }
  for (std::size_t at = 0; at < kSecretBytes; ++at) {
    for (int value = 0; value < 256; ++value) {
      std::vector<std::uint8_t> bytes(kSecretBytes, 0);
      bytes[at] = static_cast<std::uint8_t>(value);
      draw(bytes);
    }
  }
  CHECK(bytesOf.size() == inputs.size());
}

TEST_CASE("100000 new serials from a seeded source hold no '_' after the second separator") {
  SeededRandom random(0x5e71a15);
  checkNewSerials(random);
}

TEST_CASE("100000 new serials from the OS CSPRNG hold no '_' after the second separator") {
  // The default source: secrets differ and every one of the 128 bits varies.
  auto random = asyncflow::osRandom();
  REQUIRE(random != nullptr);
  checkNewSerials(*random);
}

TEST_CASE("newSecret draws fresh bytes on every call") {
  CountingRandom random(0);
  const auto first = newSecret(random);
  const auto second = newSecret(random);
  REQUIRE(first.has_value());
  REQUIRE(second.has_value());
  CHECK(*first != *second);
  // Bytes 10 11 .. 1f.
  CHECK(*second == "0UJg4EBGO3cQWJhXqJNbv5");
  CHECK(random.requests() == std::vector<std::size_t>{kSecretBytes, kSecretBytes});
}

TEST_CASE("newSecret propagates the random source's error unchanged") {
  BrokenRandom random;
  const auto secret = newSecret(random);
  REQUIRE_FALSE(secret.has_value());
  CHECK(secret.error() == Error(Errc::Internal, "getrandom failed: ENOSYS"));
}

// --- constantTimeEquals ----------------------------------------------------

TEST_CASE("constantTimeEquals is true exactly for equal strings") {
  CHECK(constantTimeEquals("", ""));
  CHECK(constantTimeEquals(kSecret, kSecret));
  CHECK(constantTimeEquals(kSecret, std::string(kSecret)));

  std::string firstDiffers = kSecret;
  firstDiffers.front() = 'B';
  CHECK_FALSE(constantTimeEquals(kSecret, firstDiffers));
  std::string lastDiffers = kSecret;
  lastDiffers.back() = 'x';
  CHECK_FALSE(constantTimeEquals(kSecret, lastDiffers));
  // A difference in one bit only.
  std::string oneBit = kSecret;
  oneBit[11] = static_cast<char>(oneBit[11] ^ 0x01);
  CHECK_FALSE(constantTimeEquals(kSecret, oneBit));
  CHECK_FALSE(constantTimeEquals("a", "A"));
}

TEST_CASE("constantTimeEquals is false for different lengths, prefixes included") {
  CHECK_FALSE(constantTimeEquals(kSecret, ""));
  CHECK_FALSE(constantTimeEquals("", kSecret));
  CHECK_FALSE(constantTimeEquals(kSecret, kSecret.substr(0, kSecretChars - 1)));
  CHECK_FALSE(constantTimeEquals(kSecret + "A", kSecret));
}

TEST_CASE("constantTimeEquals compares every byte, NUL and high bytes included") {
  using namespace std::string_literals;
  CHECK(constantTimeEquals("a\0b"s, "a\0b"s));
  CHECK_FALSE(constantTimeEquals("a\0b"s, "a\0c"s));
  CHECK_FALSE(constantTimeEquals("a\0b"s, "a"s));
  CHECK(constantTimeEquals("\xff\x80"s, "\xff\x80"s));
  CHECK_FALSE(constantTimeEquals("\xff\x80"s, "\xff\x81"s));
  CHECK_FALSE(constantTimeEquals("\x80"s, "\x00"s));
}
