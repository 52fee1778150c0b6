// What every route shares: the mounted context, a refusal and how it is
// answered (internal to the REST add-on).
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include <httplib.h>
#include <tl/expected.hpp>

#include "asyncflow/rest.hpp"

namespace asyncflow::rest::detail {

inline constexpr const char* kJsonType = "application/json";

// What the routes' handlers share; owned by them.
struct Context {
  Engine& engine;
  Options options;
  std::string challenge;  // the WWW-Authenticate value of a 401
  std::string openApi;    // the document GET {base}/openapi.json serves
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

inline Refusal badRequest(std::string message) {
  return {400, std::string(errcName(Errc::InvalidArgument)), std::move(message)};
}

inline Refusal invalidField(std::string message) {
  return {422, std::string(errcName(Errc::InvalidField)), std::move(message)};
}

// The answer to an engine error; one the client gets a fixed message for goes
// to the host's log (without the path, which holds the serial's secret).
Refusal refusalOf(const Context& context, std::string_view route, const Error& error);

// Writes a JSON error body. Never throws: a failure here leaves a bare status.
void answer(httplib::Response& res, const Refusal& refusal) noexcept;

// 500 with a fixed message. Never throws.
void answerInternal(httplib::Response& res) noexcept;

}  // namespace asyncflow::rest::detail
