#include "util/text.hpp"

#include <fmt/format.h>

namespace asyncflow::detail {

std::string quoted(std::string_view text) {
  constexpr std::size_t kMaxChars = 60;
  std::string out;
  std::size_t i = 0;
  for (std::size_t chars = 0; i < text.size() && chars < kMaxChars; ++chars) {
    const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[i + k]); };
    const unsigned char lead = byte(0);
    // The length of a well-formed UTF-8 sequence starting here; 0 if none does.
    std::size_t length = lead < 0x80                    ? 1
                         : lead >= 0xc2 && lead <= 0xdf ? 2
                         : lead >= 0xe0 && lead <= 0xef ? 3
                         : lead >= 0xf0 && lead <= 0xf4 ? 4
                                                        : 0;
    if (i + length > text.size()) length = 0;
    for (std::size_t k = 1; k < length; ++k) {
      if ((byte(k) & 0xc0) != 0x80) length = 0;
    }
    // No overlong forms, surrogates or code points above U+10FFFF.
    if ((length == 3 && ((lead == 0xe0 && byte(1) < 0xa0) || (lead == 0xed && byte(1) > 0x9f))) ||
        (length == 4 && ((lead == 0xf0 && byte(1) < 0x90) || (lead == 0xf4 && byte(1) > 0x8f)))) {
      length = 0;
    }
    if (length == 0 || lead < 0x20 || lead == 0x7f) {
      out += fmt::format("\\x{:02x}", lead);
      i += 1;
    } else {
      out.append(text.substr(i, length));
      i += length;
    }
  }
  if (i < text.size()) out += fmt::format("... ({} bytes)", text.size());
  return out;
}

}  // namespace asyncflow::detail
