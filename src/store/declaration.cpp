#include "store/declaration.hpp"

#include <algorithm>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "store/enum_names.hpp"
#include "util/text.hpp"

namespace asyncflow::detail {

Result<ProcessDeclaration> validDeclaration(const ProcessDeclaration& declaration) {
  const auto refused = [&](const std::string& why) {
    return fail(Errc::InvalidArgument,
                fmt::format("cannot declare {} version {}: {}; nothing was written",
                            quoted(declaration.process), declaration.version, why));
  };
  if (declaration.process.empty()) return refused("the process name is empty");
  if (declaration.version < 1) return refused("the version is below 1");
  ProcessDeclaration sorted = declaration;
  const auto byName = [](const auto& a, const auto& b) { return a.name < b.name; };
  std::stable_sort(sorted.fields.begin(), sorted.fields.end(), byName);
  std::stable_sort(sorted.steps.begin(), sorted.steps.end(), byName);
  for (std::size_t i = 0; i < sorted.fields.size(); ++i) {
    const FieldDeclaration& field = sorted.fields[i];
    if (field.name.empty()) return refused("a field name is empty");
    if (i > 0 && sorted.fields[i - 1].name == field.name) {
      return refused(fmt::format("field {} is declared twice", quoted(field.name)));
    }
    if (!enumNamed<Type>(nameOf(field.type))) {
      return refused(fmt::format("field {} has type {}, which is no Type", quoted(field.name),
                                 static_cast<int>(field.type)));
    }
  }
  for (std::size_t i = 0; i < sorted.steps.size(); ++i) {
    const StepDeclaration& step = sorted.steps[i];
    if (step.name.empty()) return refused("a step name is empty");
    if (i > 0 && sorted.steps[i - 1].name == step.name) {
      return refused(fmt::format("step {} is declared twice", quoted(step.name)));
    }
    if (!enumNamed<StepKind>(nameOf(step.kind))) {
      return refused(fmt::format("step {} has kind {}, which is no StepKind", quoted(step.name),
                                 static_cast<int>(step.kind)));
    }
    if (step.heartbeat && step.heartbeat->count() < 0) {
      return refused(fmt::format("step {} has a negative heartbeat ({} us)", quoted(step.name),
                                 step.heartbeat->count()));
    }
  }
  return sorted;
}

}  // namespace asyncflow::detail
