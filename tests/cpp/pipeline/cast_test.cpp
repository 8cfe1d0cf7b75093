#include "isthmus/pipeline/cast.hpp"

#include <gtest/gtest.h>

namespace isthmus::pipeline {
namespace {

Scalar ok(const Scalar& in, Cast to) {
  std::string why;
  auto out = cast_scalar(in, to, why);
  EXPECT_TRUE(out.has_value()) << why;
  return out.value_or(Scalar{});
}

std::string refused(const Scalar& in, Cast to) {
  std::string why;
  auto out = cast_scalar(in, to, why);
  EXPECT_FALSE(out.has_value());
  return why;
}

TEST(Cast, NamesRoundTrip) {
  for (auto c : {Cast::str, Cast::int64, Cast::float64, Cast::boolean, Cast::datetime})
    EXPECT_EQ(cast_from_name(cast_name(c)), c);
  EXPECT_EQ(cast_from_name("integer"), std::nullopt);
}

TEST(Cast, IntegersAreExact) {
  EXPECT_EQ(ok(std::string(" 42 "), Cast::int64), Scalar{std::int64_t{42}});
  EXPECT_EQ(ok(std::string("+7"), Cast::int64), Scalar{std::int64_t{7}});
  EXPECT_EQ(ok(42.0, Cast::int64), Scalar{std::int64_t{42}});
  EXPECT_EQ(ok(std::string("1e3"), Cast::int64), Scalar{std::int64_t{1000}});
  EXPECT_NE(refused(42.5, Cast::int64).find("42.5 is not an integer"), std::string::npos);
  EXPECT_NE(refused(std::string("4x"), Cast::int64).find("'4x' is not an integer"), std::string::npos);
  refused(std::string("99999999999999999999"), Cast::int64);
  refused(true, Cast::int64);
}

TEST(Cast, FloatsAndText) {
  EXPECT_EQ(ok(std::string("2.5"), Cast::float64), Scalar{2.5});
  EXPECT_EQ(ok(std::int64_t{3}, Cast::float64), Scalar{3.0});
  refused(std::string("nan"), Cast::float64);
  refused(std::string(""), Cast::float64);
  EXPECT_EQ(ok(std::int64_t{-5}, Cast::str), Scalar{std::string("-5")});
  EXPECT_EQ(ok(0.1, Cast::str), Scalar{std::string("0.1")});
  EXPECT_EQ(ok(false, Cast::str), Scalar{std::string("false")});
}

TEST(Cast, Booleans) {
  for (auto yes : {"true", "Yes", "ON", "1", " y "}) EXPECT_EQ(ok(std::string(yes), Cast::boolean), Scalar{true});
  for (auto no : {"false", "No", "off", "0", "N"}) EXPECT_EQ(ok(std::string(no), Cast::boolean), Scalar{false});
  EXPECT_EQ(ok(std::int64_t{1}, Cast::boolean), Scalar{true});
  refused(std::int64_t{2}, Cast::boolean);
  refused(std::string("maybe"), Cast::boolean);
}

TEST(Cast, DatetimesBecomeUtc) {
  EXPECT_EQ(ok(std::string("2024-01-10T03:00:00+01:00"), Cast::datetime), Scalar{std::string("2024-01-10T02:00:00.000Z")});
  EXPECT_EQ(ok(std::string("2024-01-10T03:00:00.123456Z"), Cast::datetime), Scalar{std::string("2024-01-10T03:00:00.123Z")});
  EXPECT_EQ(ok(std::string("2024-03-01T00:30-0100"), Cast::datetime), Scalar{std::string("2024-03-01T01:30:00.000Z")});
  EXPECT_EQ(ok(std::string("2024-02-29"), Cast::datetime), Scalar{std::string("2024-02-29T00:00:00.000Z")});
  EXPECT_EQ(ok(std::string("2024-01-01T00:30:00+01:00"), Cast::datetime), Scalar{std::string("2023-12-31T23:30:00.000Z")});
  EXPECT_EQ(ok(std::int64_t{0}, Cast::datetime), Scalar{std::string("1970-01-01T00:00:00.000Z")});
  EXPECT_EQ(ok(1704855600.5, Cast::datetime), Scalar{std::string("2024-01-10T03:00:00.500Z")});
  EXPECT_EQ(ok(std::int64_t{-1}, Cast::datetime), Scalar{std::string("1969-12-31T23:59:59.000Z")});
  for (auto bad : {"2023-02-29", "2024-13-01", "2024-01-10T25:00", "2024-01-10T03:00:00+", "yesterday",
                   "2024-01-10T03:00:00Zjunk", ""})
    EXPECT_NE(refused(std::string(bad), Cast::datetime).find("ISO 8601"), std::string::npos) << bad;
}

TEST(Cast, NullStaysNullAndLongValuesAreCutInMessages) {
  EXPECT_EQ(ok(Scalar{}, Cast::int64), Scalar{});
  const std::string why = refused(std::string(500, 'x'), Cast::int64);
  EXPECT_LT(why.size(), 120u);
}

}  // namespace
}  // namespace isthmus::pipeline
