// Synthetic records, generated on demand from (seed, resource, index): a million records cost
// no start-up time and no memory until something changes them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace isthmus::sandbox {

struct ResourceInfo {
  std::string_view name;    // "contacts"
  std::string_view prefix;  // "con"
};
inline constexpr ResourceInfo kResources[] = {{"contacts", "con"}, {"companies", "com"}, {"deals", "deal"}};
inline constexpr int kResourceCount = 3;

int resource_index(std::string_view name);  // -1 when unknown

std::uint64_t mix64(std::uint64_t x);
std::uint64_t hash3(std::uint64_t seed, std::uint64_t a, std::uint64_t b);

// Records have 1-based ids "con_0000000001"; index is 0-based.
std::string record_id(int resource, std::uint64_t index);
bool parse_record_id(int resource, std::string_view id, std::uint64_t& index);

// Base updated_at (unix ms): spread over 2024 in index order, so filters are arithmetic.
std::uint64_t base_updated_ms(std::uint64_t index, std::uint64_t records);
// Smallest index whose base updated_at is >= since_ms.
std::uint64_t first_index_since(std::uint64_t since_ms, std::uint64_t records);

std::string format_time(std::uint64_t unix_ms);  // RFC 3339, ms precision, UTC
bool parse_time(std::string_view text, std::uint64_t& unix_ms);  // RFC 3339 or unix seconds
std::string http_date(std::uint64_t unix_seconds);

// Appends the record's JSON to `out`.
void append_record(std::string& out, std::uint64_t seed, int resource, std::uint64_t index, std::uint64_t records,
                   std::uint64_t version, std::uint64_t updated_ms);

}  // namespace isthmus::sandbox
