// How many statements the PostgreSQL store has sent (internal; for the
// benchmark's counters): each is one round trip to the server.
#pragma once

#include <cstdint>

namespace asyncflow::detail::pg {

// Round trips of every connection of every PostgresStore in this process so
// far. Thread-safe; never fails.
std::uint64_t roundTrips() noexcept;

}  // namespace asyncflow::detail::pg
