// K2's request bodies over loopback: [], {}, an empty body and
// {"dataFields", "xmlFields"} on finish, fail and heartbeat, and every refusal
// of a body changing nothing.
#include <string>

#include "rest/served.hpp"

using namespace resttest;

TEST_CASE("finish: [] from K2's Swagger form means no fields, 204, the instance moves on") {
  Served s;
  requireNoContent(s.post(route(s.start(), "finish"), "[]"));
  const InstanceInfo info = s.engine.instance(s.id).value();
  CHECK(info.status == InstanceStatus::Completed);
  CHECK(info.fields.get<std::string>("Status").value() == "Pending");
}

TEST_CASE("finish: whitespace around [] and {} is accepted") {
  Served s;
  SECTION("[ ]") { requireNoContent(s.post(route(s.start(), "finish"), " [ ]\n")); }
  SECTION("{ }") { requireNoContent(s.post(route(s.start(), "finish"), "\t{ }")); }
  CHECK(s.engine.instance(s.id).value().status == InstanceStatus::Completed);
}

TEST_CASE("finish: dataFields and xmlFields together, the XML stored as sent") {
  Served s;
  const std::string xml = R"(<?xml version="1.0" encoding="UTF-8"?>)"
                          "\n<order id=\"A-17\"><line qty=\"2\">Bolt &amp; nut</line></order>";
  const Json body = {{"dataFields", {{"Status", "Approved"}, {"Amount", 3}}},
                     {"xmlFields", {{"Note", xml}}}};
  requireNoContent(s.post(route(s.start(), "finish"), body.dump()));
  const InstanceInfo info = s.engine.instance(s.id).value();
  CHECK(info.status == InstanceStatus::Completed);
  CHECK(info.fields.get<std::string>("Status").value() == "Approved");
  CHECK(info.fields.get<std::int64_t>("Amount").value() == 3);
  CHECK(info.fields.get<std::string>("Note").value() == xml);
}

TEST_CASE("finish: an xmlFields member set to null clears the field") {
  Served s;
  requireNoContent(s.post(route(s.start(), "finish"), R"({"xmlFields": {"Note": null}})"));
  const InstanceInfo info = s.engine.instance(s.id).value();
  REQUIRE(info.fields.find("Note") != nullptr);
  CHECK(info.fields.find("Note")->type() == Type::Null);
}

TEST_CASE("fail: a reason with dataFields and xmlFields, and [] for nothing") {
  Served s;
  SECTION("with fields") {
    const Json body = {{"reason", "ERP refused"},
                       {"dataFields", {{"Status", "Refused"}}},
                       {"xmlFields", {{"Note", "<refusal code=\"7\"/>"}}}};
    requireNoContent(s.post(route(s.start(), "fail"), body.dump()));
    const InstanceInfo info = s.engine.instance(s.id).value();
    CHECK(info.fields.get<std::string>("Status").value() == "Refused");
    CHECK(info.fields.get<std::string>("Note").value() == "<refusal code=\"7\"/>");
  }
  SECTION("[]") { requireNoContent(s.post(route(s.start(), "fail"), "[]")); }
  // The error line leads to Repair, which ends the instance.
  CHECK(s.engine.instance(s.id).value().currentStep == "Repair");
}

TEST_CASE("heartbeat: no body, [] and {} are 204, a member is 400") {
  Served s;
  const std::string serial = s.start();
  requireNoContent(s.post(route(serial, "heartbeat"), ""));
  requireNoContent(s.post(route(serial, "heartbeat"), "[]"));
  requireNoContent(s.post(route(serial, "heartbeat"), "{}"));
  const Stored before = Stored::of(s);
  const Json body = requireError(s.post(route(serial, "heartbeat"), R"({"dataFields": {}})"), 400,
                                 "InvalidArgument");
  CHECK(body["message"].get<std::string>().find("takes none") != std::string::npos);
  requireUnchanged(before, s);
}

TEST_CASE("400: body shapes that are not K2's change nothing") {
  Served s;
  const std::string serial = s.start();
  const Stored before = Stored::of(s);
  std::string expected;
  std::string sent;
  SECTION("a non-empty array") {
    sent = R"([{"name": "Status", "value": "X"}])";
    expected = "array body must be empty";
  }
  SECTION("a misspelt datafields") {
    sent = R"({"datafields": {"Status": "X"}})";
    expected = "'datafields'";
  }
  SECTION("a misspelt xmlfields") {
    sent = R"({"xmlfields": {"Note": "<a/>"}})";
    expected = "'xmlfields'";
  }
  SECTION("xmlFields not an object") {
    sent = R"({"xmlFields": ["<a/>"]})";
    expected = "xmlFields must be a JSON object";
  }
  SECTION("a string") {
    sent = R"("dataFields")";
    expected = "must be a JSON object";
  }
  const Json body = requireError(s.post(route(serial, "finish"), sent), 400, "InvalidArgument");
  CHECK(body["message"].get<std::string>().find(expected) != std::string::npos);
  requireUnchanged(before, s);
}

TEST_CASE(
    "422: an XML field that is undeclared, not a String, malformed or doubled changes nothing") {
  Served s;
  const std::string serial = s.start();
  const Stored before = Stored::of(s);
  Json sent;
  std::string expected;
  SECTION("undeclared") {
    sent = {{"xmlFields", {{"Invoice", "<invoice/>"}}}};
    expected = "Invoice";
  }
  SECTION("declared Int64") {
    sent = {{"xmlFields", {{"Amount", "<amount>3</amount>"}}}};
    expected = "Amount";
  }
  SECTION("not well-formed: an unclosed element") {
    sent = {{"xmlFields", {{"Note", "<order><line></order>"}}}};
    expected = "field 'Note' is not well-formed XML: mismatched tag at line 1";
  }
  SECTION("not well-formed: text without an element") {
    sent = {{"xmlFields", {{"Note", "just text"}}}};
    expected = "field 'Note' is not well-formed XML";
  }
  SECTION("not well-formed: empty") {
    sent = {{"xmlFields", {{"Note", ""}}}};
    expected = "field 'Note' is not well-formed XML";
  }
  SECTION("not well-formed: two root elements") {
    sent = {{"xmlFields", {{"Note", "<a/><b/>"}}}};
    expected = "field 'Note' is not well-formed XML";
  }
  SECTION("a DOCTYPE, which could expand entities") {
    sent = {
        {"xmlFields",
         {{"Note", R"(<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]><a>&lol;</a>)"}}}};
    expected = "a DOCTYPE is not accepted";
  }
  SECTION("not a JSON string") {
    sent = {{"xmlFields", {{"Note", 42}}}};
    expected = "an XML field takes a JSON string";
  }
  SECTION("in both dataFields and xmlFields") {
    sent = {{"dataFields", {{"Note", "plain"}}}, {"xmlFields", {{"Note", "<a/>"}}}};
    expected = "field 'Note' is in both dataFields and xmlFields";
  }
  const Json body = requireError(s.post(route(serial, "finish"), sent.dump()), 422, "InvalidField");
  INFO(body.dump());
  CHECK(body["message"].get<std::string>().find(expected) != std::string::npos);
  requireUnchanged(before, s);
}
