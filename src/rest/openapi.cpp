// The OpenAPI 3.1 description, built from the route table (routes.cpp), so
// every route mount() registers is described and nothing else is.
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "asyncflow/version.hpp"
#include "rest/routes.hpp"
#include "rest/views.hpp"

namespace asyncflow::rest::detail {
namespace {

using Json = nlohmann::json;

Json ref(std::string_view component) {
  return {{"$ref", "#/components/schemas/" + std::string(component)}};
}

Json responseRef(std::string_view component) {
  return {{"$ref", "#/components/responses/" + std::string(component)}};
}

Json jsonContent(const Json& schema) { return {{"application/json", {{"schema", schema}}}}; }

Json header(std::string_view description, const Json& schema) {
  return {{"description", description}, {"schema", schema}};
}

const Json& stringSchema() {
  static const Json schema = {{"type", "string"}};
  return schema;
}

// The path parameters the table's routes use.
Json pathParameter(std::string_view name) {
  Json parameter = {{"name", name}, {"in", "path"}, {"required", true}};
  if (name == "serialNumber") {
    parameter["description"] =
        "The step run's serial: {instance}_{run}, then _{secret} unless the host chose bare "
        "serials. Split it on the first two '_' only.";
    parameter["schema"] = {{"type", "string"},
                           {"pattern", "^[1-9][0-9]{0,18}_[1-9][0-9]{0,18}(_[A-Za-z0-9_-]{22})?$"}};
  } else if (name == "process") {
    parameter["description"] = "The process's name, as the host defined it.";
    parameter["schema"] = {{"type", "string"}, {"minLength", 1}};
  } else {
    parameter["description"] = "The instance's id.";
    parameter["schema"] = {{"type", "integer"}, {"format", "int64"}, {"minimum", 1}};
  }
  return parameter;
}

Json schemas() {
  const Json noFields = ref("NoFields");
  auto objectOf = [](Json properties) {
    return Json{{"type", "object"}, {"additionalProperties", false}, {"properties", properties}};
  };
  const Json fieldMembers = {{"dataFields", ref("DataFields")}, {"xmlFields", ref("XmlFields")}};
  Json failMembers = fieldMembers;
  failMembers["reason"] = {{"type", "string"}, {"description", "Why the step failed."}};
  const Json timestamp = {{"type", "string"}, {"format", "date-time"}};
  const Json nullableTimestamp = {{"type", {"string", "null"}}, {"format", "date-time"}};
  const Json instanceStatus = {
      {"type", "string"}, {"enum", {"Running", "Waiting", "Completed", "Failed", "Cancelled"}}};
  const Json runStatus = {
      {"type", "string"},
      {"enum", {"Ready", "Starting", "Waiting", "Completed", "Failed", "TimedOut", "Cancelled"}}};
  const Json id = {{"type", "integer"}, {"format", "int64"}, {"minimum", 1}};

  return {
      {"FieldValue",
       {{"description",
         "A data field's value: a string (String), an integer (Int64), another number "
         "(Double), a boolean (Bool) or null (Null)."},
        {"type", {"string", "integer", "number", "boolean", "null"}}}},
      {"DataFields",
       {{"type", "object"},
        {"description", "Declared data fields by name."},
        {"additionalProperties", ref("FieldValue")}}},
      {"XmlFields",
       {{"type", "object"},
        {"description",
         "Declared String fields by name, each set to the text of one well-formed XML "
         "document (no DOCTYPE), or null."},
        {"additionalProperties", {{"type", {"string", "null"}}}}}},
      {"NoFields",
       {{"type", "array"},
        {"maxItems", 0},
        {"description", "[]: no fields, as K2's Swagger form sends it."}}},
      {"FinishRequest", {{"oneOf", {objectOf(fieldMembers), noFields}}}},
      {"FailRequest", {{"oneOf", {objectOf(failMembers), noFields}}}},
      {"StartRequest", {{"oneOf", {objectOf(fieldMembers), noFields}}}},
      {"EmptyRequest", {{"oneOf", {{{"type", "object"}, {"maxProperties", 0}}, noFields}}}},
      {"ServerEvent",
       {{"type", "object"},
        {"required",
         {"serialNumber", "instanceId", "process", "processVersion", "step", "waitingSince",
          "deadline"}},
        {"properties",
         {{"serialNumber", stringSchema()},
          {"instanceId", id},
          {"process", stringSchema()},
          {"processVersion", {{"type", "integer"}}},
          {"step", stringSchema()},
          {"waitingSince", nullableTimestamp},
          {"deadline", nullableTimestamp}}}}},
      {"Started",
       {{"type", "object"},
        {"required", {"instanceId", "process", "processVersion"}},
        {"properties",
         {{"instanceId", id},
          {"process", stringSchema()},
          {"processVersion", {{"type", {"integer", "null"}}}}}}}},
      {"OpenSerial",
       {{"type", "object"},
        {"required", {"serialId", "step", "status"}},
        {"properties",
         {{"serialId",
           {{"type", "string"},
            {"description", "{instance}_{run}: the serial without its secret."}}},
          {"step", stringSchema()},
          {"status", runStatus}}}}},
      {"Instance",
       {{"type", "object"},
        {"required",
         {"instanceId", "process", "processVersion", "status", "currentStep", "currentStepStatus",
          "fields", "openSerials", "error", "createdAt", "updatedAt"}},
        {"properties",
         {{"instanceId", id},
          {"process", stringSchema()},
          {"processVersion", {{"type", "integer"}}},
          {"status", instanceStatus},
          {"currentStep", {{"type", {"string", "null"}}}},
          {"currentStepStatus", {{"type", {"string", "null"}}}},
          {"fields", ref("DataFields")},
          {"openSerials", {{"type", "array"}, {"items", ref("OpenSerial")}}},
          {"error", {{"type", {"string", "null"}}}},
          {"createdAt", timestamp},
          {"updatedAt", timestamp}}}}},
      {"Error",
       {{"type", "object"},
        {"required", {"error", "message"}},
        {"properties",
         {{"error",
           {{"type", "string"},
            {"description", "The Errc name, or Unauthenticated, Forbidden, PayloadTooLarge."}}},
          {"message", stringSchema()}}}}},
      {"OpenApi", {{"type", "object"}, {"description", "An OpenAPI 3.1 document."}}},
  };
}

// The answers every route may give.
Json commonResponses() {
  const Json error = jsonContent(ref("Error"));
  return {
      {"Unauthenticated",
       {{"description", "No valid credentials (Unauthenticated)."},
        {"headers", {{"WWW-Authenticate", header("What credentials to send.", stringSchema())}}},
        {"content", error}}},
      {"Forbidden",
       {{"description", "The credentials may not use this route (Forbidden)."},
        {"content", error}}},
      {"Unavailable",
       {{"description", "Nothing changed; retry later (StoreError, Conflict, ProcessNotDefined)."},
        {"headers", {{"Retry-After", header("Seconds to wait.", {{"type", "integer"}})}}},
        {"content", error}}},
      {"Internal",
       {{"description", "A bug; the message is fixed (Internal)."}, {"content", error}}},
  };
}

Json operationOf(const Route& route) {
  Json operation = {{"operationId", route.operationId},
                    {"summary", route.summary},
                    {"description", route.description},
                    {"tags", {route.tag}}};
  Json parameters = Json::array();
  for (std::string_view rest = route.path; rest.find('{') != std::string_view::npos;) {
    const auto open = rest.find('{');
    const auto close = rest.find('}', open);
    parameters.push_back(pathParameter(rest.substr(open + 1, close - open - 1)));
    rest.remove_prefix(close + 1);
  }
  if (route.idempotencyKey) {
    parameters.push_back(
        {{"name", "Idempotency-Key"},
         {"in", "header"},
         {"required", false},
         {"description",
          "Makes a retried start return the first instance instead of starting another: "
          "1 to 255 printable ASCII characters, unique per process."},
         {"schema", {{"type", "string"}, {"minLength", 1}, {"maxLength", 255}}}});
  }
  if (!parameters.empty()) operation["parameters"] = std::move(parameters);
  if (!route.requestSchema.empty()) {
    operation["requestBody"] = {
        {"required", false},
        {"description", "Optional: an empty body, {} and [] mean no fields."},
        {"content", jsonContent(ref(route.requestSchema))}};
  }

  Json responses = Json::object();
  for (const Answer& answer : route.answers) {
    Json response = {{"description", answer.description}};
    if (!answer.schema.empty()) {
      response["content"] = jsonContent(ref(answer.schema));
    } else if (answer.status >= 400) {
      response["content"] = jsonContent(ref("Error"));
    }
    if (answer.status == 201) {
      response["headers"] = {
          {"Location", header("The instance's URL (getInstance).", stringSchema())}};
    }
    responses[std::to_string(answer.status)] = std::move(response);
  }
  responses["401"] = responseRef("Unauthenticated");
  responses["403"] = responseRef("Forbidden");
  responses["500"] = responseRef("Internal");
  responses["503"] = responseRef("Unavailable");
  operation["responses"] = std::move(responses);
  return operation;
}

}  // namespace

std::string openApiJson(const Options& options) {
  Json paths = Json::object();
  for (const Route& route : routeTable()) {
    paths[std::string(route.path)][route.verb == Verb::Get ? "get" : "post"] = operationOf(route);
  }
  Json document = {
      {"openapi", "3.1.0"},
      {"info",
       {{"title", "asyncflow Workflow REST API"},
        {"version", ASYNCFLOW_VERSION_STRING},
        {"description",
         "K2's Workflow REST routes for an asyncflow host: finish, fail and heartbeat a "
         "waiting step by its serial, look one up, start an instance (idempotently) and read "
         "one. Errors are {\"error\", \"message\"} bodies; on every error nothing changed."},
        {"license", {{"name", "MIT"}, {"identifier", "MIT"}}}}},
      {"servers", {{{"url", options.basePath}}}},
      {"tags",
       {{{"name", "Server Events"}, {"description", "Waiting step runs, by serial."}},
        {{"name", "Workflows"}, {"description", "Starting instances."}},
        {{"name", "Instances"}, {"description", "Reading instances."}},
        {{"name", "Description"}, {"description", "This description."}}}},
      {"paths", std::move(paths)},
  };
  Json components = {{"schemas", schemas()}, {"responses", commonResponses()}};
  const SecurityScheme& scheme = options.authorizer.scheme();
  if (scheme.kind == SecurityScheme::Kind::ApiKeyHeader) {
    components["securitySchemes"] = {
        {"apiKey", {{"type", "apiKey"}, {"in", "header"}, {"name", scheme.name}}}};
    document["security"] = {{{"apiKey", Json::array()}}};
  } else if (scheme.kind == SecurityScheme::Kind::Basic) {
    components["securitySchemes"] = {{"basic", {{"type", "http"}, {"scheme", "basic"}}}};
    document["security"] = {{{"basic", Json::array()}}};
  }
  document["components"] = std::move(components);
  return dumped(document);
}

}  // namespace asyncflow::rest::detail
