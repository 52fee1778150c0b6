// Scoped uses of the SQLite store's connections and cached statements
// (internal to the SQLite store), each undone in its destructor, in SQLiteCpp's
// RAII style: ResetOnExit for one use of a statement, WriteTransaction and
// Savepoint for the write path, ReadConnection for the choice of connection a
// read makes. None is thread-safe: each is used under its connection's mutex
// (ReadConnection takes that mutex itself).
#pragma once

#include <SQLiteCpp/Statement.h>
#include <sqlite3.h>

#include "store/sqlite/statements.hpp"
#include "util/mutex.hpp"

namespace asyncflow::detail::sqlite {

// One use of a cached statement: on exit, also by exception, resets it (so no
// statement keeps a read transaction open) and drops its parameters.
class ResetOnExit {
 public:
  explicit ResetOnExit(SQLite::Statement& statement) noexcept : statement_(statement) {}
  ~ResetOnExit() {
    statement_.tryReset();
    try {
      statement_.clearBindings();  // sqlite3_clear_bindings cannot fail
    } catch (...) {
    }
  }
  ResetOnExit(const ResetOnExit&) = delete;
  ResetOnExit& operator=(const ResetOnExit&) = delete;

 private:
  SQLite::Statement& statement_;
};

// Executes a statement that returns no rows, then resets it; the number of rows
// it changed. Throws SQLite::Exception.
inline int run(SQLite::Statement& statement) {
  ResetOnExit reset(statement);
  return statement.exec();
}

// BEGIN IMMEDIATE ... COMMIT on the cached statements. IMMEDIATE takes the
// write lock at once, so a locked database makes BEGIN wait (busy timeout)
// instead of failing later in the middle of the batch. Rolls back unless committed.
class WriteTransaction {
 public:
  // Throws SQLite::Exception when BEGIN fails (busy beyond the timeout, I/O).
  explicit WriteTransaction(Writes& writes) : writes_(writes) { run(writes_.begin); }
  ~WriteTransaction() {
    if (committed_) return;
    writes_.rollback.tryExecuteStep();  // fails harmlessly if SQLite already rolled back
    writes_.rollback.tryReset();
  }
  WriteTransaction(const WriteTransaction&) = delete;
  WriteTransaction& operator=(const WriteTransaction&) = delete;

  // COMMIT; throws SQLite::Exception when it fails (the destructor then rolls back).
  void commit() {
    run(writes_.commit);
    committed_ = true;
  }

 private:
  Writes& writes_;
  bool committed_ = false;
};

// SAVEPOINT batch ... RELEASE batch inside a WriteTransaction, in SQLiteCpp's
// Savepoint.h shape: unless released, the destructor rolls back to the savepoint
// and releases it, undoing the batch's writes only.
class Savepoint {
 public:
  // Throws SQLite::Exception when SAVEPOINT fails.
  explicit Savepoint(Writes& writes) : writes_(writes) { run(writes_.savepoint); }
  ~Savepoint() {
    if (released_) return;
    // Undo the batch's writes. If that fails while the transaction lives on,
    // roll it all back rather than commit half a batch: writeGroup then fails
    // the group. When SQLite already rolled it back, these fail harmlessly.
    const bool undone = writes_.rollbackToSavepoint.tryExecuteStep() == SQLITE_DONE;
    writes_.rollbackToSavepoint.tryReset();
    SQLite::Statement& end = undone ? writes_.releaseSavepoint : writes_.rollback;
    end.tryExecuteStep();
    end.tryReset();
  }
  Savepoint(const Savepoint&) = delete;
  Savepoint& operator=(const Savepoint&) = delete;

  // RELEASE batch: keeps the batch's writes in the transaction. Throws
  // SQLite::Exception when it fails (the destructor then rolls back to the savepoint).
  void release() {
    run(writes_.releaseSavepoint);
    released_ = true;
  }

 private:
  Writes& writes_;
  bool released_ = false;
};

// A read's hold on one connection and its statements. It takes the writing
// connection when no commit holds it: that connection wrote the latest pages
// itself, so its page cache is warm, while the reader's cache is dropped by
// every commit it did not make. Under a commit it takes the read-only
// connection, so a read never waits for a commit's fsync. Without a read-only
// connection (a memory or temporary database) it waits for the writing one.
//
// Which mutex it holds is decided at run time, which the thread-safety analysis
// cannot follow: its constructor and destructor are exempt, and callers reach
// the statements only through reads().
class ReadConnection {
 public:
  // `writerReads` are prepared on the connection `writerMutex` guards,
  // `readerReads` (null when there is none) on the one `readerMutex` guards.
  // Blocks until it holds one of the two.
  ReadConnection(Mutex& writerMutex, Reads& writerReads, Mutex& readerMutex,
                 Reads* readerReads) ASYNCFLOW_NO_THREAD_SAFETY_ANALYSIS {
    if (writerMutex.tryLock()) {
      held_ = &writerMutex;
      reads_ = &writerReads;
    } else if (readerReads == nullptr) {
      writerMutex.lock();
      held_ = &writerMutex;
      reads_ = &writerReads;
    } else {
      readerMutex.lock();
      held_ = &readerMutex;
      reads_ = readerReads;
    }
  }
  ~ReadConnection() ASYNCFLOW_NO_THREAD_SAFETY_ANALYSIS { held_->unlock(); }
  ReadConnection(const ReadConnection&) = delete;
  ReadConnection& operator=(const ReadConnection&) = delete;

  // The statements of the connection held; valid while this lives.
  Reads& reads() const noexcept { return *reads_; }

 private:
  Mutex* held_;
  Reads* reads_;
};

}  // namespace asyncflow::detail::sqlite
