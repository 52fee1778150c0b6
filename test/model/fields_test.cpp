// Pins the behaviour of the plain value types: Value, Fields, Error and errcName.
#include "asyncflow/fields.hpp"

#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "asyncflow/error.hpp"
#include "asyncflow/value.hpp"
#include "support/catch.hpp"
#include "support/test_support.hpp"

namespace {

using asyncflow::Errc;
using asyncflow::Error;
using asyncflow::Fields;
using asyncflow::Result;
using asyncflow::Type;
using asyncflow::Value;

using asyncflow::testing::contains;
using asyncflow::testing::errorOf;

// Every code, in declaration order.
const std::vector<Errc> kAllCodes = {
    Errc::InvalidArgument,   Errc::InvalidProcess, Errc::InvalidSerial, Errc::NotFound,
    Errc::AlreadyCompleted,  Errc::TimedOut,       Errc::StepFailed,    Errc::Cancelled,
    Errc::InvalidField,      Errc::StoreError,     Errc::Conflict,      Errc::Internal,
    Errc::ProcessNotDefined, Errc::AmbiguousKey,   Errc::KeyReused,
};

}  // namespace

// --- Value -----------------------------------------------------------------

TEST_CASE("A default Value and a nullptr Value are Null") {
  CHECK(Value().type() == Type::Null);
  CHECK(Value().isNull());
  CHECK(Value(nullptr).type() == Type::Null);
  CHECK(Value(nullptr) == Value());
}

TEST_CASE("Value takes its type from the constructor argument") {
  CHECK(Value(true).type() == Type::Bool);
  CHECK(Value(false).type() == Type::Bool);
  CHECK(Value(42).type() == Type::Int64);
  CHECK(Value(std::int64_t{-7}).type() == Type::Int64);
  CHECK(Value(short{3}).type() == Type::Int64);
  CHECK(Value(std::uint32_t{4000000000u}).type() == Type::Int64);
  CHECK(Value(2.5).type() == Type::Double);
  CHECK(Value("text").type() == Type::String);
  CHECK(Value(std::string("text")).type() == Type::String);
  CHECK(Value(std::string_view("text")).type() == Type::String);
  CHECK_FALSE(Value(0).isNull());
  CHECK_FALSE(Value("").isNull());
}

TEST_CASE("Value refuses uint64_t at compile time but takes narrower unsigned types") {
  STATIC_REQUIRE_FALSE(std::is_constructible_v<Value, std::uint64_t>);
  STATIC_REQUIRE(std::is_constructible_v<Value, std::uint32_t>);
  STATIC_REQUIRE(std::is_constructible_v<Value, std::int64_t>);
}

TEST_CASE("Value::as returns the stored value for its own type") {
  CHECK(Value(true).as<bool>().value() == true);
  CHECK(Value(false).as<bool>().value() == false);
  CHECK(Value(-12).as<std::int64_t>().value() == -12);
  CHECK(Value(std::numeric_limits<std::int64_t>::max()).as<std::int64_t>().value() ==
        std::numeric_limits<std::int64_t>::max());
  CHECK(Value(std::numeric_limits<std::int64_t>::min()).as<std::int64_t>().value() ==
        std::numeric_limits<std::int64_t>::min());
  CHECK(Value(std::uint32_t{4000000000u}).as<std::int64_t>().value() == 4000000000);
  CHECK(Value(0.25).as<double>().value() == 0.25);
  CHECK(Value("A-17").as<std::string>().value() == "A-17");
  CHECK(Value(std::string("with\0nul", 8)).as<std::string>().value() ==
        std::string("with\0nul", 8));
}

TEST_CASE("An Int64 Value also reads as a double") {
  CHECK(Value(7).as<double>().value() == 7.0);
  CHECK(Value(-3).as<double>().value() == -3.0);
  CHECK(Value(std::int64_t{1} << 53).as<double>().value() == 9007199254740992.0);
  // Reading as double does not change the stored type.
  Value seven(7);
  REQUIRE(seven.as<double>());
  CHECK(seven.type() == Type::Int64);
}

TEST_CASE("A Double Value does not read as an Int64") {
  CHECK(errorOf(Value(2.0).as<std::int64_t>()).code == Errc::InvalidField);
}

TEST_CASE("Value::as on a type mismatch fails with InvalidField naming both types") {
  const Error stringAsBool = errorOf(Value("yes").as<bool>());
  CHECK(stringAsBool.code == Errc::InvalidField);
  CHECK(contains(stringAsBool.message, "String"));
  CHECK(contains(stringAsBool.message, "Bool"));

  CHECK(errorOf(Value(true).as<std::int64_t>()).code == Errc::InvalidField);
  CHECK(errorOf(Value(1).as<bool>()).code == Errc::InvalidField);
  CHECK(errorOf(Value(1).as<std::string>()).code == Errc::InvalidField);
  CHECK(errorOf(Value("1").as<std::int64_t>()).code == Errc::InvalidField);
  CHECK(errorOf(Value("1.5").as<double>()).code == Errc::InvalidField);
  CHECK(errorOf(Value(1.5).as<std::string>()).code == Errc::InvalidField);
}

TEST_CASE("A Null Value reads as no type") {
  const Value null;
  CHECK(errorOf(null.as<bool>()).code == Errc::InvalidField);
  CHECK(errorOf(null.as<std::int64_t>()).code == Errc::InvalidField);
  CHECK(errorOf(null.as<double>()).code == Errc::InvalidField);
  const Error asString = errorOf(null.as<std::string>());
  CHECK(asString.code == Errc::InvalidField);
  CHECK(contains(asString.message, "Null"));
}

TEST_CASE("Values are equal only with the same type and the same value") {
  CHECK(Value(1) == Value(std::int64_t{1}));
  CHECK(Value("a") == Value(std::string("a")));
  CHECK(Value(1) != Value(2));
  CHECK(Value(1) != Value(1.0));
  CHECK(Value(true) != Value(1));
  CHECK(Value("1") != Value(1));
  CHECK(Value() != Value(false));
  CHECK(Value() != Value(""));
}

TEST_CASE("Value exposes its alternative through variant()") {
  CHECK(std::holds_alternative<std::monostate>(Value().variant()));
  CHECK(std::get<bool>(Value(true).variant()) == true);
  CHECK(std::get<std::int64_t>(Value(5).variant()) == 5);
  CHECK(std::get<double>(Value(0.5).variant()) == 0.5);
  CHECK(std::get<std::string>(Value("s").variant()) == "s");
}

TEST_CASE("Each Type has its own name") {
  CHECK(asyncflow::typeName(Type::Null) == "Null");
  CHECK(asyncflow::typeName(Type::Bool) == "Bool");
  CHECK(asyncflow::typeName(Type::Int64) == "Int64");
  CHECK(asyncflow::typeName(Type::Double) == "Double");
  CHECK(asyncflow::typeName(Type::String) == "String");
}

// --- Fields ----------------------------------------------------------------

TEST_CASE("New Fields are empty") {
  const Fields fields;
  CHECK(fields.empty());
  CHECK(fields.size() == 0);
  CHECK(fields.begin() == fields.end());
  CHECK_FALSE(fields.contains("anything"));
}

TEST_CASE("Fields::set adds a field and get reads it back") {
  Fields fields;
  fields.set("OrderId", "A-17").set("Amount", 12.5).set("Count", 3).set("Urgent", true);
  CHECK(fields.size() == 4);
  CHECK_FALSE(fields.empty());
  CHECK(fields.get<std::string>("OrderId").value() == "A-17");
  CHECK(fields.get<double>("Amount").value() == 12.5);
  CHECK(fields.get<std::int64_t>("Count").value() == 3);
  CHECK(fields.get<bool>("Urgent").value() == true);
}

TEST_CASE("Fields::set returns the same object for chaining") {
  Fields fields;
  CHECK(&fields.set("a", 1) == &fields);
  CHECK(&fields.merge(Fields{}) == &fields);
}

TEST_CASE("Fields::set replaces a field, including its type") {
  Fields fields;
  fields.set("Status", "Pending");
  fields.set("Status", "Approved");
  CHECK(fields.size() == 1);
  CHECK(fields.get<std::string>("Status").value() == "Approved");

  fields.set("Status", 2);
  CHECK(fields.size() == 1);
  CHECK(fields.get<std::int64_t>("Status").value() == 2);
  CHECK(errorOf(fields.get<std::string>("Status")).code == Errc::InvalidField);
}

TEST_CASE("Fields::get reads an Int64 field as a double") {
  const Fields fields{{"Amount", 10}};
  CHECK(fields.get<double>("Amount").value() == 10.0);
}

TEST_CASE("Fields::get on a missing field fails with NotFound naming it") {
  const Fields fields{{"Present", 1}};
  const Error error = errorOf(fields.get<std::int64_t>("Missing"));
  CHECK(error.code == Errc::NotFound);
  CHECK(contains(error.message, "Missing"));
}

TEST_CASE("Fields::get on a wrongly typed field fails with InvalidField naming it") {
  const Fields fields{{"Amount", "twelve"}};
  const Error error = errorOf(fields.get<double>("Amount"));
  CHECK(error.code == Errc::InvalidField);
  CHECK(contains(error.message, "Amount"));
}

TEST_CASE("Fields::get on a null field fails with InvalidField naming it") {
  const Fields fields{{"Ticket", nullptr}};
  REQUIRE(fields.contains("Ticket"));
  const Error error = errorOf(fields.get<std::string>("Ticket"));
  CHECK(error.code == Errc::InvalidField);
  CHECK(contains(error.message, "Ticket"));
}

TEST_CASE("Fields::getOr falls back only when the field cannot be read as T") {
  const Fields fields{{"Name", "Ada"}, {"Age", 36}, {"Nothing", nullptr}};
  CHECK(fields.getOr<std::string>("Name", "fallback") == "Ada");
  CHECK(fields.getOr<std::int64_t>("Age", -1) == 36);
  CHECK(fields.getOr<double>("Age", -1.0) == 36.0);
  CHECK(fields.getOr<std::string>("Missing", "fallback") == "fallback");
  CHECK(fields.getOr<std::int64_t>("Name", -1) == -1);
  CHECK(fields.getOr<bool>("Nothing", true) == true);
}

TEST_CASE("Fields::find returns the raw Value or nullptr") {
  const Fields fields{{"Name", "Ada"}, {"Nothing", nullptr}};
  const Value* name = fields.find("Name");
  REQUIRE(name != nullptr);
  CHECK(*name == Value("Ada"));
  const Value* nothing = fields.find("Nothing");
  REQUIRE(nothing != nullptr);
  CHECK(nothing->isNull());
  CHECK(fields.find("Missing") == nullptr);
}

TEST_CASE("Fields::contains is true for present fields, null ones included") {
  const Fields fields{{"Name", "Ada"}, {"Nothing", nullptr}};
  CHECK(fields.contains("Name"));
  CHECK(fields.contains("Nothing"));
  CHECK_FALSE(fields.contains("Missing"));
  CHECK_FALSE(fields.contains("name"));  // names are case-sensitive
}

TEST_CASE("Fields look names up by string_view without needing a terminator") {
  const Fields fields{{"Order", 1}};
  const std::string_view prefix = std::string_view("OrderId").substr(0, 5);
  CHECK(fields.contains(prefix));
  CHECK(fields.get<std::int64_t>(prefix).value() == 1);
  CHECK_FALSE(fields.contains(std::string_view("OrderId")));
}

TEST_CASE("Fields::merge overwrites and adds fields and keeps the rest") {
  Fields fields{{"Keep", 1}, {"Replace", "old"}};
  const Fields other{{"Replace", 2.5}, {"Add", true}};
  fields.merge(other);
  CHECK(fields.size() == 3);
  CHECK(fields.get<std::int64_t>("Keep").value() == 1);
  CHECK(fields.get<double>("Replace").value() == 2.5);
  CHECK(fields.get<bool>("Add").value() == true);
  // The source is left alone.
  CHECK(other.size() == 2);
  CHECK_FALSE(other.contains("Keep"));
}

TEST_CASE("Fields::merge of empty Fields changes nothing") {
  Fields fields{{"a", 1}};
  const Fields before = fields;
  fields.merge(Fields{});
  CHECK(fields == before);
}

TEST_CASE("Fields are equal when they hold the same names and values") {
  Fields inOneOrder;
  inOneOrder.set("a", 1).set("b", "x");
  Fields inAnotherOrder;
  inAnotherOrder.set("b", "x").set("a", 1);
  CHECK(inOneOrder == inAnotherOrder);
  CHECK_FALSE(inOneOrder != inAnotherOrder);

  CHECK(Fields{{"a", 1}} != Fields{{"a", 2}});
  CHECK(Fields{{"a", 1}} != Fields{{"a", 1.0}});
  CHECK(Fields{{"a", 1}} != Fields{{"b", 1}});
  CHECK(Fields{{"a", 1}} != (Fields{{"a", 1}, {"b", 1}}));
  CHECK(Fields{{"a", nullptr}} != Fields{});
  CHECK(Fields{} == Fields{});
}

TEST_CASE("Fields from an initializer list keep the last of a repeated name") {
  const Fields fields{{"Status", "Pending"}, {"Amount", 5}, {"Status", "Approved"}};
  CHECK(fields.size() == 2);
  CHECK(fields.get<std::string>("Status").value() == "Approved");
  CHECK(fields.get<std::int64_t>("Amount").value() == 5);
}

TEST_CASE("Fields iterate in name order") {
  const Fields fields{{"c", 3}, {"a", 1}, {"b", 2}};
  std::vector<std::string> names;
  std::vector<Value> values;
  for (const auto& [name, value] : fields) {
    names.push_back(name);
    values.push_back(value);
  }
  CHECK(names == std::vector<std::string>{"a", "b", "c"});
  CHECK(values == std::vector<Value>{Value(1), Value(2), Value(3)});
}

TEST_CASE("Copied Fields are independent") {
  Fields original{{"a", 1}};
  Fields copy = original;
  copy.set("a", 2).set("b", 3);
  CHECK(original.get<std::int64_t>("a").value() == 1);
  CHECK_FALSE(original.contains("b"));
  CHECK(copy != original);
}

// --- Error -----------------------------------------------------------------

TEST_CASE("Every Errc has its own non-empty name") {
  std::set<std::string_view> names;
  for (Errc code : kAllCodes) {
    const std::string_view name = asyncflow::errcName(code);
    INFO("code " << static_cast<int>(code) << " is named '" << std::string(name) << "'");
    CHECK_FALSE(name.empty());
    CHECK(name != "Unknown");
    CHECK(names.insert(name).second);
  }
  CHECK(names.size() == kAllCodes.size());
}

TEST_CASE("kAllCodes lists every Errc") {
  // The enum's values are contiguous from 0; the first one past the end is
  // "Unknown". If this fails, a code was added: add it to kAllCodes.
  int count = 0;
  while (asyncflow::errcName(static_cast<Errc>(count)) != "Unknown") ++count;
  CHECK(count == static_cast<int>(kAllCodes.size()));
  for (int i = 0; i < count; ++i) CHECK(static_cast<int>(kAllCodes[i]) == i);
}

TEST_CASE("errcName spells each code as in the source") {
  STATIC_REQUIRE(asyncflow::errcName(Errc::NotFound) == "NotFound");
  CHECK(asyncflow::errcName(Errc::InvalidArgument) == "InvalidArgument");
  CHECK(asyncflow::errcName(Errc::InvalidProcess) == "InvalidProcess");
  CHECK(asyncflow::errcName(Errc::InvalidSerial) == "InvalidSerial");
  CHECK(asyncflow::errcName(Errc::AlreadyCompleted) == "AlreadyCompleted");
  CHECK(asyncflow::errcName(Errc::TimedOut) == "TimedOut");
  CHECK(asyncflow::errcName(Errc::StepFailed) == "StepFailed");
  CHECK(asyncflow::errcName(Errc::Cancelled) == "Cancelled");
  CHECK(asyncflow::errcName(Errc::InvalidField) == "InvalidField");
  CHECK(asyncflow::errcName(Errc::StoreError) == "StoreError");
  CHECK(asyncflow::errcName(Errc::Conflict) == "Conflict");
  CHECK(asyncflow::errcName(Errc::Internal) == "Internal");
  CHECK(asyncflow::errcName(Errc::KeyReused) == "KeyReused");
}

TEST_CASE("Error::toString is the code's name then the message") {
  CHECK(Error(Errc::NotFound, "no step run 5_31").toString() == "NotFound: no step run 5_31");
  CHECK(Error(Errc::StoreError, "").toString() == "StoreError: ");
}

TEST_CASE("A default Error is Internal with no message") {
  const Error error;
  CHECK(error.code == Errc::Internal);
  CHECK(error.message.empty());
}

TEST_CASE("Errors are equal when code and message are equal") {
  CHECK(Error(Errc::NotFound, "x") == Error(Errc::NotFound, "x"));
  CHECK(Error(Errc::NotFound, "x") != Error(Errc::NotFound, "y"));
  CHECK(Error(Errc::NotFound, "x") != Error(Errc::Conflict, "x"));
}

TEST_CASE("fail builds the error side of any Result and hasCode tests it") {
  const Result<int> failed = asyncflow::fail(Errc::Conflict, "retry");
  CHECK(errorOf(failed) == Error(Errc::Conflict, "retry"));
  CHECK(asyncflow::hasCode(failed, Errc::Conflict));
  CHECK_FALSE(asyncflow::hasCode(failed, Errc::NotFound));

  const Result<void> voidFailed = asyncflow::fail(Errc::NotFound, "gone");
  CHECK(asyncflow::hasCode(voidFailed, Errc::NotFound));

  const Result<int> succeeded = 3;
  CHECK_FALSE(asyncflow::hasCode(succeeded, Errc::Conflict));
  const Result<void> voidSucceeded;
  CHECK_FALSE(asyncflow::hasCode(voidSucceeded, Errc::Internal));
}
