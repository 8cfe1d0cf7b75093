#include "isthmus/auth/oauth2.hpp"

#include <algorithm>
#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>

#include "auth/url_parts.hpp"
#include "isthmus/auth/crypto.hpp"
#include "isthmus/error.hpp"
#include "isthmus/http/url.hpp"

namespace isthmus::auth {

namespace {

double system_clock_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

const char* grant_name(Grant g) {
  switch (g) {
    case Grant::client_credentials: return "client_credentials";
    case Grant::refresh_token: return "refresh_token";
    case Grant::authorization_code: return "authorization_code";
    case Grant::jwt_bearer: return "urn:ietf:params:oauth:grant-type:jwt-bearer";
  }
  return "";
}

void add_param(std::string& form, std::string_view name, std::string_view value) {
  if (!form.empty()) form += '&';
  form += percent_encode(name) + "=" + percent_encode(value);
}

std::string header_value(const TokenRecord& r) {
  // RFC 6750 servers compare the scheme case-insensitively but some gateways do not; many
  // token endpoints answer "bearer", so send the canonical spelling.
  std::string type = r.token_type.empty() || http::iequals(r.token_type, "bearer") ? "Bearer" : r.token_type;
  return type + " " + r.access_token;
}

std::string excerpt(std::string s, std::size_t limit = 200) {
  if (s.size() > limit) s = s.substr(0, limit) + "...";
  for (char& c : s)
    if (c == '\r' || c == '\n') c = ' ';
  return s;
}

}  // namespace

using Waiter = std::function<void(std::error_code, const std::string& authorization)>;

struct OAuth2::State : std::enable_shared_from_this<State> {
  OAuth2Options o;
  mutable std::mutex m;
  TokenRecord current;
  bool have_access = false;
  double obtained_at = 0;
  bool fetching = false;
  bool code_used = false;
  double retry_background_after = 0;  // after a failed early refresh, don't hammer the endpoint
  std::vector<Waiter> waiters;
  RefreshLock::Release release_lock;  // set while this process holds the shared refresh lock
  std::string last_failure;
  std::uint64_t token_requests = 0;

  double now() const { return o.clock(); }

  // How long before expiry to refresh: the configured margin, but never more than half the
  // token's lifetime, so a short-lived token is not refreshed on every request.
  double margin_locked() const {
    const double lifetime = current.expires_at - obtained_at;
    return lifetime > 0 ? std::min(o.refresh_before, lifetime / 2) : o.refresh_before;
  }

  bool usable_locked(double t) const { return have_access && t < current.expires_at; }
  bool fresh_locked(double t) const {
    return have_access && t < current.expires_at - margin_locked();
  }

  // Runs `w` once a token is there: now if the cached one is fresh, else after a fetch.
  // `allow_stale` lets a still-valid token inside the refresh window be used at once while a
  // background refresh runs.
  void with_token(const std::shared_ptr<http::Transport>& via, Waiter w, bool allow_stale) {
    const double t = now();
    std::unique_lock lock(m);
    if (fresh_locked(t)) {
      std::string h = header_value(current);
      lock.unlock();
      return w({}, h);
    }
    bool start = false;
    if (allow_stale && usable_locked(t)) {
      std::string h = header_value(current);
      if (!fetching && t >= retry_background_after) start = fetching = true;
      lock.unlock();
      if (start) fetch(via);
      return w({}, h);
    }
    waiters.push_back(std::move(w));
    if (!fetching) start = fetching = true;
    lock.unlock();
    if (start) fetch(via);
  }

  // Another process sharing the store may have refreshed already: adopt its record instead of
  // spending our (possibly already rotated-away) refresh token.
  bool adopt_from_store() {
    if (!o.store) return false;
    std::optional<TokenRecord> stored;
    try {
      stored = o.store->load(o.store_id);
    } catch (const Error&) {
      return false;  // the fetch below reports store problems when it saves
    }
    if (!stored) return false;
    const double t = now();
    std::lock_guard lock(m);
    if (!stored->refresh_token.empty()) current.refresh_token = stored->refresh_token;
    if (!stored->access_token.empty() && stored->access_token != current.access_token &&
        t < stored->expires_at - std::min(o.refresh_before, (stored->expires_at - t) / 2)) {
      current = *stored;
      obtained_at = t;
      have_access = true;
      return true;
    }
    return false;
  }

  void fetch(std::shared_ptr<http::Transport> via) {
    if (!o.refresh_lock) return fetch_unlocked(std::move(via));
    // Long enough for a token request to time out, so a live holder never loses it mid-request.
    const double lease = o.timeout + 10;
    auto self = shared_from_this();
    o.refresh_lock->acquire(o.store_id, lease, [self, via](std::error_code ec, RefreshLock::Release release) {
      if (ec) return self->fail(ec, "cannot take the shared token refresh lock: " + ec.message());
      {
        std::lock_guard lock(self->m);
        self->release_lock = std::move(release);
      }
      self->fetch_unlocked(via);
    });
  }

  void give_back_lock() {
    RefreshLock::Release release;
    {
      std::lock_guard lock(m);
      release.swap(release_lock);
    }
    if (release) release();
  }

  void fetch_unlocked(std::shared_ptr<http::Transport> via) {
    if (adopt_from_store()) return deliver({}, "");
    http::Request r;
    r.method = "POST";
    r.url = o.token_url;
    r.timeout = o.timeout;
    r.follow_redirects = 0;  // a redirect would carry our secrets to wherever it points
    r.headers = {{"Content-Type", "application/x-www-form-urlencoded"}, {"Accept", "application/json"}};
    std::string form;
    std::string grant;
    {
      std::lock_guard lock(m);
      const bool can_refresh = !current.refresh_token.empty() &&
                               (o.grant == Grant::refresh_token || o.grant == Grant::authorization_code);
      if (can_refresh) {
        grant = "refresh_token";
        add_param(form, "grant_type", grant);
        add_param(form, "refresh_token", current.refresh_token);
      } else if (o.grant == Grant::authorization_code && !code_used) {
        grant = "authorization_code";
        add_param(form, "grant_type", grant);
        add_param(form, "code", o.code);
        if (!o.redirect_uri.empty()) add_param(form, "redirect_uri", o.redirect_uri);
        if (!o.code_verifier.empty()) add_param(form, "code_verifier", o.code_verifier);
      } else if (o.grant == Grant::client_credentials || o.grant == Grant::jwt_bearer) {
        grant = grant_name(o.grant);
        add_param(form, "grant_type", grant);
      } else {
        grant.clear();
      }
      if (!grant.empty()) ++token_requests;
    }
    if (grant.empty())
      return fail(errc::token_request_failed,
                  "no refresh token to renew the access token with: the authorization has to be "
                  "granted again");
    if (grant == grant_name(Grant::jwt_bearer)) {
      try {
        add_param(form, "assertion", o.assertion());
      } catch (const Error& e) {
        return fail(e.code(), std::string("cannot sign the JWT assertion: ") + e.what());
      }
    }
    if (grant != "refresh_token" && grant != "authorization_code") {
      if (!o.scopes.empty()) {
        std::string scope;
        for (const auto& s : o.scopes) scope += (scope.empty() ? "" : " ") + s;
        add_param(form, "scope", scope);
      }
      if (!o.audience.empty()) add_param(form, "audience", o.audience);
    }
    for (const auto& [k, v] : o.extra_params) add_param(form, k, v);
    switch (o.client_auth) {
      case ClientAuth::basic:
        // RFC 6749 2.3.1: form-encode id and secret before joining them.
        r.headers.emplace_back("Authorization",
                               "Basic " + base64(percent_encode(o.client_id) + ":" +
                                                 percent_encode(o.client_secret)));
        break;
      case ClientAuth::post:
        add_param(form, "client_id", o.client_id);
        add_param(form, "client_secret", o.client_secret);
        break;
      case ClientAuth::none:
        if (!o.client_id.empty()) add_param(form, "client_id", o.client_id);
        break;
    }
    r.body = std::make_shared<const std::string>(std::move(form));
    auto self = shared_from_this();
    via->send(std::move(r), [self, grant](std::error_code ec, http::Response resp) {
      self->on_token_response(ec, resp, grant);
    });
  }

  void on_token_response(std::error_code ec, const http::Response& resp, const std::string& grant) {
    const std::string where = "token request to " + http::redact_url(o.token_url);
    // No answer (a reset, a timeout) says nothing about our credentials: the caller's retry
    // policy may try again. An answer that refuses us is final, so bad secrets fail at once.
    if (ec)
      return fail(errc::token_request_lost,
                  where + " failed: " + (resp.error_message.empty() ? ec.message() : resp.error_message));
    nlohmann::json j = nlohmann::json::parse(resp.body, nullptr, false);
    if (resp.status != 200) {
      std::string detail;
      if (j.is_object() && j.contains("error") && j["error"].is_string()) {
        detail = j["error"].get<std::string>();
        if (j.contains("error_description") && j["error_description"].is_string())
          detail += ": " + excerpt(j["error_description"].get<std::string>());
      }
      return fail(errc::token_request_failed,
                  where + " was refused with HTTP " + std::to_string(resp.status) +
                      (detail.empty() ? "" : " (" + excerpt(detail) + ")"));
    }
    if (!j.is_object() || !j.contains("access_token") || !j["access_token"].is_string() ||
        j["access_token"].get<std::string>().empty())
      return fail(errc::token_request_failed, where + " answered without an access_token");

    const double t = now();
    TokenRecord rec;
    bool rotated = false;
    rec.access_token = j["access_token"].get<std::string>();
    if (j.contains("token_type") && j["token_type"].is_string()) rec.token_type = j["token_type"];
    if (j.contains("scope") && j["scope"].is_string()) rec.scope = j["scope"];
    double lifetime = o.default_lifetime;
    if (j.contains("expires_in")) {
      if (j["expires_in"].is_number()) lifetime = j["expires_in"].get<double>();
      else if (j["expires_in"].is_string()) lifetime = std::atof(j["expires_in"].get<std::string>().c_str());
    }
    rec.expires_at = t + lifetime;
    {
      std::lock_guard lock(m);
      rec.refresh_token = current.refresh_token;
    }
    if (j.contains("refresh_token") && j["refresh_token"].is_string()) {
      std::string fresh = j["refresh_token"].get<std::string>();
      rotated = !fresh.empty() && fresh != rec.refresh_token;
      if (!fresh.empty()) rec.refresh_token = std::move(fresh);
    }

    // Durable first: with single-use refresh tokens the old one is already spent, so the new
    // one must be on disk before anything (a request, a crash) can happen to this process.
    std::string store_failure;
    if (o.store) {
      try {
        o.store->save(o.store_id, rec);
      } catch (const Error& e) {
        store_failure = e.what();
      }
    }
    {
      std::lock_guard lock(m);
      current = rec;
      obtained_at = t;
      have_access = true;
      if (grant == "authorization_code") code_used = true;
    }
    if (!store_failure.empty())
      return fail(errc::token_store_error,
                  "a new token was received but could not be saved: " + store_failure);
    if (o.on_token) {
      TokenEvent ev{lifetime, rotated, rec.scope, grant};
      try {
        o.on_token(ev);
      } catch (...) {
        // A hook must not break authentication; it has no way to report here.
      }
    }
    deliver({}, "");
  }

  void fail(std::error_code ec, std::string message) {
    give_back_lock();
    std::vector<Waiter> ws;
    {
      std::lock_guard lock(m);
      last_failure = std::move(message);
      fetching = false;
      retry_background_after = now() + 5;
      ws.swap(waiters);
    }
    for (auto& w : ws) w(ec, {});
  }

  void deliver(std::error_code, const std::string&) {
    give_back_lock();  // the new record is saved by now: the next holder re-reads it
    std::vector<Waiter> ws;
    std::string h;
    {
      std::lock_guard lock(m);
      fetching = false;
      retry_background_after = 0;
      ws.swap(waiters);
      h = header_value(current);
    }
    for (auto& w : ws) w({}, h);
  }
};

std::shared_ptr<OAuth2> OAuth2::create(OAuth2Options o) {
  auto require = [](const std::string& v, const char* field) {
    if (v.empty()) throw Error(errc::invalid_argument, std::string(field) + ": is required");
  };
  require(o.token_url, "token_url");
  {
    auto p = split_url(o.token_url);  // throws invalid_url for a relative URL
    if (p.scheme != "http" && p.scheme != "https")
      throw Error(errc::invalid_argument, "token_url: must start with http:// or https://");
  }
  if (o.grant != Grant::jwt_bearer || o.client_auth != ClientAuth::none) require(o.client_id, "client_id");
  if (o.client_auth != ClientAuth::none) require(o.client_secret, "client_secret");
  if (o.grant == Grant::authorization_code) require(o.code, "code");
  if (o.grant == Grant::jwt_bearer && !o.assertion)
    throw Error(errc::invalid_argument, "assertion: a signer is required for the JWT bearer grant");
  if (!(o.refresh_before >= 0))
    throw Error(errc::invalid_argument, "refresh_before: must be >= 0 seconds");
  if (!(o.default_lifetime > 0))
    throw Error(errc::invalid_argument, "default_lifetime: must be > 0 seconds");
  if (!o.clock) o.clock = system_clock_seconds;
  if (o.store_id.empty()) o.store_id = "oauth2:" + o.client_id + "@" + o.token_url;

  auto self = std::shared_ptr<OAuth2>(new OAuth2());
  self->s_ = std::make_shared<State>();
  State& s = *self->s_;
  s.o = std::move(o);
  s.current.refresh_token = s.o.refresh_token;
  if (s.o.grant == Grant::refresh_token && s.current.refresh_token.empty() && !s.o.store)
    throw Error(errc::invalid_argument, "refresh_token: is required");
  if (s.o.store) {
    // What the store holds is newer than what the caller passed: a rotated refresh token
    // saved by an earlier run (maybe one that crashed) replaces the one in the code.
    if (auto rec = s.o.store->load(s.o.store_id)) {
      if (!rec->refresh_token.empty()) s.current.refresh_token = rec->refresh_token;
      if (!rec->access_token.empty()) {
        s.current.access_token = rec->access_token;
        s.current.token_type = rec->token_type;
        s.current.scope = rec->scope;
        s.current.expires_at = rec->expires_at;
        s.have_access = true;
        s.obtained_at = s.o.clock();
        s.code_used = true;  // a stored grant means the code was exchanged already
      }
    }
    if (s.o.grant == Grant::refresh_token && s.current.refresh_token.empty())
      throw Error(errc::invalid_argument, "refresh_token: is required (the store has none)");
  }
  return self;
}

OAuth2::~OAuth2() = default;

void OAuth2::authorize(http::Request request, std::shared_ptr<http::Transport> via,
                       Authorized done) {
  auto req = std::make_shared<http::Request>(std::move(request));
  s_->with_token(via, [req, done = std::move(done)](std::error_code ec, const std::string& h) {
    if (!ec) set_header(req->headers, "Authorization", h);
    done(ec, std::move(*req));
  }, /*allow_stale=*/true);
}

bool OAuth2::should_resend(const http::Request& sent, const http::Response& response) {
  if (response.status != 401) return false;
  const std::string* used = http::find_header(sent.headers, "Authorization");
  std::lock_guard lock(s_->m);
  // Only the first 401 for the token we hold drops it; later ones for the same token find a
  // newer token (or the fetch for it) and just re-send, so a burst makes one token request.
  if (s_->have_access && used && constant_time_equal(*used, header_value(s_->current)))
    s_->have_access = false;
  return true;
}

std::string OAuth2::failure_message() const {
  std::lock_guard lock(s_->m);
  return s_->last_failure;
}

void OAuth2::ensure_token(std::shared_ptr<http::Transport> via,
                          std::function<void(std::error_code)> done) {
  s_->with_token(via, [done = std::move(done)](std::error_code ec, const std::string&) { done(ec); },
                 /*allow_stale=*/false);
}

double OAuth2::expires_in() const {
  const double t = s_->now();
  std::lock_guard lock(s_->m);
  return s_->have_access ? s_->current.expires_at - t : 0;
}

bool OAuth2::has_token() const {
  std::lock_guard lock(s_->m);
  return s_->have_access;
}

const std::string& OAuth2::store_id() const { return s_->o.store_id; }

std::uint64_t OAuth2::token_requests() const {
  std::lock_guard lock(s_->m);
  return s_->token_requests;
}

}  // namespace isthmus::auth
