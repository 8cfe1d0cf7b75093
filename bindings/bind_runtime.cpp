#include "bindings.hpp"
#include "isthmus/runtime/engine.hpp"

namespace py = pybind11;

namespace isthmus::bindings {

void bind_runtime(py::module_& m) {
  m.def("shutdown", [] {
    py::gil_scoped_release release;
    Engine::shutdown_shared();
  }, "Stop the process-wide engine's I/O threads (called at interpreter exit).");
}

}  // namespace isthmus::bindings
