// What the coordination area does without a server: its URL, its redaction, its scripts.
#include <gtest/gtest.h>

#include "isthmus/auth/crypto.hpp"
#include "isthmus/coord/coordination.hpp"
#include "isthmus/error.hpp"

namespace isthmus::coord {
namespace {

TEST(RedisUrl, ReadsHostPortPasswordAndDatabase) {
  auto u = parse_redis_url("redis://:s%40cret@10.0.0.5:6380/3");
  EXPECT_EQ(u.host, "10.0.0.5");
  EXPECT_EQ(u.port, 6380);
  EXPECT_EQ(u.username, "");
  EXPECT_EQ(u.password, "s@cret");
  EXPECT_EQ(u.db, 3);

  auto d = parse_redis_url("redis://cache.internal");
  EXPECT_EQ(d.host, "cache.internal");
  EXPECT_EQ(d.port, 6379);
  EXPECT_EQ(d.db, 0);
  EXPECT_TRUE(d.password.empty());

  auto acl = parse_redis_url("redis://worker:pw@[::1]:7000/");
  EXPECT_EQ(acl.host, "::1");
  EXPECT_EQ(acl.port, 7000);
  EXPECT_EQ(acl.username, "worker");
  EXPECT_EQ(acl.password, "pw");

  // A lone userinfo is the password, as redis-cli reads it.
  EXPECT_EQ(parse_redis_url("redis://pw@h/0").password, "pw");
}

std::string error_of(const std::string& url) {
  try {
    parse_redis_url(url);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), make_error_code(errc::invalid_url));
    return e.what();
  }
  ADD_FAILURE() << url << " was accepted";
  return {};
}

TEST(RedisUrl, RefusesWhatItCannotUseNamingTheUrlWithoutThePassword) {
  EXPECT_NE(error_of("http://h:6379").find("scheme must be redis://"), std::string::npos);
  EXPECT_NE(error_of("rediss://h:6379").find("TLS"), std::string::npos);
  EXPECT_NE(error_of("h:6379").find("expected redis://"), std::string::npos);
  EXPECT_NE(error_of("redis://:pw@:6379").find("host is missing"), std::string::npos);
  EXPECT_NE(error_of("redis://h:0").find("port"), std::string::npos);
  EXPECT_NE(error_of("redis://h:70000").find("port"), std::string::npos);
  EXPECT_NE(error_of("redis://h/x").find("database"), std::string::npos);
  EXPECT_NE(error_of("redis://h/0?timeout=1").find("query"), std::string::npos);
  const auto msg = error_of("redis://:hunter2@h:port/0");
  EXPECT_EQ(msg.find("hunter2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("redis://:***@h:port/0"), std::string::npos) << msg;
}

TEST(Scripts, AreNamedByTheSha1OfTheirText) {
  for (const Script* s : {&gcra_script(), &release_script(), &renew_script()}) {
    EXPECT_EQ(s->sha1, auth::hex(auth::hash(auth::Digest::sha1, s->text)));
    EXPECT_EQ(s->sha1.size(), 40u);
  }
  EXPECT_NE(gcra_script().sha1, release_script().sha1);
}

TEST(Scripts, TheLimitReadsRedisClockAndComparesLeasesByToken) {
  // The workers' clocks must not matter: the only time the limit script reads is Redis' own.
  EXPECT_NE(gcra_script().text.find("redis.call('TIME')"), std::string::npos);
  EXPECT_EQ(gcra_script().text.find("ARGV[0]"), std::string::npos);
  for (const Script* s : {&release_script(), &renew_script()})
    EXPECT_NE(s->text.find("redis.call('GET', KEYS[1]) == ARGV[1]"), std::string::npos);
}

TEST(Options, AreValidatedNamingTheField) {
  Options o;
  o.url = "redis://127.0.0.1:6379/0";
  EXPECT_NO_THROW(validate(o));
  o.connect_timeout = 0;
  try {
    validate(o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("connect_timeout"), std::string::npos);
  }
  o.connect_timeout = 1;
  o.ns = "";
  EXPECT_THROW(validate(o), Error);
}

}  // namespace
}  // namespace isthmus::coord
