#include "bindings.hpp"
#include "isthmus/error.hpp"
#include "isthmus/sandbox/server.hpp"

namespace py = pybind11;

namespace isthmus::bindings {

void bind_sandbox(py::module_& m) {
  py::class_<sandbox::Server>(m, "SandboxServer", "The sandbox mock API server (use isthmus.Sandbox).")
      .def(py::init([](std::string host, int port, int threads, std::string config_json) {
             if (port < 0 || port > 65535)
               throw Error(errc::invalid_argument, "sandbox option port=" + std::to_string(port) +
                                     " is invalid: expected an integer from 0 (any free port) to 65535");
             return std::make_unique<sandbox::Server>(sandbox::Options{
                 std::move(host), static_cast<std::uint16_t>(port), threads, std::move(config_json)});
           }),
           py::arg("host") = "127.0.0.1", py::arg("port") = 0, py::arg("threads") = 1, py::arg("config_json") = "{}")
      .def("start", [](sandbox::Server& s) {
        // Errors (bad config: isthmus.ConfigError, a ValueError) are translated in exceptions.cpp.
        py::gil_scoped_release release;
        s.start();
      })
      .def("stop", [](sandbox::Server& s) {
        py::gil_scoped_release release;
        s.stop();
      })
      .def("port", &sandbox::Server::port)
      .def("url", &sandbox::Server::url)
      .def("stats_json", &sandbox::Server::stats_json)
      .def("reset_stats", &sandbox::Server::reset_stats)
      .def("tenants_json", &sandbox::Server::tenants_json)
      .def("revoke_tokens", &sandbox::Server::revoke_tokens, py::arg("tenant"))
      .def("set_access", &sandbox::Server::set_access, py::arg("tenant"), py::arg("allowed"));
}

}  // namespace isthmus::bindings
