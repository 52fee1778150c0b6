#include "asyncflow/memory_store.hpp"

#include <algorithm>
#include <iterator>
#include <map>
#include <mutex>
#include <new>
#include <tuple>

#include <fmt/format.h>

namespace asyncflow {

struct MemoryStore::State {
  struct Instance {
    InstanceRecord record;
    Fields fields;
    std::map<std::int64_t, StepRunRecord> runs;
    std::vector<HistoryEvent> history;
  };
  std::mutex mutex;
  std::map<InstanceId, Instance> instances;  // ordered: pages walk ids
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
  std::lock_guard lock(state_->mutex);
  // Two phases, so that running out of memory writes nothing: first build every
  // touched instance's new state on the side (this allocates and may throw),
  // then swap it in with moves that cannot throw.
  std::map<InstanceId, State::Instance> staged;
  std::vector<ApplyResult> results;
  InstanceId lastId = state_->lastId;
  try {
    results.reserve(batch.size());
    for (auto& set : batch) {
      State::Instance* target = nullptr;
      if (set.instance.id == 0) {
        set.instance.id = ++lastId;
        set.instance.version = 1;
        target = &staged[set.instance.id];
      } else {
        auto in = staged.find(set.instance.id);
        if (in == staged.end()) {
          auto stored = state_->instances.find(set.instance.id);
          if (stored != state_->instances.end()) {
            in = staged.emplace(set.instance.id, stored->second).first;
          }
        }
        if (in == staged.end() || in->second.record.version != set.expectedVersion) {
          results.push_back(ApplyResult{ApplyStatus::Conflict, set.instance.id});
          continue;
        }
        target = &in->second;
        set.instance.version = set.expectedVersion + 1;
      }
      target->record = std::move(set.instance);
      target->fields.merge(set.fields);
      for (auto& run : set.stepRuns) {
        run.instance = target->record.id;
        const std::int64_t key = run.run;
        target->runs[key] = std::move(run);
      }
      for (auto& event : set.history) {
        event.instance = target->record.id;
        target->history.push_back(std::move(event));
      }
      results.push_back(ApplyResult{ApplyStatus::Applied, target->record.id});
    }
  } catch (const std::bad_alloc&) {
    return fail(Errc::StoreError, "out of memory; nothing was written");
  }
  for (auto it = staged.begin(); it != staged.end();) {
    auto next = std::next(it);
    auto stored = state_->instances.find(it->first);
    if (stored != state_->instances.end()) {
      stored->second = std::move(it->second);
    } else {
      state_->instances.insert(staged.extract(it));  // a node move: no allocation
    }
    it = next;
  }
  state_->lastId = lastId;
  return results;
}

Result<std::vector<WaitingRow>> MemoryStore::listWaiting(const WaitingQuery& query) {
  try {
    std::lock_guard lock(state_->mutex);
    std::vector<WaitingRow> rows;
    for (auto it = state_->instances.lower_bound(query.afterInstance);
         it != state_->instances.end() && rows.size() < query.limit; ++it) {
      const State::Instance& instance = it->second;
      if (!query.process.empty() && instance.record.process != query.process) continue;
      for (const auto& [run, record] : instance.runs) {
        if (it->first == query.afterInstance && run <= query.afterRun) continue;
        if (record.status != StepRunStatus::Waiting) continue;
        if (!query.step.empty() && record.step != query.step) continue;
        rows.push_back(WaitingRow{record, instance.record.process, instance.record.processVersion});
        if (rows.size() == query.limit) break;
      }
    }
    return rows;
  } catch (const std::bad_alloc&) {
    return fail(Errc::StoreError, "out of memory");
  }
}

Result<std::vector<InstanceId>> MemoryStore::listRunning(const RunningQuery& query) {
  try {
    std::lock_guard lock(state_->mutex);
    std::vector<InstanceId> ids;
    for (auto it = state_->instances.upper_bound(query.afterInstance);
         it != state_->instances.end() && ids.size() < query.limit; ++it) {
      const InstanceRecord& record = it->second.record;
      if (record.status == InstanceStatus::Running && record.process == query.process &&
          record.processVersion == query.processVersion) {
        ids.push_back(it->first);
      }
    }
    return ids;
  } catch (const std::bad_alloc&) {
    return fail(Errc::StoreError, "out of memory");
  }
}

Result<std::optional<Timestamp>> MemoryStore::nextDeadline(Timestamp after) {
  std::lock_guard lock(state_->mutex);
  std::optional<Timestamp> earliest;
  for (const auto& [id, instance] : state_->instances) {
    for (const auto& [run, record] : instance.runs) {
      if (record.status == StepRunStatus::Waiting && record.deadline && *record.deadline > after &&
          (!earliest || *record.deadline < *earliest)) {
        earliest = record.deadline;
      }
    }
  }
  return earliest;
}

Result<std::vector<DueRun>> MemoryStore::listDue(const DueQuery& query) {
  try {
    std::lock_guard lock(state_->mutex);
    const auto order = [](const DueRun& r) {
      return std::tie(r.deadline, r.key.instance, r.key.run);
    };
    std::vector<DueRun> due;
    for (const auto& [id, instance] : state_->instances) {
      for (const auto& [run, record] : instance.runs) {
        if (record.status != StepRunStatus::Waiting || !record.deadline ||
            *record.deadline > query.now) {
          continue;
        }
        DueRun candidate{StepRunKey{id, run}, *record.deadline};
        if (!query.after || order(candidate) > order(*query.after)) due.push_back(candidate);
      }
    }
    std::sort(due.begin(), due.end(),
              [&](const DueRun& a, const DueRun& b) { return order(a) < order(b); });
    if (due.size() > query.limit) due.resize(query.limit);
    return due;
  } catch (const std::bad_alloc&) {
    return fail(Errc::StoreError, "out of memory");
  }
}

Result<std::vector<StepRunKey>> MemoryStore::findByKey(const KeyQuery& query) {
  try {
    std::lock_guard lock(state_->mutex);
    std::vector<StepRunKey> keys;
    if (query.key.empty()) return keys;  // the empty key means "no key": it names no run
    for (const auto& [id, instance] : state_->instances) {
      if (instance.record.process != query.process) continue;
      for (const auto& [run, record] : instance.runs) {
        if (keys.size() == query.limit) return keys;
        if (record.status == StepRunStatus::Waiting && record.step == query.step &&
            record.correlationKey == query.key) {
          keys.push_back(StepRunKey{id, run});
        }
      }
    }
    return keys;
  } catch (const std::bad_alloc&) {
    return fail(Errc::StoreError, "out of memory");
  }
}

Result<std::vector<HistoryEvent>> MemoryStore::loadHistory(InstanceId id) {
  try {
    std::lock_guard lock(state_->mutex);
    auto it = state_->instances.find(id);
    if (it == state_->instances.end()) return std::vector<HistoryEvent>{};
    return it->second.history;
  } catch (const std::bad_alloc&) {
    return fail(Errc::StoreError, "out of memory");
  }
}

}  // namespace asyncflow
