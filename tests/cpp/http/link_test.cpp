#include "isthmus/http/link.hpp"

#include <gtest/gtest.h>

namespace isthmus::http {
namespace {

using Params = std::vector<std::pair<std::string, std::string>>;
using Rels = std::vector<std::string>;

TEST(LinkHeader, OneLinkWithAQuotedRel) {
  auto links = parse_link_header(R"(<https://api.example.com/v1/items?page=2>; rel="next")");
  ASSERT_EQ(links.size(), 1u);
  EXPECT_EQ(links[0].target, "https://api.example.com/v1/items?page=2");
  EXPECT_EQ(links[0].rel, Rels{"next"});
  EXPECT_EQ(links[0].params, (Params{{"rel", "next"}}));
}

TEST(LinkHeader, SeveralLinksInOneField) {
  auto links = parse_link_header(
      R"(<https://h/p?page=1>; rel="first", <https://h/p?page=3>; rel=next,<https://h/p?page=9>;rel=last)");
  ASSERT_EQ(links.size(), 3u);
  EXPECT_EQ(links[0].target, "https://h/p?page=1");
  EXPECT_EQ(links[0].rel, Rels{"first"});
  EXPECT_EQ(links[1].target, "https://h/p?page=3");
  EXPECT_EQ(links[1].rel, Rels{"next"});
  EXPECT_EQ(links[2].target, "https://h/p?page=9");
  EXPECT_EQ(links[2].rel, Rels{"last"});
}

TEST(LinkHeader, SeveralRelationTypesInOneRel) {
  auto links = parse_link_header("<https://h/p?page=2>; rel=\"next  Last\tself\"");
  ASSERT_EQ(links.size(), 1u);
  EXPECT_EQ(links[0].rel, (Rels{"next", "last", "self"}));
}

TEST(LinkHeader, QuotedParametersKeepCommasSemicolonsAndEscapes) {
  auto links = parse_link_header(
      R"(<https://h/a,b;c>; title="Page 2, \"the\" middle; really"; REL="next"; type=text/html , <https://h/z>; rel=prev)");
  ASSERT_EQ(links.size(), 2u);
  EXPECT_EQ(links[0].target, "https://h/a,b;c");
  EXPECT_EQ(links[0].rel, Rels{"next"});
  EXPECT_EQ(links[0].params,
            (Params{{"title", "Page 2, \"the\" middle; really"}, {"rel", "next"}, {"type", "text/html"}}));
  EXPECT_EQ(links[1].target, "https://h/z");
  EXPECT_EQ(links[1].rel, Rels{"prev"});
}

TEST(LinkHeader, OnlyTheFirstRelCounts) {
  auto links = parse_link_header(R"(<https://h/x>; rel=prev; rel=next)");
  ASSERT_EQ(links.size(), 1u);
  EXPECT_EQ(links[0].rel, Rels{"prev"});
  EXPECT_EQ(links[0].params.size(), 2u);
}

TEST(LinkHeader, ParametersWithoutValuesAndSpacesAroundEquals) {
  auto links = parse_link_header("<https://h/x> ; crossorigin ; rel = next ; anchor = \"#a\"");
  ASSERT_EQ(links.size(), 1u);
  EXPECT_EQ(links[0].params, (Params{{"crossorigin", ""}, {"rel", "next"}, {"anchor", "#a"}}));
  EXPECT_EQ(links[0].rel, Rels{"next"});
}

TEST(LinkHeader, MalformedMembersAreSkippedAndTheRestKept) {
  auto links = parse_link_header(
      R"(garbage; rel=next, <https://h/1>; rel="next" junk; x=1, "quoted, <not a link>", <https://h/2>; ==; rel=last)");
  ASSERT_EQ(links.size(), 2u);
  EXPECT_EQ(links[0].target, "https://h/1");
  EXPECT_EQ(links[0].rel, Rels{"next"});
  EXPECT_EQ(links[0].params, (Params{{"rel", "next"}, {"x", "1"}}));
  EXPECT_EQ(links[1].target, "https://h/2");
  EXPECT_EQ(links[1].rel, Rels{"last"});
}

TEST(LinkHeader, UnterminatedPiecesEndTheFieldWithoutCrashing) {
  EXPECT_TRUE(parse_link_header("<https://h/never-closed; rel=next").empty());
  auto links = parse_link_header(R"(<https://h/1>; rel="next, <https://h/2>; rel=last)");
  ASSERT_EQ(links.size(), 1u);  // the open quote swallows the rest
  EXPECT_EQ(links[0].rel, (Rels{"next,", "<https://h/2>;", "rel=last"}));
  EXPECT_TRUE(parse_link_header("").empty());
  EXPECT_TRUE(parse_link_header(" , ,").empty());
  auto trailing = parse_link_header(R"(<a>; rel="x\)");
  ASSERT_EQ(trailing.size(), 1u);
  EXPECT_EQ(trailing[0].rel, Rels{"x\\"});  // a lone backslash at the end stays
}

TEST(LinkHeader, TargetIsKeptExactlyAsSent) {
  auto links = parse_link_header("<>; rel=self, </v1/items?cursor=a%2Cb&x=\"y\">; rel=next");
  ASSERT_EQ(links.size(), 2u);
  EXPECT_EQ(links[0].target, "");
  EXPECT_EQ(links[1].target, "/v1/items?cursor=a%2Cb&x=\"y\"");
}

TEST(FindLink, SearchesEveryLinkFieldInOrderCaseInsensitively) {
  Headers h = {{"Content-Type", "application/json"},
               {"link", "<https://h/p?page=1>; rel=prev"},
               {"Link", R"(<https://h/p?page=9>; rel="last", <https://h/p?page=3>; rel="Next")"},
               {"LINK", "<https://h/other>; rel=next"}};
  EXPECT_EQ(find_link(h, "next"), "https://h/p?page=3");
  EXPECT_EQ(find_link(h, "NEXT"), "https://h/p?page=3");
  EXPECT_EQ(find_link(h, "prev"), "https://h/p?page=1");
  EXPECT_EQ(find_link(h, "last"), "https://h/p?page=9");
  EXPECT_FALSE(find_link(h, "first"));
  EXPECT_FALSE(find_link(h, ""));
  EXPECT_FALSE(find_link({{"X-Link", "<https://h/x>; rel=next"}}, "next"));
}

}  // namespace
}  // namespace isthmus::http
