#include "bindings.hpp"

PYBIND11_MODULE(_core, m) {
  m.doc() = "isthmus core (C++): engine, HTTP client, sandbox. Use the isthmus package instead.";
  using namespace isthmus::bindings;
  register_exceptions(m);
  bind_runtime(m);
  // Classes are registered before the signatures that name them, so docstrings and stubs
  // show Python names (auth's Credential is a parameter of HttpClient).
  bind_auth(m);
  bind_coord(m);  // before limits: a Limiter may take a Coordination
  bind_http(m);
  bind_sandbox(m);
  bind_pipeline(m);
  bind_limits(m);
  bind_json(m);
  bind_sinks(m);
  bind_queue(m);
  bind_store(m);
  bind_webhook(m);  // after queue: a receiver takes a LocalQueue or an AmqpQueue
}
