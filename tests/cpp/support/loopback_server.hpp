// Loopback peers for the client tests that the sandbox deliberately does not imitate: a server
// that answers every request with fixed raw bytes (bad encodings, interim responses), a
// listener whose accept queue is full (connect timeouts without an outside network), and a
// port nobody listens on.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace isthmus::testing {

// Answers every request on 127.0.0.1 with `raw` (status line, headers and body as given),
// then closes the connection.
class CannedServer {
 public:
  explicit CannedServer(std::string raw);
  ~CannedServer();
  CannedServer(const CannedServer&) = delete;
  CannedServer& operator=(const CannedServer&) = delete;
  std::string url(const std::string& path = "/") const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// A listening socket whose accept queue is full, so that a new connect never completes.
class BlackholeListener {
 public:
  BlackholeListener();
  ~BlackholeListener();
  BlackholeListener(const BlackholeListener&) = delete;
  BlackholeListener& operator=(const BlackholeListener&) = delete;
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
