// A small HTTP/1.1 server on loopback for the client tests: the misbehaviours a real server
// library will not produce on demand (bodies cut short, resets, silence, a full accept queue).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace isthmus::testing {

// Endpoints (httpbin-like, same names as the sandbox):
//   /json, /status/{code}, /bytes/{n}, /echo (JSON: method, path, query, headers, body),
//   /delay/{ms}, /gzip, /redirect/{n} (relative hops down to /redirect/0 = 200),
//   /redirect-to?url=..&status=.., /truncated (Content-Length larger than what is sent),
//   /stall (never answers), /reset (closes with RST).
// Listens on 127.0.0.1 and, on the same port where possible, 127.0.0.2.
class LoopbackServer {
 public:
  LoopbackServer();
  ~LoopbackServer();
  LoopbackServer(const LoopbackServer&) = delete;
  LoopbackServer& operator=(const LoopbackServer&) = delete;

  std::uint16_t port() const;
  bool has_second_host() const;  // 127.0.0.2 is bound too
  std::string url(std::string_view path = "", std::string_view host = "127.0.0.1") const;

  std::uint64_t connections_accepted() const;
  std::uint64_t max_open() const;  // most connections open at the same time
  std::uint64_t requests() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// A listening socket whose accept queue is full, so that a new connect never completes: the
// way to provoke a connect timeout without an outside network.
class BlackholeListener {
 public:
  BlackholeListener();
  ~BlackholeListener();
  std::uint16_t port() const { return port_; }

 private:
  int listener_ = -1;
  int fillers_[8];
  int filler_count_ = 0;
  std::uint16_t port_ = 0;
};

// A port on 127.0.0.1 with nothing listening (bound, then closed).
std::uint16_t closed_port();

}  // namespace isthmus::testing
