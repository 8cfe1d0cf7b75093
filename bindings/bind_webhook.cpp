// isthmus._core: the webhook receiver. Routes arrive as dicts the Python layer validated; the
// queue is a LocalQueue or AmqpQueue of this module, shared with the Python object that holds
// it. start() and stop() run without the GIL (the server's threads never take it).
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "isthmus/error.hpp"
#include "isthmus/queue/amqp_queue.hpp"
#include "isthmus/queue/local_queue.hpp"
#include "isthmus/webhook/receiver.hpp"

namespace py = pybind11;

namespace isthmus::bindings {
namespace {

using webhook::Receiver;

std::string text_of(const py::dict& d, const char* key) {
  if (!d.contains(key) || d[key].is_none()) return {};
  return py::str(d[key]).cast<std::string>();
}

webhook::Route route_of(const py::handle& h) {
  const auto d = h.cast<py::dict>();
  webhook::Route r;
  r.path = text_of(d, "path");
  r.scheme = webhook::parse_scheme(text_of(d, "scheme"), "routes[" + printable(r.path) + "].scheme");
  r.secret = text_of(d, "secret");
  if (d.contains("tolerance")) r.tolerance = d["tolerance"].cast<double>();
  r.id_header = text_of(d, "id_header");
  r.timestamp_header = text_of(d, "timestamp_header");
  r.signature_header = text_of(d, "signature_header");
  return r;
}

std::shared_ptr<queue::Queue> queue_of(const py::object& q) {
  if (py::isinstance<queue::LocalQueue>(q)) return q.cast<std::shared_ptr<queue::LocalQueue>>();
  if (py::isinstance<queue::AmqpQueue>(q)) return q.cast<std::shared_ptr<queue::AmqpQueue>>();
  throw Error(errc::invalid_argument, "queue: a " + std::string(py::str(q.get_type().attr("__name__"))) +
                                          " is not valid; expected a LocalQueue or an AmqpQueue");
}

}  // namespace

void bind_webhook(py::module_& m) {
  py::class_<Receiver, std::shared_ptr<Receiver>>(m, "WebhookReceiver",
                                                  "A webhook receiver (use isthmus.WebhookReceiver).")
      .def(py::init([](const std::string& host, std::uint16_t port, int threads, const py::list& routes,
                       const py::object& queue, std::size_t max_body_bytes, std::int64_t max_depth,
                       std::size_t dedupe_ids, int retry_after) {
             webhook::ReceiverOptions o;
             o.host = host;
             o.port = port;
             o.threads = threads;
             for (const auto& r : routes) o.routes.push_back(route_of(r));
             o.queue = queue_of(queue);
             o.max_body_bytes = max_body_bytes;
             o.max_depth = max_depth;
             o.dedupe_ids = dedupe_ids;
             o.retry_after_seconds = retry_after;
             return std::make_shared<Receiver>(std::move(o));
           }),
           py::arg("host"), py::arg("port"), py::arg("threads"), py::arg("routes"), py::arg("queue"),
           py::arg("max_body_bytes"), py::arg("max_depth"), py::arg("dedupe_ids"), py::arg("retry_after"))
      .def(
          "start",
          [](Receiver& r) {
            py::gil_scoped_release release;
            r.start();
          },
          "Binds and serves.")
      .def(
          "stop",
          [](Receiver& r) {
            py::gil_scoped_release release;
            r.stop();
          },
          "Writes and answers what was handed in, then stops.")
      .def_property_readonly("port", &Receiver::port)
      .def_property_readonly("url", &Receiver::url)
      .def(
          "stats",
          [](const Receiver& r) {
            const auto s = r.stats();
            py::dict d;
            d["requests"] = s.requests;
            d["accepted"] = s.accepted;
            d["duplicates"] = s.duplicates;
            d["bad_signature"] = s.bad_signature;
            d["stale"] = s.stale;
            d["unknown_route"] = s.unknown_route;
            d["method_not_allowed"] = s.method_not_allowed;
            d["too_large"] = s.too_large;
            d["bad_json"] = s.bad_json;
            d["bad_headers"] = s.bad_headers;
            d["queue_full"] = s.queue_full;
            d["queue_errors"] = s.queue_errors;
            d["puts"] = s.puts;
            d["depth"] = s.depth;
            py::dict routes;
            for (const auto& [path, n] : s.accepted_by_route) routes[py::str(path)] = n;
            d["routes"] = routes;
            return d;
          },
          "The counters: requests, accepted, duplicates, ..., puts, depth, routes {path: accepted}.");
  m.def(
      "sign_hmac_webhook",
      [](const std::string& secret, const py::bytes& body) { return auth::sign_hmac_webhook(secret, body); },
      py::arg("secret"), py::arg("body"), "'sha256=<hex HMAC-SHA256 of body>' for the hmac scheme.");
}

}  // namespace isthmus::bindings
