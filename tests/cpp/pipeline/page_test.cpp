#include "isthmus/pipeline/page.hpp"

#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace isthmus::pipeline {
namespace {

// Renders what the visitor sees back as compact text, to compare with the input.
class Printer : public JsonVisitor {
 public:
  std::string out;
  std::vector<bool> first{true};
  void sep() {
    if (!first.back() && (out.empty() || out.back() != ':')) out += ',';
    first.back() = false;
  }
  void null() override { sep(); out += "null"; }
  void boolean(bool v) override { sep(); out += v ? "true" : "false"; }
  void integer(std::int64_t v) override { sep(); out += std::to_string(v); }
  void unsigned_integer(std::uint64_t v) override { sep(); out += std::to_string(v) + "u"; }
  void number(double v) override { sep(); out += "d"; }
  void string(std::string_view v) override { sep(); out += '"'; out += v; out += '"'; }
  void begin_array(std::size_t) override { sep(); out += '['; first.push_back(true); }
  void end_array() override { first.pop_back(); out += ']'; }
  void begin_object(std::size_t) override { sep(); out += '{'; first.push_back(true); }
  void key(std::string_view k) override { sep(); out += '"'; out += k; out += "\":"; first.back() = true; }
  void end_object() override { first.pop_back(); out += '}'; }
};

TEST(Page, FindsRecordsAndFieldsByPath) {
  std::string err;
  auto page = Page::parse(R"({"data":[{"id":"a","n":-1},{"id":"b","n":2.5}],
                              "meta":{"next_cursor":"c2","total":2,"more":true,"none":null}})", err);
  ASSERT_TRUE(page) << err;
  std::size_t n = 0;
  EXPECT_EQ(page->find_records("data", n), Page::Records::ok);
  EXPECT_EQ(n, 2u);
  EXPECT_EQ(page->text("meta.next_cursor"), "c2");
  EXPECT_EQ(page->text("meta.total"), "2");
  EXPECT_EQ(page->text("meta.more"), "true");
  EXPECT_EQ(page->text("meta.none"), std::nullopt);
  EXPECT_EQ(page->text("meta.absent"), std::nullopt);
  EXPECT_EQ(page->text("data.1.id"), "b");
  Printer p;
  page->visit_records("data", p);
  EXPECT_EQ(p.out, R"([{"id":"a","n":-1},{"id":"b","n":d}])");
}

// Pages are parsed by one reused parser per thread and keep a copy sized to what they hold:
// each page must stay whole while later pages (small, failed, and one big enough for the
// parser to let its buffers go) are parsed on the same thread.
TEST(Page, EachPageKeepsItsOwnDocumentWhileLaterOnesAreParsed) {
  std::string err;
  const std::string first_body = R"({"data":[{"id":"a","n":-1,"u":18446744073709551615,"d":0.5,"s":"\u00e9t\u00e9",)"
                                 R"("e":"","t":true,"z":null,"tags":["x",""]}],"meta":{"next":"c2"}})";
  auto first = Page::parse(first_body, err);
  ASSERT_TRUE(first) << err;
  auto second = Page::parse(R"([{"id":"b"},"last string"])", err);
  ASSERT_TRUE(second) << err;
  EXPECT_FALSE(Page::parse(R"({"data":[1,2)", err));
  std::string big = R"({"data":[)";
  for (int i = 0; i < 200000; ++i) big += std::string(i ? "," : "") + R"({"id":")" + std::to_string(i) + R"(","v":1.5})";
  big += "]}";
  auto third = Page::parse(big, err);
  ASSERT_TRUE(third) << err;
  auto fourth = Page::parse(R"({"data":[{"id":"c"}]})", err);
  ASSERT_TRUE(fourth) << err;

  Printer p1;
  first->visit_records("data", p1);
  EXPECT_EQ(p1.out, "[{\"id\":\"a\",\"n\":-1,\"u\":18446744073709551615u,\"d\":d,\"s\":\"\xc3\xa9t\xc3\xa9\","
                    "\"e\":\"\",\"t\":true,\"z\":null,\"tags\":[\"x\",\"\"]}]");
  EXPECT_EQ(first->text("meta.next"), "c2");
  Printer p2;
  second->visit_records("", p2);
  EXPECT_EQ(p2.out, R"([{"id":"b"},"last string"])");
  std::size_t n = 0;
  EXPECT_EQ(third->find_records("data", n), Page::Records::ok);
  EXPECT_EQ(n, 200000u);
  EXPECT_EQ(third->text("data.199999.id"), "199999");
  EXPECT_EQ(fourth->text("data.0.id"), "c");
}

TEST(Page, SaysWhyRecordsAreNotThere) {
  std::string err;
  auto page = Page::parse(R"({"data":{"id":1},"items":[]})", err);
  ASSERT_TRUE(page);
  std::size_t n = 99;
  EXPECT_EQ(page->find_records("results", n), Page::Records::missing);
  EXPECT_EQ(page->find_records("data", n), Page::Records::not_an_array);
  EXPECT_EQ(page->find_records("items", n), Page::Records::ok);
  EXPECT_EQ(n, 0u);
}

TEST(Page, BareArrayIsTheEmptyPath) {
  std::string err;
  auto page = Page::parse(R"([1, 2, 3])", err);
  ASSERT_TRUE(page);
  std::size_t n = 0;
  EXPECT_EQ(page->find_records("", n), Page::Records::ok);
  EXPECT_EQ(n, 3u);
}

// Found by tests/fuzz/page_fuzz: an empty body made simdjson copy zero bytes from a null pointer.
TEST(Page, AnEmptyBodyIsAnError) {
  std::string err;
  EXPECT_EQ(Page::parse(std::string_view{}, err), nullptr);
  EXPECT_NE(err.find("empty"), std::string::npos) << err;
}

TEST(Page, MalformedBodyIsAnErrorWithItsPlace) {
  std::string err;
  EXPECT_EQ(Page::parse(R"({"data": [1, 2)", err), nullptr);
  EXPECT_NE(err.find("parse error"), std::string::npos) << err;
}

// Found by tests/fuzz/page_fuzz: a number beyond a double's range once escaped Page::parse as
// an exception (a RuntimeError in Python, not a malformed page).
TEST(Page, ANumberTooLargeForADoubleIsAnErrorNotAnException) {
  std::string err;
  std::unique_ptr<Page> page;
  EXPECT_NO_THROW(page = Page::parse(R"({"data": [1], "x": -1.5e600})", err));
  EXPECT_EQ(page, nullptr);
  EXPECT_NE(err.find("number"), std::string::npos) << err;
}

// Found by tests/fuzz/page_fuzz: a parser's message that quoted the bytes it choked on, half a
// UTF-8 character included, broke the Python str it becomes. The messages never quote the body.
TEST(Page, AnErrorMessageIsPrintableWhateverTheBodyHeld) {
  std::string err;
  EXPECT_EQ(Page::parse("{\"data\": [1], \"x\": \xc3}", err), nullptr);
  for (unsigned char c : err) EXPECT_TRUE(c >= 0x20 && c < 0x7f) << err;
  EXPECT_NE(err.find("parse error"), std::string::npos) << err;
  EXPECT_EQ(Page::parse("[\"a\n\x01\"]", err), nullptr);
  for (unsigned char c : err) EXPECT_TRUE(c >= 0x20 && c < 0x7f) << err;
}

// Found while writing page_fuzz (its inputs are too short to reach it): a 2 MB body of '['
// made visit_records recurse a million deep and crashed the process. Deep bodies are refused.
TEST(Page, NestingBeyondTheLimitIsRefusedAndTheLimitItselfWorks) {
  auto nested = [](std::size_t depth) {
    return R"({"data":)" + std::string(depth - 1, '[') + std::string(depth - 1, ']') + "}";
  };
  std::string err;
  EXPECT_EQ(Page::parse(nested(1'000'000), err), nullptr);
  EXPECT_NE(err.find("nested deeper than 1000 levels at byte 1007"), std::string::npos) << err;
  EXPECT_EQ(Page::parse(nested(Page::kMaxDepth + 1), err), nullptr);

  auto page = Page::parse(nested(Page::kMaxDepth), err);
  ASSERT_TRUE(page) << err;
  std::size_t n = 0;
  ASSERT_EQ(page->find_records("data", n), Page::Records::ok);
  EXPECT_EQ(n, 1u);
  Printer p;
  page->visit_records("data", p);
  EXPECT_EQ(p.out, std::string(Page::kMaxDepth - 1, '[') + std::string(Page::kMaxDepth - 1, ']'));

  // Brackets inside strings are text, not nesting.
  const std::string in_strings = R"({"data":[")" + std::string(5000, '[') + R"(\"{"]})";
  ASSERT_TRUE(Page::parse(in_strings, err)) << err;
}

}  // namespace
}  // namespace isthmus::pipeline
