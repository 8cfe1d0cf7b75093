// Route logic on plain structs: no Asio or Beast here, so the endpoints compile fast and can be
// driven directly by tests and the fuzz test. server.cpp turns sockets into Requests and
// Replies into bytes.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sandbox/config.hpp"
#include "sandbox/stats.hpp"

namespace isthmus::sandbox {

struct Request {
  std::string method;
  std::string target;  // as sent: path plus query
  std::string path;    // percent-decoded
  std::vector<std::pair<std::string, std::string>> query;    // decoded, in order
  std::vector<std::pair<std::string, std::string>> headers;  // names lowercased
  std::string body;
  int version = 11;
  bool keep_alive = true;
  double arrival = 0;  // unix seconds
  std::string peer;    // "ip:port"

  // First value or empty.
  std::string_view header(std::string_view lowercase_name) const;
  const std::string* query_param(std::string_view name) const;
};

struct Reply {
  enum class Kind {
    normal,     // head + body
    stream,     // head, then `stream_length` pattern bytes generated on the fly
    truncated,  // head with `declared_length`, then the body (shorter), then close
    stall,      // never answer
    reset,      // close with RST
  };
  Kind kind = Kind::normal;
  int status = 200;
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // A complete precomputed response (head and body) for the hot paths; used as is when set.
  std::shared_ptr<const std::string> wire;
  std::uint64_t delay_ms = 0;
  std::uint64_t stream_length = 0;
  std::uint64_t declared_length = 0;
  bool close = false;
  // For stats: "GET /status/{code}" rather than the raw path, so keys stay few.
  std::string endpoint;
  std::string credential;
  int tenant = -1;  // whose request it was: the tenant its credential belongs to; -1 = nobody's
};

// The head of a response: status line, headers, Content-Length, Connection when needed.
std::string serialize_head(const Reply& reply, std::uint64_t content_length, bool keep_alive, int version);
std::string_view reason_phrase(int status);
// The deterministic byte stream of GET /bytes/{n}: byte i is pattern_block()[i % size].
const std::string& pattern_block();

// One signed webhook POST (Standard Webhooks headers already set); the server sends it.
struct WebhookDelivery {
  std::string url, host, path, body;
  std::uint16_t port = 80;
  std::vector<std::pair<std::string, std::string>> headers;
  int attempt = 1;
};

class Router {
 public:
  explicit Router(Config config);
  ~Router();
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // Decides the answer to one request; records nothing in stats (the server does, once the
  // reply's fate is known) except domain counters (records served, tokens, ...).
  Reply handle(const Request& request);
  // The 400 for a request that did not parse.
  Reply bad_request(std::string_view reason) const;

  Stats& stats() { return stats_; }
  const Config& config() const { return config_; }
  // Called by the server's ticker (once per second) for time-driven work: record updates.
  void tick(double now);
  // Who sends webhook deliveries (the server); called outside the router's locks.
  void set_webhook_sender(std::function<void(WebhookDelivery)> send) { send_webhook_ = std::move(send); }
  // Queues one event to every webhook the tenant registered.
  void emit(int tenant, std::string_view type, const std::string& data_json);

  // The tenants as served (one when the config has no `tenants`).
  const std::vector<Tenant>& tenants() const { return tenants_; }
  // Revokes every access and refresh token issued to the tenant; returns how many were live.
  std::uint64_t revoke_tokens(std::size_t tenant);
  // Withdraws the tenant's access (its tokens are revoked, its credentials refused and its
  // token requests answered invalid_grant) or gives it back. An authorization code exchanged
  // by the tenant gives it back too: the customer linked the app again.
  std::uint64_t set_access(std::size_t tenant, bool allowed);

  class State;

 private:
  Reply test_endpoint(const Request& request, bool& matched);
  Reply echo(const Request& request) const;
  // The API surface (data, auth, limits, faults): api.cpp.
  void init_state();
  bool handle_api(const Request& request, Reply& reply);
  Reply list(const Request& request, int resource, int tenant);
  Reply get_one(int resource, std::string_view id, int tenant);
  Reply write(const Request& request, int resource, bool batch, int tenant);
  Reply oauth(const Request& request, double now, int& tenant);  // sets whose request it was
  Reply webhooks(const Request& request, std::string_view tail, int tenant);

  Config config_;
  std::vector<Tenant> tenants_;
  Stats stats_;
  std::shared_ptr<const std::string> json_wire_;
  std::string json_body_;
  std::string gzip_body_;
  std::string deflate_body_;
  std::shared_ptr<State> state_;
  std::function<void(WebhookDelivery)> send_webhook_;  // shared_ptr: State is complete only in api.cpp
};

}  // namespace isthmus::sandbox
