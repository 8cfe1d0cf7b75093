#include "sandbox/config.hpp"

#include <gtest/gtest.h>

#include <string>

#include "isthmus/error.hpp"

namespace isthmus::sandbox {
namespace {

// The message of the Error that parse_config throws for `text` ("" when it does not throw).
std::string failure(const std::string& text) {
  try {
    parse_config(text);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), make_error_code(errc::invalid_argument));
    return e.what();
  }
  return "";
}

TEST(SandboxConfig, ReadsOptionsAndNamesABadOne) {
  const Config c = parse_config(R"({"records": 250, "pagination": "link", "max_page_size": 50})");
  EXPECT_EQ(c.records, 250u);
  EXPECT_EQ(c.pagination, Pagination::link);
  EXPECT_EQ(c.default_page_size, 20u);
  EXPECT_EQ(failure(R"({"records": -1})"),
            "sandbox option records=-1 is invalid: expected an integer from 0 to 100000000");
}

// Found by tests/fuzz/sandbox_config_fuzz: a bad credential was quoted back in the message.
TEST(SandboxConfig, ABadCredentialIsNamedButNotShown) {
  for (const char* field : {"client_secret", "password", "api_key", "bearer_token", "signing_secret"}) {
    const std::string message = failure(std::string(R"({")") + field + R"(": "hunter2-is-my-secret\u0001"})");
    EXPECT_NE(message.find(std::string("sandbox option ") + field + "=*** is invalid"), std::string::npos) << message;
    EXPECT_EQ(message.find("hunter2"), std::string::npos) << message;
  }
  // Not a credential: the value helps the user and is shown.
  EXPECT_NE(failure(R"({"username": "bad\u0001user"})").find("bad\\u0001user"), std::string::npos);
}

// Found by tests/fuzz/sandbox_config_fuzz: an unknown option (a misspelt "client_secret", say)
// had its value quoted back.
TEST(SandboxConfig, AnUnknownOptionIsNamedWithoutItsValue) {
  const std::string message = failure(R"({"client_secrte": "hunter2-is-my-secret"})");
  EXPECT_EQ(message, "sandbox option client_secrte is unknown: see docs/sandbox.md for the options");
}

// Found by tests/fuzz/sandbox_config_fuzz: the JSON library's message quotes the bytes it
// choked on, half a UTF-8 character included; the message becomes a Python str.
TEST(SandboxConfig, NotJsonGivesAPrintableMessage) {
  const std::string message = failure("{\"records\": \xc3\xa9}");
  EXPECT_EQ(message.rfind("sandbox config is not valid JSON: ", 0), 0u) << message;
  for (unsigned char c : message) EXPECT_TRUE(c >= 0x20 && c < 0x7f) << message;
  EXPECT_NE(message.find("\\xc3"), std::string::npos) << message;
}

}  // namespace
}  // namespace isthmus::sandbox
