#include "asyncflow/store.hpp"

#include "store/enum_names.hpp"

namespace asyncflow {

std::string_view statusName(InstanceStatus status) noexcept { return detail::nameOf(status); }

std::string_view statusName(StepRunStatus status) noexcept { return detail::nameOf(status); }

std::string_view historyKindName(HistoryKind kind) noexcept { return detail::nameOf(kind); }

}  // namespace asyncflow
