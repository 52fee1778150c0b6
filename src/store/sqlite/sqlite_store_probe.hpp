// Internal: what tests may observe of SqliteStore beyond the Store interface, in
// the idiom of LevelDB's WriteBatchInternal (a friend class, not a public
// accessor). Not installed; tests have src/ on their include path.
//
// group_commit_test and fault_injection_test need it to make groups
// deterministic: they hold the database's write lock from a second connection,
// so the leader waits in BEGIN IMMEDIATE, and must know that N callers have
// queued behind it before releasing the lock. Nothing else observable says so.
#pragma once

#include <cstddef>

#include "asyncflow/sqlite_store.hpp"

namespace asyncflow {

class SqliteStoreProbe {
 public:
  // How many apply() calls are in the commit queue: the group being written and
  // the calls waiting behind it (CommitQueue::queued()). Thread-safe.
  static std::size_t queuedWrites(SqliteStore& store);
};

}  // namespace asyncflow
