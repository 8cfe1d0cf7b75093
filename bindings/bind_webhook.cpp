// isthmus._core: the webhook receiver. Routes arrive as dicts the Python layer validated; the
// queue is a LocalQueue or AmqpQueue of this module, shared with the Python object that holds
// it. start() and stop() run without the GIL (the server's threads never take it). The change
// log takes records as Python objects, written as JSON here; its SQLite work runs without the GIL.
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "bindings.hpp"
#include "isthmus/error.hpp"
#include "isthmus/queue/amqp_queue.hpp"
#include "isthmus/queue/local_queue.hpp"
#include "isthmus/webhook/change_log.hpp"
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

// --- the change log ---

using webhook::ApplyCounts;
using webhook::Change;
using webhook::ChangeLog;
using webhook::Entry;
using webhook::EventFormat;
using webhook::RecordFields;


RecordFields fields_of(const py::dict& d) {
  RecordFields f;
  f.id = dict_value(d, "id", f.id);
  f.version = dict_value(d, "version", f.version);
  f.updated_at = dict_value(d, "updated_at", f.updated_at);
  f.deleted = dict_value(d, "deleted", f.deleted);
  return f;
}

EventFormat format_of(const py::dict& d) {
  EventFormat f;
  f.type = dict_value(d, "type", f.type);
  f.data = dict_value(d, "data", f.data);
  f.thin = dict_value(d, "thin", f.thin);
  f.delete_actions = dict_value(d, "delete_actions", f.delete_actions);
  return f;
}

py::dict counts_dict(const ApplyCounts& c) {
  py::dict d;
  d["applied"] = c.applied;
  d["stale"] = c.stale;
  d["unchanged"] = c.unchanged;
  d["duplicates"] = c.duplicates;
  return d;
}

std::string body_text(const py::handle& o) {
  if (py::isinstance<py::bytes>(o) || py::isinstance<py::str>(o)) return o.cast<std::string>();
  throw Error(errc::invalid_argument, std::string("a queued event is a ") +
                                          std::string(py::str(py::type::handle_of(o).attr("__name__"))) +
                                          "; expected str or bytes");
}

py::tuple entry_meta(const Entry& e) {
  return py::make_tuple(e.connection, e.resource, e.id, e.version, e.updated_ms, e.deleted, e.origin, e.seq,
                        e.changed_at);
}

// The data of `entries` as one JSON array, for the core's page parser to turn into dicts at once.
py::bytes data_array(const std::vector<Entry>& entries) {
  std::string out = "[";
  for (std::size_t i = 0; i < entries.size(); ++i) {
    if (i) out += ',';
    out += entries[i].data;
  }
  out += ']';
  return py::bytes(out);
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

  // The change log the receiver's events are applied to.
  py::class_<ChangeLog>(m, "ChangeLog")
      .def(py::init<std::string>(), py::arg("path"), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("path", &ChangeLog::path)
      .def(
          "apply_records",
          [](ChangeLog& log, const py::list& records, const std::string& connection, const std::string& resource,
             const std::string& origin, const py::dict& fields, const std::vector<std::string>& seen_events) {
            const RecordFields f = fields_of(fields);
            std::vector<Change> changes;
            changes.reserve(records.size());
            std::size_t i = 0;
            for (const auto& r : records) {
              std::string text = py::isinstance<py::str>(r) || py::isinstance<py::bytes>(r) ? r.cast<std::string>()
                                                                                            : json_text(r);
              try {
                changes.push_back(webhook::change_from_record(text, f, connection, resource, origin));
              } catch (const Error& e) {
                throw Error(errc::invalid_argument, "records[" + std::to_string(i) + "]: " + e.what());
              }
              ++i;
            }
            ApplyCounts c;
            {
              py::gil_scoped_release release;
              c = log.apply(changes, seen_events);
            }
            return counts_dict(c);
          },
          py::arg("records"), py::arg("connection"), py::arg("resource"), py::arg("origin"), py::arg("fields"),
          py::arg("seen_events") = std::vector<std::string>{})
      .def(
          "ingest",
          [](ChangeLog& log, const py::list& bodies, const py::dict& format, const py::dict& fields,
             const std::vector<std::pair<std::string, std::string>>& connections, const std::string& fallback) {
            std::vector<std::string> envelopes;
            envelopes.reserve(bodies.size());
            for (const auto& b : bodies) envelopes.push_back(body_text(b));
            const EventFormat fmt = format_of(format);
            const RecordFields f = fields_of(fields);
            ChangeLog::Ingested got;
            {
              py::gil_scoped_release release;
              got = log.ingest(envelopes, fmt, f, connections, fallback);
            }
            py::list thin, rejected;
            for (const auto& t : got.thin)
              thin.append(py::make_tuple(t.index, t.connection, t.resource, t.id, t.event_id, t.deleted));
            for (const auto& r : got.rejected) rejected.append(py::make_tuple(r.index, r.event_id, r.route, r.reason));
            return py::make_tuple(counts_dict(got.counts), thin, rejected);
          },
          py::arg("bodies"), py::arg("format"), py::arg("fields"), py::arg("connections"),
          py::arg("default_connection"))
      .def(
          "read",
          [](ChangeLog& log, std::int64_t after, std::size_t limit, const std::string& connection,
             const std::string& resource) {
            std::vector<Entry> entries;
            {
              py::gil_scoped_release release;
              entries = log.read(after, limit, connection, resource);
            }
            py::list meta;
            for (const auto& e : entries) meta.append(entry_meta(e));
            return py::make_tuple(data_array(entries), meta);
          },
          py::arg("after_seq"), py::arg("limit"), py::arg("connection") = "", py::arg("resource") = "")
      .def(
          "get",
          [](ChangeLog& log, const std::string& connection, const std::string& resource,
             const std::string& id) -> py::object {
            auto e = log.get(connection, resource, id);
            if (!e) return py::none();
            return py::make_tuple(data_array({*e}), entry_meta(*e));
          },
          py::arg("connection"), py::arg("resource"), py::arg("id"))
      .def("seen", &ChangeLog::seen, py::arg("event_ids"), py::call_guard<py::gil_scoped_release>())
      .def("meta", &ChangeLog::meta, py::arg("key"))
      .def("set_meta", &ChangeLog::set_meta, py::arg("key"), py::arg("value"))
      .def(
          "rejected",
          [](ChangeLog& log, std::size_t limit) {
            py::list out;
            for (const auto& r : log.rejected(limit))
              out.append(py::make_tuple(r.event_id, r.route, r.reason, r.envelope, r.at));
            return out;
          },
          py::arg("limit") = 0)
      .def(
          "stats",
          [](ChangeLog& log, const std::string& connection, const std::string& resource) {
            auto s = log.stats(connection, resource);
            py::dict d;
            d["entries"] = s.entries;
            d["live"] = s.live;
            d["deleted"] = s.deleted;
            d["last_seq"] = s.last_seq;
            d["events"] = s.events;
            d["rejected"] = s.rejected;
            return d;
          },
          py::arg("connection") = "", py::arg("resource") = "")
      .def("close", &ChangeLog::close);
}

}  // namespace isthmus::bindings
