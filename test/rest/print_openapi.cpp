// Prints the OpenAPI description the REST add-on serves with an API key (the
// default options), for the ctest that validates it (test/rest/lint_openapi.cmake).
#include <cstdio>
#include <iostream>

#include <asyncflow/rest.hpp>

int main() {
  asyncflow::rest::Options options;
  options.authorizer = asyncflow::rest::apiKeyAuthorizer({"unused"});
  auto document = asyncflow::rest::openApiDocument(options);
  if (!document) {
    std::cerr << document.error().toString() << "\n";
    return 1;
  }
  std::cout << *document << "\n";
  return 0;
}
