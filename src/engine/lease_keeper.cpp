#include "engine/lease_keeper.hpp"

#include <utility>

namespace asyncflow::detail {

bool LeaseKeeper::begin(InstanceId id, Timestamp expiry) {
  MutexLock lock(mutex_);
  expiries_[id] = expiry;
  if (sweepScheduled_) return false;
  sweepScheduled_ = true;
  return true;
}

void LeaseKeeper::sweepScheduled(std::uint64_t token) {
  MutexLock lock(mutex_);
  sweepToken_ = token;
}

std::uint64_t LeaseKeeper::end(InstanceId id) {
  MutexLock lock(mutex_);
  expiries_.erase(id);
  if (!expiries_.empty() || !sweepScheduled_) return 0;
  sweepScheduled_ = false;
  return std::exchange(sweepToken_, 0);
}

void LeaseKeeper::renewed(InstanceId id, Timestamp expiry) {
  MutexLock lock(mutex_);
  auto found = expiries_.find(id);
  if (found != expiries_.end() && found->second < expiry) found->second = expiry;
}

std::vector<InstanceId> LeaseKeeper::due(Timestamp now) const {
  MutexLock lock(mutex_);
  std::vector<InstanceId> ids;
  const auto keep = duration_ - duration_ / 3;
  for (const auto& [id, expiry] : expiries_) {
    if (expiry - now < keep) ids.push_back(id);
  }
  return ids;
}

bool LeaseKeeper::sweepAgain() {
  MutexLock lock(mutex_);
  sweepScheduled_ = !expiries_.empty();
  return sweepScheduled_;
}

std::size_t LeaseKeeper::inFlight() const {
  MutexLock lock(mutex_);
  return expiries_.size();
}

}  // namespace asyncflow::detail
