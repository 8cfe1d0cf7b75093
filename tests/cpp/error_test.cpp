#include "isthmus/error.hpp"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace isthmus
