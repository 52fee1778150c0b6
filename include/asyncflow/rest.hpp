// asyncflow::rest: K2's Workflow REST routes on a host's cpp-httplib server, so
// an external system finishes a waiting step (and starts an instance) over HTTP:
//
//   POST {base}/serverEvents/{serialNumber}/finish     FinishRequest        -> 204
//   POST {base}/serverEvents/{serialNumber}/fail       FailRequest          -> 204
//   POST {base}/serverEvents/{serialNumber}/heartbeat  (no body)            -> 204
//   GET  {base}/serverEvents/{serialNumber}            -> 200 ServerEvent
//   POST {base}/workflows/{process}/instances          StartRequest         -> 201 / 200 Started
//   GET  {base}/instances/{instanceId}                 -> 200 Instance
//   GET  {base}/openapi.json                           -> 200 OpenAPI 3.0 description
//
// Bodies. FinishRequest and StartRequest are {"dataFields": {...}, "xmlFields":
// {...}}, both members optional; FailRequest adds "reason". An empty body, {}
// and [] mean "no fields" (K2's Swagger form sends []). A POST without
// Content-Length and Transfer-Encoding has no body (RFC 9112 6.3) and is
// answered at once. Any other member, or a non-empty array, is 400, so a
// misspelt "datafields" is never silently ignored.
//
// Data fields map from JSON by type: string -> String, integer -> Int64 (422
// InvalidField beyond int64), other number -> Double, true/false -> Bool, null
// -> Null; an array or object is 422 naming the field. An xmlFields member
// sets a declared String field to XML text: a JSON string holding one
// well-formed XML document (checked by expat, as UTF-8; a DOCTYPE is refused,
// so no entity is ever expanded), or null; the text is stored as sent. 422
// naming the field when it is not well-formed, not a string, undeclared, not a
// String field, or also in dataFields.
//
// waitingSince, deadline, createdAt and updatedAt are ISO-8601 UTC to the
// microsecond, or null (not waiting yet; no timeout).
//
// An optional add-on (target asyncflow::rest, built when cpp-httplib,
// nlohmann-json and expat are installed); the core library never depends on
// them. Every route asks the authorizer first (openapi.json too); errors are
// JSON bodies {"error": "<Errc name>", "message": "..."} with the status of
// httpStatus(), and never carry a stack trace, SQL or a secret. The refusals
// that are not engine errors are named Unauthenticated (401), Forbidden (403)
// and PayloadTooLarge (413); a malformed body is InvalidArgument (400), an
// unknown route NotFound (404).
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
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

// How a client presents credentials, as the OpenAPI description names it.
struct SecurityScheme {
  enum class Kind {
    None,          // not described (a custom authorizer that says nothing)
    ApiKeyHeader,  // a key in the header `name`
    Basic,         // HTTP Basic (RFC 7617); `name` is the realm
  };
  Kind kind = Kind::None;
  std::string name;
};

// One HTTP Basic account.
struct BasicUser {
  std::string name;  // not empty, no ':' (RFC 7617), no control character
  std::string password;
};

// Decides whether a request may use a route, and says what a 401 asks for.
// Called for every request, on the server's threads, so the decision must be
// thread-safe; it must not throw (a throw is answered 403). Copyable; a copy
// shares nothing mutable.
class Authorizer {
 public:
  using Decide = std::function<Access(const RequestInfo& request)>;

  // No authorizer: mount() refuses it.
  Authorizer() = default;
  // A custom authorizer from any callable Access(const RequestInfo&). Its 401
  // carries Options::challenge, and the OpenAPI description names no scheme.
  template <class F,
            std::enable_if_t<!std::is_same_v<std::decay_t<F>, Authorizer> &&
                                 std::is_invocable_r_v<Access, const F&, const RequestInfo&>,
                             int> = 0>
  Authorizer(F decide) : decide_(std::move(decide)) {}  // NOLINT: implicit on purpose
  // A custom authorizer that also names its 401 challenge (the WWW-Authenticate
  // value) and its scheme for the OpenAPI description.
  Authorizer(Decide decide, std::string challenge, SecurityScheme scheme)
      : decide_(std::move(decide)), challenge_(std::move(challenge)), scheme_(std::move(scheme)) {}

  // Whether there is a decision function.
  explicit operator bool() const noexcept { return static_cast<bool>(decide_); }
  // Asks the decision function. Precondition: *this is true.
  Access operator()(const RequestInfo& request) const { return decide_(request); }
  // The WWW-Authenticate value of a 401; empty when the authorizer names none.
  const std::string& challenge() const noexcept { return challenge_; }
  const SecurityScheme& scheme() const noexcept { return scheme_; }
  // Why mount() must refuse this authorizer (a factory's bad configuration);
  // empty when it may be mounted.
  const std::string& problem() const noexcept { return problem_; }

 private:
  friend Authorizer basicAuthorizer(std::vector<BasicUser> users, std::string realm);

  Decide decide_;
  std::string challenge_;
  SecurityScheme scheme_;
  std::string problem_;
};

// A request is allowed when header `header` carries one of `keys`;
// Unauthenticated otherwise. Every key is compared, in time that depends only on
// the lengths (which are not secret), so timing tells neither which key matched
// nor how much of one. An empty key never matches. Its 401 challenge is
// `ApiKey header="<header>"`. Thread-safe.
[[nodiscard]] Authorizer apiKeyAuthorizer(std::vector<std::string> keys,
                                          std::string header = "X-API-Key");

// HTTP Basic (RFC 7617): a request is allowed when its Authorization header is
// "Basic <base64 of name:password>" (the scheme's name in any case) for one of
// `users`; Unauthenticated otherwise. Every account is compared, in time that
// depends only on lengths, as apiKeyAuthorizer does. Its 401 challenge is
// `Basic realm="<realm>", charset="UTF-8"`. mount() refuses it (InvalidArgument)
// when a name is empty or holds ':' or a control character, a password is
// empty, or the realm holds '"', '\' or a control character. Thread-safe.
// Send it over TLS only: Basic credentials are readable on the wire.
[[nodiscard]] Authorizer basicAuthorizer(std::vector<BasicUser> users,
                                         std::string realm = "asyncflow");

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
  // The WWW-Authenticate value of a 401. Empty (the default): the authorizer's
  // own challenge, or `ApiKey header="X-API-Key"` for a custom authorizer that
  // names none.
  std::string challenge;
  // Told, at Error, the engine's error behind every 500 and 503 answer, whose
  // body carries a fixed message instead. Called on the server's threads; must
  // be thread-safe; a throw is ignored. Default (empty): silent.
  LogSink log;
};

// The HTTP status a route answers for an engine error: InvalidSerial 400,
// InvalidArgument 400, NotFound 404, AlreadyCompleted/TimedOut/Cancelled/
// StepFailed 409, InvalidField and KeyReused 422, StoreError/Conflict/
// ProcessNotDefined 503 (nothing changed; retry later; sent with Retry-After),
// others 500. A 503 for StoreError and a 500 carry a fixed message, since the
// engine's may name files or SQL; Options::log receives it. Never fails.
[[nodiscard]] int httpStatus(Errc code) noexcept;

// Mounts the routes on `server`. `engine` must outlive the server's use of the
// routes. InvalidArgument, mounting nothing, for a missing or misconfigured
// authorizer, a base path that does not start with '/', ends with '/', has an
// empty, '.' or '..' segment or a character outside RFC 3986's path characters
// (no '%'), maxBodyBytes 0, or a challenge with control characters. Call before
// the server starts listening (httplib's route tables are not thread-safe to
// change while it serves). The handlers run on the server's threads,
// concurrently.
[[nodiscard]] Result<void> mount(httplib::Server& server, Engine& engine, Options options);

// The OpenAPI 3.0 description (JSON) of the routes mount() would mount with
// `options`: every route, body, status and error body, generated from the same
// table the routes are registered from. It is what GET {base}/openapi.json
// serves. InvalidArgument as mount() for bad options. Thread-safe.
[[nodiscard]] Result<std::string> openApiDocument(const Options& options);

}  // namespace asyncflow::rest
