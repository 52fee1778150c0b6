// Request bodies of the POST routes: JSON in K2's shapes, data fields and XML
// fields (internal to the REST add-on).
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>

#include "asyncflow/fields.hpp"
#include "rest/http.hpp"

namespace asyncflow::rest::detail {

// What a POST route was asked to do.
struct BodyRequest {
  std::string reason;  // fail only
  Fields fields;       // dataFields and xmlFields together
};

// The members a route's body may hold.
struct BodyShape {
  bool reason = false;  // "reason": a JSON string
  bool fields = false;  // "dataFields" and "xmlFields"
};

// Parses a POST body of `shape`. Empty, {} and [] mean nothing; a non-empty
// array, another JSON type or an unknown member is 400; a field that is not a
// field value, XML that is not well-formed, or a name in both dataFields and
// xmlFields is 422 naming the field. Never throws.
Checked<BodyRequest> parseBody(const std::string& body, BodyShape shape) noexcept;

// Empty when `text` is one well-formed XML document (parsed as UTF-8 by expat,
// without a DOCTYPE); otherwise why not, with the line and column. Never throws.
std::string xmlProblem(std::string_view text) noexcept;

}  // namespace asyncflow::rest::detail
