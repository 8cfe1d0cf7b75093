// What the webhook receiver decides about one request before anything is queued: which route,
// whether the method, headers, signature, timestamp and JSON body pass, and the event's id and
// timestamp. Pure functions on plain data (no sockets), so the GoogleTest suite and the fuzzer
// call them directly; receiver.cpp only moves bytes and queue writes around them.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "isthmus/auth/webhook.hpp"
#include "isthmus/http/message.hpp"

namespace isthmus::webhook {

enum class Scheme {
  standard,  // Standard Webhooks: webhook-id, webhook-timestamp, webhook-signature
  stripe,    // Stripe-Signature: t=...,v1=...; the event id is the JSON body's "id"
  github,    // X-Hub-Signature-256; the event id is X-GitHub-Delivery; no timestamp
  hmac,      // HMAC-SHA256 of the body in `signature_header` (hex or base64, "sha256=" allowed)
};

// "standard" (or "standard-webhooks", "svix"), "stripe", "github", "hmac"; throws
// Error(errc::invalid_argument) naming `field` otherwise.
Scheme parse_scheme(const std::string& name, const std::string& field = "scheme");
const char* scheme_name(Scheme s) noexcept;

struct Route {
  std::string path;  // matched exactly, without the query
  Scheme scheme = Scheme::standard;
  std::string secret;
  double tolerance = 300;  // replay window in seconds; 0: timestamps are not checked
  // Header names; empty means the scheme's default (hmac: X-Webhook-Id, no timestamp header,
  // X-Webhook-Signature). Only the hmac scheme reads them.
  std::string id_header;
  std::string timestamp_header;
  std::string signature_header;
};

// Throws Error(errc::invalid_argument) naming routes[i].<field>, its value (never a secret's)
// and what is valid: a path that is not "/...", a duplicate path, an empty secret, a Standard
// Webhooks secret that is not whsec_ + base64, a negative tolerance, a bad header name.
void validate_routes(const std::vector<Route>& routes);

// Every outcome has its counter in the receiver's stats, named as here.
enum class Outcome {
  ok,
  unknown_route,       // 404
  method_not_allowed,  // 405
  too_large,           // 413
  bad_headers,         // 400: signature, id or timestamp headers missing or malformed
  bad_signature,       // 401: no signature matches the body under the route's secret
  stale,               // 401: the timestamp is outside the replay window
  bad_json,            // 400: the body is not JSON (or, stripe, has no string "id")
};

const char* outcome_name(Outcome o) noexcept;
int outcome_status(Outcome o) noexcept;

struct Verdict {
  Outcome outcome = Outcome::ok;
  std::string check;    // the failed check in the error body: "route", "method", "signature", ...
  std::string message;  // short, for the error body; never the secret or a signature
  std::size_t route = 0;  // index into the routes, once matched
  std::string event_id;
  std::optional<double> timestamp;  // the sender's, when the scheme carries one
  bool ok() const noexcept { return outcome == Outcome::ok; }
};

// The route for a request target ("/hooks/crm?x=1" matches "/hooks/crm"), or nullopt.
std::optional<std::size_t> match_route(const std::vector<Route>& routes, std::string_view target);

// Before the body is read: route, method and the declared length.
Verdict check_head(const std::vector<Route>& routes, std::string_view method, std::string_view target,
                   std::optional<std::uint64_t> content_length, std::size_t max_body_bytes);

// Once the body is read, for a route check_head accepted: headers, signature, timestamp, the
// event id and the JSON body, in that order (nothing unauthenticated is parsed).
Verdict check_body(const Route& route, std::size_t route_index, const http::Headers& headers,
                   const std::string& body, double now_unix_seconds);

// Both, for callers that hold the whole request (the fuzzer, tests).
Verdict check_request(const std::vector<Route>& routes, std::string_view method, std::string_view target,
                      const http::Headers& headers, const std::string& body, std::size_t max_body_bytes,
                      double now_unix_seconds);

// The queued message: {"route", "event_id", "received_at", "timestamp", "event": <body>}, by
// concatenation (the body is valid JSON and the id printable ASCII: check_body made sure).
std::string event_message(const Route& route, const Verdict& v, double received_at, const std::string& body);

// The short JSON error body of a rejection: {"error": check, "message": message}.
std::string error_body(std::string_view check, std::string_view message);

}  // namespace isthmus::webhook
