#include "isthmus/limits/server_signals.hpp"

#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>

#include "runtime/civil_time.hpp"

namespace isthmus::limits {
namespace {

constexpr double kUnixSecondsFloor = 1e9;   // 2001-09-09: a Reset this big is a timestamp
constexpr double kUnixMillisFloor = 1e12;   // ... and this big, a timestamp in milliseconds

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// A plain decimal number, nothing else around it (after trimming). No sign, no exponent,
// no hex, no inf/nan: header values that need any of those are garbage.
std::optional<double> parse_number(std::string_view s) {
  s = trim(s);
  if (s.empty() || s.size() > 32) return std::nullopt;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || c == '.')) return std::nullopt;
  double v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

bool ascii_ieq(std::string_view a, std::string_view b) { return http::iequals(a, b); }

int month_index(std::string_view m) {
  static constexpr std::array<std::string_view, 12> names = {"jan", "feb", "mar", "apr", "may", "jun",
                                                             "jul", "aug", "sep", "oct", "nov", "dec"};
  for (int i = 0; i < 12; ++i)
    if (ascii_ieq(m, names[i])) return i + 1;
  return 0;
}


bool all_digits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

bool all_alpha(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) return false;
  return true;
}

// Splits a structured-field list on commas that are not inside a quoted string.
std::vector<std::string_view> split_members(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  bool quoted = false;
  std::size_t start = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '"' && (i == 0 || s[i - 1] != '\\')) quoted = !quoted;
    if (s[i] == sep && !quoted) {
      out.push_back(trim(s.substr(start, i - start)));
      start = i + 1;
    }
  }
  out.push_back(trim(s.substr(start)));
  return out;
}

std::string unquote(std::string_view s) {
  s = trim(s);
  if (s.size() >= 2 && s.front() == '"' && s.back() == '"') s = s.substr(1, s.size() - 2);
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) ++i;
    out.push_back(s[i]);
  }
  return out;
}

// Keeps the member that leaves the caller least room: fewest remaining, then longest reset.
// A quota and its window only mean a rate when both are there, positive and finite.
std::optional<double> slot_of(std::optional<double> quota, std::optional<double> window) {
  if (!quota || !window || !(*quota > 0) || !(*window > 0)) return std::nullopt;
  const double s = *window / *quota;
  if (!std::isfinite(s) || s <= 0) return std::nullopt;
  return s;
}

bool more_restrictive(const RateLimitItem& a, const RateLimitItem& b) {
  if (!b.remaining) return a.remaining.has_value();
  if (!a.remaining) return false;
  if (*a.remaining != *b.remaining) return *a.remaining < *b.remaining;
  return a.reset_after.value_or(0) > b.reset_after.value_or(0);
}

}  // namespace

std::optional<double> parse_http_date(std::string_view value) {
  value = trim(value);
  if (value.empty() || value.size() > 64) return std::nullopt;
  std::vector<std::string_view> tokens;
  std::size_t start = 0;
  for (std::size_t i = 0; i <= value.size(); ++i) {
    if (i == value.size() || value[i] == ' ' || value[i] == ',' || value[i] == '-') {
      if (i > start) tokens.push_back(value.substr(start, i - start));
      start = i + 1;
    }
  }
  int month = 0, hour = -1, minute = -1, second = -1;
  std::vector<std::string_view> numbers;
  bool weekday_seen = false;
  for (auto t : tokens) {
    if (t.find(':') != std::string_view::npos) {
      if (hour >= 0 || t.size() != 8 || t[2] != ':' || t[5] != ':') return std::nullopt;
      auto hh = t.substr(0, 2), mm = t.substr(3, 2), ss = t.substr(6, 2);
      if (!all_digits(hh) || !all_digits(mm) || !all_digits(ss)) return std::nullopt;
      hour = (hh[0] - '0') * 10 + (hh[1] - '0');
      minute = (mm[0] - '0') * 10 + (mm[1] - '0');
      second = (ss[0] - '0') * 10 + (ss[1] - '0');
    } else if (all_digits(t)) {
      if (t.size() > 4) return std::nullopt;
      numbers.push_back(t);
    } else if (all_alpha(t)) {
      if (int m = month_index(t)) {
        if (month) return std::nullopt;
        month = m;
      } else if (ascii_ieq(t, "GMT") || ascii_ieq(t, "UTC")) {
        // the only zone HTTP-dates may carry
      } else if (!weekday_seen && t.size() >= 3) {
        weekday_seen = true;  // not checked against the date: senders get it wrong, it changes nothing
      } else {
        return std::nullopt;
      }
    } else {
      return std::nullopt;
    }
  }
  if (!month || hour < 0 || numbers.size() != 2) return std::nullopt;
  int day = 0, year = 0;
  for (char c : numbers[0]) day = day * 10 + (c - '0');
  for (char c : numbers[1]) year = year * 10 + (c - '0');
  if (numbers[1].size() == 2) year += year < 70 ? 2000 : 1900;  // RFC 850's two-digit years
  else if (numbers[1].size() != 4) return std::nullopt;
  if (day < 1 || day > 31 || hour > 23 || minute > 59 || second > 60) return std::nullopt;
  const auto days = civil::days_from_date(year, static_cast<unsigned>(month), static_cast<unsigned>(day));
  return static_cast<double>(days) * 86400.0 + hour * 3600.0 + minute * 60.0 + second;
}

std::optional<double> parse_retry_after(std::string_view value, double unix_now) {
  value = trim(value);
  if (value.empty()) return std::nullopt;
  if (auto n = parse_number(value)) return *n;
  if (auto when = parse_http_date(value)) return std::max(0.0, *when - unix_now);
  return std::nullopt;
}

std::optional<double> parse_reset(std::string_view value, double unix_now) {
  auto v = parse_number(value);
  if (!v) return std::nullopt;
  if (*v >= kUnixMillisFloor) return std::max(0.0, *v / 1000.0 - unix_now);
  if (*v >= kUnixSecondsFloor) return std::max(0.0, *v - unix_now);
  return *v;
}

ServerQuota parse_x_ratelimit(const http::Headers& headers, double unix_now) {
  ServerQuota q;
  for (std::string_view prefix : {"X-RateLimit-", "RateLimit-"}) {
    std::string base(prefix);
    if (!q.limit)
      if (auto* v = http::find_header(headers, base + "Limit")) {
        // Early drafts allow "10, 10;w=1": the first number is the effective limit.
        auto members = split_members(*v, ',');
        q.limit = parse_number(members.front().substr(0, members.front().find(';')));
        for (auto m : members) {
          auto w = m.find(";w=");
          if (w == std::string_view::npos || parse_number(m.substr(0, m.find(';'))) != q.limit) continue;
          q.window = parse_number(m.substr(w + 3));
          q.slot = slot_of(q.limit, q.window);
          break;
        }
      }
    if (!q.remaining)
      if (auto* v = http::find_header(headers, base + "Remaining")) q.remaining = parse_number(*v);
    if (!q.reset_after)
      if (auto* v = http::find_header(headers, base + "Reset")) q.reset_after = parse_reset(*v, unix_now);
  }
  return q;
}

std::vector<RateLimitItem> parse_ratelimit_field(std::string_view value) {
  std::vector<RateLimitItem> items;
  if (value.size() > 4096) return items;  // nobody sends this much; refuse to spend time on it
  RateLimitItem dict;
  bool dict_seen = false;
  for (auto member : split_members(value, ',')) {
    if (member.empty()) continue;
    auto parts = split_members(member, ';');
    std::string_view bare = parts.front();
    auto eq = bare.find('=');
    bool is_dict = eq != std::string_view::npos && !bare.empty() && bare.front() != '"';
    RateLimitItem item;
    if (is_dict) {
      auto key = trim(bare.substr(0, eq));
      auto val = bare.substr(eq + 1);
      dict_seen = true;
      if (ascii_ieq(key, "limit") || ascii_ieq(key, "q")) dict.quota = parse_number(val);
      else if (ascii_ieq(key, "remaining") || ascii_ieq(key, "r")) dict.remaining = parse_number(val);
      else if (ascii_ieq(key, "reset") || ascii_ieq(key, "t")) dict.reset_after = parse_number(val);
      else if (ascii_ieq(key, "w")) dict.window = parse_number(val);
    } else if (auto n = parse_number(bare)) {
      item.quota = n;  // "100;w=60": a bare number is the quota
    } else {
      item.policy = unquote(bare);
    }
    for (std::size_t i = 1; i < parts.size(); ++i) {
      auto p = parts[i];
      auto peq = p.find('=');
      if (peq == std::string_view::npos) continue;
      auto key = trim(p.substr(0, peq));
      auto val = parse_number(p.substr(peq + 1));
      RateLimitItem& into = is_dict ? dict : item;
      if (ascii_ieq(key, "q")) into.quota = val;
      else if (ascii_ieq(key, "r")) into.remaining = val;
      else if (ascii_ieq(key, "t")) into.reset_after = val;
      else if (ascii_ieq(key, "w")) into.window = val;
    }
    if (!is_dict) items.push_back(std::move(item));
  }
  if (dict_seen) items.insert(items.begin(), std::move(dict));
  return items;
}

ServerQuota parse_server_quota(const http::Headers& headers, double unix_now) {
  ServerQuota q = parse_x_ratelimit(headers, unix_now);
  std::vector<RateLimitItem> policies;
  if (auto* p = http::find_header(headers, "RateLimit-Policy")) policies = parse_ratelimit_field(*p);
  if (auto* v = http::find_header(headers, "RateLimit")) {
    std::optional<RateLimitItem> best;
    for (auto& item : parse_ratelimit_field(*v))
      if (!best || more_restrictive(item, *best)) best = item;
    if (best) {
      for (const auto& p : policies)
        if (p.policy == best->policy) {
          if (!best->quota) best->quota = p.quota;
          if (!best->window) best->window = p.window;
        }
      if (best->remaining && (!q.remaining || *best->remaining < *q.remaining)) {
        q.remaining = best->remaining;
        q.reset_after = best->reset_after;
      }
      if (!q.limit) q.limit = best->quota;
      if (!q.window) q.window = best->window;
      if (auto s = slot_of(best->quota, best->window)) q.slot = s;
    }
  } else if (!policies.empty()) {
    if (!q.limit) q.limit = policies.front().quota;
    if (!q.window) q.window = policies.front().window;
    if (auto s = slot_of(policies.front().quota, policies.front().window)) q.slot = s;
  }
  return q;
}

}  // namespace isthmus::limits
