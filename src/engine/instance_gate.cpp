#include "engine/instance_gate.hpp"

#include <algorithm>

namespace asyncflow::detail {

bool InstanceGate::enter(InstanceId id, bool askForPass) {
  MutexLock lock(mutex_);
  auto [it, inserted] = driving_.try_emplace(id, false);
  if (!inserted && askForPass) it->second = true;
  return inserted;
}

bool InstanceGate::leaveOrLoop(InstanceId id) {
  MutexLock lock(mutex_);
  auto it = driving_.find(id);
  if (it == driving_.end()) return false;  // not entered: nothing to hold
  if (!it->second) {
    erase(it);
    return false;
  }
  it->second = false;
  return true;
}

void InstanceGate::leave(InstanceId id) {
  MutexLock lock(mutex_);
  auto it = driving_.find(id);
  if (it != driving_.end()) erase(it);
}

std::size_t InstanceGate::size() const {
  MutexLock lock(mutex_);
  return driving_.size();
}

void InstanceGate::waitEmpty() {
  MutexLock lock(mutex_);
  while (!driving_.empty()) emptied_.wait(lock);
}

void InstanceGate::erase(std::unordered_map<InstanceId, bool>::iterator it) {
  driving_.erase(it);
  if (driving_.empty()) emptied_.notifyAll();
}

bool InstanceSet::add(InstanceId id) {
  MutexLock lock(mutex_);
  return ids_.insert(id).second;
}

void InstanceSet::remove(InstanceId id) {
  MutexLock lock(mutex_);
  ids_.erase(id);
}

bool InstanceSet::contains(InstanceId id) const {
  MutexLock lock(mutex_);
  return ids_.count(id) != 0;
}

std::size_t InstanceSet::size() const {
  MutexLock lock(mutex_);
  return ids_.size();
}

std::chrono::milliseconds DriveBackoff::failed(InstanceId id) {
  MutexLock lock(mutex_);
  const int inARow = ++failures_[id];
  count_ = failures_.size();
  std::chrono::milliseconds delay = kFirst;
  for (int i = 1; i < inARow && delay < kLongest; ++i) delay *= 2;
  return std::min(delay, kLongest);
}

void DriveBackoff::succeeded(InstanceId id) {
  if (count_.load(std::memory_order_relaxed) == 0) return;
  MutexLock lock(mutex_);
  failures_.erase(id);
  count_ = failures_.size();
}

std::vector<InstanceId> DriveBackoff::failing() const {
  MutexLock lock(mutex_);
  std::vector<InstanceId> ids;
  ids.reserve(failures_.size());
  for (const auto& [id, count] : failures_) ids.push_back(id);
  return ids;
}

std::size_t DriveBackoff::size() const {
  MutexLock lock(mutex_);
  return failures_.size();
}

}  // namespace asyncflow::detail
