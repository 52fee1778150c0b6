// The stored names of the record enumerations (internal; any store may use it).
//
// One constexpr {enumerator, "Name"} table per enumeration: statusName and
// historyKindName (store.cpp) print from it, and a store that keeps
// enumerations as text (SQLite's codec) parses with it, so a name is spelled
// once. The SQL CHECK lists of released migrations stay literal: they are
// frozen text, not code.
#pragma once

#include <cstddef>
#include <iterator>
#include <optional>
#include <string_view>

#include "asyncflow/records.hpp"
#include "asyncflow/value.hpp"

namespace asyncflow::detail {

// One row of a name table.
template <class Enum>
struct EnumName {
  Enum value;
  std::string_view name;  // a NUL-terminated literal that lives as long as the program
};

// EnumNames<Enum>::table lists every enumerator of Enum in declaration order,
// so that table[i].value == Enum(i) (checked below).
template <class Enum>
struct EnumNames;

template <>
struct EnumNames<InstanceStatus> {
  static constexpr EnumName<InstanceStatus> table[] = {
      {InstanceStatus::Running, "Running"},     {InstanceStatus::Waiting, "Waiting"},
      {InstanceStatus::Completed, "Completed"}, {InstanceStatus::Failed, "Failed"},
      {InstanceStatus::Cancelled, "Cancelled"},
  };
};

template <>
struct EnumNames<StepRunStatus> {
  static constexpr EnumName<StepRunStatus> table[] = {
      {StepRunStatus::Ready, "Ready"},         {StepRunStatus::Starting, "Starting"},
      {StepRunStatus::Waiting, "Waiting"},     {StepRunStatus::Completed, "Completed"},
      {StepRunStatus::Failed, "Failed"},       {StepRunStatus::TimedOut, "TimedOut"},
      {StepRunStatus::Cancelled, "Cancelled"},
  };
};

template <>
struct EnumNames<StepKind> {
  static constexpr EnumName<StepKind> table[] = {
      {StepKind::Sync, "Sync"},
      {StepKind::Async, "Async"},
  };
};

// Type's names are the public typeName's (value.hpp), not a second spelling.
template <>
struct EnumNames<Type> {
  static constexpr EnumName<Type> table[] = {
      {Type::Null, typeName(Type::Null)},     {Type::Bool, typeName(Type::Bool)},
      {Type::Int64, typeName(Type::Int64)},   {Type::Double, typeName(Type::Double)},
      {Type::String, typeName(Type::String)},
  };
};

template <>
struct EnumNames<HistoryKind> {
  static constexpr EnumName<HistoryKind> table[] = {
      {HistoryKind::Started, "Started"},
      {HistoryKind::StepStarted, "StepStarted"},
      {HistoryKind::Waiting, "Waiting"},
      {HistoryKind::CompletionRecorded, "CompletionRecorded"},
      {HistoryKind::StepCompleted, "StepCompleted"},
      {HistoryKind::StepFailed, "StepFailed"},
      {HistoryKind::TimedOut, "TimedOut"},
      {HistoryKind::Heartbeat, "Heartbeat"},
      {HistoryKind::Retried, "Retried"},
      {HistoryKind::Completed, "Completed"},
      {HistoryKind::Failed, "Failed"},
      {HistoryKind::Cancelled, "Cancelled"},
  };
};

// Whether Enum's table lists its enumerators in declaration order, each once
// (what lets nameOf index the table).
template <class Enum>
constexpr bool inDeclarationOrder() noexcept {
  std::size_t i = 0;
  for (const EnumName<Enum>& entry : EnumNames<Enum>::table) {
    if (entry.value != static_cast<Enum>(i++)) return false;
  }
  return true;
}
static_assert(inDeclarationOrder<InstanceStatus>());
static_assert(inDeclarationOrder<StepRunStatus>());
static_assert(inDeclarationOrder<StepKind>());
static_assert(inDeclarationOrder<Type>());
static_assert(inDeclarationOrder<HistoryKind>());

// The name of `value`; "Unknown" for a value outside the enumeration (a cast
// integer). Never fails.
template <class Enum>
constexpr std::string_view nameOf(Enum value) noexcept {
  const auto index = static_cast<std::size_t>(value);
  const auto& table = EnumNames<Enum>::table;
  return index < std::size(table) ? table[index].name : std::string_view("Unknown");
}

// The enumerator whose name is `text` (case-sensitive); empty when none is.
template <class Enum>
constexpr std::optional<Enum> enumNamed(std::string_view text) noexcept {
  for (const EnumName<Enum>& entry : EnumNames<Enum>::table) {
    if (entry.name == text) return entry.value;
  }
  return std::nullopt;
}

// Throws the runtime_error "the database holds an unknown {what} '{text}'"
// (store.cpp); a store maps it to a StoreError at its boundary.
[[noreturn]] void throwUnknownName(const char* what, std::string_view text);

// The enumerator named `text`, for a store that reads names back; throws
// (throwUnknownName) when the database holds a name this library does not know.
// `what` names the column for the message: "instance status", "field type", ...
template <class Enum>
Enum parseName(std::string_view text, const char* what) {
  if (auto value = enumNamed<Enum>(text)) return *value;
  throwUnknownName(what, text);
}

}  // namespace asyncflow::detail
