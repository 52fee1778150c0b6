// Comparison of secrets (internal; any room may use it).
#pragma once

#include <cstddef>
#include <string_view>

namespace asyncflow::detail {

// Compares two strings in time that depends only on their lengths: for secrets
// (serial secrets, API keys), whose contents must not leak through timing.
inline bool constantTimeEquals(std::string_view a, std::string_view b) noexcept {
  // The length is not secret (a serial's secret always has the same); the contents are.
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  }
  return diff == 0;
}

}  // namespace asyncflow::detail
