#include "isthmus/error.hpp"

#include <gtest/gtest.h>

#include <set>
#include <string>

namespace isthmus {
namespace {

TEST(Printable, KeepsPrintableAsciiAndEscapesEveryOtherByte) {
  EXPECT_EQ(printable("syntax error at byte 7: 'x'"), "syntax error at byte 7: 'x'");
  EXPECT_EQ(printable(std::string("a\nb\tc\0d", 7)), "a\\x0ab\\x09c\\x00d");
  EXPECT_EQ(printable("caf\xc3\xa9 \x7f\xff"), "caf\\xc3\\xa9 \\x7f\\xff");
  EXPECT_EQ(printable("back\\slash"), "back\\x5cslash");  // so the escaping reads unambiguously
  EXPECT_EQ(printable(""), "");
}

TEST(ErrorCategory, EveryCodeHasANameAndAMessage) {
  std::set<std::string_view> names;
  for (int v = 0; v < kErrcCount; ++v) {
    const auto e = static_cast<errc>(v);
    EXPECT_FALSE(name(e).empty()) << v;
    EXPECT_NE(make_error_code(e).message(), "unknown isthmus error") << name(e);
    EXPECT_TRUE(names.insert(name(e)).second) << name(e);
  }
  EXPECT_EQ(name(errc::connect_failed), "connect_failed");
  EXPECT_TRUE(name(static_cast<errc>(kErrcCount)).empty());
}

}  // namespace
}  // namespace isthmus
