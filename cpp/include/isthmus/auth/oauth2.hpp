// OAuth2 bearer tokens obtained from a token endpoint (RFC 6749, RFC 7523), cached, refreshed
// early and single-flight: however many requests wait across an expiry, one token request is
// made and every waiter gets its result.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "isthmus/auth/credential.hpp"
#include "isthmus/auth/token_store.hpp"

namespace isthmus::auth {

enum class Grant { client_credentials, refresh_token, authorization_code, jwt_bearer };
enum class ClientAuth { basic, post, none };  // client_secret_basic, client_secret_post, public client

// Non-secret facts about a newly stored token, for hooks and logs.
struct TokenEvent {
  double expires_in = 0;  // seconds
  bool rotated = false;   // the server issued a new refresh token
  std::string scope;
  std::string grant;      // the grant_type that was used
};

struct OAuth2Options {
  Grant grant = Grant::client_credentials;
  std::string token_url;
  std::string client_id;
  std::string client_secret;
  ClientAuth client_auth = ClientAuth::basic;
  std::vector<std::string> scopes;
  std::string audience;
  std::string refresh_token;  // Grant::refresh_token: the initial one (the store's wins)
  // Grant::authorization_code: the code, its PKCE verifier and the redirect URI it was issued for.
  std::string code;
  std::string code_verifier;
  std::string redirect_uri;
  // Grant::jwt_bearer: makes a fresh signed assertion for each token request.
  std::function<std::string()> assertion;
  std::vector<std::pair<std::string, std::string>> extra_params;  // sent in every token request

  double refresh_before = 60;      // seconds before expiry to start refreshing
  double default_lifetime = 3600;  // when the server omits expires_in
  double timeout = 30;             // seconds for a token request
  std::shared_ptr<TokenStore> store;  // null: in memory, not shared
  std::string store_id;               // empty: derived from token_url and client_id
  // Processes sharing `store` take this lock around each token request, so one expiry costs
  // one request however many processes notice it (and a rotated refresh token is spent once).
  std::shared_ptr<RefreshLock> refresh_lock;
  std::function<double()> clock;      // unix seconds; tests replace it
  // Called after a new token is saved and before any request uses it (on an I/O thread).
  std::function<void(const TokenEvent&)> on_token;
};

class OAuth2 final : public Credential, public std::enable_shared_from_this<OAuth2> {
 public:
  // Validates the options (errc::invalid_argument naming the field) and loads the store.
  static std::shared_ptr<OAuth2> create(OAuth2Options options);
  ~OAuth2() override;

  void authorize(http::Request request, std::shared_ptr<http::Transport> via,
                 Authorized done) override;
  bool should_resend(const http::Request& sent, const http::Response& response) override;
  std::string failure_message() const override;

  // Makes sure a usable token is cached, fetching one through `via` if needed; `done` gets the
  // outcome. Used to exchange an authorization code eagerly.
  void ensure_token(std::shared_ptr<http::Transport> via, std::function<void(std::error_code)> done);
  // Seconds until the cached access token expires (negative once expired, 0 when none).
  double expires_in() const;
  bool has_token() const;
  const std::string& store_id() const;
  std::uint64_t token_requests() const;  // sent so far, for tests and metrics

  struct State;

 private:
  OAuth2() = default;
  std::shared_ptr<State> s_;
};

}  // namespace isthmus::auth
