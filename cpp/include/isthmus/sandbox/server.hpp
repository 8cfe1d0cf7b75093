// The sandbox: a mock SaaS API served by Boost.Beast on 127.0.0.1. It starts as the loopback
// server for the HTTP tests and grows into the full sandbox (data, auth, limits, faults).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace isthmus {
class Engine;
}

namespace isthmus::sandbox {

struct Options {
  std::string host = "127.0.0.1";
  std::uint16_t port = 0;  // 0 = a free port
  int threads = 1;         // server I/O threads (its own io_context)
  // Everything else is configured from JSON so the Python side and the CLI pass it as data.
  std::string config_json = "{}";
};

class Server {
 public:
  explicit Server(Options options);
  ~Server();  // stops
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  void start();  // binds and serves; throws isthmus::Error with errc::invalid_argument on bad config
  void stop();   // idempotent
  std::uint16_t port() const;
  std::string url() const;  // "http://127.0.0.1:<port>"

  std::string stats_json() const;  // counters; see the sandbox docs
  void reset_stats();

  // The tenants as JSON: [{"tenant", "client_id", "client_secret", "api_key", "username",
  // "password", "bearer_token", "records"}, ...], [] without the `tenants` option. Reads the
  // config, so it answers before start() and throws as start() does when the config is bad.
  std::string tenants_json() const;
  // Once started: revokes every token issued to the tenant (returns how many were live), or
  // withdraws / restores its access. A bad tenant index or a server not started throws
  // isthmus::Error(errc::invalid_argument).
  std::uint64_t revoke_tokens(std::size_t tenant);
  std::uint64_t set_access(std::size_t tenant, bool allowed);

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace isthmus::sandbox
