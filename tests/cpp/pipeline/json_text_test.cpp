#include "isthmus/pipeline/json_write.hpp"

#include <string>

#include <gtest/gtest.h>

namespace isthmus::pipeline {
namespace {

// The escaping rule one byte at a time, to hold the word-at-a-time scan to.
std::string quoted_slowly(const std::string& s) {
  static const char* hex = "0123456789abcdef";
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"') out += "\\\"";
    else if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c == '\b') out += "\\b";
    else if (c == '\f') out += "\\f";
    else if (c < 0x20) out += std::string("\\u00") + hex[c >> 4] + hex[c & 0xf];
    else out += static_cast<char>(c);
  }
  return out + "\"";
}

TEST(JsonText, QuotingEscapesEveryByteThatNeedsItWhereverItFalls) {
  // Each byte that needs escaping, and neighbours that must not (0x1f/0x20, 0x21, 0x5b/0x5d,
  // UTF-8 bytes), at every offset of strings from 0 to 40 bytes: inside 8-byte words and tails.
  const std::string specials = std::string("\"\\\n\r\t\b\f\x01\x1f", 9) + std::string(1, '\0');
  const std::string neighbours = " !#[]~\x7f\xc3\xa9\xe2\x80\x94";
  for (std::size_t len = 0; len <= 40; ++len) {
    for (std::size_t at = 0; at < len; ++at) {
      for (char c : specials + neighbours) {
        std::string s(len, 'a');
        s[at] = c;
        if (at + 3 < len) s[at + 3] = '"';
        std::string out = "prefix:";
        append_quoted(out, s);
        ASSERT_EQ(out, "prefix:" + quoted_slowly(s)) << "len " << len << " at " << at << " byte " << int(c);
      }
    }
    std::string clean(len, 'x');
    std::string out;
    append_quoted(out, clean);
    EXPECT_EQ(out, "\"" + clean + "\"");
  }
}

}  // namespace
}  // namespace isthmus::pipeline
