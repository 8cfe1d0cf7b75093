// Route logic on plain structs: records, pagination, writes, OAuth2 and a fuzz run of handle().
#include "sandbox/router.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <ctime>
#include <map>
#include <random>

#include "isthmus/error.hpp"
#include "sandbox/records.hpp"
#include "sandbox/text.hpp"

namespace isthmus::sandbox {
namespace {

using nlohmann::json;

Request get(const std::string& target) {
  Request r;
  r.method = "GET";
  r.target = target;
  auto q = target.find('?');
  r.path = target.substr(0, q);
  if (q != std::string::npos) r.query = parse_query(target.substr(q + 1));
  r.headers = {{"host", "127.0.0.1:1"}};
  return r;
}

Router make(const std::string& config) { return Router(parse_config(config)); }

TEST(SandboxText, FormDecodingReadsPlusAsSpaceButNotAnEncodedPlus) {
  EXPECT_EQ(percent_decode("a+b%2Bc%20d", true), "a b+c d");
  EXPECT_EQ(percent_decode("a+b%2Bc", false), "a+b+c");
  EXPECT_EQ(percent_decode("100%", true), "100%");
  using Pairs = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ(parse_query("scope=read+write&state=a%26b&&flag"),
            (Pairs{{"scope", "read write"}, {"state", "a&b"}, {"flag", ""}}));
}

TEST(SandboxRecords, TimesRoundTrip) {
  std::uint64_t ms = 0;
  ASSERT_TRUE(parse_time("2024-03-05T06:07:08.123Z", ms));
  EXPECT_EQ(format_time(ms), "2024-03-05T06:07:08.123Z");
  ASSERT_TRUE(parse_time("2024-03-05T08:07:08+02:00", ms));
  EXPECT_EQ(format_time(ms), "2024-03-05T06:07:08.000Z");
  ASSERT_TRUE(parse_time("1700000000", ms));
  EXPECT_EQ(ms, 1700000000000u);
  EXPECT_FALSE(parse_time("yesterday", ms));
  EXPECT_EQ(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
}

TEST(SandboxRecords, FastTimeFormatMatchesGmtime) {
  std::mt19937_64 rng(5);
  for (int i = 0; i < 20000; ++i) {
    std::uint64_t ms = rng() % 8000000000000ull;  // 1970 .. 2223
    std::time_t secs = static_cast<std::time_t>(ms / 1000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char buf[40];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900, tm.tm_mon + 1,
                  tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<unsigned>(ms % 1000));
    ASSERT_EQ(format_time(ms), buf) << ms;
    std::uint64_t back = 0;
    ASSERT_TRUE(parse_time(buf, back));
    ASSERT_EQ(back, ms);
  }
}

TEST(SandboxRecords, IdsAndSinceAreArithmetic) {
  std::uint64_t index = 0;
  EXPECT_EQ(record_id(0, 41), "con_0000000042");
  ASSERT_TRUE(parse_record_id(0, "con_0000000042", index));
  EXPECT_EQ(index, 41u);
  EXPECT_FALSE(parse_record_id(1, "con_0000000042", index));
  const std::uint64_t n = 1000000;
  for (std::uint64_t i : {0ull, 1ull, 777ull, 999999ull}) {
    std::uint64_t since = base_updated_ms(i, n);
    std::uint64_t first = first_index_since(since, n);
    EXPECT_LE(first, i);
    EXPECT_GE(base_updated_ms(first, n), since);
    if (first) EXPECT_LT(base_updated_ms(first - 1, n), since);
  }
}

TEST(SandboxRouter, RecordsAreValidJsonForEveryResource) {
  for (int res = 0; res < kResourceCount; ++res) {
    for (std::uint64_t i = 0; i < 300; ++i) {
      std::string out;
      append_record(out, 42, res, i, 300, 1, base_updated_ms(i, 300));
      json j = json::parse(out);
      EXPECT_EQ(j["id"], record_id(res, i));
    }
  }
}

TEST(SandboxRouter, CursorPaginationVisitsEveryRecordOnce) {
  Router router = make(R"({"records": 57, "max_page_size": 10})");
  std::string target = "/v1/deals?limit=10";
  std::vector<std::string> ids;
  for (int pages = 0; pages < 20; ++pages) {
    Reply r = router.handle(get(target));
    ASSERT_EQ(r.status, 200) << r.body;
    json body = json::parse(r.body);
    for (auto& rec : body["data"]) ids.push_back(rec["id"]);
    if (!body["meta"]["has_more"].get<bool>()) break;
    target = "/v1/deals?limit=10&cursor=" + body["meta"]["next_cursor"].get<std::string>();
  }
  ASSERT_EQ(ids.size(), 57u);
  EXPECT_EQ(ids.front(), "deal_0000000001");
  EXPECT_EQ(ids.back(), "deal_0000000057");
  EXPECT_EQ(json::parse(router.stats().json())["records_served"]["deals"], 57);
  EXPECT_EQ(router.handle(get("/v1/deals?cursor=garbage")).status, 400);
}

TEST(SandboxRouter, PagePaginationReportsTotals) {
  Router router = make(R"({"records": 45, "pagination": "page"})");
  json body = json::parse(router.handle(get("/v1/contacts?per_page=20&page=3")).body);
  EXPECT_EQ(body["data"].size(), 5u);
  EXPECT_EQ(body["meta"]["total_pages"], 3);
  EXPECT_EQ(body["meta"]["total"], 45);
}

TEST(SandboxRouter, UpdatesShowUpInUpdatedSince) {
  Router router = make(R"({"records": 100, "updates_per_second": 10})");
  router.tick(2000000000.0);  // 2033: after every base record
  json body = json::parse(router.handle(get("/v1/contacts?updated_since=2030-01-01T00:00:00Z&limit=100")).body);
  ASSERT_FALSE(body["data"].empty());
  for (auto& rec : body["data"]) EXPECT_GE(rec["version"].get<int>(), 2);
}

// Every record a GET of `query` serves, page by page, in the router's pagination style.
std::vector<json> read_all(Router& router, const std::string& style, std::string query) {
  std::vector<json> out;
  for (std::uint64_t k = 0, page = 1; k < 1000; ++k) {
    std::string target = "/v1/contacts?limit=7&" + query;
    if (style == "offset") target += "&offset=" + std::to_string(out.size());
    if (style == "page") target += "&page=" + std::to_string(page++);
    Reply r = router.handle(get(target));
    EXPECT_EQ(r.status, 200) << target << " " << r.body;
    if (r.status != 200) break;
    json body = json::parse(r.body);
    for (auto& rec : body["data"]) out.push_back(rec);
    if (style == "cursor") {
      if (!body["meta"]["has_more"].get<bool>()) break;
      query = "cursor=" + body["meta"]["next_cursor"].get<std::string>();  // carries the filters
    } else if (body["data"].empty() || out.size() >= body["meta"]["total"].get<std::size_t>()) {
      EXPECT_EQ(out.size(), body["meta"]["total"].get<std::size_t>()) << target;
      break;
    }
  }
  return out;
}

TEST(SandboxRouter, TimeSlicesSplitTheRecordsExactly) {
  for (std::string style : {"cursor", "offset", "page"}) {
    SCOPED_TRACE(style);
    Router router = make(R"({"records": 97, "updates_per_second": 60, "pagination": ")" + style + R"("})");
    router.tick(2000000000.0);  // 2033: some records change, moving their updated_at there
    const std::vector<std::string> bounds = {"2024-01-01T00:00:00Z", "2024-05-01T00:00:00Z", "2024-05-20T12:00:00Z",
                                             "2025-01-01T00:00:00Z", "2040-01-01T00:00:00Z"};
    std::map<std::string, int> seen;
    int changed = 0;
    for (std::size_t i = 0; i + 1 < bounds.size(); ++i) {
      std::uint64_t lo = 0, hi = 0;
      ASSERT_TRUE(parse_time(bounds[i], lo));
      ASSERT_TRUE(parse_time(bounds[i + 1], hi));
      auto records = read_all(router, style, "updated_since=" + bounds[i] + "&updated_before=" + bounds[i + 1]);
      for (auto& rec : records) {
        std::uint64_t at = 0;
        ASSERT_TRUE(parse_time(rec["updated_at"].get<std::string>(), at));
        EXPECT_GE(at, lo) << rec["id"];
        EXPECT_LT(at, hi) << rec["id"];  // the upper bound is exclusive
        ++seen[rec["id"].get<std::string>()];
        changed += rec["version"].get<int>() > 1;
      }
    }
    EXPECT_EQ(seen.size(), 97u);  // every record in exactly one slice
    for (auto& [id, n] : seen) EXPECT_EQ(n, 1) << id;
    EXPECT_GT(changed, 0);  // changed records moved to the last slice, not seen twice
  }
  Router router = make(R"({"records": 10})");
  EXPECT_EQ(router.handle(get("/v1/contacts?updated_before=soon")).status, 400);
  EXPECT_EQ(router.handle(get("/v1/contacts?updated_before=0")).status, 400);
}

TEST(SandboxRouter, TokenEndpointRejectsWrongClient) {
  Router router = make(R"({"auth": "oauth2"})");
  Request r = get("/oauth/token");
  r.method = "POST";
  r.headers.emplace_back("content-type", "application/x-www-form-urlencoded");
  r.body = "grant_type=client_credentials&client_id=sandbox-client&client_secret=wrong";
  EXPECT_EQ(router.handle(r).status, 401);
  r.body = "grant_type=client_credentials&client_id=sandbox-client&client_secret=sandbox-secret";
  Reply ok = router.handle(r);
  ASSERT_EQ(ok.status, 200);
  std::string token = json::parse(ok.body)["access_token"];
  Request use = get("/v1/contacts");
  EXPECT_EQ(router.handle(use).status, 401);
  use.headers.emplace_back("authorization", "Bearer " + token);
  EXPECT_EQ(router.handle(use).status, 200);
}

TEST(SandboxRouter, ConfigErrorsNameFieldValueAndValid) {
  try {
    parse_config(R"({"pagination": "sideways"})");
    FAIL();
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("pagination=\"sideways\""), std::string::npos) << what;
    EXPECT_NE(what.find("'cursor'"), std::string::npos) << what;
  }
  EXPECT_THROW(parse_config(R"({"default_page_size": 500, "max_page_size": 100})"), Error);
  EXPECT_THROW(parse_config(R"({"faults": {"/v1/contacts": {"error_rate": {"200": 0.5}}}})"), Error);
  EXPECT_THROW(parse_config("[1,2]"), Error);
  EXPECT_THROW(parse_config("{"), Error);
}

// A short fuzz run of request handling: random methods, paths, queries, headers and bodies
// against every auth mode; handle() must answer with a sane status and valid JSON.
TEST(SandboxRouterFuzz, RandomRequestsGetSaneAnswers) {
  std::mt19937_64 rng(99);
  const char* configs[] = {R"({"records": 50})", R"({"records": 50, "auth": "oauth2", "rate_limit": 100, "burst": 5})",
                           R"({"records": 50, "pagination": "offset", "auth": "basic", "signing_secret": "k"})",
                           R"({"records": 50, "faults": {"*": {"error_rate": {"503": 0.2}, "truncate": 0.1}}})"};
  const char* pieces[] = {"/v1/", "contacts", "deals", "companies", "/batch", "?", "&", "=", "limit", "cursor",
                          "offset", "page", "updated_since", "%", "%zz", "0", "-1", "99999999999999999999",
                          "/oauth/token", "/oauth/authorize", "/echo", "/status/", "/redirect/", "\xff", "con_0000000001"};
  const char* methods[] = {"GET", "POST", "PUT", "DELETE", "HEAD", "BREW"};
  for (const char* config : configs) {
    Router router = make(config);
    for (int i = 0; i < 1500; ++i) {
      std::string target;
      int n = 1 + static_cast<int>(rng() % 6);
      for (int k = 0; k < n; ++k) target += pieces[rng() % std::size(pieces)];
      Request r = get(target);
      r.method = methods[rng() % std::size(methods)];
      if (rng() % 2) {
        static const char* bodies[] = {"{}", "[]", "[{\"id\":1}]", "{\"records\":[1,2]}", "grant_type=refresh_token",
                                       "\x01\x02", "{\"id\":\"\xc3\"}", ""};
        r.body = bodies[rng() % std::size(bodies)];
      }
      if (rng() % 3 == 0) r.headers.emplace_back("authorization", rng() % 2 ? "Basic !!!" : "Bearer x");
      if (rng() % 4 == 0) r.headers.emplace_back("idempotency-key", "k" + std::to_string(rng() % 3));
      r.arrival = 1.7e9 + i * 0.001;
      Reply reply = router.handle(r);
      if (reply.kind == Reply::Kind::normal && reply.delay_ms == 0) {
        EXPECT_TRUE(reply.status >= 200 && reply.status < 600) << target;
        if (reply.content_type == "application/json" && !reply.body.empty() && reply.endpoint != "GET /malformed-json")
          EXPECT_FALSE(json::parse(reply.body, nullptr, false).is_discarded()) << target << " " << reply.body;
      }
      router.stats().request(reply.endpoint, reply.status, r.arrival);
    }
    EXPECT_FALSE(json::parse(router.stats().json(), nullptr, false).is_discarded());
  }
}

}  // namespace
}  // namespace isthmus::sandbox
