// One bind_<area>() per core area; module.cpp calls them in order.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>

#include "isthmus/http/client.hpp"

namespace isthmus::pipeline {
class PageReader;
}

namespace isthmus::bindings {

void register_exceptions(pybind11::module_& m);
void bind_runtime(pybind11::module_& m);
void bind_http(pybind11::module_& m);
void bind_sandbox(pybind11::module_& m);
void bind_pipeline(pybind11::module_& m);
void bind_auth(pybind11::module_& m);
void bind_limits(pybind11::module_& m);
void bind_json(pybind11::module_& m);

// bind_limits.cpp: `inner` wrapped in a GovernedTransport when the client has a limiter
// (an isthmus._core.Limiter) or a retry policy (a dict); otherwise `inner` itself.
std::shared_ptr<http::Transport> govern(std::shared_ptr<http::Transport> inner,
                                        const pybind11::object& governor,
                                        const pybind11::object& retry, const pybind11::object& key);

// bind_http.cpp: the transport an isthmus._core.HttpClient sends through (its auth, limits and
// retries), for readers in the core that send on the client's behalf.
std::shared_ptr<http::Transport> transport_of(const pybind11::object& client);

// bind_pipeline.cpp: the C++ reader behind an isthmus._core.PageReader, for a consumer in the
// core that takes its pages without building Python objects.
pipeline::PageReader& page_reader_of(const pybind11::object& reader);

}  // namespace isthmus::bindings
