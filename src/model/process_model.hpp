// A validated, indexed process definition, as the engine runs it (internal).
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "asyncflow/error.hpp"
#include "asyncflow/fields.hpp"
#include "asyncflow/process.hpp"
#include "asyncflow/records.hpp"
#include "asyncflow/step.hpp"

namespace asyncflow::detail {

// One step of a compiled process: its handler and everything define() checked.
struct CompiledStep {
  std::string name;
  StepKind kind = StepKind::Sync;
  Step::Handler sync;
  AsyncStep::Handler async;
  std::vector<std::size_t> lines;      // indices into CompiledProcess::lines, in declaration order
  std::optional<std::size_t> onError;  // the error line's target
  std::optional<std::chrono::milliseconds> timeout;  // positive; none: no deadline
  std::optional<std::size_t> escalateTo;  // where a timeout goes; none: the instance fails
  // Positive; none: a heartbeat moves the deadline by `timeout`.
  std::optional<std::chrono::milliseconds> heartbeat;
  std::string correlateField;  // empty: no business key
};

// Where an instance goes after a step.
struct Route {
  enum class Kind { Step, End, Failure };
  Kind kind = Kind::End;
  std::size_t step = 0;  // with Kind::Step
  std::string error;     // with Kind::Failure

  static Route to(std::size_t step) { return Route{Kind::Step, step, {}}; }
  static Route end() { return Route{Kind::End, 0, {}}; }
  static Route failure(std::string why) { return Route{Kind::Failure, 0, std::move(why)}; }
};

// Immutable once compiled; shared by every thread running its instances.
struct CompiledProcess {
  std::string name;
  int version = 0;
  std::unordered_map<std::string, Type> fieldTypes;
  Fields defaults;  // every declared field, null when it has no default
  std::vector<CompiledStep> steps;
  std::unordered_map<std::string, std::size_t> stepIndex;
  std::vector<Line> lines;

  // Checks each field against the declarations: declared, and null or of the
  // declared type (an Int64 is accepted for a Double field and converted), and
  // not NaN.
  // Returns the normalised fields, or InvalidField naming the first bad field.
  Result<Fields> checkFields(const Fields& fields) const;

  // The step after step `from` given the fields after it: the first outgoing
  // line whose rule holds; with no outgoing lines, the next declared step or the
  // end. No line matching, or a rule that throws, is a Failure.
  Route routeAfter(std::size_t from, const Fields& fields) const;
};

// What a host that does not define a process version knows of it (DESIGN.md
// section 8): the declaration the store keeps, indexed for the checks of a
// completion, a failure and a heartbeat.
struct DeclaredProcess {
  std::string name;
  int version = 0;
  std::unordered_map<std::string, Type> fieldTypes;
  // By step name: how far a heartbeat moves a waiting run's deadline (none:
  // it moves nothing).
  std::unordered_map<std::string, std::optional<std::chrono::microseconds>> heartbeats;

  // As CompiledProcess::checkFields.
  Result<Fields> checkFields(const Fields& fields) const;
};

// The declaration define() stores for `process`: its fields, and its steps with
// their kinds and heartbeat intervals (the heartbeat's, else the timeout).
ProcessDeclaration declarationOf(const CompiledProcess& process);

// `declaration` indexed. Never fails but for allocation.
DeclaredProcess declaredProcessOf(const ProcessDeclaration& declaration);

// Validates and indexes a Process. InvalidProcess with the reason when it has no
// steps, an empty or duplicate step or field name, a Null-typed field, a default
// of the wrong type, a step without a handler, a line, error line or escalation
// naming an unknown step, a timeout or heartbeat that is not positive, an
// escalation or heartbeat without a timeout, a correlation field that is not
// declared, or a cycle its lines force (see forcedCycle).
Result<std::shared_ptr<const CompiledProcess>> compileProcess(const Process& process);

// The steps of a cycle that an instance, once in it, could never leave by its
// lines, in the order it runs them (the first repeated at the end), or empty. A
// step forces where the instance goes next when its first line has no rule (or,
// without lines, it continues with the next declared step); a cycle of such
// steps that are all synchronous never waits or ends unless a handler returns
// goTo(), finish() or fail(). A line with a rule, or an async step, breaks it.
std::vector<std::string> forcedCycle(const CompiledProcess& process);

}  // namespace asyncflow::detail
