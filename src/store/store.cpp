#include "asyncflow/store.hpp"

#include <stdexcept>

#include <fmt/format.h>

#include "store/enum_names.hpp"
#include "store/micros.hpp"

namespace asyncflow {

std::string_view statusName(InstanceStatus status) noexcept { return detail::nameOf(status); }

std::string_view statusName(StepRunStatus status) noexcept { return detail::nameOf(status); }

std::string_view historyKindName(HistoryKind kind) noexcept { return detail::nameOf(kind); }

namespace detail {

Timestamp fromMicros(std::int64_t micros) {
  using std::chrono::microseconds;
  constexpr std::int64_t kLimit =
      std::chrono::duration_cast<microseconds>(Timestamp::duration::max()).count();
  if (micros > kLimit || micros < -kLimit) {
    throw std::runtime_error(
        fmt::format("the database holds a timestamp out of range: {}", micros));
  }
  return Timestamp(std::chrono::duration_cast<Timestamp::duration>(microseconds(micros)));
}

void throwUnknownName(const char* what, std::string_view text) {
  throw std::runtime_error(fmt::format("the database holds an unknown {} '{}'", what, text));
}

}  // namespace detail
}  // namespace asyncflow
