// Text helpers for error messages (internal; any room may use them).
#pragma once

#include <string>
#include <string_view>

namespace asyncflow::detail {

// `text` as an error message may quote it: at most 60 characters, control bytes
// and invalid UTF-8 as \xNN, and "... (N bytes)" when cut. Names, keys and
// reasons from outside may be huge or binary; a message must stay readable.
std::string quoted(std::string_view text);

// Whether `text` holds an ASCII control character (below 0x20, or 0x7f): what
// must never reach an HTTP header or a log line unescaped.
inline bool hasControl(std::string_view text) noexcept {
  for (char c : text) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return true;
  }
  return false;
}

}  // namespace asyncflow::detail
