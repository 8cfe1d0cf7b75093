// The API surface of the sandbox: paginated records, writes with idempotency, auth incl. an
// OAuth2 provider, rate limits with their headers, silent overload and injected faults.
// Shared state sits behind one mutex: every critical section is short and allocation-light.
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

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
#include <tuple>

#include "sandbox/records.hpp"
#include "sandbox/router.hpp"
#include "sandbox/text.hpp"

namespace isthmus::sandbox {

using nlohmann::json;

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

std::string base64(std::string_view in, bool url) {
  std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(in.data()),
                          static_cast<int>(in.size()));
  out.resize(static_cast<std::size_t>(n));
  if (url) {
    for (auto& c : out) c = c == '+' ? '-' : c == '/' ? '_' : c;
    while (!out.empty() && out.back() == '=') out.pop_back();
  }
  return out;
}

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

std::string sha256(std::string_view in) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(in.data()), in.size(), md);
  return std::string(reinterpret_cast<char*>(md), sizeof md);
}

std::string hmac_sha256(std::string_view key, std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(data.data()),
       data.size(), md, &len);
  return std::string(reinterpret_cast<char*>(md), len);
}

std::string hex(std::string_view in) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : in) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

bool equal_constant_time(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
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
};
struct RefreshToken {
  std::string client_id;
  bool used = false;
  bool revoked = false;
};
struct AuthCode {
  std::string client_id, redirect_uri, challenge;
  double expires_at = 0;
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
  std::mutex mutex;
  std::map<std::uint64_t, Change> changes[kResourceCount];  // index -> latest change
  std::atomic<bool> has_changes{false};
  double update_carry = 0;
  std::uint64_t update_count = 0;
  std::uint64_t last_change_ms = 0;

  std::map<std::string, Stored, std::less<>> idempotency;
  std::map<std::string, Token, std::less<>> tokens;
  std::map<std::string, RefreshToken, std::less<>> refresh_tokens;
  std::map<std::string, AuthCode, std::less<>> codes;
  std::uint64_t token_counter = 0;

  std::map<std::string, Gcra, std::less<>> limits;
  std::map<std::string, Quota, std::less<>> quotas;
  std::int64_t overload_second = 0;
  std::uint64_t overload_count = 0;
  std::map<std::string, std::uint64_t, std::less<>> fault_counters;

  struct Hook {
    std::string id, url, host, path, secret;  // secret: raw bytes
    std::uint16_t port = 80;
  };
  std::vector<Hook> hooks;
  std::uint64_t hook_counter = 0, event_counter = 0;

  std::string new_token(std::uint64_t seed, std::string_view prefix) {
    return std::string(prefix) + hex(sha256(std::to_string(seed) + ":" + std::to_string(++token_counter) + ":" +
                                            std::to_string(now_seconds())))
                                     .substr(0, 32);
  }
};

void Router::init_state() { state_ = std::make_shared<State>(); }

// --- time-driven record changes -------------------------------------------------------------

void Router::tick(double now) {
  if (config_.updates_per_second <= 0 || config_.records == 0) return;
  std::vector<std::tuple<int, std::uint64_t, Change>> changed;
  {
  std::lock_guard lock(state_->mutex);
  state_->update_carry += config_.updates_per_second;
  auto n = static_cast<std::uint64_t>(state_->update_carry);
  state_->update_carry -= static_cast<double>(n);
  n = std::min<std::uint64_t>(n, 100000);
  std::uint64_t ms = std::max<std::uint64_t>(static_cast<std::uint64_t>(now * 1000.0), state_->last_change_ms + 1);
  state_->last_change_ms = ms;
  for (std::uint64_t k = 0; k < n; ++k) {
    std::uint64_t u = state_->update_count++;
    int res = static_cast<int>(u % kResourceCount);
    std::uint64_t index = hash3(config_.seed, 1000 + static_cast<std::uint64_t>(res), u) % config_.records;
    auto& c = state_->changes[res][index];
    c.version = c.version + 1;
    c.updated_ms = ms;
    if (!state_->hooks.empty() && changed.size() < 1000) changed.emplace_back(res, index, c);
  }
  if (n) state_->has_changes = true;
  }
  for (auto& [res, index, c] : changed) {
    std::string data;
    append_record(data, config_.seed, res, index, config_.records, c.version, c.updated_ms);
    emit(std::string(kResources[res].name) + ".updated", data);
  }
}

void Router::emit(std::string_view type, const std::string& data_json) {
  if (!send_webhook_) return;
  std::vector<State::Hook> hooks;
  std::uint64_t event = 0;
  {
    std::lock_guard lock(state_->mutex);
    if (state_->hooks.empty()) return;
    hooks = state_->hooks;
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
                 {"webhook-signature", "v1," + base64(hmac_sha256(h.secret, id + "." + ts + "." + body), false)},
                 {"Content-Type", "application/json"}};
    send_webhook_(std::move(d));
  }
}

Reply Router::webhooks(const Request& req, std::string_view tail) {
  State& s = *state_;
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
      s.hooks.push_back(h);
    }
    return json_reply(201, json{{"id", h.id}, {"url", url}, {"secret", "whsec_" + base64(h.secret, false)}});
  }
  if (req.method == "GET" && tail.empty()) {
    json list = json::array();
    std::lock_guard lock(s.mutex);
    for (const auto& h : s.hooks) list.push_back({{"id", h.id}, {"url", h.url}});
    return json_reply(200, json{{"data", list}});
  }
  if (req.method == "DELETE" && !tail.empty()) {
    std::lock_guard lock(s.mutex);
    auto before = s.hooks.size();
    std::erase_if(s.hooks, [&](const State::Hook& h) { return h.id == tail; });
    if (s.hooks.size() == before) return api_error(404, "not_found", "no such webhook");
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

// Returns the 401 when the request is not authenticated; sets `credential` otherwise.
static std::optional<Reply> check_auth(const Config& c, Router::State& s, const Request& req, std::string& credential,
                                       double now) {
  switch (c.auth) {
    case AuthMode::none:
      credential = "anonymous";
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
      if (!equal_constant_time(key, c.api_key)) return unauthorized(challenge, "wrong API key");
      credential = "api_key:" + c.api_key;
      return std::nullopt;
    }
    case AuthMode::basic: {
      auto h = req.header("authorization");
      const char* challenge = "Basic realm=\"sandbox\", charset=\"UTF-8\"";
      if (h.size() < 6 || to_lower(h.substr(0, 6)) != "basic ") return unauthorized(challenge, "missing Basic credentials");
      auto decoded = unbase64(h.substr(6), false);
      if (!decoded || !equal_constant_time(*decoded, c.username + ":" + c.password))
        return unauthorized(challenge, "wrong username or password");
      credential = "basic:" + c.username;
      return std::nullopt;
    }
    case AuthMode::bearer:
    case AuthMode::oauth2: {
      auto h = req.header("authorization");
      if (h.size() < 7 || to_lower(h.substr(0, 7)) != "bearer ")
        return unauthorized("Bearer realm=\"sandbox\"", "missing bearer token");
      std::string_view token = h.substr(7);
      if (c.auth == AuthMode::bearer) {
        if (!equal_constant_time(token, c.bearer_token))
          return unauthorized("Bearer realm=\"sandbox\", error=\"invalid_token\", error_description=\"unknown token\"",
                              "wrong bearer token");
        credential = "bearer";
        return std::nullopt;
      }
      std::lock_guard lock(s.mutex);
      auto it = s.tokens.find(token);
      if (it == s.tokens.end() || it->second.revoked)
        return unauthorized("Bearer realm=\"sandbox\", error=\"invalid_token\", error_description=\"unknown or revoked token\"",
                            "unknown or revoked access token");
      if (now >= it->second.expires_at)
        return unauthorized("Bearer realm=\"sandbox\", error=\"invalid_token\", error_description=\"token expired\"",
                            "access token expired");
      credential = "client:" + it->second.client_id;
      return std::nullopt;
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
      "sha256=" + hex(hmac_sha256(c.signing_secret, std::string(ts) + "." + req.method + "." + req.target + "." + req.body));
  if (!equal_constant_time(sig, expected)) return unauthorized(challenge, "signature does not match");
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

// GCRA plus the daily quota. Returns a 429 when the credential must wait.
static std::optional<Reply> check_rate(const Config& c, Router::State& s, Stats& stats, const std::string& credential,
                                       double now, std::vector<std::pair<std::string, std::string>>& ok_headers) {
  if (c.rate_limit <= 0 && c.daily_quota == 0) return std::nullopt;
  std::lock_guard lock(s.mutex);
  double wait = 0;
  std::uint64_t remaining = 0;
  double reset = 0;
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
  if (c.rate_limit > 0) {
    double interval = 1.0 / c.rate_limit;
    double tolerance = interval * static_cast<double>(c.burst - 1);
    auto& g = s.limits[credential];
    double tat = std::max(g.tat, now);
    if (!quota_hit && tat - now > tolerance + 1e-9) {
      wait = tat - now - tolerance;
      remaining = 0;
      reset = wait;
    } else if (!quota_hit) {
      g.tat = tat + interval;
      // In calls: how far the bucket is from refusing; wall-clock doubles, so allow for rounding.
      const double exact = (tolerance - (g.tat - now)) / interval;
      const double room = exact + 1e-4;
      remaining = room < 0 ? 0 : std::min<std::uint64_t>(static_cast<std::uint64_t>(std::floor(room)) + 1, c.burst);
      // Until one more call may go: the next whole unit of room.
      reset = remaining >= c.burst ? 0 : std::max(0.0, (std::floor(room) + 1 - exact) * interval);
    } else {
      reset = wait;
    }
  }
  if (wait <= 0 && c.daily_quota) {
    auto& q = s.quotas[credential];
    ++q.used;
    quota_left = c.daily_quota - q.used;
  }
  Reply r;
  if (c.rate_limit > 0) add_limit_headers(r, c, remaining, reset, quota_left);
  else {
    r.headers.emplace_back("X-RateLimit-Limit", std::to_string(c.daily_quota));
    r.headers.emplace_back("X-RateLimit-Remaining", std::to_string(quota_left.value_or(0)));
    auto day_end = (static_cast<std::uint64_t>(now / 86400) + 1) * 86400;
    r.headers.emplace_back("X-RateLimit-Reset", std::to_string(static_cast<std::uint64_t>(std::ceil(day_end - now))));
    r.headers.emplace_back("RateLimit-Policy", "\"daily\";q=" + std::to_string(c.daily_quota) + ";w=86400");
    r.headers.emplace_back("RateLimit", "\"daily\";r=" + std::to_string(quota_left.value_or(0)) + ";t=" +
                                            std::to_string(static_cast<std::uint64_t>(std::ceil(day_end - now))));
  }
  if (wait <= 0) {
    ok_headers = std::move(r.headers);
    return std::nullopt;
  }
  stats.rate_limited();
  Reply limited = api_error(429, quota_hit ? "quota_exceeded" : "rate_limited",
                            quota_hit ? "daily quota exhausted" : "too many requests: slow down");
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
  return base64(raw, true);
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
    out = oauth(req, now);
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

  std::string credential;
  if (auto denied = check_auth(c, s, req, credential, now)) {
    out = std::move(*denied);
    out.endpoint = endpoint;
    return true;
  }
  if (auto denied = check_signature(c, req, now)) {
    out = std::move(*denied);
    out.endpoint = endpoint;
    out.credential = credential;
    return true;
  }
  std::vector<std::pair<std::string, std::string>> limit_headers;
  if (auto limited = check_rate(c, s, stats_, credential, now, limit_headers)) {
    out = std::move(*limited);
    out.endpoint = endpoint;
    out.credential = credential;
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
        out.headers.insert(out.headers.end(), limit_headers.begin(), limit_headers.end());
        stats_.fault("status_" + std::to_string(status));
        return true;
      }
    }
  }

  if (hooks) out = webhooks(req, tail);
  else if (method == "GET" && tail.empty()) out = list(req, res);
  else if (method == "GET") out = get_one(res, tail);
  else if (method == "POST") out = write(req, res, tail == "batch");
  else {
    out = api_error(405, "method_not_allowed", "use GET or POST");
    out.headers.emplace_back("Allow", "GET, POST");
  }
  out.endpoint = endpoint;
  out.credential = credential;
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

Reply Router::get_one(int res, std::string_view id) {
  std::uint64_t index = 0;
  if (!parse_record_id(res, id, index) || index >= config_.records)
    return api_error(404, "not_found", "no " + std::string(kResources[res].name) + " record " + std::string(id));
  Change ch{1, base_updated_ms(index, config_.records)};
  if (state_->has_changes) {
    std::lock_guard lock(state_->mutex);
    auto it = state_->changes[res].find(index);
    if (it != state_->changes[res].end()) ch = it->second;
  }
  Reply r;
  append_record(r.body, config_.seed, res, index, config_.records, ch.version, ch.updated_ms);
  stats_.records_served(kResources[res].name, 1);
  return r;
}

Reply Router::list(const Request& req, int res) {
  const Config& c = config_;
  const std::uint64_t N = c.records;
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
    if (state_->has_changes) {
      lock.lock();
      const auto& changes = state_->changes[res];
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
    append_record(b, c.seed, res, pg.items[i].first, N, pg.items[i].second.version, pg.items[i].second.updated_ms);
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
  stats_.records_served(kResources[res].name, pg.items.size());
  return r;
}

// --- writing ----------------------------------------------------------------------------

Reply Router::write(const Request& req, int res, bool batch) {
  auto name = kResources[res].name;
  json body = json::parse(req.body, nullptr, false);
  if (body.is_discarded()) return api_error(400, "bad_json", "request body is not valid JSON");
  std::vector<const json*> records;
  if (batch) {
    const json* arr = &body;
    if (body.is_object()) {
      if (body.contains("records")) arr = &body["records"];
      else if (body.contains("data")) arr = &body["data"];
    }
    if (!arr->is_array()) return api_error(422, "bad_batch", "a batch is a JSON array or {\"records\": [...]}");
    if (arr->size() > 1000) return api_error(413, "batch_too_large", "at most 1000 records per batch");
    for (const auto& r : *arr) records.push_back(&r);
  } else {
    records.push_back(&body);
  }
  for (const json* r : records)
    if (!r->is_object()) return api_error(422, "bad_record", "each record must be a JSON object");

  std::string key(req.header("idempotency-key"));
  std::string scope = std::string(name) + (batch ? "/batch " : " ") + key;
  std::string body_hash = sha256(req.body);
  if (!key.empty()) {
    std::lock_guard lock(state_->mutex);
    auto it = state_->idempotency.find(scope);
    if (it != state_->idempotency.end()) {
      if (it->second.body_hash != body_hash)
        return api_error(422, "idempotency_key_reused", "Idempotency-Key was used with a different request body");
      Reply replay = it->second.reply;
      replay.headers.emplace_back("Idempotent-Replayed", "true");
      stats_.idempotent_replay(name);
      return replay;
    }
  }
  json ids = json::array();
  std::uint64_t fresh = 0, dup = 0;
  for (const json* r : records) {
    std::string id;
    for (const char* field : {"id", "external_id"}) {
      if (r->contains(field)) {
        const json& v = (*r)[field];
        id = v.is_string() ? v.get<std::string>() : v.dump();
        break;
      }
    }
    if (id.empty()) id = "sha256:" + hex(sha256(r->dump())).substr(0, 24);
    if (stats_.record_received(name, id)) {
      ++fresh;
      emit(std::string(name) + ".created", r->dump(-1, ' ', false, json::error_handler_t::replace));
    } else {
      ++dup;
    }
    ids.push_back(id);
  }
  Reply out = batch ? json_reply(200, json{{"received", records.size()}, {"created", fresh}, {"duplicates", dup}, {"ids", ids}})
                    : json_reply(dup ? 200 : 201, json{{"id", ids[0]}, {"created", fresh == 1}, {"duplicate", dup == 1}});
  if (!key.empty()) {
    std::lock_guard lock(state_->mutex);
    state_->idempotency.emplace(scope, Stored{body_hash, out});
  }
  return out;
}

// --- OAuth2 provider --------------------------------------------------------------------

Reply Router::oauth(const Request& req, double now) {
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
    if (q("client_id") != c.client_id) return oauth_error(400, "invalid_client", "unknown client_id");
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
      s.codes[code] = AuthCode{c.client_id, redirect, challenge, now + 60};
      location = redirect + sep + "code=" + code;
    }
    if (!q("state").empty()) location += "&state=" + percent_encode(q("state"));
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
    if (auto it = s.tokens.find(token); it != s.tokens.end()) it->second.revoked = found = true;
    if (auto it = s.refresh_tokens.find(token); it != s.refresh_tokens.end()) it->second.revoked = found = true;
    if (found) stats_.token_revoked();
    Reply r = json_reply(200, json::object());
    return r;
  }

  std::string grant = param("grant_type");
  bool client_ok = client_id == c.client_id && equal_constant_time(client_secret, c.client_secret);
  auto issue = [&](bool with_refresh) {
    std::lock_guard lock(s.mutex);
    std::string access = s.new_token(c.seed, "at_");
    s.tokens[access] = Token{c.client_id, now + c.token_lifetime, false};
    json body = {{"access_token", access}, {"token_type", "Bearer"}, {"expires_in", c.token_lifetime}};
    if (c.token_lifetime == std::floor(c.token_lifetime)) body["expires_in"] = static_cast<std::uint64_t>(c.token_lifetime);
    if (with_refresh) {
      std::string refresh = s.new_token(c.seed, "rt_");
      s.refresh_tokens[refresh] = RefreshToken{c.client_id, false, false};
      body["refresh_token"] = refresh;
    }
    Reply r = json_reply(200, body);
    r.headers.emplace_back("Cache-Control", "no-store");
    return r;
  };

  if (grant == "client_credentials") {
    if (!client_ok) return oauth_error(401, "invalid_client", "wrong client_id or client_secret");
    stats_.token_issued("client_credentials");
    return issue(false);
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
    if (now > ac.expires_at) return oauth_error(400, "invalid_grant", "authorization code expired");
    if (client_id != ac.client_id) return oauth_error(401, "invalid_client", "code was issued to another client");
    if (param("redirect_uri") != ac.redirect_uri) return oauth_error(400, "invalid_grant", "redirect_uri does not match");
    if (!ac.challenge.empty()) {
      if (verifier.size() < 43 || verifier.size() > 128) return oauth_error(400, "invalid_grant", "code_verifier must be 43-128 characters");
      if (base64(sha256(verifier), true) != ac.challenge) return oauth_error(400, "invalid_grant", "PKCE verification failed");
    } else if (!client_ok) {
      return oauth_error(401, "invalid_client", "wrong client_secret (or use PKCE)");
    }
    stats_.token_issued("authorization_code");
    return issue(true);
  }
  if (grant == "refresh_token") {
    std::string refresh = param("refresh_token");
    {
      std::lock_guard lock(s.mutex);
      auto it = s.refresh_tokens.find(refresh);
      if (it == s.refresh_tokens.end() || it->second.revoked)
        return oauth_error(400, "invalid_grant", "unknown or revoked refresh token");
      if (it->second.used) return oauth_error(400, "invalid_grant", "refresh token was already used (rotation)");
      if (!client_id.empty() && client_id != it->second.client_id)
        return oauth_error(401, "invalid_client", "refresh token belongs to another client");
      if (c.rotate_refresh_tokens) it->second.used = true;
    }
    stats_.token_refreshed();
    stats_.token_issued("refresh_token");
    if (c.rotate_refresh_tokens) return issue(true);
    Reply r = issue(false);
    auto body = json::parse(r.body);
    body["refresh_token"] = refresh;
    r.body = body.dump();
    return r;
  }
  return oauth_error(400, "unsupported_grant_type",
                     "grant_type must be client_credentials, authorization_code or refresh_token");
}

}  // namespace isthmus::sandbox
