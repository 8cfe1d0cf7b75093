#include "isthmus/auth/credential.hpp"

#include <condition_variable>
#include <mutex>
#include <unordered_map>

#include "auth/url_parts.hpp"
#include "isthmus/auth/crypto.hpp"
#include "isthmus/error.hpp"

namespace isthmus::auth {

void set_header(http::Headers& headers, std::string_view name, std::string value) {
  std::erase_if(headers, [&](const auto& h) { return http::iequals(h.first, name); });
  headers.emplace_back(std::string(name), std::move(value));
}

// ---- AuthenticatedTransport ----------------------------------------------------------------

struct AuthenticatedTransport::State : std::enable_shared_from_this<State> {
  // Not owned (see the class comment): valid while the gate is open.
  http::Transport* inner = nullptr;
  std::shared_ptr<Credential> credential;

  // The gate: a count of threads using `inner`, and a flag the owner sets when it goes away.
  // A count rather than a lock because a call into `inner` may complete synchronously and come
  // back in through the same thread.
  std::mutex gate_m;
  std::condition_variable gate_cv;
  int users = 0;
  bool closed = false;

  bool enter() {
    std::lock_guard lock(gate_m);
    if (closed) return false;
    ++users;
    return true;
  }
  void leave() {
    std::lock_guard lock(gate_m);
    if (--users == 0 && closed) gate_cv.notify_all();
  }
  void close() {
    std::unique_lock lock(gate_m);
    closed = true;
    gate_cv.wait(lock, [&] { return users == 0; });
  }
  struct Entered {
    State* s;
    bool ok;
    explicit Entered(State* st) : s(st), ok(st->enter()) {}
    ~Entered() {
      if (ok) s->leave();
    }
  };

  // One exchange: a request, authorized, sent, and possibly authorized and sent once more.
  struct Exchange {
    std::uint64_t id = 0;
    http::Request original;
    http::Request sent;  // as authorized: what should_resend must judge (its token)
    http::Completion done;
    std::mutex m;
    std::uint64_t inner_id = 0;
    bool in_inner = false;   // inner_id names a live inner transfer
    bool cancelled = false;
    bool resent = false;
  };

  std::mutex m;
  std::uint64_t next_id = 1;
  std::unordered_map<std::uint64_t, std::shared_ptr<Exchange>> live;

  void start(const std::shared_ptr<Exchange>& ex) {
    auto self = shared_from_this();
    Entered entered(this);
    if (!entered.ok) return finish(ex, errc::shutting_down, "the client was closed");
    // A non-owning handle: the credential uses `via` only during this call.
    std::shared_ptr<http::Transport> via(std::shared_ptr<void>(), inner);
    credential->authorize(ex->original, via, [self, ex](std::error_code ec, http::Request req) {
      if (ec) return self->finish(ex, ec, self->credential->failure_message());
      bool cancelled = false;
      {
        std::lock_guard lock(ex->m);
        cancelled = ex->cancelled;
      }
      // Cancelled while a token was being fetched: nothing was sent, say so.
      if (cancelled) return self->finish(ex, errc::cancelled, "cancelled");
      ex->sent = req;  // headers only; the body is shared, not copied
      Entered entered(self.get());
      if (!entered.ok) return self->finish(ex, errc::shutting_down, "the client was closed");
      std::uint64_t id = self->inner->send(
          std::move(req), [self, ex](std::error_code ec, http::Response r) {
            self->on_response(ex, ec, std::move(r));
          });
      bool cancel_now = false;
      {
        std::lock_guard lock(ex->m);
        ex->inner_id = id;
        ex->in_inner = true;
        cancel_now = ex->cancelled;  // cancel() ran between our check and send()
      }
      if (cancel_now) self->inner->cancel(id);
    });
  }

  void on_response(const std::shared_ptr<Exchange>& ex, std::error_code ec, http::Response r) {
    bool again = false;
    {
      std::lock_guard lock(ex->m);
      ex->in_inner = false;
      if (!ec && !ex->resent && !ex->cancelled) again = true;
    }
    // should_resend runs outside our lock: the credential takes its own.
    if (again && credential->should_resend(ex->sent, r)) {
      ex->resent = true;
      return start(ex);
    }
    complete(ex, ec, std::move(r));
  }

  void finish(const std::shared_ptr<Exchange>& ex, std::error_code ec, std::string message) {
    http::Response r;
    r.error = ec;
    r.error_message = message.empty() ? ec.message() : std::move(message);
    r.url = ex->original.url;
    complete(ex, ec, std::move(r));
  }

  void complete(const std::shared_ptr<Exchange>& ex, std::error_code ec, http::Response r) {
    {
      std::lock_guard lock(m);
      live.erase(ex->id);
    }
    auto done = std::move(ex->done);
    if (done) done(ec, std::move(r));
  }
};

AuthenticatedTransport::AuthenticatedTransport(std::shared_ptr<http::Transport> inner,
                                               std::shared_ptr<Credential> credential)
    : inner_(std::move(inner)), state_(std::make_shared<State>()) {
  if (!inner_ || !credential) throw Error(errc::invalid_argument, "transport and credential are required");
  state_->inner = inner_.get();
  state_->credential = std::move(credential);
}

AuthenticatedTransport::~AuthenticatedTransport() { state_->close(); }

const std::shared_ptr<http::Transport>& AuthenticatedTransport::inner() const noexcept {
  return inner_;
}

std::uint64_t AuthenticatedTransport::send(http::Request request, http::Completion done) {
  auto ex = std::make_shared<State::Exchange>();
  ex->original = std::move(request);
  ex->done = std::move(done);
  {
    std::lock_guard lock(state_->m);
    ex->id = state_->next_id++;
    state_->live.emplace(ex->id, ex);
  }
  const auto id = ex->id;
  state_->start(ex);
  return id;
}

void AuthenticatedTransport::cancel(std::uint64_t id) {
  std::shared_ptr<State::Exchange> ex;
  {
    std::lock_guard lock(state_->m);
    auto it = state_->live.find(id);
    if (it == state_->live.end()) return;
    ex = it->second;
  }
  std::uint64_t inner_id = 0;
  {
    std::lock_guard lock(ex->m);
    ex->cancelled = true;
    if (ex->in_inner) inner_id = ex->inner_id;
  }
  // Still waiting for a token: the authorize completion sees `cancelled` and completes.
  if (inner_id) inner_->cancel(inner_id);
}

// ---- static credentials -------------------------------------------------------------------

ApiKey::ApiKey(std::string value, std::string header, std::string query)
    : value_(std::move(value)), header_(std::move(header)), query_(std::move(query)) {
  if (header_.empty() == query_.empty())
    throw Error(errc::invalid_argument, "ApiKey: give exactly one of header= or query=");
  if (value_.empty()) throw Error(errc::invalid_argument, "ApiKey: value is empty");
  if (value_.find_first_of("\r\n") != std::string::npos)
    throw Error(errc::invalid_argument, "ApiKey: value contains CR or LF");
}

void ApiKey::authorize(http::Request request, std::shared_ptr<http::Transport>, Authorized done) {
  if (!header_.empty()) {
    set_header(request.headers, header_, value_);
    // So the HTTP layer drops it on a cross-origin redirect, like Authorization.
    request.sensitive_headers.push_back(header_);
  } else {
    request.url = url_with_query_param(request.url, query_, value_);
  }
  done({}, std::move(request));
}

BasicAuth::BasicAuth(const std::string& user, const std::string& password)
    : header_value_("Basic " + base64(user + ":" + password)) {
  if (user.find(':') != std::string::npos)
    throw Error(errc::invalid_argument, "BasicAuth: user must not contain ':' (RFC 7617)");
}

void BasicAuth::authorize(http::Request request, std::shared_ptr<http::Transport>,
                          Authorized done) {
  set_header(request.headers, "Authorization", header_value_);
  done({}, std::move(request));
}

BearerToken::BearerToken(std::string token) : header_value_("Bearer " + std::move(token)) {
  if (header_value_.size() == 7) throw Error(errc::invalid_argument, "BearerToken: token is empty");
  if (header_value_.find_first_of("\r\n") != std::string::npos)
    throw Error(errc::invalid_argument, "BearerToken: token contains CR or LF");
}

void BearerToken::authorize(http::Request request, std::shared_ptr<http::Transport>,
                            Authorized done) {
  set_header(request.headers, "Authorization", header_value_);
  done({}, std::move(request));
}

}  // namespace isthmus::auth
