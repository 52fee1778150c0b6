#include "rest/views.hpp"

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace asyncflow::rest::detail {

using Json = nlohmann::json;

std::string iso8601(Timestamp t) {
  using namespace std::chrono;
  const std::int64_t micros = duration_cast<microseconds>(t.time_since_epoch()).count();
  std::int64_t seconds = micros / 1'000'000;
  std::int64_t fraction = micros % 1'000'000;
  if (fraction < 0) {
    fraction += 1'000'000;
    --seconds;
  }
  std::int64_t days = seconds / 86'400;
  std::int64_t secondOfDay = seconds % 86'400;
  if (secondOfDay < 0) {
    secondOfDay += 86'400;
    --days;
  }
  // Howard Hinnant's civil_from_days.
  const std::int64_t z = days + 719'468;
  const std::int64_t era = (z >= 0 ? z : z - 146'096) / 146'097;
  const std::int64_t dayOfEra = z - era * 146'097;
  const std::int64_t yearOfEra =
      (dayOfEra - dayOfEra / 1'460 + dayOfEra / 36'524 - dayOfEra / 146'096) / 365;
  const std::int64_t dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100);
  const std::int64_t mp = (5 * dayOfYear + 2) / 153;
  const std::int64_t day = dayOfYear - (153 * mp + 2) / 5 + 1;
  const std::int64_t month = mp < 10 ? mp + 3 : mp - 9;
  const std::int64_t year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0);

  char text[64];
  std::snprintf(text, sizeof text, "%04lld-%02lld-%02lldT%02lld:%02lld:%02lld.%06lldZ",
                static_cast<long long>(year), static_cast<long long>(month),
                static_cast<long long>(day), static_cast<long long>(secondOfDay / 3600),
                static_cast<long long>(secondOfDay / 60 % 60),
                static_cast<long long>(secondOfDay % 60), static_cast<long long>(fraction));
  return text;
}

Json serverEventJson(const WaitingStep& step) {
  Json json = {
      {"serialNumber", step.serial}, {"instanceId", step.instance},
      {"process", step.process},     {"processVersion", step.processVersion},
      {"step", step.step},
  };
  // A run whose start handler has not returned yet is not waiting yet.
  json["waitingSince"] =
      step.waitingSince == Timestamp{} ? Json(nullptr) : Json(iso8601(step.waitingSince));
  json["deadline"] = step.deadline ? Json(iso8601(*step.deadline)) : Json(nullptr);
  return json;
}

namespace {

Json valueJson(const Value& value) {
  switch (value.type()) {
    case Type::Null: return nullptr;
    case Type::Bool: return std::get<bool>(value.variant());
    case Type::Int64: return std::get<std::int64_t>(value.variant());
    case Type::Double: return std::get<double>(value.variant());
    case Type::String: return std::get<std::string>(value.variant());
  }
  return nullptr;
}

bool isOpen(StepRunStatus status) {
  return status == StepRunStatus::Ready || status == StepRunStatus::Starting ||
         status == StepRunStatus::Waiting;
}

}  // namespace

Json instanceJson(const InstanceInfo& info) {
  Json fields = Json::object();
  for (const auto& [name, value] : info.fields) fields[name] = valueJson(value);
  Json open = Json::array();
  // Only an async run has a serial, and only an open one can still be finished.
  if (!info.serial.empty() && info.currentRun > 0 && isOpen(info.currentStepStatus)) {
    open.push_back({{"serialId", std::to_string(info.id) + "_" + std::to_string(info.currentRun)},
                    {"step", info.currentStep},
                    {"status", std::string(statusName(info.currentStepStatus))}});
  }
  return {
      {"instanceId", info.id},
      {"process", info.process},
      {"processVersion", info.processVersion},
      {"status", std::string(statusName(info.status))},
      {"currentStep", info.currentStep.empty() ? Json(nullptr) : Json(info.currentStep)},
      {"currentStepStatus", info.currentStep.empty()
                                ? Json(nullptr)
                                : Json(std::string(statusName(info.currentStepStatus)))},
      {"fields", std::move(fields)},
      {"openSerials", std::move(open)},
      {"error", info.error.empty() ? Json(nullptr) : Json(info.error)},
      {"createdAt", iso8601(info.createdAt)},
      {"updatedAt", iso8601(info.updatedAt)},
  };
}

Json startedJson(InstanceId id, const std::string& process, std::optional<int> processVersion) {
  return {{"instanceId", id},
          {"process", process},
          {"processVersion", processVersion ? Json(*processVersion) : Json(nullptr)}};
}

std::string dumped(const Json& json) {
  return json.dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace asyncflow::rest::detail
