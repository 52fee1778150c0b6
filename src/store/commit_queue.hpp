// Group commit for a store (internal; any store may use it).
//
// LevelDB's writer queue (db_impl.cc, Writer and the writers_ deque), as
// RocksDB moved it out of DBImpl into WriteThread: concurrent apply() calls
// queue their batches; the caller at the head of the queue leads: it hands the
// batches queued so far (its own first, in arrival order) to the store's
// writeGroup callback, which writes them in one transaction (one fsync) and
// sets each one's result; the leader hands every caller its result and wakes
// the next head, whose group holds the batches that arrived meanwhile.
//
// It knows nothing of SQL: SqliteStore uses it, and a future PostgreSQL store
// may too (one connection per leader), or skip it and let the server group WAL
// flushes across a connection pool. The per-batch isolation inside a group (a
// savepoint per batch in SQLite) is the callback's business.
#pragma once

#include <cstddef>
#include <functional>
#include <utility>
#include <vector>

#include "asyncflow/error.hpp"
#include "asyncflow/records.hpp"
#include "util/mutex.hpp"

namespace asyncflow::detail {

class CommitQueue {
 public:
  class Group;

  // One caller's batch inside a group, on that caller's stack. Only the group's
  // writeGroup callback touches it, on the leader's thread, while the caller waits.
  class Member {
   public:
    Member(const Member&) = delete;
    Member& operator=(const Member&) = delete;

    // The caller's batch; the callback may modify it (a store writes assigned
    // ids into it).
    std::vector<ChangeSet>& batch() const noexcept { return batch_; }

    // What the caller's submit() returns. A member the callback leaves without a
    // result gets Internal ("set no result").
    void setResult(Result<std::vector<ApplyResult>> result) noexcept {
      result_ = std::move(result);
      hasResult_ = true;
    }

   private:
    friend class CommitQueue;
    friend class Group;
    explicit Member(std::vector<ChangeSet>& batch) noexcept : batch_(batch) {}

    std::vector<ChangeSet>& batch_;
    // Written by the leader outside mutex_, before it sets done_ under mutex_;
    // read by the caller after it sees done_.
    Result<std::vector<ApplyResult>> result_;
    bool hasResult_ = false;
    // The next member of this one's group; set by the leader under mutex_ when it
    // forms the group, read only by that leader afterwards.
    Member* nextInGroup_ = nullptr;

    // Guarded by the queue's mutex_ (the analysis cannot name another object's
    // mutex, so these are not annotated; CommitQueue touches them only in
    // functions that hold or require mutex_).
    Member* next_ = nullptr;  // the caller queued behind this one
    bool done_ = false;       // result_ is final; the caller may return
    CondVar wake_;            // done_, or this caller now heads the queue
  };

  // The members of one group, in arrival order, the leader's first; iterable as
  // RocksDB's WriteGroup. Never empty.
  class Group {
   public:
    // A forward iterator over the members.
    class Iterator {
     public:
      explicit Iterator(Member* member) noexcept : member_(member) {}
      Member& operator*() const noexcept { return *member_; }
      Member* operator->() const noexcept { return member_; }
      Iterator& operator++() noexcept {
        member_ = member_->nextInGroup_;
        return *this;
      }
      bool operator==(const Iterator& other) const noexcept { return member_ == other.member_; }
      bool operator!=(const Iterator& other) const noexcept { return member_ != other.member_; }

     private:
      Member* member_;
    };

    Group(const Group&) = delete;
    Group& operator=(const Group&) = delete;

    Iterator begin() const noexcept { return Iterator(first_); }
    Iterator end() const noexcept { return Iterator(nullptr); }
    // How many batches the group holds: 1 to maxGroupSize.
    std::size_t size() const noexcept { return size_; }

    // Sets every member's result to `error`: the group failed as a whole (its
    // transaction was lost or did not commit). May throw std::bad_alloc copying
    // the message, like any callback code.
    void failAll(const Error& error);

   private:
    friend class CommitQueue;
    Group(Member& first, std::size_t size) noexcept : first_(&first), size_(size) {}

    Member* first_;
    std::size_t size_;
  };

  // The store's "write these batches in one transaction": called on the leader's
  // thread, outside the queue's lock, one group at a time; it must set each
  // member's result. It should not throw: if it does, every member of the group
  // fails with Internal (its outcome is unknown) and the queue goes on.
  using WriteGroup = std::function<void(Group&)>;

  // At most `maxGroupSize` batches per group; 0 or 1 turns grouping off (each
  // batch is its own group, still one writer at a time).
  explicit CommitQueue(std::size_t maxGroupSize) noexcept;
  // REQUIRES: no submit() in progress.
  ~CommitQueue();
  CommitQueue(const CommitQueue&) = delete;
  CommitQueue& operator=(const CommitQueue&) = delete;

  // Queues `batch` and returns its result once a leader (this caller, or one
  // ahead of it) has had `writeGroup` write it. A lone caller leads at once and
  // never waits for company; callers arriving while a group is being written
  // form the next group. An empty batch returns an empty vector at once,
  // without queueing. Thread-safe; never throws.
  [[nodiscard]] Result<std::vector<ApplyResult>> submit(std::vector<ChangeSet> batch,
                                                        const WriteGroup& writeGroup)
      ASYNCFLOW_EXCLUDES(mutex_);

  // How many submit() calls are in the queue: the group being written and the
  // calls waiting behind it. Thread-safe; for tests and metrics.
  std::size_t queued() const ASYNCFLOW_EXCLUDES(mutex_);

 private:
  // Links the group that `leader` leads: it and the callers queued behind it, up
  // to maxGroupSize_. Callers arriving later link in after the group's last
  // member, so the group's links hold still once the lock is released.
  // REQUIRES: mutex_ held; `leader` heads the queue.
  Group formGroup(Member& leader) ASYNCFLOW_REQUIRES(mutex_);

  // Unlinks the written group, marks its members done and wakes them, then wakes
  // the next head. Under the lock: a caller that sees done_ returns and
  // destroys its Member, wake_ included.
  // REQUIRES: mutex_ held; `group` heads the queue and has been written.
  void finishGroup(Group& group) ASYNCFLOW_REQUIRES(mutex_);

  // Runs writeGroup(group), then gives every member it left without a result an
  // Internal error; if it threw, gives every member one. Never throws.
  static void write(Group& group, const WriteGroup& writeGroup) noexcept;

  // Constant after construction.
  const std::size_t maxGroupSize_;  // at least 1

  // Guarded by mutex_: the queue, linked through Member::next_, the leader first.
  mutable Mutex mutex_;
  Member* head_ ASYNCFLOW_GUARDED_BY(mutex_) = nullptr;
  Member* tail_ ASYNCFLOW_GUARDED_BY(mutex_) = nullptr;
  std::size_t queued_ ASYNCFLOW_GUARDED_BY(mutex_) = 0;  // members from head_ to tail_
};

}  // namespace asyncflow::detail
