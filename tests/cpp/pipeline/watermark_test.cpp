#include "isthmus/pipeline/watermark.hpp"

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace isthmus::pipeline {
namespace {

TEST(Watermark, AdvancesOnlyOverContiguousWork) {
  Watermark w;
  EXPECT_EQ(w.complete(10, 20), 0u);  // a gap at [0, 10): nothing is safe yet
  EXPECT_EQ(w.pending_ranges(), 1u);
  EXPECT_EQ(w.complete(0, 5), 5u);
  EXPECT_EQ(w.complete(5, 10), 20u);  // closes the gap and swallows [10, 20)
  EXPECT_EQ(w.pending_ranges(), 0u);
}

TEST(Watermark, StartsWhereTheCheckpointWas) {
  Watermark w(100);
  EXPECT_EQ(w.complete(0, 50), 100u);  // below the start: already accepted in an earlier run
  EXPECT_EQ(w.complete(100, 101), 101u);
}

TEST(Watermark, RepeatsAndOverlapsAreHarmless) {
  Watermark w;
  w.complete(2, 6);
  w.complete(4, 9);
  w.complete(2, 6);
  EXPECT_EQ(w.pending_ranges(), 1u);
  EXPECT_EQ(w.pending_units(), 7u);
  EXPECT_EQ(w.complete(0, 3), 9u);
}

TEST(Watermark, AdjacentRangesMergeAboveTheGap) {
  Watermark w;
  w.complete(3, 4);
  w.complete(5, 6);
  w.complete(4, 5);
  EXPECT_EQ(w.pending_ranges(), 1u);
  EXPECT_EQ(w.value(), 0u);
  EXPECT_EQ(w.complete(0, 3), 6u);
}

TEST(Watermark, EmptyRangeChangesNothing) {
  Watermark w;
  EXPECT_EQ(w.complete(7, 7), 0u);
  EXPECT_EQ(w.pending_ranges(), 0u);
}

TEST(Watermark, AnyCompletionOrderEndsAtTheTotal) {
  std::mt19937 rng(7);
  for (int round = 0; round < 50; ++round) {
    std::vector<std::uint64_t> pages(200);
    std::iota(pages.begin(), pages.end(), 0);
    std::shuffle(pages.begin(), pages.end(), rng);
    Watermark w;
    std::vector<bool> done(200, false);
    for (auto p : pages) {
      const auto mark = w.complete(p * 10, p * 10 + 10);
      done[p] = true;
      // The watermark is exactly the first page not done, times the page size.
      const auto first_gap = std::find(done.begin(), done.end(), false) - done.begin();
      ASSERT_EQ(mark, static_cast<std::uint64_t>(first_gap) * 10);
    }
    EXPECT_EQ(w.value(), 2000u);
    EXPECT_EQ(w.pending_ranges(), 0u);
  }
}

}  // namespace
}  // namespace isthmus::pipeline
