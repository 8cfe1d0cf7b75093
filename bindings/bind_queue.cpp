// isthmus._core: the queues, LocalQueue (SQLite) and AmqpQueue (RabbitMQ), with the same
// methods. Arguments are converted with the GIL held; the backend works with it released (a put
// waits for an fsync or the broker's confirms, a lease for a write lock or a round trip);
// results become Python objects once the GIL is back.
#include <pybind11/stl.h>

#include <chrono>
#include <future>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "isthmus/error.hpp"
#include "isthmus/queue/amqp_queue.hpp"
#include "isthmus/queue/local_queue.hpp"

namespace py = pybind11;

namespace isthmus::bindings {
namespace {

using queue::Item;
using queue::AmqpQueue;
using queue::LocalQueue;

std::vector<Item> items_from(const py::list& items) {
  std::vector<Item> out;
  out.reserve(items.size());
  std::size_t i = 0;
  for (const auto& o : items) {
    if (py::isinstance<py::bytes>(o)) {
      out.push_back({o.cast<std::string>(), false});
    } else if (py::isinstance<py::str>(o)) {
      out.push_back({o.cast<std::string>(), true});
    } else {
      throw Error(errc::invalid_argument, "items[" + std::to_string(i) + "]: a " +
                                              std::string(py::str(o.get_type().attr("__name__"))) +
                                              " is not valid; expected str or bytes");
    }
    ++i;
  }
  return out;
}

py::object body_of(const std::string& body, bool text) {
  if (!text) return py::bytes(body);
  // Text went in as a Python str, so it is valid UTF-8 unless the file was edited.
  PyObject* s = PyUnicode_DecodeUTF8(body.data(), static_cast<Py_ssize_t>(body.size()), "replace");
  if (!s) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(s);
}

py::tuple lease_tuple(const queue::Lease& lease) {
  py::list messages;
  for (const auto& msg : lease.messages)
    messages.append(py::make_tuple(msg.id, body_of(msg.body, msg.text), msg.deliveries));
  return py::make_tuple(lease.token, lease.expires_at, messages);
}

// The methods of the queue interface, the same on every backend.
template <class Q, class Class>
void def_queue_methods(Class& cls) {
  cls.def(
         "put",
         [](Q& q, const py::list& items) {
           auto converted = items_from(items);
           py::gil_scoped_release release;
           return queue::put(q, std::move(converted));
         },
         py::arg("items"), "Puts all of items (str or bytes), durably; returns how many.")
      .def(
          "lease",
          [](Q& q, std::size_t n, std::int64_t visibility_ms) {
            queue::Lease lease;
            {
              py::gil_scoped_release release;
              lease = queue::lease(q, n, std::chrono::milliseconds(visibility_ms));
            }
            return lease_tuple(lease);
          },
          py::arg("n"), py::arg("visibility_ms"),
          "(token, expires_at, [(id, body, deliveries), ...]) of up to n ready messages.")
      .def(
          "ack",
          [](Q& q, std::string token, std::vector<std::uint64_t> ids) {
            py::gil_scoped_release release;
            return queue::ack(q, std::move(token), std::move(ids));
          },
          py::arg("token"), py::arg("ids"), "Removes the messages still held by the lease; returns how many.")
      .def(
          "nack",
          [](Q& q, std::string token, std::vector<std::uint64_t> ids, std::int64_t delay_ms) {
            py::gil_scoped_release release;
            return queue::nack(q, std::move(token), std::move(ids), std::chrono::milliseconds(delay_ms));
          },
          py::arg("token"), py::arg("ids"), py::arg("delay_ms"),
          "Returns the messages to ready after the delay (or to the dead letters); returns how many.")
      .def(
          "dead_letters",
          [](Q& q, std::size_t limit) {
            std::vector<queue::DeadLetter> dead;
            {
              py::gil_scoped_release release;
              dead = queue::dead_letters(q, limit);
            }
            py::list out;
            for (const auto& d : dead)
              out.append(py::make_tuple(d.id, body_of(d.body, d.text), d.deliveries, d.enqueued_at,
                                        d.dead_at, d.reason));
            return out;
          },
          py::arg("limit") = 0,
          "[(id, body, deliveries, enqueued_at, dead_at, reason), ...], oldest first (limit 0: all).")
      .def(
          "stats",
          [](Q& q) {
            queue::Stats s;
            {
              py::gil_scoped_release release;
              s = queue::stats(q);
            }
            py::dict d;
            d["ready"] = s.ready;
            d["leased"] = s.leased;
            d["delayed"] = s.delayed;
            d["dead"] = s.dead;
            return d;
          },
          "{ready, leased, delayed, dead}")
      .def(
          "close",
          [](Q& q) {
            py::gil_scoped_release release;
            q.close();
          },
          "Releases the backend; later calls raise StateError.");
}

}  // namespace

void bind_queue(py::module_& m) {
  py::class_<LocalQueue, std::shared_ptr<LocalQueue>> local(
      m, "LocalQueue", "A durable queue in one SQLite file (use isthmus.LocalQueue).");
  local
      .def(py::init([](const std::string& path, int max_deliveries) {
             queue::LocalQueueOptions o;
             o.max_deliveries = max_deliveries;
             py::gil_scoped_release release;
             return std::make_shared<LocalQueue>(path, o);
           }),
           py::arg("path"), py::arg("max_deliveries") = 5)
      .def_property_readonly("path", &LocalQueue::path)
      .def_property_readonly("max_deliveries", &LocalQueue::max_deliveries);
  def_queue_methods<LocalQueue>(local);

  py::class_<AmqpQueue, std::shared_ptr<AmqpQueue>> amqp(
      m, "AmqpQueue", "A queue on a RabbitMQ broker (use isthmus.AmqpQueue).");
  amqp.def(py::init([](const std::string& url, const std::string& name, int max_deliveries, int prefetch,
                       std::int64_t connect_timeout_ms, bool consume) {
             queue::AmqpQueueOptions o;
             o.max_deliveries = max_deliveries;
             o.prefetch = prefetch;
             o.consume = consume;
             o.connect_timeout = std::chrono::milliseconds(connect_timeout_ms);
             py::gil_scoped_release release;
             // Dropping the queue joins its I/O thread, which may be inside a reconnect attempt
             // for up to connect_timeout: without the GIL, when the holder has it.
             return std::shared_ptr<AmqpQueue>(new AmqpQueue(url, name, o), [](AmqpQueue* q) {
               if (Py_IsInitialized() && PyGILState_Check()) {
                 py::gil_scoped_release unlocked;
                 delete q;
               } else {
                 delete q;
               }
             });
           }),
           py::arg("url"), py::arg("name"), py::arg("max_deliveries") = 5, py::arg("prefetch") = 100,
           py::arg("connect_timeout_ms") = 10000, py::arg("consume") = false)
      .def_property_readonly("name", &AmqpQueue::name)
      .def_property_readonly("url", &AmqpQueue::redacted_url, "The broker's URL with its password masked.")
      .def_property_readonly("max_deliveries", &AmqpQueue::max_deliveries)
      .def_property_readonly("prefetch", &AmqpQueue::prefetch)
      .def_property_readonly("consume", &AmqpQueue::consume)
      .def(
          "lease_within",
          [](AmqpQueue& q, std::size_t n, std::int64_t visibility_ms, std::int64_t wait_ms) {
            std::promise<std::pair<queue::Status, queue::Lease>> done;
            auto result = done.get_future();
            {
              py::gil_scoped_release release;
              q.async_lease_within(n, std::chrono::milliseconds(visibility_ms), std::chrono::milliseconds(wait_ms),
                                   [&done](queue::Status s, queue::Lease l) { done.set_value({std::move(s), std::move(l)}); });
              result.wait();
            }
            auto [status, lease] = result.get();
            if (!status) throw Error(status.code, status.message);
            return lease_tuple(lease);
          },
          py::arg("n"), py::arg("visibility_ms"), py::arg("wait_ms"),
          "As lease, waiting up to wait_ms for a message when none is ready (a consuming queue).")
      .def(
          "pause",
          [](AmqpQueue& q) {
            std::promise<std::pair<queue::Status, std::size_t>> done;
            auto result = done.get_future();
            {
              py::gil_scoped_release release;
              q.async_pause([&done](queue::Status s, std::size_t n) { done.set_value({std::move(s), n}); });
              result.wait();
            }
            auto [status, n] = result.get();
            if (!status) throw Error(status.code, status.message);
            return n;
          },
          "A consuming queue cancels its consumer and returns what it held unleased; returns how many.")
      .def_static(
          "delay_steps",
          [] {
            std::vector<double> out;
            for (auto s : AmqpQueue::delay_steps()) out.push_back(static_cast<double>(s.count()) / 1000.0);
            return out;
          },
          "The delay queues' TTLs in seconds, smallest first.");
  def_queue_methods<AmqpQueue>(amqp);
}

}  // namespace isthmus::bindings
