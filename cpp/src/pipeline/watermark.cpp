#include "isthmus/pipeline/watermark.hpp"

#include <algorithm>
#include <iterator>

namespace isthmus::pipeline {

std::uint64_t Watermark::complete(std::uint64_t begin, std::uint64_t end) {
  begin = std::max(begin, mark_);
  if (begin >= end) return mark_;
  // Merge with every stored range that touches or overlaps [begin, end).
  auto it = ahead_.upper_bound(begin);
  if (it != ahead_.begin() && std::prev(it)->second >= begin) --it;
  while (it != ahead_.end() && it->first <= end) {
    begin = std::min(begin, it->first);
    end = std::max(end, it->second);
    it = ahead_.erase(it);
  }
  if (begin <= mark_) {
    mark_ = end;
  } else {
    ahead_.emplace(begin, end);
  }
  // The merged range may now touch the next stored one only if it reached the watermark.
  while (!ahead_.empty() && ahead_.begin()->first <= mark_) {
    mark_ = std::max(mark_, ahead_.begin()->second);
    ahead_.erase(ahead_.begin());
  }
  return mark_;
}

std::uint64_t Watermark::pending_units() const noexcept {
  std::uint64_t n = 0;
  for (const auto& [b, e] : ahead_) n += e - b;
  return n;
}

}  // namespace isthmus::pipeline
