#include "isthmus/pipeline/field_map.hpp"

#include <stdexcept>

#include "json_text.hpp"
#include "page_impl.hpp"

namespace isthmus::pipeline {

using simdjson::dom::element;
using simdjson::dom::element_type;

namespace {

std::string dotted(const std::vector<std::string>& steps) {
  std::string out;
  for (const auto& s : steps) out += (out.empty() ? "" : ".") + s;
  return out;
}

// The record's identity (Stream(key=)) as the Python path words it: str() of a scalar.
std::optional<std::string> record_key(element record, std::string_view key_path) {
  element at;
  if (!walk_path(record, key_path, at)) return std::nullopt;
  return python_text(at);
}

void add_key_and_source(MappedBatch& out, element record, const std::optional<std::string>& key) {
  if (key) return;
  // Keyless: the caller derives a key from the whole record, so keep it.
  std::string source;
  append_json(source, record);
  out.keep_source(source);
}

// A cast's result, written as the JSON writer for Python values writes it.
void append_scalar(std::string& out, const Scalar& v) {
  if (std::holds_alternative<std::monostate>(v)) out += "null";
  else if (auto* b = std::get_if<bool>(&v)) out += *b ? "true" : "false";
  else if (auto* i = std::get_if<std::int64_t>(&v)) out += std::to_string(*i);
  else if (auto* d = std::get_if<double>(&v)) append_double(out, *d);
  else append_quoted(out, std::get<std::string>(v));
}

}  // namespace

FieldMap::FieldMap(std::vector<FieldRule> rules) : rules_(std::move(rules)) {
  nodes_.emplace_back();  // the root object
  for (std::size_t r = 0; r < rules_.size(); ++r) {
    const auto& steps = rules_[r].target;
    if (steps.empty()) throw std::invalid_argument("FieldMap: a field has an empty target");
    target_texts_.push_back(dotted(steps));
    int at = 0;
    for (std::size_t s = 0; s < steps.size(); ++s) {
      if (nodes_[at].rule >= 0)
        throw std::invalid_argument("FieldMap field '" + target_texts_[r] + "': clashes with field '" +
                                    target_texts_[nodes_[at].rule] + "'");
      std::string quoted;
      append_quoted(quoted, steps[s]);
      quoted += ':';
      int next = -1;
      for (int c : nodes_[at].children)
        if (nodes_[c].quoted_name == quoted) next = c;
      const bool leaf = s + 1 == steps.size();
      if (next >= 0 && leaf)
        throw std::invalid_argument("FieldMap field '" + target_texts_[r] + "': clashes with another field");
      if (next < 0) {
        next = static_cast<int>(nodes_.size());
        Node n;
        n.quoted_name = std::move(quoted);
        nodes_.push_back(std::move(n));
        nodes_[at].children.push_back(next);
      }
      at = next;
    }
    nodes_[at].rule = static_cast<int>(r);
  }
}

namespace {

struct Mapper {
  const std::vector<FieldRule>& rules;
  const std::vector<std::string>& targets;
  const std::vector<FieldMap::Node>& nodes;
  std::string values;                 // every rule's value for the record at hand, back to back
  std::vector<std::size_t> value_at;  // where rule i's value starts (and ends, at i + 1)

  // Writes rule r's value for `record` to `values`; false and `why` when the record fails it.
  bool value(std::size_t r, element record, std::string& why) {
    const FieldRule& rule = rules[r];
    element found;
    const bool present = rule.source && walk_path(record, *rule.source, found);
    if (!present || found.is_null()) {
      if (rule.required && rule.source) {
        why = "field '" + targets[r] + "': '" + *rule.source + "' is " + (present ? "null" : "missing") +
              " and the field is required";
        return false;
      }
      values += rule.fallback;
      return true;
    }
    const element_type type = found.type();
    const bool same = (rule.cast == Cast::none) ||
                      (rule.cast == Cast::str && type == element_type::STRING) ||
                      (rule.cast == Cast::int64 && (type == element_type::INT64 || type == element_type::UINT64)) ||
                      (rule.cast == Cast::float64 && type == element_type::DOUBLE) ||
                      (rule.cast == Cast::boolean && type == element_type::BOOL);
    if (same) {
      append_json(values, found);
      return true;
    }
    Scalar in;
    switch (type) {
      case element_type::BOOL: in = found.get_bool().value_unsafe(); break;
      case element_type::INT64: in = found.get_int64().value_unsafe(); break;
      // Wider than int64: Python holds it as an int that the casts read as its digits.
      case element_type::UINT64: in = std::to_string(found.get_uint64().value_unsafe()); break;
      case element_type::DOUBLE: in = found.get_double().value_unsafe(); break;
      case element_type::STRING: in = std::string(found.get_string().value_unsafe()); break;
      default:
        why = "field '" + targets[r] + "': '" + *rule.source + "' is a " + python_type_name(found) +
              ", which cannot be cast to " + cast_name(rule.cast);
        return false;
    }
    std::string reason;
    auto cast = cast_scalar(in, rule.cast, reason);
    if (!cast) {
      why = "field '" + targets[r] + "' (from '" + *rule.source + "'): " + reason;
      return false;
    }
    append_scalar(values, *cast);
    return true;
  }

  void emit(std::string& out, int n) const {
    const auto& node = nodes[n];
    if (node.rule >= 0) {
      const auto r = static_cast<std::size_t>(node.rule);
      out.append(values, value_at[r], value_at[r + 1] - value_at[r]);
      return;
    }
    out += '{';
    bool first = true;
    for (int c : node.children) {
      if (!first) out += ',';
      first = false;
      out += nodes[c].quoted_name;
      emit(out, c);
    }
    out += '}';
  }

  // Maps one record into `out`, or files its failure.
  void one(element record, std::size_t index, std::string_view key_path, MappedBatch& out) {
    auto key = record_key(record, key_path);
    std::string why;
    if (record.type() != element_type::OBJECT) {
      why = std::string("the record is of type ") + python_type_name(record) + ", not an object";
    } else {
      values.clear();
      value_at.assign(rules.size() + 1, 0);
      bool ok = true;
      for (std::size_t r = 0; r < rules.size() && ok; ++r) {
        value_at[r] = values.size();
        ok = value(r, record, why);
      }
      if (ok) {
        value_at[rules.size()] = values.size();
        emit(out.begin(), 0);
        out.end(key ? std::optional<std::string_view>(*key) : std::nullopt);
        add_key_and_source(out, record, key);
        return;
      }
    }
    MappedBatch::Failure f{index, std::move(why), {}, std::move(key)};
    append_json(f.record, record);
    out.fail(std::move(f));
  }
};

bool records_at(const Page& page, std::string_view path, element& array, Page::Records& status) {
  std::size_t count = 0;
  status = page.find_records(path, count);
  if (status != Page::Records::ok) return false;
  walk_path(PageAccess::root(page), path, array);
  return true;
}

}  // namespace

Page::Records FieldMap::map_page(const Page& page, std::string_view records_path, std::string_view key_path,
                                 MappedBatch& out) const {
  element array;
  Page::Records status;
  if (!records_at(page, records_path, array, status)) return status;
  Mapper m{rules_, target_texts_, nodes_, {}, {}};
  std::size_t i = 0;
  const simdjson::dom::array records = array.get_array().value_unsafe();
  for (element record : records) m.one(record, i++, key_path, out);
  out.set_read(out.read() + i);
  return status;
}

Page::Records FieldMap::copy_page(const Page& page, std::string_view records_path, std::string_view key_path,
                                  MappedBatch& out) {
  element array;
  Page::Records status;
  if (!records_at(page, records_path, array, status)) return status;
  std::size_t i = 0;
  const simdjson::dom::array records = array.get_array().value_unsafe();
  for (element record : records) {
    auto key = record_key(record, key_path);
    append_json(out.begin(), record);
    out.end(key ? std::optional<std::string_view>(*key) : std::nullopt);
    add_key_and_source(out, record, key);
    ++i;
  }
  out.set_read(out.read() + i);
  return status;
}

}  // namespace isthmus::pipeline
