#include "isthmus/auth/signing.hpp"

#include <algorithm>
#include <chrono>
#include <ctime>
#include <map>

#include "auth/url_parts.hpp"
#include "isthmus/error.hpp"

namespace isthmus::auth {

std::int64_t system_unix_time() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

const std::string& body_of(const http::Request& r) {
  static const std::string empty;
  return r.body ? *r.body : empty;
}

// The placeholders a canonical template may use, with a check that it uses nothing else.
void for_each_placeholder(std::string_view tmpl,
                          const std::function<void(std::string_view literal)>& on_literal,
                          const std::function<void(std::string_view name)>& on_name) {
  while (!tmpl.empty()) {
    const auto open = tmpl.find('{');
    if (open == std::string_view::npos) {
      on_literal(tmpl);
      return;
    }
    on_literal(tmpl.substr(0, open));
    const auto close = tmpl.find('}', open);
    if (close == std::string_view::npos)
      throw Error(errc::invalid_argument, "canonical: an unclosed '{' in the template");
    on_name(tmpl.substr(open + 1, close - open - 1));
    tmpl.remove_prefix(close + 1);
  }
}

bool known_placeholder(std::string_view n) {
  static constexpr std::string_view kNames[] = {"method", "path", "query", "path_query", "host",
                                                "url", "timestamp", "nonce", "body",
                                                "body_sha256"};
  return std::find(std::begin(kNames), std::end(kNames), n) != std::end(kNames) ||
         (n.rfind("header:", 0) == 0 && n.size() > 7);
}

std::string format_utc(std::int64_t t, const char* fmt) {
  std::time_t tt = static_cast<std::time_t>(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, fmt, &tm);
  return buf;
}

// RFC 3986 5.2.4 dot-segment removal, and empty segments dropped, as AWS normalises paths.
std::string normalize_path(const std::string& path) {
  std::vector<std::string_view> out;
  std::string_view p = path;
  std::size_t start = 0;
  while (start <= p.size()) {
    auto slash = p.find('/', start);
    if (slash == std::string_view::npos) slash = p.size();
    auto seg = p.substr(start, slash - start);
    if (!seg.empty() && seg != ".") {
      if (seg == "..") {
        if (!out.empty()) out.pop_back();
      } else {
        out.push_back(seg);
      }
    }
    start = slash + 1;
  }
  std::string r = "/";
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (i) r += '/';
    r += out[i];
  }
  if (path.size() > 1 && path.back() == '/' && !out.empty()) r += '/';
  return r;
}

// SigV4's Trimall: strip and collapse runs of whitespace to one space.
std::string trimall(std::string_view v) {
  std::string out;
  bool pending_space = false;
  for (char c : v) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) out.push_back(' ');
    pending_space = false;
    out.push_back(c);
  }
  return out;
}

bool never_signed(std::string_view lname) {
  // Hop-by-hop and tracing headers that proxies and clients change on the way; signing them
  // would make signatures fail for reasons outside the caller's control.
  static constexpr std::string_view kSkip[] = {
      "authorization", "baggage", "connection", "expect", "keep-alive", "proxy-authenticate",
      "proxy-authorization", "te", "traceparent", "tracestate", "trailer", "transfer-encoding",
      "upgrade", "user-agent", "x-amzn-trace-id"};
  return std::find(std::begin(kSkip), std::end(kSkip), lname) != std::end(kSkip);
}

}  // namespace

// ---- HmacSigner ----------------------------------------------------------------------------

HmacSigner::HmacSigner(HmacSignerOptions o) : o_(std::move(o)) {
  if (o_.key.empty()) throw Error(errc::invalid_argument, "HmacSigner: key is empty");
  if (o_.signature_header.empty())
    throw Error(errc::invalid_argument, "HmacSigner: signature_header is empty");
  for_each_placeholder(o_.canonical, [](std::string_view) {}, [](std::string_view n) {
    if (!known_placeholder(n))
      throw Error(errc::invalid_argument,
                  "canonical: unknown placeholder {" + std::string(n) +
                      "}; valid: {method} {path} {query} {path_query} {host} {url} "
                      "{timestamp} {nonce} {body} {body_sha256} {header:Name}");
  });
  if (!o_.clock) o_.clock = system_unix_time;
}

std::string HmacSigner::sign(http::Request& r, std::int64_t unix_time) const {
  // Sign the URL as the client will send it, not as the caller typed it.
  r.url = http::encode_url(r.url);
  const UrlParts u = split_url(r.url);
  const std::string timestamp = std::to_string(unix_time);
  std::string nonce;
  if (!o_.timestamp_header.empty()) set_header(r.headers, o_.timestamp_header, timestamp);
  if (!o_.nonce_header.empty()) {
    nonce = hex(random_bytes(16));
    set_header(r.headers, o_.nonce_header, nonce);
  } else if (o_.canonical.find("{nonce}") != std::string::npos) {
    nonce = hex(random_bytes(16));
  }
  std::string canonical;
  for_each_placeholder(
      o_.canonical, [&](std::string_view lit) { canonical.append(lit); },
      [&](std::string_view n) {
        if (n == "method") canonical += r.method;
        else if (n == "path") canonical += u.path;
        else if (n == "query") canonical += u.query;
        else if (n == "path_query") canonical += u.query.empty() ? u.path : u.path + "?" + u.query;
        else if (n == "host") canonical += u.host_header();
        else if (n == "url") canonical += r.url;
        else if (n == "timestamp") canonical += timestamp;
        else if (n == "nonce") canonical += nonce;
        else if (n == "body") canonical += body_of(r);
        else if (n == "body_sha256") canonical += hex(sha256(body_of(r)));
        else if (const auto* v = http::find_header(r.headers, n.substr(7))) canonical += *v;
      });
  const std::string mac = hmac(o_.digest, o_.key, canonical);
  set_header(r.headers, o_.signature_header,
             o_.signature_prefix + (o_.base64 ? auth::base64(mac) : hex(mac)));
  r.sensitive_headers.push_back(o_.signature_header);
  return canonical;
}

void HmacSigner::authorize(http::Request request, std::shared_ptr<http::Transport>,
                           Authorized done) {
  try {
    sign(request, o_.clock());
  } catch (const Error& e) {
    return done(e.code(), std::move(request));
  }
  done({}, std::move(request));
}

// ---- AWS SigV4 -----------------------------------------------------------------------------

AwsSigV4::AwsSigV4(AwsSigV4Options o) : o_(std::move(o)) {
  const std::pair<const char*, const std::string*> required[] = {
      {"access_key", &o_.access_key}, {"secret_key", &o_.secret_key},
      {"region", &o_.region}, {"service", &o_.service}};
  for (auto [field, value] : required)
    if (value->empty()) throw Error(errc::invalid_argument, std::string("AwsSigV4: ") + field + " is empty");
  if (!o_.clock) o_.clock = system_unix_time;
}

std::string AwsSigV4::sign(http::Request& r, std::int64_t unix_time) const {
  r.url = http::encode_url(r.url);  // as the client will send it
  const UrlParts u = split_url(r.url);
  const bool s3 = o_.service == "s3";
  const std::string amz_date = format_utc(unix_time, "%Y%m%dT%H%M%SZ");
  const std::string date = amz_date.substr(0, 8);
  const std::string payload_hash = [&] {
    if (const auto* h = http::find_header(r.headers, "x-amz-content-sha256")) return *h;
    return hex(sha256(body_of(r)));
  }();

  // Re-signing (a re-send) must not sign the previous signature's headers.
  std::erase_if(r.headers, [](const auto& h) {
    return http::iequals(h.first, "authorization") || http::iequals(h.first, "x-amz-date");
  });
  r.headers.emplace_back("X-Amz-Date", amz_date);
  if (!o_.session_token.empty()) {
    set_header(r.headers, "X-Amz-Security-Token", o_.session_token);
    r.sensitive_headers.push_back("X-Amz-Security-Token");
  }
  if (s3 && !http::find_header(r.headers, "x-amz-content-sha256"))
    r.headers.emplace_back("X-Amz-Content-SHA256", payload_hash);

  // Canonical path: S3 takes the path as sent; every other service wants it encoded again.
  const std::string path =
      s3 ? u.path : percent_encode(normalize_path(u.path), "/");

  // Canonical query: decode what the URL carries, re-encode strictly, sort by key then value.
  std::vector<std::pair<std::string, std::string>> q;
  for (auto& [k, v] : split_query(u.query))
    q.emplace_back(percent_encode(percent_decode(k)), percent_encode(percent_decode(v)));
  std::sort(q.begin(), q.end());
  std::string query;
  for (const auto& [k, v] : q) {
    if (!query.empty()) query += '&';
    query += k + "=" + v;
  }

  // Canonical headers: lower-cased names, sorted; repeated names join their values with ','.
  std::map<std::string, std::string> headers;
  for (const auto& [name, value] : r.headers) {
    std::string lname = lower(name);
    if (never_signed(lname)) continue;
    auto [it, fresh] = headers.emplace(lname, trimall(value));
    if (!fresh) it->second += "," + trimall(value);
  }
  if (!headers.count("host")) headers.emplace("host", u.host_header());
  std::string canonical_headers, signed_headers;
  for (const auto& [name, value] : headers) {
    canonical_headers += name + ":" + value + "\n";
    if (!signed_headers.empty()) signed_headers += ';';
    signed_headers += name;
  }

  std::string canonical = r.method + "\n" + path + "\n" + query + "\n" + canonical_headers + "\n" +
                          signed_headers + "\n" + payload_hash;
  const std::string scope = date + "/" + o_.region + "/" + o_.service + "/aws4_request";
  const std::string to_sign =
      "AWS4-HMAC-SHA256\n" + amz_date + "\n" + scope + "\n" + hex(sha256(canonical));
  std::string key = hmac(Digest::sha256, "AWS4" + o_.secret_key, date);
  key = hmac(Digest::sha256, key, o_.region);
  key = hmac(Digest::sha256, key, o_.service);
  key = hmac(Digest::sha256, key, "aws4_request");
  const std::string signature = hex(hmac(Digest::sha256, key, to_sign));
  r.headers.emplace_back("Authorization", "AWS4-HMAC-SHA256 Credential=" + o_.access_key + "/" +
                                              scope + ", SignedHeaders=" + signed_headers +
                                              ", Signature=" + signature);
  return canonical;
}

void AwsSigV4::authorize(http::Request request, std::shared_ptr<http::Transport>,
                         Authorized done) {
  try {
    sign(request, o_.clock());
  } catch (const Error& e) {
    return done(e.code(), std::move(request));
  }
  done({}, std::move(request));
}

}  // namespace isthmus::auth
