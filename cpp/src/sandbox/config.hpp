// Sandbox configuration, parsed from JSON (Python kwargs and CLI flags arrive as JSON) and
// validated once: a bad value throws isthmus::Error(invalid_argument) naming the field, the
// value and what would be valid.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace isthmus::sandbox {

struct Config {
  std::uint64_t seed = 42;
  std::size_t max_body_bytes = 16 * 1024 * 1024;
  std::size_t max_arrivals = 100000;
};

Config parse_config(const std::string& json_text);

}  // namespace isthmus::sandbox
