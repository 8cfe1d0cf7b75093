#include "isthmus/pipeline/field_map.hpp"

#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace isthmus::pipeline {
namespace {

std::unique_ptr<Page> parse(std::string_view body) {
  std::string err;
  auto page = Page::parse(body, err);
  EXPECT_TRUE(page) << err;
  return page;
}

FieldRule rule(std::vector<std::string> target, std::optional<std::string> source, Cast cast = Cast::none,
               bool required = false, std::string fallback = "null") {
  return FieldRule{std::move(target), std::move(source), cast, required, std::move(fallback)};
}

TEST(FieldMap, MapsRecordsOfAPageToJsonText) {
  FieldMap map({rule({"id"}, "id"), rule({"owner", "name"}, "owner_name"), rule({"n"}, "size", Cast::int64),
                rule({"source"}, std::nullopt, Cast::none, false, "\"crm\""), rule({"owner", "city"}, "address.city"),
                rule({"seen"}, "at", Cast::datetime)});
  auto page = parse(R"({"data":[{"id":"a","owner_name":"Ann","size":"42","address":{"city":"Oslo"},"at":0},
                                {"id":7,"size":3.0,"at":"2024-01-10T03:00:00+01:00"}]})");
  MappedBatch out;
  ASSERT_EQ(map.map_page(*page, "data", "id", out), Page::Records::ok);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out.read(), 2u);
  // Fields in the order they first appear; nested targets grouped under their first field.
  EXPECT_EQ(out.record(0), R"({"id":"a","owner":{"name":"Ann","city":"Oslo"},"n":42,"source":"crm",)"
                           R"("seen":"1970-01-01T00:00:00.000Z"})");
  EXPECT_EQ(out.record(1), R"({"id":7,"owner":{"name":null,"city":null},"n":3,"source":"crm",)"
                           R"("seen":"2024-01-10T02:00:00.000Z"})");
  EXPECT_EQ(out.key(0), "a");
  EXPECT_EQ(out.key(1), "7");
  EXPECT_EQ(out.lines(), std::string(out.record(0)) + "\n" + std::string(out.record(1)) + "\n");
}

TEST(FieldMap, FailuresCarryTheSameMessagesAsThePythonMapping) {
  FieldMap map({rule({"id"}, "id"), rule({"email"}, "email", Cast::none, true), rule({"n"}, "n", Cast::int64)});
  auto page = parse(R"([{"id":1,"email":"a@x","n":"4x"},{"id":2},{"id":3,"email":null},
                        {"id":4,"email":"b@x","n":{"a":1}},5,{"id":6,"email":"c@x","n":"6"}])");
  MappedBatch out;
  ASSERT_EQ(map.map_page(*page, "", "id", out), Page::Records::ok);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out.record(0), R"({"id":6,"email":"c@x","n":6})");
  ASSERT_EQ(out.failures().size(), 5u);
  const auto& f = out.failures();
  EXPECT_EQ(f[0].index, 0u);
  EXPECT_EQ(f[0].reason, "field 'n' (from 'n'): '4x' is not an integer");
  EXPECT_EQ(f[0].record, R"({"id":1,"email":"a@x","n":"4x"})");
  EXPECT_EQ(f[0].key, "1");
  EXPECT_EQ(f[1].reason, "field 'email': 'email' is missing and the field is required");
  EXPECT_EQ(f[2].reason, "field 'email': 'email' is null and the field is required");
  EXPECT_EQ(f[3].reason, "field 'n': 'n' is a dict, which cannot be cast to int");
  EXPECT_EQ(f[4].index, 4u);
  EXPECT_EQ(f[4].reason, "the record is of type int, not an object");
  EXPECT_EQ(f[4].key, std::nullopt);
  EXPECT_EQ(out.read(), 6u);
}

// Copied numbers in Python's repr (what json_dumps writes); a str cast words a number as
// cast.cpp does on either path (the shortest text that reads back the same).
TEST(FieldMap, WritesValuesAsThePythonJsonWriterDoes) {
  FieldMap map({rule({"x"}, "x"), rule({"f"}, "x", Cast::float64), rule({"s"}, "x", Cast::str)});
  auto page = parse(R"([{"x":1e16},{"x":1e15},{"x":0.0001},{"x":1e-5},{"x":-0.0},{"x":2.5},
                        {"x":"tab\tq\"\u0001é"},{"x":18446744073709551615},{"x":[1,{"a":true}]}])");
  MappedBatch out;
  ASSERT_EQ(map.map_page(*page, "", "x", out), Page::Records::ok);
  ASSERT_EQ(out.size(), 7u);  // the text and the list do not cast to float
  EXPECT_EQ(out.record(0), R"({"x":1e+16,"f":1e+16,"s":"1e+16"})");
  EXPECT_EQ(out.record(1), R"({"x":1000000000000000.0,"f":1000000000000000.0,"s":"1e+15"})");
  EXPECT_EQ(out.record(2), R"({"x":0.0001,"f":0.0001,"s":"1e-04"})");
  EXPECT_EQ(out.record(3), R"({"x":1e-05,"f":1e-05,"s":"1e-05"})");
  EXPECT_EQ(out.record(4), R"({"x":-0.0,"f":-0.0,"s":"-0"})");
  EXPECT_EQ(out.record(5), R"({"x":2.5,"f":2.5,"s":"2.5"})");
  EXPECT_EQ(out.key(5), "2.5");
  EXPECT_EQ(out.record(6), R"({"x":18446744073709551615,"f":1.8446744073709552e+19,"s":"18446744073709551615"})");
  ASSERT_EQ(out.failures().size(), 2u);
  EXPECT_EQ(out.failures()[0].record, "{\"x\":\"tab\\tq\\\"\\u0001\xc3\xa9\"}");
  EXPECT_EQ(out.failures()[0].reason, "field 'f' (from 'x'): 'tab\tq\"\x01\xc3\xa9' is not a number");
  EXPECT_EQ(out.failures()[1].reason, "field 'f': 'x' is a list, which cannot be cast to float");
}

TEST(FieldMap, CopiesRecordsWithoutAMapping) {
  auto page = parse(R"({"data":[{"id":"a","n":[1,2.0,null]},{"name":"no id"}]})");
  MappedBatch out;
  ASSERT_EQ(FieldMap::copy_page(*page, "data", "id", out), Page::Records::ok);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out.record(0), R"({"id":"a","n":[1,2.0,null]})");
  EXPECT_EQ(out.key(1), std::nullopt);
  // A keyless record keeps its input, so the caller can derive its key from it.
  ASSERT_EQ(out.keyless().size(), 1u);
  EXPECT_EQ(out.keyless()[0].first, 1u);
  EXPECT_EQ(out.keyless()[0].second, R"({"name":"no id"})");
}

TEST(FieldMap, SaysWhenTheRecordsAreNotThere) {
  FieldMap map({rule({"id"}, "id")});
  auto page = parse(R"({"data":{"id":1}})");
  MappedBatch out;
  EXPECT_EQ(map.map_page(*page, "data", "id", out), Page::Records::not_an_array);
  EXPECT_EQ(map.map_page(*page, "items", "id", out), Page::Records::missing);
  EXPECT_EQ(out.size(), 0u);
}

TEST(FieldMap, RefusesATargetThatIsBothAValueAndAnObject) {
  EXPECT_THROW(FieldMap({rule({"a"}, "x"), rule({"a", "b"}, "y")}), std::invalid_argument);
  EXPECT_THROW(FieldMap({rule({"a", "b"}, "x"), rule({"a"}, "y")}), std::invalid_argument);
}

}  // namespace
}  // namespace isthmus::pipeline
