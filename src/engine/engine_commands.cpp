// Engine::Impl: the commands that change instances. Each loads what it acts on,
// asks the state machine (model/transitions.hpp) what to write or why not, and
// commits under retryOnConflict; then it continues the instance.
#include <cstdint>
#include <optional>
#include <utility>

#include <fmt/format.h>

#include "engine/engine_impl.hpp"
#include "model/serial.hpp"
#include "model/start_key.hpp"
#include "util/constant_time.hpp"
#include "util/text.hpp"

namespace asyncflow {

using detail::Attempt;
using detail::Done;
using detail::Drive;
using detail::kLostRace;
using detail::retryOnConflict;
using detail::ServerEvent;
using detail::Transitions;

Result<void> Engine::Impl::define(const Process& process) {
  auto compiled = detail::compileProcess(process);
  if (!compiled) return tl::unexpected(compiled.error());
  if (registry_.find(process.name(), process.version())) {
    return fail(Errc::InvalidProcess,
                fmt::format("process '{}' version {} is already defined",
                            detail::quoted(process.name()), process.version()));
  }
  if (auto declared = declare(**compiled); !declared) return declared;
  if (auto added = registry_.add(*compiled); !added) return added;
  // Recovery first, then the timer: told first, the timer thread could take an
  // offered instance over before this call reaches it, and (inline mode) the
  // instance would then move on on that thread instead of before define()
  // returns.
  Result<std::size_t> recovered = std::size_t{0};
  if (options_.recoverOnDefine) recovered = recoverProcess(**compiled);
  timer_.definitionsChanged();  // its due timers can fire now
  if (!recovered) {
    return fail(recovered.error().code,
                fmt::format("process '{}' version {} is defined, but recovering its instances "
                            "failed (call recover() to retry): {}",
                            process.name(), process.version(), recovered.error().message));
  }
  return {};
}

namespace {

// "fields A:Int64, B:String; steps Wait:Async" for a refusal's message.
std::string describe(const ProcessDeclaration& declaration) {
  std::string fields;
  for (const FieldDeclaration& field : declaration.fields) {
    if (!fields.empty()) fields += ", ";
    fields += fmt::format("{}:{}", detail::quoted(field.name), typeName(field.type));
  }
  std::string steps;
  for (const StepDeclaration& step : declaration.steps) {
    if (!steps.empty()) steps += ", ";
    steps += fmt::format("{}:{}", detail::quoted(step.name),
                         step.kind == StepKind::Async ? "Async" : "Sync");
    if (step.heartbeat) steps += fmt::format("/{}us", step.heartbeat->count());
  }
  return fmt::format("fields [{}], steps [{}]", fields, steps);
}

}  // namespace

Result<void> Engine::Impl::declare(const detail::CompiledProcess& process) {
  const ProcessDeclaration mine = detail::declarationOf(process);
  auto stored = store_->declare(mine);
  if (!stored) {
    return fail(stored.error().code,
                fmt::format("process '{}' version {} is not defined: storing its declaration "
                            "failed: {}",
                            detail::quoted(process.name), process.version, stored.error().message));
  }
  if (!(*stored == mine)) {
    return fail(Errc::InvalidProcess,
                fmt::format("process '{}' version {} is declared in the store with {}, but this "
                            "definition has {}; give the changed process a new version",
                            detail::quoted(process.name), process.version, describe(*stored),
                            describe(mine)));
  }
  return {};
}

Result<Engine::Impl::DeclaredPtr> Engine::Impl::declaredProcess(const InstanceRecord& record) {
  if (DeclaredPtr kept = registry_.findDeclared(record.process, record.processVersion)) {
    return kept;
  }
  auto stored = store_->loadDeclaration(record.process, record.processVersion);
  if (!stored) return tl::unexpected(stored.error());
  if (!*stored) return notDefined(record);
  return registry_.keepDeclared(
      std::make_shared<const detail::DeclaredProcess>(detail::declaredProcessOf(**stored)));
}

Result<ApplyResult> Engine::Impl::create(const detail::CompiledProcess& process,
                                         const Fields& fields, std::optional<StartKey> key) {
  auto given = process.checkFields(fields);
  if (!given) return tl::unexpected(given.error());
  auto set = transitions_.start(process, *given, currentTime(), std::move(key));
  if (!set) return tl::unexpected(set.error());
  lease(*set);
  auto applied = committer_.commit(std::move(*set));
  if (!applied) return tl::unexpected(applied.error());
  if (applied->status == ApplyStatus::Applied) {
    continueInstance(applied->instance, Drive::Continue);
  } else if (applied->status == ApplyStatus::Conflict) {
    return fail(Errc::Internal, "the store reported a conflict for a new instance");
  }
  return applied;
}

Result<InstanceId> Engine::Impl::start(std::string_view name, const Fields& fields) {
  auto process = registry_.newest(name);
  if (!process) {
    return fail(Errc::NotFound, fmt::format("no process named '{}'", detail::quoted(name)));
  }
  auto applied = create(*process, fields, std::nullopt);
  if (!applied) return tl::unexpected(applied.error());
  if (applied->status != ApplyStatus::Applied) {
    return fail(Errc::Internal, "the store reported a taken start key for a start without one");
  }
  return applied->instance;
}

namespace {

// What startOnce reports for a key an earlier start claimed: that instance, or
// KeyReused when that start had other fields.
Result<Started> startedBefore(std::string_view process, std::string_view key,
                              const StartKeyRecord& claim, std::uint64_t fingerprint) {
  if (claim.fingerprint != fingerprint) {
    return fail(Errc::KeyReused,
                fmt::format("idempotency key '{}' of process '{}' started instance {} with other "
                            "fields; nothing changed",
                            detail::quoted(key), detail::quoted(process), claim.instance));
  }
  return Started{claim.instance, std::string(process), claim.processVersion, false};
}

}  // namespace

// A repeat costs one read. A first call creates with the key; losing the race
// to a concurrent call with the same key (KeyTaken) reads the winner's claim.
Result<Started> Engine::Impl::startOnce(std::string_view name, std::string_view key,
                                        const Fields& fields) {
  if (auto admitted = detail::checkStartKey(key); !admitted) {
    return tl::unexpected(admitted.error());
  }
  auto process = registry_.newest(name);
  if (!process) {
    return fail(Errc::NotFound, fmt::format("no process named '{}'", detail::quoted(name)));
  }
  const std::uint64_t fingerprint = detail::fingerprintOf(fields);
  auto claimed = store_->findStartKey(name, key);
  if (!claimed) return tl::unexpected(claimed.error());
  if (*claimed) return startedBefore(name, key, **claimed, fingerprint);

  auto applied = create(*process, fields, StartKey{std::string(key), fingerprint});
  if (!applied) return tl::unexpected(applied.error());
  if (applied->status == ApplyStatus::Applied) {
    return Started{applied->instance, process->name, process->version, true};
  }
  auto winner = store_->findStartKey(name, key);
  if (!winner) return tl::unexpected(winner.error());
  if (!*winner) {
    return fail(Errc::Internal,
                fmt::format("the store reported idempotency key '{}' of process '{}' taken by "
                            "instance {}, but does not find it",
                            detail::quoted(key), detail::quoted(name), applied->instance));
  }
  return startedBefore(name, key, **winner, fingerprint);
}

// The instance first, then the run: every change to a run bumps its instance's
// version, so a run read after the instance is never older than the version
// the write is guarded by.
Result<Engine::Impl::OpenRun> Engine::Impl::openRun(const RunSelector& selector,
                                                    std::optional<ServerEvent::Kind> event) const {
  const std::string ids = detail::formatSerial(selector.key.instance, selector.key.run, {});
  auto loaded = store_->loadInstanceRun(selector.key.instance, selector.key.run);
  if (!loaded) {
    if (loaded.error().code != Errc::NotFound) return tl::unexpected(loaded.error());
    return fail(Errc::NotFound, fmt::format("no step run {}", ids));
  }
  InstanceSnapshot& snapshot = loaded->snapshot;
  StepRunRecord& run = loaded->run;
  if (selector.secret && !detail::constantTimeEquals(run.secret, *selector.secret)) {
    return fail(Errc::InvalidSerial, fmt::format("wrong secret for step run {}", ids));
  }
  if (selector.businessKey && run.correlationKey != *selector.businessKey) {
    return fail(Errc::NotFound, fmt::format("step run {} no longer has that key", ids));
  }
  if (auto admitted = Transitions::admit(snapshot, run, event); !admitted) {
    return tl::unexpected(admitted.error());
  }
  ProcessPtr process = registry_.find(snapshot.record.process, snapshot.record.processVersion);
  return OpenRun{std::move(snapshot), std::move(run), std::move(process)};
}

Result<void> Engine::Impl::applyEventBySerial(std::string_view serial, ServerEvent event) {
  auto parts = detail::parseSerial(serial);
  if (!parts) return tl::unexpected(parts.error());
  if (parts->secret.empty() && options_.serials == SerialForm::WithSecret) {
    return fail(Errc::InvalidSerial, "the serial has no secret, and this engine requires one");
  }
  return applyEvent(RunSelector{{parts->instance, parts->run}, parts->secret, std::nullopt}, event);
}

// On a host that defines the version, the event applies in full and the
// instance moves on here. On one that does not, the fields are checked against
// the stored declaration and the event is recorded; a completed or failed
// Waiting run leaves the instance offered to a host that defines it.
Result<void> Engine::Impl::applyEvent(const RunSelector& selector, const ServerEvent& event) {
  bool moveOn = false;
  auto applied = retryOnConflict(
      detail::Subject{selector.key.instance, selector.key.run}, [&]() -> Attempt<Done> {
        auto open = openRun(selector, event.kind);
        if (!open) return tl::unexpected(open.error());
        DeclaredPtr declared;
        if (!open->process) {
          auto found = declaredProcess(open->snapshot.record);
          if (!found) return tl::unexpected(found.error());
          declared = std::move(*found);
        }
        auto valid = open->process ? open->process->checkFields(event.fields)
                                   : declared->checkFields(event.fields);
        if (!valid) return tl::unexpected(valid.error());
        ServerEvent checked;
        checked.kind = event.kind;
        checked.fields = std::move(*valid);
        checked.reason = event.reason;
        const bool waiting = open->run.status == StepRunStatus::Waiting;
        const Timestamp now = currentTime();
        Result<ChangeSet> set;
        if (open->process) {
          set = transitions_.applyEvent(*open->process, open->snapshot, std::move(open->run),
                                        std::move(checked), now);
        } else {
          auto interval = declared->heartbeats.find(open->run.step);
          set = Transitions::recordEvent(
              open->snapshot, std::move(open->run), std::move(checked),
              interval == declared->heartbeats.end() ? std::nullopt : interval->second, now);
        }
        if (!set) return tl::unexpected(set.error());
        // A closed Waiting run schedules the next one: this host runs it, or
        // (not defined here) any host that defines the version.
        const bool running = waiting && set->instance.status == InstanceStatus::Running;
        if (running && open->process) lease(*set);
        if (running && !open->process) Transitions::offerLease(*set, now);
        auto committed = committer_.commit(std::move(*set));
        if (!committed) return tl::unexpected(committed.error());
        if (committed->status == ApplyStatus::Conflict) return kLostRace;
        moveOn = running && open->process;
        return Done{};
      });
  if (applied && moveOn) continueInstance(selector.key.instance, Drive::Continue);
  return applied;
}

Result<void> Engine::Impl::completeByKey(std::string_view process, std::string_view step,
                                         std::string_view key, const Fields& fields) {
  if (key.empty()) return fail(Errc::InvalidArgument, "the business key is empty");
  KeyQuery query;
  query.process = std::string(process);
  query.step = std::string(step);
  query.key = std::string(key);
  auto found = store_->findByKey(query);
  if (!found) return tl::unexpected(found.error());
  if (found->empty()) {
    return fail(Errc::NotFound,
                fmt::format("no step '{}' of process '{}' waits with key '{}'",
                            detail::quoted(step), detail::quoted(process), detail::quoted(key)));
  }
  if (found->size() > 1) {
    return fail(Errc::AmbiguousKey,
                fmt::format("several steps '{}' of process '{}' wait with key '{}'; complete "
                            "them by serial",
                            detail::quoted(step), detail::quoted(process), detail::quoted(key)));
  }
  ServerEvent event;
  event.kind = ServerEvent::Kind::Complete;
  event.fields = fields;
  return applyEvent(RunSelector{found->front(), std::nullopt, query.key}, event);
}

Result<void> Engine::Impl::cancel(InstanceId id, const std::string& reason) {
  return retryOnConflict(detail::Subject{id}, [&]() -> Attempt<Done> {
    auto snapshot = store_->loadInstance(id);
    if (!snapshot) return tl::unexpected(snapshot.error());
    std::optional<StepRunRecord> open;
    if (auto runId = detail::openRunOf(snapshot->record)) {
      auto run = store_->loadStepRun(id, *runId);
      if (!run) return tl::unexpected(run.error());
      open = std::move(*run);
    }
    auto set = Transitions::cancel(*snapshot, std::move(open), reason, currentTime());
    if (!set) return tl::unexpected(set.error());
    auto committed = committer_.commit(std::move(*set));
    if (!committed) return tl::unexpected(committed.error());
    if (committed->status == ApplyStatus::Conflict) return kLostRace;
    return Done{};
  });
}

Result<void> Engine::Impl::retry(InstanceId id) {
  auto retried = retryOnConflict(detail::Subject{id}, [&]() -> Attempt<Done> {
    auto snapshot = store_->loadInstance(id);
    if (!snapshot) return tl::unexpected(snapshot.error());
    const InstanceRecord& record = snapshot->record;
    if (auto admitted = Transitions::admitRetry(record); !admitted) {
      return tl::unexpected(admitted.error());
    }
    ProcessPtr process = registry_.find(record.process, record.processVersion);
    if (!process) return notDefined(record);
    auto run = store_->loadStepRun(id, record.currentRun);
    if (!run) return tl::unexpected(run.error());
    auto set = transitions_.retry(*process, *snapshot, *run, currentTime());
    if (!set) return tl::unexpected(set.error());
    lease(*set);
    auto committed = committer_.commit(std::move(*set));
    if (!committed) return tl::unexpected(committed.error());
    if (committed->status == ApplyStatus::Conflict) return kLostRace;
    return Done{};
  });
  if (retried) continueInstance(id, Drive::Continue);
  return retried;
}

Result<std::size_t> Engine::Impl::recover() {
  std::size_t total = 0;
  for (const ProcessPtr& process : registry_.all()) {
    auto recovered = recoverProcess(*process);
    if (!recovered) return recovered;
    total += *recovered;
  }
  return total;
}

Result<std::size_t> Engine::Impl::runDueTimers() {
  const Timestamp now = currentTime();
  // Leases first: listing them writes nothing, so a failure there is a
  // StoreError with nothing changed.
  const detail::TimerPass leases = takeOver(now);
  if (leases.failure) return tl::unexpected(*leases.failure);
  const detail::TimerPass pass = fireDueTimers(now);
  timer_.runDueTasks(now);
  // Tell the caller the store failed (those timers stay due), not "none fired".
  if (pass.failure) return tl::unexpected(*pass.failure);
  return pass.fired;
}

// Every timer due at `now`, page by page: a page where nothing can fire (their
// versions are not defined here) does not stop the pages behind it.
detail::TimerPass Engine::Impl::fireDueTimers(Timestamp now) {
  constexpr std::size_t kPage = 256;
  detail::TimerPass pass;
  std::optional<Error> firstNotFired;
  DueQuery query;
  query.now = now;
  query.limit = kPage;
  for (;;) {
    auto due = store_->listDue(query);
    if (!due) {
      pass.failure = due.error();
      break;
    }
    for (const DueRun& timer : *due) {
      auto fired = fireTimer(timer, now);
      if (fired) {
        if (*fired) ++pass.fired;
        continue;
      }
      const Errc code = fired.error().code;
      if (code == Errc::StoreError || code == Errc::Conflict) {
        log(LogLevel::Warning,
            fmt::format("timer of step run {}_{} did not fire: {}", timer.key.instance,
                        timer.key.run, fired.error().toString()));
        if (!pass.failure) pass.failure = fired.error();
      } else {
        // Not defined here (or refused): it waits for a define(). One line per
        // pass, not one per timer: such timers stay due and come back each pass.
        ++pass.notFired;
        if (!firstNotFired) firstNotFired = fired.error();
      }
    }
    if (due->size() < kPage) break;  // a short page is the last
    query.after = due->back();
  }
  if (firstNotFired) {
    log(LogLevel::Warning,
        fmt::format("{} due timer(s) cannot fire in this engine and stay due until a define() "
                    "(the first: {})",
                    pass.notFired, firstNotFired->toString()));
  }
  return pass;
}

// Waiting --deadline--> TimedOut. False when the run was no longer due.
Result<bool> Engine::Impl::fireTimer(const DueRun& timer, Timestamp now) {
  bool moveOn = false;
  auto fired =
      retryOnConflict(detail::Subject{timer.key.instance, timer.key.run}, [&]() -> Attempt<bool> {
        auto loaded = store_->loadInstanceRun(timer.key.instance, timer.key.run);
        if (!loaded) return tl::unexpected(loaded.error());
        InstanceSnapshot& snapshot = loaded->snapshot;
        StepRunRecord& run = loaded->run;
        if (!Transitions::isDue(run, now)) return std::optional<bool>(false);
        ProcessPtr process =
            registry_.find(snapshot.record.process, snapshot.record.processVersion);
        if (!process) return notDefined(snapshot.record);
        auto set = transitions_.timeOut(*process, snapshot, std::move(run), now);
        if (!set) return tl::unexpected(set.error());
        lease(*set);
        const bool running = set->instance.status == InstanceStatus::Running;
        auto committed = committer_.commit(std::move(*set));
        if (!committed) return tl::unexpected(committed.error());
        if (committed->status == ApplyStatus::Conflict) return kLostRace;
        moveOn = running;
        return std::optional<bool>(true);
      });
  if (fired && *fired && moveOn) continueInstance(timer.key.instance, Drive::Continue);
  return fired;
}

}  // namespace asyncflow
