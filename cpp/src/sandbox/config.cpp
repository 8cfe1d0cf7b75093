#include "sandbox/config.hpp"

#include <nlohmann/json.hpp>

#include "isthmus/error.hpp"

namespace isthmus::sandbox {
namespace {

using nlohmann::json;

[[noreturn]] void invalid(const std::string& field, const json& value, const std::string& valid) {
  throw Error(errc::invalid_argument,
              "sandbox option " + field + "=" + value.dump() + " is invalid: expected " + valid);
}

std::uint64_t get_uint(const json& j, const std::string& field, std::uint64_t lo, std::uint64_t hi) {
  const json& v = j.at(field);
  if (!v.is_number_integer() || (v.is_number_integer() && !v.is_number_unsigned() && v.get<std::int64_t>() < 0))
    invalid(field, v, "an integer from " + std::to_string(lo) + " to " + std::to_string(hi));
  auto n = v.get<std::uint64_t>();
  if (n < lo || n > hi) invalid(field, v, "an integer from " + std::to_string(lo) + " to " + std::to_string(hi));
  return n;
}

}  // namespace

Config parse_config(const std::string& json_text) {
  json j;
  try {
    j = json::parse(json_text.empty() ? std::string("{}") : json_text);
  } catch (const json::exception& e) {
    throw Error(errc::invalid_argument, std::string("sandbox config is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) invalid("config", j, "a JSON object");
  Config c;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    if (k == "seed") c.seed = get_uint(j, k, 0, UINT64_MAX);
    else if (k == "max_body_bytes") c.max_body_bytes = get_uint(j, k, 1024, 1ull << 32);
    else if (k == "max_arrivals") c.max_arrivals = get_uint(j, k, 0, 100000000);
    else invalid(k, it.value(), "a known option (see docs/sandbox.md)");
  }
  return c;
}

}  // namespace isthmus::sandbox
