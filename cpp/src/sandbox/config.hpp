// Sandbox configuration, parsed from JSON (Python kwargs and CLI flags arrive as JSON) and
// validated once: a bad value throws isthmus::Error(invalid_argument) naming the field, the
// value and what would be valid. docs/sandbox.md describes every option.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace isthmus::sandbox {

enum class Pagination { cursor, offset, page, link, next_url };
enum class AuthMode { none, api_key, basic, bearer, oauth2 };
enum class OverloadBehavior { errors, stall, mixed };

// Injected faults for one endpoint; probabilities per request, drawn deterministically from
// (seed, endpoint, request number).
struct FaultSpec {
  std::vector<std::pair<int, double>> error_rate;  // status -> probability
  double latency_fixed_ms = 0;                     // always added
  double latency_min_ms = 0, latency_max_ms = 0;   // uniform when max > 0
  double latency_median_ms = 0, latency_p99_ms = 0;  // log-normal when median > 0
  double reset = 0, truncate = 0, malformed = 0;
};

struct Config {
  // 0: one customer, served with the credentials and seed below. N: N tenants, each with its
  // own derived credentials, records and limits (tenant_list), behind one app-wide limit.
  std::uint64_t tenants = 0;
  std::vector<std::uint64_t> tenant_records;  // per tenant; empty: `records` for each
  std::uint64_t records = 1000;
  std::uint64_t seed = 42;
  double updates_per_second = 0;
  Pagination pagination = Pagination::cursor;
  std::uint64_t default_page_size = 20;
  std::uint64_t max_page_size = 100;

  AuthMode auth = AuthMode::none;
  bool api_key_in_query = false;
  std::string client_id = "sandbox-client";
  std::string client_secret = "sandbox-secret";
  std::string api_key = "sandbox-api-key";
  std::string username = "sandbox-user";
  std::string password = "sandbox-password";
  std::string bearer_token = "sandbox-static-token";
  double token_lifetime = 3600;
  bool rotate_refresh_tokens = false;
  std::string signing_secret;  // empty: requests are not signature-checked

  double rate_limit = 0;  // requests/s per credential; 0 = unlimited
  std::uint64_t burst = 1;
  std::uint64_t daily_quota = 0;  // 0 = none
  bool retry_after_http_date = false;
  double app_rate_limit = 0;  // requests/s across all credentials and tenants; 0 = unlimited
  std::uint64_t app_burst = 1;
  double overload_capacity = 0;  // requests/s across all credentials; 0 = off
  OverloadBehavior overload_behavior = OverloadBehavior::errors;
  std::map<std::string, FaultSpec> faults;  // "/v1/contacts", "GET /v1/contacts" or "*"

  std::uint64_t webhook_max_attempts = 5;
  double webhook_backoff = 0.5;
  std::size_t max_body_bytes = 16 * 1024 * 1024;
  std::size_t max_arrivals = 100000;
};

// One customer of the sandbox: whom a credential belongs to and which records it reads.
struct Tenant {
  std::string client_id, client_secret, api_key, username, password, bearer_token;
  std::uint64_t seed = 0, records = 0;
};

Config parse_config(const std::string& json_text);
// The tenants as served: with `tenants` = 0, the one tenant of the top-level options;
// otherwise N tenants whose credentials and record seeds are derived from (seed, index).
std::vector<Tenant> tenant_list(const Config& config);

}  // namespace isthmus::sandbox
