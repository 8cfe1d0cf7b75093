// isthmus._core: Python objects to JSON text, in one pass in C++ (the outbound half of "JSON
// that crosses into Python is converted once, in C++, in bulk"). Sinks and request bodies use
// it; json.dumps spends most of a pipeline's time on exactly this.
//
// Output is compact UTF-8 (no spaces, non-ASCII kept as is). Besides dict, list, tuple, str,
// int, float, bool and None it writes datetime/date/time as ISO 8601 strings and Decimal and
// UUID as their text, which is what a record mapped for an API usually carries. NaN and
// infinities are refused: they are not JSON, and a receiver would choke on them.
#include <pybind11/pybind11.h>

#include <array>
#include <charconv>
#include <cstdint>
#include <cmath>
#include <string>

#include "bindings.hpp"
#include "isthmus/pipeline/json_write.hpp"
#include "isthmus/pipeline/mapped.hpp"

namespace py = pybind11;

namespace isthmus::bindings {
namespace {

constexpr int kMaxDepth = 200;

// Types written through their text form; looked up once, on first use.
struct Extras {
  PyObject* datetime = nullptr;
  PyObject* date = nullptr;
  PyObject* time = nullptr;
  PyObject* decimal = nullptr;
  PyObject* uuid = nullptr;
};

const Extras& extras() {
  static const Extras e = [] {
    Extras x;
    auto dt = py::module_::import("datetime");
    // Kept for the life of the process, like the modules they come from.
    x.datetime = py::object(dt.attr("datetime")).release().ptr();
    x.date = py::object(dt.attr("date")).release().ptr();
    x.time = py::object(dt.attr("time")).release().ptr();
    x.decimal = py::object(py::module_::import("decimal").attr("Decimal")).release().ptr();
    x.uuid = py::object(py::module_::import("uuid").attr("UUID")).release().ptr();
    return x;
  }();
  return e;
}

// Why a value could not be written, and where in the document (".email", "[3].id").
struct EncodeError {
  std::string reason;
  std::string where;
};

class Encoder {
 public:
  explicit Encoder(std::string& out) : out_(out) {}
  ~Encoder() {
    for (auto& slot : keys_) Py_XDECREF(slot.key);
  }
  Encoder(const Encoder&) = delete;
  Encoder& operator=(const Encoder&) = delete;

  // Appends `obj` as JSON; on failure throws EncodeError (out_ then holds a partial value).
  void value(PyObject* obj, int depth) {
    if (obj == Py_None) {
      out_ += "null";
    } else if (obj == Py_True) {
      out_ += "true";
    } else if (obj == Py_False) {
      out_ += "false";
    } else if (PyUnicode_Check(obj)) {
      string(obj);
    } else if (PyLong_Check(obj)) {
      integer(obj);
    } else if (PyFloat_Check(obj)) {
      number(PyFloat_AS_DOUBLE(obj));
    } else if (PyDict_Check(obj)) {
      object(obj, depth);
    } else if (PyList_Check(obj) || PyTuple_Check(obj)) {
      array(obj, depth);
    } else {
      other(obj);
    }
  }

 private:
  void string(PyObject* s) {
    if (PyUnicode_IS_ASCII(s)) {
      pipeline::append_quoted(out_, std::string_view(static_cast<const char*>(PyUnicode_DATA(s)),
                                                     static_cast<std::size_t>(PyUnicode_GET_LENGTH(s))));
      return;
    }
    // Encoded from the str's own code points: PyUnicode_AsUTF8 would build and keep a UTF-8
    // copy inside every non-ASCII str it is asked for.
    const int kind = PyUnicode_KIND(s);
    const void* data = PyUnicode_DATA(s);
    const Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    // Written through a pointer into room for the worst case (4 bytes a code point), then cut
    // to size: appending byte by byte was a tenth of a pipeline's sink time.
    utf8_.resize(static_cast<std::size_t>(n) * 4);
    char* w = utf8_.data();
    for (Py_ssize_t i = 0; i < n; ++i) {
      const Py_UCS4 c = PyUnicode_READ(kind, data, i);
      if (c < 0x80) {
        *w++ = static_cast<char>(c);
      } else if (c < 0x800) {
        *w++ = static_cast<char>(0xC0 | (c >> 6));
        *w++ = static_cast<char>(0x80 | (c & 0x3F));
      } else if (c < 0x10000) {
        if (c >= 0xD800 && c <= 0xDFFF) throw EncodeError{"a str with a lone surrogate is not valid UTF-8", {}};
        *w++ = static_cast<char>(0xE0 | (c >> 12));
        *w++ = static_cast<char>(0x80 | ((c >> 6) & 0x3F));
        *w++ = static_cast<char>(0x80 | (c & 0x3F));
      } else {
        *w++ = static_cast<char>(0xF0 | (c >> 18));
        *w++ = static_cast<char>(0x80 | ((c >> 12) & 0x3F));
        *w++ = static_cast<char>(0x80 | ((c >> 6) & 0x3F));
        *w++ = static_cast<char>(0x80 | (c & 0x3F));
      }
    }
    utf8_.resize(static_cast<std::size_t>(w - utf8_.data()));
    pipeline::append_quoted(out_, utf8_);
  }

  // A record's keys are the same str objects record after record (one per name when the
  // core built them): each is quoted once per batch and copied after that. A slot holds a
  // reference, so the object it names cannot be freed and replaced at the same address.
  void key(PyObject* k) {
    // Fibonacci hashing of the address: neighbouring objects land in scattered slots.
    const auto h = (static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(k)) >> 4) * 0x9E3779B97F4A7C15ull;
    Slot& slot = keys_[h >> 56];
    if (slot.key != k) {
      const std::size_t mark = out_.size();
      string(k);
      Py_INCREF(k);
      Py_XDECREF(slot.key);
      slot.key = k;
      slot.text.assign(out_, mark, std::string::npos);
      return;
    }
    out_ += slot.text;
  }

  void integer(PyObject* obj) {
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow == 0) {
      if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
      char buf[24];
      const auto end = std::to_chars(buf, buf + sizeof buf, v).ptr;
      out_.append(buf, static_cast<std::size_t>(end - buf));
      return;
    }
    // Wider than 64 bits: JSON numbers have no size limit, so write every digit.
    text_of(obj, /*quote=*/false);
  }

  void number(double v) {
    if (!std::isfinite(v)) throw EncodeError{std::string("the float ") + (std::isnan(v) ? "NaN" : "infinity") +
                                             " is not valid JSON", {}};
    // repr's shortest round-trip form, as json.dumps writes it ("1.0", "1e+100").
    char* s = PyOS_double_to_string(v, 'r', 0, Py_DTSF_ADD_DOT_0, nullptr);
    if (!s) throw py::error_already_set();
    out_ += s;
    PyMem_Free(s);
  }

  void object(PyObject* dict, int depth) {
    if (depth >= kMaxDepth) throw EncodeError{"nested more than " + std::to_string(kMaxDepth) + " levels deep", {}};
    out_ += '{';
    Py_ssize_t pos = 0;
    PyObject *k = nullptr, *v = nullptr;
    bool first = true;
    while (PyDict_Next(dict, &pos, &k, &v)) {
      if (!first) out_ += ',';
      first = false;
      if (PyUnicode_CheckExact(k)) {
        key(k);
      } else if (PyUnicode_Check(k)) {
        string(k);
      } else if (PyLong_Check(k) && !PyBool_Check(k)) {
        out_ += '"';
        integer(k);
        out_ += '"';
      } else {
        throw EncodeError{std::string("a key of type ") + Py_TYPE(k)->tp_name +
                              " (JSON keys are strings; str and int keys are written)", {}};
      }
      out_ += ':';
      try {
        value(v, depth + 1);
      } catch (EncodeError& e) {
        Py_ssize_t n = 0;
        const char* name = PyUnicode_Check(k) ? PyUnicode_AsUTF8AndSize(k, &n) : nullptr;
        e.where = "." + (name ? std::string(name, static_cast<std::size_t>(n)) : std::string("<key>")) + e.where;
        throw;
      }
    }
    out_ += '}';
  }

  void array(PyObject* seq, int depth) {
    if (depth >= kMaxDepth) throw EncodeError{"nested more than " + std::to_string(kMaxDepth) + " levels deep", {}};
    out_ += '[';
    const bool list = PyList_Check(seq);
    const Py_ssize_t n = list ? PyList_GET_SIZE(seq) : PyTuple_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n; ++i) {
      if (i) out_ += ',';
      try {
        value(list ? PyList_GET_ITEM(seq, i) : PyTuple_GET_ITEM(seq, i), depth + 1);
      } catch (EncodeError& e) {
        e.where = "[" + std::to_string(i) + "]" + e.where;
        throw;
      }
    }
    out_ += ']';
  }

  void other(PyObject* obj) {
    const Extras& x = extras();
    if (PyObject_IsInstance(obj, x.datetime) > 0 || PyObject_IsInstance(obj, x.date) > 0 ||
        PyObject_IsInstance(obj, x.time) > 0) {
      py::object iso = py::reinterpret_borrow<py::object>(obj).attr("isoformat")();
      string(iso.ptr());
    } else if (PyObject_IsInstance(obj, x.decimal) > 0) {
      if (!py::reinterpret_borrow<py::object>(obj).attr("is_finite")().cast<bool>())
        throw EncodeError{"the Decimal " + py::str(obj).cast<std::string>() + " is not valid JSON", {}};
      text_of(obj, /*quote=*/false);
    } else if (PyObject_IsInstance(obj, x.uuid) > 0) {
      text_of(obj, /*quote=*/true);
    } else {
      if (PyErr_Occurred()) throw py::error_already_set();
      throw EncodeError{std::string("a value of type ") + Py_TYPE(obj)->tp_name + " is not JSON-serializable", {}};
    }
  }

  void text_of(PyObject* obj, bool quote) {
    py::str text = py::str(obj);
    Py_ssize_t n = 0;
    const char* p = PyUnicode_AsUTF8AndSize(text.ptr(), &n);
    if (!p) throw py::error_already_set();
    if (quote) {
      pipeline::append_quoted(out_, std::string_view(p, static_cast<std::size_t>(n)));
    } else {
      out_.append(p, static_cast<std::size_t>(n));
    }
  }

  std::string& out_;
  std::string utf8_;  // a non-ASCII str's text, reused
  struct Slot {
    PyObject* key = nullptr;
    std::string text;  // the key as a quoted JSON string
  };
  std::array<Slot, 256> keys_{};
};

std::string describe(const EncodeError& e) {
  return e.where.empty() ? e.reason : "at " + e.where + ": " + e.reason;
}

py::bytes to_bytes(const std::string& s) { return py::bytes(s.data(), s.size()); }

// One JSON document: bytes, or isthmus.ConfigError-compatible ValueError/TypeError naming where.
py::bytes dumps(const py::handle& obj) {
  std::string out;
  try {
    Encoder(out).value(obj.ptr(), 0);
  } catch (const EncodeError& e) {
    throw py::type_error("not JSON-serializable: " + describe(e));
  }
  return to_bytes(out);
}

// Records to a batch of JSON texts, the unit the core's sink writers take. A record that
// cannot be written is left out and reported as (index, reason), so one bad record never
// stops the others.
py::tuple batch(const py::list& records, const py::list& keys) {
  auto out = std::make_unique<pipeline::MappedBatch>();
  py::list rejected;
  encode_records(records, keys, *out, rejected);
  return py::make_tuple(py::cast(std::move(out)), rejected);
}

// Each record as one line (the batch's text), for callers that want bytes.
py::tuple lines(const py::list& records) {
  pipeline::MappedBatch out;
  py::list rejected;
  encode_records(records, py::list(), out, rejected);
  const auto text = out.lines();
  return py::make_tuple(py::bytes(text.data(), text.size()), rejected);
}

}  // namespace

std::string json_text(const py::handle& obj) {
  std::string out;
  try {
    Encoder(out).value(obj.ptr(), 0);
  } catch (const EncodeError& e) {
    throw py::type_error("not JSON-serializable: " + describe(e));
  }
  return out;
}

void encode_records(const py::list& records, const py::list& keys, pipeline::MappedBatch& out,
                    py::list& rejected) {
  const Py_ssize_t n = PyList_GET_SIZE(records.ptr());
  const bool keyed = PyList_GET_SIZE(keys.ptr()) == n;
  std::string& text = out.begin();
  text.reserve(text.size() + static_cast<std::size_t>(n) * 256);
  Encoder enc(text);
  for (Py_ssize_t i = 0; i < n; ++i) {
    const std::size_t mark = text.size();
    try {
      enc.value(PyList_GET_ITEM(records.ptr(), i), 0);
    } catch (const EncodeError& e) {
      text.resize(mark);
      rejected.append(py::make_tuple(i, "not JSON-serializable: " + describe(e)));
      continue;
    }
    std::optional<std::string_view> key;
    PyObject* k = keyed ? PyList_GET_ITEM(keys.ptr(), i) : Py_None;
    if (PyUnicode_Check(k)) {
      Py_ssize_t size = 0;
      const char* p = PyUnicode_AsUTF8AndSize(k, &size);
      if (!p) throw py::error_already_set();
      key = std::string_view(p, static_cast<std::size_t>(size));
    }
    out.end(key);
  }
  out.set_read(out.read() + static_cast<std::size_t>(n));
}

void bind_json(py::module_& m) {
  m.def("json_dumps", &dumps, py::arg("obj"),
        "obj as compact UTF-8 JSON bytes; TypeError naming the path of a value it cannot write.");
  m.def("json_lines", &lines, py::arg("records"),
        "(JSON Lines bytes, [(index, reason), ...] for records left out).");
  m.def("json_batch", &batch, py::arg("records"), py::arg("keys"),
        "(MappedBatch of the records as JSON with their keys, [(index, reason), ...] for records left out).");
}

}  // namespace isthmus::bindings
