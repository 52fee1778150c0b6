// asyncflow::rest: the Workflow REST routes on a cpp-httplib server.
//
// Every request goes through the same gate, in this order: the authorizer (401,
// 403), the body size (413), then the route (routes.cpp): the JSON (400), its
// shape (400), the data fields' JSON types and XML (422), then the engine, whose
// Errc becomes the status. A refused POST's body is read and thrown away, never
// buffered, so the connection stays in step for the next request on it; a POST
// without Content-Length and Transfer-Encoding has no body and is never waited
// for. Nothing here throws out of a handler: httplib would otherwise answer 500
// with the exception's text in a header.
#include "asyncflow/rest.hpp"

#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "rest/http.hpp"
#include "rest/routes.hpp"
#include "util/text.hpp"

namespace asyncflow::rest {
namespace detail {

Refusal refusalOf(const Context& context, std::string_view route, const Error& error) {
  const int status = httpStatus(error.code);
  if (status >= 500 && context.options.log) {
    try {
      context.options.log(LogLevel::Error, "rest: " + std::string(route) + ": " + error.toString());
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

void answer(httplib::Response& res, const Refusal& refusal) noexcept {
  res.status = refusal.status;
  try {
    const nlohmann::json body = {{"error", refusal.error}, {"message", refusal.message}};
    res.set_content(body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), kJsonType);
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

}  // namespace detail

namespace {

using detail::Context;
using detail::Refusal;

// Asks the authorizer; a throwing authorizer forbids.
Access authorize(const Context& context, const httplib::Request& req) noexcept {
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
    return context.options.authorizer(info);
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

void answerDenied(const Context& context, httplib::Response& res, Access access) {
  detail::answer(res, refusalOf(access));
  if (access == Access::Unauthenticated) res.set_header("WWW-Authenticate", context.challenge);
}

// Whether a request carries a body at all. Without Content-Length and
// Transfer-Encoding it has none (RFC 9112 section 6.3): reading would wait for
// bytes that never come, until the read timeout.
bool hasBody(const httplib::Request& req) {
  return req.has_header("Content-Length") || req.has_header("Transfer-Encoding");
}

enum class BodyStatus { Read, TooLarge, Broken };

// Reads the request body into `body` if it is at most `limit` bytes. A longer
// body (by its Content-Length, or as it arrives when chunked) is read to its end
// and discarded: answering without reading it would leave its bytes on the
// connection to be parsed as the next request.
BodyStatus readBody(const httplib::Request& req, const httplib::Response& res,
                    const httplib::ContentReader& reader, std::size_t limit, std::string& body) {
  if (!hasBody(req)) return BodyStatus::Read;
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
void drainBody(const httplib::Request& req, const httplib::ContentReader& reader) {
  if (hasBody(req)) reader([](const char*, std::size_t) { return true; });
}

// One request to `route`: the gate, then the route's handler. `reader` is null
// for a route that takes no body.
void serve(const Context& context, const detail::Route& route, const httplib::Request& req,
           httplib::Response& res, const httplib::ContentReader* reader) noexcept {
  try {
    if (const Access access = authorize(context, req); access != Access::Allow) {
      if (reader != nullptr) drainBody(req, *reader);
      return answerDenied(context, res, access);
    }
    detail::Call call{context, req, res, {}};
    if (reader != nullptr) {
      switch (readBody(req, res, *reader, context.options.maxBodyBytes, call.body)) {
        case BodyStatus::Read: break;
        case BodyStatus::TooLarge:
          return detail::answer(res, {413, "PayloadTooLarge",
                                      "the body is larger than " +
                                          std::to_string(context.options.maxBodyBytes) + " bytes"});
        case BodyStatus::Broken:
          return detail::answer(res, detail::badRequest("the body could not be read"));
      }
    }
    route.handle(call);
  } catch (...) {
    detail::answerInternal(res);
  }
}

// Any other request under the base path: 404 once authorized. The path is not
// echoed: a mistyped route may carry a serial's secret.
void serveUnknown(const Context& context, const httplib::Request& req, httplib::Response& res,
                  const httplib::ContentReader* reader) noexcept {
  try {
    const Access access = authorize(context, req);
    if (reader != nullptr) drainBody(req, *reader);
    if (access != Access::Allow) return answerDenied(context, res, access);
    detail::answer(res,
                   {404, std::string(errcName(Errc::NotFound)),
                    "no such route under " + asyncflow::detail::quoted(context.options.basePath)});
  } catch (...) {
    detail::answerInternal(res);
  }
}

// Characters a base path may hold: RFC 3986's path characters, without
// percent-escapes (httplib matches routes against the decoded path).
bool isPathCharacter(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::string_view("/-._~!$&'()*+,;=:@").find(c) != std::string_view::npos;
}

// The WWW-Authenticate value of a 401 under `options`.
std::string challengeOf(const Options& options) {
  if (!options.challenge.empty()) return options.challenge;
  if (!options.authorizer.challenge().empty()) return options.authorizer.challenge();
  return R"(ApiKey header="X-API-Key")";
}

Result<void> checkOptions(const Options& options) {
  if (!options.authorizer) {
    return fail(Errc::InvalidArgument,
                "rest::mount: an authorizer is required (see rest::apiKeyAuthorizer)");
  }
  if (!options.authorizer.problem().empty()) {
    return fail(Errc::InvalidArgument, options.authorizer.problem());
  }
  const std::string& base = options.basePath;
  if (base.empty() || base.front() != '/' || base.back() == '/') {
    return fail(Errc::InvalidArgument, "rest::mount: the base path '" +
                                           asyncflow::detail::quoted(base) +
                                           "' must start with '/' and not end with '/'");
  }
  for (char c : base) {
    if (!isPathCharacter(c)) {
      return fail(Errc::InvalidArgument,
                  "rest::mount: the base path '" + asyncflow::detail::quoted(base) +
                      "' holds a character that is not a plain URL path character");
    }
  }
  const std::string segments = base + "/";
  for (const char* bad : {"//", "/./", "/../"}) {
    if (segments.find(bad) != std::string::npos) {
      return fail(Errc::InvalidArgument, "rest::mount: the base path '" +
                                             asyncflow::detail::quoted(base) +
                                             "' has an empty, '.' or '..' segment");
    }
  }
  if (options.maxBodyBytes == 0) {
    return fail(Errc::InvalidArgument, "rest::mount: maxBodyBytes must be at least 1");
  }
  if (asyncflow::detail::hasControl(challengeOf(options))) {
    return fail(Errc::InvalidArgument,
                "rest::mount: the challenge must not hold control characters");
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

// The pattern httplib matches a route's path with: each "{name}" is one segment.
std::string patternOf(std::string_view base, std::string_view path) {
  std::string pattern = regexLiteral(base);
  while (!path.empty()) {
    const auto open = path.find('{');
    pattern += regexLiteral(path.substr(0, open));
    if (open == std::string_view::npos) break;
    pattern += "([^/]+)";
    path.remove_prefix(path.find('}', open) + 1);
  }
  return pattern;
}

}  // namespace

int httpStatus(Errc code) noexcept {
  switch (code) {
    case Errc::InvalidSerial:
    case Errc::InvalidArgument: return 400;
    case Errc::NotFound: return 404;
    case Errc::AlreadyCompleted:
    case Errc::TimedOut:
    case Errc::StepFailed:
    case Errc::Cancelled: return 409;
    case Errc::KeyReused:
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

Result<std::string> openApiDocument(const Options& options) {
  if (auto valid = checkOptions(options); !valid) return tl::unexpected(valid.error());
  try {
    return detail::openApiJson(options);
  } catch (const std::exception&) {
    return fail(Errc::Internal, "rest::openApiDocument: the document could not be built");
  }
}

Result<void> mount(httplib::Server& server, Engine& engine, Options options) {
  if (auto valid = checkOptions(options); !valid) return valid;
  try {
    const auto& table = detail::routeTable();
    std::vector<std::string> patterns;
    for (const detail::Route& route : table)
      patterns.push_back(patternOf(options.basePath, route.path));
    const std::string anything = regexLiteral(options.basePath) + "(/.*)?";  // everything else
    // httplib compiles each pattern as it registers it; compiling them first
    // keeps the promise to mount nothing when one could not be.
    for (const std::string& pattern : patterns) std::regex compiled(pattern);
    std::regex compiled(anything);

    std::string challenge = challengeOf(options);
    std::string openApi = detail::openApiJson(options);
    auto context = std::make_shared<const Context>(
        Context{engine, std::move(options), std::move(challenge), std::move(openApi)});
    using Reader = httplib::ContentReader;
    for (std::size_t i = 0; i < table.size(); ++i) {
      const detail::Route* route = &table[i];
      if (route->verb == detail::Verb::Post) {
        server.Post(patterns[i], [context, route](const httplib::Request& req,
                                                  httplib::Response& res, const Reader& reader) {
          serve(*context, *route, req, res, &reader);
        });
      } else {
        server.Get(patterns[i],
                   [context, route](const httplib::Request& req, httplib::Response& res) {
                     serve(*context, *route, req, res, nullptr);
                   });
      }
    }

    auto unknown = [context](const httplib::Request& req, httplib::Response& res) {
      serveUnknown(*context, req, res, nullptr);
    };
    auto unknownWithBody = [context](const httplib::Request& req, httplib::Response& res,
                                     const Reader& reader) {
      serveUnknown(*context, req, res, &reader);
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
