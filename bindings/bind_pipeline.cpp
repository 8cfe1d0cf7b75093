// isthmus._core: the pipeline's hot parts. A page body is parsed in the core with the GIL
// released, then its records become Python objects in one pass (no JSON text crosses over).
#include <string>
#include <unordered_map>
#include <vector>

#include <pybind11/stl.h>

#include "bindings.hpp"
#include "isthmus/http/message.hpp"
#include "isthmus/pipeline/page.hpp"
#include "isthmus/pipeline/watermark.hpp"

namespace py = pybind11;

namespace isthmus::bindings {
namespace {

using pipeline::JsonVisitor;
using pipeline::Page;

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
    // The parser has already checked that the text is valid UTF-8.
    put(PyUnicode_FromStringAndSize(v.data(), static_cast<Py_ssize_t>(v.size())));
  }
  void begin_array(std::size_t size) override {
    PyObject* list = PyList_New(static_cast<Py_ssize_t>(size));
    if (!list) throw py::error_already_set();
    stack_.push_back({list, 0, nullptr});
  }
  void end_array() override { close(); }
  void begin_object(std::size_t) override {
    PyObject* dict = PyDict_New();
    if (!dict) throw py::error_already_set();
    stack_.push_back({dict, 0, nullptr});
  }
  void key(std::string_view k) override {
    // Records repeat the same few keys; one shared str per name saves an allocation each.
    auto it = keys_.find(k);
    if (it == keys_.end()) {
      PyObject* s = PyUnicode_FromStringAndSize(k.data(), static_cast<Py_ssize_t>(k.size()));
      if (!s) throw py::error_already_set();
      PyUnicode_InternInPlace(&s);
      it = keys_.emplace(std::string(k), s).first;
    }
    Py_INCREF(it->second);
    stack_.back().key = it->second;
  }
  void end_object() override { close(); }

 private:
  struct Frame {
    PyObject* container;
    Py_ssize_t index;
    PyObject* key;  // the pending key of a dict
  };

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
  return py::make_tuple("ok", builder.take(), field_values);
}

}  // namespace

void bind_pipeline(py::module_& m) {
  m.def("parse_page", &parse_page, py::arg("body"), py::arg("records_path"), py::arg("fields"),
        "Parse a page: (status, records, field texts). See isthmus.pipeline.");

  py::class_<pipeline::Watermark>(m, "Watermark",
                                  "The first unit not yet accepted, when units finish out of order.")
      .def(py::init<std::uint64_t>(), py::arg("start") = 0)
      .def("complete", &pipeline::Watermark::complete, py::arg("begin"), py::arg("end"))
      .def_property_readonly("value", &pipeline::Watermark::value)
      .def_property_readonly("pending_ranges", &pipeline::Watermark::pending_ranges)
      .def_property_readonly("pending_units", &pipeline::Watermark::pending_units);
}

}  // namespace isthmus::bindings
