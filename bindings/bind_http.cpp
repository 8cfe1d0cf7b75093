#include "bindings.hpp"

namespace isthmus::bindings {

void bind_http(pybind11::module_& m) {}

}  // namespace isthmus::bindings
