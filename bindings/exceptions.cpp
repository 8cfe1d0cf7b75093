#include "bindings.hpp"

namespace isthmus::bindings {

void register_exceptions(pybind11::module_& m) {}

}  // namespace isthmus::bindings
