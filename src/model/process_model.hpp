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
#include "asyncflow/step.hpp"
#include "asyncflow/store.hpp"

namespace asyncflow::detail {

struct CompiledStep {
  std::string name;
  StepKind kind = StepKind::Sync;
  Step::Handler sync;
  AsyncStep::Handler async;
  std::vector<std::size_t> lines;      // indices into CompiledProcess::lines, in declaration order
  std::optional<std::size_t> onError;  // the error line's target
  std::chrono::milliseconds timeout{0};    // zero: no deadline
  std::optional<std::size_t> escalateTo;   // where a timeout goes; none: the instance fails
  std::chrono::milliseconds heartbeat{0};  // zero: heartbeats move the deadline by `timeout`
  std::string correlateField;              // empty: no business key
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

// Validates and indexes a Process. InvalidProcess with the reason when it has no
// steps, an empty or duplicate step or field name, a Null-typed field, a default
// of the wrong type, a step without a handler, a line, error line or escalation
// naming an unknown step, a timeout or heartbeat that is not positive, a
// heartbeat without a timeout, or a correlation field that is not declared.
Result<std::shared_ptr<const CompiledProcess>> compileProcess(const Process& process);

}  // namespace asyncflow::detail
