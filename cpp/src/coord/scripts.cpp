// The Lua scripts of the coordination area and the URL of its server: text only, no I/O, so
// their unit tests need no Redis.
#include <cctype>
#include <charconv>

#include "isthmus/auth/crypto.hpp"
#include "isthmus/coord/coordination.hpp"
#include "isthmus/error.hpp"
#include "isthmus/http/url.hpp"

namespace isthmus::coord {

Script::Script(std::string t) : text(std::move(t)), sha1(auth::hex(auth::hash(auth::Digest::sha1, text))) {}

// Shared GCRA rates and window quotas, all of one call's rules at once, on Redis' clock (TIME),
// so the workers' clocks never matter. KEYS: one bucket per rule. ARGV: cost, max_wait, then
// per rule its kind ("r" rate, "q" quota) and two numbers: for a rate the seconds per unit and
// burst * that (less the margin); for a quota the units per window and the window in seconds.
// Like the in-process limiter it commits the earliest moment every rule admits the call and
// answers how long to wait for it; refused (nothing taken) when that is beyond max_wait.
// Reply: {granted 0|1, wait seconds, index of the rule that set the wait (0: none), resets_at}.
const Script& gcra_script() {
  static const Script s(R"lua(
local cost = tonumber(ARGV[1])
local max_wait = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local at, binding, resets = now, 0, 0
local tat = {}
for i = 1, #KEYS do
  if ARGV[3 * i] == 'r' then tat[i] = tonumber(redis.call('GET', KEYS[i])) or 0 end
end
for round = 1, 8 do
  local moved = false
  for i = 1, #KEYS do
    local a, b = tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2])
    local e = at
    if ARGV[3 * i] == 'r' then
      e = math.max(at, tat[i] - math.max(0, b - cost * a))
    else
      local w = math.floor(at / b)
      local used = tonumber(redis.call('GET', KEYS[i] .. ':' .. w)) or 0
      if used + cost > a then
        e = (w + 1) * b
        resets = e
      end
    end
    if e > at then
      at, binding, moved = e, i, true
    end
  end
  if not moved then break end
end
local wait = at - now
if wait > max_wait then
  return {0, string.format('%.6f', wait), binding, string.format('%.6f', resets)}
end
for i = 1, #KEYS do
  local a, b = tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2])
  if ARGV[3 * i] == 'r' then
    local n = math.max(tat[i], at) + cost * a
    redis.call('SET', KEYS[i], string.format('%.6f', n), 'PX', math.ceil((n - now) * 1000) + 1000)
  else
    local k = KEYS[i] .. ':' .. math.floor(at / b)
    redis.call('INCRBYFLOAT', k, cost)
    redis.call('PEXPIREAT', k, math.ceil((math.floor(at / b) + 1) * b * 1000) + 60000)
  end
end
return {1, string.format('%.6f', wait), binding, '0'}
)lua");
  return s;
}

// A lease is given back, or extended, only by the holder of its token: a holder that lost it
// (it lapsed and another took it) must not free or extend someone else's.
const Script& release_script() {
  static const Script s(R"lua(
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
)lua");
  return s;
}

const Script& renew_script() {
  static const Script s(R"lua(
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
)lua");
  return s;
}

namespace {

[[noreturn]] void bad_url(std::string_view url, const std::string& why) {
  throw Error(errc::invalid_url, "Redis URL " + http::redact_url(url) + ": " + why);
}

int number(std::string_view url, std::string_view text, const char* what, int max) {
  int v = -1;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size() || v < 0 || v > max)
    bad_url(url, std::string(what) + " '" + printable(text) + "' is not a number from 0 to " + std::to_string(max));
  return v;
}

}  // namespace

RedisUrl parse_redis_url(std::string_view url) {
  RedisUrl r;
  const auto scheme_end = url.find("://");
  if (scheme_end == std::string_view::npos) bad_url(url, "expected redis://[:password@]host[:port][/db]");
  const auto scheme = url.substr(0, scheme_end);
  if (scheme == "rediss") bad_url(url, "rediss:// (TLS) is not supported; use redis:// on a trusted network");
  if (scheme != "redis") bad_url(url, "the scheme must be redis://");
  std::string_view rest = url.substr(scheme_end + 3);
  const auto path_at = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, path_at);
  std::string_view path = path_at == std::string_view::npos ? std::string_view() : rest.substr(path_at);
  if (const auto at = authority.rfind('@'); at != std::string_view::npos) {
    const auto userinfo = authority.substr(0, at);
    const auto colon = userinfo.find(':');
    r.username = http::percent_decode(userinfo.substr(0, colon));
    if (colon != std::string_view::npos) r.password = http::percent_decode(userinfo.substr(colon + 1));
    else if (!r.username.empty()) {  // redis://secret@host: a password alone, as redis-cli reads it
      r.password = std::move(r.username);
      r.username.clear();
    }
    authority.remove_prefix(at + 1);
  }
  if (!authority.empty() && authority.front() == '[') {
    const auto close = authority.find(']');
    if (close == std::string_view::npos) bad_url(url, "an IPv6 host lacks its ']'");
    r.host = authority.substr(1, close - 1);
    authority.remove_prefix(close + 1);
    if (!authority.empty() && authority.front() != ':') bad_url(url, "unexpected text after the IPv6 host");
    if (!authority.empty()) r.port = number(url, authority.substr(1), "the port", 65535);
  } else {
    const auto colon = authority.rfind(':');
    r.host = authority.substr(0, colon);
    if (colon != std::string_view::npos) r.port = number(url, authority.substr(colon + 1), "the port", 65535);
  }
  if (r.host.empty()) bad_url(url, "the host is missing");
  for (char c : r.host)
    if (std::isspace(static_cast<unsigned char>(c)) || static_cast<unsigned char>(c) < 0x20)
      bad_url(url, "the host holds a space or control character");
  if (r.port == 0) bad_url(url, "the port must be 1 to 65535");
  if (const auto q = path.find_first_of("?#"); q != std::string_view::npos) {
    if (path[q] == '?') bad_url(url, "query parameters are not supported");
    path = path.substr(0, q);
  }
  if (path.size() > 1) r.db = number(url, path.substr(1), "the database", 1 << 20);
  return r;
}

}  // namespace isthmus::coord
