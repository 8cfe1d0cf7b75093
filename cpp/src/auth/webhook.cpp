#include "isthmus/auth/webhook.hpp"

#include <cctype>
#include <cmath>
#include <optional>

#include "isthmus/auth/crypto.hpp"
#include "isthmus/error.hpp"

namespace isthmus::auth {
namespace {

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return std::string(s);
}

std::optional<double> parse_unix(const std::string& text) {
  if (text.empty() || text.size() > 15) return std::nullopt;
  for (char c : text)
    if (!std::isdigit(static_cast<unsigned char>(c))) return std::nullopt;
  return std::stod(text);
}

WebhookVerdict failed(const char* check, std::string message) { return {check, std::move(message)}; }

WebhookVerdict check_time(double ts, double tolerance, double now) {
  if (tolerance > 0 && std::fabs(now - ts) > tolerance)
    return failed("timestamp", now > ts ? "the timestamp is older than the tolerance of " +
                                              std::to_string(static_cast<long long>(tolerance)) + " s"
                                        : "the timestamp is in the future beyond the tolerance");
  return {};
}

// Standard Webhooks secrets are "whsec_" + base64 of the key bytes.
std::optional<std::string> standard_key(const std::string& secret) {
  std::string_view s = secret;
  if (s.rfind("whsec_", 0) == 0) s.remove_prefix(6);
  try {
    std::string key = unbase64(s);
    if (key.empty()) return std::nullopt;
    return key;
  } catch (const Error&) {
    return std::nullopt;
  }
}

}  // namespace

WebhookScheme parse_webhook_scheme(const std::string& name) {
  const std::string n = lower(name);
  if (n == "standard" || n == "standard-webhooks" || n == "standard_webhooks" || n == "svix")
    return WebhookScheme::standard;
  if (n == "stripe") return WebhookScheme::stripe;
  if (n == "github") return WebhookScheme::github;
  throw Error(errc::invalid_argument,
              "scheme: '" + name + "' is not one of 'standard', 'stripe', 'github'");
}

WebhookVerdict verify_webhook(WebhookScheme scheme, const std::string& secret,
                              const http::Headers& headers, const std::string& body,
                              double tolerance, double now) {
  if (secret.empty()) return failed("secret", "the secret is empty");
  switch (scheme) {
    case WebhookScheme::standard: {
      auto key = standard_key(secret);
      if (!key) return failed("secret", "the secret is not 'whsec_' followed by base64");
      const auto* id = http::find_header(headers, "webhook-id");
      const auto* ts = http::find_header(headers, "webhook-timestamp");
      const auto* sig = http::find_header(headers, "webhook-signature");
      if (!id || !ts || !sig)
        return failed("header", "missing header: webhook-id, webhook-timestamp and "
                                "webhook-signature are all required");
      auto t = parse_unix(trim(*ts));
      if (!t) return failed("header", "webhook-timestamp is not a unix time in seconds");
      if (auto v = check_time(*t, tolerance, now); !v.ok()) return v;
      const std::string expected =
          base64(hmac(Digest::sha256, *key, *id + "." + trim(*ts) + "." + body));
      // Several space-separated "v1,<sig>" entries may be present during key rotation.
      bool any = false, match = false;
      std::string_view rest = *sig;
      while (!rest.empty()) {
        auto sp = rest.find(' ');
        std::string_view item = rest.substr(0, sp);
        rest = sp == std::string_view::npos ? std::string_view{} : rest.substr(sp + 1);
        if (item.rfind("v1,", 0) != 0) continue;
        any = true;
        match |= constant_time_equal(item.substr(3), expected);
      }
      if (!any) return failed("header", "webhook-signature has no v1 signature");
      if (!match) return failed("signature", "no v1 signature matches the body");
      return {};
    }
    case WebhookScheme::stripe: {
      const auto* h = http::find_header(headers, "stripe-signature");
      if (!h) return failed("header", "missing header: Stripe-Signature");
      std::string ts;
      std::vector<std::string> sigs;
      std::string_view rest = *h;
      while (!rest.empty()) {
        auto comma = rest.find(',');
        std::string item = trim(rest.substr(0, comma));
        rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
        if (item.rfind("t=", 0) == 0) ts = item.substr(2);
        else if (item.rfind("v1=", 0) == 0) sigs.push_back(lower(item.substr(3)));
      }
      auto t = parse_unix(ts);
      if (!t) return failed("header", "Stripe-Signature has no valid t= timestamp");
      if (sigs.empty()) return failed("header", "Stripe-Signature has no v1= signature");
      if (auto v = check_time(*t, tolerance, now); !v.ok()) return v;
      const std::string expected = hex(hmac(Digest::sha256, secret, ts + "." + body));
      bool match = false;
      for (const auto& s : sigs) match |= constant_time_equal(s, expected);
      if (!match) return failed("signature", "no v1 signature matches the body");
      return {};
    }
    case WebhookScheme::github: {
      const auto* h = http::find_header(headers, "x-hub-signature-256");
      if (!h) return failed("header", "missing header: X-Hub-Signature-256");
      const std::string v = trim(*h);
      if (v.rfind("sha256=", 0) != 0)
        return failed("header", "X-Hub-Signature-256 does not start with 'sha256='");
      const std::string expected = hex(hmac(Digest::sha256, secret, body));
      if (!constant_time_equal(lower(v.substr(7)), expected))
        return failed("signature", "the signature does not match the body");
      return {};
    }
  }
  return failed("header", "unknown scheme");
}

WebhookVerdict verify_hmac_webhook(const std::string& secret, const HmacWebhookHeaders& names,
                                   const http::Headers& headers, const std::string& body,
                                   double tolerance, double now) {
  if (secret.empty()) return failed("secret", "the secret is empty");
  const auto* h = http::find_header(headers, names.signature_header);
  if (!h) return failed("header", "missing header: " + names.signature_header);
  if (!names.timestamp_header.empty()) {
    const auto* ts = http::find_header(headers, names.timestamp_header);
    if (!ts) return failed("header", "missing header: " + names.timestamp_header);
    auto t = parse_unix(trim(*ts));
    if (!t) return failed("header", names.timestamp_header + " is not a unix time in seconds");
    if (auto v = check_time(*t, tolerance, now); !v.ok()) return v;
  }
  std::string given = trim(*h);
  if (given.size() > 7 && lower(given.substr(0, 7)) == "sha256=") given.erase(0, 7);
  if (given.empty()) return failed("header", names.signature_header + " is empty");
  const std::string mac = hmac(Digest::sha256, secret, body);
  // 64 hex digits, or base64 of the 32 bytes (44 characters with its padding, 43 without).
  if (given.size() == 64 && given.find_first_not_of("0123456789abcdefABCDEF") == std::string::npos) {
    if (!constant_time_equal(lower(given), hex(mac)))
      return failed("signature", "the signature does not match the body");
    return {};
  }
  std::string decoded;
  try {
    decoded = unbase64(given);
  } catch (const Error&) {
    return failed("header", names.signature_header + " is neither hex nor base64 of an HMAC-SHA256");
  }
  if (decoded.size() != mac.size())
    return failed("header", names.signature_header + " is neither hex nor base64 of an HMAC-SHA256");
  if (!constant_time_equal(decoded, mac)) return failed("signature", "the signature does not match the body");
  return {};
}

std::string sign_hmac_webhook(const std::string& secret, const std::string& body) {
  return "sha256=" + hex(hmac(Digest::sha256, secret, body));
}

http::Headers sign_webhook(WebhookScheme scheme, const std::string& secret, const std::string& id,
                           double timestamp, const std::string& body) {
  const std::string ts = std::to_string(static_cast<long long>(timestamp));
  switch (scheme) {
    case WebhookScheme::standard: {
      auto key = standard_key(secret);
      if (!key) throw Error(errc::invalid_argument, "secret: not 'whsec_' followed by base64");
      return {{"webhook-id", id},
              {"webhook-timestamp", ts},
              {"webhook-signature", "v1," + base64(hmac(Digest::sha256, *key, id + "." + ts + "." + body))}};
    }
    case WebhookScheme::stripe:
      return {{"Stripe-Signature",
               "t=" + ts + ",v1=" + hex(hmac(Digest::sha256, secret, ts + "." + body))}};
    case WebhookScheme::github:
      return {{"X-Hub-Signature-256", "sha256=" + hex(hmac(Digest::sha256, secret, body))}};
  }
  return {};
}

}  // namespace isthmus::auth
