#include "isthmus/auth/token_store.hpp"

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "isthmus/auth/crypto.hpp"
#include "isthmus/error.hpp"

namespace isthmus::auth {
namespace {

struct TempFile {
  std::filesystem::path path;
  TempFile() {
    path = std::filesystem::temp_directory_path() /
           ("isthmus-token-store-" + hex(random_bytes(8)) + ".db");
  }
  ~TempFile() {
    for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path.string() + suffix);
  }
};

TokenRecord sample() {
  TokenRecord r;
  r.access_token = "access-AAAA";
  r.refresh_token = "refresh-RRRR";
  r.scope = "read";
  r.expires_at = 1234.5;
  return r;
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(TokenStore, MemoryRoundTrip) {
  auto s = make_memory_token_store();
  EXPECT_FALSE(s->load("a"));
  s->save("a", sample());
  EXPECT_EQ(s->load("a")->refresh_token, "refresh-RRRR");
  s->erase("a");
  EXPECT_FALSE(s->load("a"));
}

TEST(TokenStore, SqliteRoundTripsAcrossReopen) {
  TempFile f;
  const std::string key = random_bytes(32);
  make_sqlite_token_store(f.path, key)->save("cred-1", sample());
  auto r = make_sqlite_token_store(f.path, key)->load("cred-1");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->access_token, "access-AAAA");
  EXPECT_EQ(r->refresh_token, "refresh-RRRR");
  EXPECT_EQ(r->scope, "read");
  EXPECT_DOUBLE_EQ(r->expires_at, 1234.5);
}

TEST(TokenStore, SqliteKeepsSecretsEncryptedAtRest) {
  TempFile f;
  {
    auto s = make_sqlite_token_store(f.path, random_bytes(32));
    s->save("cred-1", sample());
  }
  std::string all = file_bytes(f.path) + file_bytes(f.path.string() + "-wal");
  EXPECT_EQ(all.find("refresh-RRRR"), std::string::npos);
  EXPECT_EQ(all.find("access-AAAA"), std::string::npos);
}

TEST(TokenStore, SqliteDetectsWrongKeyAndMovedRecords) {
  TempFile f;
  const std::string key = random_bytes(32);
  make_sqlite_token_store(f.path, key)->save("cred-1", sample());
  try {
    make_sqlite_token_store(f.path, random_bytes(32))->load("cred-1");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), make_error_code(errc::token_store_tampered));
  }
  // Copy cred-1's sealed record under another id: the id is the AAD, so it must not open.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(f.path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "INSERT INTO isthmus_tokens SELECT 'cred-2', sealed, updated_at "
                             "FROM isthmus_tokens WHERE id = 'cred-1'", nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  EXPECT_THROW(make_sqlite_token_store(f.path, key)->load("cred-2"), Error);
  EXPECT_TRUE(make_sqlite_token_store(f.path, key)->load("cred-1"));
}

TEST(TokenStore, KeyParsingAndClearErrors) {
  const std::string key = random_bytes(32);
  EXPECT_EQ(parse_token_key(hex(key), "test"), key);
  EXPECT_EQ(parse_token_key(" " + base64(key) + "\n", "test"), key);
  EXPECT_THROW(parse_token_key("too-short", "test"), Error);
  ::unsetenv("ISTHMUS_TEST_NO_SUCH_KEY");
  try {
    token_key_from_env("ISTHMUS_TEST_NO_SUCH_KEY");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), make_error_code(errc::token_store_error));
    EXPECT_NE(std::string(e.what()).find("ISTHMUS_TEST_NO_SUCH_KEY"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("generate_key"), std::string::npos);
  }
  ::setenv("ISTHMUS_TEST_KEY", hex(key).c_str(), 1);
  EXPECT_EQ(token_key_from_env("ISTHMUS_TEST_KEY"), key);
  ::unsetenv("ISTHMUS_TEST_KEY");
  EXPECT_THROW(token_key_from_file("/nonexistent/isthmus.key"), Error);
}

}  // namespace
}  // namespace isthmus::auth
