// The route table: each route's method, path, documentation and handler. mount()
// registers the routes from it and openApiDocument() describes them from it, so
// the two cannot drift apart (internal to the REST add-on).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "rest/http.hpp"

namespace asyncflow::rest::detail {

enum class Verb { Get, Post };

// One status a route answers, as the OpenAPI description shows it.
struct Answer {
  int status = 200;
  std::string_view description;
  std::string_view schema;  // a component schema of the body; empty: no body (204) or Error
};

// One authorized request on its way through a route.
struct Call {
  const Context& context;
  const httplib::Request& request;
  httplib::Response& response;
  std::string body;  // a POST's body, read and within maxBodyBytes; empty for GET

  // The i-th {parameter} of the route's path, percent-decoded.
  std::string parameter(std::size_t i) const { return request.matches[i + 1].str(); }
};

struct Route {
  Verb verb = Verb::Get;
  std::string_view path;  // under the base path; "{name}" is one path segment
  std::string_view operationId;
  std::string_view tag;
  std::string_view summary;
  std::string_view description;
  std::string_view requestSchema;  // the body's component schema; empty: takes no body
  bool idempotencyKey = false;     // reads the Idempotency-Key header
  // The statuses it answers besides those every route may (401, 403, 500, 503).
  std::vector<Answer> answers;
  void (*handle)(Call& call) = nullptr;
};

// Every route, in the order they are matched.
const std::vector<Route>& routeTable();

// The OpenAPI 3.1 document of routeTable() under `options`.
std::string openApiJson(const Options& options);

}  // namespace asyncflow::rest::detail
