// isthmus._core: the pipeline's hot parts. A page body is parsed in the core with the GIL
// released, then its records become Python objects in one pass (no JSON text crosses over).
#include <atomic>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include <pybind11/stl.h>

#include "bindings.hpp"
#include "exceptions.hpp"
#include "isthmus/error.hpp"
#include "isthmus/http/message.hpp"
#include "isthmus/pipeline/cast.hpp"
#include "isthmus/pipeline/field_map.hpp"
#include "isthmus/pipeline/mapped.hpp"
#include "isthmus/pipeline/page.hpp"
#include "isthmus/pipeline/reader.hpp"
#include "isthmus/pipeline/watermark.hpp"

namespace py = pybind11;

namespace isthmus::bindings {
namespace {

using pipeline::JsonVisitor;
using pipeline::Page;

// Records the core has made into Python objects (pages parsed to dicts, FieldMap results), so
// a test can tell that a fused run made none.
std::atomic<std::uint64_t> python_records{0};

// Builds Python objects with the C API: this loop runs for every field of every record.
class PyBuilder : public JsonVisitor {
 public:
  ~PyBuilder() override {
    for (auto& f : stack_) {
      Py_XDECREF(f.container);
      Py_XDECREF(f.key);
    }
    Py_XDECREF(result_);
    for (auto& [k, v] : keys_) Py_DECREF(v);
  }

  py::object take() {
    if (!result_) return py::none();
    PyObject* r = result_;
    result_ = nullptr;
    return py::reinterpret_steal<py::object>(r);
  }

  void null() override { Py_INCREF(Py_None); put(Py_None); }
  void boolean(bool v) override { put(PyBool_FromLong(v)); }
  void integer(std::int64_t v) override { put(PyLong_FromLongLong(v)); }
  void unsigned_integer(std::uint64_t v) override { put(PyLong_FromUnsignedLongLong(v)); }
  void number(double v) override { put(PyFloat_FromDouble(v)); }
  void string(std::string_view v) override {
    // The parser has already checked that the text is valid UTF-8; most of it is ASCII, which
    // becomes a str by one copy instead of a trip through the decoder.
    if (ascii(v)) {
      PyObject* s = PyUnicode_New(static_cast<Py_ssize_t>(v.size()), 127);
      if (!s) throw py::error_already_set();
      std::memcpy(PyUnicode_1BYTE_DATA(s), v.data(), v.size());
      put(s);
      return;
    }
    put(PyUnicode_FromStringAndSize(v.data(), static_cast<Py_ssize_t>(v.size())));
  }
  void begin_array(std::size_t size) override {
    PyObject* list = PyList_New(static_cast<Py_ssize_t>(size));
    if (!list) throw py::error_already_set();
    stack_.push_back({list, 0, nullptr});
  }
  void end_array() override { close(); }
  void begin_object(std::size_t size) override {
    // Sized for its fields (and one more, which a mapping often adds): a dict grown one key
    // at a time is rebuilt twice on the way to a dozen fields.
    PyObject* dict = _PyDict_NewPresized(static_cast<Py_ssize_t>(size) + 1);
    if (!dict) throw py::error_already_set();
    stack_.push_back({dict, 0, nullptr});
  }
  void key(std::string_view k) override {
    // Records repeat the same keys in the same order: the key last seen at this depth and
    // position is tried first (a compare), the table of every name seen second (a hash).
    Frame& f = stack_.back();
    const std::size_t depth = stack_.size() - 1;
    if (hints_.size() <= depth) hints_.resize(depth + 1);
    auto& row = hints_[depth];
    const auto at = static_cast<std::size_t>(f.index++);
    PyObject* name = nullptr;
    if (at < row.size() && row[at].first == k) {
      name = row[at].second;
    } else {
      auto it = keys_.find(k);
      if (it == keys_.end()) {
        PyObject* s = PyUnicode_FromStringAndSize(k.data(), static_cast<Py_ssize_t>(k.size()));
        if (!s) throw py::error_already_set();
        PyUnicode_InternInPlace(&s);
        it = keys_.emplace(std::string(k), s).first;
      }
      name = it->second;
      if (row.size() <= at) row.resize(at + 1);
      row[at] = {it->first, name};  // a view of the table's own key, stable while it lives
    }
    Py_INCREF(name);
    f.key = name;
  }
  void end_object() override { close(); }

 private:
  struct Frame {
    PyObject* container;
    Py_ssize_t index;  // a list's next slot; a dict's count of keys so far
    PyObject* key;     // the pending key of a dict
  };

  static bool ascii(std::string_view v) {
    std::uint64_t high = 0;
    std::size_t i = 0;
    for (; i + 8 <= v.size(); i += 8) {
      std::uint64_t x;
      std::memcpy(&x, v.data() + i, sizeof x);
      high |= x;
    }
    for (; i < v.size(); ++i) high |= static_cast<unsigned char>(v[i]);
    return (high & 0x8080808080808080ull) == 0;
  }

  void close() {
    Frame f = stack_.back();
    stack_.pop_back();
    put(f.container);
  }

  // Takes ownership of `value`.
  void put(PyObject* value) {
    if (!value) throw py::error_already_set();
    if (stack_.empty()) {
      result_ = value;
      return;
    }
    Frame& f = stack_.back();
    if (PyList_Check(f.container)) {
      PyList_SET_ITEM(f.container, f.index++, value);  // steals the reference
      return;
    }
    const int rc = PyDict_SetItem(f.container, f.key, value);
    Py_DECREF(value);
    Py_CLEAR(f.key);
    if (rc != 0) throw py::error_already_set();
  }

  std::vector<Frame> stack_;
  PyObject* result_ = nullptr;
  // Per depth, per position in an object: the key last seen there (borrowed from keys_).
  std::vector<std::vector<std::pair<std::string_view, PyObject*>>> hints_;
  // Looked up by string_view, so a key already seen costs a hash and no allocation.
  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view v) const noexcept { return std::hash<std::string_view>{}(v); }
  };
  std::unordered_map<std::string, PyObject*, Hash, std::equal_to<>> keys_;
};

// Pauses Python's cyclic garbage collector while a page's records are built: they hold no
// cycles, and otherwise every 700 new dicts start a collection that walks all young objects.
class GcPause {
 public:
  GcPause() : was_enabled_(PyGC_Disable()) {}
  ~GcPause() {
    if (was_enabled_) PyGC_Enable();
  }
  GcPause(const GcPause&) = delete;
  GcPause& operator=(const GcPause&) = delete;

 private:
  int was_enabled_;
};

// Parses `body` (an isthmus._core.Response or bytes) and returns
// (status, records or None, [field text or None, ...]) where status is "ok", "missing",
// "not_an_array" or the parse error message prefixed with "invalid:".
py::tuple parse_page(const py::object& body, const std::string& records_path,
                     const std::vector<std::string>& fields) {
  std::string_view text;
  if (py::isinstance<http::Response>(body)) {
    const auto& r = body.cast<const http::Response&>();
    text = r.body;
  } else {
    char* data = nullptr;
    Py_ssize_t size = 0;
    if (PyBytes_AsStringAndSize(body.ptr(), &data, &size) != 0) throw py::error_already_set();
    text = std::string_view(data, static_cast<std::size_t>(size));
  }
  std::unique_ptr<Page> page;
  std::string error;
  std::size_t count = 0;
  Page::Records found = Page::Records::missing;
  std::vector<std::optional<std::string>> values;
  {
    // `body` stays referenced by the caller, so its bytes outlive this scope.
    py::gil_scoped_release release;
    page = Page::parse(text, error);
    if (page) {
      found = page->find_records(records_path, count);
      for (const auto& f : fields) values.push_back(page->text(f));
    }
  }
  if (!page) return py::make_tuple("invalid:" + error, py::none(), py::list());
  py::list field_values(values.size());
  for (std::size_t i = 0; i < values.size(); ++i)
    field_values[i] = values[i] ? py::object(py::str(*values[i])) : py::object(py::none());
  if (found == Page::Records::missing) return py::make_tuple("missing", py::none(), field_values);
  if (found == Page::Records::not_an_array)
    return py::make_tuple("not_an_array", py::none(), field_values);
  PyBuilder builder;
  {
    GcPause pause;
    page->visit_records(records_path, builder);
  }
  python_records += count;
  return py::make_tuple("ok", builder.take(), field_values);
}

// One step of a dotted path into a Python record: a dict key, and a list index when the step
// is digits ("tags.0").
struct RecordStep {
  py::object key;  // the step as an interned str
  long index;      // the step as a list index, or -1
};

py::object interned(const std::string& text) {
  PyObject* s = PyUnicode_FromStringAndSize(text.data(), static_cast<Py_ssize_t>(text.size()));
  if (!s) throw py::error_already_set();
  PyUnicode_InternInPlace(&s);
  return py::reinterpret_steal<py::object>(s);
}

RecordStep record_step(const std::string& text) {
  RecordStep st{interned(text), -1};
  if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos && text.size() < 10)
    st.index = std::stol(text);
  return st;
}

std::vector<RecordStep> record_steps(const std::vector<std::string>& path) {
  std::vector<RecordStep> steps;
  steps.reserve(path.size());
  for (const auto& p : path) steps.push_back(record_step(p));
  return steps;
}

// The value at `path` in a record (borrowed), or nullptr when a step is absent.
PyObject* walk_record(PyObject* record, const std::vector<RecordStep>& path) {
  PyObject* at = record;
  for (const auto& step : path) {
    if (PyDict_Check(at)) {
      at = PyDict_GetItemWithError(at, step.key.ptr());
      if (!at) {
        if (PyErr_Occurred()) throw py::error_already_set();
        return nullptr;
      }
    } else if (PyList_Check(at) && step.index >= 0) {
      if (step.index >= PyList_GET_SIZE(at)) return nullptr;
      at = PyList_GET_ITEM(at, step.index);
    } else {
      return nullptr;
    }
  }
  return at;
}

// The declarative field mapping (isthmus.FieldMap), run over Python records without calling
// Python per record: each rule reads a source path, casts, and writes a target path.
class FieldMapper {
 public:
  // rules: (target steps, source steps or None, cast name, required, default), validated by
  // isthmus.FieldMap, which also words the errors a user sees.
  explicit FieldMapper(const py::list& rules) {
    std::vector<pipeline::FieldRule> core_rules;
    for (const auto& item : rules) {
      auto t = item.cast<py::tuple>();
      Rule r;
      for (const auto& step : t[0].cast<py::list>()) r.target.push_back(interned(step.cast<std::string>()));
      r.target_text = dotted(t[0].cast<py::list>());
      if (!t[1].is_none()) {
        r.has_source = true;
        r.source_text = dotted(t[1].cast<py::list>());
        for (const auto& step : t[1].cast<py::list>()) {
          r.source.push_back(record_step(step.cast<std::string>()));
        }
      }
      const auto name = t[2].cast<std::string>();
      auto cast = name == "none" ? std::optional<pipeline::Cast>(pipeline::Cast::none) : pipeline::cast_from_name(name);
      if (!cast) throw py::value_error("FieldMap: unknown cast " + name);
      r.cast = *cast;
      r.required = t[3].cast<bool>();
      r.fallback = py::reinterpret_borrow<py::object>(t[4]);
      pipeline::FieldRule core;
      for (const auto& step : t[0].cast<py::list>()) core.target.push_back(step.cast<std::string>());
      if (r.has_source) core.source = r.source_text;
      core.cast = r.cast;
      core.required = r.required;
      core.fallback = json_text(r.fallback);
      core_rules.push_back(std::move(core));
      rules_.push_back(std::move(r));
    }
    try {
      page_map_ = std::make_shared<pipeline::FieldMap>(std::move(core_rules));
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  }

  // The same rules over a parsed page, writing JSON text (field_map.hpp).
  const pipeline::FieldMap& page_map() const { return *page_map_; }

  // (mapped records, [(index, reason), ...]) for the records that failed a rule.
  py::tuple apply(const py::list& records) const {
    const Py_ssize_t n = PyList_GET_SIZE(records.ptr());
    py::list mapped;
    py::list failed;
    for (Py_ssize_t i = 0; i < n; ++i) {
      std::string why;
      py::object out = one(PyList_GET_ITEM(records.ptr(), i), why);
      if (out) {
        mapped.append(out);
      } else {
        failed.append(py::make_tuple(i, why));
      }
    }
    python_records += static_cast<std::uint64_t>(PyList_GET_SIZE(mapped.ptr()));
    return py::make_tuple(mapped, failed);
  }

 private:
  struct Rule {
    std::vector<py::object> target;
    std::string target_text, source_text;
    bool has_source = false;
    std::vector<RecordStep> source;
    pipeline::Cast cast = pipeline::Cast::none;
    bool required = false;
    py::object fallback;
  };

  static std::string dotted(const py::list& steps) {
    std::string out;
    for (const auto& s : steps) out += (out.empty() ? "" : ".") + s.cast<std::string>();
    return out;
  }

  static std::optional<pipeline::Scalar> to_scalar(PyObject* v) {
    if (v == Py_None) return pipeline::Scalar{};
    if (PyBool_Check(v)) return pipeline::Scalar{v == Py_True};
    if (PyLong_Check(v)) {
      int overflow = 0;
      const long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
      if (overflow) return pipeline::Scalar{py::str(v).cast<std::string>()};
      return pipeline::Scalar{static_cast<std::int64_t>(x)};
    }
    if (PyFloat_Check(v)) return pipeline::Scalar{PyFloat_AS_DOUBLE(v)};
    if (PyUnicode_Check(v)) {
      Py_ssize_t n = 0;
      const char* p = PyUnicode_AsUTF8AndSize(v, &n);
      if (!p) throw py::error_already_set();
      return pipeline::Scalar{std::string(p, static_cast<std::size_t>(n))};
    }
    return std::nullopt;
  }

  static py::object from_scalar(const pipeline::Scalar& v) {
    if (std::holds_alternative<std::monostate>(v)) return py::none();
    if (auto* b = std::get_if<bool>(&v)) return py::bool_(*b);
    if (auto* i = std::get_if<std::int64_t>(&v)) return py::int_(*i);
    if (auto* d = std::get_if<double>(&v)) return py::float_(*d);
    const auto& s = std::get<std::string>(v);
    return py::reinterpret_steal<py::object>(
        PyUnicode_FromStringAndSize(s.data(), static_cast<Py_ssize_t>(s.size())));
  }

  // The rule's value for one record; a null object and `why` when the record fails it.
  static py::object value(const Rule& r, PyObject* record, std::string& why) {
    PyObject* found = r.has_source ? walk_record(record, r.source) : nullptr;
    if (!found || found == Py_None) {
      if (r.required && r.has_source) {
        why = "field '" + r.target_text + "': '" + r.source_text + "' is " + (found ? "null" : "missing") +
              " and the field is required";
        return py::object();
      }
      return r.fallback;
    }
    if (r.cast == pipeline::Cast::none) return py::reinterpret_borrow<py::object>(found);
    // Already of the wanted type: the same object, no conversion.
    if ((r.cast == pipeline::Cast::str && PyUnicode_CheckExact(found)) ||
        (r.cast == pipeline::Cast::int64 && PyLong_CheckExact(found)) ||
        (r.cast == pipeline::Cast::float64 && PyFloat_CheckExact(found)) ||
        (r.cast == pipeline::Cast::boolean && PyBool_Check(found)))
      return py::reinterpret_borrow<py::object>(found);
    auto scalar = to_scalar(found);
    if (!scalar) {
      why = "field '" + r.target_text + "': '" + r.source_text + "' is a " + Py_TYPE(found)->tp_name +
            ", which cannot be cast to " + pipeline::cast_name(r.cast);
      return py::object();
    }
    std::string reason;
    auto cast = pipeline::cast_scalar(*scalar, r.cast, reason);
    if (!cast) {
      why = "field '" + r.target_text + "' (from '" + r.source_text + "'): " + reason;
      return py::object();
    }
    return from_scalar(*cast);
  }

  py::object one(PyObject* record, std::string& why) const {
    if (!PyDict_Check(record)) {
      why = std::string("the record is of type ") + Py_TYPE(record)->tp_name + ", not an object";
      return py::object();
    }
    py::dict out;
    for (const auto& r : rules_) {
      py::object v = value(r, record, why);
      if (!v) return py::object();
      // Walk (and make) the nested objects of a dotted target.
      PyObject* at = out.ptr();
      for (std::size_t i = 0; i + 1 < r.target.size(); ++i) {
        PyObject* next = PyDict_GetItemWithError(at, r.target[i].ptr());
        if (!next) {
          if (PyErr_Occurred()) throw py::error_already_set();
          py::dict fresh;
          if (PyDict_SetItem(at, r.target[i].ptr(), fresh.ptr()) != 0) throw py::error_already_set();
          next = fresh.ptr();  // now owned by `at`
        }
        at = next;
      }
      if (PyDict_SetItem(at, r.target.back().ptr(), v.ptr()) != 0) throw py::error_already_set();
    }
    return std::move(out);
  }

  std::vector<Rule> rules_;
  std::shared_ptr<const pipeline::FieldMap> page_map_;
};

// Parses a page like parse_page and maps its records with `mapper` (a FieldMapper, or None to
// copy them) straight to JSON text: (status, MappedBatch or None, field texts). No Python
// object is made per record; only the batch handle, and later its failures, cross over.
py::tuple map_page(const py::object& body, const std::string& records_path, const std::vector<std::string>& fields,
                   const std::string& key_path, const FieldMapper* mapper) {
  std::string_view text;
  if (py::isinstance<http::Response>(body)) {
    text = body.cast<const http::Response&>().body;
  } else {
    char* data = nullptr;
    Py_ssize_t size = 0;
    if (PyBytes_AsStringAndSize(body.ptr(), &data, &size) != 0) throw py::error_already_set();
    text = std::string_view(data, static_cast<std::size_t>(size));
  }
  const pipeline::FieldMap* map = mapper ? &mapper->page_map() : nullptr;
  std::string error;
  std::vector<std::optional<std::string>> values;
  auto batch = std::make_unique<pipeline::MappedBatch>();
  Page::Records found = Page::Records::missing;
  bool parsed = false;
  {
    // `body` and `mapper` stay referenced by the caller, so they outlive this scope.
    py::gil_scoped_release release;
    auto page = Page::parse(text, error);
    if (page) {
      parsed = true;
      for (const auto& f : fields) values.push_back(page->text(f));
      found = map ? map->map_page(*page, records_path, key_path, *batch)
                  : pipeline::FieldMap::copy_page(*page, records_path, key_path, *batch);
    }
  }
  if (!parsed) return py::make_tuple("invalid:" + error, py::none(), py::list());
  py::list field_values(values.size());
  for (std::size_t i = 0; i < values.size(); ++i)
    field_values[i] = values[i] ? py::object(py::str(*values[i])) : py::object(py::none());
  if (found == Page::Records::missing) return py::make_tuple("missing", py::none(), field_values);
  if (found == Page::Records::not_an_array) return py::make_tuple("not_an_array", py::none(), field_values);
  return py::make_tuple("ok", py::cast(std::move(batch)), field_values);
}

py::object optional_str(const std::optional<std::string>& s) {
  return s ? py::object(py::str(*s)) : py::object(py::none());
}

// Each record's identity as text: the value at a path of dict keys, a str as it is, another
// scalar through str(); None where a record has none (the caller hashes those).
py::list record_keys(const py::list& records, const std::vector<std::string>& path) {
  const auto steps = record_steps(path);
  const Py_ssize_t n = PyList_GET_SIZE(records.ptr());
  py::list out(n);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* at = walk_record(PyList_GET_ITEM(records.ptr(), i), steps);
    py::object key;
    if (!at || at == Py_None || PyDict_Check(at) || PyList_Check(at)) {
      key = py::none();
    } else if (PyUnicode_CheckExact(at)) {
      key = py::reinterpret_borrow<py::object>(at);
    } else {
      key = py::str(at);
    }
    PyList_SET_ITEM(out.ptr(), i, key.release().ptr());
  }
  return out;
}

// The value at a dotted path in each record (the object itself, not a copy); None where a step
// is absent. The one dotted-path walk over Python records: keys, incremental cursors, pages.
py::list record_values(const py::list& records, const std::vector<std::string>& path) {
  const auto steps = record_steps(path);
  const Py_ssize_t n = PyList_GET_SIZE(records.ptr());
  py::list out(n);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* at = walk_record(PyList_GET_ITEM(records.ptr(), i), steps);
    PyList_SET_ITEM(out.ptr(), i, py::reinterpret_borrow<py::object>(at ? at : Py_None).release().ptr());
  }
  return out;
}


// -- the page reader -----------------------------------------------------------------------

// A spec value as JSON text (the reader's steps are JSON, so checkpoints keep their shape).
// The functions are kept for the process's life on purpose: a static py::object would be
// released after the interpreter has finalized.
std::string to_json(const py::handle& value) {
  static auto* dumps = new py::object(py::module_::import("json").attr("dumps"));
  static auto* str = new py::object(py::module_::import("builtins").attr("str"));
  return (*dumps)(value, py::arg("default") = *str).cast<std::string>();
}

py::object from_json(const std::string& text) {
  static auto* loads = new py::object(py::module_::import("json").attr("loads"));
  return (*loads)(py::str(text));
}


pipeline::PaginatorSpec paginator_spec(const py::object& spec) {
  using Kind = pipeline::PaginatorSpec::Kind;
  pipeline::PaginatorSpec p;
  if (spec.is_none()) return p;
  auto d = spec.cast<py::dict>();
  const auto kind = dict_value<std::string>(d, "kind", "");
  if (kind == "cursor") {
    p.kind = Kind::cursor;
    p.cursor_path = dict_value<std::string>(d, "cursor", "");
    p.param = dict_value<std::string>(d, "param", "");
    p.has_more_path = dict_value<std::string>(d, "has_more", "");
  } else if (kind == "next_url") {
    p.kind = Kind::next_url;
    p.next_path = dict_value<std::string>(d, "next", "");
  } else if (kind == "link") {
    p.kind = Kind::link_header;
    p.rel = dict_value<std::string>(d, "rel", "next");
  } else if (kind == "offset" || kind == "page_number") {
    p.kind = kind == "offset" ? Kind::offset : Kind::page_number;
    p.param = dict_value<std::string>(d, "param", "");
    p.size_param = dict_value<std::string>(d, "size_param", "");
    p.size = dict_value<std::uint64_t>(d, "size", 100);
    p.total_path = dict_value<std::string>(d, "total", "");
    p.start = dict_value<std::int64_t>(d, "start", 0);
    p.window = dict_value<std::size_t>(d, "window", 8);
  } else if (kind == "follow") {
    p.kind = Kind::follow;
    if (d.contains("fields")) p.fields = d["fields"].cast<std::vector<std::string>>();
  } else if (!kind.empty()) {
    throw Error(errc::invalid_argument, "paginator.kind: '" + kind +
                "' is not valid; expected cursor, next_url, link, offset, page_number or follow");
  }
  return p;
}

// isthmus._core.PageReader: the core's fetch loop for one stream, pulled from Python.
class PyPageReader {
 public:
  PyPageReader(const py::object& client, const py::dict& spec) {
    pipeline::ReaderOptions o;
    o.label = dict_value<std::string>(spec, "label", "Stream");
    o.base_url = dict_value<std::string>(spec, "base_url", "");
    o.path = dict_value<std::string>(spec, "path", "");
    o.client_query = dict_value<std::string>(spec, "client_query", "");
    o.headers = dict_value<http::Headers>(spec, "headers", {});
    o.records_path = records_path_ = dict_value<std::string>(spec, "records", "data");
    o.params = spec.contains("params") ? to_json(spec["params"]) : "{}";
    if (spec.contains("partitions") && !spec["partitions"].is_none())
      for (const auto& p : spec["partitions"].cast<py::list>()) o.partitions.push_back(to_json(p));
    if (spec.contains("incremental") && !spec["incremental"].is_none()) {
      auto inc = spec["incremental"].cast<py::tuple>();
      o.incremental_param = inc[0].cast<std::string>();
      o.incremental_value = to_json(inc[1]);
    }
    o.paginator = paginator_spec(spec.contains("paginator") ? py::object(spec["paginator"]) : py::none());
    if (spec.contains("todo"))
      for (const auto& item : spec["todo"].cast<py::list>()) {
        auto t = item.cast<py::tuple>();
        o.todo.push_back({t[0].cast<std::size_t>(), t[1].is_none() ? std::string() : to_json(t[1])});
      }
    o.concurrency = dict_value<std::size_t>(spec, "concurrency", 4);
    o.attempts = dict_value<int>(spec, "attempts", 6);
    o.prefetch = dict_value<std::size_t>(spec, "prefetch", 8);
    o.keep_body = dict_value<bool>(spec, "keep_body", false);
    o.single_page = dict_value<bool>(spec, "single_page", false);
    following_ = o.paginator.kind == pipeline::PaginatorSpec::Kind::follow;
    // Fused: each page is mapped in the core as it is taken, and Python gets a MappedBatch.
    if (dict_value<bool>(spec, "fused", false)) {
      fused_ = true;
      key_path_ = dict_value<std::string>(spec, "key", "id");
      if (spec.contains("mapper") && !spec["mapper"].is_none()) {
        mapper_ = spec["mapper"];
        map_ = &mapper_.cast<const FieldMapper&>().page_map();
      }
    }
    reader_ = std::make_unique<pipeline::PageReader>(transport_of(client), std::move(o));
    reader_->start();
  }

  // Drops the reader with the GIL released: cancelling may wait for an auth hook that needs it.
  ~PyPageReader() {
    if (!reader_ || !Py_IsInitialized() || !PyGILState_Check()) return;
    py::gil_scoped_release release;
    reader_.reset();
  }

  // (partition, records, after, units, total, done, fields, response); None once every
  // partition is read; False when `timeout` seconds passed without a page. fields and response
  // (the core's Response) are set for a follow paginator only.
  // With body=True (and a reader made with "keep_body") the records slot holds the page's raw
  // bytes instead, for the caller to parse. A fused reader's records slot holds a MappedBatch.
  py::object next(const py::object& timeout, bool body) {
    using Next = pipeline::PageReader::Next;
    const bool forever = timeout.is_none();
    auto left = std::chrono::duration<double>(forever ? 0.0 : timeout.cast<double>());
    pipeline::Chunk c;
    std::unique_ptr<pipeline::MappedBatch> mapped;
    Next r = Next::timeout;
    for (;;) {
      // Slices of 100 ms, so Ctrl-C in a notebook interrupts a long wait.
      const auto slice = forever ? std::chrono::milliseconds(100)
                                 : std::min(std::chrono::milliseconds(100),
                                            std::chrono::duration_cast<std::chrono::milliseconds>(left));
      {
        py::gil_scoped_release release;
        r = reader_->next(c, slice);
        if (r == Next::chunk && fused_ && c.page && !body) {
          // The page the reader parsed, mapped by the one FieldMap machinery map_page uses;
          // its parsed document is let go here, so only the JSON text travels on.
          mapped = std::make_unique<pipeline::MappedBatch>();
          if (map_) {
            map_->map_page(*c.page, records_path_, key_path_, *mapped);
          } else {
            pipeline::FieldMap::copy_page(*c.page, records_path_, key_path_, *mapped);
          }
          c.page.reset();
        }
      }
      if (r != Next::timeout) break;
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
      if (!forever) {
        left -= std::max(slice, std::chrono::milliseconds(1));
        if (left.count() <= 0) return py::bool_(false);
      }
    }
    if (r == Next::end) return py::none();
    if (r == Next::failed) raise_read_error(reader_->error());
    py::object records = py::none();
    if (c.done) {
      records = py::list();
    } else if (mapped) {
      records = py::cast(std::move(mapped));
    } else if (body || !c.page) {
      // The raw page, for a caller that parses it (parser="python", or a page with a number
      // the core cannot hold).
      records = py::bytes(c.response.body.data(), c.response.body.size());
    } else {
      PyBuilder builder;
      {
        GcPause pause;
        c.page->visit_records(records_path_, builder);
      }
      records = builder.take();
      python_records += c.count;
    }
    py::object after = c.after.empty() ? py::none() : from_json(c.after);
    py::object units = c.units ? py::object(py::make_tuple(c.units->first, c.units->second)) : py::none();
    py::object total = c.total ? py::object(py::int_(*c.total)) : py::none();
    py::object fields = py::none(), response = py::none();
    if (following_ && !c.done) {
      py::list values;
      for (const auto& v : c.fields) values.append(optional_str(v));
      fields = values;
      response = py::cast(std::move(c.response));
    }
    return py::make_tuple(c.partition, records, after, units, total, c.done, fields, response);
  }

  // A follow paginator's next step for `partition` (a step dict), or None after its last page.
  void follow(std::size_t partition, const py::object& step) {
    const std::string text = step.is_none() ? std::string() : to_json(step);
    py::gil_scoped_release release;
    reader_->follow(partition, text);
  }

  py::dict counts() const {
    const auto c = reader_->counts();
    py::dict d;
    d["requests"] = c.requests;
    d["status_429"] = c.status_429;
    d["retries"] = c.retries;
    d["bytes_in"] = c.bytes_in;
    d["wait_seconds"] = c.wait_seconds;
    return d;
  }

  void close() {
    py::gil_scoped_release release;
    reader_->close();
  }

 private:
  // The error a direct call would raise: the transport's class for a request that got no
  // answer; for an error status a PipelineError that is also what raise_for_status() raises.
  [[noreturn]] static void raise_read_error(pipeline::ReadError e) {
    using Kind = pipeline::ReadError::Kind;
    py::module_ errors = py::module_::import("isthmus.errors");
    py::object exc;
    if (e.kind == Kind::transport || e.kind == Kind::cancelled) {
      exc = make_exception(e.code, e.message, "GET", e.url);
    } else if (e.kind == Kind::status) {
      py::module_ http = py::module_::import("isthmus.http");
      const int status = e.response.status;
      const int attempts = e.response.attempts;
      py::object resp = http.attr("Response")(py::cast(std::move(e.response)),
                                              http.attr("Request")("GET", e.url));
      const auto reason = resp.attr("reason_phrase").cast<std::string>();
      const auto excerpt = resp.attr("_redacted_excerpt")(300).cast<std::string>();
      py::object cause;
      try {
        resp.attr("raise_for_status")();
        cause = errors.attr("HTTPStatusError")(std::to_string(status) + " " + reason + " for GET " + e.url,
                                               py::arg("response") = resp);
      } catch (py::error_already_set& raised) {
        if (!raised.matches(errors.attr("HTTPStatusError"))) throw;
        cause = raised.value();
      }
      // The core's message, with the reason and a redacted excerpt of the body added.
      std::string label = e.message.substr(0, e.message.find(": GET "));
      std::string message = label + ": GET " + e.url + " answered " + std::to_string(status) + " " + reason +
                            (attempts > 1 ? " after " + std::to_string(attempts) + " attempts" : "") + ": " +
                            excerpt;
      exc = errors.attr("pipeline_error")(message, cause);
    } else if (e.kind == Kind::malformed) {
      // Python's parser says where (line and column) the page stops being JSON.
      std::string detail;
      try {
        py::module_::import("json").attr("loads")(py::bytes(e.response.body));
      } catch (py::error_already_set& bad) {
        if (!bad.matches(PyExc_ValueError)) throw;
        detail = py::str(bad.value()).cast<std::string>();
      }
      std::string message = e.message;
      if (!detail.empty()) message = message.substr(0, message.find(" times: ") + 8) + detail;
      exc = errors.attr("PipelineError")(message);
    } else {
      exc = errors.attr("PipelineError")(e.message);
    }
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
    throw py::error_already_set();
  }

  std::unique_ptr<pipeline::PageReader> reader_;
  std::string records_path_;
  bool following_ = false;
  bool fused_ = false;
  std::string key_path_;
  py::object mapper_;  // the FieldMapper behind map_, kept alive with the reader
  const pipeline::FieldMap* map_ = nullptr;
};

}  // namespace

void bind_pipeline(py::module_& m) {
  m.def("parse_page", &parse_page, py::arg("body"), py::arg("records_path"), py::arg("fields"),
        "Parse a page: (status, records, field texts). See isthmus.pipeline.");

  m.def("python_records_built", [] { return python_records.load(); },
        "Records the core has made into Python objects so far (parsed pages, FieldMap results); for tests.");

  m.def("record_keys", &record_keys, py::arg("records"), py::arg("path"),
        "Each record's identity at a path of keys, as text; None where it has none.");
  m.def("record_values", &record_values, py::arg("records"), py::arg("path"),
        "The value at a path of keys (digits index a list) in each record; None where absent.");

  py::class_<FieldMapper>(m, "FieldMapper", "The core of isthmus.FieldMap.")
      .def(py::init<const py::list&>(), py::arg("rules"))
      .def("apply", &FieldMapper::apply, py::arg("records"));

  py::class_<pipeline::MappedBatch>(m, "MappedBatch",
                                    "Records as JSON text in the core, for its sink writers; see isthmus.sinks.")
      .def("__len__", &pipeline::MappedBatch::size)
      .def_property_readonly("read", &pipeline::MappedBatch::read, "Records read (mapped and failed).")
      .def_property_readonly("failures", [](const pipeline::MappedBatch& b) {
        py::list out;
        for (const auto& f : b.failures()) out.append(py::make_tuple(f.index, f.reason, f.record, optional_str(f.key)));
        return out;
      }, "[(index among the records read, reason, record JSON, key or None), ...]")
      .def("keys", [](const pipeline::MappedBatch& b) {
        py::list out(b.size());
        for (std::size_t i = 0; i < b.size(); ++i) out[i] = optional_str(b.key(i));
        return out;
      }, "Each record's key, None where it has none (see keyless).")
      .def_property_readonly("keyless", [](const pipeline::MappedBatch& b) {
        py::list out;
        for (const auto& [i, src] : b.keyless()) out.append(py::make_tuple(i, src));
        return out;
      }, "[(index, input record JSON), ...] of the records without a key.")
      .def("set_key", &pipeline::MappedBatch::set_key, py::arg("index"), py::arg("key"))
      .def("lines", [](const pipeline::MappedBatch& b) {
        const auto t = b.lines();
        return py::bytes(t.data(), t.size());
      }, "The records as JSON Lines.");

  m.def("map_page", &map_page, py::arg("body"), py::arg("records_path"), py::arg("fields"), py::arg("key_path"),
        py::arg("mapper").none(true) = py::none(),
        "Parse a page and map its records in the core: (status, MappedBatch, field texts).");

  py::class_<pipeline::Watermark>(m, "Watermark",
                                  "The first unit not yet accepted, when units finish out of order.")
      .def(py::init<std::uint64_t>(), py::arg("start") = 0)
      .def("complete", &pipeline::Watermark::complete, py::arg("begin"), py::arg("end"))
      .def_property_readonly("value", &pipeline::Watermark::value)
      .def_property_readonly("pending_ranges", &pipeline::Watermark::pending_ranges)
      .def_property_readonly("pending_units", &pipeline::Watermark::pending_units);

  py::class_<PyPageReader>(m, "PageReader",
                           "The core's fetch loop of a paginated stream; isthmus.Stream reads through it.")
      .def(py::init<const py::object&, const py::dict&>(), py::arg("client"), py::arg("spec"))
      .def("next", &PyPageReader::next, py::arg("timeout") = py::none(), py::arg("body") = false,
           "The next page as (partition, records, after, units, total, done, fields, response), None at the end, "
           "False when timeout seconds passed first; "
           "raises the error that stopped the read. records is a list, or the page's bytes with "
           "body=True or when the core cannot hold a number in it.")
      .def("follow", &PyPageReader::follow, py::arg("partition"), py::arg("step").none(true),
           "A follow paginator's next step for the partition's last page; None when it was the last.")
      .def("counts", &PyPageReader::counts, "requests, status_429, retries, bytes_in, wait_seconds so far.")
      .def("close", &PyPageReader::close, "Cancels what is in flight; next() then returns None.");
}

}  // namespace isthmus::bindings
