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
  std::stable_sort(
      sorted.fields.begin(), sorted.fields.end(),
      [](const FieldDeclaration& a, const FieldDeclaration& b) { return a.name < b.name; });
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
  return sorted;
}

}  // namespace asyncflow::detail
