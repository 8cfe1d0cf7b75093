#include "bindings.hpp"
#include "isthmus/error.hpp"
#include "isthmus/sandbox/server.hpp"

namespace py = pybind11;

namespace isthmus::bindings {
namespace {

// Configuration errors surface as ValueError naming the field (the message comes from C++).
template <typename F>
auto translating(F&& f) {
  try {
    return f();
  } catch (const Error& e) {
    if (e.code() == make_error_code(errc::invalid_argument)) throw py::value_error(e.what());
    throw;
  }
}

}  // namespace

void bind_sandbox(py::module_& m) {
  py::class_<sandbox::Server>(m, "SandboxServer", "The sandbox mock API server (use isthmus.Sandbox).")
      .def(py::init([](std::string host, int port, int threads, std::string config_json) {
             if (port < 0 || port > 65535)
               throw py::value_error("sandbox option port=" + std::to_string(port) +
                                     " is invalid: expected an integer from 0 (any free port) to 65535");
             return std::make_unique<sandbox::Server>(sandbox::Options{
                 std::move(host), static_cast<std::uint16_t>(port), threads, std::move(config_json)});
           }),
           py::arg("host") = "127.0.0.1", py::arg("port") = 0, py::arg("threads") = 1, py::arg("config_json") = "{}")
      .def("start", [](sandbox::Server& s) {
        translating([&] {
          py::gil_scoped_release release;
          s.start();
        });
      })
      .def("stop", [](sandbox::Server& s) {
        py::gil_scoped_release release;
        s.stop();
      })
      .def("port", &sandbox::Server::port)
      .def("url", &sandbox::Server::url)
      .def("stats_json", &sandbox::Server::stats_json)
      .def("reset_stats", &sandbox::Server::reset_stats);
}

}  // namespace isthmus::bindings
