// asyncflow::rest: the Workflow REST callback routes on a cpp-httplib server.
//
// Every request goes through the same gate, in this order: the authorizer (401,
// 403), the body size (413), the JSON (400), its shape (400), the data fields'
// JSON types (422), then the engine, whose Errc becomes the status. A refused
// POST's body is read and thrown away, never buffered, so the connection stays
// in step for the next request on it. Nothing here throws out of a handler:
// httplib would otherwise answer 500 with the exception's text in a header.
#include "asyncflow/rest.hpp"

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <initializer_list>
#include <limits>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <string_view>
#include <utility>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "util/constant_time.hpp"
#include "util/text.hpp"

namespace asyncflow::rest {
namespace {

using Json = nlohmann::json;

constexpr const char* kJsonType = "application/json";

// What every route shares; owned by the routes' handlers.
struct Routes {
  Engine& engine;
  Options options;
};

// One refusal: the status, the "error" name and the message of the JSON body.
struct Refusal {
  int status = 500;
  std::string error;
  std::string message;
};

// A request's part, or why the request is refused.
template <class T>
using Checked = tl::expected<T, Refusal>;

// The answer to an engine error; one the client gets a fixed message for goes
// to the host's log (without the path, which holds the serial's secret).
Refusal refusalOf(const Routes& routes, std::string_view route, const Error& error) {
  const int status = httpStatus(error.code);
  if (status >= 500 && routes.options.log) {
    try {
      routes.options.log(LogLevel::Error, "rest: " + std::string(route) + ": " + error.toString());
    } catch (...) {
    }
  }
  // A store's message may name files, SQL or the database's own words, and an
  // internal error's text is for the host only.
  std::string message = error.message;
  if (error.code == Errc::StoreError) {
    message = "the store failed; nothing was written and the call may be retried";
  } else if (status == 500) {
    message = "internal error";
  }
  return {status, std::string(errcName(error.code)), std::move(message)};
}

// Writes a JSON error body. Never throws: a failure here leaves a bare status.
void answer(httplib::Response& res, const Refusal& refusal) noexcept {
  res.status = refusal.status;
  try {
    const Json body = {{"error", refusal.error}, {"message", refusal.message}};
    res.set_content(body.dump(-1, ' ', false, Json::error_handler_t::replace), kJsonType);
    if (refusal.status == 503) res.set_header("Retry-After", "1");
  } catch (...) {
    res.body.clear();
  }
}

void answerInternal(httplib::Response& res) noexcept {
  try {
    answer(res, {500, std::string(errcName(Errc::Internal)), "internal error"});
  } catch (...) {
    res.status = 500;
    res.body.clear();
  }
}

// Asks the authorizer; a throwing authorizer forbids.
Access authorize(const Routes& routes, const httplib::Request& req) noexcept {
  try {
    RequestInfo info;
    info.method = req.method;
    info.path = req.path;
    info.remoteAddress = req.remote_addr;
    info.header = [&req](std::string_view name) -> std::optional<std::string_view> {
      auto it = req.headers.find(std::string(name));
      if (it == req.headers.end()) return std::nullopt;
      return std::string_view(it->second);
    };
    return routes.options.authorizer(info);
  } catch (...) {
    return Access::Forbidden;
  }
}

// The refusal for a request the authorizer did not allow.
Refusal refusalOf(Access access) {
  if (access == Access::Unauthenticated) {
    return {401, "Unauthenticated", "valid credentials are required"};
  }
  return {403, "Forbidden", "these credentials may not use this route"};
}

void answerDenied(const Routes& routes, httplib::Response& res, Access access) {
  answer(res, refusalOf(access));
  if (access == Access::Unauthenticated)
    res.set_header("WWW-Authenticate", routes.options.challenge);
}

enum class BodyStatus { Read, TooLarge, Broken };

// Reads the request body into `body` if it is at most `limit` bytes. A longer
// body (by its Content-Length, or as it arrives when chunked) is read to its end
// and discarded: answering without reading it would leave its bytes on the
// connection to be parsed as the next request.
BodyStatus readBody(const httplib::Request& req, const httplib::Response& res,
                    const httplib::ContentReader& reader, std::size_t limit, std::string& body) {
  bool tooLarge = false;
  if (req.has_header("Content-Length")) {
    const auto declared = req.get_header_value<std::uint64_t>("Content-Length");
    tooLarge = declared > limit;
  }
  const bool complete = reader([&](const char* data, std::size_t size) {
    if (tooLarge) return true;
    if (size > limit - body.size()) {
      tooLarge = true;
      std::string().swap(body);
      return true;
    }
    body.append(data, size);
    return true;
  });
  // httplib answers 413 itself, having skipped the body, when it is over the
  // server's set_payload_max_length.
  if (tooLarge || (!complete && res.status == 413)) return BodyStatus::TooLarge;
  return complete ? BodyStatus::Read : BodyStatus::Broken;
}

// Reads and discards the body of a request that is refused before its body
// matters (see readBody).
void drainBody(const httplib::ContentReader& reader) {
  reader([](const char*, std::size_t) { return true; });
}

Refusal badRequest(std::string message) {
  return {400, std::string(errcName(Errc::InvalidArgument)), std::move(message)};
}

Refusal invalidField(std::string message) {
  return {422, std::string(errcName(Errc::InvalidField)), std::move(message)};
}

// The body of a POST route: a JSON object whose members are among `allowed`.
// An empty body is an empty object.
Checked<Json> parseObject(const std::string& body,
                          std::initializer_list<std::string_view> allowed) {
  Json json = Json::object();
  if (!body.empty()) {
    try {
      json = Json::parse(body);
    } catch (const Json::parse_error& e) {
      // Not e.what(): it quotes the body.
      return tl::unexpected(badRequest("malformed JSON at byte " + std::to_string(e.byte)));
    }
  }
  if (!json.is_object()) return tl::unexpected(badRequest("the body must be a JSON object"));
  for (const auto& member : json.items()) {
    bool known = false;
    for (std::string_view name : allowed) known = known || member.key() == name;
    if (known) continue;
    std::string message = "unknown member '" + detail::quoted(member.key()) + "'";
    if (allowed.size() == 0) message += "; this route takes none";
    for (std::string_view name : allowed) {
      message += name == *allowed.begin() ? "; expected " : " or ";
      message += name;
    }
    return tl::unexpected(badRequest(std::move(message)));
  }
  return json;
}

// The data fields of `body["dataFields"]` (absent: none). JSON strings, integers
// that fit int64, other numbers, booleans and null become String, Int64, Double,
// Bool and Null; arrays, objects and larger integers are refused with 422.
Checked<Fields> fieldsOf(const Json& body) {
  Fields fields;
  auto member = body.find("dataFields");
  if (member == body.end()) return fields;
  if (!member->is_object()) {
    return tl::unexpected(badRequest("dataFields must be a JSON object of field names to values"));
  }
  for (const auto& item : member->items()) {
    const std::string& name = item.key();
    const Json& value = item.value();
    switch (value.type()) {
      case Json::value_t::null: fields.set(name, nullptr); break;
      case Json::value_t::boolean: fields.set(name, value.get<bool>()); break;
      case Json::value_t::number_integer: fields.set(name, value.get<std::int64_t>()); break;
      case Json::value_t::number_unsigned: {
        const auto number = value.get<std::uint64_t>();
        if (number > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
          return tl::unexpected(invalidField("field '" + detail::quoted(name) + "': " +
                                             std::to_string(number) + " does not fit an Int64"));
        }
        fields.set(name, static_cast<std::int64_t>(number));
        break;
      }
      case Json::value_t::number_float: fields.set(name, value.get<double>()); break;
      case Json::value_t::string: fields.set(name, value.get_ref<const std::string&>()); break;
      default:
        return tl::unexpected(
            invalidField("field '" + detail::quoted(name) + "': a JSON " + value.type_name() +
                         " is not a field value (null, boolean, number or string)"));
    }
  }
  return fields;
}

// What a POST route was asked to do.
struct EventRequest {
  std::string reason;  // fail only
  Fields fields;
};

enum class Action { Finish, Fail, Heartbeat };

Checked<EventRequest> eventRequest(Action action, const std::string& body) {
  Checked<Json> json = action == Action::Finish ? parseObject(body, {"dataFields"})
                       : action == Action::Fail ? parseObject(body, {"reason", "dataFields"})
                                                : parseObject(body, {});
  if (!json) return tl::unexpected(std::move(json.error()));
  EventRequest request;
  if (auto reason = json->find("reason"); reason != json->end()) {
    if (!reason->is_string()) return tl::unexpected(badRequest("reason must be a JSON string"));
    request.reason = reason->get<std::string>();
  }
  Checked<Fields> fields = fieldsOf(*json);
  if (!fields) return tl::unexpected(std::move(fields.error()));
  request.fields = std::move(*fields);
  return request;
}

// The ISO-8601 UTC form of `t`, to the microsecond: "2026-11-23T20:36:10.123456Z".
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

Json stepJson(const WaitingStep& step) {
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

const char* routeName(Action action) {
  switch (action) {
    case Action::Finish: return "finish";
    case Action::Fail: return "fail";
    case Action::Heartbeat: return "heartbeat";
  }
  return "serverEvent";
}

// POST {base}/serverEvents/{serial}/{finish,fail,heartbeat}.
void handleEvent(const Routes& routes, Action action, const httplib::Request& req,
                 httplib::Response& res, const httplib::ContentReader& reader) noexcept {
  try {
    if (const Access access = authorize(routes, req); access != Access::Allow) {
      drainBody(reader);
      return answerDenied(routes, res, access);
    }
    std::string body;
    switch (readBody(req, res, reader, routes.options.maxBodyBytes, body)) {
      case BodyStatus::Read: break;
      case BodyStatus::TooLarge:
        answer(res, {413, "PayloadTooLarge",
                     "the body is larger than " + std::to_string(routes.options.maxBodyBytes) +
                         " bytes"});
        return;
      case BodyStatus::Broken: answer(res, badRequest("the body could not be read")); return;
    }

    Checked<EventRequest> request = eventRequest(action, body);
    if (!request) return answer(res, request.error());
    const std::string serial = req.matches[1].str();
    Result<void> done;
    switch (action) {
      case Action::Finish:
        done = routes.engine.completeServerEvent(serial, std::move(request->fields));
        break;
      case Action::Fail:
        done = routes.engine.failServerEvent(serial, std::move(request->reason),
                                             std::move(request->fields));
        break;
      case Action::Heartbeat: done = routes.engine.heartbeat(serial); break;
    }
    if (!done) return answer(res, refusalOf(routes, routeName(action), done.error()));
    res.status = 204;
  } catch (...) {
    answerInternal(res);
  }
}

// GET {base}/serverEvents/{serial}.
void handleLookUp(const Routes& routes, const httplib::Request& req,
                  httplib::Response& res) noexcept {
  try {
    if (const Access access = authorize(routes, req); access != Access::Allow) {
      return answerDenied(routes, res, access);
    }
    auto step = routes.engine.serverEvent(req.matches[1].str());
    if (!step) return answer(res, refusalOf(routes, "serverEvent", step.error()));
    res.status = 200;
    res.set_content(stepJson(*step).dump(-1, ' ', false, Json::error_handler_t::replace),
                    kJsonType);
  } catch (...) {
    answerInternal(res);
  }
}

// Any other request under the base path: 404 once authorized. The path is not
// echoed: a mistyped route may carry a serial's secret.
Refusal unknownRoute(const Routes& routes) {
  return {404, std::string(errcName(Errc::NotFound)),
          "no such route under " + detail::quoted(routes.options.basePath)};
}

// `reader` is null for requests without a body (GET, HEAD, OPTIONS).
void handleUnknown(const Routes& routes, const httplib::Request& req, httplib::Response& res,
                   const httplib::ContentReader* reader) noexcept {
  try {
    const Access access = authorize(routes, req);
    if (reader != nullptr) drainBody(*reader);
    if (access != Access::Allow) return answerDenied(routes, res, access);
    answer(res, unknownRoute(routes));
  } catch (...) {
    answerInternal(res);
  }
}

// Characters a base path may hold: RFC 3986's path characters, without
// percent-escapes (httplib matches routes against the decoded path).
bool isPathCharacter(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::string_view("/-._~!$&'()*+,;=:@").find(c) != std::string_view::npos;
}

Result<void> checkOptions(const Options& options) {
  if (!options.authorizer) {
    return fail(Errc::InvalidArgument,
                "rest::mount: an authorizer is required (see rest::apiKeyAuthorizer)");
  }
  const std::string& base = options.basePath;
  if (base.empty() || base.front() != '/' || base.back() == '/') {
    return fail(Errc::InvalidArgument, "rest::mount: the base path '" + detail::quoted(base) +
                                           "' must start with '/' and not end with '/'");
  }
  for (char c : base) {
    if (!isPathCharacter(c)) {
      return fail(Errc::InvalidArgument,
                  "rest::mount: the base path '" + detail::quoted(base) +
                      "' holds a character that is not a plain URL path character");
    }
  }
  const std::string segments = base + "/";
  for (const char* bad : {"//", "/./", "/../"}) {
    if (segments.find(bad) != std::string::npos) {
      return fail(Errc::InvalidArgument, "rest::mount: the base path '" + detail::quoted(base) +
                                             "' has an empty, '.' or '..' segment");
    }
  }
  if (options.maxBodyBytes == 0) {
    return fail(Errc::InvalidArgument, "rest::mount: maxBodyBytes must be at least 1");
  }
  for (char c : options.challenge) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return fail(Errc::InvalidArgument,
                  "rest::mount: the challenge must not hold control characters");
    }
  }
  return {};
}

// `text` as a literal in an ECMAScript regular expression.
std::string regexLiteral(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

}  // namespace

Authorizer apiKeyAuthorizer(std::vector<std::string> keys, std::string header) {
  return [keys = std::move(keys), header = std::move(header)](const RequestInfo& request) {
    const std::optional<std::string_view> presented =
        request.header ? request.header(header) : std::nullopt;
    if (!presented || presented->empty()) return Access::Unauthenticated;
    // Every key is compared, with no early exit, so the time taken does not
    // tell which key (if any) matched, nor how much of one did.
    bool match = false;
    for (const std::string& key : keys) {
      const bool equal = detail::constantTimeEquals(key, *presented);
      match = match || (equal && !key.empty());
    }
    return match ? Access::Allow : Access::Unauthenticated;
  };
}

int httpStatus(Errc code) noexcept {
  switch (code) {
    case Errc::InvalidSerial:
    case Errc::InvalidArgument: return 400;
    case Errc::NotFound: return 404;
    case Errc::AlreadyCompleted:
    case Errc::TimedOut:
    case Errc::StepFailed:
    case Errc::Cancelled: return 409;
    case Errc::InvalidField: return 422;
    case Errc::StoreError:
    case Errc::Conflict:
    case Errc::ProcessNotDefined: return 503;
    case Errc::InvalidProcess:
    case Errc::Internal:
    case Errc::AmbiguousKey: return 500;
  }
  return 500;
}

Result<void> mount(httplib::Server& server, Engine& engine, Options options) {
  if (auto valid = checkOptions(options); !valid) return valid;
  try {
    const std::string base = regexLiteral(options.basePath);
    const std::string event = base + "/serverEvents/([^/]+)";
    const std::string finish = event + "/finish";
    const std::string failure = event + "/fail";
    const std::string heartbeat = event + "/heartbeat";
    const std::string anything = base + "(/.*)?";  // everything else under the base path
    // httplib compiles each pattern as it registers it; compiling them first
    // keeps the promise to mount nothing when one could not be.
    for (const std::string* pattern : {&event, &finish, &failure, &heartbeat, &anything}) {
      std::regex compiled(*pattern);
    }

    auto routes = std::make_shared<const Routes>(Routes{engine, std::move(options)});
    using Reader = httplib::ContentReader;
    auto post = [&](const std::string& pattern, Action action) {
      server.Post(pattern, [routes, action](const httplib::Request& req, httplib::Response& res,
                                            const Reader& reader) {
        handleEvent(*routes, action, req, res, reader);
      });
    };
    post(finish, Action::Finish);
    post(failure, Action::Fail);
    post(heartbeat, Action::Heartbeat);
    server.Get(event, [routes](const httplib::Request& req, httplib::Response& res) {
      handleLookUp(*routes, req, res);
    });

    auto unknown = [routes](const httplib::Request& req, httplib::Response& res) {
      handleUnknown(*routes, req, res, nullptr);
    };
    auto unknownWithBody = [routes](const httplib::Request& req, httplib::Response& res,
                                    const Reader& reader) {
      handleUnknown(*routes, req, res, &reader);
    };
    server.Get(anything, unknown);
    server.Options(anything, unknown);
    server.Post(anything, unknownWithBody);
    server.Put(anything, unknownWithBody);
    server.Patch(anything, unknownWithBody);
    server.Delete(anything, unknownWithBody);
    return {};
  } catch (const std::exception&) {
    return fail(Errc::Internal, "rest::mount: could not register the routes");
  }
}

}  // namespace asyncflow::rest
