#include "isthmus/webhook/request.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "isthmus/auth/crypto.hpp"
#include "isthmus/error.hpp"

namespace isthmus::webhook {
namespace {

constexpr double kNow = 1700000000;
const std::string kSecret = "whsec_" + auth::base64("request-test-key");

Route make_route(std::string path, Scheme scheme, std::string secret, double tolerance = 300,
                 std::string id_header = "", std::string timestamp_header = "", std::string signature_header = "") {
  Route r;
  r.path = std::move(path);
  r.scheme = scheme;
  r.secret = std::move(secret);
  r.tolerance = tolerance;
  r.id_header = std::move(id_header);
  r.timestamp_header = std::move(timestamp_header);
  r.signature_header = std::move(signature_header);
  return r;
}

std::vector<Route> routes() {
  Route standard = make_route("/hooks/crm", Scheme::standard, kSecret);
  Route stripe = make_route("/hooks/stripe", Scheme::stripe, "whsec_stripe");
  Route github = make_route("/hooks/gh", Scheme::github, "gh");
  Route hmac = make_route("/hooks/hmac", Scheme::hmac, "h", 300, "X-Id", "X-Time", "X-Sig");
  return {standard, stripe, github, hmac};
}

http::Headers standard_headers(const std::string& id, double ts, const std::string& body) {
  return auth::sign_webhook(auth::WebhookScheme::standard, kSecret, id, ts, body);
}

TEST(WebhookRequest, RouteMethodAndLengthComeFirst) {
  auto r = routes();
  EXPECT_EQ(check_head(r, "POST", "/nope", 10, 100).outcome, Outcome::unknown_route);
  EXPECT_EQ(check_head(r, "GET", "/hooks/crm", std::nullopt, 100).outcome, Outcome::method_not_allowed);
  EXPECT_EQ(check_head(r, "POST", "/hooks/crm", 101, 100).outcome, Outcome::too_large);
  auto ok = check_head(r, "POST", "/hooks/gh?x=1", 100, 100);
  EXPECT_TRUE(ok.ok());
  EXPECT_EQ(ok.route, 2u);
  EXPECT_EQ(outcome_status(Outcome::too_large), 413);
  EXPECT_EQ(outcome_status(Outcome::stale), 401);
}

TEST(WebhookRequest, StandardAcceptsWhatWasSignedAndNothingElse) {
  auto r = routes();
  const std::string body = R"({"type":"x"})";
  auto v = check_request(r, "POST", "/hooks/crm", standard_headers("msg_1", kNow - 5, body), body, 1000, kNow);
  ASSERT_TRUE(v.ok()) << v.message;
  EXPECT_EQ(v.event_id, "msg_1");
  EXPECT_EQ(v.timestamp, kNow - 5);
  auto bad = check_request(r, "POST", "/hooks/crm", standard_headers("msg_1", kNow, body), body + " ", 1000, kNow);
  EXPECT_EQ(bad.outcome, Outcome::bad_signature);
  auto stale = check_request(r, "POST", "/hooks/crm", standard_headers("m", kNow - 301, body), body, 1000, kNow);
  EXPECT_EQ(stale.outcome, Outcome::stale);
  EXPECT_EQ(stale.check, "timestamp");
  auto missing = check_request(r, "POST", "/hooks/crm", {}, body, 1000, kNow);
  EXPECT_EQ(missing.outcome, Outcome::bad_headers);
  const std::string junk = "{nope";
  auto json = check_request(r, "POST", "/hooks/crm", standard_headers("m", kNow, junk), junk, 1000, kNow);
  EXPECT_EQ(json.outcome, Outcome::bad_json);
  auto long_id = check_request(r, "POST", "/hooks/crm", standard_headers(std::string(300, 'i'), kNow, body), body,
                               1000, kNow);
  EXPECT_EQ(long_id.outcome, Outcome::bad_headers);
  EXPECT_EQ(long_id.check, "event_id");
}

TEST(WebhookRequest, StripeTakesTheIdFromTheBody) {
  auto r = routes();
  const std::string body = R"({"id":"evt_1","object":"event"})";
  auto h = auth::sign_webhook(auth::WebhookScheme::stripe, "whsec_stripe", "", kNow, body);
  auto v = check_request(r, "POST", "/hooks/stripe", h, body, 1000, kNow);
  ASSERT_TRUE(v.ok()) << v.message;
  EXPECT_EQ(v.event_id, "evt_1");
  EXPECT_EQ(v.timestamp, kNow);
  const std::string no_id = R"({"object":"event"})";
  auto h2 = auth::sign_webhook(auth::WebhookScheme::stripe, "whsec_stripe", "", kNow, no_id);
  EXPECT_EQ(check_request(r, "POST", "/hooks/stripe", h2, no_id, 1000, kNow).check, "event_id");
}

TEST(WebhookRequest, GithubAndHmac) {
  auto r = routes();
  const std::string body = R"([1,2])";
  auto gh = auth::sign_webhook(auth::WebhookScheme::github, "gh", "", 0, body);
  gh.emplace_back("X-GitHub-Delivery", "d-1");
  auto v = check_request(r, "POST", "/hooks/gh", gh, body, 1000, kNow);
  ASSERT_TRUE(v.ok()) << v.message;
  EXPECT_EQ(v.event_id, "d-1");
  EXPECT_FALSE(v.timestamp);

  const std::string mac = auth::hmac(auth::Digest::sha256, "h", body);
  for (const std::string& sig : {auth::hex(mac), "sha256=" + auth::hex(mac), auth::base64(mac)}) {
    http::Headers h{{"x-sig", sig}, {"x-id", "e-1"}, {"x-time", std::to_string(static_cast<long long>(kNow))}};
    auto ok = check_request(r, "POST", "/hooks/hmac", h, body, 1000, kNow);
    EXPECT_TRUE(ok.ok()) << sig << " " << ok.message;
    EXPECT_EQ(ok.timestamp, kNow);
  }
  http::Headers wrong{{"x-sig", auth::hex(auth::hmac(auth::Digest::sha256, "other", body))}, {"x-id", "e"},
                      {"x-time", std::to_string(static_cast<long long>(kNow))}};
  EXPECT_EQ(check_request(r, "POST", "/hooks/hmac", wrong, body, 1000, kNow).outcome, Outcome::bad_signature);
  http::Headers garbled{{"x-sig", "not a mac"}, {"x-id", "e"}, {"x-time", "1"}};
  EXPECT_EQ(check_request(r, "POST", "/hooks/hmac", garbled, body, 1000, 1).outcome, Outcome::bad_headers);
}

TEST(WebhookRequest, TheMessageIsOneJsonObjectInTheAgreedShape) {
  auto r = routes();
  Verdict v;
  v.event_id = R"(id "quoted" \ here)";
  v.timestamp = kNow;
  const std::string body = R"({"a": [1, {"b": null}]})";
  auto j = nlohmann::json::parse(event_message(r[0], v, kNow + 0.25, body));
  EXPECT_EQ(j["route"], "/hooks/crm");
  EXPECT_EQ(j["event_id"], v.event_id);
  EXPECT_DOUBLE_EQ(j["received_at"].get<double>(), kNow + 0.25);
  EXPECT_EQ(j["timestamp"], kNow);
  EXPECT_EQ(j["event"], nlohmann::json::parse(body));
  v.timestamp.reset();
  EXPECT_TRUE(nlohmann::json::parse(event_message(r[0], v, kNow, body))["timestamp"].is_null());
  auto e = nlohmann::json::parse(error_body("signature", "bad \"one\"\n"));
  EXPECT_EQ(e["error"], "signature");
}

TEST(WebhookRequest, BadRoutesNameTheFieldAndNotTheSecret) {
  auto expect_error = [](std::vector<Route> rs, const std::string& field) {
    try {
      validate_routes(rs);
      ADD_FAILURE() << "no error for " << field;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).find("whsec_%%"), std::string::npos) << e.what();
    }
  };
  expect_error({}, "routes");
  expect_error({make_route("nope", Scheme::github, "s")}, "path");
  expect_error({make_route("/a", Scheme::github, "s"), make_route("/a", Scheme::github, "s")}, "twice");
  expect_error({make_route("/a", Scheme::github, "")}, "secret");
  expect_error({make_route("/a", Scheme::standard, "whsec_%%")}, "secret");
  expect_error({make_route("/a", Scheme::github, "s", -1)}, "tolerance");
  expect_error({make_route("/a", Scheme::github, "s", 300, "X-Id")}, "id_header");
  expect_error({make_route("/a", Scheme::hmac, "s", 300, "bad header")}, "id_header");
  EXPECT_NO_THROW(validate_routes(routes()));
  EXPECT_THROW(parse_scheme("gitlab"), Error);
}

}  // namespace
}  // namespace isthmus::webhook
