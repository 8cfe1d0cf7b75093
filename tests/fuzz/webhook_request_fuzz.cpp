// The webhook receiver's request checks: route match, method, length, signature headers,
// timestamp, event id and JSON body (webhook/request.hpp), without sockets. The input: byte 0
// picks whether the body is signed properly for the route (so the checks past the signature
// are reached) and the clock; then "METHOD TARGET" on line 1, "Name: value" header lines, an
// empty line, and the body.
// Properties: the status is the outcome's; an accepted request's queued message is valid JSON
// carrying the id and the body; an error body is valid JSON; no answer repeats a secret; a
// verdict that accepted a body rejects the same headers with another body.
#include <simdjson.h>

#include <cstdint>
#include <string>

#include "check.hpp"
#include "isthmus/auth/crypto.hpp"
#include "isthmus/auth/webhook.hpp"
#include "isthmus/webhook/request.hpp"

namespace {

using namespace isthmus;
using webhook::Outcome;
using webhook::Scheme;

const std::string kStandardSecret = "whsec_" + auth::base64("fuzz-standard-key-bytes");
const std::string kSecret = "fuzz-shared-secret-Q7";

const std::vector<webhook::Route>& routes() {
  static const std::vector<webhook::Route> r = [] {
    std::vector<webhook::Route> out(4);
    out[0].path = "/s";
    out[0].scheme = Scheme::standard;
    out[0].secret = kStandardSecret;
    out[1].path = "/stripe";
    out[1].scheme = Scheme::stripe;
    out[1].secret = kSecret;
    out[2].path = "/gh";
    out[2].scheme = Scheme::github;
    out[2].secret = kSecret;
    out[3].path = "/h";
    out[3].scheme = Scheme::hmac;
    out[3].secret = kSecret;
    out[3].timestamp_header = "X-Time";
    webhook::validate_routes(out);
    return out;
  }();
  return r;
}

bool valid_json(const std::string& text) {
  thread_local simdjson::dom::parser parser;
  simdjson::dom::element doc;
  return !parser.parse(text).get(doc);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const bool sign = data[0] & 1;
  const double now = 1700000000 + (data[0] >> 1);
  std::string_view rest = fuzz::as_text(data + 1, size - 1);
  std::string_view line = fuzz::take(rest, '\n');
  const std::string method(fuzz::take(line, ' '));
  const std::string target(line);
  http::Headers headers;
  while (!rest.empty()) {
    std::string_view h = fuzz::take(rest, '\n');
    if (h.empty()) break;
    const std::string_view name = fuzz::take(h, ':');
    headers.emplace_back(std::string(name), std::string(h));
  }
  const std::string body(rest);
  const auto& rs = routes();
  if (sign) {
    if (auto r = webhook::match_route(rs, target)) {
      const auto& route = rs[*r];
      http::Headers extra;
      switch (route.scheme) {
        case Scheme::standard:
          extra = auth::sign_webhook(auth::WebhookScheme::standard, route.secret, "id-1", now, body);
          break;
        case Scheme::stripe: extra = auth::sign_webhook(auth::WebhookScheme::stripe, route.secret, "", now, body); break;
        case Scheme::github: extra = auth::sign_webhook(auth::WebhookScheme::github, route.secret, "", now, body); break;
        case Scheme::hmac:
          extra = {{"X-Webhook-Signature", auth::sign_hmac_webhook(route.secret, body)},
                   {"X-Time", std::to_string(static_cast<long long>(now))}};
          break;
      }
      // Signed headers first: they are the ones found.
      headers.insert(headers.begin(), extra.begin(), extra.end());
    }
  }

  const auto v = webhook::check_request(rs, method, target, headers, body, 1 << 16, now);
  const int status = webhook::outcome_status(v.outcome);
  FUZZ_CHECK(v.ok() ? status == 200 : (status == 400 || status == 401 || status == 404 || status == 405 || status == 413),
             "a documented status per outcome");
  const std::string error = webhook::error_body(v.check, v.message);
  FUZZ_CHECK(valid_json(error), "an error body is JSON");
  FUZZ_CHECK(error.find(kSecret) == std::string::npos && error.find(kStandardSecret.substr(6)) == std::string::npos,
             "no answer repeats a secret");
  if (!v.ok()) {
    FUZZ_CHECK(!v.check.empty() && !v.message.empty(), "a rejection names its check");
    return 0;
  }
  FUZZ_CHECK(v.route < rs.size() && method == "POST", "only a POST to a route is accepted");
  FUZZ_CHECK(!v.event_id.empty() && v.event_id.size() <= 256, "an accepted event has a bounded id");
  FUZZ_CHECK(valid_json(body), "an accepted body is JSON");
  const std::string message = webhook::event_message(rs[v.route], v, now, body);
  thread_local simdjson::dom::parser parser;
  simdjson::dom::element doc;
  FUZZ_CHECK(!parser.parse(message).get(doc), "the queued message is JSON");
  std::string_view id;
  FUZZ_CHECK(!doc["event_id"].get(id) && id == v.event_id, "the message carries the event id");
  std::string_view route;
  FUZZ_CHECK(!doc["route"].get(route) && route == rs[v.route].path, "the message carries the route");
  const auto again = webhook::check_request(rs, method, target, headers, body + "  1", 1 << 16, now);
  FUZZ_CHECK(!again.ok(), "headers that verify one body reject another");
  return 0;
}
