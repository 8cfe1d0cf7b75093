#include "sandbox/records.hpp"

#include <charconv>
#include <cstdio>
#include <ctime>

#include "runtime/civil_time.hpp"

namespace isthmus::sandbox {
namespace {

constexpr std::uint64_t kBaseMs = 1704067200000ull;  // 2024-01-01T00:00:00Z
constexpr std::uint64_t kSpanMs = 365ull * 86400 * 1000;

// Name pools: mixed scripts and accents so clients must get Unicode right. No quotes or
// backslashes, so they go into JSON as they are.
constexpr std::string_view kFirst[] = {"Ana", "Zoë", "José", "Björn", "Chloé", "Łukasz", "Søren", "Ngozi",
                                       "愛子", "Mehmet", "Siobhán", "Дмитрий", "Priya", "Jürgen", "Renée", "Wei"};
constexpr std::string_view kFirstAscii[] = {"ana", "zoe", "jose", "bjorn", "chloe", "lukasz", "soren", "ngozi",
                                            "aiko", "mehmet", "siobhan", "dmitri", "priya", "jurgen", "renee", "wei"};
constexpr std::string_view kLast[] = {"Müller", "García", "O'Brien", "Nakamura", "Kowalski", "Øberg", "Nguyễn",
                                      "Silva", "Schröder", "Haddad", "Ivanova", "Okafor", "Dubois", "Kim",
                                      "Jensen", "Rossi"};
constexpr std::string_view kCity[] = {"Zürich", "São Paulo", "Kraków", "München", "東京", "Reykjavík",
                                      "Montréal", "İstanbul", "Lagos", "Düsseldorf", "Malmö", "Bogotá"};
constexpr std::string_view kCountry[] = {"CH", "BR", "PL", "DE", "JP", "IS", "CA", "TR", "NG", "DE", "SE", "CO"};
constexpr std::string_view kStreet[] = {"Bahnhofstraße", "Rua Augusta", "ul. Floriańska", "Rue de l'Église",
                                        "Calle Mayor", "Hauptgasse", "Strøget", "Main Street"};
constexpr std::string_view kCompanyA[] = {"Nordwind", "Acme", "Blåbær", "Sakura", "Café", "Vértice", "Polar",
                                          "Zenith"};
constexpr std::string_view kCompanyB[] = {"Systems", "Logistik", "Analytics", "Foods", "Labs", "Holdings",
                                          "Software", "Énergie"};
constexpr std::string_view kSuffix[] = {"GmbH", "Inc.", "AB", "K.K.", "S.A.", "Ltd", "SARL", "AG"};
constexpr std::string_view kIndustry[] = {"software", "logistics", "retail", "energy", "health", "finance"};
constexpr std::string_view kStage[] = {"lead", "qualified", "proposal", "negotiation", "won", "lost"};
constexpr std::string_view kCurrency[] = {"EUR", "USD", "GBP", "JPY", "CHF", "SEK"};
constexpr std::string_view kTags[] = {"vip", "trial", "partner", "churn-risk", "新規", "référence"};
constexpr std::string_view kNotes[] = {"Prefers ☕ meetings", "Met at the Zürich meetup", "Call after 14:00 CET",
                                       "Asked about the 🚀 plan", "Renewal due — ping in Q3", "—"};

template <std::size_t N>
std::string_view pick(const std::string_view (&pool)[N], std::uint64_t h) {
  return pool[h % N];
}

void add_u64(std::string& out, std::uint64_t v) {
  char buf[24];
  auto [p, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, p);
}

// Appends v zero-padded to at least `width` digits.
void add_digits(std::string& out, std::uint64_t v, int width) {
  char buf[24];
  int n = 0;
  do {
    buf[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v);
  while (n < width) buf[n++] = '0';
  while (n) out += buf[--n];
}

void add_field(std::string& out, std::string_view key, std::string_view value) {
  out += '"';
  out += key;
  out += "\":\"";
  out += value;
  out += '"';
}

}  // namespace

int resource_index(std::string_view name) {
  for (int i = 0; i < kResourceCount; ++i)
    if (kResources[i].name == name) return i;
  return -1;
}

std::uint64_t mix64(std::uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::uint64_t hash3(std::uint64_t seed, std::uint64_t a, std::uint64_t b) {
  return mix64(mix64(mix64(seed) ^ a) ^ (b * 0xD1B54A32D192ED03ull));
}

std::string record_id(int resource, std::uint64_t index) {
  std::string out(kResources[resource].prefix);
  out += '_';
  add_digits(out, index + 1, 10);
  return out;
}

bool parse_record_id(int resource, std::string_view id, std::uint64_t& index) {
  auto prefix = kResources[resource].prefix;
  if (id.size() != prefix.size() + 11 || id.substr(0, prefix.size()) != prefix || id[prefix.size()] != '_')
    return false;
  std::uint64_t n = 0;
  auto digits = id.substr(prefix.size() + 1);
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
  if (ec != std::errc() || p != digits.data() + digits.size() || n == 0) return false;
  index = n - 1;
  return true;
}

std::uint64_t base_updated_ms(std::uint64_t index, std::uint64_t records) {
  if (records == 0) return kBaseMs;
  return kBaseMs + static_cast<std::uint64_t>((static_cast<unsigned __int128>(index) * kSpanMs) / records);
}

std::uint64_t first_index_since(std::uint64_t since_ms, std::uint64_t records) {
  if (since_ms <= kBaseMs) return 0;
  // Binary search: base_updated_ms is monotonic in index.
  std::uint64_t lo = 0, hi = records;
  while (lo < hi) {
    std::uint64_t mid = lo + (hi - lo) / 2;
    if (base_updated_ms(mid, records) >= since_ms) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

std::string format_time(std::uint64_t unix_ms) {
  std::string out;
  out.reserve(24);
  append_time(out, unix_ms);
  return out;
}

void append_time(std::string& out, std::uint64_t unix_ms) {
  // Without gmtime_r or printf: this runs twice per record served.
  std::uint64_t secs = unix_ms / 1000;
  std::uint64_t sod = secs % 86400;
  const civil::Date date = civil::date_from_days(static_cast<std::int64_t>(secs / 86400));
  const auto y = static_cast<std::uint64_t>(date.year), m = std::uint64_t{date.month}, d = std::uint64_t{date.day};
  add_digits(out, y, 4);
  out += '-';
  add_digits(out, m, 2);
  out += '-';
  add_digits(out, d, 2);
  out += 'T';
  add_digits(out, sod / 3600, 2);
  out += ':';
  add_digits(out, sod / 60 % 60, 2);
  out += ':';
  add_digits(out, sod % 60, 2);
  out += '.';
  add_digits(out, unix_ms % 1000, 3);
  out += 'Z';
}

std::string http_date(std::uint64_t unix_seconds) {
  std::time_t secs = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  static const char* days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static const char* months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  char buf[40];
  std::snprintf(buf, sizeof buf, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday], tm.tm_mday,
                months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
  return buf;
}

bool parse_time(std::string_view s, std::uint64_t& unix_ms) {
  if (s.empty()) return false;
  if (s.find('-') == std::string_view::npos) {  // unix seconds, maybe fractional
    double v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || p != s.data() + s.size() || v < 0 || v > 1e11) return false;
    unix_ms = static_cast<std::uint64_t>(v * 1000.0);
    return true;
  }
  int y, mo, d, h, mi, sec;
  char tail[16] = {0};
  if (s.size() < 19 || s.size() > 40) return false;
  std::string copy(s);
  if (std::sscanf(copy.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%15s", &y, &mo, &d, &h, &mi, &sec, tail) < 6) return false;
  if (y < 1970 || y > 9999 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60) return false;
  std::tm tm{};
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = sec;
  std::int64_t t = timegm(&tm);
  std::string_view rest(tail);
  std::uint64_t ms = 0;
  if (!rest.empty() && rest[0] == '.') {
    std::size_t i = 1;
    std::uint64_t scale = 100;
    for (; i < rest.size() && rest[i] >= '0' && rest[i] <= '9'; ++i) {
      ms += static_cast<std::uint64_t>(rest[i] - '0') * scale;
      scale /= 10;
    }
    rest.remove_prefix(i);
  }
  std::int64_t offset = 0;
  if (rest == "Z" || rest == "z" || rest.empty()) {
  } else if (rest.size() == 6 && (rest[0] == '+' || rest[0] == '-') && rest[3] == ':') {
    int oh = (rest[1] - '0') * 10 + (rest[2] - '0'), om = (rest[4] - '0') * 10 + (rest[5] - '0');
    offset = (rest[0] == '+' ? 1 : -1) * (oh * 3600 + om * 60);
  } else {
    return false;
  }
  t -= offset;
  if (t < 0) return false;
  unix_ms = static_cast<std::uint64_t>(t) * 1000 + ms;
  return true;
}

void append_record(std::string& out, std::uint64_t seed, int resource, std::uint64_t index, std::uint64_t records,
                   std::uint64_t version, std::uint64_t updated_ms) {
  std::uint64_t h = hash3(seed, static_cast<std::uint64_t>(resource) + 1, index);
  std::uint64_t h2 = mix64(h);
  std::uint64_t created_ms = base_updated_ms(index, records) - (h2 % (30ull * 86400 * 1000));
  out += "{\"id\":\"";
  out += record_id(resource, index);
  out += "\",";
  switch (resource) {
    case 0: {  // contacts
      auto fi = h % 16;
      add_field(out, "first_name", kFirst[fi]);
      out += ',';
      add_field(out, "last_name", pick(kLast, h >> 8));
      out += ",\"email\":\"";
      out += kFirstAscii[fi];
      out += '.';
      add_u64(out, index + 1);
      out += "@example.com\",\"phone\":\"+1-555-";
      add_digits(out, (h >> 16) % 10000, 4);
      out += "\",\"company_id\":\"";
      out += record_id(1, records ? (h >> 20) % records : 0);
      out += "\",\"address\":{";
      add_field(out, "street", pick(kStreet, h >> 28));
      out += ",\"number\":";
      add_u64(out, 1 + (h >> 32) % 200);
      auto ci = (h >> 36) % 12;
      out += ',';
      add_field(out, "city", kCity[ci]);
      out += ',';
      add_field(out, "country", kCountry[ci]);
      out += "},\"tags\":[\"";
      out += pick(kTags, h >> 40);
      out += "\",\"";
      out += pick(kTags, h >> 44);
      out += "\"],";
      add_field(out, "notes", pick(kNotes, h >> 48));
      break;
    }
    case 1: {  // companies
      out += "\"name\":\"";
      out += pick(kCompanyA, h);
      out += ' ';
      out += pick(kCompanyB, h >> 8);
      out += ' ';
      out += pick(kSuffix, h >> 12);
      out += "\",\"domain\":\"company";
      add_u64(out, index + 1);
      out += ".example\",";
      add_field(out, "industry", pick(kIndustry, h >> 16));
      out += ",\"employees\":";
      add_u64(out, 1 + (h >> 20) % 50000);
      auto ci = (h >> 36) % 12;
      out += ",\"address\":{";
      add_field(out, "city", kCity[ci]);
      out += ',';
      add_field(out, "country", kCountry[ci]);
      out += "}";
      break;
    }
    default: {  // deals
      out += "\"title\":\"";
      out += pick(kCompanyA, h);
      out += " renewal #";
      add_u64(out, index + 1);
      out += "\",";
      add_field(out, "stage", pick(kStage, h >> 8));
      out += ",\"amount\":{\"value\":\"";
      add_u64(out, 100 + (h >> 12) % 500000);
      out += '.';
      add_digits(out, (h >> 32) % 100, 2);
      out += "\",";
      add_field(out, "currency", pick(kCurrency, h >> 40));
      out += "},\"company_id\":\"";
      out += record_id(1, records ? (h >> 20) % records : 0);
      out += "\",\"contact_id\":\"";
      out += record_id(0, records ? (h2 >> 20) % records : 0);
      out += '"';
      break;
    }
  }
  out += ",\"version\":";
  add_u64(out, version);
  out += ",\"created_at\":\"";
  append_time(out, created_ms);
  out += "\",\"updated_at\":\"";
  append_time(out, updated_ms);
  out += "\"}";
}

}  // namespace isthmus::sandbox
