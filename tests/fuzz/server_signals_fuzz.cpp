// What servers say about their limits: Retry-After, HTTP-dates, X-RateLimit-* and the IETF
// RateLimit / RateLimit-Policy fields. Each line of the input is parsed as a value on its own,
// and the lines together as a header block ("Name: value").
// Properties: every delay, count and window is finite and never negative; an HTTP-date
// written back out as IMF-fixdate parses to the same instant; a Retry-After of plain digits is
// that number; the folded quota is at most every remaining count the server sent.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

#include "check.hpp"
#include "isthmus/limits/server_signals.hpp"

namespace {

constexpr double kNow = 1'700'000'000;  // 2023-11-14

bool sane(const std::optional<double>& v) { return !v || (std::isfinite(*v) && *v >= 0); }

// Unix seconds as "Thu, 01 Jan 1970 00:00:00 GMT" (the weekday is not checked by the parser).
std::string imf_fixdate(std::int64_t t) {
  std::int64_t days = t >= 0 ? t / 86400 : (t - 86399) / 86400;
  const std::int64_t secs = t - days * 86400;
  // Civil date from a day count, by 400-year eras (the inverse of the parser's conversion).
  days += 719468;
  const std::int64_t era = (days >= 0 ? days : days - 146096) / 146097;
  const std::int64_t doe = days - era * 146097;
  const std::int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const std::int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const std::int64_t mp = (5 * doy + 2) / 153;
  const std::int64_t day = doy - (153 * mp + 2) / 5 + 1;
  const std::int64_t month = mp < 10 ? mp + 3 : mp - 9;
  const std::int64_t year = yoe + era * 400 + (month <= 2);
  static const char* const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  char buf[64];
  std::snprintf(buf, sizeof buf, "Mon, %02d %s %04lld %02d:%02d:%02d GMT", static_cast<int>(day),
                months[month - 1], static_cast<long long>(year), static_cast<int>(secs / 3600),
                static_cast<int>(secs / 60 % 60), static_cast<int>(secs % 60));
  return buf;
}

void check_value(std::string_view v) {
  using namespace isthmus::limits;
  const auto retry = parse_retry_after(v, kNow);
  FUZZ_CHECK(sane(retry), "Retry-After is finite and never negative");

  std::string_view digits = v;
  while (!digits.empty() && (digits.front() == ' ' || digits.front() == '\t')) digits.remove_prefix(1);
  while (!digits.empty() && (digits.back() == ' ' || digits.back() == '\t')) digits.remove_suffix(1);
  if (!digits.empty() && digits.size() <= 15 &&
      digits.find_first_not_of("0123456789") == std::string_view::npos) {
    FUZZ_CHECK(retry && *retry == std::stod(std::string(digits)), "Retry-After of digits is that number");
  }

  if (const auto date = parse_http_date(v)) {
    FUZZ_CHECK(std::isfinite(*date) && *date == std::floor(*date), "an HTTP-date is whole seconds");
    const std::string again = imf_fixdate(static_cast<std::int64_t>(*date));
    // Years past 9999 (31 Dec 9999 23:59:60) have no four-digit form to write back.
    if (*date < 253402300800.0)
      FUZZ_CHECK(parse_http_date(again) == date, "an HTTP-date written as IMF-fixdate parses back");
    FUZZ_CHECK(retry && *retry == std::max(0.0, *date - kNow), "a dated Retry-After waits until then");
  }

  FUZZ_CHECK(sane(parse_reset(v, kNow)), "a Reset is finite and never negative");
  for (const auto& item : parse_ratelimit_field(v)) {
    FUZZ_CHECK(sane(item.quota) && sane(item.remaining) && sane(item.reset_after) && sane(item.window),
               "RateLimit members are finite and never negative");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace isthmus;
  const std::string_view input = fuzz::as_text(data, size);
  http::Headers headers;
  for (std::string_view line : fuzz::split(input, '\n')) {
    check_value(line);
    std::string_view value = line;
    const std::string_view name = fuzz::take(value, ':');
    headers.emplace_back(std::string(name), std::string(value));
  }

  const auto x = limits::parse_x_ratelimit(headers, kNow);
  FUZZ_CHECK(sane(x.limit) && sane(x.remaining) && sane(x.reset_after) && sane(x.window),
             "X-RateLimit values are finite and never negative");
  const auto q = limits::parse_server_quota(headers, kNow);
  FUZZ_CHECK(sane(q.limit) && sane(q.remaining) && sane(q.reset_after) && sane(q.window),
             "the folded quota is finite and never negative");
  if (x.remaining) FUZZ_CHECK(q.remaining && *q.remaining <= *x.remaining, "the quota keeps the lowest remaining");
  if (const auto* field = http::find_header(headers, "RateLimit"))
    for (const auto& item : limits::parse_ratelimit_field(*field))
      if (item.remaining)
        FUZZ_CHECK(q.remaining && *q.remaining <= *item.remaining, "the most restrictive RateLimit member wins");
  return 0;
}
