#include "isthmus/webhook/change_log.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <mutex>
#include <tuple>
#include <unordered_set>

#include "isthmus/error.hpp"
#include "isthmus/pipeline/cast.hpp"
#include "isthmus/store/sqlite.hpp"

namespace isthmus::webhook {
namespace {

using json = nlohmann::json;

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS isthmus_change_log (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT OR IGNORE INTO isthmus_change_log (key, value) VALUES ('format', '1');
CREATE TABLE IF NOT EXISTS changes (
    connection TEXT NOT NULL,
    resource TEXT NOT NULL,
    record_id TEXT NOT NULL,
    version INTEGER,
    updated_ms INTEGER,
    deleted INTEGER NOT NULL,
    data TEXT NOT NULL,
    origin TEXT NOT NULL,
    seq INTEGER NOT NULL UNIQUE,
    changed_at REAL NOT NULL,
    PRIMARY KEY (connection, resource, record_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    applied_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rejected (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    route TEXT NOT NULL,
    reason TEXT NOT NULL,
    envelope TEXT NOT NULL,
    at REAL NOT NULL
);
)sql";

const json* at_path(const json& doc, std::string_view path) {
  const json* node = &doc;
  while (!path.empty()) {
    const auto dot = path.find('.');
    const std::string part(path.substr(0, dot));
    if (!node->is_object()) return nullptr;
    auto it = node->find(part);
    if (it == node->end()) return nullptr;
    node = &*it;
    path = dot == std::string_view::npos ? std::string_view{} : path.substr(dot + 1);
  }
  return node;
}

[[noreturn]] void bad_field(std::string_view field, std::string_view path, const json& value, std::string_view want) {
  std::string shown = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (shown.size() > 80) shown = shown.substr(0, 77) + "...";
  throw Error(errc::invalid_argument, std::string(field) + " (\"" + std::string(path) + "\"): " + shown +
                                          " is not valid; expected " + std::string(want));
}

std::optional<std::int64_t> version_of(const json& doc, std::string_view path) {
  const json* v = path.empty() ? nullptr : at_path(doc, path);
  if (!v || v->is_null()) return std::nullopt;
  if (v->is_number_integer()) return v->get<std::int64_t>();
  if (v->is_number_float() && std::floor(v->get<double>()) == v->get<double>())
    return static_cast<std::int64_t>(v->get<double>());
  if (v->is_string()) {
    const auto& s = v->get_ref<const std::string&>();
    std::int64_t out = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    if (ec == std::errc() && end == s.data() + s.size()) return out;
  }
  bad_field("version", path, *v, "an integer");
}

std::optional<std::int64_t> millis_of(const json& doc, std::string_view path) {
  const json* v = path.empty() ? nullptr : at_path(doc, path);
  if (!v || v->is_null()) return std::nullopt;
  if (v->is_number()) return static_cast<std::int64_t>(std::llround(v->get<double>() * 1000.0));
  if (v->is_string())
    if (auto ms = pipeline::iso_millis(v->get_ref<const std::string&>())) return ms;
  bad_field("updated_at", path, *v, "an RFC 3339 time or Unix seconds");
}

std::string id_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer()) return v.dump();
  return {};
}

}  // namespace

namespace {
Change change_from_doc(const json& doc, const RecordFields& fields, std::string connection, std::string resource,
                       std::string origin) {
  if (!doc.is_object()) throw Error(errc::invalid_argument, "record: not a JSON object");
  Change c;
  const json* id = at_path(doc, fields.id);
  if (!id) throw Error(errc::invalid_argument, "record has no id (\"" + fields.id + "\")");
  c.id = id_text(*id);
  if (c.id.empty()) bad_field("id", fields.id, *id, "a non-empty string or an integer");
  c.version = version_of(doc, fields.version);
  c.updated_ms = millis_of(doc, fields.updated_at);
  if (const json* d = fields.deleted.empty() ? nullptr : at_path(doc, fields.deleted))
    c.deleted = d->is_boolean() && d->get<bool>();
  c.data = doc.dump(-1, ' ', false, json::error_handler_t::replace);  // sorted keys: canonical
  c.connection = std::move(connection);
  c.resource = std::move(resource);
  c.origin = std::move(origin);
  return c;
}
}  // namespace

Change change_from_record(std::string_view record_json, const RecordFields& fields, std::string connection,
                          std::string resource, std::string origin) {
  json doc = json::parse(record_json.begin(), record_json.end(), nullptr, false);
  if (doc.is_discarded()) throw Error(errc::invalid_argument, "record: not valid JSON");
  return change_from_doc(doc, fields, std::move(connection), std::move(resource), std::move(origin));
}

bool newer(const Change& a, const Change& b) {
  if (a.version && b.version && *a.version != *b.version) return *a.version > *b.version;
  if (a.updated_ms && b.updated_ms && *a.updated_ms != *b.updated_ms) return *a.updated_ms > *b.updated_ms;
  if (a.deleted != b.deleted) return a.deleted;
  // A later version or time on one side only says nothing about the other: fall through to the
  // contents, so the outcome does not depend on which arrived first.
  return a.data > b.data;
}

struct ChangeLog::Impl {
  explicit Impl(std::string path) : db(std::move(path), options()) { db.exec(kSchema, "cannot be created"); }

  static store::OpenOptions options() {
    store::OpenOptions o;
    o.what = "change log";
    o.restore_hint = "Move it aside, or delete it and rebuild the log with a full reconciliation poll.";
    return o;
  }

  void check_open() const {
    if (closed) throw Error(errc::state_error, "change log " + db.path() + " is closed");
  }

  std::int64_t last_seq() {
    auto q = db.prepare("SELECT COALESCE(MAX(seq), 0) FROM changes");
    q.step();
    return q.integer(0);
  }

  static Entry entry_of(const store::Statement& row) {
    Entry e;
    e.connection = row.text(0);
    e.resource = row.text(1);
    e.id = row.text(2);
    if (!row.is_null(3)) e.version = row.integer(3);
    if (!row.is_null(4)) e.updated_ms = row.integer(4);
    e.deleted = row.integer(5) != 0;
    e.data = row.text(6);
    e.origin = row.text(7);
    e.seq = row.integer(8);
    e.changed_at = row.real(9);
    return e;
  }

  // Within the caller's transaction.
  ApplyCounts apply(const std::vector<Change>& changes, const std::vector<std::string>& seen_events);

  std::mutex mutex;
  store::Database db;
  bool closed = false;
};

ChangeLog::ChangeLog(std::string path) : impl_(std::make_unique<Impl>(std::move(path))) {}
ChangeLog::~ChangeLog() = default;

const std::string& ChangeLog::path() const { return impl_->db.path(); }

void ChangeLog::close() {
  std::lock_guard lock(impl_->mutex);
  impl_->closed = true;
}

constexpr const char* kColumns =
    "connection, resource, record_id, version, updated_ms, deleted, data, origin, seq, changed_at";

ApplyCounts ChangeLog::apply(const std::vector<Change>& changes, const std::vector<std::string>& seen_events) {
  std::lock_guard lock(impl_->mutex);
  impl_->check_open();
  store::Transaction tx(impl_->db, "cannot be written");
  auto counts = impl_->apply(changes, seen_events);
  tx.commit();
  return counts;
}

ApplyCounts ChangeLog::Impl::apply(const std::vector<Change>& changes, const std::vector<std::string>& seen_events) {
  ApplyCounts counts;
  const double now = store::unix_now();
  std::int64_t seq = last_seq();
  auto mark = db.prepare("INSERT OR IGNORE INTO events (event_id, applied_at) VALUES (?, ?)");
  auto held = db.prepare("SELECT version, updated_ms, deleted, data FROM changes "
                         "WHERE connection = ? AND resource = ? AND record_id = ?");
  auto put = db.prepare(std::string("INSERT OR REPLACE INTO changes (") + kColumns +
                        ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
  for (const auto& e : seen_events) {
    mark.reset();
    mark.bind(1, e).bind(2, now).run();
  }
  for (const auto& c : changes) {
    if (!c.event_id.empty()) {
      mark.reset();
      mark.bind(1, c.event_id).bind(2, now).run();
      if (db.changes() == 0) {
        ++counts.duplicates;
        continue;
      }
    }
    held.reset();
    held.bind(1, c.connection).bind(2, c.resource).bind(3, c.id);
    if (held.step()) {
      Change old;
      if (!held.is_null(0)) old.version = held.integer(0);
      if (!held.is_null(1)) old.updated_ms = held.integer(1);
      old.deleted = held.integer(2) != 0;
      old.data = held.text(3);
      const bool same = old.version == c.version && old.updated_ms == c.updated_ms &&
                        old.deleted == c.deleted && old.data == c.data;
      if (same) {
        ++counts.unchanged;
        continue;
      }
      if (!newer(c, old)) {
        ++counts.stale;
        continue;
      }
    }
    put.reset();
    put.bind(1, c.connection).bind(2, c.resource).bind(3, c.id).bind(4, c.version).bind(5, c.updated_ms)
        .bind(6, c.deleted ? 1 : 0).bind(7, c.data).bind(8, c.origin).bind(9, ++seq).bind(10, now)
        .run();
    ++counts.applied;
  }
  return counts;
}

ChangeLog::Ingested ChangeLog::ingest(const std::vector<std::string>& envelopes, const EventFormat& format,
                                      const RecordFields& fields,
                                      const std::vector<std::pair<std::string, std::string>>& connections,
                                      const std::string& default_connection) {
  Ingested out;
  std::vector<Change> fat;
  std::vector<std::tuple<std::size_t, std::string, std::string, std::string>> bad;  // index, id, route, why
  for (std::size_t i = 0; i < envelopes.size(); ++i) {
    const auto& text = envelopes[i];
    json env = json::parse(text.begin(), text.end(), nullptr, false);
    std::string event_id, route;
    if (env.is_object()) {
      if (auto it = env.find("event_id"); it != env.end() && it->is_string()) event_id = it->get<std::string>();
      if (auto it = env.find("route"); it != env.end() && it->is_string()) route = it->get<std::string>();
    }
    auto reject = [&](std::string why) { bad.emplace_back(i, event_id, route, std::move(why)); };
    if (!env.is_object()) {
      reject("the queued message is not a JSON object");
      continue;
    }
    const json* event = at_path(env, "event");
    if (!event || !event->is_object()) {
      reject("the message has no \"event\" object");
      continue;
    }
    const json* type = at_path(*event, format.type);
    if (!type || !type->is_string()) {
      reject("the event has no type (\"" + format.type + "\") naming <resource>.<action>");
      continue;
    }
    const auto& t = type->get_ref<const std::string&>();
    const auto dot = t.rfind('.');
    if (dot == std::string::npos || dot == 0 || dot + 1 == t.size()) {
      reject("the event type \"" + t.substr(0, 80) + "\" is not <resource>.<action>");
      continue;
    }
    std::string resource = t.substr(0, dot), action = t.substr(dot + 1);
    const bool deleted = std::find(format.delete_actions.begin(), format.delete_actions.end(), action) !=
                         format.delete_actions.end();
    const json* data = at_path(*event, format.data);
    if (!data || !data->is_object()) {
      reject("the event has no record object (\"" + format.data + "\")");
      continue;
    }
    std::string connection = default_connection;
    for (const auto& [r, c] : connections)
      if (r == route) connection = c;
    const bool thin = format.thin == "always" || (format.thin == "auto" && data->size() == 1 && at_path(*data, fields.id));
    try {
      if (thin) {
        const json* id = at_path(*data, fields.id);
        std::string id_s = id ? id_text(*id) : std::string();
        if (id_s.empty()) {
          reject("the thin event has no record id (\"" + fields.id + "\")");
          continue;
        }
        out.thin.push_back({i, std::move(connection), std::move(resource), std::move(id_s), event_id, deleted});
        continue;
      }
      Change c = change_from_doc(*data, fields, std::move(connection), std::move(resource), "webhook");
      c.deleted = c.deleted || deleted;
      c.event_id = event_id;
      fat.push_back(std::move(c));
    } catch (const Error& e) {
      reject(std::string("the event's record cannot be read: ") + e.what());
    }
  }
  std::lock_guard lock(impl_->mutex);
  impl_->check_open();
  auto& db = impl_->db;
  store::Transaction tx(db, "cannot be written");
  // Thin events already applied (a redelivery), or twice in this batch, are dropped here.
  {
    auto q = db.prepare("SELECT 1 FROM events WHERE event_id = ?");
    std::vector<ThinEvent> fresh;
    std::unordered_set<std::string> taken;
    for (auto& e : out.thin) {
      if (!e.event_id.empty()) {
        q.reset();
        q.bind(1, e.event_id);
        if (q.step() || !taken.insert(e.event_id).second) {
          ++out.counts.duplicates;
          continue;
        }
      }
      fresh.push_back(std::move(e));
    }
    out.thin = std::move(fresh);
  }
  const double now = store::unix_now();
  auto mark = db.prepare("INSERT OR IGNORE INTO events (event_id, applied_at) VALUES (?, ?)");
  auto keep = db.prepare("INSERT INTO rejected (event_id, route, reason, envelope, at) VALUES (?, ?, ?, ?, ?)");
  for (auto& [i, id, route, why] : bad) {
    if (!id.empty()) {
      mark.reset();
      mark.bind(1, id).bind(2, now).run();
      if (db.changes() == 0) {  // rejected (or applied) before: a redelivery
        ++out.counts.duplicates;
        continue;
      }
    }
    keep.reset();
    keep.bind(1, id).bind(2, route).bind(3, why).bind(4, envelopes[i]).bind(5, now).run();
    out.rejected.push_back({i, id, route, why});
  }
  auto counts = impl_->apply(fat, {});
  tx.commit();
  counts.duplicates += out.counts.duplicates;
  out.counts = counts;
  return out;
}

std::vector<ChangeLog::Rejected> ChangeLog::rejected(std::size_t limit) {
  std::lock_guard lock(impl_->mutex);
  impl_->check_open();
  auto q = impl_->db.prepare("SELECT event_id, route, reason, envelope, at FROM rejected ORDER BY n LIMIT ?");
  q.bind(1, limit ? static_cast<std::int64_t>(limit) : -1);
  std::vector<Rejected> out;
  while (q.step()) out.push_back({q.text(0), q.text(1), q.text(2), q.text(3), q.real(4)});
  return out;
}

std::vector<bool> ChangeLog::seen(const std::vector<std::string>& event_ids) {
  std::lock_guard lock(impl_->mutex);
  impl_->check_open();
  auto q = impl_->db.prepare("SELECT 1 FROM events WHERE event_id = ?");
  std::vector<bool> out;
  out.reserve(event_ids.size());
  for (const auto& e : event_ids) {
    q.reset();
    q.bind(1, e);
    out.push_back(q.step());
  }
  return out;
}

namespace {
// " AND connection = ?" / " AND resource = ?" for the filters given, and their values in order.
std::pair<std::string, std::vector<std::string_view>> filters(std::string_view connection, std::string_view resource) {
  std::string where;
  std::vector<std::string_view> values;
  if (!connection.empty()) where += " AND connection = ?", values.push_back(connection);
  if (!resource.empty()) where += " AND resource = ?", values.push_back(resource);
  return {where, values};
}
}  // namespace

std::vector<Entry> ChangeLog::read(std::int64_t after_seq, std::size_t limit, std::string_view connection,
                                   std::string_view resource) {
  std::lock_guard lock(impl_->mutex);
  impl_->check_open();
  auto [where, values] = filters(connection, resource);
  auto q = impl_->db.prepare(std::string("SELECT ") + kColumns + " FROM changes WHERE seq > ?" + where +
                             " ORDER BY seq LIMIT ?");
  int i = 1;
  q.bind(i++, after_seq);
  for (auto v : values) q.bind(i++, v);
  q.bind(i, static_cast<std::int64_t>(limit));
  std::vector<Entry> out;
  while (q.step()) out.push_back(Impl::entry_of(q));
  return out;
}

std::optional<Entry> ChangeLog::get(std::string_view connection, std::string_view resource, std::string_view id) {
  std::lock_guard lock(impl_->mutex);
  impl_->check_open();
  auto q = impl_->db.prepare(std::string("SELECT ") + kColumns +
                             " FROM changes WHERE connection = ? AND resource = ? AND record_id = ?");
  q.bind(1, connection).bind(2, resource).bind(3, id);
  if (!q.step()) return std::nullopt;
  return Impl::entry_of(q);
}

std::optional<std::string> ChangeLog::meta(std::string_view key) {
  std::lock_guard lock(impl_->mutex);
  impl_->check_open();
  auto q = impl_->db.prepare("SELECT value FROM meta WHERE key = ?");
  q.bind(1, key);
  if (!q.step()) return std::nullopt;
  return q.text(0);
}

void ChangeLog::set_meta(std::string_view key, std::string_view value) {
  std::lock_guard lock(impl_->mutex);
  impl_->check_open();
  auto q = impl_->db.prepare("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)");
  q.bind(1, key).bind(2, value).run();
}

LogStats ChangeLog::stats(std::string_view connection, std::string_view resource) {
  std::lock_guard lock(impl_->mutex);
  impl_->check_open();
  auto [where, values] = filters(connection, resource);
  auto q = impl_->db.prepare("SELECT COUNT(*), COALESCE(SUM(deleted), 0), COALESCE(MAX(seq), 0) FROM changes "
                             "WHERE 1" + where);
  int i = 1;
  for (auto v : values) q.bind(i++, v);
  q.step();
  LogStats s;
  s.entries = q.integer(0);
  s.deleted = q.integer(1);
  s.live = s.entries - s.deleted;
  s.last_seq = q.integer(2);
  auto e = impl_->db.prepare("SELECT (SELECT COUNT(*) FROM events), (SELECT COUNT(*) FROM rejected)");
  e.step();
  s.events = e.integer(0);
  s.rejected = e.integer(1);
  return s;
}

}  // namespace isthmus::webhook
