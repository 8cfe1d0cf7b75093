// One bind_<area>() per core area; module.cpp calls them in order.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>

#include "isthmus/http/client.hpp"
#include "isthmus/pipeline/mapped.hpp"

namespace isthmus::bindings {

void register_exceptions(pybind11::module_& m);
void bind_runtime(pybind11::module_& m);
void bind_http(pybind11::module_& m);
void bind_sandbox(pybind11::module_& m);
void bind_pipeline(pybind11::module_& m);
void bind_auth(pybind11::module_& m);
void bind_limits(pybind11::module_& m);
void bind_json(pybind11::module_& m);
void bind_sinks(pybind11::module_& m);
void bind_queue(pybind11::module_& m);
void bind_store(pybind11::module_& m);
void bind_coord(pybind11::module_& m);
void bind_webhook(pybind11::module_& m);

// d[key] as a T, or `fallback` when the key is missing or None (specs the Python layer validated).
template <class T>
T dict_value(const pybind11::dict& d, const char* key, T fallback) {
  if (!d.contains(key) || d[key].is_none()) return fallback;
  return d[key].cast<T>();
}

// bind_limits.cpp: `inner` wrapped in a GovernedTransport when the client has a limiter
// (an isthmus._core.Limiter) or a retry policy (a dict); otherwise `inner` itself.
std::shared_ptr<http::Transport> govern(std::shared_ptr<http::Transport> inner,
                                        const pybind11::object& governor,
                                        const pybind11::object& retry, const pybind11::object& key);

// bind_http.cpp: the transport stack an isthmus._core.HttpClient sends through.
std::shared_ptr<http::Transport> transport_of(const pybind11::handle& http_client);

// bind_json.cpp: `obj` as JSON text, the way isthmus._core.json_dumps writes it; TypeError
// naming where when it cannot be written.
std::string json_text(const pybind11::handle& obj);
// Each record of `records` (a list) appended to `out` as JSON, with its key from `keys` (a
// list of str or None, as long); a record that cannot be written is left out and reported as
// (index, reason) in `rejected`.
void encode_records(const pybind11::list& records, const pybind11::list& keys, pipeline::MappedBatch& out,
                    pybind11::list& rejected);

}  // namespace isthmus::bindings
