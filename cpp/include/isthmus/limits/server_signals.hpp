// Parsers for what a server says about its limits. Each takes untrusted header text and never
// throws: garbage gives std::nullopt (or an empty result), never a crash or a wild value.
//   Retry-After                  RFC 9110 §10.2.3: delay-seconds or an HTTP-date
//   X-RateLimit-Limit/Remaining/Reset   the de-facto trio (Reset as delta or epoch seconds/ms)
//   RateLimit-Limit/Remaining/Reset     early IETF drafts, same meaning
//   RateLimit / RateLimit-Policy        IETF draft structured fields, both the dictionary form
//                                       (limit=, remaining=, reset=) and the item form (r=, t=; q=, w=)
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "isthmus/http/message.hpp"

namespace isthmus::limits {

// Seconds to wait. A date in the past gives 0; a negative or non-numeric delay gives nullopt.
// The value is not bounded here: the caller decides what is absurd (and logs it).
std::optional<double> parse_retry_after(std::string_view value, double unix_now);

// An HTTP-date (IMF-fixdate, RFC 850 or asctime) as Unix seconds.
std::optional<double> parse_http_date(std::string_view value);

// What the server reports about the caller's allowance. Any field may be missing.
struct ServerQuota {
  std::optional<double> limit;
  std::optional<double> remaining;
  std::optional<double> reset_after;  // seconds from now until the allowance refills
  std::optional<double> window;       // seconds, from a policy
  // Seconds per unit of the policy's long-run rate (its window over its quota, both from the
  // same policy): how soon one more call frees up at a server that drips its allowance back.
  std::optional<double> slot;
  bool empty() const { return !limit && !remaining && !reset_after && !window && !slot; }
};

// A Reset value: small numbers are a delay in seconds; numbers that look like Unix time
// (seconds or milliseconds) are converted to a delay from unix_now.
std::optional<double> parse_reset(std::string_view value, double unix_now);

// X-RateLimit-* and RateLimit-Limit/-Remaining/-Reset.
ServerQuota parse_x_ratelimit(const http::Headers& headers, double unix_now);

// One member of an IETF RateLimit or RateLimit-Policy field.
struct RateLimitItem {
  std::string policy;                 // the item name ("default"), empty in the dictionary form
  std::optional<double> quota;        // q= or limit=
  std::optional<double> remaining;    // r= or remaining=
  std::optional<double> reset_after;  // t= or reset=
  std::optional<double> window;       // w=
};
std::vector<RateLimitItem> parse_ratelimit_field(std::string_view value);

// Everything above folded into one answer: the most restrictive policy wins.
ServerQuota parse_server_quota(const http::Headers& headers, double unix_now);

}  // namespace isthmus::limits
