// The authorizers the add-on ships: an API key in a header, and HTTP Basic.
// Both compare every credential they hold, in time that depends only on
// lengths, so timing tells nothing of which one matched or how much of one.
#include <cctype>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "asyncflow/rest.hpp"
#include "util/constant_time.hpp"
#include "util/text.hpp"

namespace asyncflow::rest {
namespace {

// RFC 4648 base64 with padding: what a client sends after "Basic ".
std::string base64(std::string_view text) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((text.size() + 2) / 3 * 4);
  std::size_t i = 0;
  auto byte = [&](std::size_t at) {
    return static_cast<std::uint32_t>(static_cast<unsigned char>(text[at]));
  };
  for (; i + 3 <= text.size(); i += 3) {
    const std::uint32_t n = (byte(i) << 16) | (byte(i + 1) << 8) | byte(i + 2);
    for (int shift : {18, 12, 6, 0}) out += kAlphabet[(n >> shift) & 63];
  }
  if (text.size() - i == 1) {
    const std::uint32_t n = byte(i) << 16;
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += "==";
  } else if (text.size() - i == 2) {
    const std::uint32_t n = (byte(i) << 16) | (byte(i + 1) << 8);
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += kAlphabet[(n >> 6) & 63];
    out += '=';
  }
  return out;
}

// Whether `presented` equals one of `expected`, comparing every one of them.
bool matchesAny(const std::vector<std::string>& expected, std::string_view presented) {
  bool match = false;
  for (const std::string& candidate : expected) {
    const bool equal = asyncflow::detail::constantTimeEquals(candidate, presented);
    match = match || (equal && !candidate.empty());
  }
  return match;
}

// The credentials of "Authorization: Basic <token>" (the scheme in any case),
// or nothing for another scheme.
std::optional<std::string_view> basicToken(std::string_view header) {
  constexpr std::string_view kScheme = "basic";
  if (header.size() <= kScheme.size()) return std::nullopt;
  for (std::size_t i = 0; i < kScheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(header[i])) != kScheme[i]) return std::nullopt;
  }
  std::string_view rest = header.substr(kScheme.size());
  if (rest.front() != ' ') return std::nullopt;
  while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
  while (!rest.empty() && rest.back() == ' ') rest.remove_suffix(1);
  return rest;
}

std::string basicProblem(const std::vector<BasicUser>& users, const std::string& realm) {
  if (realm.find_first_of("\"\\") != std::string::npos || asyncflow::detail::hasControl(realm)) {
    return "rest::basicAuthorizer: the realm must not hold '\"', '\\' or control characters";
  }
  for (const BasicUser& user : users) {
    const std::string shown = "'" + asyncflow::detail::quoted(user.name) + "'";
    if (user.name.empty()) return "rest::basicAuthorizer: a user name is empty";
    if (user.name.find(':') != std::string::npos || asyncflow::detail::hasControl(user.name)) {
      return "rest::basicAuthorizer: user name " + shown + " holds ':' or a control character";
    }
    if (user.password.empty()) return "rest::basicAuthorizer: user " + shown + " has no password";
  }
  return {};
}

}  // namespace

Authorizer apiKeyAuthorizer(std::vector<std::string> keys, std::string header) {
  std::string challenge = "ApiKey header=\"" + header + "\"";
  SecurityScheme scheme{SecurityScheme::Kind::ApiKeyHeader, header};
  auto decide = [keys = std::move(keys), header = std::move(header)](const RequestInfo& request) {
    const std::optional<std::string_view> presented =
        request.header ? request.header(header) : std::nullopt;
    if (!presented || presented->empty()) return Access::Unauthenticated;
    return matchesAny(keys, *presented) ? Access::Allow : Access::Unauthenticated;
  };
  return Authorizer(std::move(decide), std::move(challenge), std::move(scheme));
}

Authorizer basicAuthorizer(std::vector<BasicUser> users, std::string realm) {
  std::string problem = basicProblem(users, realm);
  std::vector<std::string> tokens;
  tokens.reserve(users.size());
  for (const BasicUser& user : users) tokens.push_back(base64(user.name + ":" + user.password));
  auto decide = [tokens = std::move(tokens)](const RequestInfo& request) {
    const std::optional<std::string_view> header =
        request.header ? request.header("Authorization") : std::nullopt;
    if (!header) return Access::Unauthenticated;
    const std::optional<std::string_view> token = basicToken(*header);
    if (!token || token->empty()) return Access::Unauthenticated;
    return matchesAny(tokens, *token) ? Access::Allow : Access::Unauthenticated;
  };
  Authorizer authorizer(std::move(decide), "Basic realm=\"" + realm + "\", charset=\"UTF-8\"",
                        SecurityScheme{SecurityScheme::Kind::Basic, realm});
  authorizer.problem_ = std::move(problem);
  return authorizer;
}

}  // namespace asyncflow::rest
