#include "isthmus/auth/jwt.hpp"

#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>

#include "isthmus/auth/crypto.hpp"
#include "isthmus/error.hpp"

namespace isthmus::auth {

std::string sign_jwt(const std::string& algorithm, const std::string& key,
                     const std::string& claims_json, const std::string& key_id) {
  if (algorithm != "RS256" && algorithm != "HS256")
    throw Error(errc::invalid_argument,
                "algorithm: '" + algorithm + "' is not supported; use RS256 or HS256");
  if (key.empty()) throw Error(errc::invalid_argument, "key: is empty");
  auto claims = nlohmann::json::parse(claims_json, nullptr, false);
  if (!claims.is_object()) throw Error(errc::invalid_argument, "claims: not a JSON object");
  nlohmann::json header = {{"alg", algorithm}, {"typ", "JWT"}};
  if (!key_id.empty()) header["kid"] = key_id;
  const std::string input = base64url(header.dump()) + "." + base64url(claims.dump());
  const std::string sig =
      algorithm == "HS256" ? hmac(Digest::sha256, key, input) : rs256_sign(key, input);
  return input + "." + base64url(sig);
}

std::function<std::string()> jwt_assertion_signer(JwtAssertionOptions o) {
  if (o.issuer.empty()) throw Error(errc::invalid_argument, "issuer: is required");
  if (o.audience.empty()) throw Error(errc::invalid_argument, "audience: is required");
  if (!(o.lifetime > 0)) throw Error(errc::invalid_argument, "lifetime: must be > 0 seconds");
  auto extra = nlohmann::json::parse(o.extra_claims_json, nullptr, false);
  if (!extra.is_object()) throw Error(errc::invalid_argument, "extra_claims: not a JSON object");
  if (!o.clock)
    o.clock = [] {
      return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    };
  auto make = [o, extra]() {
    const auto iat = static_cast<std::int64_t>(std::floor(o.clock()));
    nlohmann::json claims = extra;
    claims["iss"] = o.issuer;
    claims["sub"] = o.subject.empty() ? o.issuer : o.subject;
    claims["aud"] = o.audience;
    claims["iat"] = iat;
    claims["nbf"] = iat;
    claims["exp"] = iat + static_cast<std::int64_t>(std::ceil(o.lifetime));
    // RFC 7523 3: servers may reject a replayed assertion; a random jti makes each unique.
    claims["jti"] = hex(random_bytes(16));
    return sign_jwt(o.algorithm, o.key, claims.dump(), o.key_id);
  };
  make();  // fail now, at construction, on a bad key or algorithm
  return make;
}

}  // namespace isthmus::auth
