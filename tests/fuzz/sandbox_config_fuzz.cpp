// Sandbox configuration, parsed from JSON text (Python kwargs and CLI flags arrive as JSON).
// Properties: bad input fails only with isthmus::Error(invalid_argument) whose message names
// the sandbox option, is UTF-8 (it becomes a Python str) and never repeats a credential; a
// config that parses keeps its invariants (page sizes, probabilities, latency ranges).
#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "check.hpp"
#include "isthmus/error.hpp"
#include "sandbox/config.hpp"

namespace {

// The credential values of the input, when it is a JSON object.
std::vector<std::string> credentials(const std::string& text) {
  std::vector<std::string> out;
  const auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return out;
  for (const char* k : {"client_secret", "password", "api_key", "bearer_token", "signing_secret"}) {
    auto it = j.find(k);
    if (it != j.end() && it->is_string() && it->get_ref<const std::string&>().size() >= 8)
      out.push_back(it->get<std::string>());
  }
  return out;
}

bool in_range(double v, double lo, double hi) { return std::isfinite(v) && v >= lo && v <= hi; }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace isthmus;
  const std::string text(fuzz::as_text(data, size));
  sandbox::Config c;
  try {
    c = sandbox::parse_config(text);
  } catch (const Error& e) {
    const std::string message = e.what();
    FUZZ_CHECK(e.code() == make_error_code(errc::invalid_argument), "bad config is invalid_argument");
    FUZZ_CHECK(message.rfind("sandbox ", 0) == 0, "the message says it is about the sandbox config");
    FUZZ_CHECK(fuzz::valid_utf8(message), "the message is UTF-8, so it can become a Python str");
    for (const auto& secret : credentials(text))
      FUZZ_CHECK(message.find(secret) == std::string::npos, "no message repeats a credential");
    return 0;
  }
  FUZZ_CHECK(c.default_page_size >= 1 && c.default_page_size <= c.max_page_size, "page sizes are ordered");
  FUZZ_CHECK(c.burst >= 1 && c.webhook_max_attempts >= 1, "counts that must be positive are");
  FUZZ_CHECK(in_range(c.rate_limit, 0, 1e7) && in_range(c.token_lifetime, 0.001, 1e9) &&
                 in_range(c.updates_per_second, 0, 1e6) && in_range(c.overload_capacity, 0, 1e7) &&
                 in_range(c.webhook_backoff, 0.001, 3600),
             "numbers are finite and in their documented ranges");
  for (const auto& [endpoint, f] : c.faults) {
    FUZZ_CHECK(endpoint == "*" || endpoint.find('/') != std::string::npos, "fault keys are endpoints");
    double total = f.reset + f.truncate + f.malformed;
    for (const auto& [status, p] : f.error_rate) {
      FUZZ_CHECK(status >= 400 && status <= 599 && in_range(p, 0, 1), "error rates are 4xx/5xx probabilities");
      total += p;
    }
    FUZZ_CHECK(total <= 1.0 + 1e-9, "fault probabilities add up to at most 1");
    FUZZ_CHECK(f.latency_min_ms <= f.latency_max_ms || f.latency_max_ms == 0, "latency ranges are ordered");
    FUZZ_CHECK(f.latency_median_ms <= f.latency_p99_ms || f.latency_median_ms == 0, "latency tails are ordered");
  }
  return 0;
}
