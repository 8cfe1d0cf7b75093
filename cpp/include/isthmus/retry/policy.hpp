// Retries: which failures are worth another attempt, how long to back off, and when a request
// is safe to send twice. Pure functions over plain data; GovernedTransport applies them.
#pragma once

#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "isthmus/http/message.hpp"

namespace isthmus::retry {

struct Policy {
  int attempts = 3;       // attempts in all, the first included; 1 = never retry
  double base = 0.1;      // seconds: the first backoff's ceiling
  double cap = 30;        // seconds: no single backoff is longer
  double deadline = 0;    // seconds for all attempts and waits together; 0 = none
  std::vector<int> retry_on_status = {429, 500, 502, 503, 504};
  bool retry_on_timeout = true;
  bool retry_on_connection_error = true;
  double max_server_wait = 900;  // a Retry-After beyond this is clamped to it
};

// Throws isthmus::Error(errc::invalid_argument) naming the field.
void validate(const Policy& policy);

// Full jitter: uniform in [0, min(cap, base * 2^(failures-1))). `uniform01` in [0, 1).
double backoff(const Policy& policy, int failures, double uniform01);

// Safe to send twice: an idempotent method (RFC 9110 §9.2.2) or an Idempotency-Key header.
bool is_idempotent(const http::Request& request);
// The error proves the request never reached the server (nothing to duplicate).
bool never_left(std::error_code ec);

struct Decision {
  bool retry = false;
  double delay = 0;    // seconds before the next attempt
  std::string reason;  // why (not) — for logs and tests
};

// After attempt number `attempts_made` (1-based) failed or answered, `elapsed` seconds after
// the first one started. `server_wait` is the server's Retry-After, if any.
Decision decide(const Policy& policy, const http::Request& request, std::error_code ec,
                int status, int attempts_made, double elapsed, std::optional<double> server_wait,
                double uniform01);

}  // namespace isthmus::retry
