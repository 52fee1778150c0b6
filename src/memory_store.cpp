#include "asyncflow/memory_store.hpp"

#include <map>
#include <mutex>
#include <new>
#include <unordered_map>

#include <fmt/format.h>

namespace asyncflow {

struct MemoryStore::State {
  struct Instance {
    InstanceRecord record;
    Fields fields;
    std::map<std::int64_t, StepRunRecord> runs;
  };
  std::mutex mutex;
  std::unordered_map<InstanceId, Instance> instances;
  InstanceId lastId = 0;
};

MemoryStore::MemoryStore() : state_(std::make_unique<State>()) {}
MemoryStore::~MemoryStore() = default;

Result<InstanceSnapshot> MemoryStore::loadInstance(InstanceId id) {
  std::lock_guard lock(state_->mutex);
  auto it = state_->instances.find(id);
  if (it == state_->instances.end()) return fail(Errc::NotFound, fmt::format("no instance {}", id));
  return InstanceSnapshot{it->second.record, it->second.fields};
}

Result<StepRunRecord> MemoryStore::loadStepRun(InstanceId instance, std::int64_t run) {
  std::lock_guard lock(state_->mutex);
  auto it = state_->instances.find(instance);
  if (it != state_->instances.end()) {
    auto found = it->second.runs.find(run);
    if (found != it->second.runs.end()) return found->second;
  }
  return fail(Errc::NotFound, fmt::format("no step run {}_{}", instance, run));
}

Result<std::vector<ApplyResult>> MemoryStore::apply(std::vector<ChangeSet> batch) {
  try {
    std::lock_guard lock(state_->mutex);
    std::vector<ApplyResult> results;
    results.reserve(batch.size());
    for (auto& set : batch) {
      State::Instance* target = nullptr;
      if (set.instance.id == 0) {
        const InstanceId id = ++state_->lastId;
        target = &state_->instances[id];
        set.instance.id = id;
        set.instance.version = 1;
      } else {
        auto it = state_->instances.find(set.instance.id);
        if (it == state_->instances.end() || it->second.record.version != set.expectedVersion) {
          results.push_back(ApplyResult{ApplyStatus::Conflict, set.instance.id});
          continue;
        }
        target = &it->second;
        set.instance.version = set.expectedVersion + 1;
      }
      target->record = std::move(set.instance);
      target->fields.merge(set.fields);
      for (auto& run : set.stepRuns) {
        run.instance = target->record.id;
        const std::int64_t key = run.run;
        target->runs[key] = std::move(run);
      }
      results.push_back(ApplyResult{ApplyStatus::Applied, target->record.id});
    }
    return results;
  } catch (const std::bad_alloc&) {
    return fail(Errc::StoreError, "out of memory");
  }
}

}  // namespace asyncflow
