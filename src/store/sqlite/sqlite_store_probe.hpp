// Internal: what tests may observe of SqliteStore beyond the Store interface.
// Not installed; tests have src/ on their include path.
#pragma once

#include <cstddef>

#include "asyncflow/sqlite_store.hpp"

namespace asyncflow {

class SqliteStoreProbe {
 public:
  // How many apply() calls are in the commit queue: the group being written and
  // the calls waiting behind it. Thread-safe.
  static std::size_t queuedWrites(SqliteStore& store);
};

}  // namespace asyncflow
