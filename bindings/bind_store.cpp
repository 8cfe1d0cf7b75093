// isthmus._core: the state store (store/state_store.hpp). Arguments are converted with the GIL
// held, SQLite works with it released (a commit may wait for another process's write lock),
// and rows become Python dicts once the GIL is back. JSON columns cross as text: the Python
// wrapper (isthmus/store.py) encodes and decodes them.
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "isthmus/error.hpp"
#include "isthmus/store/state_store.hpp"

namespace py = pybind11;

namespace isthmus::bindings {
namespace {

using store::StateStore;

template <typename T>
py::object or_none(const std::optional<T>& v) {
  return v ? py::cast(*v) : py::none();
}

// A dict value that may be missing or None.
template <typename T>
std::optional<T> optional_item(const py::dict& d, const char* key) {
  if (!d.contains(key)) return std::nullopt;
  py::object v = d[key];
  if (v.is_none()) return std::nullopt;
  return v.cast<T>();
}

// A run's dead letter: record_key, stage, record (JSON text) and error are required (KeyError
// names the one missing, before anything is written).
store::NewDeadLetter dead_letter_from(const py::handle& item) {
  auto d = py::reinterpret_borrow<py::dict>(item);
  store::NewDeadLetter out;
  out.record_key = py::str(d["record_key"]).cast<std::string>();
  out.stage = d["stage"].cast<std::string>();
  out.record = d["record"].cast<std::string>();
  out.error = d["error"].cast<std::string>();
  out.traceback = optional_item<std::string>(d, "traceback");
  out.http_status = optional_item<std::int64_t>(d, "http_status");
  out.response_excerpt = optional_item<std::string>(d, "response_excerpt");
  out.attempts = optional_item<std::int64_t>(d, "attempts").value_or(1);
  return out;
}

store::SqlValue sql_value(const py::handle& v, std::size_t i) {
  if (v.is_none()) return std::monostate{};
  if (py::isinstance<py::bool_>(v) || py::isinstance<py::int_>(v)) return v.cast<std::int64_t>();
  if (py::isinstance<py::float_>(v)) return v.cast<double>();
  if (py::isinstance<py::str>(v)) return v.cast<std::string>();
  throw Error(errc::invalid_argument, "params[" + std::to_string(i) + "]: a " +
                                          std::string(py::str(py::type::handle_of(v).attr("__name__"))) +
                                          " is not valid; expected int, float, str or None");
}

py::dict checkpoint_dict(const store::Checkpoint& c) {
  py::dict d;
  d["position"] = or_none(c.position);
  d["incremental"] = or_none(c.incremental);
  return d;
}

py::dict run_dict(const store::Run& r) {
  py::dict d;
  d["id"] = r.id;
  d["pipeline"] = r.pipeline;
  d["started_at"] = r.started_at;
  d["finished_at"] = or_none(r.finished_at);
  d["status"] = r.status;
  d["counts"] = r.counts;
  d["error"] = or_none(r.error);
  return d;
}

py::dict dead_letter_dict(const store::DeadLetter& r) {
  py::dict d;
  d["id"] = r.id;
  d["record_key"] = r.record_key;
  d["stage"] = r.stage;
  d["record"] = r.record;
  d["error"] = r.error;
  d["traceback"] = or_none(r.traceback);
  d["http_status"] = or_none(r.http_status);
  d["response_excerpt"] = or_none(r.response_excerpt);
  d["attempts"] = r.attempts;
  d["first_seen"] = r.first_seen;
  d["last_seen"] = r.last_seen;
  d["run_id"] = or_none(r.run_id);
  d["resolved_at"] = or_none(r.resolved_at);
  d["resolution"] = or_none(r.resolution);
  return d;
}

}  // namespace

void bind_store(py::module_& m) {
  py::class_<StateStore, std::shared_ptr<StateStore>>(
      m, "StateStore", "A pipeline state file in the core (use isthmus.store.StateStore).")
      .def(py::init([](const std::string& path, bool create) {
             store::StateStoreOptions o;
             o.create = create;
             py::gil_scoped_release release;
             return std::make_shared<StateStore>(path, o);
           }),
           py::arg("path"), py::arg("create") = true)
      .def_property_readonly("path", &StateStore::path)
      .def_property_readonly_static(
          "dead_letter_columns", [](const py::object&) { return StateStore::dead_letter_columns(); })
      .def("damaged_message", &StateStore::damaged_message, py::arg("why"),
           "The text of the StateError for a damaged file: names it, says why and what to do.")
      .def(
          "begin_run",
          [](StateStore& s, const std::string& pipeline) {
            py::gil_scoped_release release;
            return s.begin_run(pipeline);
          },
          py::arg("pipeline"))
      .def(
          "finish_run",
          [](StateStore& s, std::int64_t run_id, const std::string& status, const std::string& counts,
             const std::optional<std::string>& error) {
            py::gil_scoped_release release;
            s.finish_run(run_id, status, counts, error);
          },
          py::arg("run_id"), py::arg("status"), py::arg("counts"), py::arg("error") = py::none())
      .def(
          "runs",
          [](StateStore& s, const std::optional<std::string>& pipeline) {
            std::vector<store::Run> rows;
            {
              py::gil_scoped_release release;
              rows = s.runs(pipeline);
            }
            py::list out;
            for (const auto& r : rows) out.append(run_dict(r));
            return out;
          },
          py::arg("pipeline") = py::none(), "Run rows as dicts, counts as JSON text, oldest first.")
      .def(
          "load",
          [](StateStore& s, const std::string& pipeline) {
            store::Checkpoint c;
            {
              py::gil_scoped_release release;
              c = s.load(pipeline);
            }
            return checkpoint_dict(c);
          },
          py::arg("pipeline"), "{'position': JSON text or None, 'incremental': JSON text or None}.")
      .def(
          "claim",
          [](StateStore& s, const std::string& pipeline, const std::string& identity, bool adopt) {
            store::Claim c;
            {
              py::gil_scoped_release release;
              c = s.claim(pipeline, identity, adopt);
            }
            return py::make_tuple(checkpoint_dict(c.checkpoint), or_none(c.moved_from));
          },
          py::arg("pipeline"), py::arg("identity"), py::arg("adopt") = false,
          "(the checkpoint as load() returns it, the identity it was filed under before when adopt moved it).")
      .def(
          "identity",
          [](StateStore& s, const std::string& pipeline) {
            py::gil_scoped_release release;
            return s.identity(pipeline);
          },
          py::arg("pipeline"))
      .def(
          "commit",
          [](StateStore& s, const std::string& pipeline, std::int64_t run_id,
             const std::optional<std::string>& position, const py::list& dead_letters, bool set_incremental,
             const std::optional<std::string>& incremental, const std::vector<std::int64_t>& resolved,
             const std::vector<std::string>& superseded, const std::string& dead_letters_of) {
            store::Commit c;
            c.pipeline = pipeline;
            c.dead_letters_of = dead_letters_of;
            c.run_id = run_id;
            c.position = position;
            c.set_incremental = set_incremental;
            c.incremental = incremental;
            c.dead_letters.reserve(dead_letters.size());
            for (const auto& d : dead_letters) c.dead_letters.push_back(dead_letter_from(d));
            c.resolved = resolved;
            c.superseded = superseded;
            py::gil_scoped_release release;
            s.commit(c);
          },
          py::arg("pipeline"), py::arg("run_id"), py::arg("position"), py::arg("dead_letters"),
          py::arg("set_incremental"), py::arg("incremental"), py::arg("resolved"), py::arg("superseded"),
          py::arg("dead_letters_of") = "",
          "The checkpoint, the dead letters (filed under dead_letters_of when given) (dicts, record as JSON text), the replayed and the "
          "superseded ones in one transaction.")
      .def(
          "resolve",
          [](StateStore& s, const std::vector<std::int64_t>& ids) {
            py::gil_scoped_release release;
            s.resolve(ids);
          },
          py::arg("ids"))
      .def(
          "open_dead_letter_keys",
          [](StateStore& s, const std::string& pipeline) {
            py::gil_scoped_release release;
            return s.open_dead_letter_keys(pipeline);
          },
          py::arg("pipeline"))
      .def(
          "dead_letters",
          [](StateStore& s, const std::optional<std::string>& pipeline, const std::optional<std::int64_t>& run_id,
             const std::string& include, const std::string& where, const py::tuple& params) {
            store::DeadLetterQuery q;
            q.pipeline = pipeline;
            q.run_id = run_id;
            if (include == "all")
              q.include = store::DeadLetterQuery::Include::all;
            else if (include == "superseded")
              q.include = store::DeadLetterQuery::Include::open_and_superseded;
            else if (include != "open")
              throw Error(errc::invalid_argument, "include: '" + include + "' is not valid; expected "
                                                  "'open', 'superseded' or 'all'");
            q.where = where;
            for (std::size_t i = 0; i < params.size(); ++i) q.params.push_back(sql_value(params[i], i));
            std::vector<store::DeadLetter> rows;
            {
              py::gil_scoped_release release;
              rows = s.dead_letters(q);
            }
            py::list out;
            for (const auto& r : rows) out.append(dead_letter_dict(r));
            return out;
          },
          py::arg("pipeline") = py::none(), py::arg("run_id") = py::none(), py::arg("include") = "open",
          py::arg("where") = "", py::arg("params") = py::tuple(),
          "Dead letters as dicts (record as JSON text), oldest first. include: open, superseded "
          "(open ones and those a newer version replaced) or all.")
      .def(
          "bump_dead_letter",
          [](StateStore& s, std::int64_t id, const std::string& error, const std::optional<std::int64_t>& http_status,
             const std::optional<std::string>& excerpt, const std::optional<std::string>& traceback,
             const std::optional<std::string>& stage, const std::optional<std::string>& record) {
            store::Attempt a{error, http_status, excerpt, traceback, stage, record};
            py::gil_scoped_release release;
            s.bump_dead_letter(id, a);
          },
          py::arg("id"), py::arg("error"), py::arg("http_status"), py::arg("excerpt"), py::arg("traceback"),
          py::arg("stage"), py::arg("record"))
      .def("pipelines",
           [](StateStore& s) {
             py::gil_scoped_release release;
             return s.pipelines();
           })
      .def(
          "backup",
          [](StateStore& s, const std::string& dest) {
            py::gil_scoped_release release;
            s.backup(dest);
          },
          py::arg("dest"))
      .def("close", [](StateStore& s) {
        py::gil_scoped_release release;
        s.close();
      });
}

}  // namespace isthmus::bindings
