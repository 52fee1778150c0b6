// Well-formedness of XML field values, by expat (Debian's libexpat1-dev): a
// conforming, non-validating parser. It never loads an external entity unless
// asked to, and a DOCTYPE is refused here, so no entity of the sender's is
// ever expanded (no "billion laughs").
#include <climits>
#include <cstddef>
#include <string>
#include <string_view>

#include <expat.h>
#include <fmt/format.h>

#include "rest/bodies.hpp"

namespace asyncflow::rest::detail {
namespace {

struct ParseState {
  XML_Parser parser = nullptr;
  bool doctype = false;
};

void XMLCALL refuseDoctype(void* data, const XML_Char*, const XML_Char*, const XML_Char*, int) {
  auto* state = static_cast<ParseState*>(data);
  state->doctype = true;
  XML_StopParser(state->parser, XML_FALSE);
}

}  // namespace

std::string xmlProblem(std::string_view text) noexcept {
  try {
    // "UTF-8" overrides the document's own encoding declaration: the text came
    // from a JSON string, which is UTF-8 whatever the declaration says.
    XML_Parser parser = XML_ParserCreate("UTF-8");
    if (parser == nullptr) return "the XML parser could not be created";
    ParseState state{parser, false};
    XML_SetUserData(parser, &state);
    XML_SetStartDoctypeDeclHandler(parser, refuseDoctype);
    XML_SetParamEntityParsing(parser, XML_PARAM_ENTITY_PARSING_NEVER);

    std::string problem;
    if (text.size() > static_cast<std::size_t>(INT_MAX)) {
      XML_ParserFree(parser);
      return "the XML text is too long";
    }
    const int length = static_cast<int>(text.size());
    if (XML_Parse(parser, text.data(), length, XML_TRUE) == XML_STATUS_ERROR || state.doctype) {
      if (state.doctype) {
        problem = "a DOCTYPE is not accepted";
      } else {
        problem =
            fmt::format("{} at line {}, column {}", XML_ErrorString(XML_GetErrorCode(parser)),
                        XML_GetCurrentLineNumber(parser), XML_GetCurrentColumnNumber(parser) + 1);
      }
    }
    XML_ParserFree(parser);
    return problem;
  } catch (...) {
    return "the XML could not be checked";
  }
}

}  // namespace asyncflow::rest::detail
