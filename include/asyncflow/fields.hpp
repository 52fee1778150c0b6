// asyncflow: the named data fields of a process instance.
#pragma once

#include <initializer_list>
#include <map>
#include <string>
#include <string_view>
#include <utility>

#include "asyncflow/error.hpp"
#include "asyncflow/value.hpp"

namespace asyncflow {

// An ordered map from field name to Value. Plain data: copyable and comparable;
// not synchronised, so one thread mutates a Fields at a time.
//
// Fields carries no schema. Whether a name is declared and a type is right is
// checked against the Process when fields enter the engine (start, a handler's
// writes, completeServerEvent).
class Fields {
 public:
  using Map = std::map<std::string, Value, std::less<>>;

  Fields() = default;
  // Fields f{{"OrderId", "A-17"}, {"Amount", 12.5}}; a repeated name keeps the last.
  Fields(std::initializer_list<std::pair<const std::string, Value>> init) {
    for (const auto& [name, value] : init) values_[name] = value;
  }

  // Sets (or replaces) one field; returns *this for chaining.
  Fields& set(std::string_view name, Value value) {
    auto it = values_.find(name);
    if (it == values_.end()) {
      values_.emplace(std::string(name), std::move(value));
    } else {
      it->second = std::move(value);
    }
    return *this;
  }

  // The field as T (bool, std::int64_t, double, std::string). NotFound if the
  // field is absent; InvalidField naming it if it has another type or is null.
  template <class T>
  Result<T> get(std::string_view name) const {
    auto it = values_.find(name);
    if (it == values_.end()) {
      return fail(Errc::NotFound, "no field '" + std::string(name) + "'");
    }
    auto value = it->second.template as<T>();
    if (!value) {
      return fail(Errc::InvalidField,
                  "field '" + std::string(name) + "': " + value.error().message);
    }
    return value;
  }

  // The field as T, or `fallback` when it is absent, null or of another type.
  template <class T>
  T getOr(std::string_view name, T fallback) const {
    auto value = get<T>(name);
    return value ? *std::move(value) : std::move(fallback);
  }

  // The raw value, or nullptr when absent. The pointer lives until the next mutation.
  const Value* find(std::string_view name) const {
    auto it = values_.find(name);
    return it == values_.end() ? nullptr : &it->second;
  }

  bool contains(std::string_view name) const { return values_.find(name) != values_.end(); }
  std::size_t size() const noexcept { return values_.size(); }
  bool empty() const noexcept { return values_.empty(); }

  // Copies every field of `other` over this one.
  Fields& merge(const Fields& other) {
    for (const auto& [name, value] : other.values_) values_[name] = value;
    return *this;
  }

  Map::const_iterator begin() const noexcept { return values_.begin(); }
  Map::const_iterator end() const noexcept { return values_.end(); }

  friend bool operator==(const Fields& a, const Fields& b) { return a.values_ == b.values_; }
  friend bool operator!=(const Fields& a, const Fields& b) { return !(a == b); }

 private:
  Map values_;
};

}  // namespace asyncflow
