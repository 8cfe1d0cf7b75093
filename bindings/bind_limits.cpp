// isthmus._core: limiters, the governor and retries. Rules arrive as plain dicts built and
// validated by isthmus/limits.py; the core validates again and names the field on error.
#include <pybind11/stl.h>

#include <future>
#include <tuple>

#include "bindings.hpp"
#include "isthmus/error.hpp"
#include "isthmus/coord/coordination.hpp"
#include "isthmus/limits/governed.hpp"
#include "isthmus/runtime/engine.hpp"

namespace py = pybind11;

namespace isthmus::bindings {
namespace {

using namespace isthmus::limits;

unsigned scope_from(const py::dict& d) {
  if (!d.contains("scope") || d["scope"].is_none()) return kDefaultScope;
  unsigned scope = 0;
  for (auto part : d["scope"]) {
    auto s = part.cast<std::string>();
    if (s == "provider") scope |= kProvider;
    else if (s == "credential") scope |= kCredential;
    else if (s == "tenant") scope |= kTenant;
    else if (s == "endpoint") scope |= kEndpoint;
    else throw Error(errc::invalid_argument, "scope: '" + s + "' is not one of provider, credential, tenant, endpoint");
  }
  return scope;
}

Rule rule_from(const py::dict& d) {
  const auto kind = d["kind"].cast<std::string>();
  Rule r;
  r.scope = scope_from(d);
  if (d.contains("name")) r.name = d["name"].cast<std::string>();
  if (kind == "rate") {
    r.spec = RateSpec{d["rate"].cast<double>(), d["per"].cast<double>(), d["burst"].cast<double>()};
  } else if (kind == "quota") {
    r.spec = QuotaSpec{d["n"].cast<double>(), d["per"].cast<double>()};
  } else if (kind == "concurrency") {
    r.spec = ConcurrencySpec{d["n"].cast<int>()};
  } else if (kind == "adaptive") {
    AdaptiveSpec a;
    a.target = d["on"].cast<std::string>() == "concurrency" ? AdaptiveSpec::Target::concurrency
                                                            : AdaptiveSpec::Target::rate;
    a.min = d["min"].cast<double>();
    a.max = d["max"].cast<double>();
    a.start = d["start"].cast<double>();
    a.decrease = d["decrease"].cast<double>();
    a.latency_factor = d["latency_factor"].cast<double>();
    r.spec = a;
  } else {
    throw Error(errc::invalid_argument, "kind: '" + kind + "' is not rate, quota, concurrency or adaptive");
  }
  return r;
}

Key key_from(const py::object& o) {
  Key k;
  if (o.is_none()) return k;
  auto d = o.cast<py::dict>();
  auto get = [&](const char* name) {
    return d.contains(name) && !d[name].is_none() ? d[name].cast<std::string>() : std::string();
  };
  k.provider = get("provider");
  k.credential = get("credential");
  k.tenant = get("tenant");
  k.endpoint = get("endpoint");
  return k;
}

Priority priority_from(const std::string& p) {
  if (p == "high") return Priority::high;
  if (p == "low") return Priority::low;
  if (p == "normal") return Priority::normal;
  throw Error(errc::invalid_argument, "priority: '" + p + "' is not high, normal or low");
}

py::dict stats_to_dict(const KeyStats& s) {
  py::dict d;
  d["granted"] = s.granted;
  d["waited"] = s.waited;
  d["wait_seconds"] = s.wait_seconds;
  d["refused"] = s.refused;
  d["responses"] = s.responses;
  d["status_429"] = s.status_429;
  d["status_5xx"] = s.status_5xx;
  d["timeouts"] = s.timeouts;
  d["retries"] = s.retries;
  d["server_waits_clamped"] = s.server_waits_clamped;
  d["in_flight"] = s.in_flight;
  d["paused_for"] = s.paused_for;
  d["adaptive_limit"] = s.adaptive_limit ? py::cast(*s.adaptive_limit) : py::none();
  d["server_remaining"] = s.server_remaining ? py::cast(*s.server_remaining) : py::none();
  return d;
}

ShareSpec share_from(double weight, const py::list& rules) {
  ShareSpec s;
  s.weight = weight;
  for (auto r : rules) s.rules.push_back(rule_from(r.cast<py::dict>()));
  return s;
}

retry::Policy policy_from(const py::dict& d) {
  retry::Policy p;
  p.attempts = d["attempts"].cast<int>();
  p.base = d["base"].cast<double>();
  p.cap = d["cap"].cast<double>();
  p.deadline = d["deadline"].cast<double>();
  p.retry_on_status = d["statuses"].cast<std::vector<int>>();
  p.retry_on_timeout = d["timeout"].cast<bool>();
  p.retry_on_connection_error = d["connection"].cast<bool>();
  p.max_server_wait = d["max_server_wait"].cast<double>();
  retry::validate(p);
  return p;
}

// The shared rules' part of a direct reserve(), waited for here: Python's caller sends by
// other means and needs the whole wait at once.
Reservation reserve_shared(Limiter& limiter, const Key& k, double cost, Reservation local) {
  std::promise<SharedGrant> promise;
  auto future = promise.get_future();
  const auto& o = limiter.options();
  o.shared->reserve(limiter.shared_rules(k), cost, o.max_wait,
                    std::chrono::steady_clock::now() + seconds(o.max_wait),
                    [&promise](SharedGrant g) { promise.set_value(std::move(g)); });
  SharedGrant g = future.get();
  if (!g.granted) {
    if (local.ticket) limiter.release(local.ticket);
    Reservation r;
    r.error = g.error ? g.error : make_error_code(errc::internal);
    r.reason = g.reason;
    r.resets_at = g.resets_at;
    r.wait = seconds(g.wait);
    return r;
  }
  local.wait = std::max(local.wait, std::chrono::duration_cast<Duration>(seconds(g.wait)));
  return local;
}

}  // namespace

std::shared_ptr<http::Transport> govern(std::shared_ptr<http::Transport> inner, const py::object& governor,
                                        const py::object& retry, const py::object& key) {
  if (governor.is_none() && retry.is_none()) return inner;
  std::shared_ptr<Governor> g;
  if (!governor.is_none()) g = governor.cast<std::shared_ptr<Governor>>();
  else g = std::make_shared<Governor>(Engine::shared(), std::make_shared<Limiter>(LimiterOptions{}));
  GovernedOptions o;
  if (!retry.is_none()) {
    auto d = retry.cast<py::dict>();
    o.retry = policy_from(d);
    if (d.contains("breaker") && !d["breaker"].is_none()) {
      auto b = d["breaker"].cast<py::dict>();
      retry::BreakerOptions bo;
      bo.failure_ratio = b["failure_ratio"].cast<double>();
      bo.min_calls = b["min_calls"].cast<int>();
      bo.window = b["window"].cast<double>();
      bo.open_for = b["open_for"].cast<double>();
      bo.probes = b["probes"].cast<int>();
      retry::validate(bo);
      o.breaker = bo;
    }
  }
  Key k = key_from(key);
  o.provider = k.provider;
  o.credential = k.credential;
  o.tenant = k.tenant;
  return std::make_shared<GovernedTransport>(Engine::shared(), std::move(g), std::move(inner), std::move(o));
}

void bind_limits(py::module_& m) {
  py::class_<Governor, std::shared_ptr<Governor>>(m, "Limiter",
      "A limiter shared by the clients given it; isthmus.Limiter wraps it.")
      .def(py::init([](const py::list& rules, const std::vector<std::pair<std::string, double>>& costs,
                       double max_wait, double max_server_wait, std::shared_ptr<coord::Coordination> shared,
                       std::string name, const std::vector<std::tuple<std::string, double, py::list>>& shares) {
             LimiterOptions o;
             for (auto r : rules) o.rules.push_back(rule_from(r.cast<py::dict>()));
             for (const auto& [tenant, weight, share_rules] : shares) o.shares[tenant] = share_from(weight, share_rules);
             o.costs = costs;
             o.max_wait = max_wait;
             o.max_server_wait = max_server_wait;
             o.shared = std::move(shared);
             if (!name.empty()) o.shared_name = std::move(name);
             return std::make_shared<Governor>(Engine::shared(), std::make_shared<Limiter>(std::move(o)));
           }),
           py::arg("rules"), py::arg("costs"), py::arg("max_wait"), py::arg("max_server_wait"),
           py::arg("coordination") = py::none(), py::arg("name") = "",
           py::arg("shares") = std::vector<std::tuple<std::string, double, py::list>>{})
      .def("reserve",
           [](Governor& g, const py::object& key, double cost, const std::string& priority) {
             const Priority p = priority_from(priority);
             const Key k = key_from(key);
             Reservation r;
             {
               py::gil_scoped_release release;
               r = g.limiter().reserve(k, cost, p);
               if (r.granted && g.limiter().options().shared) r = reserve_shared(g.limiter(), k, cost, r);
               // Redis out of reach for all of max_wait: the ConnectError that names it.
               if (r.error == make_error_code(errc::connect_failed)) throw Error(r.error, r.reason);
             }
             return py::make_tuple(to_seconds(r.wait), r.granted, r.blocked, r.ticket,
                                   r.error ? py::object(py::int_(r.error.value())) : py::object(py::none()),
                                   r.resets_at, r.reason);
           },
           py::arg("key"), py::arg("cost"), py::arg("priority"),
           "(wait seconds, granted, blocked, ticket, error code or None, resets_at, reason)")
      .def("reserve_fast",
           [](Governor& g, double cost) {
             // The hot path for benchmarks and simple callers: the default key, wait in seconds.
             static const Key k;
             auto r = g.limiter().reserve(k, cost);
             if (r.granted && g.limiter().options().shared) {
               py::gil_scoped_release release;
               r = reserve_shared(g.limiter(), k, cost, r);
               if (r.error) throw Error(r.error, r.reason);
             }
             if (r.ticket) g.limiter().release(r.ticket);
             return to_seconds(r.wait);
           },
           py::arg("cost") = 1.0)
      .def("release", [](Governor& g, std::uint64_t ticket) { g.release(ticket); })
      .def("set_share",
           [](Governor& g, const std::string& tenant, double weight, const py::list& rules) {
             g.limiter().set_share(tenant, share_from(weight, rules));
           },
           py::arg("tenant"), py::arg("weight"), py::arg("rules"))
      .def("remove_share", [](Governor& g, const std::string& tenant) { return g.limiter().remove_share(tenant); },
           py::arg("tenant"))
      .def("shares", [](Governor& g) {
        py::dict out;
        for (const auto& s : g.limiter().share_stats()) {
          py::dict d;
          d["weight"] = s.weight;
          d["configured"] = s.configured;
          d["granted"] = s.granted;
          d["waited"] = s.waited;
          d["wait_seconds"] = s.wait_seconds;
          out[py::str(s.tenant)] = d;
        }
        return out;
      })
      .def("pause", [](Governor& g, const py::object& key, double seconds) { g.limiter().pause(key_from(key), seconds); })
      .def("observe",
           [](Governor& g, const py::object& key, int status, double latency, py::object retry_after, bool timeout) {
             Observation o;
             o.status = status;
             o.latency = seconds(latency);
             o.timeout = timeout;
             if (!retry_after.is_none()) o.retry_after = retry_after.cast<double>();
             g.limiter().observe(key_from(key), o);
           },
           py::arg("key"), py::arg("status"), py::arg("latency") = 0.0, py::arg("retry_after") = py::none(),
           py::arg("timeout") = false)
      .def("snapshot", [](Governor& g) {
        py::dict out;
        for (const auto& s : g.limiter().snapshot()) out[py::str(s.key)] = stats_to_dict(s);
        return out;
      })
      .def_property_readonly("waiting", &Governor::waiting);

  m.def("parse_retry_after", [](const std::string& v, double now) { return parse_retry_after(v, now); },
        py::arg("value"), py::arg("unix_now"));
  m.def("parse_server_quota",
        [](const http::Headers& headers, double now) {
          auto q = parse_server_quota(headers, now);
          py::dict d;
          d["limit"] = q.limit ? py::cast(*q.limit) : py::none();
          d["remaining"] = q.remaining ? py::cast(*q.remaining) : py::none();
          d["reset_after"] = q.reset_after ? py::cast(*q.reset_after) : py::none();
          d["window"] = q.window ? py::cast(*q.window) : py::none();
          return d;
        },
        py::arg("headers"), py::arg("unix_now"));
}

}  // namespace isthmus::bindings
