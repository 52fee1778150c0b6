// The Engine facade and the wiring of its parts. Nothing here decides anything:
// see engine_impl.hpp for where each job lives.
#include "asyncflow/engine.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <exception>
#include <utility>

#include <fmt/format.h>

#include "engine/engine_impl.hpp"
#include "engine/peers.hpp"
#include "util/exceptions.hpp"

namespace asyncflow {

namespace {

// "<name>/<16 hex digits>", the digits from `random`; should it fail, from the
// time and this engine's address (an owner id needs to be unique, not secret).
std::string ownerIdOf(const std::string& name, RandomSource& random, const void* self) {
  std::array<std::uint8_t, 8> bytes{};
  if (!random.fill(bytes.data(), bytes.size())) {
    const auto mixed =
        static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
        static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(self));
    for (std::size_t i = 0; i < bytes.size(); ++i) {
      bytes[i] = static_cast<std::uint8_t>(mixed >> (8 * i));
    }
  }
  std::string digits;
  for (std::uint8_t byte : bytes) digits += fmt::format("{:02x}", byte);
  return name.empty() ? digits : name + "/" + digits;
}

std::chrono::microseconds leaseDurationOf(const EngineOptions& options) {
  return std::max<std::chrono::microseconds>(options.leaseDuration, std::chrono::milliseconds(1));
}

}  // namespace

Engine::Impl::Impl(std::shared_ptr<Store> store, EngineOptions options)
    : store_(std::move(store)), options_(std::move(options)),
      clock_(options_.clock ? options_.clock : systemClock()),
      random_(options_.random ? options_.random : osRandom()),
      transitions_(options_.serials, *random_),
      owner_(ownerIdOf(options_.ownerName, *random_, this)),
      leaseDuration_(leaseDurationOf(options_)),
      skew_(std::max(options_.maxClockSkew, std::chrono::milliseconds::zero())),
      keeper_(leaseDuration_), committer_(
                                   *store_, options_.listener, options_.log,
                                   [this](Timestamp deadline) { timer_.noteDeadline(deadline); },
                                   [this] { detail::Peers::tell(store_.get(), &timer_); }),
      workers_(options_.workers, [this](const detail::Continuation& next) { drive(next); }),
      timer_(clock_,
             detail::TimerService::Hooks{
                 [this](Timestamp after) { return store_->nextDeadline(after); },
                 [this](Timestamp now) { return fireDueTimers(now); },
                 [this](LogLevel level, std::string_view message) { log(level, message); },
                 // Another host's lease is due skew_ after its expiry.
                 // (Timestamp::min() stays itself: it must not wrap around.)
                 [this](Timestamp after) -> Result<std::optional<Timestamp>> {
                   const Timestamp from =
                       after < Timestamp::min() + skew_ ? Timestamp::min() : after - skew_;
                   auto next = store_->nextLeaseExpiry(from, owner_);
                   if (!next || !*next) return next;
                   return std::optional<Timestamp>(**next + skew_);
                 },
                 [this](Timestamp now) { return takeOver(now); },
                 [this] { return store_->changeMark(); }},
             options_.timerThread, options_.changeCheckInterval) {
  detail::Peers::join(store_.get(), &timer_);
  if (options_.timerThread) watch_ = store_->watchChanges([this] { timer_.storeChanged(); });
}

Engine::Impl::~Impl() {
  // No peer may tell this timer anything once it stops. Then the timer: a
  // timer it fires may queue a continuation for the workers. Drives that are
  // running stop at their next step (shuttingDown_) and offer their instance
  // to any host; the rest stay where their last commit left them.
  watch_.reset();
  detail::Peers::leave(store_.get(), &timer_);
  shuttingDown_ = true;
  timer_.stop();
  workers_.stop();
  // Drives that were backing off (their retry was dropped with the timer):
  // offered, unless a handler ran whose decision did not commit.
  for (InstanceId id : backoff_.failing()) {
    releaseLease(id, uncommitted_.contains(id) ? Release::Expire : Release::Offer);
  }
}

Timestamp Engine::Impl::currentTime() const {
  return std::chrono::time_point_cast<std::chrono::microseconds>(clock_->now());
}

tl::unexpected<Error> Engine::Impl::notDefined(const InstanceRecord& record) {
  return fail(Errc::ProcessNotDefined,
              fmt::format("instance {} runs process '{}' version {}, which this engine has not "
                          "defined; nothing changed",
                          record.id, record.process, record.processVersion));
}

namespace {

// Runs an Impl method so that no exception crosses the public API: anything
// thrown (a bug, a throwing third-party store, allocation failure) is Internal.
template <class F>
auto guarded(const char* operation, F&& body) -> decltype(body()) {
  try {
    return body();
  } catch (...) {
    return fail(Errc::Internal, fmt::format("{}: {}", operation,
                                            detail::describeException(std::current_exception())));
  }
}

detail::ServerEvent serverEventOf(detail::ServerEvent::Kind kind, Fields fields = {},
                                  std::string reason = {}) {
  detail::ServerEvent event;
  event.kind = kind;
  event.fields = std::move(fields);
  event.reason = std::move(reason);
  return event;
}

}  // namespace

Engine::Engine(std::shared_ptr<Store> store, EngineOptions options)
    : impl_(std::make_unique<Impl>(std::move(store), std::move(options))) {}

Engine::~Engine() = default;

Result<void> Engine::define(const Process& process) {
  return guarded("define", [&] { return impl_->define(process); });
}

Result<InstanceId> Engine::start(std::string_view process, Fields fields) {
  return guarded("start", [&] { return impl_->start(process, fields); });
}

Result<Started> Engine::startOnce(std::string_view process, std::string_view idempotencyKey,
                                  Fields fields) {
  return guarded("startOnce", [&] { return impl_->startOnce(process, idempotencyKey, fields); });
}

Result<void> Engine::completeServerEvent(std::string_view serial, Fields fields) {
  return guarded("completeServerEvent", [&] {
    return impl_->applyEventBySerial(
        serial, serverEventOf(detail::ServerEvent::Kind::Complete, std::move(fields)));
  });
}

Result<void> Engine::failServerEvent(std::string_view serial, std::string reason, Fields fields) {
  return guarded("failServerEvent", [&] {
    return impl_->applyEventBySerial(serial, serverEventOf(detail::ServerEvent::Kind::Fail,
                                                           std::move(fields), std::move(reason)));
  });
}

Result<void> Engine::heartbeat(std::string_view serial) {
  return guarded("heartbeat", [&] {
    return impl_->applyEventBySerial(serial, serverEventOf(detail::ServerEvent::Kind::Heartbeat));
  });
}

Result<void> Engine::completeServerEventByKey(std::string_view process, std::string_view step,
                                              std::string_view key, Fields fields) {
  return guarded("completeServerEventByKey",
                 [&] { return impl_->completeByKey(process, step, key, fields); });
}

Result<WaitingStep> Engine::serverEvent(std::string_view serial) const {
  return guarded("serverEvent", [&] { return impl_->serverEvent(serial); });
}

Result<void> Engine::cancel(InstanceId id, std::string reason) {
  return guarded("cancel", [&] { return impl_->cancel(id, reason); });
}

Result<void> Engine::retry(InstanceId id) {
  return guarded("retry", [&] { return impl_->retry(id); });
}

Result<InstanceInfo> Engine::instance(InstanceId id) const {
  return guarded("instance", [&] { return impl_->instance(id); });
}

Result<WaitingPage> Engine::waiting(const WaitingFilter& filter) const {
  return guarded("waiting", [&] { return impl_->waiting(filter); });
}

Result<std::vector<HistoryEvent>> Engine::history(InstanceId id) const {
  return guarded("history", [&] { return impl_->history(id); });
}

Result<std::size_t> Engine::recover() {
  return guarded("recover", [&] { return impl_->recover(); });
}

Result<std::size_t> Engine::runDueTimers() {
  return guarded("runDueTimers", [&] { return impl_->runDueTimers(); });
}

EngineStats Engine::stats() const { return impl_->stats(); }

const std::string& Engine::owner() const { return impl_->owner(); }

void Engine::waitIdle() { impl_->waitIdle(); }

}  // namespace asyncflow
