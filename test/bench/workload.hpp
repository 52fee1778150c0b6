// asyncflow_bench: the engine side's processes, stores and prepared databases.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "asyncflow/asyncflow.hpp"

namespace asyncflow::bench {

// The three short fields every benchmark instance starts with: OrderId "A-123",
// Status "New", Amount 120.
Fields orderFields();

// "Order": the three fields and one async step, Wait, whose start handler hands
// its serial to `onWait` and waits. Its completion ends the instance (B1, B4).
Process waitProcess(std::function<void(const std::string&)> onWait = {});

// "Cycle": the same fields and async step, then one sync step, Work, whose
// handler calls `onWork` first thing and ends the instance (B2, B3).
Process cycleProcess(std::function<void(const std::string&)> onWait = {},
                     std::function<void()> onWork = {});

// A Store that counts apply() calls: each is one commit of SqliteStore unless
// the store merges concurrent ones (group commit). It forwards loadInstanceRun
// too, so a store that reads both in one round trip does so under the benchmark.
class CountingStore final : public StoreWrapper {
 public:
  using StoreWrapper::StoreWrapper;

  Result<InstanceRun> loadInstanceRun(InstanceId instance, std::int64_t run) override {
    return target().loadInstanceRun(instance, run);
  }

  Result<std::vector<ApplyResult>> apply(std::vector<ChangeSet> batch) override {
    applies_.fetch_add(1, std::memory_order_relaxed);
    return StoreWrapper::apply(std::move(batch));
  }

  std::uint64_t applies() const noexcept { return applies_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> applies_{0};
};

// Opens the database at `path` as a SqliteStore at `sync`, wrapped in a CountingStore.
std::shared_ptr<CountingStore> openCountingStore(const std::string& path, Synchronous sync);

// Engine options for the benchmarks: `workers` continuation threads (0: inline).
EngineOptions engineOptions(std::size_t workers);

// A checkpointed database in which `serials.size()` instances wait at their
// async step: each run copies it, so each starts from the same state, and
// preparing it once keeps the untimed part of a run short.
struct WaitingTemplate {
  std::string path;
  std::vector<std::string> serials;  // in instance order, as Engine::waiting lists them
};

// Starts `count` instances of `process` at synchronous=NORMAL in a fresh
// database at `path`, collects their serials through Engine::waiting() paging,
// and checkpoints the file.
WaitingTemplate prepareWaiting(const std::string& path, const Process& process, std::size_t count);

// The serials of every waiting step, through Engine::waiting() paging.
std::vector<std::string> waitingSerials(const Engine& engine);

// Throws unless no step waits in `engine`'s store: every completion took effect.
void expectNoneWaiting(const Engine& engine);

}  // namespace asyncflow::bench
