// asyncflow: a process definition — declared data fields, steps and lines.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "asyncflow/fields.hpp"
#include "asyncflow/step.hpp"
#include "asyncflow/value.hpp"

namespace asyncflow {

// A declared data field: its name, type and the value a new instance starts with
// (null when no default is given).
struct FieldDecl {
  std::string name;
  Type type = Type::String;
  Value initial;
};

// A transition between two steps. `rule` (optional) is evaluated on the fields
// after the source step; a line without a rule always matches.
struct Line {
  using Rule = std::function<bool(const Fields&)>;
  std::string from;
  std::string to;
  Rule rule;
};

// A workflow definition: a builder of plain data, validated by Engine::define.
//
// Routing: after a step, its outgoing lines are tried in declaration order and
// the first whose rule matches is taken; none matching fails the instance. A
// step with no outgoing lines continues with the next declared step, and the
// last step ends the instance. Not thread-safe while being built; copyable.
class Process {
 public:
  using StepVariant = std::variant<Step, AsyncStep>;

  Process(std::string name, int version) : name_(std::move(name)), version_(version) {}

  // Declares a field. `initial` must be null or of `type` (checked by define).
  Process& field(std::string name, Type type, Value initial = {}) {
    fields_.push_back(FieldDecl{std::move(name), type, std::move(initial)});
    return *this;
  }
  // Appends a step; the first step appended is where an instance starts.
  Process& step(Step step) {
    steps_.emplace_back(std::move(step));
    return *this;
  }
  Process& step(AsyncStep step) {
    steps_.emplace_back(std::move(step));
    return *this;
  }
  // Adds a line from one step to another, guarded by an optional rule.
  Process& line(std::string from, std::string to, Line::Rule rule = {}) {
    lines_.push_back(Line{std::move(from), std::move(to), std::move(rule)});
    return *this;
  }

  const std::string& name() const noexcept { return name_; }
  int version() const noexcept { return version_; }
  const std::vector<FieldDecl>& fields() const noexcept { return fields_; }
  const std::vector<StepVariant>& steps() const noexcept { return steps_; }
  const std::vector<Line>& lines() const noexcept { return lines_; }

 private:
  std::string name_;
  int version_;
  std::vector<FieldDecl> fields_;
  std::vector<StepVariant> steps_;
  std::vector<Line> lines_;
};

}  // namespace asyncflow
