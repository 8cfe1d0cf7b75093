// Records as JSON text: the unit every sink writer of the core takes. A FieldMap fills it from
// a parsed page (the records never become Python objects); the bindings fill it from Python
// records through the core's JSON writer. Each record is followed by '\n' in one buffer, so a
// JSON Lines writer hands the buffer to the file as it is.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace isthmus::pipeline {

class MappedBatch {
 public:
  // A record the mapping refused: its position among the input records, why, the input
  // record as JSON (for its dead letter) and its key when it has one.
  struct Failure {
    std::size_t index;
    std::string reason;
    std::string record;
    std::optional<std::string> key;
  };

  // Appends a record: the caller writes its JSON to text() between begin() and end().
  std::string& begin() { return text_; }
  void end(std::optional<std::string_view> key);
  void add(std::string_view json, std::optional<std::string_view> key);
  void fail(Failure f) { failures_.push_back(std::move(f)); }
  // The input record of the last added record, for a record without a key: its key is
  // then derived from the whole record, by the caller that needs it.
  void keep_source(std::string_view json) { sources_.emplace_back(size() - 1, std::string(json)); }
  // Records read from the page (mapped + failed).
  void set_read(std::size_t n) { read_ = n; }

  std::size_t size() const noexcept { return ends_.size(); }
  std::size_t read() const noexcept { return read_; }
  // Record i without its newline.
  std::string_view record(std::size_t i) const noexcept;
  // Every record, one per line.
  std::string_view lines() const noexcept { return text_; }
  const std::optional<std::string>& key(std::size_t i) const noexcept { return keys_[i]; }
  // Fills in the key of a keyless record (derived by the caller from keyless()).
  void set_key(std::size_t i, std::string key) { keys_[i] = std::move(key); }
  const std::vector<Failure>& failures() const noexcept { return failures_; }
  // (record index, input record JSON) of the records without a key.
  const std::vector<std::pair<std::size_t, std::string>>& keyless() const noexcept { return sources_; }

  void clear();

 private:
  std::string text_;
  std::vector<std::size_t> ends_;  // one past each record's newline
  std::vector<std::optional<std::string>> keys_;
  std::vector<Failure> failures_;
  std::vector<std::pair<std::size_t, std::string>> sources_;
  std::size_t read_ = 0;
};

}  // namespace isthmus::pipeline
