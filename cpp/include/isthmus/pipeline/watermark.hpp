// The contiguous watermark: which units of a stream (pages, record offsets) a sink has
// accepted, when they finish out of order. A checkpoint may only move to the watermark, the
// first unit not yet accepted, so a resume never skips a record that a faster neighbour
// overtook.
#pragma once

#include <cstdint>
#include <map>

namespace isthmus::pipeline {

class Watermark {
 public:
  explicit Watermark(std::uint64_t start = 0) : mark_(start) {}

  // Marks [begin, end) accepted; repeats and overlaps are harmless. Returns the watermark.
  std::uint64_t complete(std::uint64_t begin, std::uint64_t end);

  // Every unit below it is accepted.
  std::uint64_t value() const noexcept { return mark_; }

  // Accepted ranges waiting above a gap: bounded by the fetch window, so a test can check it.
  std::size_t pending_ranges() const noexcept { return ahead_.size(); }

  // Units accepted above the gap (not yet covered by the watermark).
  std::uint64_t pending_units() const noexcept;

 private:
  std::uint64_t mark_;
  std::map<std::uint64_t, std::uint64_t> ahead_;  // begin -> end, disjoint, every begin > mark_
};

}  // namespace isthmus::pipeline
