// asyncflow: an in-memory Store, for tests and for hosts that need no durability.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "asyncflow/store.hpp"

namespace asyncflow {

// Keeps everything in process memory; lost when the last owner lets go.
// Thread-safe (one mutex); copies records in and out, so callers never alias it.
// Lease expiries are kept in an ordered index, so the lease queries never walk
// every instance. Never fails except when memory runs out (StoreError).
class MemoryStore final : public Store {
 public:
  MemoryStore();
  ~MemoryStore() override;
  MemoryStore(const MemoryStore&) = delete;
  MemoryStore& operator=(const MemoryStore&) = delete;

  Result<InstanceSnapshot> loadInstance(InstanceId id) override;
  Result<StepRunRecord> loadStepRun(InstanceId instance, std::int64_t run) override;
  Result<std::vector<ApplyResult>> apply(std::vector<ChangeSet> batch) override;
  Result<std::vector<WaitingRow>> listWaiting(const WaitingQuery& query) override;
  Result<std::vector<InstanceId>> listRunning(const RunningQuery& query) override;
  Result<std::optional<Timestamp>> nextDeadline(Timestamp after) override;
  Result<std::vector<DueRun>> listDue(const DueQuery& query) override;
  Result<std::vector<StepRunKey>> findByKey(const KeyQuery& query) override;
  Result<std::vector<HistoryEvent>> loadHistory(InstanceId id) override;
  Result<std::optional<StartKeyRecord>> findStartKey(std::string_view process,
                                                     std::string_view key) override;
  Result<std::optional<Timestamp>> nextLeaseExpiry(Timestamp after,
                                                   std::string_view notOwnedBy) override;
  Result<std::vector<ExpiredLease>> listExpiredLeases(const LeaseQuery& query) override;
  Result<ProcessDeclaration> declare(const ProcessDeclaration& declaration) override;
  Result<std::optional<ProcessDeclaration>> loadDeclaration(std::string_view process,
                                                            int version) override;
  // A counter of this store's writes: every apply() that wrote a set and every
  // declare() that stored one add 1.
  Result<std::uint64_t> changeMark() override;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace asyncflow
