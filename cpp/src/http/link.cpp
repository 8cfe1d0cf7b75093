#include "isthmus/http/link.hpp"

namespace isthmus::http {
namespace {

bool is_ows(char c) { return c == ' ' || c == '\t'; }

// RFC 9110 tchar: what a parameter name is made of.
bool is_tchar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
    case '-': case '.': case '^': case '_': case '`': case '|': case '~':
      return true;
    default:
      return false;
  }
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

std::string_view trim_ows(std::string_view s) {
  while (!s.empty() && is_ows(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_ows(s.back())) s.remove_suffix(1);
  return s;
}

// Walks one field value left to right; `at` only ever moves forward, so parsing is linear.
class Cursor {
 public:
  explicit Cursor(std::string_view s) : s_(s) {}

  bool done() const { return at_ >= s_.size(); }
  char peek() const { return s_[at_]; }
  void advance() { ++at_; }
  void skip_ows() {
    while (!done() && is_ows(s_[at_])) ++at_;
  }

  // Moves to the next character in `stops` that is not inside a quoted string (or to the end):
  // how a malformed piece is stepped over without losing the members after it.
  void skip_to(std::string_view stops) {
    while (!done() && stops.find(s_[at_]) == std::string_view::npos) {
      if (s_[at_] == '"') {
        read_quoted();
      } else {
        ++at_;
      }
    }
  }

  // At '"': the quoted string's content with backslash escapes removed. An unterminated
  // string runs to the end of the field.
  std::string read_quoted() {
    std::string out;
    ++at_;
    while (!done()) {
      const char c = s_[at_++];
      if (c == '"') break;
      if (c == '\\' && !done()) {
        out.push_back(s_[at_++]);
      } else {
        out.push_back(c);
      }
    }
    return out;
  }

  // The characters up to the first of `stops` (not consumed), or to the end.
  std::string_view read_until(std::string_view stops) {
    const std::size_t start = at_;
    while (!done() && stops.find(s_[at_]) == std::string_view::npos) ++at_;
    return s_.substr(start, at_ - start);
  }

  std::string_view read_token() {
    const std::size_t start = at_;
    while (!done() && is_tchar(s_[at_])) ++at_;
    return s_.substr(start, at_ - start);
  }

 private:
  std::string_view s_;
  std::size_t at_ = 0;
};

std::vector<std::string> split_relations(std::string_view value) {
  std::vector<std::string> out;
  std::size_t i = 0;
  while (i < value.size()) {
    while (i < value.size() && is_ows(value[i])) ++i;
    const std::size_t start = i;
    while (i < value.size() && !is_ows(value[i])) ++i;
    if (i > start) out.push_back(lower(value.substr(start, i - start)));
  }
  return out;
}

// After the target: `*( OWS ";" OWS name [ OWS "=" OWS ( token / quoted-string ) ] )`,
// ending at a ',' outside quotes or at the end of the field.
void read_params(Cursor& in, Link& link) {
  bool rel_seen = false;
  for (;;) {
    in.skip_ows();
    if (in.done() || in.peek() == ',') return;
    if (in.peek() != ';') {  // junk after the target or after a value
      in.skip_to(";,");
      continue;
    }
    in.advance();
    in.skip_ows();
    const std::string name = lower(in.read_token());
    in.skip_ows();
    if (name.empty() || (!in.done() && in.peek() != '=' && in.peek() != ';' && in.peek() != ',')) {
      in.skip_to(";,");  // not a parameter name
      continue;
    }
    std::string value;
    if (!in.done() && in.peek() == '=') {
      in.advance();
      in.skip_ows();
      if (!in.done() && in.peek() == '"') {
        value = in.read_quoted();
      } else {
        value = std::string(trim_ows(in.read_until(";,")));
      }
    }
    // RFC 8288 §3.3: only the first rel parameter counts.
    if (name == "rel" && !rel_seen) {
      rel_seen = true;
      link.rel = split_relations(value);
    }
    link.params.emplace_back(name, std::move(value));
  }
}

}  // namespace

std::vector<Link> parse_link_header(std::string_view value) {
  std::vector<Link> links;
  Cursor in(value);
  for (;;) {
    while (!in.done() && (is_ows(in.peek()) || in.peek() == ',')) in.advance();
    if (in.done()) break;
    if (in.peek() != '<') {
      // Not the start of a link: resynchronise at the next member or target.
      in.skip_to(",<");
      continue;
    }
    in.advance();
    std::string_view target = in.read_until(">");
    if (in.done()) break;  // an unterminated target ends the field
    in.advance();
    Link link;
    link.target = std::string(target);
    read_params(in, link);
    links.push_back(std::move(link));
  }
  return links;
}

std::optional<std::string> find_link(const Headers& headers, std::string_view rel) {
  const std::string wanted = lower(rel);
  for (const auto& [name, value] : headers) {
    if (!iequals(name, "link")) continue;
    for (auto& link : parse_link_header(value))
      for (const auto& r : link.rel)
        if (r == wanted) return std::move(link.target);
  }
  return std::nullopt;
}

}  // namespace isthmus::http
