// One page of a paginated API, parsed once in the core: the records array found by a dotted
// path ("data", "result.items", "" for a bare array) and scalar fields by path (a next cursor,
// a total). The JSON library stays private to the core; callers walk records through
// JsonVisitor, which is how the bindings build Python objects in bulk.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

namespace isthmus::pipeline {

class JsonVisitor {
 public:
  virtual ~JsonVisitor() = default;
  virtual void null() = 0;
  virtual void boolean(bool v) = 0;
  virtual void integer(std::int64_t v) = 0;
  virtual void unsigned_integer(std::uint64_t v) = 0;
  virtual void number(double v) = 0;
  virtual void string(std::string_view v) = 0;
  virtual void begin_array(std::size_t size) = 0;
  virtual void end_array() = 0;
  virtual void begin_object(std::size_t size) = 0;
  virtual void key(std::string_view k) = 0;
  virtual void end_object() = 0;
};

class Page {
 public:
  enum class Records { ok, missing, not_an_array };

  // Arrays and objects nested deeper than this are refused: walking records recurses once per
  // level, and a hostile body of a few hundred kilobytes of '[' would overflow the stack.
  static constexpr std::size_t kMaxDepth = 1000;

  // Parses a body; on failure returns nullptr and sets `error` to a message with the offset.
  static std::unique_ptr<Page> parse(std::string_view body, std::string& error);

  ~Page();
  Page(const Page&) = delete;
  Page& operator=(const Page&) = delete;

  // Whether `path` leads to an array, and its length when it does.
  Records find_records(std::string_view path, std::size_t& count) const;

  // Walks the array at `path` as one array value; a no-op unless find_records() says ok.
  void visit_records(std::string_view path, JsonVisitor& visitor) const;

  // A scalar at `path` as text (strings as they are, numbers in decimal, true/false);
  // nullopt when the path is missing, null, or an object or array.
  std::optional<std::string> text(std::string_view path) const;

  // What the top of the document is, for an error naming where the records are not:
  // "top-level keys: a, b" (sorted, at most 20) or "the body is a JSON list".
  std::string shape() const;

 private:
  struct Impl;
  friend struct PageAccess;  // the field map walks the document itself (cpp/src/pipeline)
  explicit Page(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace isthmus::pipeline
