#include "asyncflow/memory_store.hpp"

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <limits>
#include <map>
#include <new>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "store/declaration.hpp"
#include "util/mutex.hpp"

namespace asyncflow {

struct MemoryStore::State {
  struct Instance {
    InstanceRecord record;
    Fields fields;
    std::map<std::int64_t, StepRunRecord> runs;
    std::vector<HistoryEvent> history;
  };

  // A start key's holder, by (process, key).
  struct Claim {
    InstanceId instance = 0;
    std::uint64_t fingerprint = 0;
  };
  using StartKeys = std::map<std::pair<std::string, std::string>, Claim>;

  // The lease index: (leaseExpiry, id) of every Running instance with an
  // expiry, in the order listExpiredLeases pages by.
  using LeaseEntry = std::pair<Timestamp, InstanceId>;
  using Leases = std::set<LeaseEntry>;

  // The entry `record` has in the lease index, if any.
  static std::optional<LeaseEntry> leaseEntryOf(const InstanceRecord& record) {
    if (record.status != InstanceStatus::Running || !record.leaseExpiry) return std::nullopt;
    return LeaseEntry{*record.leaseExpiry, record.id};
  }

  // What the mutex guards.
  struct Tables {
    std::map<InstanceId, Instance> instances;  // ordered: pages walk ids
    StartKeys startKeys;
    Leases leases;  // always agrees with `instances` (leaseEntryOf each record)
    std::map<std::pair<std::string, int>, ProcessDeclaration> declarations;
    InstanceId lastId = 0;
    // changeMark(): +1 per apply() that wrote a set, per declare() that stored.
    std::uint64_t changes = 0;
  };

  detail::Mutex mutex;
  Tables tables ASYNCFLOW_GUARDED_BY(mutex);

  // Runs body(tables) under the mutex and returns its Result. Running out of
  // memory, the one way a MemoryStore call fails, becomes StoreError
  // `outOfMemory`: every call copies records in or out, and none may throw.
  template <class F, class R = std::invoke_result_t<F&, Tables&>>
  R locked(std::string_view outOfMemory, F&& body) ASYNCFLOW_EXCLUDES(mutex) {
    try {
      detail::MutexLock lock(mutex);
      return body(tables);
    } catch (const std::bad_alloc&) {
      return fail(Errc::StoreError, std::string(outOfMemory));
    }
  }
};

namespace {

constexpr std::string_view kOutOfMemory = "out of memory";

}  // namespace

MemoryStore::MemoryStore() : state_(std::make_unique<State>()) {}
MemoryStore::~MemoryStore() = default;

Result<InstanceSnapshot> MemoryStore::loadInstance(InstanceId id) {
  return state_->locked(kOutOfMemory, [&](State::Tables& t) -> Result<InstanceSnapshot> {
    auto it = t.instances.find(id);
    if (it == t.instances.end()) return fail(Errc::NotFound, fmt::format("no instance {}", id));
    return InstanceSnapshot{it->second.record, it->second.fields};
  });
}

Result<StepRunRecord> MemoryStore::loadStepRun(InstanceId instance, std::int64_t run) {
  return state_->locked(kOutOfMemory, [&](State::Tables& t) -> Result<StepRunRecord> {
    auto it = t.instances.find(instance);
    if (it != t.instances.end()) {
      auto found = it->second.runs.find(run);
      if (found != it->second.runs.end()) return found->second;
    }
    return fail(Errc::NotFound, fmt::format("no step run {}_{}", instance, run));
  });
}

Result<std::vector<ApplyResult>> MemoryStore::apply(std::vector<ChangeSet> batch) {
  constexpr std::string_view kNothingWritten = "out of memory; nothing was written";
  return state_->locked(kNothingWritten, [&](State::Tables& t) -> Result<std::vector<ApplyResult>> {
    // Two phases, so that running out of memory writes nothing: first build every
    // touched instance's new state on the side (this allocates and may throw),
    // then swap it in with moves that cannot throw.
    std::map<InstanceId, State::Instance> staged;
    State::StartKeys stagedKeys;  // claimed by creates of this batch
    std::vector<ApplyResult> results;
    InstanceId lastId = t.lastId;
    results.reserve(batch.size());
    for (auto& set : batch) {
      State::Instance* target = nullptr;
      if (set.instance.id == 0) {
        if (set.startKey) {
          auto claim = std::make_pair(set.instance.process, set.startKey->key);
          const auto held = [&](const State::StartKeys& keys) -> std::optional<InstanceId> {
            auto found = keys.find(claim);
            if (found == keys.end()) return std::nullopt;
            return found->second.instance;
          };
          std::optional<InstanceId> holder = held(t.startKeys);
          if (!holder) holder = held(stagedKeys);
          if (holder) {
            results.push_back(ApplyResult{ApplyStatus::KeyTaken, *holder});
            continue;
          }
          stagedKeys.emplace(std::move(claim), State::Claim{lastId + 1, set.startKey->fingerprint});
        }
        set.instance.id = ++lastId;
        set.instance.version = 1;
        target = &staged[set.instance.id];
      } else {
        auto in = staged.find(set.instance.id);
        if (in == staged.end()) {
          auto stored = t.instances.find(set.instance.id);
          if (stored != t.instances.end()) {
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
    // The touched instances' new lease entries, allocated before the swap.
    State::Leases stagedLeases;
    for (const auto& [id, instance] : staged) {
      if (auto entry = State::leaseEntryOf(instance.record)) stagedLeases.insert(*entry);
    }
    const bool wrote = std::any_of(results.begin(), results.end(), [](const ApplyResult& r) {
      return r.status == ApplyStatus::Applied;
    });
    // The swap: from here on nothing allocates, so nothing throws.
    for (auto it = staged.begin(); it != staged.end();) {
      auto next = std::next(it);
      auto stored = t.instances.find(it->first);
      if (stored != t.instances.end()) {
        if (auto old = State::leaseEntryOf(stored->second.record)) t.leases.erase(*old);
        stored->second = std::move(it->second);
      } else {
        t.instances.insert(staged.extract(it));  // a node move: no allocation
      }
      it = next;
    }
    t.leases.merge(stagedLeases);  // node moves; every key is new, the old ones are erased
    while (!stagedKeys.empty()) t.startKeys.insert(stagedKeys.extract(stagedKeys.begin()));
    t.lastId = lastId;
    if (wrote) ++t.changes;
    return results;
  });
}

Result<std::vector<WaitingRow>> MemoryStore::listWaiting(const WaitingQuery& query) {
  return state_->locked(kOutOfMemory, [&](State::Tables& t) -> Result<std::vector<WaitingRow>> {
    std::vector<WaitingRow> rows;
    for (auto it = t.instances.lower_bound(query.afterInstance);
         it != t.instances.end() && rows.size() < query.limit; ++it) {
      const State::Instance& instance = it->second;
      if (!query.process.empty() && instance.record.process != query.process) continue;
      for (const auto& [run, record] : instance.runs) {
        if (it->first == query.afterInstance && run <= query.afterRun) continue;
        // A run with a completion recorded waits only for a host that defines its version.
        if (record.status != StepRunStatus::Waiting || record.hasCompletion) continue;
        if (!query.step.empty() && record.step != query.step) continue;
        rows.push_back(WaitingRow{record, instance.record.process, instance.record.processVersion});
        if (rows.size() == query.limit) break;
      }
    }
    return rows;
  });
}

Result<std::vector<InstanceId>> MemoryStore::listRunning(const RunningQuery& query) {
  return state_->locked(kOutOfMemory, [&](State::Tables& t) -> Result<std::vector<InstanceId>> {
    std::vector<InstanceId> ids;
    for (auto it = t.instances.upper_bound(query.afterInstance);
         it != t.instances.end() && ids.size() < query.limit; ++it) {
      const InstanceRecord& record = it->second.record;
      if (record.status == InstanceStatus::Running && record.process == query.process &&
          record.processVersion == query.processVersion) {
        ids.push_back(it->first);
      }
    }
    return ids;
  });
}

Result<std::optional<Timestamp>> MemoryStore::nextDeadline(Timestamp after) {
  return state_->locked(kOutOfMemory, [&](State::Tables& t) -> Result<std::optional<Timestamp>> {
    std::optional<Timestamp> earliest;
    for (const auto& [id, instance] : t.instances) {
      for (const auto& [run, record] : instance.runs) {
        if (record.status == StepRunStatus::Waiting && record.deadline &&
            *record.deadline > after && (!earliest || *record.deadline < *earliest)) {
          earliest = record.deadline;
        }
      }
    }
    return earliest;
  });
}

Result<std::vector<DueRun>> MemoryStore::listDue(const DueQuery& query) {
  return state_->locked(kOutOfMemory, [&](State::Tables& t) -> Result<std::vector<DueRun>> {
    const auto order = [](const DueRun& r) {
      return std::tie(r.deadline, r.key.instance, r.key.run);
    };
    std::vector<DueRun> due;
    for (const auto& [id, instance] : t.instances) {
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
  });
}

Result<std::vector<StepRunKey>> MemoryStore::findByKey(const KeyQuery& query) {
  return state_->locked(kOutOfMemory, [&](State::Tables& t) -> Result<std::vector<StepRunKey>> {
    std::vector<StepRunKey> keys;
    if (query.key.empty()) return keys;  // the empty key means "no key": it names no run
    for (const auto& [id, instance] : t.instances) {
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
  });
}

Result<std::optional<StartKeyRecord>> MemoryStore::findStartKey(std::string_view process,
                                                                std::string_view key) {
  return state_->locked(
      kOutOfMemory, [&](State::Tables& t) -> Result<std::optional<StartKeyRecord>> {
        auto found = t.startKeys.find(std::make_pair(std::string(process), std::string(key)));
        if (found == t.startKeys.end()) return std::nullopt;
        const State::Claim& claim = found->second;
        // A claim is written with its instance, and neither is removed.
        auto holder = t.instances.find(claim.instance);
        if (holder == t.instances.end()) {
          return fail(Errc::Internal, fmt::format("start key held by instance {}, which "
                                                  "does not exist",
                                                  claim.instance));
        }
        return StartKeyRecord{claim.instance, holder->second.record.processVersion,
                              claim.fingerprint};
      });
}

Result<std::optional<Timestamp>> MemoryStore::nextLeaseExpiry(Timestamp after,
                                                              std::string_view notOwnedBy) {
  return state_->locked(kOutOfMemory, [&](State::Tables& t) -> Result<std::optional<Timestamp>> {
    // From the first entry after every (after, id): the earliest expiry later
    // than `after`, past the leases of `notOwnedBy`.
    auto it = t.leases.upper_bound({after, std::numeric_limits<InstanceId>::max()});
    for (; it != t.leases.end(); ++it) {
      if (notOwnedBy.empty() || t.instances.at(it->second).record.leaseOwner != notOwnedBy) {
        return it->first;
      }
    }
    return std::nullopt;
  });
}

Result<std::vector<ExpiredLease>> MemoryStore::listExpiredLeases(const LeaseQuery& query) {
  return state_->locked(kOutOfMemory, [&](State::Tables& t) -> Result<std::vector<ExpiredLease>> {
    std::vector<ExpiredLease> expired;
    auto it = query.after ? t.leases.upper_bound({query.after->expiry, query.after->instance})
                          : t.leases.begin();
    for (; it != t.leases.end() && it->first <= query.now && expired.size() < query.limit; ++it) {
      const InstanceRecord& record = t.instances.at(it->second).record;
      expired.push_back(ExpiredLease{record.id, record.process, record.processVersion,
                                     record.leaseOwner, it->first});
    }
    return expired;
  });
}

Result<ProcessDeclaration> MemoryStore::declare(const ProcessDeclaration& declaration) {
  return state_->locked(kOutOfMemory, [&](State::Tables& t) -> Result<ProcessDeclaration> {
    auto valid = detail::validDeclaration(declaration);
    if (!valid) return valid;
    auto [it, stored] =
        t.declarations.try_emplace(std::make_pair(valid->process, valid->version), *valid);
    if (stored) ++t.changes;
    return it->second;
  });
}

Result<std::optional<ProcessDeclaration>> MemoryStore::loadDeclaration(std::string_view process,
                                                                       int version) {
  return state_->locked(
      kOutOfMemory, [&](State::Tables& t) -> Result<std::optional<ProcessDeclaration>> {
        auto it = t.declarations.find(std::make_pair(std::string(process), version));
        if (it == t.declarations.end()) return std::nullopt;
        return it->second;
      });
}

Result<std::uint64_t> MemoryStore::changeMark() {
  return state_->locked(kOutOfMemory,
                        [](State::Tables& t) -> Result<std::uint64_t> { return t.changes; });
}

Result<std::vector<HistoryEvent>> MemoryStore::loadHistory(InstanceId id) {
  return state_->locked(kOutOfMemory, [&](State::Tables& t) -> Result<std::vector<HistoryEvent>> {
    auto it = t.instances.find(id);
    if (it == t.instances.end()) return std::vector<HistoryEvent>{};
    return it->second.history;
  });
}

}  // namespace asyncflow
