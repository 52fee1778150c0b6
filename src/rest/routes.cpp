// The routes: what each one does with an authorized request whose body (if it
// takes one) is read and within its size.
#include "rest/routes.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "rest/bodies.hpp"
#include "rest/views.hpp"
#include "util/text.hpp"

namespace asyncflow::rest::detail {
namespace {

void answerJson(httplib::Response& res, int status, const nlohmann::json& body) {
  res.status = status;
  res.set_content(dumped(body), kJsonType);
}

// Answers an engine error; true when there was one.
template <class T>
bool refused(const Call& call, std::string_view route, const Result<T>& result) {
  if (result) return false;
  answer(call.response, refusalOf(call.context, route, result.error()));
  return true;
}

// POST serverEvents/{serial}/finish: completeServerEvent.
void finish(Call& call) {
  Checked<BodyRequest> body = parseBody(call.body, {false, true});
  if (!body) return answer(call.response, body.error());
  auto done = call.context.engine.completeServerEvent(call.parameter(0), std::move(body->fields));
  if (refused(call, "finish", done)) return;
  call.response.status = 204;
}

// POST serverEvents/{serial}/fail: failServerEvent.
void failure(Call& call) {
  Checked<BodyRequest> body = parseBody(call.body, {true, true});
  if (!body) return answer(call.response, body.error());
  auto done = call.context.engine.failServerEvent(call.parameter(0), std::move(body->reason),
                                                  std::move(body->fields));
  if (refused(call, "fail", done)) return;
  call.response.status = 204;
}

// POST serverEvents/{serial}/heartbeat: heartbeat. Takes no members.
void heartbeat(Call& call) {
  Checked<BodyRequest> body = parseBody(call.body, {false, false});
  if (!body) return answer(call.response, body.error());
  auto done = call.context.engine.heartbeat(call.parameter(0));
  if (refused(call, "heartbeat", done)) return;
  call.response.status = 204;
}

// GET serverEvents/{serial}: the waiting step.
void lookUp(Call& call) {
  auto step = call.context.engine.serverEvent(call.parameter(0));
  if (refused(call, "serverEvent", step)) return;
  answerJson(call.response, 200, serverEventJson(*step));
}

// POST workflows/{process}/instances: start, once per Idempotency-Key.
void startInstance(Call& call) {
  Checked<BodyRequest> body = parseBody(call.body, {false, true});
  if (!body) return answer(call.response, body.error());
  const std::string process = call.parameter(0);
  Engine& engine = call.context.engine;

  InstanceId id = 0;
  std::optional<int> version;
  bool created = true;
  if (call.request.has_header("Idempotency-Key")) {
    auto started = engine.startOnce(process, call.request.get_header_value("Idempotency-Key"),
                                    std::move(body->fields));
    if (refused(call, "start", started)) return;
    id = started->id;
    version = started->processVersion;
    created = started->created;
  } else {
    auto started = engine.start(process, std::move(body->fields));
    if (refused(call, "start", started)) return;
    id = *started;
    // The instance exists now: a failed read must not turn into an error that
    // invites the client to start it again.
    if (auto info = engine.instance(id)) {
      version = info->processVersion;
    } else if (call.context.options.log) {
      try {
        call.context.options.log(
            LogLevel::Warning,
            "rest: start: instance " + std::to_string(id) +
                " started; its version could not be read: " + info.error().toString());
      } catch (...) {
      }
    }
  }
  call.response.set_header("Location",
                           call.context.options.basePath + "/instances/" + std::to_string(id));
  answerJson(call.response, created ? 201 : 200, startedJson(id, process, version));
}

// A positive decimal id without sign or leading zero that fits int64.
std::optional<InstanceId> instanceIdOf(std::string_view text) {
  if (text.empty() || text.size() > 19 || text[0] == '0') return std::nullopt;
  std::uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + static_cast<std::uint64_t>(c - '0');
  }
  if (value > static_cast<std::uint64_t>(INT64_MAX)) return std::nullopt;
  return static_cast<InstanceId>(value);
}

// GET instances/{id}: status, current step, fields and the open serials' ids.
void showInstance(Call& call) {
  const std::string text = call.parameter(0);
  const std::optional<InstanceId> id = instanceIdOf(text);
  if (!id) {
    return answer(call.response,
                  badRequest("instance id '" + asyncflow::detail::quoted(text.substr(0, 40)) +
                             "' is not a positive integer"));
  }
  auto info = call.context.engine.instance(*id);
  if (refused(call, "instance", info)) return;
  answerJson(call.response, 200, instanceJson(*info));
}

// GET openapi.json: this table, described.
void describe(Call& call) {
  call.response.status = 200;
  call.response.set_content(call.context.openApi, kJsonType);
}

constexpr Answer kBadBody{
    400, "The body or the serial is malformed (InvalidArgument, InvalidSerial).", {}};
constexpr Answer kBadSerial{
    400, "The serial is malformed or its secret is wrong (InvalidSerial).", {}};
constexpr Answer kUnknownSerial{404, "No such serial, or a synchronous step's run (NotFound).", {}};
constexpr Answer kNotWaiting{
    409, "The step no longer waits (AlreadyCompleted, TimedOut, StepFailed, Cancelled).", {}};
constexpr Answer kTooLarge{413, "The body is larger than the host's limit (PayloadTooLarge).", {}};
constexpr Answer kBadField{
    422, "A field is undeclared, of the wrong type, or not well-formed XML (InvalidField).", {}};
constexpr Answer kDone{204, "Done; the answer has no body.", {}};

}  // namespace

const std::vector<Route>& routeTable() {
  static const std::vector<Route> table = {
      {Verb::Post,
       "/serverEvents/{serialNumber}/finish",
       "finishServerEvent",
       "Server Events",
       "Finish Server Event",
       "Completes the waiting step run of the serial with the data fields, and the instance "
       "continues. A completion that arrives before the step waits is kept and applied when it "
       "does.",
       "FinishRequest",
       false,
       {kDone, kBadBody, kUnknownSerial, kNotWaiting, kTooLarge, kBadField},
       finish},
      {Verb::Post,
       "/serverEvents/{serialNumber}/fail",
       "failServerEvent",
       "Server Events",
       "Fail Server Event",
       "Fails the waiting step run of the serial with a reason; the instance follows the step's "
       "error line, or fails.",
       "FailRequest",
       false,
       {kDone, kBadBody, kUnknownSerial, kNotWaiting, kTooLarge, kBadField},
       failure},
      {Verb::Post,
       "/serverEvents/{serialNumber}/heartbeat",
       "heartbeatServerEvent",
       "Server Events",
       "Heartbeat",
       "Tells the engine the external work is alive: the step's deadline moves to its heartbeat "
       "interval from now. Takes no body.",
       "EmptyRequest",
       false,
       {kDone, kBadBody, kUnknownSerial, kNotWaiting, kTooLarge},
       heartbeat},
      {Verb::Get,
       "/serverEvents/{serialNumber}",
       "getServerEvent",
       "Server Events",
       "Get Server Event",
       "The waiting step run of the serial.",
       {},
       false,
       {{200, "The waiting step run.", "ServerEvent"}, kBadSerial, kUnknownSerial, kNotWaiting},
       lookUp},
      {Verb::Post,
       "/workflows/{process}/instances",
       "startInstance",
       "Workflows",
       "Start Instance",
       "Starts an instance of the newest defined version of the process, with the declared "
       "defaults overlaid by the data fields. With an Idempotency-Key, a repeat of the request "
       "returns the instance the first one started (200) instead of starting another, across "
       "restarts and hosts.",
       "StartRequest",
       true,
       {{201, "Started.", "Started"},
        {200, "The Idempotency-Key named an instance started before; it is returned.", "Started"},
        {400, "The body or the Idempotency-Key is malformed (InvalidArgument).", {}},
        {404, "No such process is defined (NotFound).", {}},
        kTooLarge,
        {422,
         "A field is undeclared, of the wrong type, or not well-formed XML (InvalidField), or "
         "the Idempotency-Key was used for a start with other fields (KeyReused).",
         {}}},
       startInstance},
      {Verb::Get,
       "/instances/{instanceId}",
       "getInstance",
       "Instances",
       "Get Instance",
       "The instance's status, current step, data fields and open serials (their ids, never "
       "their secrets).",
       {},
       false,
       {{200, "The instance.", "Instance"},
        {400, "The id is not a positive integer (InvalidArgument).", {}},
        {404, "No such instance (NotFound).", {}}},
       showInstance},
      {Verb::Get,
       "/openapi.json",
       "getOpenApi",
       "Description",
       "OpenAPI description",
       "This document.",
       {},
       false,
       {{200, "The OpenAPI 3.1 description.", "OpenApi"}},
       describe},
  };
  return table;
}

}  // namespace asyncflow::rest::detail
