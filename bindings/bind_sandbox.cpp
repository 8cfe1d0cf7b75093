#include "bindings.hpp"

namespace isthmus::bindings {

void bind_sandbox(pybind11::module_& m) {}

}  // namespace isthmus::bindings
