// isthmus._core: the HTTP client. Python objects are touched only with the GIL held; every
// wait on the network happens with the GIL released.
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "exceptions.hpp"
#include "isthmus/auth/credential.hpp"
#include "isthmus/error.hpp"
#include "isthmus/http/client.hpp"
#include "isthmus/http/link.hpp"
#include "isthmus/http/url.hpp"
#include "isthmus/limits/governed.hpp"
#include "isthmus/runtime/engine.hpp"

namespace py = pybind11;
using namespace std::chrono_literals;

namespace isthmus::bindings {
namespace {

using http::Request;
using http::Response;

// Header bytes are not guaranteed UTF-8 (RFC 9110 allows obs-text); latin-1 never fails.
py::str latin1(const std::string& s) {
  PyObject* o = PyUnicode_DecodeLatin1(s.data(), static_cast<Py_ssize_t>(s.size()), nullptr);
  if (!o) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(o);
}

py::list headers_to_list(const http::Headers& headers) {
  py::list out(headers.size());
  std::size_t i = 0;
  for (const auto& [k, v] : headers) out[i++] = py::make_tuple(latin1(k), latin1(v));
  return out;
}

Request make_request(std::string method, std::string url, http::Headers headers,
                     const py::object& body, double timeout, int follow_redirects,
                     std::vector<std::string> sensitive) {
  Request r;
  r.method = std::move(method);
  r.url = std::move(url);
  r.headers = std::move(headers);
  if (!body.is_none()) r.body = std::make_shared<const std::string>(body.cast<std::string>());
  r.timeout = timeout;
  r.follow_redirects = follow_redirects;
  r.sensitive_headers = std::move(sensitive);
  return r;
}

// Waits for a condition with the GIL released, checking for Ctrl-C every 100 ms so a notebook
// user can interrupt a long call. Returns false if a signal handler raised.
template <class Done>
bool wait_interruptibly(std::mutex& m, std::condition_variable& cv, Done done) {
  for (;;) {
    {
      py::gil_scoped_release release;
      std::unique_lock lock(m);
      if (cv.wait_for(lock, 100ms, done)) return true;
    }
    if (PyErr_CheckSignals() != 0) return false;
  }
}

struct Waiter {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  Response response;
};

struct HttpClient {
  // The raw client owns connections; `transport` is the top of the stack requests go through
  // (auth, limits and retries wrap the raw client, each a Transport). `authorized` is the
  // stack below limits and retries: another retry policy can be put on top of it.
  std::shared_ptr<http::Client> client;
  std::shared_ptr<http::Transport> authorized;
  std::shared_ptr<http::Transport> transport;

  HttpClient(std::shared_ptr<http::Client> c, std::shared_ptr<auth::Credential> credential)
      : client(c),
        authorized(credential ? std::shared_ptr<http::Transport>(
                                    std::make_shared<auth::AuthenticatedTransport>(c, credential))
                              : std::shared_ptr<http::Transport>(c)),
        transport(authorized) {}
  HttpClient(HttpClient&&) = default;
  HttpClient(const HttpClient&) = default;

  // The same connections and credential, governed by `governor` with `retry` (and `limit_key`).
  HttpClient governed(const py::object& governor, const py::object& retry, const py::object& limit_key) const {
    HttpClient view(*this);
    view.transport = govern(authorized, governor, retry, limit_key);
    return view;
  }

  // Dropping the client waits for transfers in flight; their completions (a token hook, say)
  // may need the GIL, so let go of it meanwhile.
  ~HttpClient() {
    if (!client || !Py_IsInitialized() || !PyGILState_Check()) return;
    py::gil_scoped_release release;
    transport.reset();
    client.reset();
  }

  Response request(Request req) {
    auto w = std::make_shared<Waiter>();
    std::uint64_t id = 0;
    {
      py::gil_scoped_release release;
      id = transport->send(std::move(req), [w](std::error_code, Response r) {
        std::lock_guard lock(w->m);
        w->response = std::move(r);
        w->done = true;
        w->cv.notify_all();
      });
    }
    if (!wait_interruptibly(w->m, w->cv, [&] { return w->done; })) {
      transport->cancel(id);
      py::gil_scoped_release release;
      std::unique_lock lock(w->m);
      w->cv.wait(lock, [&] { return w->done; });
      lock.unlock();
      py::gil_scoped_acquire acquire;
      throw py::error_already_set();
    }
    return std::move(w->response);
  }

  // Many requests, at most `concurrency` in flight, results in request order.
  std::vector<Response> request_many(std::vector<Request> requests, std::size_t concurrency) {
    struct Batch {
      std::mutex m;
      std::condition_variable cv;
      std::vector<Request> requests;
      std::vector<Response> results;
      std::vector<std::uint64_t> ids;
      std::size_t next = 0, finished = 0;
      bool stopping = false;
    };
    auto b = std::make_shared<Batch>();
    const std::size_t n = requests.size();
    b->requests = std::move(requests);
    b->results.resize(n);
    b->ids.assign(n, 0);
    if (n == 0) return {};
    if (concurrency == 0) concurrency = 1;
    auto transport = this->transport;

    // Starts request i; its completion starts the next one, so the window stays full.
    auto start = std::make_shared<std::function<void(std::size_t)>>();
    std::weak_ptr<std::function<void(std::size_t)>> weak_start = start;
    *start = [b, transport, weak_start](std::size_t i) {
      std::uint64_t id = transport->send(std::move(b->requests[i]),
          [b, i, weak_start](std::error_code, Response r) {
            std::size_t launch = SIZE_MAX;
            {
              std::lock_guard lock(b->m);
              b->results[i] = std::move(r);
              ++b->finished;
              if (!b->stopping && b->next < b->results.size()) launch = b->next++;
              if (b->finished == b->results.size() || launch == SIZE_MAX) b->cv.notify_all();
            }
            if (launch != SIZE_MAX)
              if (auto s = weak_start.lock()) (*s)(launch);
          });
      std::lock_guard lock(b->m);
      b->ids[i] = id;
    };
    {
      py::gil_scoped_release release;
      std::size_t first;
      {
        std::lock_guard lock(b->m);
        first = std::min(concurrency, n);
        b->next = first;
      }
      for (std::size_t i = 0; i < first; ++i) (*start)(i);
    }
    auto all_done = [&] { return b->finished == n || (b->stopping && b->finished == b->next); };
    if (!wait_interruptibly(b->m, b->cv, all_done)) {
      py::gil_scoped_release release;
      std::unique_lock lock(b->m);
      b->stopping = true;
      std::vector<std::uint64_t> ids(b->ids.begin(), b->ids.begin() + b->next);
      lock.unlock();
      for (auto id : ids) transport->cancel(id);
      lock.lock();
      b->cv.wait(lock, all_done);
      lock.unlock();
      py::gil_scoped_acquire acquire;
      throw py::error_already_set();
    }
    return std::move(b->results);
  }
};

// Completions for AsyncClient. I/O threads push; one notifier thread per queue tells the
// event loop (through a Python callable, normally loop.call_soon_threadsafe) once per batch,
// so the I/O threads never wait for the GIL.
class CompletionQueue {
 public:
  struct Core {
    std::mutex m;
    std::condition_variable cv;
    std::vector<std::pair<std::uint64_t, Response>> items;
    bool notified = false;  // a wake-up is pending or delivered and not yet drained
    bool wake = false;      // the notifier thread should call notify
    bool closed = false;

    void push(std::uint64_t token, Response r) {
      std::lock_guard lock(m);
      if (closed) return;
      items.emplace_back(token, std::move(r));
      if (!notified) {
        notified = true;
        wake = true;
        cv.notify_one();
      }
    }
  };

  explicit CompletionQueue(py::object notify)
      : core_(std::make_shared<Core>()), notify_(std::move(notify)) {
    thread_ = std::thread([this, core = core_] {
      std::unique_lock lock(core->m);
      for (;;) {
        core->cv.wait(lock, [&] { return core->closed || core->wake; });
        if (core->closed) return;
        core->wake = false;
        lock.unlock();
        {
          py::gil_scoped_acquire acquire;
          try {
            notify_();
          } catch (py::error_already_set& e) {
            e.discard_as_unraisable("isthmus AsyncClient completion notifier");
          }
        }
        lock.lock();
      }
    });
  }

  ~CompletionQueue() { close(); }

  void close() {
    {
      std::lock_guard lock(core_->m);
      if (core_->closed && !thread_.joinable()) return;
      core_->closed = true;
      core_->cv.notify_all();
    }
    if (thread_.joinable()) {
      py::gil_scoped_release release;  // the notifier may be waiting for the GIL
      thread_.join();
    }
  }

  py::list take() {
    std::vector<std::pair<std::uint64_t, Response>> items;
    {
      std::lock_guard lock(core_->m);
      items.swap(core_->items);
      core_->notified = false;
    }
    py::list out(items.size());
    for (std::size_t i = 0; i < items.size(); ++i)
      out[i] = py::make_tuple(items[i].first, py::cast(std::move(items[i].second)));
    return out;
  }

  const std::shared_ptr<Core>& core() const { return core_; }

 private:
  std::shared_ptr<Core> core_;
  py::object notify_;
  std::thread thread_;
};

}  // namespace

std::shared_ptr<http::Transport> transport_of(const py::object& client) {
  return client.cast<HttpClient&>().transport;
}

void bind_http(py::module_& m) {
  m.def("redact_url", [](const std::string& url) { return http::redact_url(url); },
        "The URL with a password and secret-looking query values replaced by ***.");
  m.def("encode_url", [](std::string_view url) { return http::encode_url(url); }, py::arg("url"),
        "The URL as sent on the wire: non-ASCII and unsafe bytes of the path, query and "
        "fragment percent-encoded as UTF-8, existing %XX escapes kept.");
  m.def("encode_query",
        [](const std::vector<std::pair<std::string, std::string>>& params) {
          return http::encode_query(params);
        },
        py::arg("params"),
        "name=value pairs joined by '&', percent-encoded as the signers expect (a space is %20, "
        "escapes in upper-case hex).");
  m.def("find_link",
        [](const std::vector<std::string>& values, std::string_view rel) {
          http::Headers headers;
          headers.reserve(values.size());
          for (const auto& v : values) headers.emplace_back("Link", v);
          return http::find_link(headers, rel);
        },
        py::arg("values"), py::arg("rel"),
        "The target of the first link whose rel includes `rel`, across the values of Link "
        "header fields in order (RFC 8288); None when there is none.");

  py::class_<Response>(m, "Response", "A raw response from the core; isthmus.Response wraps it.")
      .def_readonly("status", &Response::status)
      .def_readonly("http_version", &Response::http_version)
      .def_readonly("url", &Response::url)
      .def_readonly("elapsed", &Response::elapsed)
      .def_readonly("redirects", &Response::redirects)
      .def_property_readonly("headers", [](const Response& r) { return headers_to_list(r.headers); })
      .def_property_readonly("ok", [](const Response& r) { return !r.error; })
      .def_property_readonly("error_code", [](const Response& r) { return r.error.value(); })
      .def_readonly("error_message", &Response::error_message)
      .def_readonly("attempts", &Response::attempts)
      .def_readonly("retried_429", &Response::retried_429)
      .def_readonly("retried_bytes", &Response::retried_bytes)
      .def_readonly("waited", &Response::waited)
      .def_property_readonly("body_size", [](const Response& r) { return r.body.size(); })
      .def("take_body", [](Response& r) {
        // One copy into Python; the core's buffer is freed at once.
        py::bytes out(r.body.data(), r.body.size());
        std::string().swap(r.body);
        return out;
      })
      .def("exception", [](const Response& r, const std::string& method, const std::string& url) {
        py::object exc = make_exception(r.error, r.error_message, method, url);
        // A quota error says when the quota refills.
        if (auto* at = r.header(limits::kResetsAtHeader)) exc.attr("resets_at") = std::stod(*at);
        return exc;
      }, py::arg("method"), py::arg("url"));

  py::class_<CompletionQueue>(m, "CompletionQueue")
      .def(py::init<py::object>(), py::arg("notify"))
      .def("take", &CompletionQueue::take)
      .def("close", &CompletionQueue::close);

  py::class_<HttpClient>(m, "HttpClient")
      .def(py::init([](double timeout, double connect_timeout, int max_connections_per_host,
                       int max_connections, bool follow_redirects, int max_redirects, bool verify,
                       std::string ca_bundle, bool http2, std::string user_agent,
                       std::int64_t max_body_bytes, std::shared_ptr<auth::Credential> credential,
                       py::object governor, py::object retry, py::object limit_key) {
             http::ClientOptions o;
             o.timeout = timeout;
             o.connect_timeout = connect_timeout;
             o.max_connections_per_host = max_connections_per_host;
             o.max_connections = max_connections;
             o.follow_redirects = follow_redirects;
             o.max_redirects = max_redirects;
             o.verify = verify;
             o.ca_bundle = std::move(ca_bundle);
             o.http2 = http2;
             o.user_agent = std::move(user_agent);
             o.max_body_bytes = max_body_bytes;
             HttpClient h(std::make_shared<http::Client>(Engine::shared(), std::move(o)),
                          std::move(credential));
             // Limits and retries sit above auth, so every attempt is authorized afresh.
             h.transport = govern(std::move(h.transport), governor, retry, limit_key);
             return h;
           }),
           py::arg("timeout"), py::arg("connect_timeout"), py::arg("max_connections_per_host"),
           py::arg("max_connections"), py::arg("follow_redirects"), py::arg("max_redirects"),
           py::arg("verify"), py::arg("ca_bundle"), py::arg("http2"), py::arg("user_agent"),
           py::arg("max_body_bytes"), py::arg("credential") = nullptr,
           py::arg("governor") = py::none(), py::arg("retry") = py::none(),
           py::arg("limit_key") = py::none())
      .def("request",
           [](HttpClient& self, std::string method, std::string url, http::Headers headers,
              py::object body, double timeout, int follow, std::vector<std::string> sensitive) {
             return self.request(make_request(std::move(method), std::move(url), std::move(headers),
                                              body, timeout, follow, std::move(sensitive)));
           },
           py::arg("method"), py::arg("url"), py::arg("headers"), py::arg("body"),
           py::arg("timeout"), py::arg("follow_redirects"), py::arg("sensitive_headers"))
      .def("request_many",
           [](HttpClient& self, const py::list& items, std::size_t concurrency) {
             // items: (method, url, headers, body, timeout) tuples, converted with the GIL held.
             std::vector<Request> reqs;
             reqs.reserve(items.size());
             for (const auto& it : items) {
               auto t = it.cast<py::tuple>();
               reqs.push_back(make_request(t[0].cast<std::string>(), t[1].cast<std::string>(),
                                           t[2].cast<http::Headers>(), t[3], t[4].cast<double>(),
                                           -1, {}));
             }
             auto results = self.request_many(std::move(reqs), concurrency);
             py::list out(results.size());
             for (std::size_t i = 0; i < results.size(); ++i) out[i] = py::cast(std::move(results[i]));
             return out;
           },
           py::arg("items"), py::arg("concurrency"))
      .def("send_async",
           [](HttpClient& self, CompletionQueue& queue, std::uint64_t token, std::string method,
              std::string url, http::Headers headers, py::object body, double timeout, int follow,
              std::vector<std::string> sensitive) {
             Request req = make_request(std::move(method), std::move(url), std::move(headers), body,
                                        timeout, follow, std::move(sensitive));
             auto core = queue.core();
             py::gil_scoped_release release;
             return self.transport->send(std::move(req), [core, token](std::error_code, Response r) {
               core->push(token, std::move(r));
             });
           },
           py::arg("queue"), py::arg("token"), py::arg("method"), py::arg("url"),
           py::arg("headers"), py::arg("body"), py::arg("timeout"), py::arg("follow_redirects"),
           py::arg("sensitive_headers"))
      .def("governed", &HttpClient::governed, py::arg("governor"), py::arg("retry"), py::arg("limit_key"),
           "A client on the same connections and credential with its own limits and retries.")
      .def("cancel", [](HttpClient& self, std::uint64_t id) { self.transport->cancel(id); })
      .def("close", [](HttpClient& self) {
        py::gil_scoped_release release;
        self.client->close();
      })
      .def_property_readonly("connections_opened",
                             [](const HttpClient& self) { return self.client->connections_opened(); });
}

}  // namespace isthmus::bindings
