#include "json_text.hpp"

#include <charconv>
#include <cstdint>
#include <cstring>
#include <cstdlib>

namespace isthmus::pipeline {

using simdjson::dom::element;
using simdjson::dom::element_type;

namespace {

// Whether any of the 8 bytes in `x` is '"', '\\' or below 0x20 (the classic zero-byte tests of
// "Bit Twiddling Hacks"). It may say yes for a clean byte after one that needs escaping, never
// no for one that does: a yes only sends those 8 bytes through the byte loop.
bool needs_escape8(std::uint64_t x) {
  constexpr std::uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
  const auto zero_in = [&](std::uint64_t v) { return (v - ones) & ~v & highs; };
  return ((x - ones * 0x20) & ~x & highs) | zero_in(x ^ (ones * '"')) | zero_in(x ^ (ones * '\\'));
}

// The index of the first byte of s[from:] that needs escaping, or s.size().
std::size_t first_escape(std::string_view s, std::size_t from) {
  std::size_t i = from;
  for (; i + 8 <= s.size(); i += 8) {
    std::uint64_t x;
    std::memcpy(&x, s.data() + i, sizeof x);
    if (needs_escape8(x)) break;
  }
  for (; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == '"' || c == '\\') return i;
  }
  return s.size();
}

}  // namespace

void append_quoted(std::string& out, std::string_view s) {
  static const char* hex = "0123456789abcdef";
  out += '"';
  std::size_t run = 0;  // start of the stretch copied as is
  // Most text needs no escaping: it is found clean 8 bytes at a time and copied in one piece.
  for (std::size_t i = first_escape(s, 0); i < s.size(); i = first_escape(s, run)) {
    out.append(s.data() + run, i - run);
    run = i + 1;
    const auto c = static_cast<unsigned char>(s[i]);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        out += "\\u00";
        out += hex[c >> 4];
        out += hex[c & 0xf];
    }
  }
  out.append(s.data() + run, s.size() - run);
  out += '"';
}

void append_double(std::string& out, double v) {
  // The shortest round-trip digits, then laid out by Python's repr rule: positional when the
  // decimal exponent is in [-4, 16), scientific otherwise.
  char buf[40];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string_view s(buf, static_cast<std::size_t>(end - buf));
  if (ec != std::errc{}) return;  // unreachable for a finite double; the parser gives no others
  if (!s.empty() && s.front() == '-') {
    out += '-';
    s.remove_prefix(1);
  }
  const auto e_at = s.find('e');
  std::string digits;
  for (char c : s.substr(0, e_at))
    if (c != '.') digits += c;
  const int exp = std::atoi(std::string(s.substr(e_at + 1)).c_str());
  const int decpt = exp + 1;  // digits before the decimal point
  const int n = static_cast<int>(digits.size());
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) {
      out += "0.";
      out.append(static_cast<std::size_t>(-decpt), '0');
      out += digits;
    } else if (decpt >= n) {
      out += digits;
      out.append(static_cast<std::size_t>(decpt - n), '0');
      out += ".0";
    } else {
      out.append(digits, 0, static_cast<std::size_t>(decpt));
      out += '.';
      out.append(digits, static_cast<std::size_t>(decpt));
    }
    return;
  }
  out += digits[0];
  if (n > 1) {
    out += '.';
    out.append(digits, 1);
  }
  out += 'e';
  out += exp < 0 ? '-' : '+';
  const int a = std::abs(exp);
  if (a < 10) out += '0';
  out += std::to_string(a);
}

void append_json(std::string& out, element j) {
  switch (j.type()) {
    case element_type::NULL_VALUE: out += "null"; break;
    case element_type::BOOL: out += j.get_bool().value_unsafe() ? "true" : "false"; break;
    case element_type::INT64: out += std::to_string(j.get_int64().value_unsafe()); break;
    case element_type::UINT64: out += std::to_string(j.get_uint64().value_unsafe()); break;
    case element_type::DOUBLE: append_double(out, j.get_double().value_unsafe()); break;
    case element_type::STRING: append_quoted(out, j.get_string().value_unsafe()); break;
    case element_type::ARRAY: {
      out += '[';
      bool first = true;
      const simdjson::dom::array items = j.get_array().value_unsafe();
      for (element e : items) {
        if (!first) out += ',';
        first = false;
        append_json(out, e);
      }
      out += ']';
      break;
    }
    case element_type::OBJECT: {
      out += '{';
      bool first = true;
      const simdjson::dom::object fields = j.get_object().value_unsafe();
      for (auto field : fields) {
        if (!first) out += ',';
        first = false;
        append_quoted(out, field.key);
        out += ':';
        append_json(out, field.value);
      }
      out += '}';
      break;
    }
  }
}

std::optional<std::string> python_text(element j) {
  switch (j.type()) {
    case element_type::STRING: return std::string(j.get_string().value_unsafe());
    case element_type::BOOL: return std::string(j.get_bool().value_unsafe() ? "True" : "False");
    case element_type::INT64: return std::to_string(j.get_int64().value_unsafe());
    case element_type::UINT64: return std::to_string(j.get_uint64().value_unsafe());
    case element_type::DOUBLE: {
      std::string out;
      append_double(out, j.get_double().value_unsafe());
      return out;
    }
    default: return std::nullopt;
  }
}

const char* python_type_name(element j) {
  switch (j.type()) {
    case element_type::NULL_VALUE: return "NoneType";
    case element_type::BOOL: return "bool";
    case element_type::INT64:
    case element_type::UINT64: return "int";
    case element_type::DOUBLE: return "float";
    case element_type::STRING: return "str";
    case element_type::ARRAY: return "list";
    case element_type::OBJECT: return "dict";
  }
  return "object";
}

}  // namespace isthmus::pipeline
