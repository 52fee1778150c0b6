// Writes transitions and tells the host about them (internal).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <fmt/format.h>

#include "asyncflow/error.hpp"
#include "asyncflow/observer.hpp"
#include "asyncflow/store.hpp"

namespace asyncflow::detail {

// Commits one change set at a time and fans out what became durable: the
// listener and the log hear of each history entry, `onDeadline` of a run that
// now waits with a deadline (so the timer can wake earlier), and `onShared` of
// a commit other hosts should look at (a deadline, or an instance offered to
// any host). Thread-safe as far as the store, listener and log are (each must
// be).
class Committer {
 public:
  // `store` must outlive the committer. `onDeadline` and `onShared` may be empty.
  Committer(Store& store, std::shared_ptr<Listener> listener, LogSink log,
            std::function<void(Timestamp)> onDeadline, std::function<void()> onShared = {});

  // Applies `set`, whose instance carries no lease unless it is Running (the
  // committer clears it otherwise: Waiting and ended instances hold none).
  // Applied: the fan-out above, then the result (with the id a new instance
  // got). Conflict: nothing was written, nobody is told. A StoreError (nothing
  // written) is logged at Warning and returned.
  Result<ApplyResult> commit(ChangeSet set) const;

  // Sends a line to the log sink, if there is one; a throwing sink is ignored.
  void log(LogLevel level, std::string_view message) const;

 private:
  Store& store_;
  const std::shared_ptr<Listener> listener_;
  const LogSink log_;
  const std::function<void(Timestamp)> onDeadline_;
  const std::function<void()> onShared_;
};

// How often a read-modify-write reloads and retries after losing an
// optimistic-concurrency race before it reports Conflict. Races on one instance
// are between a handler's commit, a completion, a cancel and a timer, so a
// handful of retries always suffices in practice; the bound only stops a
// pathological livelock.
inline constexpr int kMaxWriteRetries = 64;

// The result of one try of a read-modify-write: a value (done), an error
// (refused or failed: stop), or empty (it lost a race: load again and retry).
template <class T>
using Attempt = Result<std::optional<T>>;

// The value of an attempt that has nothing to return but "done".
struct Done {};

// What an attempt returns when its commit lost the race.
inline constexpr std::nullopt_t kLostRace = std::nullopt;

// What a read-modify-write acts on, as its Conflict message names it: "instance
// 5" or "step run 5_2". Formatted only when the message is needed.
struct Subject {
  InstanceId instance = 0;
  std::int64_t run = 0;  // 0: the instance itself
  std::string describe() const {
    return run == 0 ? fmt::format("instance {}", instance)
                    : fmt::format("step run {}_{}", instance, run);
  }
};

// Runs `attempt` until it is done or fails, at most kMaxWriteRetries times; then
// Conflict: "<what> kept changing under this call; retry". The one conflict
// loop of the engine. Attempt<Done> gives Result<void>, Attempt<T> Result<T>.
template <class F>
auto retryOnConflict(const Subject& what, F&& attempt) {
  using Tried = std::invoke_result_t<F&>;            // Attempt<T>
  using T = typename Tried::value_type::value_type;  // T
  using Out = std::conditional_t<std::is_same_v<T, Done>, Result<void>, Result<T>>;
  for (int i = 0; i < kMaxWriteRetries; ++i) {
    Tried tried = attempt();
    if (!tried) return Out(tl::unexpected(std::move(tried.error())));
    if (*tried) {
      if constexpr (std::is_same_v<T, Done>) {
        return Out();
      } else {
        return Out(std::move(**tried));
      }
    }
  }
  return Out(fail(Errc::Conflict,
                  fmt::format("{} kept changing under this call; retry", what.describe())));
}

}  // namespace asyncflow::detail
