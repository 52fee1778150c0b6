#include "store/commit_queue.hpp"

#include <algorithm>
#include <string>

namespace asyncflow::detail {

void CommitQueue::Group::failAll(const Error& error) {
  for (Member& member : *this) member.setResult(tl::unexpected(error));
}

CommitQueue::CommitQueue(std::size_t maxGroupSize) noexcept
    : maxGroupSize_(std::max<std::size_t>(maxGroupSize, 1)) {}

CommitQueue::~CommitQueue() = default;

Result<std::vector<ApplyResult>> CommitQueue::submit(std::vector<ChangeSet> batch,
                                                     const WriteGroup& writeGroup) {
  if (batch.empty()) return std::vector<ApplyResult>{};
  Member self(batch);
  MutexLock lock(mutex_);
  (tail_ != nullptr ? tail_->next_ : head_) = &self;
  tail_ = &self;
  ++queued_;
  while (!self.done_ && head_ != &self) self.wake_.wait(lock);
  if (self.done_) return std::move(self.result_);

  Group group = formGroup(self);
  lock.unlock();
  write(group, writeGroup);
  lock.lock();
  finishGroup(group);
  return std::move(self.result_);
}

std::size_t CommitQueue::queued() const {
  MutexLock lock(mutex_);
  return queued_;
}

CommitQueue::Group CommitQueue::formGroup(Member& leader) {
  Member* last = &leader;
  std::size_t size = 1;
  for (; size < maxGroupSize_ && last->next_ != nullptr; ++size) {
    last->nextInGroup_ = last->next_;
    last = last->next_;
  }
  last->nextInGroup_ = nullptr;
  return Group(leader, size);
}

void CommitQueue::finishGroup(Group& group) {
  Member* last = group.first_;
  while (last->nextInGroup_ != nullptr) last = last->nextInGroup_;
  head_ = last->next_;
  if (head_ == nullptr) tail_ = nullptr;
  queued_ -= group.size();
  for (Member* member = group.first_; member != nullptr; member = member->nextInGroup_) {
    member->done_ = true;
    member->wake_.notifyOne();
  }
  if (head_ != nullptr) head_->wake_.notifyOne();
}

void CommitQueue::write(Group& group, const WriteGroup& writeGroup) noexcept {
  bool threw = false;
  try {
    writeGroup(group);
  } catch (...) {
    threw = true;
  }
  for (Member& member : group) {
    if (member.hasResult_ && !threw) continue;
    // The messages are built here, where an allocation failure is caught: a
    // member then gets its code with an empty message rather than no result.
    try {
      member.setResult(fail(Errc::Internal, threw ? "the store's group write threw; the outcome "
                                                    "of this batch is unknown"
                                                  : "the store's group write set no result for "
                                                    "this batch"));
    } catch (...) {
      member.setResult(tl::unexpected(Error(Errc::Internal, std::string())));
    }
  }
}

}  // namespace asyncflow::detail
