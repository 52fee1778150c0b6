// asyncflow: a Store that fails on purpose, for testing what a host (or the
// engine) does when persistence fails.
//
//   auto store = std::make_shared<asyncflow::MemoryStore>();
//   auto faulty = std::make_shared<asyncflow::testing::FaultInjectingStore>(store);
//   asyncflow::Engine engine(faulty);
//   ...
//   faulty->failNth(1, asyncflow::testing::Fault::DiskFull);  // the next apply() fails
//   auto id = engine.start("Order");  // StoreError: "database or disk is full (injected ...)"
//
// A failed call never reaches the target store, so it writes nothing: the
// contract every Store keeps for a StoreError. Header-only; needs only asyncflow's
// public headers (no Catch2), so it also serves hosts' own tests.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <asyncflow/error.hpp>
#include <asyncflow/store.hpp>

namespace asyncflow::testing {

// How an injected failure looks: the three ways persistence fails in practice.
// Each is a StoreError; the message starts with the words SqliteStore uses.
enum class Fault {
  DiskFull,  // "database or disk is full"
  Busy,      // "database is busy"
  IoError,   // "disk I/O error"
};

// The words a fault's message starts with, e.g. "database or disk is full". Never fails.
constexpr std::string_view faultMessage(Fault fault) noexcept {
  switch (fault) {
    case Fault::DiskFull: return "database or disk is full";
    case Fault::Busy: return "database is busy";
    case Fault::IoError: return "disk I/O error";
  }
  return "store failure";
}

// The methods of the Store interface, to count calls and name the one that failed.
enum class StoreCall {
  LoadInstance,
  LoadStepRun,
  Apply,
  ListWaiting,
  ListRunning,
  NextDeadline,
  ListDue,
  FindByKey,
  LoadHistory,
  FindStartKey,
  NextLeaseExpiry,
  ListExpiredLeases,
  Declare,
  LoadDeclaration,
  ChangeMark,
};

// How many StoreCall values there are.
inline constexpr std::size_t kStoreCalls = 15;

// The method's name, e.g. "apply". Never fails.
constexpr std::string_view storeCallName(StoreCall call) noexcept {
  switch (call) {
    case StoreCall::LoadInstance: return "loadInstance";
    case StoreCall::LoadStepRun: return "loadStepRun";
    case StoreCall::Apply: return "apply";
    case StoreCall::ListWaiting: return "listWaiting";
    case StoreCall::ListRunning: return "listRunning";
    case StoreCall::NextDeadline: return "nextDeadline";
    case StoreCall::ListDue: return "listDue";
    case StoreCall::FindByKey: return "findByKey";
    case StoreCall::LoadHistory: return "loadHistory";
    case StoreCall::FindStartKey: return "findStartKey";
    case StoreCall::NextLeaseExpiry: return "nextLeaseExpiry";
    case StoreCall::ListExpiredLeases: return "listExpiredLeases";
    case StoreCall::Declare: return "declare";
    case StoreCall::LoadDeclaration: return "loadDeclaration";
    case StoreCall::ChangeMark: return "changeMark";
  }
  return "unknown";
}

// Which calls an armed fault counts towards its nth.
enum class FaultScope {
  Applies,  // only apply(): the instances' write points. The default.
  AnyCall,  // every call, reads and declare() included
};

// When and how calls fail. Counting starts at arm(): nth = 1 is the first call
// in scope after it.
struct FaultPlan {
  std::size_t nth = 1;    // the first call in scope that fails; 0 is treated as 1
  std::size_t count = 1;  // how many calls in scope fail from there; 0: all, until disarm()
  Fault fault = Fault::IoError;
  FaultScope scope = FaultScope::Applies;
};

// What one injected failure hit.
struct InjectedFault {
  StoreCall call = StoreCall::Apply;
  std::uint64_t callNumber = 0;  // its number among all calls (calls() when it was made)
  Fault fault = Fault::IoError;
};

// Forwards every call to its target, except those an armed FaultPlan fails: they
// return StoreError without reaching the target, so nothing is written. Counts
// every call, failed or not. Thread-safe: the decision for each call is taken
// under one mutex, the forwarded call runs outside it.
class FaultInjectingStore : public StoreWrapper {
 public:
  // Shares ownership of `target`, which must not be null. Starts disarmed.
  explicit FaultInjectingStore(std::shared_ptr<Store> target) : StoreWrapper(std::move(target)) {}

  // Replaces any armed plan with `plan`; its counting starts now.
  void arm(FaultPlan plan) {
    std::lock_guard lock(mutex_);
    if (plan.nth == 0) plan.nth = 1;
    plan_ = plan;
    seen_ = 0;
  }

  // Arms one failure: the nth call in `scope` from now (1: the next) fails with `fault`.
  void failNth(std::size_t nth, Fault fault, FaultScope scope = FaultScope::Applies) {
    arm(FaultPlan{nth, 1, fault, scope});
  }

  // From the next call in `scope` on, every one fails with `fault` until disarm():
  // a disk that stays full, a lock that is never released.
  void failAll(Fault fault, FaultScope scope = FaultScope::Applies) {
    arm(FaultPlan{1, 0, fault, scope});
  }

  // Stops failing calls; counters are kept.
  void disarm() {
    std::lock_guard lock(mutex_);
    plan_.reset();
  }

  // Whether a plan may still fail a call. A plan of `count` failures disarms
  // itself after the last one.
  bool armed() const {
    std::lock_guard lock(mutex_);
    return plan_.has_value();
  }

  // Calls made (failed ones included) since construction or resetCounters().
  std::uint64_t calls() const {
    std::lock_guard lock(mutex_);
    return calls_;
  }
  std::uint64_t calls(StoreCall call) const {
    std::lock_guard lock(mutex_);
    return perCall_[static_cast<std::size_t>(call)];
  }
  // Failures injected since construction or resetCounters().
  std::uint64_t injected() const {
    std::lock_guard lock(mutex_);
    return injected_;
  }
  // The most recent failure injected; empty when none since resetCounters().
  std::optional<InjectedFault> lastInjected() const {
    std::lock_guard lock(mutex_);
    return last_;
  }
  // Zeroes the counters and forgets the last failure; the armed plan stays.
  void resetCounters() {
    std::lock_guard lock(mutex_);
    calls_ = 0;
    perCall_.fill(0);
    injected_ = 0;
    last_.reset();
  }

  Result<InstanceSnapshot> loadInstance(InstanceId id) override {
    if (auto error = enter(StoreCall::LoadInstance)) return tl::unexpected(std::move(*error));
    return StoreWrapper::loadInstance(id);
  }
  Result<StepRunRecord> loadStepRun(InstanceId instance, std::int64_t run) override {
    if (auto error = enter(StoreCall::LoadStepRun)) return tl::unexpected(std::move(*error));
    return StoreWrapper::loadStepRun(instance, run);
  }
  Result<std::vector<ApplyResult>> apply(std::vector<ChangeSet> batch) override {
    if (auto error = enter(StoreCall::Apply)) return tl::unexpected(std::move(*error));
    return StoreWrapper::apply(std::move(batch));
  }
  Result<std::vector<WaitingRow>> listWaiting(const WaitingQuery& query) override {
    if (auto error = enter(StoreCall::ListWaiting)) return tl::unexpected(std::move(*error));
    return StoreWrapper::listWaiting(query);
  }
  Result<std::vector<InstanceId>> listRunning(const RunningQuery& query) override {
    if (auto error = enter(StoreCall::ListRunning)) return tl::unexpected(std::move(*error));
    return StoreWrapper::listRunning(query);
  }
  Result<std::optional<Timestamp>> nextDeadline(Timestamp after) override {
    if (auto error = enter(StoreCall::NextDeadline)) return tl::unexpected(std::move(*error));
    return StoreWrapper::nextDeadline(after);
  }
  Result<std::vector<DueRun>> listDue(const DueQuery& query) override {
    if (auto error = enter(StoreCall::ListDue)) return tl::unexpected(std::move(*error));
    return StoreWrapper::listDue(query);
  }
  Result<std::vector<StepRunKey>> findByKey(const KeyQuery& query) override {
    if (auto error = enter(StoreCall::FindByKey)) return tl::unexpected(std::move(*error));
    return StoreWrapper::findByKey(query);
  }
  Result<std::vector<HistoryEvent>> loadHistory(InstanceId id) override {
    if (auto error = enter(StoreCall::LoadHistory)) return tl::unexpected(std::move(*error));
    return StoreWrapper::loadHistory(id);
  }
  Result<std::optional<StartKeyRecord>> findStartKey(std::string_view process,
                                                     std::string_view key) override {
    if (auto error = enter(StoreCall::FindStartKey)) return tl::unexpected(std::move(*error));
    return StoreWrapper::findStartKey(process, key);
  }
  Result<std::optional<Timestamp>> nextLeaseExpiry(Timestamp after,
                                                   std::string_view notOwnedBy) override {
    if (auto error = enter(StoreCall::NextLeaseExpiry)) return tl::unexpected(std::move(*error));
    return StoreWrapper::nextLeaseExpiry(after, notOwnedBy);
  }
  Result<std::vector<ExpiredLease>> listExpiredLeases(const LeaseQuery& query) override {
    if (auto error = enter(StoreCall::ListExpiredLeases)) return tl::unexpected(std::move(*error));
    return StoreWrapper::listExpiredLeases(query);
  }
  Result<ProcessDeclaration> declare(const ProcessDeclaration& declaration) override {
    if (auto error = enter(StoreCall::Declare)) return tl::unexpected(std::move(*error));
    return StoreWrapper::declare(declaration);
  }
  Result<std::optional<ProcessDeclaration>> loadDeclaration(std::string_view process,
                                                            int version) override {
    if (auto error = enter(StoreCall::LoadDeclaration)) return tl::unexpected(std::move(*error));
    return StoreWrapper::loadDeclaration(process, version);
  }
  Result<std::uint64_t> changeMark() override {
    if (auto error = enter(StoreCall::ChangeMark)) return tl::unexpected(std::move(*error));
    return StoreWrapper::changeMark();
  }

 private:
  // Counts the call; the error to return instead of forwarding it, if the plan
  // fails it.
  std::optional<Error> enter(StoreCall call) {
    std::lock_guard lock(mutex_);
    ++calls_;
    ++perCall_[static_cast<std::size_t>(call)];
    if (!plan_ || (plan_->scope == FaultScope::Applies && call != StoreCall::Apply)) {
      return std::nullopt;
    }
    const std::size_t position = ++seen_;
    if (position < plan_->nth) return std::nullopt;
    const Fault fault = plan_->fault;
    if (plan_->count != 0 && position + 1 - plan_->nth >= plan_->count) plan_.reset();
    ++injected_;
    last_ = InjectedFault{call, calls_, fault};
    std::string message(faultMessage(fault));
    message += " (injected by FaultInjectingStore into ";
    message += storeCallName(call);
    message += ", call ";
    message += std::to_string(calls_);
    message += "; nothing was written)";
    return Error(Errc::StoreError, std::move(message));
  }

  mutable std::mutex mutex_;
  std::optional<FaultPlan> plan_;  // empty: disarmed
  std::size_t seen_ = 0;           // calls in the plan's scope since arm()
  std::uint64_t calls_ = 0;
  std::array<std::uint64_t, kStoreCalls> perCall_{};
  std::uint64_t injected_ = 0;
  std::optional<InjectedFault> last_;
};

}  // namespace asyncflow::testing
