// One bind_<area>() per core area; module.cpp calls them in order.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>

#include "isthmus/http/client.hpp"

namespace isthmus::bindings {

void register_exceptions(pybind11::module_& m);
void bind_runtime(pybind11::module_& m);
void bind_http(pybind11::module_& m);
void bind_sandbox(pybind11::module_& m);
void bind_pipeline(pybind11::module_& m);
void bind_auth(pybind11::module_& m);
void bind_limits(pybind11::module_& m);
void bind_json(pybind11::module_& m);
void bind_queue(pybind11::module_& m);
void bind_store(pybind11::module_& m);

// bind_limits.cpp: `inner` wrapped in a GovernedTransport when the client has a limiter
// (an isthmus._core.Limiter) or a retry policy (a dict); otherwise `inner` itself.
std::shared_ptr<http::Transport> govern(std::shared_ptr<http::Transport> inner,
                                        const pybind11::object& governor,
                                        const pybind11::object& retry, const pybind11::object& key);

}  // namespace isthmus::bindings
