// Credentials: what proves who we are on a request. A credential may need the network first
// (an OAuth2 token fetch), so authorizing is asynchronous; after the response it may ask for
// one re-send (a 401 on a token it believed valid). AuthenticatedTransport runs that flow in
// front of any other Transport.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <system_error>

#include "isthmus/http/client.hpp"
#include "isthmus/http/message.hpp"

namespace isthmus::auth {

// Called exactly once. On success ec is empty and request carries the credentials; on failure
// request is the unmodified input and failure_message() of the credential explains ec.
using Authorized = std::function<void(std::error_code ec, http::Request request)>;

class Credential {
 public:
  virtual ~Credential() = default;

  // Thread-safe. May complete synchronously (inside this call) or later on an I/O thread.
  // `via` carries any request the credential itself must make (a token request), so the
  // credential needs no client of its own and one credential can serve several clients.
  virtual void authorize(http::Request request, std::shared_ptr<http::Transport> via,
                         Authorized done) = 0;

  // After a response to an authorized request: true when it is worth re-sending once with
  // fresh credentials (the credential has already dropped the token it now distrusts).
  virtual bool should_resend(const http::Request& sent, const http::Response& response) {
    return false;
  }

  // Human detail for the last failed authorize(); never contains a secret.
  virtual std::string failure_message() const { return {}; }
};

// Sends each request through `inner` after `credential` authorized it; re-sends once when the
// credential asks to, never more, so a server that keeps answering 401 cannot make us loop.
// Completions never own `inner`: only this object does, so the inner client is never destroyed
// on one of its own I/O threads. Exchanges still waiting when this object is destroyed complete
// with errc::shutting_down instead of being sent.
class AuthenticatedTransport final : public http::Transport {
 public:
  AuthenticatedTransport(std::shared_ptr<http::Transport> inner,
                         std::shared_ptr<Credential> credential);
  // Waits for calls into `inner` that are under way on other threads (they are short).
  ~AuthenticatedTransport() override;

  std::uint64_t send(http::Request request, http::Completion done) override;
  void cancel(std::uint64_t id) override;

  const std::shared_ptr<http::Transport>& inner() const noexcept;

  struct State;

 private:
  std::shared_ptr<http::Transport> inner_;
  std::shared_ptr<State> state_;
};

// "X-Api-Key: <value>" or "?api_key=<value>" (exactly one of header / query is non-empty).
class ApiKey final : public Credential {
 public:
  ApiKey(std::string value, std::string header, std::string query);
  void authorize(http::Request request, std::shared_ptr<http::Transport> via,
                 Authorized done) override;

 private:
  std::string value_, header_, query_;
};

// RFC 7617: "Authorization: Basic base64(user:password)".
class BasicAuth final : public Credential {
 public:
  BasicAuth(const std::string& user, const std::string& password);
  void authorize(http::Request request, std::shared_ptr<http::Transport> via,
                 Authorized done) override;

 private:
  std::string header_value_;
};

// RFC 6750: "Authorization: Bearer <token>" with a token obtained elsewhere.
class BearerToken final : public Credential {
 public:
  explicit BearerToken(std::string token);
  void authorize(http::Request request, std::shared_ptr<http::Transport> via,
                 Authorized done) override;

 private:
  std::string header_value_;
};

// Sets (replacing any) header `name` on the request, case-insensitively.
void set_header(http::Headers& headers, std::string_view name, std::string value);

}  // namespace isthmus::auth
