// asyncflow: an in-memory Store, for tests and for hosts that need no durability.
#pragma once

#include <memory>

#include "asyncflow/store.hpp"

namespace asyncflow {

// Keeps everything in process memory; lost when the last owner lets go.
// Thread-safe (one mutex); copies records in and out, so callers never alias it.
// Never fails except when memory runs out (StoreError).
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

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace asyncflow
