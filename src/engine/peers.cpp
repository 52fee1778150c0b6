#include "engine/peers.hpp"

#include <algorithm>
#include <map>
#include <vector>

#include "util/mutex.hpp"

namespace asyncflow::detail {
namespace {

struct Board {
  Mutex mutex;
  std::map<const Store*, std::vector<TimerService*>> timers ASYNCFLOW_GUARDED_BY(mutex);
};

// Never destroyed: engines may outlive static destruction's order.
Board& board() {
  static Board* const instance = new Board();
  return *instance;
}

}  // namespace

void Peers::join(const Store* store, TimerService* timer) {
  Board& b = board();
  MutexLock lock(b.mutex);
  b.timers[store].push_back(timer);
}

void Peers::leave(const Store* store, TimerService* timer) {
  Board& b = board();
  MutexLock lock(b.mutex);
  auto found = b.timers.find(store);
  if (found == b.timers.end()) return;
  auto& timers = found->second;
  timers.erase(std::remove(timers.begin(), timers.end(), timer), timers.end());
  if (timers.empty()) b.timers.erase(found);
}

// Under the board's lock, so that no timer leaves (and is destroyed) while it
// is told; storeChanged() only takes the timer's own lock.
void Peers::tell(const Store* store, const TimerService* from) {
  Board& b = board();
  MutexLock lock(b.mutex);
  auto found = b.timers.find(store);
  if (found == b.timers.end()) return;
  for (TimerService* timer : found->second) {
    if (timer != from) timer->storeChanged();
  }
}

}  // namespace asyncflow::detail
