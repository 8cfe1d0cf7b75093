// isthmus._core: coordination between processes on Redis (isthmus/coordination.py wraps it).
// Every call that talks to Redis releases the GIL while it waits.
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "isthmus/coord/coordination.hpp"
#include "isthmus/error.hpp"

namespace py = pybind11;

namespace isthmus::bindings {

namespace {

// A reply as Python values; an error reply raises (call() already turned it into an Error).
py::object to_python(const coord::Value& v) {
  using Type = coord::Value::Type;
  switch (v.type) {
    case Type::nil:
      return py::none();
    case Type::integer:
      return py::int_(v.integer);
    case Type::array: {
      py::list out;
      for (const auto& e : v.elements) out.append(to_python(e));
      return out;
    }
    default:
      return py::reinterpret_steal<py::object>(
          PyUnicode_DecodeUTF8(v.str.data(), static_cast<Py_ssize_t>(v.str.size()), "replace"));
  }
}

}  // namespace

void bind_coord(py::module_& m) {
  using coord::Coordination;
  using coord::Lease;

  py::class_<Lease, std::shared_ptr<Lease>>(m, "Lease", "A lock with a lease in Redis; isthmus.Claim wraps it.")
      .def_property_readonly("held", &Lease::held)
      .def_property_readonly("name", &Lease::name)
      .def_property_readonly("lease", &Lease::lease)
      .def("renew", &Lease::renew, py::arg("timeout"), py::call_guard<py::gil_scoped_release>())
      .def("release", &Lease::release, py::arg("timeout"), py::call_guard<py::gil_scoped_release>());

  py::class_<Coordination, std::shared_ptr<Coordination>>(m, "Coordination",
                                                          "A Redis connection; isthmus.Coordination wraps it.")
      .def(py::init([](std::string url, std::string ns, double connect_timeout, double command_timeout) {
             coord::Options o;
             o.url = std::move(url);
             o.ns = std::move(ns);
             o.connect_timeout = connect_timeout;
             o.command_timeout = command_timeout;
             py::gil_scoped_release release;
             return Coordination::connect(std::move(o));
           }),
           py::arg("url"), py::arg("namespace"), py::arg("connect_timeout"), py::arg("command_timeout"))
      .def("claim",
           [](const std::shared_ptr<Coordination>& self, std::string name, double lease, double timeout) {
             return Lease::try_acquire(self, std::move(name), lease, timeout);
           },
           py::arg("name"), py::arg("lease"), py::arg("timeout"), py::call_guard<py::gil_scoped_release>())
      .def("token_store",
           [](const std::shared_ptr<Coordination>& self, const std::string& key_env, const std::string& key_file) {
             std::string key = key_file.empty() ? auth::token_key_from_env(key_env) : auth::token_key_from_file(key_file);
             return coord::make_token_store(self, std::move(key));
           },
           py::arg("key_env"), py::arg("key_file"))
      .def("refresh_lock", [](const std::shared_ptr<Coordination>& self) { return coord::make_refresh_lock(self); })
      .def("command",
           [](const std::shared_ptr<Coordination>& self, std::vector<std::string> argv, double timeout) {
             coord::Value v;
             {
               py::gil_scoped_release release;
               v = self->call(std::move(argv), timeout);
             }
             return to_python(v);
           },
           py::arg("argv"), py::arg("timeout"),
           "One Redis command (keys named in full, see key()); nil is None, an array a list, a "
           "string str. For the worker's heartbeats and the status command.")
      .def("key", &Coordination::key, py::arg("name"))
      .def_property_readonly("redacted_url", &Coordination::redacted_url)
      .def_property_readonly("namespace", [](const Coordination& c) { return c.options().ns; })
      .def("stats", [](const Coordination& c) {
        const auto s = c.stats();
        py::dict d;
        d["commands"] = s.commands;
        d["connects"] = s.connects;
        d["scripts_loaded"] = s.scripts_loaded;
        d["failed"] = s.failed;
        d["connected"] = s.connected;
        return d;
      });

}

}  // namespace isthmus::bindings
