// Helpers for the tests that reach a SQLite database file beside the store
// (they link SQLiteCpp).
#pragma once

#include <string>

#include <SQLiteCpp/Database.h>

namespace asyncflow::testing {

// Holds the database's write lock from a second connection until release().
class WriteLock {
 public:
  explicit WriteLock(const std::string& path) : db_(path, SQLite::OPEN_READWRITE) {
    db_.exec("BEGIN IMMEDIATE");
  }
  void release() {
    if (held_) db_.exec("ROLLBACK");
    held_ = false;
  }
  ~WriteLock() {
    try {
      release();
    } catch (...) {
    }
  }
  WriteLock(const WriteLock&) = delete;
  WriteLock& operator=(const WriteLock&) = delete;

 private:
  SQLite::Database db_;
  bool held_ = true;
};

}  // namespace asyncflow::testing
