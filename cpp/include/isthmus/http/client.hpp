// The async HTTP client: libcurl's multi interface driven by the engine's Asio io_context.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "isthmus/http/message.hpp"

namespace isthmus {
class Engine;
}

namespace isthmus::http {

struct ClientOptions {
  double timeout = 30.0;          // seconds for a whole exchange, queueing for a connection included
  double connect_timeout = 10.0;  // seconds for TCP + TLS set-up
  int max_connections_per_host = 16;  // 0 = unlimited
  int max_connections = 0;            // across hosts; 0 = unlimited
  bool follow_redirects = true;
  int max_redirects = 10;
  bool verify = true;     // TLS peer and host verification
  std::string ca_bundle;  // PEM file; empty = the system store
  bool http2 = true;      // negotiate HTTP/2 over TLS when the server offers it
  std::string user_agent = "isthmus/0.1";
  std::int64_t max_body_bytes = 0;  // 0 = unlimited
};

// Called exactly once per send(), on an I/O thread. ec is empty when an HTTP response arrived
// (whatever its status); response.error == ec.
using Completion = std::function<void(std::error_code ec, Response response)>;

// What sends requests: the curl client, or a test double in unit tests.
class Transport {
 public:
  virtual ~Transport() = default;
  // Thread-safe. Returns an id for cancel().
  virtual std::uint64_t send(Request request, Completion done) = 0;
  // Thread-safe. The transfer completes with errc::cancelled unless it already completed.
  virtual void cancel(std::uint64_t id) = 0;
};

class Client final : public Transport {
 public:
  Client(std::shared_ptr<Engine> engine, ClientOptions options = {});
  // Cancels what is in flight (each completes with errc::cancelled) and waits for it.
  ~Client() override;
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  std::uint64_t send(Request request, Completion done) override;
  void cancel(std::uint64_t id) override;
  // Cancels everything in flight and refuses new sends (errc::shutting_down). Idempotent.
  void close();

  const ClientOptions& options() const noexcept;
  // Connections the client has opened so far (for tests of keep-alive reuse).
  std::uint64_t connections_opened() const noexcept;

  class Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

// Sends every request with at most `concurrency` in flight; results come back in request
// order. Blocks the calling thread (never an I/O thread) until all are done.
std::vector<Response> send_all(Transport& transport, std::vector<Request> requests,
                               std::size_t concurrency);

}  // namespace isthmus::http
