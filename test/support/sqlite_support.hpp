// Helpers for the tests that reach a SQLite database file beside the store
// (they link SQLiteCpp): opening a SqliteStore that must open, the file's raw
// bytes, and a write lock held from a second connection.
#pragma once

#include <fstream>
#include <ios>
#include <iterator>
#include <memory>
#include <string>
#include <utility>

#include <SQLiteCpp/Database.h>

#include "asyncflow/sqlite_store.hpp"
#include "support/catch.hpp"

namespace asyncflow::testing {

// Opens (or creates) the store at `path`; the test fails if open() does.
inline std::shared_ptr<SqliteStore> openStore(const std::string& path, SqliteOptions options = {}) {
  auto store = SqliteStore::open(path, options);
  if (!store) FAIL("open " << path << ": " << store.error().toString());
  return std::shared_ptr<SqliteStore>(std::move(*store));
}

// The whole file, byte for byte; the test fails if it cannot be read.
inline std::string readBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Replaces the file's content with `bytes`; the test fails if it cannot be written.
inline void writeBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out);
}

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
