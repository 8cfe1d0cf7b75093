// Webhook signature headers: Standard Webhooks, Stripe and GitHub. The input is like an HTTP
// message: line 1 is a scheme byte then the secret, line 2 the message id, line 3 a timestamp,
// then "Name: value" header lines, an empty line, and the body.
// Properties: verify never accepts a signature for a different body or under another secret;
// what sign_webhook produces verifies (and only inside the replay window); a verdict names
// one of the documented checks; no message repeats the secret.
#include <cstdint>
#include <string>

#include "check.hpp"
#include "isthmus/auth/crypto.hpp"
#include "isthmus/auth/webhook.hpp"
#include "isthmus/error.hpp"

namespace {

using isthmus::auth::WebhookScheme;
using isthmus::auth::WebhookVerdict;

constexpr double kTolerance = 300;

void check_verdict(const WebhookVerdict& v, const std::string& secret) {
  const std::string& c = v.failed_check;
  FUZZ_CHECK(c.empty() || c == "secret" || c == "header" || c == "timestamp" || c == "signature",
             "a verdict names a documented check");
  FUZZ_CHECK(v.ok() || !v.message.empty(), "a failed verdict says what failed");
  // The messages are fixed wording (letters, digits, spaces and ,.:'=_-), which a secret made of
  // those characters may spell by chance; a secret with any other byte must never appear.
  const bool distinctive = secret.find_first_not_of(
      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,.:'=_-") != std::string::npos;
  if (distinctive && secret.size() >= 4)
    FUZZ_CHECK(v.message.find(secret) == std::string::npos, "no message repeats the secret");
}

// A secret whose key bytes differ from `secret`'s in the first byte. (Appending to the text is
// not enough: HMAC pads short keys with zero bytes, and base64 may decode to the same key.)
std::string other_secret(WebhookScheme scheme, const std::string& secret) {
  using namespace isthmus::auth;
  if (scheme != WebhookScheme::standard) {
    std::string other = secret;
    other[0] ^= 0x01;
    return other;
  }
  std::string_view text = secret;
  if (text.rfind("whsec_", 0) == 0) text.remove_prefix(6);
  std::string key = unbase64(text);
  key[0] ^= 0x01;
  return "whsec_" + base64(key);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace isthmus;
  if (size == 0) return 0;
  const auto scheme = static_cast<WebhookScheme>(data[0] % 3);
  std::string_view rest = fuzz::as_text(data + 1, size - 1);
  const std::string secret(fuzz::take(rest, '\n'));
  const std::string id(fuzz::take(rest, '\n'));
  const std::string_view ts_text = fuzz::take(rest, '\n');
  double ts = 0;
  for (char c : ts_text.substr(0, 10))
    if (c >= '0' && c <= '9') ts = ts * 10 + (c - '0');
  http::Headers headers;
  for (;;) {
    if (rest.empty()) break;
    std::string_view line = fuzz::take(rest, '\n');
    if (line.empty()) break;
    const std::string_view name = fuzz::take(line, ':');
    headers.emplace_back(std::string(name), std::string(line));
  }
  const std::string body(rest);
  const std::string other_body = body + "!";

  // Whatever the headers say, a verdict for one body is never a verdict for another.
  const auto v = auth::verify_webhook(scheme, secret, headers, body, kTolerance, ts);
  check_verdict(v, secret);
  if (v.ok()) {
    const auto w = auth::verify_webhook(scheme, secret, headers, other_body, kTolerance, ts);
    check_verdict(w, secret);
    FUZZ_CHECK(w.failed_check == "signature", "headers that verify one body reject another");
  }

  // What a sender signs verifies, for that body only, under that secret only, in the window only.
  http::Headers signed_headers;
  try {
    signed_headers = auth::sign_webhook(scheme, secret, id, ts, body);
  } catch (const Error&) {
    FUZZ_CHECK(scheme == WebhookScheme::standard, "only a Standard Webhooks secret can be unusable");
    return 0;
  }
  const auto good = auth::verify_webhook(scheme, secret, signed_headers, body, kTolerance, ts);
  check_verdict(good, secret);
  FUZZ_CHECK(good.ok() == !secret.empty(), "a signed webhook verifies under its secret");
  const auto tampered = auth::verify_webhook(scheme, secret, signed_headers, other_body, kTolerance, ts);
  check_verdict(tampered, secret);
  FUZZ_CHECK(!tampered.ok(), "a signature never verifies a different body");
  if (!body.empty()) {
    std::string flipped = body;
    flipped[flipped.size() / 2] ^= 0x01;
    FUZZ_CHECK(!auth::verify_webhook(scheme, secret, signed_headers, flipped, kTolerance, ts).ok(),
               "one flipped bit in the body is caught");
  }
  if (good.ok()) {
    const std::string other = other_secret(scheme, secret);
    const auto wrong_key = auth::verify_webhook(scheme, other, signed_headers, body, kTolerance, ts);
    check_verdict(wrong_key, secret);
    FUZZ_CHECK(wrong_key.failed_check == "signature", "a signature never verifies under another key");
  }
  if (scheme != WebhookScheme::github && good.ok()) {
    const auto late = auth::verify_webhook(scheme, secret, signed_headers, body, kTolerance, ts + kTolerance + 1);
    FUZZ_CHECK(late.failed_check == "timestamp", "a signature outside the replay window is refused");
  }
  return 0;
}
