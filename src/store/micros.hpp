// Timestamps as the SQL stores keep them (internal; any store may use it):
// whole microseconds since the Unix epoch, in a signed 64-bit integer.
#pragma once

#include <chrono>
#include <cstdint>

#include "asyncflow/clock.hpp"

namespace asyncflow::detail {

// Microseconds since the Unix epoch, rounded down.
inline std::int64_t toMicros(Timestamp t) {
  return std::chrono::floor<std::chrono::microseconds>(t.time_since_epoch()).count();
}

// The timestamp `micros` after the epoch; throws std::runtime_error when
// Timestamp cannot hold it (the database holds what this library never wrote).
Timestamp fromMicros(std::int64_t micros);

}  // namespace asyncflow::detail
