// A page of a paginated API: JSON parsing, the records path (find_records / visit_records) and
// scalar fields by path (text(), which reads cursors and totals). The input's first line is a
// dotted path, the rest the body.
// Properties: parse accepts the valid JSON nested at most kMaxDepth deep (but numbers beyond
// 64-bit integers and doubles) and nothing else, and its error
// messages are UTF-8; text(path) and find_records(path) agree (a missing path has no text, an
// array has no text, a scalar is not an array); a path through a scalar is missing; walking
// the records visits exactly `count` well-nested values.
#include <algorithm>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "check.hpp"
#include "isthmus/pipeline/page.hpp"

namespace {

using isthmus::pipeline::JsonVisitor;

// Checks that begin/end calls nest and that keys appear only directly inside objects.
class Walk final : public JsonVisitor {
 public:
  std::size_t top_level_values = 0;  // values directly inside the outermost array
  std::size_t outer_size = 0;
  bool closed = false;

  void null() override { value(); }
  void boolean(bool) override { value(); }
  void integer(std::int64_t) override { value(); }
  void unsigned_integer(std::uint64_t) override { value(); }
  void number(double) override { value(); }
  void string(std::string_view s) override {
    FUZZ_CHECK(isthmus::fuzz::valid_utf8(s), "strings handed out are UTF-8");
    value();
  }
  void begin_array(std::size_t n) override {
    if (stack_.empty()) outer_size = n;
    value();
    stack_.push_back({'[', n, 0});
  }
  void end_array() override { close('['); }
  void begin_object(std::size_t n) override {
    value();
    stack_.push_back({'{', n, 0});
  }
  void key(std::string_view k) override {
    FUZZ_CHECK(!stack_.empty() && stack_.back().kind == '{' && !key_pending_, "a key only inside an object");
    FUZZ_CHECK(isthmus::fuzz::valid_utf8(k), "keys handed out are UTF-8");
    key_pending_ = true;
  }
  void end_object() override { close('{'); }

 private:
  struct Open {
    char kind;
    std::size_t declared, seen;
  };
  void value() {
    FUZZ_CHECK(!closed, "nothing after the outermost array closes");
    if (stack_.empty()) {
      FUZZ_CHECK(outer_size_set_ == false, "exactly one outermost value");
      outer_size_set_ = true;
      return;
    }
    auto& top = stack_.back();
    if (top.kind == '{') {
      FUZZ_CHECK(key_pending_, "an object member has a key");
      key_pending_ = false;
    }
    ++top.seen;
    if (stack_.size() == 1) ++top_level_values;
  }
  void close(char kind) {
    FUZZ_CHECK(!stack_.empty() && stack_.back().kind == kind, "ends match begins");
    FUZZ_CHECK(stack_.back().seen == stack_.back().declared, "a container holds the size it announced");
    FUZZ_CHECK(!key_pending_, "no key without a value");
    stack_.pop_back();
    if (stack_.empty()) closed = true;
  }
  std::vector<Open> stack_;
  bool key_pending_ = false;
  bool outer_size_set_ = false;
};

// A second opinion from the JSON library's event parser: whether the body is valid JSON and how
// deeply it nests (independent of the depth check in Page::parse).
struct Depth {
  using json = nlohmann::json;
  std::size_t depth = 0, max = 0;
  bool null() { return true; }
  bool boolean(bool) { return true; }
  bool number_integer(json::number_integer_t) { return true; }
  bool number_unsigned(json::number_unsigned_t) { return true; }
  bool number_float(json::number_float_t, const json::string_t&) { return true; }
  bool string(json::string_t&) { return true; }
  bool binary(json::binary_t&) { return true; }
  bool key(json::string_t&) { return true; }
  bool start_object(std::size_t) { return open(); }
  bool start_array(std::size_t) { return open(); }
  bool end_object() { return --depth, true; }
  bool end_array() { return --depth, true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) { return false; }
  bool open() {
    max = std::max(max, ++depth);
    return true;
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace isthmus;
  using pipeline::Page;
  std::string_view body = fuzz::as_text(data, size);
  const std::string_view path = fuzz::take(body, '\n');

  Depth depth;
  // A NUL byte is never valid JSON (raw control characters are not allowed even in strings),
  // but the library's event parser takes it for the end of the input.
  const bool valid = body.find('\0') == std::string_view::npos &&
                     nlohmann::json::sax_parse(body.begin(), body.end(), &depth);
  std::string error;
  const auto page = Page::parse(body, error);
  FUZZ_CHECK(fuzz::valid_utf8(error), "an error message is UTF-8, so it can become a Python str");
  if (valid && depth.max > Page::kMaxDepth)
    FUZZ_CHECK(!page && error.find("nested deeper") != std::string::npos, "too deep a body is refused");
  else if (!valid)
    FUZZ_CHECK(!page, "a body that is not JSON never parses");
  else if (!page)
    // The one difference allowed between the two parsers: a number outside 64-bit integers
    // and doubles, which the pipeline then reads with Python's parser.
    FUZZ_CHECK(error.find("number") != std::string::npos, "every valid JSON body within the depth limit parses");
  if (!page) {
    FUZZ_CHECK(!error.empty(), "a body that does not parse gives an error message");
    return 0;
  }

  std::size_t count = 0;
  const auto found = page->find_records(path, count);
  const auto text = page->text(path);
  if (found == Page::Records::missing) FUZZ_CHECK(!text, "a missing path has no text");
  if (found == Page::Records::ok) FUZZ_CHECK(!text, "an array has no text");
  if (text) {
    FUZZ_CHECK(found == Page::Records::not_an_array, "a scalar is not an array of records");
    FUZZ_CHECK(fuzz::valid_utf8(*text), "text is UTF-8");
    const std::string below = std::string(path) + (path.empty() ? "x" : ".x");
    std::size_t unused = 0;
    FUZZ_CHECK(page->find_records(below, unused) == Page::Records::missing && !page->text(below),
               "nothing lies below a scalar");
  }

  Walk walk;
  page->visit_records(path, walk);
  if (found == Page::Records::ok) {
    FUZZ_CHECK(walk.closed && walk.outer_size == count && walk.top_level_values == count,
               "visit_records walks exactly the records find_records counted");
  } else {
    FUZZ_CHECK(!walk.closed && walk.top_level_values == 0, "no records are visited without an array");
  }
  return 0;
}
