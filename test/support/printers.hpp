// How Catch prints asyncflow's types in failure messages, shared by every test.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <type_traits>
#include <variant>

#include <asyncflow/asyncflow.hpp>

#include "support/catch.hpp"

namespace Catch {

template <>
struct StringMaker<asyncflow::Errc> {
  static std::string convert(asyncflow::Errc code) {
    return std::string(asyncflow::errcName(code));
  }
};

template <>
struct StringMaker<asyncflow::Type> {
  static std::string convert(asyncflow::Type type) {
    return std::string(asyncflow::typeName(type));
  }
};

template <>
struct StringMaker<asyncflow::InstanceStatus> {
  static std::string convert(asyncflow::InstanceStatus s) {
    return std::string(asyncflow::statusName(s));
  }
};

template <>
struct StringMaker<asyncflow::StepRunStatus> {
  static std::string convert(asyncflow::StepRunStatus s) {
    return std::string(asyncflow::statusName(s));
  }
};

template <>
struct StringMaker<asyncflow::ApplyStatus> {
  static std::string convert(asyncflow::ApplyStatus status) {
    switch (status) {
      case asyncflow::ApplyStatus::Applied: return "Applied";
      case asyncflow::ApplyStatus::Conflict: return "Conflict";
      case asyncflow::ApplyStatus::KeyTaken: return "KeyTaken";
    }
    return "ApplyStatus " + std::to_string(static_cast<int>(status));
  }
};

template <>
struct StringMaker<asyncflow::Value> {
  static std::string convert(const asyncflow::Value& value) {
    return std::visit(
        [](const auto& v) -> std::string {
          using V = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<V, std::monostate>) {
            return "null";
          } else if constexpr (std::is_same_v<V, std::string>) {
            return '"' + v + '"';
          } else {
            return Catch::Detail::stringify(v);
          }
        },
        value.variant());
  }
};

template <>
struct StringMaker<asyncflow::Fields> {
  static std::string convert(const asyncflow::Fields& fields) {
    std::string out = "{";
    for (const auto& [name, value] : fields) {
      if (out.size() > 1) out += ", ";
      out += name + ": " + StringMaker<asyncflow::Value>::convert(value);
    }
    return out + "}";
  }
};

template <>
struct StringMaker<asyncflow::StartKeyRecord> {
  static std::string convert(const asyncflow::StartKeyRecord& claim) {
    return "{instance " + std::to_string(claim.instance) + ", processVersion " +
           std::to_string(claim.processVersion) + ", fingerprint " +
           std::to_string(claim.fingerprint) + "}";
  }
};

template <>
struct StringMaker<std::optional<asyncflow::StartKeyRecord>> {
  static std::string convert(const std::optional<asyncflow::StartKeyRecord>& claim) {
    return claim ? StringMaker<asyncflow::StartKeyRecord>::convert(*claim) : "none";
  }
};

template <>
struct StringMaker<asyncflow::FieldDeclaration> {
  static std::string convert(const asyncflow::FieldDeclaration& field) {
    return '"' + field.name + "\" " + StringMaker<asyncflow::Type>::convert(field.type);
  }
};

// "Approve" Async heartbeat 30000000 us; a kind outside StepKind as its number.
template <>
struct StringMaker<asyncflow::StepDeclaration> {
  static std::string convert(const asyncflow::StepDeclaration& step) {
    std::string kind;
    switch (step.kind) {
      case asyncflow::StepKind::Sync: kind = "Sync"; break;
      case asyncflow::StepKind::Async: kind = "Async"; break;
      default: kind = "StepKind " + std::to_string(static_cast<int>(step.kind));
    }
    return '"' + step.name + "\" " + kind +
           (step.heartbeat ? " heartbeat " + std::to_string(step.heartbeat->count()) + " us"
                           : std::string(" no heartbeat"));
  }
};

template <>
struct StringMaker<asyncflow::ProcessDeclaration> {
  static std::string convert(const asyncflow::ProcessDeclaration& declaration) {
    std::string out =
        declaration.process + " version " + std::to_string(declaration.version) + " {";
    for (const asyncflow::FieldDeclaration& field : declaration.fields) {
      if (out.back() != '{') out += ", ";
      out += StringMaker<asyncflow::FieldDeclaration>::convert(field);
    }
    out += "} steps {";
    for (const asyncflow::StepDeclaration& step : declaration.steps) {
      if (out.back() != '{') out += ", ";
      out += StringMaker<asyncflow::StepDeclaration>::convert(step);
    }
    return out + "}";
  }
};

template <>
struct StringMaker<std::optional<asyncflow::ProcessDeclaration>> {
  static std::string convert(const std::optional<asyncflow::ProcessDeclaration>& declaration) {
    return declaration ? StringMaker<asyncflow::ProcessDeclaration>::convert(*declaration) : "none";
  }
};

// Times as microseconds since the epoch: what the stores keep.
template <>
struct StringMaker<asyncflow::ExpiredLease> {
  static std::string convert(const asyncflow::ExpiredLease& lease) {
    const auto micros =
        std::chrono::duration_cast<std::chrono::microseconds>(lease.expiry.time_since_epoch())
            .count();
    return "{instance " + std::to_string(lease.instance) + ", " + lease.process + " version " +
           std::to_string(lease.processVersion) + ", owner \"" + lease.owner + "\", expiry " +
           std::to_string(micros) + " us}";
  }
};

}  // namespace Catch
