// JSON Web Tokens we sign ourselves (RFC 7519), for the RFC 7523 JWT bearer grant.
#pragma once

#include <functional>
#include <string>

namespace isthmus::auth {

// "RS256" (key = PEM RSA private key) or "HS256" (key = shared secret bytes).
// Throws errc::invalid_argument for another algorithm, a bad key or claims that are not a JSON
// object. The result is header.claims.signature, each base64url without padding.
std::string sign_jwt(const std::string& algorithm, const std::string& key,
                     const std::string& claims_json, const std::string& key_id = {});

struct JwtAssertionOptions {
  std::string algorithm = "RS256";
  std::string key;
  std::string key_id;        // "kid" header, when the server has several of our keys
  std::string issuer;        // iss
  std::string subject;       // sub
  std::string audience;      // aud: usually the token endpoint URL
  double lifetime = 300;     // exp - iat, seconds
  std::string extra_claims_json = "{}";  // merged in (cannot override iss/sub/aud/iat/exp/jti)
  std::function<double()> clock;         // unix seconds
};

// A function making a fresh assertion (new iat/exp and a random jti) on every call. Validates
// the options (and the key, by signing once) up front.
std::function<std::string()> jwt_assertion_signer(JwtAssertionOptions options);

}  // namespace isthmus::auth
