// Request signing: credentials that compute a signature over each request instead of sending a
// secret. A generic HMAC signer for the many home-grown schemes, and AWS Signature Version 4.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "isthmus/auth/credential.hpp"
#include "isthmus/auth/crypto.hpp"

namespace isthmus::auth {

// Unix seconds; replaceable so tests sign at a fixed time.
using UnixClock = std::function<std::int64_t()>;
std::int64_t system_unix_time();

struct HmacSignerOptions {
  std::string key;  // raw key bytes
  Digest digest = Digest::sha256;
  // What is signed, with placeholders: {method} {path} {query} {path_query} {host} {url}
  // {timestamp} {nonce} {body} {body_sha256} (hex) and {header:Name} (a request header value,
  // empty when absent). Unknown placeholders are rejected at construction.
  std::string canonical = "{method}\n{path_query}\n{timestamp}\n{body_sha256}";
  std::string signature_header = "X-Signature";
  std::string signature_prefix;    // put before the encoded signature, e.g. "sha256="
  bool base64 = false;             // hex (default) or base64
  std::string timestamp_header;    // when set, the signing time (unix seconds) goes here
  std::string nonce_header;        // when set, a random 128-bit hex nonce goes here
  UnixClock clock;                 // defaults to the system clock
};

class HmacSigner final : public Credential {
 public:
  explicit HmacSigner(HmacSignerOptions options);
  void authorize(http::Request request, std::shared_ptr<http::Transport> via,
                 Authorized done) override;
  // Signs in place at `unix_time`; returns the canonical string (for debugging a mismatch).
  std::string sign(http::Request& request, std::int64_t unix_time) const;

 private:
  HmacSignerOptions o_;
};

struct AwsSigV4Options {
  std::string access_key;
  std::string secret_key;
  std::string region;
  std::string service;
  std::string session_token;  // optional: sent as X-Amz-Security-Token and signed
  UnixClock clock;
};

// Adds X-Amz-Date, (X-Amz-Security-Token,) and Authorization. For service "s3" the path is
// encoded once and X-Amz-Content-SHA256 is sent, as S3 requires; other services encode twice.
class AwsSigV4 final : public Credential {
 public:
  explicit AwsSigV4(AwsSigV4Options options);
  void authorize(http::Request request, std::shared_ptr<http::Transport> via,
                 Authorized done) override;
  // Signs in place at `unix_time`; returns the canonical request (for debugging a mismatch).
  std::string sign(http::Request& request, std::int64_t unix_time) const;

 private:
  AwsSigV4Options o_;
};

}  // namespace isthmus::auth
