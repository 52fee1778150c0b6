#include "workload.hpp"

#include <stdexcept>
#include <utility>

#include "measure.hpp"

namespace asyncflow::bench {
namespace {

// The fields and the async step Wait that both processes share.
Process orderShape(std::string name, std::function<void(const std::string&)> onWait) {
  Process process(std::move(name), 1);
  process.field("OrderId", Type::String)
      .field("Status", Type::String)
      .field("Amount", Type::Int64)
      .step(AsyncStep("Wait", [onWait = std::move(onWait)](AsyncStepContext& ctx) {
        if (onWait) onWait(ctx.serial());
        return StartOutcome::wait();
      }));
  return process;
}

}  // namespace

Fields orderFields() {
  return Fields{{"OrderId", "A-123"}, {"Status", "New"}, {"Amount", std::int64_t{120}}};
}

Process waitProcess(std::function<void(const std::string&)> onWait) {
  return orderShape("Order", std::move(onWait));
}

Process cycleProcess(std::function<void(const std::string&)> onWait, std::function<void()> onWork) {
  Process process = orderShape("Cycle", std::move(onWait));
  process.step(Step("Work", [onWork = std::move(onWork)](StepContext&) {
    if (onWork) onWork();
    return StepOutcome::next();
  }));
  return process;
}

std::shared_ptr<CountingStore> openCountingStore(const std::string& path, Synchronous sync) {
  SqliteOptions options;
  options.synchronous = sync;
  std::shared_ptr<Store> store = orThrow(SqliteStore::open(path, options), "open " + path);
  return std::make_shared<CountingStore>(std::move(store));
}

EngineOptions engineOptions(std::size_t workers) {
  EngineOptions options;
  options.workers = workers;
  return options;
}

WaitingTemplate prepareWaiting(const std::string& path, const Process& process, std::size_t count) {
  removeDatabase(path);
  WaitingTemplate prepared{path, {}};
  {
    Engine engine(openCountingStore(path, Synchronous::Normal), engineOptions(0));
    orThrow(engine.define(process), "define " + process.name());
    for (std::size_t i = 0; i < count; ++i) {
      orThrow(engine.start(process.name(), orderFields()), "start " + process.name());
    }
    prepared.serials = waitingSerials(engine);
  }
  if (prepared.serials.size() != count) {
    throw std::runtime_error("prepare: " + std::to_string(prepared.serials.size()) + " of " +
                             std::to_string(count) + " instances wait");
  }
  checkpoint(path);
  return prepared;
}

std::vector<std::string> waitingSerials(const Engine& engine) {
  std::vector<std::string> serials;
  WaitingFilter filter;
  filter.limit = 10'000;
  for (;;) {
    WaitingPage page = orThrow(engine.waiting(filter), "list waiting steps");
    for (const WaitingStep& step : page.steps) serials.push_back(step.serial);
    if (!page.next) return serials;
    filter.after = *page.next;
  }
}

void expectNoneWaiting(const Engine& engine) {
  WaitingFilter filter;
  filter.limit = 1;
  if (!orThrow(engine.waiting(filter), "list waiting steps").steps.empty()) {
    throw std::runtime_error("steps still wait after every completion returned success");
  }
}

}  // namespace asyncflow::bench
