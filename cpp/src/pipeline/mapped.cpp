#include "isthmus/pipeline/mapped.hpp"

namespace isthmus::pipeline {

void MappedBatch::end(std::optional<std::string_view> key) {
  text_ += '\n';
  ends_.push_back(text_.size());
  keys_.emplace_back(key ? std::optional<std::string>(std::string(*key)) : std::nullopt);
}

void MappedBatch::add(std::string_view json, std::optional<std::string_view> key) {
  text_.append(json);
  end(key);
}

std::string_view MappedBatch::record(std::size_t i) const noexcept {
  const std::size_t begin = i == 0 ? 0 : ends_[i - 1];
  return std::string_view(text_).substr(begin, ends_[i] - begin - 1);
}

void MappedBatch::clear() {
  text_.clear();
  ends_.clear();
  keys_.clear();
  failures_.clear();
  sources_.clear();
  read_ = 0;
}

}  // namespace isthmus::pipeline
