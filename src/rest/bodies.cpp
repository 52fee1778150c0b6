// Request bodies: K2's shapes ({"dataFields": ...}, {}, [], nothing), data
// fields by JSON type, XML fields checked by a real parser.
#include "rest/bodies.hpp"

#include <cstdint>
#include <exception>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "util/text.hpp"

namespace asyncflow::rest::detail {
namespace {

using Json = nlohmann::json;

std::string fieldName(const std::string& name) {
  return "field '" + asyncflow::detail::quoted(name) + "'";
}

// The members `shape` allows, in the order an error lists them.
std::vector<std::string_view> membersOf(BodyShape shape) {
  std::vector<std::string_view> members;
  if (shape.reason) members.push_back("reason");
  if (shape.fields) {
    members.push_back("dataFields");
    members.push_back("xmlFields");
  }
  return members;
}

// The JSON object of a body; empty, {} and [] are an empty object.
Checked<Json> objectOf(const std::string& body, BodyShape shape) {
  if (body.empty()) return Json::object();
  Json json;
  try {
    json = Json::parse(body);
  } catch (const Json::parse_error& e) {
    // Not e.what(): it quotes the body.
    return tl::unexpected(badRequest("malformed JSON at byte " + std::to_string(e.byte)));
  }
  if (json.is_array()) {
    if (json.empty()) return Json::object();  // K2's Swagger form sends [] for "no fields"
    return tl::unexpected(
        badRequest("an array body must be empty ([] means no fields); send an object instead"));
  }
  if (!json.is_object()) {
    return tl::unexpected(badRequest("the body must be a JSON object (or [] for no fields)"));
  }
  const std::vector<std::string_view> allowed = membersOf(shape);
  for (const auto& member : json.items()) {
    bool known = false;
    for (std::string_view name : allowed) known = known || member.key() == name;
    if (known) continue;
    std::string message = "unknown member '" + asyncflow::detail::quoted(member.key()) + "'";
    if (allowed.empty()) message += "; this route takes none";
    for (std::size_t i = 0; i < allowed.size(); ++i) {
      message += i == 0 ? "; expected " : i + 1 == allowed.size() ? " or " : ", ";
      message += allowed[i];
    }
    return tl::unexpected(badRequest(std::move(message)));
  }
  return json;
}

// The member `name` of `body` as an object of fields; absent: none.
Checked<const Json*> fieldObject(const Json& body, const char* name) {
  auto member = body.find(name);
  if (member == body.end()) return nullptr;
  if (!member->is_object()) {
    return tl::unexpected(
        badRequest(std::string(name) + " must be a JSON object of field names to values"));
  }
  return &*member;
}

// dataFields: JSON strings, integers that fit int64, other numbers, booleans
// and null become String, Int64, Double, Bool and Null.
Checked<void> addDataFields(const Json& object, Fields& fields) {
  for (const auto& item : object.items()) {
    const std::string& name = item.key();
    const Json& value = item.value();
    switch (value.type()) {
      case Json::value_t::null: fields.set(name, nullptr); break;
      case Json::value_t::boolean: fields.set(name, value.get<bool>()); break;
      case Json::value_t::number_integer: fields.set(name, value.get<std::int64_t>()); break;
      case Json::value_t::number_unsigned: {
        const auto number = value.get<std::uint64_t>();
        if (number > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
          return tl::unexpected(invalidField(fieldName(name) + ": " + std::to_string(number) +
                                             " does not fit an Int64"));
        }
        fields.set(name, static_cast<std::int64_t>(number));
        break;
      }
      case Json::value_t::number_float: fields.set(name, value.get<double>()); break;
      case Json::value_t::string: fields.set(name, value.get_ref<const std::string&>()); break;
      default:
        return tl::unexpected(
            invalidField(fieldName(name) + ": a JSON " + value.type_name() +
                         " is not a field value (null, boolean, number or string)"));
    }
  }
  return {};
}

// xmlFields: a JSON string holding one well-formed XML document (stored as
// sent, as a String) or null.
Checked<void> addXmlFields(const Json& object, Fields& fields) {
  for (const auto& item : object.items()) {
    const std::string& name = item.key();
    const Json& value = item.value();
    if (fields.contains(name)) {
      return tl::unexpected(invalidField(fieldName(name) + " is in both dataFields and xmlFields"));
    }
    if (value.is_null()) {
      fields.set(name, nullptr);
      continue;
    }
    if (!value.is_string()) {
      return tl::unexpected(invalidField(fieldName(name) + ": an XML field takes a JSON string " +
                                         "holding the XML text, not a JSON " + value.type_name()));
    }
    const auto& text = value.get_ref<const std::string&>();
    if (std::string problem = xmlProblem(text); !problem.empty()) {
      return tl::unexpected(invalidField(fieldName(name) + " is not well-formed XML: " + problem));
    }
    fields.set(name, text);
  }
  return {};
}

}  // namespace

Checked<BodyRequest> parseBody(const std::string& body, BodyShape shape) noexcept {
  try {
    Checked<Json> json = objectOf(body, shape);
    if (!json) return tl::unexpected(std::move(json.error()));
    BodyRequest request;
    if (auto reason = json->find("reason"); reason != json->end()) {
      if (!reason->is_string()) return tl::unexpected(badRequest("reason must be a JSON string"));
      request.reason = reason->get<std::string>();
    }
    Checked<const Json*> data = fieldObject(*json, "dataFields");
    if (!data) return tl::unexpected(std::move(data.error()));
    Checked<const Json*> xml = fieldObject(*json, "xmlFields");
    if (!xml) return tl::unexpected(std::move(xml.error()));
    if (*data != nullptr) {
      if (auto added = addDataFields(**data, request.fields); !added) {
        return tl::unexpected(std::move(added.error()));
      }
    }
    if (*xml != nullptr) {
      if (auto added = addXmlFields(**xml, request.fields); !added) {
        return tl::unexpected(std::move(added.error()));
      }
    }
    return request;
  } catch (...) {
    return tl::unexpected(Refusal{500, std::string(errcName(Errc::Internal)), "internal error"});
  }
}

}  // namespace asyncflow::rest::detail
