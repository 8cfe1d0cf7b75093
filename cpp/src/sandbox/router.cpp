#include "sandbox/router.hpp"

#include <zlib.h>

#include <charconv>
#include <nlohmann/json.hpp>

#include "sandbox/text.hpp"

namespace isthmus::sandbox {

using nlohmann::json;

std::string_view Request::header(std::string_view name) const {
  for (const auto& [k, v] : headers)
    if (k == name) return v;
  return {};
}

const std::string* Request::query_param(std::string_view name) const {
  for (const auto& [k, v] : query)
    if (k == name) return &v;
  return nullptr;
}

std::string_view reason_phrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Status";
  }
}

std::string serialize_head(const Reply& reply, std::uint64_t content_length, bool keep_alive, int version) {
  std::string out;
  out.reserve(160 + reply.headers.size() * 48);
  out += version == 10 ? "HTTP/1.0 " : "HTTP/1.1 ";
  out += std::to_string(reply.status);
  out += ' ';
  out += reason_phrase(reply.status);
  out += "\r\nServer: isthmus-sandbox\r\n";
  if (!reply.content_type.empty()) {
    out += "Content-Type: ";
    out += reply.content_type;
    out += "\r\n";
  }
  for (const auto& [k, v] : reply.headers) {
    out += k;
    out += ": ";
    out += v;
    out += "\r\n";
  }
  out += "Content-Length: ";
  out += std::to_string(content_length);
  out += "\r\n";
  if (!keep_alive) out += "Connection: close\r\n";
  else if (version == 10) out += "Connection: keep-alive\r\n";
  out += "\r\n";
  return out;
}

const std::string& pattern_block() {
  // 64 KiB of splitmix64 output; /bytes/{n} repeats it, so any n streams without building it.
  static const std::string block = [] {
    std::string b(65536, '\0');
    std::uint64_t x = 0;
    for (std::size_t i = 0; i < b.size(); i += 8) {
      std::uint64_t z = (x += 0x9E3779B97F4A7C15ull);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      z ^= z >> 31;
      for (int k = 0; k < 8; ++k) b[i + k] = static_cast<char>((z >> (8 * k)) & 0xff);
    }
    return b;
  }();
  return block;
}

namespace {

std::string zlib_compress(const std::string& in, int window_bits) {
  z_stream zs{};
  if (deflateInit2(&zs, Z_BEST_COMPRESSION, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY) != Z_OK) return {};
  std::string out(deflateBound(&zs, in.size()) + 32, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  deflate(&zs, Z_FINISH);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

Reply json_reply(int status, json body) {
  Reply r;
  r.status = status;
  r.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
  return r;
}

Reply error_reply(int status, std::string_view error, std::string_view message) {
  json body = {{"error", error}, {"message", message}, {"status", status}};
  return json_reply(status, std::move(body));
}

bool parse_u64(std::string_view s, std::uint64_t& out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

std::string known_method(std::string_view m) {
  static constexpr std::string_view known[] = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"};
  for (auto k : known)
    if (m == k) return std::string(m);
  return "OTHER";
}

}  // namespace

// The fixed document of GET /json: about 400 bytes of the shape an API returns.
static const char* const kJsonDocument =
    R"({"slideshow":{"author":"Isthmus Sandbox","date":"2026-01-01","title":"Sample Slide Show",)"
    R"("slides":[{"title":"Wake up to integrations","type":"all"},)"
    R"({"items":["Why paginate with cursors","Who honours Retry-After","What idempotency keys buy"],)"
    R"("title":"Overview","type":"all"},{"title":"Rate limits","type":"all","items":["GCRA","quotas"]},)"
    R"({"title":"Unicode: café, naïve, Zürich, 東京","type":"all"}]},"ok":true,"count":4})";

Router::Router(Config config)
    : config_(std::move(config)), tenants_(tenant_list(config_)), stats_(config_.max_arrivals, config_.tenants) {
  json_body_ = kJsonDocument;
  Reply r;
  json_wire_ = std::make_shared<const std::string>(serialize_head(r, json_body_.size(), true, 11) + json_body_);
  gzip_body_ = zlib_compress(json{{"gzipped", true}, {"method", "GET"}, {"document", json::parse(json_body_)}}.dump(), 15 + 16);
  deflate_body_ = zlib_compress(json{{"deflated", true}, {"method", "GET"}, {"document", json::parse(json_body_)}}.dump(), 15);
  init_state();
}

Router::~Router() = default;

Reply Router::bad_request(std::string_view reason) const {
  Reply r = error_reply(400, "bad_request", reason);
  r.close = true;
  r.endpoint = "(malformed request)";
  return r;
}

Reply Router::echo(const Request& req) const {
  json query = json::object();
  for (const auto& [k, v] : req.query) {
    if (!query.contains(k)) query[k] = v;
    else if (query[k].is_array()) query[k].push_back(v);
    else query[k] = json::array({query[k], v});
  }
  json headers = json::object();
  // Joined values cannot tell two lines from one holding a comma; header_lines can.
  json header_lines = json::array();
  for (const auto& [k, v] : req.headers) {
    if (!headers.contains(k)) headers[k] = v;
    else headers[k] = headers[k].get<std::string>() + ", " + v;
    header_lines.push_back(json::array({k, v}));
  }
  json body = {{"method", req.method}, {"path", req.path}, {"target", req.target},
               {"query", std::move(query)}, {"headers", std::move(headers)},
               {"header_lines", std::move(header_lines)}, {"body", req.body},
               {"body_length", req.body.size()}};
  return json_reply(200, std::move(body));
}

Reply Router::test_endpoint(const Request& req, bool& matched) {
  matched = true;
  const std::string& p = req.path;
  const bool get = req.method == "GET" || req.method == "HEAD";
  auto rest = [&](std::string_view prefix) -> std::string_view {
    return std::string_view(p).substr(prefix.size());
  };
  auto starts = [&](std::string_view prefix) { return p.size() > prefix.size() && p.compare(0, prefix.size(), prefix) == 0; };

  if (get && p == "/json") {
    Reply r;
    r.endpoint = "GET /json";
    if (req.keep_alive && req.version == 11 && req.method == "GET") r.wire = json_wire_;
    else r.body = json_body_;
    return r;
  }
  if (p == "/echo" || starts("/echo/")) {
    Reply r = echo(req);
    r.endpoint = known_method(req.method) + " /echo";
    return r;
  }
  if (get && starts("/status/")) {
    std::uint64_t code = 0;
    if (!parse_u64(rest("/status/"), code) || code < 200 || code > 599) {
      Reply r = error_reply(400, "bad_status", "status must be an integer from 200 to 599");
      r.endpoint = "GET /status/{code}";
      return r;
    }
    Reply r = json_reply(static_cast<int>(code), json{{"status", code}, {"reason", reason_phrase(static_cast<int>(code))}});
    if (code == 204 || code == 304) r.body.clear(), r.content_type.clear();
    if (code == 401) r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"sandbox\"");
    if (code == 429) r.headers.emplace_back("Retry-After", "1");
    if (code >= 300 && code < 400 && code != 304) r.headers.emplace_back("Location", "/json");
    r.endpoint = "GET /status/{code}";
    return r;
  }
  if (get && starts("/bytes/")) {
    std::uint64_t n = 0;
    Reply r;
    r.endpoint = "GET /bytes/{n}";
    if (!parse_u64(rest("/bytes/"), n) || n > (1ull << 40)) {
      r = error_reply(400, "bad_length", "n must be an integer from 0 to 2^40");
      r.endpoint = "GET /bytes/{n}";
      return r;
    }
    r.kind = Reply::Kind::stream;
    r.stream_length = n;
    r.content_type = "application/octet-stream";
    return r;
  }
  if (get && starts("/delay/")) {
    std::uint64_t ms = 0;
    if (!parse_u64(rest("/delay/"), ms) || ms > 600000) {
      Reply r = error_reply(400, "bad_delay", "ms must be an integer from 0 to 600000");
      r.endpoint = "GET /delay/{ms}";
      return r;
    }
    Reply r = json_reply(200, json{{"delayed_ms", ms}});
    r.delay_ms = ms;
    r.endpoint = "GET /delay/{ms}";
    return r;
  }
  if (get && p == "/gzip") {
    Reply r;
    r.body = gzip_body_;
    r.headers.emplace_back("Content-Encoding", "gzip");
    r.endpoint = "GET /gzip";
    return r;
  }
  if (get && p == "/deflate") {
    Reply r;
    r.body = deflate_body_;
    r.headers.emplace_back("Content-Encoding", "deflate");
    r.endpoint = "GET /deflate";
    return r;
  }
  if (get && starts("/redirect/")) {
    std::uint64_t n = 0;
    Reply r;
    if (!parse_u64(rest("/redirect/"), n) || n > 1000) {
      r = error_reply(400, "bad_redirect", "n must be an integer from 0 to 1000");
    } else if (n == 0) {
      r = json_reply(200, json{{"redirected", true}});
    } else {
      r = json_reply(302, json{{"location", "/redirect/" + std::to_string(n - 1)}});
      r.headers.emplace_back("Location", "/redirect/" + std::to_string(n - 1));
    }
    r.endpoint = "GET /redirect/{n}";
    return r;
  }
  if (p == "/redirect-to") {
    Reply r;
    const std::string* url = req.query_param("url");
    const std::string* status = req.query_param("status");
    std::uint64_t code = 302;
    if (!url || url->empty() || url->find_first_of("\r\n") != std::string::npos) {
      r = error_reply(400, "bad_url", "url= is required and must not contain CR or LF");
    } else if (status && (!parse_u64(*status, code) || code < 300 || code > 399)) {
      r = error_reply(400, "bad_status", "status must be an integer from 300 to 399");
    } else {
      r = json_reply(static_cast<int>(code), json{{"location", *url}});
      r.headers.emplace_back("Location", *url);
    }
    r.endpoint = known_method(req.method) + " /redirect-to";
    return r;
  }
  if (get && p == "/truncated") {
    Reply r;
    r.kind = Reply::Kind::truncated;
    r.declared_length = 1000;
    r.body = std::string(R"({"truncated":true,"data":")") ;
    r.body.append(100 - r.body.size(), 'x');
    r.endpoint = "GET /truncated";
    return r;
  }
  if (get && p == "/malformed-json") {
    Reply r;
    r.body = R"({"data":[{"id":1,"name":"ok"},{"id":2,"name":"broken)";
    r.endpoint = "GET /malformed-json";
    return r;
  }
  if (get && p == "/stall") {
    Reply r;
    r.kind = Reply::Kind::stall;
    r.status = 0;
    r.endpoint = "GET /stall";
    return r;
  }
  if (get && p == "/reset") {
    Reply r;
    r.kind = Reply::Kind::reset;
    r.status = 0;
    r.endpoint = "GET /reset";
    return r;
  }
  if (get && p == "/stats") {
    Reply r;
    r.body = stats_.json();
    r.endpoint = "GET /stats";
    return r;
  }
  matched = false;
  return {};
}

Reply Router::handle(const Request& req) {
  bool matched = false;
  Reply r = test_endpoint(req, matched);
  if (matched) return r;
  if (handle_api(req, r)) return r;
  r = error_reply(404, "not_found", "no such endpoint: " + req.method + " " + req.path);
  r.endpoint = known_method(req.method) + " (unmatched)";
  return r;
}

}  // namespace isthmus::sandbox
