#include "isthmus/retry/policy.hpp"

#include <algorithm>
#include <cmath>

#include "isthmus/error.hpp"

namespace isthmus::retry {
namespace {

[[noreturn]] void bad(const std::string& field, const std::string& why) {
  throw Error(errc::invalid_argument, field + ": " + why);
}

bool finite_non_negative(double v) { return std::isfinite(v) && v >= 0; }

}  // namespace

void validate(const Policy& p) {
  if (p.attempts < 1) bad("attempts", std::to_string(p.attempts) + " must be at least 1");
  if (!finite_non_negative(p.base) || p.base == 0) bad("base", "must be seconds greater than 0");
  if (!finite_non_negative(p.cap) || p.cap < p.base) bad("cap", "must be seconds, at least base");
  if (!finite_non_negative(p.deadline)) bad("deadline", "must be seconds >= 0 (0 = none)");
  if (!finite_non_negative(p.max_server_wait)) bad("max_server_wait", "must be seconds >= 0");
  for (int s : p.retry_on_status)
    if (s < 100 || s > 599) bad("retry_on", std::to_string(s) + " is not an HTTP status");
}

double backoff(const Policy& p, int failures, double uniform01) {
  // 2^(failures-1) overflows nothing: past 2^60 the cap has long been reached.
  const double ceiling = std::min(p.cap, p.base * std::ldexp(1.0, std::clamp(failures - 1, 0, 60)));
  return std::clamp(uniform01, 0.0, 1.0) * ceiling;
}

bool is_idempotent(const http::Request& r) {
  static constexpr std::string_view safe[] = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"};
  for (auto m : safe)
    if (http::iequals(r.method, m)) return true;
  return http::find_header(r.headers, "Idempotency-Key") != nullptr;
}

bool never_left(std::error_code ec) {
  if (ec.category() != category()) return false;
  switch (static_cast<errc>(ec.value())) {
    case errc::invalid_url:
    case errc::unsupported_scheme:
    case errc::resolve_failed:
    case errc::connect_failed:
    case errc::tls_error:
    case errc::invalid_header:
    case errc::token_request_lost:  // the call itself waited for a token and was never sent
    case errc::circuit_open:
    case errc::quota_exhausted:
    case errc::rate_limited:
      return true;
    default:
      return false;
  }
}

Decision decide(const Policy& p, const http::Request& request, std::error_code ec, int status,
                int attempts_made, double elapsed, std::optional<double> server_wait,
                double uniform01) {
  Decision d;
  bool retryable = false;
  if (ec) {
    if (ec == make_error_code(errc::timeout)) retryable = p.retry_on_timeout;
    else if (ec == make_error_code(errc::token_request_lost))
      retryable = p.retry_on_connection_error || p.retry_on_timeout;
    else if (ec == make_error_code(errc::connect_failed) || ec == make_error_code(errc::resolve_failed) ||
             ec == make_error_code(errc::transport_error) || ec == make_error_code(errc::protocol_error))
      retryable = p.retry_on_connection_error;
    d.reason = ec.message();
  } else {
    retryable = std::find(p.retry_on_status.begin(), p.retry_on_status.end(), status) != p.retry_on_status.end();
    d.reason = "status " + std::to_string(status);
  }
  if (!retryable) {
    d.reason += ": not retried";
    return d;
  }
  // A 429 says the server refused the call, so even a POST was not acted on.
  const bool safe = is_idempotent(request) || (ec && never_left(ec)) || (!ec && status == 429);
  if (!safe) {
    d.reason += ": not retried, " + request.method + " without an Idempotency-Key may have been applied";
    return d;
  }
  if (attempts_made >= p.attempts) {
    d.reason += ": attempts used up";
    return d;
  }
  d.delay = backoff(p, attempts_made, uniform01);
  if (server_wait) d.delay = std::max(d.delay, std::min(*server_wait, p.max_server_wait));
  if (p.deadline > 0 && elapsed + d.delay > p.deadline) {
    d.reason += ": the next attempt would pass the deadline";
    d.delay = 0;
    return d;
  }
  d.retry = true;
  return d;
}

}  // namespace isthmus::retry
