// The API surface of the sandbox: paginated records, writes with idempotency, auth incl. an
// OAuth2 provider, rate limits with their headers, silent overload and injected faults.
// Shared state sits behind one mutex: every critical section is short and allocation-light.
#include <openssl/evp.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <simdjson.h>
#include <tuple>

#include "isthmus/auth/crypto.hpp"
#include "isthmus/error.hpp"
#include "isthmus/http/url.hpp"
#include "sandbox/records.hpp"
#include "sandbox/router.hpp"
#include "sandbox/text.hpp"

namespace isthmus::sandbox {

using nlohmann::json;
using auth::hex;
using auth::sha256;

namespace {

double now_seconds() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}


Reply json_reply(int status, const json& body) {
  Reply r;
  r.status = status;
  r.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
  return r;
}

Reply api_error(int status, std::string_view error, std::string_view message) {
  return json_reply(status, json{{"error", error}, {"message", message}, {"status", status}});
}

bool parse_u64(std::string_view s, std::uint64_t& out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

// The sandbox decodes base64 with its own strict decoder: it plays a server, and
// auth::unbase64 deliberately accepts either alphabet and missing padding, so sharing it would
// let a client that sends URL-safe or unpadded Basic credentials pass tests a real server
// fails. Encoding, hashing, HMAC and comparing come from auth/crypto: they wrap OpenSSL, and
// its tests pin them to the RFC 4231 and RFC 7636 vectors, so sharing them hides no bug.
std::optional<std::string> unbase64(std::string_view in, bool url) {
  std::string s(in);
  if (url) {
    for (auto& c : s) c = c == '-' ? '+' : c == '_' ? '/' : c;
    while (s.size() % 4) s += '=';
  }
  if (s.empty() || s.size() % 4) return std::nullopt;
  std::string out(s.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(s.data()),
                          static_cast<int>(s.size()));
  if (n < 0) return std::nullopt;
  std::size_t pad = 0;
  for (std::size_t i = s.size(); i > 0 && s[i - 1] == '='; --i) ++pad;
  out.resize(static_cast<std::size_t>(n) - pad);
  return out;
}

// Form or JSON body parameters of /oauth endpoints.
std::map<std::string, std::string> body_params(const Request& req) {
  std::map<std::string, std::string> out;
  if (req.header("content-type").find("json") != std::string_view::npos) {
    auto j = json::parse(req.body, nullptr, false);
    if (j.is_object())
      for (auto it = j.begin(); it != j.end(); ++it)
        if (it.value().is_string()) out[it.key()] = it.value().get<std::string>();
    return out;
  }
  for (auto& [k, v] : parse_query(req.body)) out.emplace(k, v);
  return out;
}

struct Token {
  std::string client_id;
  double expires_at = 0;
  bool revoked = false;
  int tenant = 0;
};
struct RefreshToken {
  std::string client_id;
  bool used = false;
  bool revoked = false;
  int tenant = 0;
};
struct AuthCode {
  std::string client_id, redirect_uri, challenge;
  double expires_at = 0;
  int tenant = 0;
};
struct Gcra {
  double tat = 0;  // theoretical arrival time
};
struct Quota {
  std::uint64_t day = 0, used = 0;
};
struct Stored {
  std::string body_hash;
  Reply reply;
};
struct Change {
  std::uint64_t version = 1, updated_ms = 0;
};

}  // namespace

class Router::State {
 public:
  struct Hook {
    std::string id, url, host, path, secret;  // secret: raw bytes
    std::uint16_t port = 80;
  };
  // What belongs to one tenant: its record changes, its webhooks, its idempotency keys.
  struct Account {
    std::map<std::uint64_t, Change> changes[kResourceCount];  // index -> latest change
    std::atomic<bool> has_changes{false};
    std::uint64_t update_count = 0;
    std::vector<Hook> hooks;
    std::map<std::string, Stored, std::less<>> idempotency;
    std::atomic<bool> access_revoked{false};
  };

  explicit State(const std::vector<Tenant>& tenants) : accounts(tenants.size()) {
    for (std::size_t i = 0; i < tenants.size(); ++i) {
      const int t = static_cast<int>(i);
      // Secrets are looked up by their digest: the lookup's timing tells nothing of the secret.
      api_keys.emplace(sha256(tenants[i].api_key), t);
      bearer_tokens.emplace(sha256(tenants[i].bearer_token), t);
      usernames.emplace(tenants[i].username, t);
      client_ids.emplace(tenants[i].client_id, t);
    }
  }

  std::mutex mutex;
  std::vector<Account> accounts;  // one per tenant
  std::map<std::string, int, std::less<>> api_keys, bearer_tokens, usernames, client_ids;
  double update_carry = 0;
  std::uint64_t last_change_ms = 0;

  std::map<std::string, Token, std::less<>> tokens;
  std::map<std::string, RefreshToken, std::less<>> refresh_tokens;
  std::map<std::string, AuthCode, std::less<>> codes;
  std::uint64_t token_counter = 0;

  std::map<std::string, Gcra, std::less<>> limits;
  std::map<std::string, Quota, std::less<>> quotas;
  std::int64_t overload_second = 0;
  std::uint64_t overload_count = 0;
  Gcra app_limit;  // app_rate_limit, across every credential
  std::map<std::string, std::uint64_t, std::less<>> fault_counters;

  std::uint64_t hook_counter = 0, event_counter = 0;

  // A tenant index from a lookup map, or -1.
  static int find(const std::map<std::string, int, std::less<>>& map, std::string_view key) {
    auto it = map.find(key);
    return it == map.end() ? -1 : it->second;
  }

  std::string new_token(std::uint64_t seed, std::string_view prefix) {
    return std::string(prefix) + hex(sha256(std::to_string(seed) + ":" + std::to_string(++token_counter) + ":" +
                                            std::to_string(now_seconds())))
                                     .substr(0, 32);
  }
};

void Router::init_state() { state_ = std::make_shared<State>(tenants_); }

static void check_tenant(std::size_t tenant, std::size_t count) {
  if (tenant >= count)
    throw Error(errc::invalid_argument, "sandbox tenant=" + std::to_string(tenant) +
                                            " is invalid: expected a tenant index from 0 to " + std::to_string(count - 1));
}

std::uint64_t Router::revoke_tokens(std::size_t tenant) {
  check_tenant(tenant, tenants_.size());
  const int t = static_cast<int>(tenant);
  std::uint64_t n = 0;
  {
    std::lock_guard lock(state_->mutex);
    for (auto& [_, token] : state_->tokens)
      if (token.tenant == t && !token.revoked) token.revoked = true, ++n;
    for (auto& [_, token] : state_->refresh_tokens)
      if (token.tenant == t && !token.revoked && !token.used) token.revoked = true, ++n;
  }
  if (n) stats_.token_revoked(t, n);
  return n;
}

std::uint64_t Router::set_access(std::size_t tenant, bool allowed) {
  check_tenant(tenant, tenants_.size());
  // Refused first, then revoked: a token issued in between is revoked too.
  state_->accounts[tenant].access_revoked = !allowed;
  return allowed ? 0 : revoke_tokens(tenant);
}

// --- time-driven record changes -------------------------------------------------------------

void Router::tick(double now) {
  if (config_.updates_per_second <= 0) return;
  std::vector<std::tuple<int, int, std::uint64_t, Change>> changed;  // tenant, resource, index, change
  {
  std::lock_guard lock(state_->mutex);
  state_->update_carry += config_.updates_per_second;
  auto n = static_cast<std::uint64_t>(state_->update_carry);
  state_->update_carry -= static_cast<double>(n);
  n = std::min<std::uint64_t>(n, 100000);
  std::uint64_t ms = std::max<std::uint64_t>(static_cast<std::uint64_t>(now * 1000.0), state_->last_change_ms + 1);
  state_->last_change_ms = ms;
  // updates_per_second applies to each tenant, over that tenant's records.
  for (std::size_t t = 0; t < tenants_.size(); ++t) {
    const Tenant& tenant = tenants_[t];
    State::Account& account = state_->accounts[t];
    if (tenant.records == 0) continue;
    for (std::uint64_t k = 0; k < n; ++k) {
      std::uint64_t u = account.update_count++;
      int res = static_cast<int>(u % kResourceCount);
      std::uint64_t index = hash3(tenant.seed, 1000 + static_cast<std::uint64_t>(res), u) % tenant.records;
      auto& c = account.changes[res][index];
      c.version = c.version + 1;
      c.updated_ms = ms;
      if (!account.hooks.empty() && changed.size() < 1000) changed.emplace_back(static_cast<int>(t), res, index, c);
    }
    if (n) account.has_changes = true;
  }
  }
  for (auto& [t, res, index, c] : changed) {
    const Tenant& tenant = tenants_[static_cast<std::size_t>(t)];
    std::string data;
    append_record(data, tenant.seed, res, index, tenant.records, c.version, c.updated_ms);
    emit(t, std::string(kResources[res].name) + ".updated", data);
  }
}

void Router::emit(int tenant, std::string_view type, const std::string& data_json) {
  if (!send_webhook_ || tenant < 0 || static_cast<std::size_t>(tenant) >= tenants_.size()) return;
  std::vector<State::Hook> hooks;
  std::uint64_t event = 0;
  {
    std::lock_guard lock(state_->mutex);
    const auto& registered = state_->accounts[static_cast<std::size_t>(tenant)].hooks;
    if (registered.empty()) return;
    hooks = registered;
    event = ++state_->event_counter;
  }
  double now = now_seconds();
  std::string ts = std::to_string(static_cast<std::uint64_t>(now));
  std::string body = "{\"type\":\"" + std::string(type) + "\",\"timestamp\":\"" +
                     format_time(static_cast<std::uint64_t>(now * 1000)) + "\",\"data\":" + data_json + "}";
  for (const auto& h : hooks) {
    WebhookDelivery d;
    d.url = h.url;
    d.host = h.host;
    d.port = h.port;
    d.path = h.path;
    d.body = body;
    std::string id = "msg_" + std::to_string(config_.seed) + "_" + std::to_string(event);
    // Standard Webhooks: v1,base64(HMAC-SHA256(secret, id.timestamp.body)).
    d.headers = {{"webhook-id", id},
                 {"webhook-timestamp", ts},
                 {"webhook-signature", "v1," + auth::base64(auth::hmac(auth::Digest::sha256, h.secret, id + "." + ts + "." + body))},
                 {"Content-Type", "application/json"}};
    send_webhook_(std::move(d));
  }
}

Reply Router::webhooks(const Request& req, std::string_view tail, int tenant) {
  State& s = *state_;
  auto& hooks = s.accounts[static_cast<std::size_t>(tenant)].hooks;
  if (req.method == "POST" && tail.empty()) {
    json body = json::parse(req.body, nullptr, false);
    if (!body.is_object() || !body.contains("url") || !body["url"].is_string())
      return api_error(422, "bad_webhook", "body must be {\"url\": \"http://127.0.0.1:PORT/path\"}");
    std::string url = body["url"];
    // Only plain http to an IP literal (or localhost): the sandbox never resolves names.
    if (url.rfind("http://", 0) != 0 || url.find_first_of("\r\n ") != std::string::npos)
      return api_error(422, "bad_webhook", "url must be http://<ip>:<port>/<path>");
    std::string rest = url.substr(7);
    auto slash = rest.find('/');
    std::string authority = rest.substr(0, slash);
    std::string path = slash == std::string::npos ? "/" : rest.substr(slash);
    auto colon = authority.rfind(':');
    std::uint64_t port = 80;
    std::string host = authority.substr(0, colon);
    if (colon != std::string::npos && (!parse_u64(authority.substr(colon + 1), port) || port == 0 || port > 65535))
      return api_error(422, "bad_webhook", "url has a bad port");
    if (host == "localhost") host = "127.0.0.1";
    State::Hook h;
    {
      std::lock_guard lock(s.mutex);
      h.id = "wh_" + std::to_string(++s.hook_counter);
      h.secret = sha256(std::to_string(config_.seed) + ":" + h.id + ":" + std::to_string(now_seconds()));
      h.url = url;
      h.host = host;
      h.port = static_cast<std::uint16_t>(port);
      h.path = path;
      hooks.push_back(h);
    }
    return json_reply(201, json{{"id", h.id}, {"url", url}, {"secret", "whsec_" + auth::base64(h.secret)}});
  }
  if (req.method == "GET" && tail.empty()) {
    json list = json::array();
    std::lock_guard lock(s.mutex);
    for (const auto& h : hooks) list.push_back({{"id", h.id}, {"url", h.url}});
    return json_reply(200, json{{"data", list}});
  }
  if (req.method == "DELETE" && !tail.empty()) {
    std::lock_guard lock(s.mutex);
    auto before = hooks.size();
    std::erase_if(hooks, [&](const State::Hook& h) { return h.id == tail; });
    if (hooks.size() == before) return api_error(404, "not_found", "no such webhook");
    Reply r;
    r.status = 204;
    r.content_type.clear();
    return r;
  }
  return api_error(405, "method_not_allowed", "POST /v1/webhooks, GET /v1/webhooks, DELETE /v1/webhooks/{id}");
}

// --- auth -------------------------------------------------------------------------------

namespace {

Reply unauthorized(std::string_view challenge, std::string_view message) {
  Reply r = api_error(401, "unauthorized", message);
  r.headers.emplace_back("WWW-Authenticate", std::string(challenge));
  return r;
}

}  // namespace

static constexpr std::string_view kRevokedChallenge =
    "Bearer realm=\"sandbox\", error=\"invalid_token\", error_description=\"access revoked\"";

// Who sent a request: the credential label limits and stats key on, and its tenant.
struct Caller {
  std::string credential;
  int tenant = -1;
};

// Returns the 401 when the request is not authenticated; fills `who` otherwise. A credential
// is looked up among every tenant's; a single-tenant sandbox has one tenant, 0.
static std::optional<Reply> check_auth(const Config& c, const std::vector<Tenant>& tenants, Router::State& s,
                                       const Request& req, Caller& who, double now) {
  // With tenants, the label names the tenant only: it shows in stats, where a secret must not.
  auto found = [&](int tenant, std::string single_label, std::string_view challenge) -> std::optional<Reply> {
    if (s.accounts[static_cast<std::size_t>(tenant)].access_revoked)
      return unauthorized(challenge, "access to this account was revoked");
    who.tenant = tenant;
    who.credential = c.tenants ? "tenant:" + std::to_string(tenant) : std::move(single_label);
    return std::nullopt;
  };
  switch (c.auth) {
    case AuthMode::none:
      who.credential = "anonymous";
      who.tenant = 0;
      return std::nullopt;
    case AuthMode::api_key: {
      std::string_view key;
      if (c.api_key_in_query) {
        const std::string* q = req.query_param("api_key");
        if (q) key = *q;
      } else {
        key = req.header("x-api-key");
      }
      std::string challenge = c.api_key_in_query ? "ApiKey realm=\"sandbox\", in=\"query\", name=\"api_key\""
                                                 : "ApiKey realm=\"sandbox\", in=\"header\", name=\"X-API-Key\"";
      if (key.empty()) return unauthorized(challenge, "missing API key");
      const int t = Router::State::find(s.api_keys, sha256(key));
      if (t < 0) return unauthorized(challenge, "wrong API key");
      return found(t, "api_key:" + tenants[static_cast<std::size_t>(t)].api_key, challenge);
    }
    case AuthMode::basic: {
      auto h = req.header("authorization");
      const char* challenge = "Basic realm=\"sandbox\", charset=\"UTF-8\"";
      if (h.size() < 6 || to_lower(h.substr(0, 6)) != "basic ") return unauthorized(challenge, "missing Basic credentials");
      auto decoded = unbase64(h.substr(6), false);
      // RFC 7617: the user-id holds no colon, so the first one ends it.
      const auto colon = decoded ? decoded->find(':') : std::string::npos;
      const int t = colon == std::string::npos ? -1 : Router::State::find(s.usernames, decoded->substr(0, colon));
      if (t < 0 || !auth::constant_time_equal(std::string_view(*decoded).substr(colon + 1),
                                              tenants[static_cast<std::size_t>(t)].password))
        return unauthorized(challenge, "wrong username or password");
      return found(t, "basic:" + tenants[static_cast<std::size_t>(t)].username, challenge);
    }
    case AuthMode::bearer:
    case AuthMode::oauth2: {
      auto h = req.header("authorization");
      if (h.size() < 7 || to_lower(h.substr(0, 7)) != "bearer ")
        return unauthorized("Bearer realm=\"sandbox\"", "missing bearer token");
      std::string_view token = h.substr(7);
      if (c.auth == AuthMode::bearer) {
        const int t = Router::State::find(s.bearer_tokens, sha256(token));
        if (t < 0)
          return unauthorized("Bearer realm=\"sandbox\", error=\"invalid_token\", error_description=\"unknown token\"",
                              "wrong bearer token");
        return found(t, "bearer", kRevokedChallenge);
      }
      Token tok;
      {
        std::lock_guard lock(s.mutex);
        auto it = s.tokens.find(token);
        if (it == s.tokens.end() || it->second.revoked)
          return unauthorized("Bearer realm=\"sandbox\", error=\"invalid_token\", error_description=\"unknown or revoked token\"",
                              "unknown or revoked access token");
        tok = it->second;
      }
      if (now >= tok.expires_at)
        return unauthorized("Bearer realm=\"sandbox\", error=\"invalid_token\", error_description=\"token expired\"",
                            "access token expired");
      return found(tok.tenant, "client:" + tok.client_id, kRevokedChallenge);
    }
  }
  return std::nullopt;
}

static std::optional<Reply> check_signature(const Config& c, const Request& req, double now) {
  if (c.signing_secret.empty()) return std::nullopt;
  const char* challenge = "Signature realm=\"sandbox\", algorithm=\"hmac-sha256\"";
  auto ts = req.header("x-signature-timestamp");
  auto sig = req.header("x-signature");
  std::uint64_t t = 0;
  if (ts.empty() || sig.empty() || !parse_u64(ts, t)) return unauthorized(challenge, "missing X-Signature or X-Signature-Timestamp");
  if (std::fabs(static_cast<double>(t) - now) > 300) return unauthorized(challenge, "signature timestamp is more than 300 s off");
  std::string expected =
      "sha256=" + hex(auth::hmac(auth::Digest::sha256, c.signing_secret, std::string(ts) + "." + req.method + "." + req.target + "." + req.body));
  if (!auth::constant_time_equal(sig, expected)) return unauthorized(challenge, "signature does not match");
  return std::nullopt;
}

// --- rate limits ------------------------------------------------------------------------

// Seconds as a header value: milliseconds, rounded up, so waiting that long always suffices.
static std::string seconds_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", std::ceil(std::max(0.0, s) * 1000.0 - 1e-6) / 1000.0);
  return buf;
}

// The policy as the IETF fields can say it, in whole seconds: the smallest window (up to an
// hour) that holds a whole number of calls at `rate`, so q/w is the rate exactly.
static std::pair<std::uint64_t, std::uint64_t> policy_window(double rate) {
  for (std::uint64_t w = 1; w <= 3600; ++w) {
    const double q = rate * static_cast<double>(w);
    if (std::fabs(q - std::round(q)) < 1e-6 * std::max(1.0, q) && std::round(q) >= 1)
      return {static_cast<std::uint64_t>(std::round(q)), w};
  }
  return {std::max<std::uint64_t>(1, static_cast<std::uint64_t>(std::llround(rate * 3600))), 3600};
}

// `reset_s` is the true time until one more call may go (0 when the burst is whole). The de-facto
// X-RateLimit-Reset carries it to the millisecond; the IETF `t=` is an integer, so it is rounded
// up there (still true: waiting that long suffices), and a client wanting the exact pace reads
// the policy's q/w.
static void add_limit_headers(Reply& r, const Config& c, std::uint64_t remaining, double reset_s,
                              std::optional<std::uint64_t> quota_left) {
  auto whole = static_cast<std::uint64_t>(std::ceil(std::max(0.0, reset_s) - 1e-9));
  r.headers.emplace_back("X-RateLimit-Limit", std::to_string(c.burst));
  r.headers.emplace_back("X-RateLimit-Remaining", std::to_string(remaining));
  r.headers.emplace_back("X-RateLimit-Reset", seconds_text(reset_s));
  auto [q, w] = policy_window(c.rate_limit);
  std::string policy = "\"burst\";q=" + std::to_string(q) + ";w=" + std::to_string(w);
  std::string state = "\"burst\";r=" + std::to_string(remaining) + ";t=" + std::to_string(whole);
  if (quota_left) {
    policy += ", \"daily\";q=" + std::to_string(c.daily_quota) + ";w=86400";
    state += ", \"daily\";r=" + std::to_string(*quota_left);
  }
  r.headers.emplace_back("RateLimit-Policy", policy);
  r.headers.emplace_back("RateLimit", state);
}

// One GCRA decision, not yet taken: the caller stores `tat` only when every limit lets the
// request go, so a request one limit refuses costs the others nothing.
struct GcraVerdict {
  double wait = 0;  // > 0: refused, for this long
  double tat = 0;   // the theoretical arrival time once the request is let through
  std::uint64_t remaining = 0;
  double reset = 0;
};

static GcraVerdict gcra(double previous_tat, double rate, std::uint64_t burst, double now) {
  const double interval = 1.0 / rate;
  const double tolerance = interval * static_cast<double>(burst - 1);
  const double tat = std::max(previous_tat, now);
  GcraVerdict v;
  if (tat - now > tolerance + 1e-9) {
    v.wait = v.reset = tat - now - tolerance;
    v.tat = previous_tat;
    return v;
  }
  v.tat = tat + interval;
  // In calls: how far the bucket is from refusing; wall-clock doubles, so allow for rounding.
  const double exact = (tolerance - (v.tat - now)) / interval;
  const double room = exact + 1e-4;
  v.remaining = room < 0 ? 0 : std::min<std::uint64_t>(static_cast<std::uint64_t>(std::floor(room)) + 1, burst);
  // Until one more call may go: the next whole unit of room.
  v.reset = v.remaining >= burst ? 0 : std::max(0.0, (std::floor(room) + 1 - exact) * interval);
  return v;
}

static void set_header(std::vector<std::pair<std::string, std::string>>& headers, std::string_view name, std::string value) {
  for (auto& [k, v] : headers)
    if (k == name) {
      v = std::move(value);
      return;
    }
  headers.emplace_back(std::string(name), std::move(value));
}

// The app-wide limit as one more item of the IETF fields, and as the X-RateLimit-* fields when
// it is the only limit or the one that refused.
static void add_app_headers(Reply& r, const Config& c, const GcraVerdict& app, bool only, bool refused) {
  auto [q, w] = policy_window(c.app_rate_limit);
  auto whole = static_cast<std::uint64_t>(std::ceil(std::max(0.0, app.reset) - 1e-9));
  std::string policy = "\"app\";q=" + std::to_string(q) + ";w=" + std::to_string(w);
  std::string state = "\"app\";r=" + std::to_string(app.remaining) + ";t=" + std::to_string(whole);
  if (only || refused) {
    set_header(r.headers, "X-RateLimit-Limit", std::to_string(c.app_burst));
    set_header(r.headers, "X-RateLimit-Remaining", std::to_string(app.remaining));
    set_header(r.headers, "X-RateLimit-Reset", seconds_text(app.reset));
  }
  for (auto& [k, v] : r.headers) {
    if (k == "RateLimit-Policy") v += ", " + policy, policy.clear();
    if (k == "RateLimit") v += ", " + state, state.clear();
  }
  if (!policy.empty()) r.headers.emplace_back("RateLimit-Policy", policy);
  if (!state.empty()) r.headers.emplace_back("RateLimit", state);
}

// GCRA per credential, the daily quota and the app-wide GCRA. Returns a 429 when the
// credential must wait.
static std::optional<Reply> check_rate(const Config& c, Router::State& s, Stats& stats, const Caller& who,
                                       double now, std::vector<std::pair<std::string, std::string>>& ok_headers) {
  const bool app = c.app_rate_limit > 0;
  if (c.rate_limit <= 0 && c.daily_quota == 0 && !app) return std::nullopt;
  const std::string& credential = who.credential;
  std::lock_guard lock(s.mutex);
  double wait = 0;
  std::optional<std::uint64_t> quota_left;
  bool quota_hit = false;
  if (c.daily_quota) {
    auto& q = s.quotas[credential];
    auto day = static_cast<std::uint64_t>(now / 86400);
    if (q.day != day) q = Quota{day, 0};
    if (q.used >= c.daily_quota) {
      quota_hit = true;
      wait = static_cast<double>(day + 1) * 86400 - now;
      quota_left = 0;
    }
  }
  GcraVerdict own, shared;
  if (c.rate_limit > 0) {
    if (quota_hit) own.reset = wait;
    else own = gcra(s.limits[credential].tat, c.rate_limit, c.burst, now);
  }
  if (app) shared = gcra(s.app_limit.tat, c.app_rate_limit, c.app_burst, now);
  const bool own_refused = own.wait > 0;
  const bool app_refused = !quota_hit && !own_refused && shared.wait > 0;
  if (!quota_hit) wait = std::max(own.wait, own_refused ? 0.0 : shared.wait);
  if (wait <= 0) {
    if (c.rate_limit > 0) s.limits[credential].tat = own.tat;
    if (app) s.app_limit.tat = shared.tat;
    if (c.daily_quota) {
      auto& q = s.quotas[credential];
      ++q.used;
      quota_left = c.daily_quota - q.used;
    }
  }
  Reply r;
  if (c.rate_limit > 0) add_limit_headers(r, c, own.remaining, own.reset, quota_left);
  else if (c.daily_quota) {
    r.headers.emplace_back("X-RateLimit-Limit", std::to_string(c.daily_quota));
    r.headers.emplace_back("X-RateLimit-Remaining", std::to_string(quota_left.value_or(0)));
    auto day_end = (static_cast<std::uint64_t>(now / 86400) + 1) * 86400;
    r.headers.emplace_back("X-RateLimit-Reset", std::to_string(static_cast<std::uint64_t>(std::ceil(day_end - now))));
    r.headers.emplace_back("RateLimit-Policy", "\"daily\";q=" + std::to_string(c.daily_quota) + ";w=86400");
    r.headers.emplace_back("RateLimit", "\"daily\";r=" + std::to_string(quota_left.value_or(0)) + ";t=" +
                                            std::to_string(static_cast<std::uint64_t>(std::ceil(day_end - now))));
  }
  if (app) add_app_headers(r, c, shared, c.rate_limit <= 0 && c.daily_quota == 0, app_refused);
  if (wait <= 0) {
    ok_headers = std::move(r.headers);
    return std::nullopt;
  }
  stats.rate_limited(who.tenant, app_refused);
  Reply limited = quota_hit   ? api_error(429, "quota_exceeded", "daily quota exhausted")
                  : app_refused ? api_error(429, "app_rate_limited", "too many requests for this app across all accounts: slow down")
                                : api_error(429, "rate_limited", "too many requests: slow down");
  limited.headers = std::move(r.headers);
  auto secs = static_cast<std::uint64_t>(std::ceil(wait));
  if (c.retry_after_http_date) {
    // An HTTP-date has one-second resolution: round the moment up so waiting until it suffices.
    limited.headers.emplace_back("Retry-After", http_date(static_cast<std::uint64_t>(std::ceil(now + wait))));
  } else {
    limited.headers.emplace_back("Retry-After", std::to_string(std::max<std::uint64_t>(secs, 1)));
  }
  return limited;
}

// --- faults and overload ----------------------------------------------------------------

static const FaultSpec* fault_for(const Config& c, const Request& req, std::string& key) {
  if (c.faults.empty()) return nullptr;
  auto it = c.faults.find(req.method + " " + req.path);
  if (it == c.faults.end()) it = c.faults.find(req.path);
  if (it == c.faults.end()) it = c.faults.find("*");
  if (it == c.faults.end()) return nullptr;
  key = it->first;
  return &it->second;
}

static double unit(std::uint64_t h) { return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0); }

// --- reading --------------------------------------------------------------------------------

namespace {

struct Page {
  std::vector<std::pair<std::uint64_t, Change>> items;  // index, change (version 1 = original)
  std::uint64_t next = 0;                               // next index to consider (cursor styles)
  bool more = false;
  std::uint64_t total = 0;
};

}  // namespace

// A cursor carries the next index and the time filters: "v1:next:since[:before]".
static std::string encode_cursor(std::uint64_t next, std::uint64_t since, std::uint64_t before) {
  std::string raw = "v1:" + std::to_string(next) + ":" + std::to_string(since);
  if (before) raw += ":" + std::to_string(before);
  return auth::base64url(raw);
}

static bool decode_cursor(std::string_view cursor, std::uint64_t& next, std::uint64_t& since,
                          std::uint64_t& before) {
  auto raw = unbase64(cursor, true);
  if (!raw || raw->rfind("v1:", 0) != 0) return false;
  std::string_view rest(*raw);
  rest.remove_prefix(3);
  auto colon = rest.find(':');
  if (colon == std::string_view::npos || !parse_u64(rest.substr(0, colon), next)) return false;
  rest.remove_prefix(colon + 1);
  colon = rest.find(':');
  before = 0;
  if (colon == std::string_view::npos) return parse_u64(rest, since);
  return parse_u64(rest.substr(0, colon), since) && parse_u64(rest.substr(colon + 1), before) && before > 0;
}

bool Router::handle_api(const Request& req, Reply& out) {
  const std::string& p = req.path;
  const Config& c = config_;
  State& s = *state_;
  double now = req.arrival > 0 ? req.arrival : now_seconds();

  // OAuth2 provider.
  if (p == "/oauth/token" || p == "/oauth/authorize" || p == "/oauth/revoke") {
    int tenant = -1;
    out = oauth(req, now, tenant);
    out.tenant = tenant;
    out.endpoint = (req.method == "GET" ? "GET " : req.method == "POST" ? "POST " : "OTHER ") + p;
    return true;
  }
  if (p.rfind("/v1/", 0) != 0) return false;

  // Which resource and endpoint?
  std::string_view rest = std::string_view(p).substr(4);
  auto slash = rest.find('/');
  std::string_view name = rest.substr(0, slash);
  std::string_view tail = slash == std::string_view::npos ? std::string_view{} : rest.substr(slash + 1);
  int res = resource_index(name);
  const bool hooks = name == "webhooks";
  if ((res < 0 && !hooks) || (slash != std::string_view::npos && tail.empty())) return false;
  std::string method = req.method == "HEAD" ? "GET" : req.method;
  std::string templ = "/v1/" + std::string(name) + (tail.empty() ? "" : tail == "batch" && !hooks ? "/batch" : "/{id}");
  out.endpoint = (method == "GET" || method == "POST" || (hooks && method == "DELETE") ? method : std::string("OTHER")) +
                 " " + templ;
  std::string endpoint = out.endpoint;

  // Silent overload: above the hidden capacity, answer like a struggling backend.
  if (c.overload_capacity > 0) {
    bool over = false;
    std::uint64_t n = 0;
    {
      std::lock_guard lock(s.mutex);
      auto sec = static_cast<std::int64_t>(now);
      if (sec != s.overload_second) s.overload_second = sec, s.overload_count = 0;
      n = ++s.overload_count;
      over = static_cast<double>(n) > c.overload_capacity;
    }
    if (over) {
      std::uint64_t h = hash3(c.seed, 77, n);
      bool stall = c.overload_behavior == OverloadBehavior::stall ||
                   (c.overload_behavior == OverloadBehavior::mixed && (h & 1));
      if (stall) {
        out.kind = Reply::Kind::stall;
        out.status = 0;
        stats_.fault("overload_stall");
      } else {
        static const int statuses[] = {500, 502, 503};
        int status = statuses[(h >> 8) % 3];
        Reply r = status == 502 ? Reply{} : api_error(status, "server_error", "internal error");
        if (status == 502) {
          r.status = 502;
          r.content_type = "text/html";
          r.body = "<html><body><h1>502 Bad Gateway</h1></body></html>";
        }
        r.endpoint = endpoint;
        out = std::move(r);
        stats_.fault("overload_" + std::to_string(status));
      }
      out.endpoint = endpoint;
      return true;
    }
  }

  Caller who;
  if (auto denied = check_auth(c, tenants_, s, req, who, now)) {
    out = std::move(*denied);
    out.endpoint = endpoint;
    return true;
  }
  const std::string& credential = who.credential;
  if (auto denied = check_signature(c, req, now)) {
    out = std::move(*denied);
    out.endpoint = endpoint;
    out.credential = credential;
    out.tenant = who.tenant;
    return true;
  }
  std::vector<std::pair<std::string, std::string>> limit_headers;
  if (auto limited = check_rate(c, s, stats_, who, now, limit_headers)) {
    out = std::move(*limited);
    out.endpoint = endpoint;
    out.credential = credential;
    out.tenant = who.tenant;
    return true;
  }

  // Injected faults, drawn from (seed, endpoint, request number).
  std::string fault_key;
  const FaultSpec* fault = fault_for(c, req, fault_key);
  double draw = 0, latency_draw = 0;
  if (fault) {
    std::uint64_t k;
    {
      std::lock_guard lock(s.mutex);
      k = s.fault_counters[fault_key]++;
    }
    std::uint64_t salt = std::hash<std::string>{}(fault_key);
    draw = unit(hash3(c.seed, salt, k));
    latency_draw = unit(hash3(c.seed ^ 0x5bd1e995, salt, k));
    double acc = 0;
    for (auto [status, prob] : fault->error_rate) {
      acc += prob;
      if (draw < acc) {
        out = api_error(status, "injected_fault", "injected " + std::to_string(status));
        out.endpoint = endpoint;
        out.credential = credential;
        out.tenant = who.tenant;
        out.headers.insert(out.headers.end(), limit_headers.begin(), limit_headers.end());
        stats_.fault("status_" + std::to_string(status));
        return true;
      }
    }
  }

  if (hooks) out = webhooks(req, tail, who.tenant);
  else if (method == "GET" && tail.empty()) out = list(req, res, who.tenant);
  else if (method == "GET") out = get_one(res, tail, who.tenant);
  else if (method == "POST") out = write(req, res, tail == "batch", who.tenant);
  else {
    out = api_error(405, "method_not_allowed", "use GET or POST");
    out.headers.emplace_back("Allow", "GET, POST");
  }
  out.endpoint = endpoint;
  out.credential = credential;
  out.tenant = who.tenant;
  out.headers.insert(out.headers.end(), limit_headers.begin(), limit_headers.end());

  if (fault) {
    double acc = 0;
    for (auto& [status, prob] : fault->error_rate) acc += prob;
    double lat = fault->latency_fixed_ms;
    if (fault->latency_max_ms > 0)
      lat += fault->latency_min_ms + latency_draw * (fault->latency_max_ms - fault->latency_min_ms);
    if (fault->latency_median_ms > 0) {
      // Log-normal with the given median and 99th percentile (z of p99 = 2.3263).
      double sigma = std::log(fault->latency_p99_ms / fault->latency_median_ms) / 2.3263478740408408;
      double u = std::clamp(latency_draw, 1e-12, 1 - 1e-12);
      // Inverse normal CDF by a rational approximation (Acklam), good enough for latencies.
      double q = u < 0.5 ? u : 1 - u, t = std::sqrt(-2 * std::log(q));
      double z = t - (2.515517 + 0.802853 * t + 0.010328 * t * t) / (1 + 1.432788 * t + 0.189269 * t * t + 0.001308 * t * t * t);
      if (u < 0.5) z = -z;
      lat += fault->latency_median_ms * std::exp(sigma * z);
    }
    if (lat > 0) out.delay_ms = static_cast<std::uint64_t>(std::min(lat, 600000.0));
    if (draw >= acc && draw < acc + fault->reset) {
      out.kind = Reply::Kind::reset;
      stats_.fault("reset");
    } else if (draw >= acc + fault->reset && draw < acc + fault->reset + fault->truncate) {
      out.kind = Reply::Kind::truncated;
      out.declared_length = out.body.size() + 1;
      out.body.resize(out.body.size() / 2);
      stats_.fault("truncate");
    } else if (draw >= acc + fault->reset + fault->truncate &&
               draw < acc + fault->reset + fault->truncate + fault->malformed) {
      out.body.resize(out.body.size() / 2);
      out.body += "<<broken";
      stats_.fault("malformed");
    }
    if (lat > 0) stats_.fault("latency");
  }
  return true;
}

Reply Router::get_one(int res, std::string_view id, int tenant) {
  const Tenant& t = tenants_[static_cast<std::size_t>(tenant)];
  State::Account& account = state_->accounts[static_cast<std::size_t>(tenant)];
  std::uint64_t index = 0;
  if (!parse_record_id(res, id, index) || index >= t.records)
    return api_error(404, "not_found", "no " + std::string(kResources[res].name) + " record " + std::string(id));
  Change ch{1, base_updated_ms(index, t.records)};
  if (account.has_changes) {
    std::lock_guard lock(state_->mutex);
    auto it = account.changes[res].find(index);
    if (it != account.changes[res].end()) ch = it->second;
  }
  Reply r;
  append_record(r.body, t.seed, res, index, t.records, ch.version, ch.updated_ms);
  stats_.records_served(kResources[res].name, 1, tenant);
  return r;
}

Reply Router::list(const Request& req, int res, int tenant) {
  const Config& c = config_;
  const Tenant& t = tenants_[static_cast<std::size_t>(tenant)];
  State::Account& account = state_->accounts[static_cast<std::size_t>(tenant)];
  const std::uint64_t N = t.records;
  std::uint64_t limit = c.default_page_size;
  for (const char* name : {"limit", "per_page", "page_size"}) {
    if (const std::string* v = req.query_param(name)) {
      if (!parse_u64(*v, limit) || limit == 0)
        return api_error(400, "bad_parameter", std::string(name) + " must be a positive integer");
      break;
    }
  }
  limit = std::min(limit, c.max_page_size);
  std::uint64_t since = 0;
  if (const std::string* v = req.query_param("updated_since")) {
    if (!parse_time(*v, since))
      return api_error(400, "bad_parameter", "updated_since must be an RFC 3339 time or unix seconds");
  }
  std::uint64_t before = 0;  // exclusive; 0 = no upper bound
  if (const std::string* v = req.query_param("updated_before")) {
    if (!parse_time(*v, before) || before == 0)
      return api_error(400, "bad_parameter", "updated_before must be an RFC 3339 time or unix seconds after 1970");
  }
  std::uint64_t start = 0, skip = 0, page = 1;
  const bool by_cursor = c.pagination == Pagination::cursor || c.pagination == Pagination::link ||
                         c.pagination == Pagination::next_url;
  if (by_cursor) {
    if (const std::string* v = req.query_param("cursor"); v && !v->empty()) {
      std::uint64_t csince = 0, cbefore = 0;
      if (!decode_cursor(*v, start, csince, cbefore) || start > N)
        return api_error(400, "bad_cursor", "cursor is not valid");
      since = csince;
      before = cbefore;
    }
  } else if (c.pagination == Pagination::offset) {
    if (const std::string* v = req.query_param("offset"); v && !parse_u64(*v, skip))
      return api_error(400, "bad_parameter", "offset must be a non-negative integer");
  } else {
    if (const std::string* v = req.query_param("page"); v && (!parse_u64(*v, page) || page == 0))
      return api_error(400, "bad_parameter", "page must be a positive integer");
    skip = (page - 1) * limit;
  }

  // Matching records in id order: changed records from before the base range, then the base
  // range [first, last) with its changes applied. A change only moves updated_at forward, so
  // with an upper bound the base range loses the records changed since (`excluded`), and no
  // record past it can match.
  std::uint64_t first = since ? first_index_since(since, N) : 0;
  std::uint64_t last = before ? std::max(first, first_index_since(before, N)) : N;
  std::vector<std::pair<std::uint64_t, Change>> early;  // changed, base < since, updated in range
  std::vector<std::uint64_t> excluded;                  // in [first, last), changed to >= before
  std::map<std::uint64_t, Change> changed_in_range;
  // Where a page starts in the base range: an index (cursor) or the k-th match (offset).
  auto base_start = [&] {
    if (by_cursor) return std::max(first, start);
    std::uint64_t i = skip > early.size() ? first + (skip - early.size()) : first;
    for (std::uint64_t e : excluded) {
      if (e > i) break;
      ++i;
    }
    return i;
  };
  Page pg;
  {
    std::unique_lock lock(state_->mutex, std::defer_lock);
    if (account.has_changes) {
      lock.lock();
      const auto& changes = account.changes[res];
      if (since)
        for (auto it = changes.begin(); it != changes.end() && it->first < first; ++it)
          if (it->second.updated_ms >= since && (!before || it->second.updated_ms < before))
            early.emplace_back(it->first, it->second);
      if (before)
        for (auto it = changes.lower_bound(first); it != changes.end() && it->first < last; ++it)
          if (it->second.updated_ms >= before) excluded.push_back(it->first);
      // Changes inside the window this page can reach.
      const std::uint64_t from = base_start();
      const std::uint64_t to = from + limit + excluded.size();
      for (auto it = changes.lower_bound(from); it != changes.end() && it->first < to; ++it)
        changed_in_range.emplace(it->first, it->second);
    }
  }
  pg.total = early.size() + (last - first) - excluded.size();
  auto change_of = [&](std::uint64_t i) {
    auto it = changed_in_range.find(i);
    return it != changed_in_range.end() ? it->second : Change{1, base_updated_ms(i, N)};
  };
  auto is_excluded = [&](std::uint64_t i) { return std::binary_search(excluded.begin(), excluded.end(), i); };
  // Base records from index `from` up to the page's limit.
  auto take_base = [&](std::uint64_t from) {
    for (std::uint64_t i = from; i < last && pg.items.size() < limit; ++i)
      if (!is_excluded(i)) pg.items.emplace_back(i, change_of(i));
  };
  if (by_cursor) {
    for (auto& e : early)
      if (e.first >= start && pg.items.size() < limit) pg.items.push_back(e);
    take_base(base_start());
    pg.next = pg.items.empty() ? N : pg.items.back().first + 1;
    bool more = false;
    for (auto& e : early) more |= e.first >= pg.next;
    const std::uint64_t rest = std::max(pg.next, first);
    if (rest < last) {
      const auto gone = excluded.end() - std::lower_bound(excluded.begin(), excluded.end(), rest);
      more |= last - rest > static_cast<std::uint64_t>(gone);
    }
    pg.more = more;
  } else {
    for (std::size_t e = static_cast<std::size_t>(std::min<std::uint64_t>(skip, early.size()));
         e < early.size() && pg.items.size() < limit; ++e)
      pg.items.push_back(early[e]);
    take_base(base_start());
    pg.more = skip + pg.items.size() < pg.total;
  }

  Reply r;
  std::string& b = r.body;
  b.reserve(64 + pg.items.size() * 450);
  b += "{\"data\":[";
  for (std::size_t i = 0; i < pg.items.size(); ++i) {
    if (i) b += ',';
    append_record(b, t.seed, res, pg.items[i].first, N, pg.items[i].second.version, pg.items[i].second.updated_ms);
  }
  b += ']';
  std::string host(req.header("host"));
  if (host.empty()) host = "127.0.0.1";
  std::string base = "http://" + host + "/v1/" + std::string(kResources[res].name) + "?limit=" + std::to_string(limit);
  std::string cursor = pg.more ? encode_cursor(pg.next, since, before) : std::string();
  switch (c.pagination) {
    case Pagination::cursor:
      b += ",\"meta\":{\"next_cursor\":";
      b += pg.more ? "\"" + cursor + "\"" : "null";
      b += ",\"has_more\":";
      b += pg.more ? "true" : "false";
      b += ",\"limit\":" + std::to_string(limit) + "}}";
      break;
    case Pagination::next_url:
      b += ",\"next\":";
      b += pg.more ? "\"" + base + "&cursor=" + cursor + "\"" : "null";
      b += "}";
      break;
    case Pagination::link:
      b += "}";
      if (pg.more) r.headers.emplace_back("Link", "<" + base + "&cursor=" + cursor + ">; rel=\"next\"");
      break;
    case Pagination::offset:
      b += ",\"meta\":{\"offset\":" + std::to_string(skip) + ",\"limit\":" + std::to_string(limit) +
           ",\"total\":" + std::to_string(pg.total) + "}}";
      break;
    case Pagination::page: {
      std::uint64_t pages = (pg.total + limit - 1) / limit;
      b += ",\"meta\":{\"page\":" + std::to_string(page) + ",\"per_page\":" + std::to_string(limit) +
           ",\"total_pages\":" + std::to_string(pages) + ",\"total\":" + std::to_string(pg.total) + "}}";
      break;
    }
  }
  stats_.records_served(kResources[res].name, pg.items.size(), tenant);
  return r;
}

// --- writing ----------------------------------------------------------------------------

Reply Router::write(const Request& req, int res, bool batch, int tenant) {
  auto& idempotency = state_->accounts[static_cast<std::size_t>(tenant)].idempotency;
  auto name = kResources[res].name;
  // simdjson reads the body: an import only needs each record's id (the tree of maps a full
  // parse builds cost more than everything else an import does).
  thread_local simdjson::dom::parser parser;
  simdjson::dom::element body;
  if (parser.parse(req.body).get(body)) return api_error(400, "bad_json", "request body is not valid JSON");
  std::vector<simdjson::dom::element> records;
  if (batch) {
    simdjson::dom::element arr = body;
    if (body.is_object()) {
      simdjson::dom::element inner;
      if (!body["records"].get(inner) || !body["data"].get(inner)) arr = inner;
    }
    if (!arr.is_array()) return api_error(422, "bad_batch", "a batch is a JSON array or {\"records\": [...]}");
    simdjson::dom::array items = arr.get_array().value_unsafe();
    if (items.size() > 1000) return api_error(413, "batch_too_large", "at most 1000 records per batch");
    for (simdjson::dom::element r : items) records.push_back(r);
  } else {
    records.push_back(body);
  }
  for (const auto& r : records)
    if (!r.is_object()) return api_error(422, "bad_record", "each record must be a JSON object");

  std::string key(req.header("idempotency-key"));
  std::string scope = std::string(name) + (batch ? "/batch " : " ") + key;
  std::string body_hash = sha256(req.body);
  if (!key.empty()) {
    std::lock_guard lock(state_->mutex);
    auto it = idempotency.find(scope);
    if (it != idempotency.end()) {
      if (it->second.body_hash != body_hash)
        return api_error(422, "idempotency_key_reused", "Idempotency-Key was used with a different request body");
      Reply replay = it->second.reply;
      replay.headers.emplace_back("Idempotent-Replayed", "true");
      stats_.idempotent_replay(name, tenant);
      return replay;
    }
  }
  json ids = json::array();
  std::uint64_t fresh = 0, dup = 0;
  bool hooked = false;  // a created record is announced only to a tenant with webhooks
  if (send_webhook_) {
    std::lock_guard lock(state_->mutex);
    hooked = !state_->accounts[static_cast<std::size_t>(tenant)].hooks.empty();
  }
  for (const auto& r : records) {
    std::string id;
    for (const char* field : {"id", "external_id"}) {
      simdjson::dom::element v;
      if (!r[field].get(v)) {
        std::string_view text;
        id = v.get_string().get(text) ? simdjson::minify(v) : std::string(text);
        break;
      }
    }
    // A record without an id is named by its content, keys sorted (as the tree of maps dumps it).
    json tree;
    const bool need_tree = id.empty() || hooked;
    if (need_tree) tree = json::parse(simdjson::minify(r));
    if (id.empty()) id = "sha256:" + hex(sha256(tree.dump())).substr(0, 24);
    if (stats_.record_received(name, id, tenant)) {
      ++fresh;
      if (hooked) emit(tenant, std::string(name) + ".created", tree.dump(-1, ' ', false, json::error_handler_t::replace));
    } else {
      ++dup;
    }
    ids.push_back(id);
  }
  Reply out = batch ? json_reply(200, json{{"received", records.size()}, {"created", fresh}, {"duplicates", dup}, {"ids", ids}})
                    : json_reply(dup ? 200 : 201, json{{"id", ids[0]}, {"created", fresh == 1}, {"duplicate", dup == 1}});
  if (!key.empty()) {
    std::lock_guard lock(state_->mutex);
    idempotency.emplace(scope, Stored{body_hash, out});
  }
  return out;
}

// --- OAuth2 provider --------------------------------------------------------------------

Reply Router::oauth(const Request& req, double now, int& tenant) {
  const Config& c = config_;
  State& s = *state_;
  auto oauth_error = [](int status, std::string_view error, std::string_view description) {
    Reply r = json_reply(status, json{{"error", error}, {"error_description", description}});
    r.headers.emplace_back("Cache-Control", "no-store");
    if (status == 401) r.headers.emplace_back("WWW-Authenticate", "Basic realm=\"sandbox-oauth\"");
    return r;
  };

  if (req.path == "/oauth/authorize") {
    if (req.method != "GET" && req.method != "POST") return api_error(405, "method_not_allowed", "use GET");
    auto q = [&](const char* n) {
      const std::string* v = req.query_param(n);
      return v ? *v : std::string();
    };
    std::string redirect = q("redirect_uri");
    tenant = State::find(s.client_ids, q("client_id"));
    if (tenant < 0) return oauth_error(400, "invalid_client", "unknown client_id");
    if (redirect.empty() || redirect.find_first_of("\r\n") != std::string::npos ||
        (redirect.rfind("http://", 0) != 0 && redirect.rfind("https://", 0) != 0))
      return oauth_error(400, "invalid_request", "redirect_uri must be an http(s) URL");
    std::string sep = redirect.find('?') == std::string::npos ? "?" : "&";
    Reply r;
    r.status = 302;
    r.content_type.clear();
    std::string location;
    std::string challenge = q("code_challenge");
    std::string method = q("code_challenge_method");
    if (q("response_type") != "code") {
      location = redirect + sep + "error=unsupported_response_type";
    } else if (!challenge.empty() && method != "S256") {
      location = redirect + sep + "error=invalid_request&error_description=code_challenge_method%20must%20be%20S256";
    } else {
      std::lock_guard lock(s.mutex);
      std::string code = s.new_token(c.seed, "code_");
      s.codes[code] = AuthCode{q("client_id"), redirect, challenge, now + 60, tenant};
      location = redirect + sep + "code=" + code;
    }
    if (!q("state").empty()) location += "&state=" + http::percent_encode(q("state"));
    r.headers.emplace_back("Location", location);
    return r;
  }
  if (req.method != "POST") return api_error(405, "method_not_allowed", "use POST");
  auto params = body_params(req);
  auto param = [&](const char* n) {
    auto it = params.find(n);
    return it == params.end() ? std::string() : it->second;
  };
  // Client authentication: HTTP Basic or client_id/client_secret in the body.
  std::string client_id = param("client_id"), client_secret = param("client_secret");
  auto h = req.header("authorization");
  if (h.size() > 6 && to_lower(h.substr(0, 6)) == "basic ") {
    if (auto decoded = unbase64(h.substr(6), false)) {
      auto colon = decoded->find(':');
      if (colon != std::string::npos) {
        client_id = percent_decode(decoded->substr(0, colon), true);
        client_secret = percent_decode(decoded->substr(colon + 1), true);
      }
    }
  }

  if (req.path == "/oauth/revoke") {
    std::string token = param("token");
    std::lock_guard lock(s.mutex);
    bool found = false;
    if (auto it = s.tokens.find(token); it != s.tokens.end()) it->second.revoked = found = true, tenant = it->second.tenant;
    if (auto it = s.refresh_tokens.find(token); it != s.refresh_tokens.end())
      it->second.revoked = found = true, tenant = it->second.tenant;
    if (found) stats_.token_revoked(tenant);
    Reply r = json_reply(200, json::object());
    return r;
  }

  std::string grant = param("grant_type");
  // The client names its tenant; the secret proves it.
  const int client_tenant = State::find(s.client_ids, client_id);
  const bool client_ok = client_tenant >= 0 &&
                         auth::constant_time_equal(client_secret, tenants_[static_cast<std::size_t>(client_tenant)].client_secret);
  if (client_ok) tenant = client_tenant;
  // Checked under the lock revoke_tokens takes: a token is refused, or issued and then revoked.
  auto issue = [&](bool with_refresh, std::string_view grant_name) {
    std::lock_guard lock(s.mutex);
    if (s.accounts[static_cast<std::size_t>(tenant)].access_revoked)
      return oauth_error(400, "invalid_grant", "access to this account was revoked: the app must be authorized again");
    if (grant_name == "refresh_token") stats_.token_refreshed(tenant);
    stats_.token_issued(grant_name, tenant);
    const std::string& issued_to = tenants_[static_cast<std::size_t>(tenant)].client_id;
    std::string access = s.new_token(c.seed, "at_");
    s.tokens[access] = Token{issued_to, now + c.token_lifetime, false, tenant};
    json body = {{"access_token", access}, {"token_type", "Bearer"}, {"expires_in", c.token_lifetime}};
    if (c.token_lifetime == std::floor(c.token_lifetime)) body["expires_in"] = static_cast<std::uint64_t>(c.token_lifetime);
    if (with_refresh) {
      std::string refresh = s.new_token(c.seed, "rt_");
      s.refresh_tokens[refresh] = RefreshToken{issued_to, false, false, tenant};
      body["refresh_token"] = refresh;
    }
    Reply r = json_reply(200, body);
    r.headers.emplace_back("Cache-Control", "no-store");
    return r;
  };

  if (grant == "client_credentials") {
    if (!client_ok) return oauth_error(401, "invalid_client", "wrong client_id or client_secret");
    return issue(false, "client_credentials");
  }
  if (grant == "authorization_code") {
    std::string code = param("code"), verifier = param("code_verifier");
    AuthCode ac;
    {
      std::lock_guard lock(s.mutex);
      auto it = s.codes.find(code);
      if (it == s.codes.end()) return oauth_error(400, "invalid_grant", "unknown or used authorization code");
      ac = it->second;
      s.codes.erase(it);  // single use
    }
    if (client_id != ac.client_id) return oauth_error(401, "invalid_client", "code was issued to another client");
    tenant = ac.tenant;
    if (now > ac.expires_at) return oauth_error(400, "invalid_grant", "authorization code expired");
    if (param("redirect_uri") != ac.redirect_uri) return oauth_error(400, "invalid_grant", "redirect_uri does not match");
    if (!ac.challenge.empty()) {
      if (verifier.size() < 43 || verifier.size() > 128) return oauth_error(400, "invalid_grant", "code_verifier must be 43-128 characters");
      if (auth::base64url(sha256(verifier)) != ac.challenge) return oauth_error(400, "invalid_grant", "PKCE verification failed");
    } else if (!client_ok) {
      return oauth_error(401, "invalid_client", "wrong client_secret (or use PKCE)");
    }
    // The customer authorized the app again: its access is back.
    s.accounts[static_cast<std::size_t>(tenant)].access_revoked = false;
    return issue(true, "authorization_code");
  }
  if (grant == "refresh_token") {
    std::string refresh = param("refresh_token");
    {
      std::lock_guard lock(s.mutex);
      auto it = s.refresh_tokens.find(refresh);
      if (it == s.refresh_tokens.end() || it->second.revoked)
        return oauth_error(400, "invalid_grant", "unknown or revoked refresh token");
      if (!client_id.empty() && client_id != it->second.client_id)
        return oauth_error(401, "invalid_client", "refresh token belongs to another client");
      tenant = it->second.tenant;
      if (it->second.used) return oauth_error(400, "invalid_grant", "refresh token was already used (rotation)");
      if (c.rotate_refresh_tokens) it->second.used = true;
    }
    if (c.rotate_refresh_tokens) return issue(true, "refresh_token");
    Reply r = issue(false, "refresh_token");
    if (r.status != 200) return r;
    auto body = json::parse(r.body);
    body["refresh_token"] = refresh;
    r.body = body.dump();
    return r;
  }
  return oauth_error(400, "unsupported_grant_type",
                     "grant_type must be client_credentials, authorization_code or refresh_token");
}

}  // namespace isthmus::sandbox
