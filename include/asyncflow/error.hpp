// asyncflow: errors as values.
//
// Every fallible public call returns Result<T>. No exception crosses the public
// API; library exceptions (SQLite, allocation, a host handler's throw) are caught
// inside src/ and mapped to one of the Errc codes below.
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include <tl/expected.hpp>

namespace asyncflow {

// The canonical error codes. Each completion outcome of DESIGN.md section 5 has
// its own code, so integration code can branch without parsing messages.
enum class Errc {
  InvalidArgument,    // a call's arguments are malformed (not a serial or field problem)
  InvalidProcess,     // define(): the process definition is broken or already defined
  InvalidSerial,      // a serial is empty, of the wrong shape, or carries the wrong secret
  NotFound,           // a well-formed id, serial or name that the engine does not know
  AlreadyCompleted,   // the step run already has its completion
  TimedOut,           // the step run's deadline passed before the completion arrived
  StepFailed,         // the step run failed (its handler failed, threw, or was failed)
  Cancelled,          // the instance was cancelled
  InvalidField,       // a data field is not declared by the process, or has the wrong type
  StoreError,         // persistence failed (disk full, busy, I/O); nothing was written
  Conflict,           // the instance kept changing under this call; it is safe to retry
  Internal,           // a bug in asyncflow; the message says where
  ProcessNotDefined,  // the instance's process version is not defined in this engine;
                      // nothing changed: define it and call again
  AmbiguousKey,       // a business key names more than one waiting step
  KeyReused,          // startOnce(): the idempotency key already started an instance with
                      // other fields; nothing changed
};

// The stable name of a code, e.g. "AlreadyCompleted". Never fails.
constexpr std::string_view errcName(Errc code) noexcept {
  switch (code) {
    case Errc::InvalidArgument: return "InvalidArgument";
    case Errc::InvalidProcess: return "InvalidProcess";
    case Errc::InvalidSerial: return "InvalidSerial";
    case Errc::NotFound: return "NotFound";
    case Errc::AlreadyCompleted: return "AlreadyCompleted";
    case Errc::TimedOut: return "TimedOut";
    case Errc::StepFailed: return "StepFailed";
    case Errc::Cancelled: return "Cancelled";
    case Errc::InvalidField: return "InvalidField";
    case Errc::StoreError: return "StoreError";
    case Errc::Conflict: return "Conflict";
    case Errc::Internal: return "Internal";
    case Errc::ProcessNotDefined: return "ProcessNotDefined";
    case Errc::AmbiguousKey: return "AmbiguousKey";
    case Errc::KeyReused: return "KeyReused";
  }
  return "Unknown";
}

// One error: a code to branch on and a message for people. Cheap to move.
struct Error {
  Errc code = Errc::Internal;
  std::string message;

  Error() = default;
  Error(Errc c, std::string m) : code(c), message(std::move(m)) {}

  // "NotFound: no step run 5_31" — for logs.
  std::string toString() const {
    std::string out(errcName(code));
    out += ": ";
    out += message;
    return out;
  }
};

inline bool operator==(const Error& a, const Error& b) {
  return a.code == b.code && a.message == b.message;
}
inline bool operator!=(const Error& a, const Error& b) { return !(a == b); }

// The result of every fallible call: a T, or an Error saying why not.
template <class T>
using Result = tl::expected<T, Error>;

// Builds the error side of a Result: `return fail(Errc::NotFound, "...");`.
inline tl::unexpected<Error> fail(Errc code, std::string message) {
  return tl::unexpected<Error>(Error(code, std::move(message)));
}

// Predicates in the style of absl::IsNotFound, for readable call sites.
template <class T>
bool hasCode(const Result<T>& r, Errc code) {
  return !r.has_value() && r.error().code == code;
}

}  // namespace asyncflow
