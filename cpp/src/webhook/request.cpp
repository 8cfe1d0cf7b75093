#include "isthmus/webhook/request.hpp"

#include <simdjson.h>

#include <cctype>
#include <cstdio>
#include <unordered_set>

#include "isthmus/auth/crypto.hpp"
#include "isthmus/error.hpp"

namespace isthmus::webhook {
namespace {

// Event ids go into the queued message unescaped but for quotes and backslashes, and into
// in-memory sets: printable ASCII, bounded.
constexpr std::size_t kMaxIdBytes = 256;

bool usable_id(std::string_view id) {
  if (id.empty() || id.size() > kMaxIdBytes) return false;
  for (char c : id)
    if (c < 0x20 || c > 0x7e) return false;
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Unix seconds as the schemes write them: digits only.
std::optional<double> unix_seconds(std::string_view text) {
  text = trim(text);
  if (text.empty() || text.size() > 15) return std::nullopt;
  double v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return v;
}

bool valid_header_name(const std::string& name) {
  if (name.empty() || name.size() > 128) return false;
  for (char c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_')) return false;
  return true;
}

Verdict reject(Outcome o, std::string check, std::string message) {
  Verdict v;
  v.outcome = o;
  v.check = std::move(check);
  v.message = std::move(message);
  return v;
}

auth::WebhookScheme auth_scheme(Scheme s) {
  switch (s) {
    case Scheme::stripe: return auth::WebhookScheme::stripe;
    case Scheme::github: return auth::WebhookScheme::github;
    default: return auth::WebhookScheme::standard;
  }
}

const std::string& or_default(const std::string& value, const std::string& fallback) {
  return value.empty() ? fallback : value;
}

const std::string kHmacId = "X-Webhook-Id";
const std::string kHmacSignature = "X-Webhook-Signature";

// The verifier's failed check as the receiver's outcome: "timestamp" is a stale request (401),
// "signature" a bad one (401), "header" (and "secret", which validate_routes rules out) 400.
Outcome outcome_of(const std::string& failed_check) {
  if (failed_check == "timestamp") return Outcome::stale;
  if (failed_check == "signature") return Outcome::bad_signature;
  return Outcome::bad_headers;
}

void append_quoted(std::string& out, std::string_view s) {
  out += '"';
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  out += '"';
}

void append_number(std::string& out, double v, int decimals) {
  char buf[64];
  int n = std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  out.append(buf, static_cast<std::size_t>(n));
}

}  // namespace

Scheme parse_scheme(const std::string& name, const std::string& field) {
  std::string n;
  for (char c : name) n += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (n == "standard" || n == "standard-webhooks" || n == "standard_webhooks" || n == "svix")
    return Scheme::standard;
  if (n == "stripe") return Scheme::stripe;
  if (n == "github") return Scheme::github;
  if (n == "hmac") return Scheme::hmac;
  throw Error(errc::invalid_argument,
              field + ": '" + printable(name) + "' is not one of 'standard', 'stripe', 'github', 'hmac'");
}

const char* scheme_name(Scheme s) noexcept {
  switch (s) {
    case Scheme::standard: return "standard";
    case Scheme::stripe: return "stripe";
    case Scheme::github: return "github";
    case Scheme::hmac: return "hmac";
  }
  return "standard";
}

void validate_routes(const std::vector<Route>& routes) {
  if (routes.empty()) throw Error(errc::invalid_argument, "routes: empty; expected at least one route");
  std::unordered_set<std::string> seen;
  for (std::size_t i = 0; i < routes.size(); ++i) {
    const Route& r = routes[i];
    const std::string at = "routes[" + printable(r.path) + "]";
    bool printable_path = !r.path.empty() && r.path[0] == '/' && r.path.size() <= 1024;
    for (char c : r.path) printable_path = printable_path && c > 0x20 && c < 0x7f && c != '?' && c != '#';
    if (!printable_path)
      throw Error(errc::invalid_argument, at + ": the path '" + printable(r.path) +
                                              "' is not valid; expected a path starting with '/', without query");
    if (!seen.insert(r.path).second)
      throw Error(errc::invalid_argument, at + ": the path appears twice; expected each path once");
    if (r.secret.empty()) throw Error(errc::invalid_argument, at + ".secret: empty; expected the signing secret");
    if (r.scheme == Scheme::standard) {
      std::string_view s = r.secret;
      if (s.rfind("whsec_", 0) == 0) s.remove_prefix(6);
      bool ok = true;
      try {
        ok = !auth::unbase64(s).empty();
      } catch (const Error&) {
        ok = false;
      }
      if (!ok)
        throw Error(errc::invalid_argument,
                    at + ".secret: not valid for the standard scheme; expected 'whsec_' followed by base64");
    }
    if (!(r.tolerance >= 0) || r.tolerance > 1e9)
      throw Error(errc::invalid_argument, at + ".tolerance: " + std::to_string(r.tolerance) +
                                              " is not valid; expected seconds from 0 (no check) to 1e9");
    const std::pair<const char*, const std::string*> names[] = {
        {"id_header", &r.id_header}, {"timestamp_header", &r.timestamp_header}, {"signature_header", &r.signature_header}};
    for (const auto& [field, value] : names) {
      if (value->empty()) continue;
      if (r.scheme != Scheme::hmac)
        throw Error(errc::invalid_argument, at + "." + field + ": only the hmac scheme takes it (this route's scheme is " +
                                                scheme_name(r.scheme) + ")");
      if (!valid_header_name(*value))
        throw Error(errc::invalid_argument, at + "." + field + ": '" + printable(*value) +
                                                "' is not valid; expected a header name (letters, digits, '-', '_')");
    }
  }
}

const char* outcome_name(Outcome o) noexcept {
  switch (o) {
    case Outcome::ok: return "accepted";
    case Outcome::unknown_route: return "unknown_route";
    case Outcome::method_not_allowed: return "method_not_allowed";
    case Outcome::too_large: return "too_large";
    case Outcome::bad_headers: return "bad_headers";
    case Outcome::bad_signature: return "bad_signature";
    case Outcome::stale: return "stale";
    case Outcome::bad_json: return "bad_json";
  }
  return "bad_headers";
}

int outcome_status(Outcome o) noexcept {
  switch (o) {
    case Outcome::ok: return 200;
    case Outcome::unknown_route: return 404;
    case Outcome::method_not_allowed: return 405;
    case Outcome::too_large: return 413;
    case Outcome::bad_headers: return 400;
    case Outcome::bad_signature: return 401;
    case Outcome::stale: return 401;
    case Outcome::bad_json: return 400;
  }
  return 400;
}

std::optional<std::size_t> match_route(const std::vector<Route>& routes, std::string_view target) {
  const std::string_view path = target.substr(0, target.find('?'));
  for (std::size_t i = 0; i < routes.size(); ++i)
    if (routes[i].path == path) return i;
  return std::nullopt;
}

Verdict check_head(const std::vector<Route>& routes, std::string_view method, std::string_view target,
                   std::optional<std::uint64_t> content_length, std::size_t max_body_bytes) {
  auto route = match_route(routes, target);
  if (!route) return reject(Outcome::unknown_route, "route", "no webhook route at this path");
  if (method != "POST")
    return reject(Outcome::method_not_allowed, "method", "webhooks are delivered with POST");
  if (content_length && *content_length > max_body_bytes)
    return reject(Outcome::too_large, "size", "the body exceeds " + std::to_string(max_body_bytes) + " bytes");
  Verdict v;
  v.route = *route;
  return v;
}

Verdict check_body(const Route& route, std::size_t route_index, const http::Headers& headers,
                   const std::string& body, double now) {
  auth::WebhookVerdict auth_verdict;
  if (route.scheme == Scheme::hmac) {
    auth::HmacWebhookHeaders names;
    names.signature_header = or_default(route.signature_header, kHmacSignature);
    names.timestamp_header = route.timestamp_header;
    auth_verdict = auth::verify_hmac_webhook(route.secret, names, headers, body, route.tolerance, now);
  } else {
    auth_verdict = auth::verify_webhook(auth_scheme(route.scheme), route.secret, headers, body, route.tolerance, now);
  }
  if (!auth_verdict.ok()) {
    const Outcome o = outcome_of(auth_verdict.failed_check);
    return reject(o, o == Outcome::bad_headers ? "header" : auth_verdict.failed_check, auth_verdict.message);
  }

  Verdict v;
  v.route = route_index;
  // The sender's timestamp: the verifier checked it already, so it parses.
  const std::string* ts = nullptr;
  switch (route.scheme) {
    case Scheme::standard: ts = http::find_header(headers, "webhook-timestamp"); break;
    case Scheme::hmac:
      if (!route.timestamp_header.empty()) ts = http::find_header(headers, route.timestamp_header);
      break;
    case Scheme::stripe:
      if (const auto* h = http::find_header(headers, "stripe-signature")) {
        std::string_view rest = *h;
        while (!rest.empty() && !v.timestamp) {
          auto comma = rest.find(',');
          std::string_view item = trim(rest.substr(0, comma));
          rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
          if (item.rfind("t=", 0) == 0) v.timestamp = unix_seconds(item.substr(2));
        }
      }
      break;
    case Scheme::github: break;
  }
  if (ts) v.timestamp = unix_seconds(*ts);

  const std::string* id_header = nullptr;
  const char* id_name = "";
  switch (route.scheme) {
    case Scheme::standard: id_name = "webhook-id"; break;
    case Scheme::github: id_name = "X-GitHub-Delivery"; break;
    case Scheme::hmac: id_name = or_default(route.id_header, kHmacId).c_str(); break;
    case Scheme::stripe: break;
  }
  if (route.scheme != Scheme::stripe) {
    id_header = http::find_header(headers, id_name);
    if (!id_header) return reject(Outcome::bad_headers, "event_id", std::string("missing header: ") + id_name);
    const std::string_view id = trim(*id_header);
    if (!usable_id(id))
      return reject(Outcome::bad_headers, "event_id",
                    std::string(id_name) + " is not 1 to 256 printable ASCII characters");
    v.event_id = std::string(id);
  }

  thread_local simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (parser.parse(body).get(doc)) return reject(Outcome::bad_json, "json", "the body is not valid JSON");
  if (route.scheme == Scheme::stripe) {
    std::string_view id;
    if (!doc.is_object() || doc["id"].get(id) || !usable_id(id))
      return reject(Outcome::bad_json, "event_id",
                    "the body has no \"id\" of 1 to 256 printable ASCII characters");
    v.event_id = std::string(id);
  }
  return v;
}

Verdict check_request(const std::vector<Route>& routes, std::string_view method, std::string_view target,
                      const http::Headers& headers, const std::string& body, std::size_t max_body_bytes,
                      double now) {
  Verdict head = check_head(routes, method, target, body.size(), max_body_bytes);
  if (!head.ok()) return head;
  return check_body(routes[head.route], head.route, headers, body, now);
}

std::string event_message(const Route& route, const Verdict& v, double received_at, const std::string& body) {
  std::string out;
  out.reserve(body.size() + route.path.size() + v.event_id.size() + 96);
  out += "{\"route\": ";
  append_quoted(out, route.path);
  out += ", \"event_id\": ";
  append_quoted(out, v.event_id);
  out += ", \"received_at\": ";
  append_number(out, received_at, 6);
  out += ", \"timestamp\": ";
  if (v.timestamp) append_number(out, *v.timestamp, 0);
  else out += "null";
  out += ", \"event\": ";
  out += body;
  out += '}';
  return out;
}

std::string error_body(std::string_view check, std::string_view message) {
  std::string out = "{\"error\": ";
  append_quoted(out, check);
  out += ", \"message\": ";
  // Messages are the verifier's fixed wording plus header names: printable already, but a
  // header name chosen by the sender never reaches here unquoted.
  append_quoted(out, printable(message));
  out += '}';
  return out;
}

}  // namespace isthmus::webhook
