// isthmus._core: the sink writers of the core (pipeline/sink.hpp) behind isthmus.JsonlSink,
// SqliteSink and HttpSink. Each takes a MappedBatch; every call that writes or waits on the
// network runs with the GIL released, after its arguments are converted.
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "isthmus/error.hpp"
#include "isthmus/pipeline/sink.hpp"

namespace py = pybind11;

namespace isthmus::bindings {
namespace {

using pipeline::MappedBatch;

[[noreturn]] void raise_os_error(const std::error_code& ec, const std::string& why) {
  PyErr_SetObject(PyExc_OSError, py::make_tuple(ec.value(), why).ptr());
  throw py::error_already_set();
}

[[noreturn]] void raise_isthmus_error(const std::string& cls, const std::string& why) {
  py::object exc = py::module_::import("isthmus.errors").attr(cls.c_str())(why);
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
  throw py::error_already_set();
}

template <class Call>
void run_jsonl(Call call) {
  std::string why;
  std::error_code ec;
  {
    py::gil_scoped_release release;
    ec = call(why);
  }
  if (ec) raise_os_error(ec, why);
}

// HttpSink(idempotency_key=fn): the function is called with the GIL for each batch's key; an
// exception it raises is kept here and raised again once the write is back on the Python side.
struct KeyFunction {
  py::object fn;
  std::optional<py::error_already_set> error;
};
struct KeyFunctionFailed {};

class PyHttpBatcher {
 public:
  PyHttpBatcher(std::shared_ptr<http::Transport> transport, pipeline::HttpBatchOptions o, py::object key_fn) {
    if (!key_fn.is_none()) {
      auto state = std::make_shared<KeyFunction>();
      state->fn = std::move(key_fn);
      o.key_fn = [state](const std::vector<std::string>& records, const std::vector<std::string>& keys,
                         std::size_t begin, std::size_t end) -> std::string {
        py::gil_scoped_acquire gil;
        try {
          py::list rs, ks;
          for (std::size_t i = begin; i < end; ++i) {
            rs.append(py::str(records[i]));
            ks.append(py::str(keys[i]));
          }
          py::object key = state->fn(rs, ks);
          return key.is_none() ? std::string() : py::str(key).cast<std::string>();
        } catch (py::error_already_set& e) {
          state->error.emplace(std::move(e));
          throw KeyFunctionFailed{};
        }
      };
      key_ = state;
    }
    batcher_ = std::make_unique<pipeline::HttpBatcher>(std::move(transport), std::move(o));
  }

  template <class Call>
  py::object run(Call call) {
    pipeline::HttpOutcome o;
    bool failed = false;
    {
      py::gil_scoped_release release;
      try {
        o = call(*batcher_);
      } catch (const KeyFunctionFailed&) {
        failed = true;
      }
    }
    if (failed) {
      auto e = std::move(*key_->error);
      key_->error.reset();
      throw e;
    }
    return outcome(std::move(o));
  }

  pipeline::HttpBatcher& batcher() { return *batcher_; }

 private:
  static py::object outcome(pipeline::HttpOutcome&& o);
  std::shared_ptr<KeyFunction> key_;
  std::unique_ptr<pipeline::HttpBatcher> batcher_;
};

py::object PyHttpBatcher::outcome(pipeline::HttpOutcome&& o) {
  py::list rejected;
  for (auto& r : o.rejected) rejected.append(py::make_tuple(r.key, r.record, py::cast(std::move(r.response))));
  py::object stop = o.stop ? py::cast(std::move(*o.stop)) : py::none();
  py::dict counts;
  counts["requests"] = o.counts.requests;
  counts["retries"] = o.counts.retries;
  counts["status_429"] = o.counts.status_429;
  counts["bytes_in"] = o.counts.bytes_in;
  counts["bytes_out"] = o.counts.bytes_out;
  counts["wait_seconds"] = o.counts.waited;
  return py::make_tuple(rejected, stop, counts);
}

}  // namespace

void bind_sinks(py::module_& m) {
  using pipeline::HttpBatcher;
  using pipeline::JsonlWriter;
  using pipeline::SqliteWriter;

  py::class_<JsonlWriter>(m, "JsonlWriter", "The core of isthmus.JsonlSink.")
      .def(py::init<std::string, bool>(), py::arg("path"), py::arg("fsync"))
      .def("open", [](JsonlWriter& w) { run_jsonl([&](std::string& why) { return w.open(why); }); })
      .def("write", [](JsonlWriter& w, const MappedBatch& b) {
        run_jsonl([&](std::string& why) { return w.write(b, why); });
        return b.lines().size();
      }, py::arg("batch"), "Appends the batch's lines; returns the bytes written.")
      .def("flush", [](JsonlWriter& w) { run_jsonl([&](std::string& why) { return w.flush(why); }); })
      .def("close", [](JsonlWriter& w) {
        py::gil_scoped_release release;
        w.close();
      })
      .def_property_readonly("is_open", &JsonlWriter::is_open);

  py::class_<SqliteWriter>(m, "SqliteWriter", "The core of isthmus.SqliteSink.")
      .def(py::init<std::string, std::string, std::string>(), py::arg("path"), py::arg("table"), py::arg("key_field"))
      .def("open", [](SqliteWriter& w) {
        std::string why;
        std::error_code ec;
        {
          py::gil_scoped_release release;
          ec = w.open(why);
        }
        if (ec) raise_isthmus_error(ec == make_error_code(errc::invalid_argument) ? "ConfigError" : "IsthmusError", why);
      })
      .def("write", [](SqliteWriter& w, const MappedBatch& b, bool keys_are_final) {
        std::string why;
        std::error_code ec;
        {
          py::gil_scoped_release release;
          ec = w.write(b, keys_are_final, why);
        }
        if (ec) raise_isthmus_error("IsthmusError", "SqliteSink: " + why);
      }, py::arg("batch"), py::arg("keys_are_final"))
      .def("close", [](SqliteWriter& w) {
        py::gil_scoped_release release;
        w.close();
      });

  py::class_<PyHttpBatcher>(m, "HttpBatcher", "The core of isthmus.HttpSink.")
      .def(py::init([](const py::object& client, std::string url, http::Headers headers, std::size_t batch_size,
                       std::size_t concurrency, std::string wrap, bool idempotency_key, double timeout,
                       py::object key_function) {
             pipeline::HttpBatchOptions o;
             o.url = std::move(url);
             o.headers = std::move(headers);
             o.batch_size = batch_size;
             o.concurrency = concurrency;
             o.wrap = std::move(wrap);
             o.idempotency_key = idempotency_key;
             o.timeout = timeout;
             return std::make_unique<PyHttpBatcher>(transport_of(client), std::move(o), std::move(key_function));
           }),
           py::arg("client"), py::arg("url"), py::arg("headers"), py::arg("batch_size"), py::arg("concurrency"),
           py::arg("wrap"), py::arg("idempotency_key"), py::arg("timeout"), py::arg("key_function") = py::none())
      .def("write", [](PyHttpBatcher& b, const MappedBatch& batch) {
        return b.run([&](HttpBatcher& h) { return h.write(batch); });
      }, py::arg("batch"), "(rejected [(key, record JSON, Response)], stopping Response or None, counts)")
      .def("flush", [](PyHttpBatcher& b) { return b.run([](HttpBatcher& h) { return h.flush(); }); })
      .def("clear", [](PyHttpBatcher& b) { b.batcher().clear(); })
      .def_property_readonly("buffered", [](PyHttpBatcher& b) { return b.batcher().buffered(); })
      .def_static("idempotency_key", [](const std::vector<std::string>& keys) {
        return HttpBatcher::idempotency_key(keys, 0, keys.size());
      }, py::arg("keys"));
}

}  // namespace isthmus::bindings
