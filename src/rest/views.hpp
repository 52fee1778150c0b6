// The JSON bodies the GET routes and the start route answer with (internal to
// the REST add-on). Secrets never appear here except in a ServerEvent's own
// serialNumber, which its caller already presented.
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "asyncflow/engine.hpp"

namespace asyncflow::rest::detail {

// "2026-11-23T20:36:10.123456Z": ISO-8601 UTC to the microsecond.
std::string iso8601(Timestamp t);

// GET serverEvents/{serial}: the waiting step.
nlohmann::json serverEventJson(const WaitingStep& step);

// GET instances/{id}: status, current step, fields and the open serials' ids
// ("5_31", never the secret).
nlohmann::json instanceJson(const InstanceInfo& info);

// The start route's answer; processVersion null when it could not be read.
nlohmann::json startedJson(InstanceId id, const std::string& process,
                           std::optional<int> processVersion);

// A JSON document as text; invalid UTF-8 is replaced, never thrown on.
std::string dumped(const nlohmann::json& json);

}  // namespace asyncflow::rest::detail
