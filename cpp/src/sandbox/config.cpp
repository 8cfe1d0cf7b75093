#include "sandbox/config.hpp"

#include <charconv>
#include <cmath>
#include <nlohmann/json.hpp>

#include "isthmus/auth/crypto.hpp"
#include "isthmus/error.hpp"
#include "sandbox/records.hpp"

namespace isthmus::sandbox {
namespace {

using nlohmann::json;

// Options whose values are credentials: an error names them but never shows the value.
bool is_credential(const std::string& field) {
  return field == "client_secret" || field == "password" || field == "api_key" ||
         field == "bearer_token" || field == "signing_secret";
}

[[noreturn]] void invalid(const std::string& field, const json& value, const std::string& valid) {
  const std::string shown =
      is_credential(field) ? "***" : value.dump(-1, ' ', false, json::error_handler_t::replace);
  throw Error(errc::invalid_argument, "sandbox option " + field + "=" + shown + " is invalid: expected " + valid);
}

std::string range_text(double lo, double hi, bool integer) {
  auto num = [](double v) {
    std::string s = std::to_string(v);
    if (s.find('.') != std::string::npos) {
      s.erase(s.find_last_not_of('0') + 1);
      if (s.back() == '.') s.pop_back();
    }
    return s;
  };
  return std::string(integer ? "an integer" : "a number") + " from " + num(lo) + " to " + num(hi);
}

std::uint64_t get_uint(const std::string& field, const json& v, std::uint64_t lo, std::uint64_t hi) {
  std::string valid = "an integer from " + std::to_string(lo) + " to " + std::to_string(hi);
  if (!v.is_number_integer()) invalid(field, v, valid);
  if (!v.is_number_unsigned() && v.get<std::int64_t>() < 0) invalid(field, v, valid);
  auto n = v.get<std::uint64_t>();
  if (n < lo || n > hi) invalid(field, v, valid);
  return n;
}

double get_number(const std::string& field, const json& v, double lo, double hi) {
  if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < lo || v.get<double>() > hi)
    invalid(field, v, range_text(lo, hi, false));
  return v.get<double>();
}

std::string get_text(const std::string& field, const json& v, bool allow_empty = false) {
  if (!v.is_string()) invalid(field, v, "a string");
  auto s = v.get<std::string>();
  if ((!allow_empty && s.empty()) || s.size() > 256) invalid(field, v, "a non-empty string of at most 256 characters");
  for (unsigned char c : s)
    if (c < 0x20 || c == 0x7f) invalid(field, v, "a printable string");
  return s;
}

bool get_bool(const std::string& field, const json& v) {
  if (!v.is_boolean()) invalid(field, v, "true or false");
  return v.get<bool>();
}

template <typename E>
E get_choice(const std::string& field, const json& v, std::initializer_list<std::pair<const char*, E>> choices) {
  std::string valid = "one of";
  for (auto& [name, e] : choices) {
    if (v.is_string() && v.get<std::string>() == name) return e;
    valid += std::string(valid.back() == 'f' ? " '" : ", '") + name + "'";
  }
  invalid(field, v, valid);
}

FaultSpec parse_fault(const std::string& field, const json& spec) {
  if (!spec.is_object()) invalid(field, spec, "an object with error_rate, latency_ms, reset, truncate, malformed");
  FaultSpec f;
  double total = 0;
  for (auto it = spec.begin(); it != spec.end(); ++it) {
    const std::string name = field + "." + it.key();
    const json& v = it.value();
    if (it.key() == "error_rate") {
      if (!v.is_object()) invalid(name, v, "an object of status -> probability, such as {\"503\": 0.1}");
      for (auto e = v.begin(); e != v.end(); ++e) {
        int status = 0;
        try {
          status = std::stoi(e.key());
        } catch (...) {
        }
        if (status < 400 || status > 599 || std::to_string(status) != e.key())
          invalid(name, v, "status codes from 400 to 599 as keys");
        double p = get_number(name + "." + e.key(), e.value(), 0, 1);
        total += p;
        f.error_rate.emplace_back(status, p);
      }
    } else if (it.key() == "latency_ms") {
      if (v.is_number()) {
        f.latency_fixed_ms = get_number(name, v, 0, 600000);
      } else if (v.is_object() && v.contains("min") && v.contains("max") && v.size() == 2) {
        f.latency_min_ms = get_number(name + ".min", v["min"], 0, 600000);
        f.latency_max_ms = get_number(name + ".max", v["max"], f.latency_min_ms, 600000);
      } else if (v.is_object() && v.contains("median") && v.contains("p99") && v.size() == 2) {
        f.latency_median_ms = get_number(name + ".median", v["median"], 0.001, 600000);
        f.latency_p99_ms = get_number(name + ".p99", v["p99"], f.latency_median_ms, 600000);
      } else {
        invalid(name, v, "milliseconds, {\"min\": a, \"max\": b} (uniform) or {\"median\": m, \"p99\": p} (log-normal)");
      }
    } else if (it.key() == "reset") {
      total += f.reset = get_number(name, v, 0, 1);
    } else if (it.key() == "truncate") {
      total += f.truncate = get_number(name, v, 0, 1);
    } else if (it.key() == "malformed") {
      total += f.malformed = get_number(name, v, 0, 1);
    } else {
      invalid(name, v, "one of error_rate, latency_ms, reset, truncate, malformed");
    }
  }
  if (total > 1.0 + 1e-9) invalid(field, spec, "probabilities that add up to at most 1");
  return f;
}

constexpr std::uint64_t kMaxTenants = 10000;

// An array with one count per tenant, or an object of tenant index -> count (the others keep
// `records`).
std::vector<std::uint64_t> parse_tenant_records(const json& v, const Config& c) {
  const std::string field = "tenant_records";
  if (!c.tenants) invalid(field, v, "no tenant_records without tenants");
  std::vector<std::uint64_t> out(c.tenants, c.records);
  if (v.is_array()) {
    if (v.size() != c.tenants) invalid(field, v, "a list of " + std::to_string(c.tenants) + " counts, one per tenant");
    for (std::size_t i = 0; i < v.size(); ++i) out[i] = get_uint(field + "[" + std::to_string(i) + "]", v[i], 0, 100000000);
  } else if (v.is_object()) {
    for (auto it = v.begin(); it != v.end(); ++it) {
      std::uint64_t index = 0;
      auto [p, ec] = std::from_chars(it.key().data(), it.key().data() + it.key().size(), index);
      if (ec != std::errc() || p != it.key().data() + it.key().size() || index >= c.tenants)
        invalid(field, v, "tenant indexes from 0 to " + std::to_string(c.tenants - 1) + " as keys");
      out[index] = get_uint(field + "[" + it.key() + "]", it.value(), 0, 100000000);
    }
  } else {
    invalid(field, v, "a list of counts, one per tenant, or an object of tenant index -> count");
  }
  return out;
}

// A derived credential: unguessable without the seed, different per tenant and per kind.
std::string derive(std::uint64_t seed, std::uint64_t tenant, std::string_view kind, std::size_t hex_chars) {
  return auth::hex(auth::sha256("sandbox-tenant:" + std::to_string(seed) + ":" + std::to_string(tenant) + ":" +
                                std::string(kind)))
      .substr(0, hex_chars);
}

}  // namespace

std::vector<Tenant> tenant_list(const Config& c) {
  if (!c.tenants) {
    return {Tenant{c.client_id, c.client_secret, c.api_key, c.username, c.password, c.bearer_token, c.seed, c.records}};
  }
  std::vector<Tenant> out;
  out.reserve(c.tenants);
  for (std::uint64_t i = 0; i < c.tenants; ++i) {
    const std::string n = std::to_string(i);
    Tenant t;
    t.client_id = "tenant-" + n + "-client";
    t.client_secret = "secret-" + derive(c.seed, i, "client_secret", 32);
    t.api_key = "key-" + derive(c.seed, i, "api_key", 32);
    t.username = "tenant-" + n;
    t.password = "pw-" + derive(c.seed, i, "password", 24);
    t.bearer_token = "tok-" + derive(c.seed, i, "bearer_token", 32);
    t.seed = hash3(c.seed, 0x7e4a47, i) & ((1ull << 63) - 1);
    t.records = c.tenant_records.empty() ? c.records : c.tenant_records[i];
    out.push_back(std::move(t));
  }
  return out;
}

Config parse_config(const std::string& json_text) {
  json j;
  try {
    j = json::parse(json_text.empty() ? std::string("{}") : json_text);
  } catch (const json::exception& e) {
    throw Error(errc::invalid_argument, "sandbox config is not valid JSON: " + printable(e.what()));
  }
  if (!j.is_object()) invalid("config", j, "a JSON object");
  Config c;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const json& v = it.value();
    if (k == "tenants") c.tenants = get_uint(k, v, 1, kMaxTenants);
    else if (k == "tenant_records") continue;  // read once `tenants` is known
    else if (k == "records") c.records = get_uint(k, v, 0, 100000000);
    else if (k == "seed") c.seed = get_uint(k, v, 0, (1ull << 63) - 1);
    else if (k == "updates_per_second") c.updates_per_second = get_number(k, v, 0, 1000000);
    else if (k == "pagination")
      c.pagination = get_choice<Pagination>(k, v, {{"cursor", Pagination::cursor}, {"offset", Pagination::offset},
                                                    {"page", Pagination::page}, {"link", Pagination::link},
                                                    {"next_url", Pagination::next_url}});
    else if (k == "default_page_size") c.default_page_size = get_uint(k, v, 1, 10000);
    else if (k == "max_page_size") c.max_page_size = get_uint(k, v, 1, 10000);
    else if (k == "auth")
      c.auth = get_choice<AuthMode>(k, v, {{"none", AuthMode::none}, {"api_key", AuthMode::api_key},
                                           {"basic", AuthMode::basic}, {"bearer", AuthMode::bearer},
                                           {"oauth2", AuthMode::oauth2}});
    else if (k == "api_key_in") c.api_key_in_query = get_choice<bool>(k, v, {{"header", false}, {"query", true}});
    else if (k == "client_id") c.client_id = get_text(k, v);
    else if (k == "client_secret") c.client_secret = get_text(k, v);
    else if (k == "api_key") c.api_key = get_text(k, v);
    else if (k == "username") c.username = get_text(k, v);
    else if (k == "password") c.password = get_text(k, v);
    else if (k == "bearer_token") c.bearer_token = get_text(k, v);
    else if (k == "token_lifetime") c.token_lifetime = get_number(k, v, 0.001, 10.0 * 365 * 86400);
    else if (k == "rotate_refresh_tokens") c.rotate_refresh_tokens = get_bool(k, v);
    else if (k == "signing_secret") c.signing_secret = get_text(k, v, true);
    else if (k == "rate_limit") c.rate_limit = get_number(k, v, 0, 10000000);
    else if (k == "burst") c.burst = get_uint(k, v, 1, 10000000);
    else if (k == "daily_quota") c.daily_quota = get_uint(k, v, 0, 1000000000000ull);
    else if (k == "retry_after")
      c.retry_after_http_date = get_choice<bool>(k, v, {{"seconds", false}, {"http-date", true}});
    else if (k == "app_rate_limit") c.app_rate_limit = get_number(k, v, 0, 10000000);
    else if (k == "app_burst") c.app_burst = get_uint(k, v, 1, 10000000);
    else if (k == "overload_capacity") c.overload_capacity = get_number(k, v, 0, 10000000);
    else if (k == "overload_behavior")
      c.overload_behavior = get_choice<OverloadBehavior>(
          k, v, {{"errors", OverloadBehavior::errors}, {"stall", OverloadBehavior::stall}, {"mixed", OverloadBehavior::mixed}});
    else if (k == "faults") {
      if (!v.is_object()) invalid(k, v, "an object of endpoint -> fault spec, such as {\"/v1/contacts\": {\"error_rate\": {\"503\": 0.1}}}");
      for (auto f = v.begin(); f != v.end(); ++f) {
        if (f.key().empty() || (f.key() != "*" && f.key().find('/') == std::string::npos))
          invalid("faults", v, "endpoint keys such as \"/v1/contacts\", \"GET /v1/contacts\" or \"*\"");
        c.faults[f.key()] = parse_fault("faults[" + f.key() + "]", f.value());
      }
    }
    else if (k == "webhook_max_attempts") c.webhook_max_attempts = get_uint(k, v, 1, 100);
    else if (k == "webhook_backoff") c.webhook_backoff = get_number(k, v, 0.001, 3600);
    else if (k == "max_body_bytes") c.max_body_bytes = get_uint(k, v, 1024, 1ull << 32);
    else if (k == "max_arrivals") c.max_arrivals = get_uint(k, v, 0, 100000000);
    // An unknown option may be a misspelt credential: its value is not shown.
    else throw Error(errc::invalid_argument, "sandbox option " + k + " is unknown: see docs/sandbox.md for the options");
  }
  if (j.contains("tenant_records")) c.tenant_records = parse_tenant_records(j["tenant_records"], c);
  if (c.tenants) {
    if (c.auth == AuthMode::none)
      invalid("tenants", j["tenants"], "a sandbox with auth set to api_key, basic, bearer or oauth2 (a request finds "
                                       "its tenant by its credential)");
    // Each tenant has its own credentials: one set for all of them would let any tenant read any other.
    for (const char* field : {"client_id", "client_secret", "api_key", "username", "password", "bearer_token"})
      if (j.contains(field))
        throw Error(errc::invalid_argument, std::string("sandbox option ") + field +
                                                " cannot be set with tenants: every tenant has its own (sandbox.tenants[i])");
  }
  if (c.default_page_size > c.max_page_size) {
    if (!j.contains("default_page_size")) c.default_page_size = c.max_page_size;
    else invalid("default_page_size", j["default_page_size"], "at most max_page_size=" + std::to_string(c.max_page_size));
  }
  return c;
}

}  // namespace isthmus::sandbox
