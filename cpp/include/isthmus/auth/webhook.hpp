// Verifying signed webhooks we receive: Standard Webhooks, Stripe-style and GitHub signatures.
// Signatures are compared in constant time; timestamps must fall inside a replay window.
#pragma once

#include <string>

#include "isthmus/http/message.hpp"

namespace isthmus::auth {

enum class WebhookScheme {
  standard,  // webhook-id / webhook-timestamp / webhook-signature ("v1,<base64>"), whsec_ secret
  stripe,    // Stripe-Signature: t=<unix>,v1=<hex>[,v1=...] over "<t>.<body>"
  github,    // X-Hub-Signature-256: sha256=<hex> over the body (no timestamp, no replay window)
};

// "standard" / "standard-webhooks" / "stripe" / "github"; throws errc::invalid_argument.
WebhookScheme parse_webhook_scheme(const std::string& name);

struct WebhookVerdict {
  // Empty when the webhook verified; otherwise the failed check: "secret" (unusable secret),
  // "header" (missing or malformed signature headers), "timestamp" (outside the tolerance),
  // or "signature" (no signature matched).
  std::string failed_check;
  std::string message;  // what exactly failed; never contains the secret or a signature
  bool ok() const { return failed_check.empty(); }
};

WebhookVerdict verify_webhook(WebhookScheme scheme, const std::string& secret,
                              const http::Headers& headers, const std::string& body,
                              double tolerance_seconds, double now_unix_seconds);

// A generic HMAC-SHA256 of the body, as many products sign theirs: the header named
// `signature_header` holds the MAC in hex or base64, optionally prefixed "sha256=". With a
// `timestamp_header`, that header must hold unix seconds inside the tolerance (it is not signed:
// the window only bounds how long a captured request can be replayed). Verdicts as above.
struct HmacWebhookHeaders {
  std::string signature_header = "X-Webhook-Signature";
  std::string timestamp_header;  // empty: no timestamp
};
WebhookVerdict verify_hmac_webhook(const std::string& secret, const HmacWebhookHeaders& names,
                                   const http::Headers& headers, const std::string& body,
                                   double tolerance_seconds, double now_unix_seconds);
// The header a sender of that scheme sets: "sha256=<hex>".
std::string sign_hmac_webhook(const std::string& secret, const std::string& body);

// What a sender would put in the headers, for tests and for the sandbox's signed webhooks.
http::Headers sign_webhook(WebhookScheme scheme, const std::string& secret, const std::string& id,
                           double timestamp, const std::string& body);

}  // namespace isthmus::auth
