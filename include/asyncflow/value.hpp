// asyncflow: the typed value of one data field.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

#include "asyncflow/error.hpp"

namespace asyncflow {

// The types a data field can be declared with. Null is the value of a field
// that has no value yet; it is not a declarable type.
enum class Type { Null, Bool, Int64, Double, String };

// "Int64" etc. Never fails.
constexpr std::string_view typeName(Type type) noexcept {
  switch (type) {
    case Type::Null: return "Null";
    case Type::Bool: return "Bool";
    case Type::Int64: return "Int64";
    case Type::Double: return "Double";
    case Type::String: return "String";
  }
  return "Unknown";
}

// An immutable-by-convention tagged value: null, bool, int64, double or string.
// Value types are plain data: copyable, comparable, safe to share between threads
// when not mutated.
class Value {
 public:
  // Null.
  Value() = default;
  Value(std::nullptr_t) {}
  Value(bool b) : data_(b) {}
  // Any signed integer, and unsigned integers narrower than 64 bits, are Int64.
  // uint64_t is refused at compile time: it may not fit.
  template <class I, std::enable_if_t<std::is_integral_v<I> && !std::is_same_v<I, bool> &&
                                          (std::is_signed_v<I> || sizeof(I) < 8),
                                      int> = 0>
  Value(I i) : data_(static_cast<std::int64_t>(i)) {}
  Value(double d) : data_(d) {}
  Value(std::string s) : data_(std::move(s)) {}
  Value(std::string_view s) : data_(std::string(s)) {}
  Value(const char* s) : data_(std::string(s)) {}

  Type type() const noexcept { return static_cast<Type>(data_.index()); }
  bool isNull() const noexcept { return type() == Type::Null; }

  // The value as T, for T in {bool, std::int64_t, double, std::string}.
  // An Int64 reads as a double too. Fails with InvalidField on any other mismatch
  // (including null).
  template <class T>
  Result<T> as() const;

  // The raw alternative; for stores and encoders.
  const std::variant<std::monostate, bool, std::int64_t, double, std::string>& variant() const {
    return data_;
  }

  friend bool operator==(const Value& a, const Value& b) { return a.data_ == b.data_; }
  friend bool operator!=(const Value& a, const Value& b) { return !(a == b); }

 private:
  std::variant<std::monostate, bool, std::int64_t, double, std::string> data_;
};

namespace detail {
template <class T>
constexpr Type typeOf() {
  if constexpr (std::is_same_v<T, bool>) {
    return Type::Bool;
  } else if constexpr (std::is_same_v<T, std::int64_t>) {
    return Type::Int64;
  } else if constexpr (std::is_same_v<T, double>) {
    return Type::Double;
  } else {
    static_assert(std::is_same_v<T, std::string>,
                  "Value::as<T>: T must be bool, std::int64_t, double or std::string");
    return Type::String;
  }
}
}  // namespace detail

template <class T>
Result<T> Value::as() const {
  constexpr Type wanted = detail::typeOf<T>();
  if constexpr (std::is_same_v<T, double>) {
    if (auto* i = std::get_if<std::int64_t>(&data_)) return static_cast<double>(*i);
  }
  if (auto* v = std::get_if<T>(&data_)) return *v;
  std::string message = "value is ";
  message += typeName(type());
  message += ", not ";
  message += typeName(wanted);
  return fail(Errc::InvalidField, std::move(message));
}

}  // namespace asyncflow
