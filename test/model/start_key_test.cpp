// Pins what src/model/start_key.hpp decides for Engine::startOnce: which
// idempotency keys are admitted, and the fields' fingerprint, whose encoding is
// frozen because stores keep it.
#include "model/start_key.hpp"

#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "support/catch.hpp"
#include "support/printers.hpp"
#include "support/test_support.hpp"

using asyncflow::Errc;
using asyncflow::Fields;
using asyncflow::detail::checkStartKey;
using asyncflow::detail::fingerprintOf;
using asyncflow::detail::kMaxStartKeyBytes;
using asyncflow::testing::contains;
using asyncflow::testing::errorOf;

TEST_CASE("idempotency keys of 1 to 255 printable ASCII bytes are admitted") {
  const std::vector<std::string> keys = {
      "k",
      "0f8fad5b-d9cb-469f-a165-70867728950e",
      "order A-17 retry",  // a space inside
      "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
      std::string(kMaxStartKeyBytes, 'x'),
  };
  for (const std::string& key : keys) {
    INFO("key '" << key << "'");
    CHECK(checkStartKey(key).has_value());
  }
}

TEST_CASE("an empty, too long, non-printable or space-edged key is InvalidArgument") {
  const std::vector<std::pair<std::string, std::string>> refused = {
      {"", "is empty"},
      {std::string(kMaxStartKeyBytes + 1, 'x'), "256 bytes long; at most 255"},
      {"line\nbreak", "byte 0x0a at 4"},
      {"tab\there", "byte 0x09 at 3"},
      {std::string("nul\0byte", 8), "byte 0x00 at 3"},
      {"delete\x7f", "byte 0x7f at 6"},
      {"caf\xc3\xa9", "byte 0xc3 at 3"},
      {" leading", "starts or ends with a space"},
      {"trailing ", "starts or ends with a space"},
      {" ", "starts or ends with a space"},
  };
  for (const auto& [key, reason] : refused) {
    INFO("key of " << key.size() << " bytes, expecting '" << reason << "'");
    const asyncflow::Error error = errorOf(checkStartKey(key));
    CHECK(error.code == Errc::InvalidArgument);
    CHECK(contains(error.message, "idempotency key"));
    CHECK(contains(error.message, reason));
  }
}

TEST_CASE("the fingerprint is FNV-1a 64 of the frozen encoding") {
  // Computed outside asyncflow from the encoding in start_key.hpp. If these
  // change, every key a store holds looks reused: do not change them.
  CHECK(fingerprintOf(Fields{}) == 0xa8c7f832281a39c5ull);
  CHECK(fingerprintOf(Fields{{"OrderId", "A-17"}}) == 0x96c75820581f8f8aull);
  CHECK(fingerprintOf(Fields{{"Amount", 12.5},
                             {"Count", -3},
                             {"Flag", true},
                             {"None", nullptr},
                             {"Text", std::string("a\0b", 3)}}) == 0x9968f317b548a203ull);
}

TEST_CASE("equal fields have equal fingerprints, whatever order they were set in") {
  Fields a;
  a.set("B", 2).set("A", "one").set("C", 3.5);
  Fields b;
  b.set("C", 3.5).set("A", "one").set("B", 2);
  CHECK(fingerprintOf(a) == fingerprintOf(b));
  CHECK(fingerprintOf(a) == fingerprintOf(Fields(a)));
}

TEST_CASE("a different name, type, value or field count gives another fingerprint") {
  const std::vector<Fields> different = {
      {},
      {{"A", nullptr}},  // a null field is not an absent one
      {{"A", 1}},
      {{"A", 1.0}},  // 1 and 1.0 differ
      {{"A", true}},
      {{"A", false}},
      {{"A", 0}},
      {{"A", 0.0}},
      {{"A", -0.0}},  // as the stores keep them: -0.0 is not 0.0
      {{"A", "1"}},
      {{"A", ""}},
      {{"A", std::string(1, '\0')}},
      {{"B", 1}},
      {{"A", 2}},
      {{"A", std::numeric_limits<std::int64_t>::min()}},
      {{"A", std::numeric_limits<double>::infinity()}},
      // Where one string ends and the next begins is part of the encoding.
      {{"ab", "c"}},
      {{"a", "bc"}},
      {{"a", "b"}, {"c", ""}},
      {{"A", 1}, {"B", 1}},
      {{"A", 1}, {"B", 2}},
  };
  std::set<std::uint64_t> seen;
  for (const Fields& fields : different) {
    INFO("fields " << Catch::StringMaker<Fields>::convert(fields));
    CHECK(seen.insert(fingerprintOf(fields)).second);
  }
}
