// What an exception says, for error messages (internal; any room may use it).
#pragma once

#include <exception>
#include <string>

namespace asyncflow::detail {

// The message of the exception `error` holds: what() for a std::exception,
// "unknown exception" otherwise. Never throws for a std::exception.
inline std::string describeException(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown exception";
  }
}

}  // namespace asyncflow::detail
