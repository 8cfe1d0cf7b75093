#include "isthmus/pipeline/cast.hpp"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <ctime>

#include "runtime/civil_time.hpp"

namespace isthmus::pipeline {

std::optional<Cast> cast_from_name(std::string_view name) {
  if (name == "str") return Cast::str;
  if (name == "int") return Cast::int64;
  if (name == "float") return Cast::float64;
  if (name == "bool") return Cast::boolean;
  if (name == "datetime") return Cast::datetime;
  return std::nullopt;
}

const char* cast_name(Cast c) {
  switch (c) {
    case Cast::none: return "none";
    case Cast::str: return "str";
    case Cast::int64: return "int";
    case Cast::float64: return "float";
    case Cast::boolean: return "bool";
    case Cast::datetime: return "datetime";
  }
  return "?";
}

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Text quoted for a message, cut so a huge value cannot flood a dead letter.
std::string shown(std::string_view s) {
  constexpr std::size_t kMax = 60;
  std::string out = "'";
  out.append(s.substr(0, kMax));
  if (s.size() > kMax) out += "...";
  out += "'";
  return out;
}

std::string describe(const Scalar& v) {
  return std::visit(
      [](const auto& x) -> std::string {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::monostate>) return "null";
        else if constexpr (std::is_same_v<T, bool>) return x ? "true" : "false";
        else if constexpr (std::is_same_v<T, std::int64_t>) return std::to_string(x);
        else if constexpr (std::is_same_v<T, double>) {
          char buf[32];
          auto r = std::to_chars(buf, buf + sizeof buf, x);
          return std::string(buf, r.ptr);
        } else return shown(x);
      },
      v);
}

std::optional<std::int64_t> parse_int(std::string_view s) {
  s = trim(s);
  if (!s.empty() && s.front() == '+') s.remove_prefix(1);
  std::int64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc{} || end != s.data() + s.size()) return std::nullopt;
  return v;
}

std::optional<double> parse_float(std::string_view s) {
  s = trim(s);
  if (!s.empty() && s.front() == '+') s.remove_prefix(1);
  double v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc{} || end != s.data() + s.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

std::string format_utc(std::int64_t millis) {
  std::int64_t secs = millis / 1000, ms = millis % 1000;
  if (ms < 0) {
    ms += 1000;
    secs -= 1;
  }
  std::int64_t days = secs / 86400, rem = secs % 86400;
  if (rem < 0) {
    rem += 86400;
    days -= 1;
  }
  const civil::Date date = civil::date_from_days(days);
  char buf[48];
  std::snprintf(buf, sizeof buf, "%04lld-%02u-%02uT%02lld:%02lld:%02lld.%03lldZ",
                static_cast<long long>(date.year), date.month, date.day,
                static_cast<long long>(rem / 3600), static_cast<long long>(rem / 60 % 60),
                static_cast<long long>(rem % 60), static_cast<long long>(ms));
  return buf;
}

// Reads `n` digits at `s[pos]` into `out`; false unless all are digits.
bool digits(std::string_view s, std::size_t pos, std::size_t n, unsigned& out) {
  if (pos + n > s.size()) return false;
  out = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const char c = s[pos + i];
    if (c < '0' || c > '9') return false;
    out = out * 10 + static_cast<unsigned>(c - '0');
  }
  return true;
}

// ISO 8601 / RFC 3339: "2024-01-10", "2024-01-10T03:00:00", with ".fff", "Z" or "+hh:mm".
// A time without an offset is taken as UTC.
std::optional<std::int64_t> parse_iso_millis(std::string_view s) {
  s = trim(s);
  unsigned y = 0, mo = 0, d = 0, h = 0, mi = 0, se = 0;
  if (!digits(s, 0, 4, y) || s.size() < 10 || s[4] != '-' || !digits(s, 5, 2, mo) || s[7] != '-' ||
      !digits(s, 8, 2, d))
    return std::nullopt;
  static constexpr unsigned kDays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  if (mo < 1 || mo > 12 || d < 1 || d > kDays[mo - 1] || (mo == 2 && d == 29 && !leap)) return std::nullopt;
  std::size_t pos = 10;
  std::int64_t millis = 0, offset_min = 0;
  if (pos < s.size()) {
    if (s[pos] != 'T' && s[pos] != 't' && s[pos] != ' ') return std::nullopt;
    if (!digits(s, pos + 1, 2, h) || pos + 3 >= s.size() || s[pos + 3] != ':' || !digits(s, pos + 4, 2, mi))
      return std::nullopt;
    pos += 6;
    if (pos < s.size() && s[pos] == ':') {
      if (!digits(s, pos + 1, 2, se)) return std::nullopt;
      pos += 3;
    }
    if (h > 23 || mi > 59 || se > 60) return std::nullopt;
    if (pos < s.size() && (s[pos] == '.' || s[pos] == ',')) {
      ++pos;
      std::size_t n = 0;
      unsigned scale = 100;
      while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') {
        if (n < 3) millis += (s[pos] - '0') * scale, scale /= 10;
        ++pos, ++n;
      }
      if (n == 0) return std::nullopt;
    }
    if (pos < s.size()) {
      if ((s[pos] == 'Z' || s[pos] == 'z') && pos + 1 == s.size()) {
        ++pos;
      } else if (s[pos] == '+' || s[pos] == '-') {
        unsigned oh = 0, om = 0;
        if (!digits(s, pos + 1, 2, oh)) return std::nullopt;
        std::size_t at = pos + 3;
        if (at < s.size() && s[at] == ':') ++at;
        if (!digits(s, at, 2, om) || oh > 23 || om > 59) return std::nullopt;
        offset_min = (s[pos] == '-' ? -1 : 1) * static_cast<std::int64_t>(oh * 60 + om);
        pos = at + 2;
      }
    }
    if (pos != s.size()) return std::nullopt;
  }
  const std::int64_t days = civil::days_from_date(y, mo, d);
  const std::int64_t secs = days * 86400 + h * 3600 + mi * 60 + se - offset_min * 60;
  return secs * 1000 + millis;
}

}  // namespace

std::optional<Scalar> cast_scalar(const Scalar& in, Cast to, std::string& why) {
  if (std::holds_alternative<std::monostate>(in) || to == Cast::none) return in;
  switch (to) {
    case Cast::none: return in;
    case Cast::str:
      if (auto* s = std::get_if<std::string>(&in)) return *s;
      return describe(in);
    case Cast::int64:
      if (auto* i = std::get_if<std::int64_t>(&in)) return *i;
      if (auto* f = std::get_if<double>(&in)) {
        if (std::trunc(*f) == *f && std::fabs(*f) < 9.2e18) return static_cast<std::int64_t>(*f);
      } else if (auto* s = std::get_if<std::string>(&in)) {
        if (auto v = parse_int(*s)) return *v;
        if (auto f = parse_float(*s); f && std::trunc(*f) == *f && std::fabs(*f) < 9.2e18)
          return static_cast<std::int64_t>(*f);
      }
      why = describe(in) + " is not an integer";
      return std::nullopt;
    case Cast::float64:
      if (auto* f = std::get_if<double>(&in)) return *f;
      if (auto* i = std::get_if<std::int64_t>(&in)) return static_cast<double>(*i);
      if (auto* s = std::get_if<std::string>(&in)) {
        if (auto v = parse_float(*s)) return *v;
      }
      why = describe(in) + " is not a number";
      return std::nullopt;
    case Cast::boolean:
      if (auto* b = std::get_if<bool>(&in)) return *b;
      if (auto* i = std::get_if<std::int64_t>(&in); i && (*i == 0 || *i == 1)) return *i == 1;
      if (auto* s = std::get_if<std::string>(&in)) {
        const auto t = trim(*s);
        for (auto yes : {"true", "yes", "y", "on", "1"})
          if (iequals(t, yes)) return true;
        for (auto no : {"false", "no", "n", "off", "0"})
          if (iequals(t, no)) return false;
      }
      why = describe(in) + " is not a boolean (true/false, yes/no, on/off, 1/0)";
      return std::nullopt;
    case Cast::datetime:
      if (auto* s = std::get_if<std::string>(&in)) {
        if (auto ms = parse_iso_millis(*s)) return format_utc(*ms);
      } else if (auto* i = std::get_if<std::int64_t>(&in)) {
        if (*i > -62135596800LL && *i < 253402300800LL) return format_utc(*i * 1000);
      } else if (auto* f = std::get_if<double>(&in)) {
        if (*f > -62135596800.0 && *f < 253402300800.0)
          return format_utc(static_cast<std::int64_t>(std::llround(*f * 1000)));
      }
      why = describe(in) + " is not an ISO 8601 datetime or epoch seconds";
      return std::nullopt;
  }
  return in;
}

std::optional<std::int64_t> iso_millis(std::string_view text) { return parse_iso_millis(text); }

}  // namespace isthmus::pipeline
