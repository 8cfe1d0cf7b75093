// Proleptic Gregorian dates to and from days since 1970-01-01, exact for any year (Howard
// Hinnant's era arithmetic), without gmtime_r or timegm and their locale and thread caveats.
// Used to read HTTP dates, to write ISO 8601 timestamps and to cast datetimes.
#pragma once

#include <cstdint>

namespace isthmus::civil {

struct Date {
  std::int64_t year;
  unsigned month;  // 1..12
  unsigned day;    // 1..31
};

constexpr std::int64_t days_from_date(std::int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto year_of_era = static_cast<unsigned>(y - era * 400);
  const unsigned day_of_year = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
  return era * 146097 + static_cast<std::int64_t>(day_of_era) - 719468;
}

constexpr Date date_from_days(std::int64_t days) {
  days += 719468;
  const std::int64_t era = (days >= 0 ? days : days - 146096) / 146097;
  const auto day_of_era = static_cast<unsigned>(days - era * 146097);
  const unsigned year_of_era =
      (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146096) / 365;
  const unsigned day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
  const unsigned mp = (5 * day_of_year + 2) / 153;
  const unsigned d = day_of_year - (153 * mp + 2) / 5 + 1;
  const unsigned m = mp < 10 ? mp + 3 : mp - 9;
  return {static_cast<std::int64_t>(year_of_era) + era * 400 + (m <= 2), m, d};
}

static_assert(days_from_date(1970, 1, 1) == 0);
static_assert(days_from_date(2000, 3, 1) == 11017);
static_assert(date_from_days(11016).month == 2 && date_from_days(11016).day == 29);
static_assert(date_from_days(-1).year == 1969 && date_from_days(-1).day == 31);

}  // namespace isthmus::civil
