// asyncflow::rest: K2's Workflow REST callback routes on a host's cpp-httplib
// server, so an external system finishes a waiting step over HTTP:
//
//   POST {base}/serverEvents/{serialNumber}/finish     {"dataFields": {...}}     -> 204
//   POST {base}/serverEvents/{serialNumber}/fail       {"reason": "...",
//                                                       "dataFields": {...}}     -> 204
//   POST {base}/serverEvents/{serialNumber}/heartbeat  (no body)                 -> 204
//   GET  {base}/serverEvents/{serialNumber}            -> 200 {"serialNumber", "instanceId",
//        "process", "processVersion", "step", "waitingSince", "deadline"}
//
// waitingSince and deadline are ISO-8601 UTC to the microsecond, or null (not
// waiting yet; no timeout).
//
// An optional add-on (target asyncflow::rest, built when cpp-httplib and
// nlohmann-json are installed); the core library never depends on them. Every
// route asks the authorizer first; errors are JSON bodies {"error": "<Errc
// name>", "message": "..."} with the status of httpStatus(), and never carry a
// stack trace, SQL or a secret. The refusals that are not engine errors are
// named Unauthenticated (401), Forbidden (403) and PayloadTooLarge (413); a
// malformed body is InvalidArgument (400), an unknown route NotFound (404).
//
// Data fields map from JSON by type: string -> String, integer -> Int64 (422
// InvalidField beyond int64), other number -> Double, true/false -> Bool, null
// -> Null; an array or object is 422 naming the field. A body's unknown member
// is 400, so a misspelt "datafields" is never silently ignored.
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "asyncflow/engine.hpp"
#include "asyncflow/error.hpp"

namespace httplib {
class Server;
}  // namespace httplib

namespace asyncflow::rest {

// What an authorizer sees of a request. Valid only during the call.
struct RequestInfo {
  std::string_view method;  // "GET", "POST", ... ("HEAD" for a GET without the body)
  std::string_view path;    // percent-decoded, without the query; base path included
  // The value of a request header (case-insensitive name), if present.
  std::function<std::optional<std::string_view>(std::string_view name)> header;
  std::string_view remoteAddress;
};

// An authorizer's answer.
enum class Access {
  Allow,
  Unauthenticated,  // no or unknown credentials: 401
  Forbidden,        // known credentials that may not do this: 403
};

// Decides whether a request may use a route. Called for every request, on the
// server's threads, so it must be thread-safe; it must not throw (a throw is
// answered 403).
using Authorizer = std::function<Access(const RequestInfo& request)>;

// The default authorizer: a request is allowed when header `header` carries one
// of `keys`; Unauthenticated otherwise. Every key is compared, in time that
// depends only on the lengths (which are not secret), so timing tells neither
// which key matched nor how much of one. An empty key never matches. Thread-safe.
[[nodiscard]] Authorizer apiKeyAuthorizer(std::vector<std::string> keys,
                                          std::string header = "X-API-Key");

// How the routes are mounted.
struct Options {
  // Prefix of every route: starts with '/', no trailing '/'. Default: K2's. The
  // routes answer every path under it (an unknown one with 404), so a host's own
  // routes belong elsewhere.
  std::string basePath = "/api/workflow/v1";
  // Required: mount() refuses to expose the routes without one.
  Authorizer authorizer;
  // Bodies larger than this are answered 413 without being parsed or kept. A
  // refused body (413, 401, 403) is still read to its end and discarded, so the
  // connection stays usable; hosts cap what a client may send with
  // httplib::Server::set_payload_max_length and set_read_timeout.
  std::size_t maxBodyBytes = 1 << 20;
  // The WWW-Authenticate value of a 401 answer. The default describes
  // apiKeyAuthorizer's default header; set it for another header or scheme.
  std::string challenge = R"(ApiKey header="X-API-Key")";
  // Told, at Error, the engine's error behind every 500 and 503 answer, whose
  // body carries a fixed message instead. Called on the server's threads; must
  // be thread-safe; a throw is ignored. Default (empty): silent.
  LogSink log;
};

// The HTTP status a route answers for an engine error: InvalidSerial 400,
// InvalidArgument 400, NotFound 404, AlreadyCompleted/TimedOut/Cancelled/
// StepFailed 409, InvalidField 422, StoreError/Conflict/ProcessNotDefined 503
// (nothing changed; retry later; sent with Retry-After), others 500. A 503 for
// StoreError and a 500 carry a fixed message, since the engine's may name files
// or SQL; Options::log receives it. Never fails.
[[nodiscard]] int httpStatus(Errc code) noexcept;

// Mounts the routes on `server`. `engine` must outlive the server's use of the
// routes. InvalidArgument, mounting nothing, for a missing authorizer, a base
// path that does not start with '/', ends with '/', has an empty, '.' or '..'
// segment or a character outside RFC 3986's path characters (no '%'), maxBodyBytes
// 0, or a challenge with control characters. Call before the server starts
// listening (httplib's route tables are not thread-safe to change while it
// serves). The handlers run on the server's threads, concurrently.
[[nodiscard]] Result<void> mount(httplib::Server& server, Engine& engine, Options options);

}  // namespace asyncflow::rest
