// asyncflow: steps, the contexts their handlers see, and the outcomes they return.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>

#include "asyncflow/fields.hpp"
#include "asyncflow/records.hpp"

namespace asyncflow {

// What a synchronous step's handler decides.
class StepOutcome {
 public:
  enum class Kind { Next, GoTo, Finish, Fail };

  // Follow the step's lines (or the next declared step when it has none).
  static StepOutcome next() { return StepOutcome(Kind::Next, {}); }
  // Jump to the named step, ignoring lines. An unknown name fails the instance.
  static StepOutcome goTo(std::string step) { return StepOutcome(Kind::GoTo, std::move(step)); }
  // Complete the instance now.
  static StepOutcome finish() { return StepOutcome(Kind::Finish, {}); }
  // Fail the step, and with it the instance, with a reason for people.
  static StepOutcome fail(std::string reason) { return StepOutcome(Kind::Fail, std::move(reason)); }

  Kind kind() const noexcept { return kind_; }
  // The goTo target or the fail reason; empty otherwise.
  const std::string& text() const noexcept { return text_; }

 private:
  StepOutcome(Kind kind, std::string text) : kind_(kind), text_(std::move(text)) {}
  Kind kind_;
  std::string text_;
};

// What an async step's start handler decides after calling the external system.
class StartOutcome {
 public:
  enum class Kind { Wait, Complete, Fail };

  // Wait for completeServerEvent(serial). If a completion already arrived while
  // the handler ran, the step completes at once.
  static StartOutcome wait() { return StartOutcome(Kind::Wait, {}); }
  // No wait is needed: the step completes now and the process follows its lines.
  static StartOutcome complete() { return StartOutcome(Kind::Complete, {}); }
  // The outbound call failed: the step fails, and with it the instance.
  static StartOutcome fail(std::string reason) {
    return StartOutcome(Kind::Fail, std::move(reason));
  }

  Kind kind() const noexcept { return kind_; }
  // The fail reason; empty otherwise.
  const std::string& reason() const noexcept { return reason_; }

 private:
  StartOutcome(Kind kind, std::string reason) : kind_(kind), reason_(std::move(reason)) {}
  Kind kind_;
  std::string reason_;
};

// What a synchronous step's handler sees. Valid only during the handler call;
// used by the one thread running the handler.
class StepContext {
 public:
  StepContext(InstanceId instance, std::string process, int version, std::string step, int attempt,
              Fields& fields)
      : instance_(instance), process_(std::move(process)), version_(version),
        step_(std::move(step)), attempt_(attempt), fields_(&fields) {}
  virtual ~StepContext() = default;

  InstanceId instanceId() const noexcept { return instance_; }
  const std::string& processName() const noexcept { return process_; }
  int processVersion() const noexcept { return version_; }
  const std::string& stepName() const noexcept { return step_; }
  // 1 on the first run of this step run; more when the engine re-runs it after a
  // crash (handlers run at least once, so a re-run may repeat an earlier effect).
  int attempt() const noexcept { return attempt_; }

  // The instance's data fields. Writes are kept only if the handler returns
  // without throwing, and each written field must be declared with its type:
  // otherwise the step fails with InvalidField naming the field.
  Fields& fields() noexcept { return *fields_; }
  const Fields& fields() const noexcept { return *fields_; }

 private:
  InstanceId instance_;
  std::string process_;
  int version_;
  std::string step_;
  int attempt_;
  Fields* fields_;
};

// What an async step's start handler sees: a StepContext plus the serial to hand
// to the external system. The serial is already durable when the handler runs.
class AsyncStepContext : public StepContext {
 public:
  AsyncStepContext(InstanceId instance, std::string process, int version, std::string step,
                   int attempt, Fields& fields, std::string serial)
      : StepContext(instance, std::move(process), version, std::move(step), attempt, fields),
        serial_(std::move(serial)) {}

  // The handle the external system passes back to completeServerEvent. A re-run
  // of the same step run (attempt() > 1) sees the same serial.
  const std::string& serial() const noexcept { return serial_; }

 private:
  std::string serial_;
};

// A synchronous step: a handler that reads and writes fields and picks the next
// line. A handler that throws fails its step with the exception's message.
class Step {
 public:
  using Handler = std::function<StepOutcome(StepContext&)>;

  Step(std::string name, Handler handler) : name_(std::move(name)), handler_(std::move(handler)) {}

  // The error line: when this step fails (fail() or a throw), the instance goes
  // on at `step` instead of failing. define() checks that the step exists.
  Step& onError(std::string step) {
    onError_ = std::move(step);
    return *this;
  }

  const std::string& name() const noexcept { return name_; }
  const Handler& handler() const noexcept { return handler_; }
  const std::string& errorStep() const noexcept { return onError_; }

 private:
  std::string name_;
  Handler handler_;
  std::string onError_;
};

// An async step ("wait for external system"): its start handler calls the
// external system with ctx.serial(), may use the response to write fields, and
// returns StartOutcome::wait(). completeServerEvent(serial, fields) finishes it.
class AsyncStep {
 public:
  using Handler = std::function<StartOutcome(AsyncStepContext&)>;
  using Duration = std::chrono::milliseconds;

  AsyncStep(std::string name, Handler handler)
      : name_(std::move(name)), handler_(std::move(handler)) {}

  // A deadline `after` the step begins to wait. When it passes without a
  // completion the run becomes TimedOut and the instance goes on at
  // `escalateTo`, or fails when that is empty. define() refuses an `after` of
  // zero or less (InvalidProcess).
  AsyncStep& timeout(Duration after, std::string escalateTo = {}) {
    timeout_ = after;
    escalateTo_ = std::move(escalateTo);
    return *this;
  }
  // Each heartbeat(serial) moves the deadline to `interval` after the heartbeat
  // (without an interval, heartbeats move it by the timeout). Needs a timeout;
  // define() refuses an `interval` of zero or less (InvalidProcess).
  AsyncStep& heartbeat(Duration interval) {
    heartbeat_ = interval;
    return *this;
  }
  // The business key: when the step begins to wait, the value of `field` (a
  // declared field) becomes a key that completeServerEventByKey finds it by.
  AsyncStep& correlate(std::string field) {
    correlateField_ = std::move(field);
    return *this;
  }
  // The error line: when this step fails (StartOutcome::fail, a throw, or
  // failServerEvent), the instance goes on at `step` instead of failing.
  AsyncStep& onError(std::string step) {
    onError_ = std::move(step);
    return *this;
  }

  const std::string& name() const noexcept { return name_; }
  const Handler& handler() const noexcept { return handler_; }
  // What timeout() was given; empty when it was not called.
  std::optional<Duration> timeoutAfter() const noexcept { return timeout_; }
  const std::string& escalationStep() const noexcept { return escalateTo_; }
  // What heartbeat() was given; empty when it was not called.
  std::optional<Duration> heartbeatInterval() const noexcept { return heartbeat_; }
  const std::string& correlationField() const noexcept { return correlateField_; }
  const std::string& errorStep() const noexcept { return onError_; }

 private:
  std::string name_;
  Handler handler_;
  std::optional<Duration> timeout_;
  std::string escalateTo_;
  std::optional<Duration> heartbeat_;
  std::string correlateField_;
  std::string onError_;
};

}  // namespace asyncflow
