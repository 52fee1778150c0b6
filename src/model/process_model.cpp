#include "model/process_model.hpp"

#include <algorithm>
#include <cmath>
#include <exception>
#include <type_traits>
#include <variant>

#include <fmt/format.h>

#include "util/text.hpp"

namespace asyncflow::detail {

namespace {

Result<Fields> checkAgainst(const std::unordered_map<std::string, Type>& fieldTypes,
                            std::string_view process, const Fields& fields) {
  Fields checked;
  for (const auto& [name, value] : fields) {
    auto declared = fieldTypes.find(name);
    if (declared == fieldTypes.end()) {
      return fail(Errc::InvalidField,
                  fmt::format("field '{}' is not declared by process '{}'", quoted(name), process));
    }
    const Type type = declared->second;
    if (value.type() == Type::Double && std::isnan(*value.as<double>())) {
      // SQLite stores NaN as NULL; refusing it keeps every store faithful.
      return fail(Errc::InvalidField,
                  fmt::format("field '{}' is NaN, which cannot be stored", quoted(name)));
    }
    if (value.isNull() || value.type() == type) {
      checked.set(name, value);
    } else if (type == Type::Double && value.type() == Type::Int64) {
      checked.set(name, *value.as<double>());
    } else {
      return fail(Errc::InvalidField,
                  fmt::format("field '{}' is {}, but a {} was given", quoted(name), typeName(type),
                              typeName(value.type())));
    }
  }
  return checked;
}

}  // namespace

Result<Fields> CompiledProcess::checkFields(const Fields& fields) const {
  return checkAgainst(fieldTypes, name, fields);
}

Result<Fields> DeclaredProcess::checkFields(const Fields& fields) const {
  return checkAgainst(fieldTypes, name, fields);
}

ProcessDeclaration declarationOf(const CompiledProcess& process) {
  ProcessDeclaration declaration;
  declaration.process = process.name;
  declaration.version = process.version;
  for (const auto& [name, type] : process.fieldTypes) {
    declaration.fields.push_back(FieldDeclaration{name, type});
  }
  std::sort(declaration.fields.begin(), declaration.fields.end(),
            [](const FieldDeclaration& a, const FieldDeclaration& b) { return a.name < b.name; });
  for (const CompiledStep& step : process.steps) {
    StepDeclaration declared;
    declared.name = step.name;
    declared.kind = step.kind;
    if (const auto interval = step.heartbeat ? step.heartbeat : step.timeout) {
      declared.heartbeat = std::chrono::duration_cast<std::chrono::microseconds>(*interval);
    }
    declaration.steps.push_back(std::move(declared));
  }
  std::sort(declaration.steps.begin(), declaration.steps.end(),
            [](const StepDeclaration& a, const StepDeclaration& b) { return a.name < b.name; });
  return declaration;
}

DeclaredProcess declaredProcessOf(const ProcessDeclaration& declaration) {
  DeclaredProcess declared;
  declared.name = declaration.process;
  declared.version = declaration.version;
  for (const FieldDeclaration& field : declaration.fields) {
    declared.fieldTypes.emplace(field.name, field.type);
  }
  for (const StepDeclaration& step : declaration.steps) {
    declared.heartbeats.emplace(step.name, step.heartbeat);
  }
  return declared;
}

Route CompiledProcess::routeAfter(std::size_t from, const Fields& fields) const {
  const CompiledStep& step = steps[from];
  if (step.lines.empty()) {
    return from + 1 < steps.size() ? Route::to(from + 1) : Route::end();
  }
  for (std::size_t index : step.lines) {
    const Line& line = lines[index];
    bool taken = true;
    if (line.rule) {
      try {
        taken = line.rule(fields);
      } catch (const std::exception& e) {
        return Route::failure(
            fmt::format("the rule of line '{}' -> '{}' threw: {}", line.from, line.to, e.what()));
      } catch (...) {
        return Route::failure(
            fmt::format("the rule of line '{}' -> '{}' threw", line.from, line.to));
      }
    }
    if (taken) return Route::to(stepIndex.at(line.to));
  }
  return Route::failure(fmt::format("no line from step '{}' matched", step.name));
}

Result<std::shared_ptr<const CompiledProcess>> compileProcess(const Process& process) {
  auto invalid = [&](const std::string& why) {
    return fail(Errc::InvalidProcess,
                fmt::format("process '{}' version {}: {}", process.name(), process.version(), why));
  };
  if (process.name().empty()) return invalid("the process name is empty");
  if (process.steps().empty()) return invalid("it has no steps");

  auto compiled = std::make_shared<CompiledProcess>();
  compiled->name = process.name();
  compiled->version = process.version();

  for (const FieldDecl& field : process.fields()) {
    if (field.name.empty()) return invalid("a field has an empty name");
    if (field.type == Type::Null) {
      return invalid(fmt::format("field '{}' is declared Null; declare a value type", field.name));
    }
    if (!compiled->fieldTypes.emplace(field.name, field.type).second) {
      return invalid(fmt::format("field '{}' is declared twice", field.name));
    }
    Value initial = field.initial;
    if (initial.type() == Type::Double && std::isnan(*initial.as<double>())) {
      return invalid(fmt::format("the default of field '{}' is NaN", field.name));
    }
    if (!initial.isNull() && initial.type() != field.type) {
      if (field.type == Type::Double && initial.type() == Type::Int64) {
        initial = *initial.as<double>();
      } else {
        return invalid(fmt::format("the default of field '{}' is {}, but the field is {}",
                                   field.name, typeName(initial.type()), typeName(field.type)));
      }
    }
    compiled->defaults.set(field.name, std::move(initial));
  }

  for (const auto& variant : process.steps()) {
    CompiledStep step;
    bool hasHandler = false;
    std::visit(
        [&](const auto& s) {
          step.name = s.name();
          if constexpr (std::is_same_v<std::decay_t<decltype(s)>, AsyncStep>) {
            step.kind = StepKind::Async;
            step.async = s.handler();
            hasHandler = static_cast<bool>(step.async);
            step.timeout = s.timeoutAfter();
            step.heartbeat = s.heartbeatInterval();
            step.correlateField = s.correlationField();
          } else {
            step.kind = StepKind::Sync;
            step.sync = s.handler();
            hasHandler = static_cast<bool>(step.sync);
          }
        },
        variant);
    if (step.name.empty()) return invalid("a step has an empty name");
    if (!hasHandler) return invalid(fmt::format("step '{}' has no handler", step.name));
    if (!compiled->stepIndex.emplace(step.name, compiled->steps.size()).second) {
      return invalid(fmt::format("two steps are named '{}'", step.name));
    }
    compiled->steps.push_back(std::move(step));
  }

  // Second pass: the names a step refers to, now that every step is known.
  for (std::size_t i = 0; i < process.steps().size(); ++i) {
    CompiledStep& step = compiled->steps[i];
    auto target = [&](const std::string& name,
                      const char* what) -> Result<std::optional<std::size_t>> {
      if (name.empty()) return std::optional<std::size_t>();
      auto found = compiled->stepIndex.find(name);
      if (found == compiled->stepIndex.end()) {
        return invalid(
            fmt::format("the {} of step '{}' is unknown step '{}'", what, step.name, name));
      }
      return std::optional<std::size_t>(found->second);
    };
    std::string errorStep, escalation;
    std::visit(
        [&](const auto& s) {
          errorStep = s.errorStep();
          if constexpr (std::is_same_v<std::decay_t<decltype(s)>, AsyncStep>) {
            escalation = s.escalationStep();
          }
        },
        process.steps()[i]);
    auto onError = target(errorStep, "error line");
    if (!onError) return tl::unexpected(onError.error());
    step.onError = *onError;
    auto escalateTo = target(escalation, "escalation");
    if (!escalateTo) return tl::unexpected(escalateTo.error());
    step.escalateTo = *escalateTo;
    if ((step.timeout && step.timeout->count() <= 0) || (step.escalateTo && !step.timeout)) {
      return invalid(fmt::format("step '{}' needs a positive timeout", step.name));
    }
    if (step.heartbeat && (step.heartbeat->count() <= 0 || !step.timeout)) {
      return invalid(fmt::format(
          "step '{}': a heartbeat interval must be positive and needs a timeout", step.name));
    }
    if (!step.correlateField.empty() && compiled->fieldTypes.count(step.correlateField) == 0) {
      return invalid(fmt::format("step '{}' correlates by undeclared field '{}'", step.name,
                                 step.correlateField));
    }
  }

  compiled->lines = process.lines();
  for (std::size_t i = 0; i < compiled->lines.size(); ++i) {
    const Line& line = compiled->lines[i];
    auto from = compiled->stepIndex.find(line.from);
    if (from == compiled->stepIndex.end()) {
      return invalid(fmt::format("a line starts at unknown step '{}'", line.from));
    }
    if (compiled->stepIndex.count(line.to) == 0) {
      return invalid(fmt::format("a line from '{}' goes to unknown step '{}'", line.from, line.to));
    }
    compiled->steps[from->second].lines.push_back(i);
  }
  if (auto cycle = forcedCycle(*compiled); !cycle.empty()) {
    std::string path;
    for (const std::string& step : cycle) {
      if (!path.empty()) path += " -> ";
      path += fmt::format("'{}'", quoted(step));
    }
    return invalid(fmt::format(
        "its lines force the cycle {}: every step on it is synchronous and its line has no "
        "rule, so an instance would never wait or end; give a line a rule or put an async "
        "step on it",
        path));
  }
  return std::shared_ptr<const CompiledProcess>(std::move(compiled));
}

std::vector<std::string> forcedCycle(const CompiledProcess& process) {
  const std::size_t count = process.steps.size();
  constexpr std::size_t kNone = static_cast<std::size_t>(-1);
  // Where each synchronous step forces an instance to go next; kNone where a
  // rule decides, the instance ends, or the step waits (async).
  std::vector<std::size_t> forced(count, kNone);
  for (std::size_t i = 0; i < count; ++i) {
    const CompiledStep& step = process.steps[i];
    if (step.kind != StepKind::Sync) continue;
    if (step.lines.empty()) {
      if (i + 1 < count) forced[i] = i + 1;
    } else if (const Line& first = process.lines[step.lines.front()]; !first.rule) {
      forced[i] = process.stepIndex.at(first.to);
    }
  }
  // Each step has at most one forced successor, so following them from any
  // step either stops or enters one cycle. 0: unvisited, 1: on the current
  // path, 2: done (no cycle through it).
  std::vector<int> state(count, 0);
  for (std::size_t start = 0; start < count; ++start) {
    std::vector<std::size_t> path;
    std::size_t at = start;
    while (at != kNone && state[at] == 0) {
      state[at] = 1;
      path.push_back(at);
      at = forced[at];
    }
    if (at != kNone && state[at] == 1) {
      std::vector<std::string> cycle;
      auto from = std::find(path.begin(), path.end(), at);
      for (auto it = from; it != path.end(); ++it) cycle.push_back(process.steps[*it].name);
      cycle.push_back(process.steps[at].name);
      return cycle;
    }
    for (std::size_t visited : path) state[visited] = 2;
  }
  return {};
}

}  // namespace asyncflow::detail
