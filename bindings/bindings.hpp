// One bind_<area>() per core area; module.cpp calls them in order.
#pragma once

#include <pybind11/pybind11.h>

namespace isthmus::bindings {

void register_exceptions(pybind11::module_& m);
void bind_runtime(pybind11::module_& m);
void bind_http(pybind11::module_& m);
void bind_sandbox(pybind11::module_& m);
void bind_pipeline(pybind11::module_& m);
void bind_auth(pybind11::module_& m);

}  // namespace isthmus::bindings
