#include "isthmus/store/state_store.hpp"

#include <sqlite3.h>

#include <filesystem>
#include <mutex>
#include <type_traits>
#include <utility>

#include "isthmus/error.hpp"
#include "isthmus/store/sqlite.hpp"

namespace isthmus::store {
namespace {

namespace fs = std::filesystem;

// The current layout. The DDL is the one source of the column lists too (expected_columns()).
constexpr std::string_view kSchema = R"sql(
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    status TEXT NOT NULL,             -- running, completed, failed, interrupted
    counts TEXT NOT NULL DEFAULT '{}',
    error TEXT
);
CREATE TABLE IF NOT EXISTS checkpoints (
    pipeline TEXT PRIMARY KEY,
    position TEXT,                    -- where the next run resumes; NULL when the stream is done
    incremental TEXT,                 -- the incremental cursor state after the last complete run
    updated_at REAL NOT NULL,
    run_id INTEGER,
    identity TEXT                     -- the source the checkpoint belongs to (Stream.identity)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline TEXT NOT NULL,
    record_key TEXT NOT NULL,
    stage TEXT NOT NULL,              -- map, sink
    record TEXT NOT NULL,             -- JSON: the source record (map) or the mapped one (sink)
    error TEXT NOT NULL,
    traceback TEXT,
    http_status INTEGER,
    response_excerpt TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    run_id INTEGER,
    resolved_at REAL,                 -- set when a replay delivered it, or a later run a newer version
    resolution TEXT,                  -- replayed, superseded; NULL while open
    UNIQUE (pipeline, stage, record_key)
);
)sql";

constexpr const char* kTables[] = {"runs", "checkpoints", "dead_letters"};

// One step per older layout, applied in order to a file that lacks its column. Files carry no
// version number: each step is recognised by the column it adds, so a file from any earlier
// release (or one a step already reached) ends in the current layout.
struct Migration {
  const char* table;
  const char* column;
  const char* type;
  const char* fill;  // fills the new column in rows written before it existed; may be null
};
constexpr Migration kMigrations[] = {
    // Layout 2: a checkpoint names the source that saved it. Older checkpoints have none and
    // adopt the identity of their next run.
    {"checkpoints", "identity", "TEXT", nullptr},
    // Layout 3: a resolved dead letter says how. Before, the only way to resolve one was a replay.
    {"dead_letters", "resolution", "TEXT",
     "UPDATE dead_letters SET resolution = 'replayed' WHERE resolved_at IS NOT NULL"},
};

const std::string kRestoreHint =
    "Move it aside and restore a backup (`isthmus state backup`), or delete it to start again "
    "from the beginning.";

const std::vector<std::string> kDeadLetterColumns = {
    "id",          "record_key", "stage",     "record",     "error",  "traceback",   "http_status",
    "response_excerpt", "attempts", "first_seen", "last_seen", "run_id", "resolved_at", "resolution"};

constexpr const char* kRunColumns = "id, pipeline, started_at, finished_at, status, counts, error";

using Tables = std::vector<std::pair<std::string, std::vector<std::string>>>;

// The columns of each table in the current layout, read from the DDL run on a memory database.
const Tables& expected_columns() {
  static const Tables tables = [] {
    OpenOptions o;
    o.what = "state schema";
    Database memory(":memory:", o);
    memory.exec(kSchema);
    return memory.tables();
  }();
  return tables;
}

const std::vector<std::string>* find(const Tables& tables, std::string_view name) {
  for (const auto& [table, columns] : tables)
    if (table == name) return &columns;
  return nullptr;
}

bool has(const std::vector<std::string>& columns, std::string_view name) {
  for (const auto& c : columns)
    if (c == name) return true;
  return false;
}

bool added_later(std::string_view table, std::string_view column) {
  for (const auto& m : kMigrations)
    if (table == m.table && column == m.column) return true;
  return false;
}

// What keeps `have` from being a state file (a missing table or column); "" when nothing does.
// With `allow_added`, the columns a migration step adds may be missing too.
std::string schema_problem(const Tables& have, bool allow_added) {
  bool any = false;
  for (const char* t : kTables) any = any || find(have, t);
  if (!any) return "it has no tables";
  for (const char* t : kTables) {
    const auto* columns = find(have, t);
    if (!columns) return std::string("table ") + t + " is missing";
    for (const auto& c : *find(expected_columns(), t))
      if (!has(*columns, c) && !(allow_added && added_later(t, c)))
        return std::string("table ") + t + " has no column " + c;
  }
  return {};
}

bool valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    char32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      n = 1, cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      n = 2, cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      n = 3, cp = c & 0x07;
    } else {
      return false;
    }
    for (std::size_t k = 1; k <= n; ++k) {
      if (i + k >= s.size()) return false;
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    // Overlong forms, surrogates and values past U+10FFFF are not UTF-8 (Python refuses them).
    static constexpr char32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += n + 1;
  }
  return true;
}

// A name as Python's repr() shows it, for messages that suggest Python code (name='...').
std::string repr(std::string_view s) {
  const char q = s.find('\'') != std::string_view::npos && s.find('"') == std::string_view::npos ? '"' : '\'';
  std::string out(1, q);
  for (char ch : printable(s)) {
    if (ch == q) out.push_back('\\');
    out.push_back(ch);
  }
  out.push_back(q);
  return out;
}

const char* type_name(Statement::Type t) {
  switch (t) {
    case Statement::Type::integer: return "integer";
    case Statement::Type::real: return "real";
    case Statement::Type::text: return "text";
    case Statement::Type::blob: return "blob";
    case Statement::Type::null: return "null";
  }
  return "?";
}

// The columns of one row read back, each checked to hold what its column must: a damaged file
// fails here with the row and the column named, never later as a wrong value.
class Row {
 public:
  Row(const Database& db, const Statement& st, std::string where) : db_(db), st_(st), where_(std::move(where)) {}

  std::int64_t integer(int col, const char* name) const {
    if (st_.type(col) != Statement::Type::integer) wrong(col, name);
    return st_.integer(col);
  }
  std::optional<std::int64_t> optional_integer(int col, const char* name) const {
    if (st_.is_null(col)) return std::nullopt;
    return integer(col, name);
  }
  double number(int col, const char* name) const {
    const auto t = st_.type(col);
    if (t != Statement::Type::integer && t != Statement::Type::real) wrong(col, name);
    return st_.real(col);
  }
  std::optional<double> optional_number(int col, const char* name) const {
    if (st_.is_null(col)) return std::nullopt;
    return number(col, name);
  }
  std::string text(int col, const char* name) const {
    if (st_.type(col) != Statement::Type::text) wrong(col, name);
    std::string s = st_.text(col);
    if (!valid_utf8(s)) db_.damaged(where_ + ": column " + name + " holds text that is not UTF-8");
    return s;
  }
  std::optional<std::string> optional_text(int col, const char* name) const {
    if (st_.is_null(col)) return std::nullopt;
    return text(col, name);
  }

 private:
  [[noreturn]] void wrong(int col, const char* name) const {
    const auto t = st_.type(col);
    std::string why = where_ + ": column " + name + " holds " + type_name(t);
    if (t != Statement::Type::null) why += " " + repr(st_.text(col).substr(0, 40));
    db_.damaged(why);
  }

  const Database& db_;
  const Statement& st_;
  std::string where_;
};

// How a row is named in messages before its id is known to be an integer.
std::string row_name(const char* what, const Statement& st) {
  return std::string(what) + " " + printable(st.text(0)).substr(0, 20);
}

void bind_value(Statement& st, int i, const SqlValue& v) {
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::monostate>)
          st.bind_null(i);
        else
          st.bind(i, x);
      },
      v);
}

}  // namespace

struct StateStore::Impl {
  std::string path;
  std::mutex mutex;  // one operation (and its transaction) on the connection at a time
  std::optional<Database> db;

  // The open connection, for a caller holding `mutex`.
  Database& open() {
    if (!db) throw Error(errc::state_error, "state file " + path + " is closed");
    return *db;
  }

  void ensure_schema() {
    Database& d = *db;
    if (schema_problem(d.tables(), false).empty()) return;  // the common case, read only
    Transaction tx(d);
    // Looked at again under the write lock: another opener may have migrated it meanwhile.
    Tables have = d.tables();
    if (!find(have, "runs") && !find(have, "checkpoints") && !find(have, "dead_letters")) {
      d.exec(kSchema);
      have = d.tables();
    }
    if (auto problem = schema_problem(have, true); !problem.empty())
      d.damaged(problem + ": it is damaged or not an isthmus state file");
    for (const auto& m : kMigrations) {
      if (has(*find(have, m.table), m.column)) continue;
      d.exec(std::string("ALTER TABLE ") + m.table + " ADD COLUMN " + m.column + " " + m.type);
      if (m.fill) d.exec(m.fill);
    }
    tx.commit();
  }

  Checkpoint load(const std::string& pipeline) {
    auto st = db->prepare("SELECT position, incremental FROM checkpoints WHERE pipeline = ?1");
    st.bind(1, pipeline);
    if (!st.step()) return {};
    const std::string where = "the checkpoint of pipeline " + repr(pipeline);
    auto json_text = [&](int col, const char* part) -> std::optional<std::string> {
      const auto t = st.type(col);
      if (t == Statement::Type::null) return std::nullopt;
      if (t != Statement::Type::text)
        db->damaged(where + " (" + part + ") holds " + type_name(t) + " data where JSON text belongs");
      std::string s = st.text(col);
      if (!valid_utf8(s)) db->damaged(where + " (" + part + ") holds text that is not UTF-8");
      return s;
    };
    return {json_text(0, "position"), json_text(1, "incremental")};
  }

  void put_dead_letter(Statement& st, const Commit& c, const NewDeadLetter& d, double now) {
    st.reset();
    st.bind(1, c.dead_letters_of.empty() ? c.pipeline : c.dead_letters_of).bind(2, d.record_key).bind(3, d.stage).bind(4, d.record).bind(5, d.error);
    st.bind(6, d.traceback).bind(7, d.http_status).bind(8, d.response_excerpt).bind(9, d.attempts);
    st.bind(10, now).bind(11, now).bind(12, c.run_id);
    st.run();
  }

  void resolve(const std::vector<std::int64_t>& ids, double now) {
    if (ids.empty()) return;
    auto st = db->prepare("UPDATE dead_letters SET resolved_at = ?1, resolution = 'replayed' WHERE id = ?2",
                          "cannot be written");
    for (auto id : ids) {
      st.reset();
      st.bind(1, now).bind(2, id);
      st.run();
    }
  }

  // Refuses a condition SQLite cannot compile on its own, so a typo is not called a damaged file.
  void check_condition(const std::string& where, std::size_t params) {
    const std::string sql = "SELECT 1 FROM dead_letters WHERE (" + where + ") LIMIT 0";
    sqlite3_stmt* stmt = nullptr;
    const char* tail = nullptr;
    const int rc = sqlite3_prepare_v2(db->handle(), sql.c_str(), static_cast<int>(sql.size()), &stmt, &tail);
    std::string why;
    if (rc != SQLITE_OK) {
      why = sqlite3_errmsg(db->handle());
    } else if (tail && std::string_view(tail).find_first_not_of(" \t\r\n;") != std::string_view::npos) {
      why = "it holds more than one statement";
    } else if (static_cast<std::size_t>(sqlite3_bind_parameter_count(stmt)) != params) {
      why = "it has " + std::to_string(sqlite3_bind_parameter_count(stmt)) + " placeholders for " +
            std::to_string(params) + " params";
    }
    sqlite3_finalize(stmt);
    if (why.empty()) return;
    std::string columns;
    for (const auto& c : kDeadLetterColumns) columns += (columns.empty() ? "" : ", ") + c;
    throw Error(errc::invalid_argument, "where: " + repr(where) +
                                            " is not a valid condition on the dead-letter columns (" + why +
                                            "); columns: " + columns);
  }
};

StateStore::StateStore(std::string path, StateStoreOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->path = std::move(path);
  OpenOptions o;
  o.what = "state file";
  o.create = options.create;
  o.busy_timeout_ms = options.busy_timeout_ms;
  o.restore_hint = kRestoreHint;
  std::error_code ec;
  if (options.create && impl_->path != ":memory:" && !fs::exists(impl_->path, ec)) {
    // Built whole beside its place and linked in: an opener racing this one sees no file or a
    // complete one, never the empty file SQLite starts with (which passes for a truncated one).
    Database::create_whole(impl_->path, kSchema, o);
  }
  impl_->db.emplace(impl_->path, o);
  impl_->ensure_schema();
}

StateStore::~StateStore() = default;

const std::string& StateStore::path() const noexcept { return impl_->path; }
const std::vector<std::string>& StateStore::dead_letter_columns() { return kDeadLetterColumns; }
const std::string& StateStore::restore_hint() { return kRestoreHint; }

std::string StateStore::damaged_message(std::string_view why) const {
  std::string msg = "state file " + impl_->path + ": " + std::string(why) + ".";
  return msg + " " + kRestoreHint;
}

std::int64_t StateStore::begin_run(const std::string& pipeline) {
  std::lock_guard lock(impl_->mutex);
  Database& db = impl_->open();
  auto st = db.prepare("INSERT INTO runs (pipeline, started_at, status) VALUES (?1, ?2, 'running')",
                       "cannot be written");
  st.bind(1, pipeline).bind(2, unix_now());
  st.run();
  return db.last_insert_rowid();
}

void StateStore::finish_run(std::int64_t run_id, const std::string& status, const std::string& counts,
                            const std::optional<std::string>& error) {
  std::lock_guard lock(impl_->mutex);
  auto st = impl_->open().prepare(
      "UPDATE runs SET finished_at = ?1, status = ?2, counts = ?3, error = ?4 WHERE id = ?5", "cannot be written");
  st.bind(1, unix_now()).bind(2, status).bind(3, counts).bind(4, error).bind(5, run_id);
  st.run();
}

std::vector<Run> StateStore::runs(const std::optional<std::string>& pipeline) {
  std::lock_guard lock(impl_->mutex);
  Database& db = impl_->open();
  std::string sql = std::string("SELECT ") + kRunColumns + " FROM runs";
  if (pipeline) sql += " WHERE pipeline = ?1";
  auto st = db.prepare(sql + " ORDER BY id");
  if (pipeline) st.bind(1, *pipeline);
  std::vector<Run> out;
  while (st.step()) {
    const Row row(db, st, row_name("run", st));
    Run r;
    r.id = row.integer(0, "id");
    r.pipeline = row.text(1, "pipeline");
    r.started_at = row.number(2, "started_at");
    r.finished_at = row.optional_number(3, "finished_at");
    r.status = row.text(4, "status");
    r.counts = row.text(5, "counts");
    r.error = row.optional_text(6, "error");
    out.push_back(std::move(r));
  }
  return out;
}

Checkpoint StateStore::load(const std::string& pipeline) {
  std::lock_guard lock(impl_->mutex);
  impl_->open();
  return impl_->load(pipeline);
}

Claim StateStore::claim(const std::string& pipeline, const std::string& identity, bool adopt) {
  std::lock_guard lock(impl_->mutex);
  Database& db = impl_->open();
  Claim out;
  {
    Transaction tx(db);
    auto st = db.prepare("SELECT identity FROM checkpoints WHERE pipeline = ?1");
    st.bind(1, pipeline);
    if (!st.step()) {
      auto ins = db.prepare("INSERT INTO checkpoints (pipeline, updated_at, identity) VALUES (?1, ?2, ?3)",
                            "cannot be written");
      ins.bind(1, pipeline).bind(2, unix_now()).bind(3, identity);
      ins.run();
    } else {
      const Row row(db, st, "the checkpoint of pipeline " + repr(pipeline));
      const auto saved = row.optional_text(0, "identity");
      if (saved != identity) {
        if (saved && !adopt)
          throw Error(errc::state_error,
                      "state file " + impl_->path + ": pipeline " + repr(pipeline) + " holds the checkpoint of " +
                          saved->substr(0, 300) + ", but this pipeline reads " + identity +
                          ". Give this pipeline its own name= or state=; or, if it is the same data, pass name=" +
                          repr(pipeline) + " to file the checkpoint under this source.");
        out.moved_from = saved;
        auto up = db.prepare("UPDATE checkpoints SET identity = ?1 WHERE pipeline = ?2", "cannot be written");
        up.bind(1, identity).bind(2, pipeline);
        up.run();
      }
    }
    tx.commit();
  }
  out.checkpoint = impl_->load(pipeline);
  return out;
}

std::optional<std::string> StateStore::identity(const std::string& pipeline) {
  std::lock_guard lock(impl_->mutex);
  Database& db = impl_->open();
  auto st = db.prepare("SELECT identity FROM checkpoints WHERE pipeline = ?1");
  st.bind(1, pipeline);
  if (!st.step()) return std::nullopt;
  return Row(db, st, "the checkpoint of pipeline " + repr(pipeline)).optional_text(0, "identity");
}

void StateStore::commit(const Commit& c) {
  std::lock_guard lock(impl_->mutex);
  Database& db = impl_->open();
  const double now = unix_now();
  Transaction tx(db);
  if (!c.dead_letters.empty()) {
    // The same record failing again (a rerun after a crash, a failed replay, a newer version
    // failing too) is one open dead letter with more attempts, not a second one.
    auto put = db.prepare(
        "INSERT INTO dead_letters (pipeline, record_key, stage, record, error, traceback, http_status, "
        "response_excerpt, attempts, first_seen, last_seen, run_id) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) "
        "ON CONFLICT (pipeline, stage, record_key) DO UPDATE SET record = excluded.record, "
        "error = excluded.error, traceback = excluded.traceback, http_status = excluded.http_status, "
        "response_excerpt = excluded.response_excerpt, "
        "attempts = dead_letters.attempts + excluded.attempts, last_seen = excluded.last_seen, "
        "run_id = excluded.run_id, resolved_at = NULL, resolution = NULL",
        "cannot be written");
    for (const auto& d : c.dead_letters) impl_->put_dead_letter(put, c, d, now);
  }
  impl_->resolve(c.resolved, now);
  if (!c.superseded.empty()) {
    auto st = db.prepare(
        "UPDATE dead_letters SET resolved_at = ?1, resolution = 'superseded' "
        "WHERE pipeline = ?2 AND record_key = ?3 AND resolved_at IS NULL",
        "cannot be written");
    for (const auto& key : c.superseded) {
      st.reset();
      st.bind(1, now).bind(2, c.dead_letters_of.empty() ? c.pipeline : c.dead_letters_of).bind(3, key);
      st.run();
    }
  }
  auto st = db.prepare(
      c.set_incremental
          ? "INSERT INTO checkpoints (pipeline, position, incremental, updated_at, run_id) "
            "VALUES (?1, ?2, ?5, ?3, ?4) ON CONFLICT (pipeline) DO UPDATE SET "
            "position = excluded.position, incremental = excluded.incremental, "
            "updated_at = excluded.updated_at, run_id = excluded.run_id"
          : "INSERT INTO checkpoints (pipeline, position, updated_at, run_id) VALUES (?1, ?2, ?3, ?4) "
            "ON CONFLICT (pipeline) DO UPDATE SET position = excluded.position, "
            "updated_at = excluded.updated_at, run_id = excluded.run_id",
      "cannot be written");
  st.bind(1, c.pipeline).bind(2, c.position).bind(3, now).bind(4, c.run_id);
  if (c.set_incremental) st.bind(5, c.incremental);
  st.run();
  tx.commit();
}

void StateStore::resolve(const std::vector<std::int64_t>& ids) {
  std::lock_guard lock(impl_->mutex);
  Transaction tx(impl_->open());
  impl_->resolve(ids, unix_now());
  tx.commit();
}

std::vector<std::string> StateStore::open_dead_letter_keys(const std::string& pipeline) {
  std::lock_guard lock(impl_->mutex);
  Database& db = impl_->open();
  auto st = db.prepare(
      "SELECT DISTINCT record_key FROM dead_letters WHERE pipeline = ?1 AND resolved_at IS NULL ORDER BY 1");
  st.bind(1, pipeline);
  std::vector<std::string> out;
  while (st.step()) {
    // A key stored as bytes can equal no record's key (keys are text): it supersedes nothing.
    if (st.type(0) == Statement::Type::blob) continue;
    out.push_back(Row(db, st, "a dead letter of pipeline " + repr(pipeline)).text(0, "record_key"));
  }
  return out;
}

std::vector<DeadLetter> StateStore::dead_letters(const DeadLetterQuery& q) {
  std::lock_guard lock(impl_->mutex);
  Database& db = impl_->open();
  std::vector<std::string> clauses;
  int n = 0;
  if (q.pipeline) clauses.push_back("pipeline = ?" + std::to_string(++n));
  if (q.run_id) clauses.push_back("run_id = ?" + std::to_string(++n));
  if (q.include == DeadLetterQuery::Include::open) clauses.push_back("resolved_at IS NULL");
  if (q.include == DeadLetterQuery::Include::open_and_superseded)
    clauses.push_back("(resolved_at IS NULL OR resolution = 'superseded')");
  if (!q.where.empty()) {
    impl_->check_condition(q.where, q.params.size());
    clauses.push_back("(" + q.where + ")");
  }
  std::string sql = "SELECT ";
  for (std::size_t i = 0; i < kDeadLetterColumns.size(); ++i) sql += (i ? ", " : "") + kDeadLetterColumns[i];
  sql += " FROM dead_letters";
  for (std::size_t i = 0; i < clauses.size(); ++i) sql += (i ? " AND " : " WHERE ") + clauses[i];
  // The condition's own `?`s number on from the ones above.
  auto st = db.prepare(sql + " ORDER BY id");
  int at = 0;
  if (q.pipeline) st.bind(++at, *q.pipeline);
  if (q.run_id) st.bind(++at, *q.run_id);
  for (const auto& p : q.params) bind_value(st, ++at, p);
  std::vector<DeadLetter> out;
  while (st.step()) {
    const Row row(db, st, row_name("dead letter", st));
    DeadLetter d;
    d.id = row.integer(0, "id");
    d.record_key = row.text(1, "record_key");
    d.stage = row.text(2, "stage");
    d.record = row.text(3, "record");
    d.error = row.text(4, "error");
    d.traceback = row.optional_text(5, "traceback");
    d.http_status = row.optional_integer(6, "http_status");
    d.response_excerpt = row.optional_text(7, "response_excerpt");
    d.attempts = row.integer(8, "attempts");
    d.first_seen = row.number(9, "first_seen");
    d.last_seen = row.number(10, "last_seen");
    d.run_id = row.optional_integer(11, "run_id");
    d.resolved_at = row.optional_number(12, "resolved_at");
    d.resolution = row.optional_text(13, "resolution");
    out.push_back(std::move(d));
  }
  return out;
}

void StateStore::bump_dead_letter(std::int64_t id, const Attempt& a) {
  std::lock_guard lock(impl_->mutex);
  Database& db = impl_->open();
  Transaction tx(db);
  auto st = db.prepare("SELECT pipeline, record_key, stage FROM dead_letters WHERE id = ?1");
  st.bind(1, id);
  bool keep_traceback = true;
  if (st.step() && a.stage) {
    const Row row(db, st, "dead letter " + std::to_string(id));
    const std::string pipeline = row.text(0, "pipeline"), key = row.text(1, "record_key");
    if (*a.stage != row.text(2, "stage")) {
      // At another stage now: an older dead letter of the record at that stage gives way to this
      // one, and the old stage's traceback no longer applies.
      keep_traceback = false;
      auto del = db.prepare("DELETE FROM dead_letters WHERE pipeline = ?1 AND record_key = ?2 AND stage = ?3",
                            "cannot be written");
      del.bind(1, pipeline).bind(2, key).bind(3, *a.stage);
      del.run();
      auto up = db.prepare("UPDATE dead_letters SET stage = ?1, record = ?2 WHERE id = ?3", "cannot be written");
      up.bind(1, *a.stage).bind(2, a.record.value_or("null")).bind(3, id);
      up.run();
    }
  }
  auto up = db.prepare(std::string("UPDATE dead_letters SET attempts = attempts + 1, last_seen = ?1, error = ?2, "
                                   "http_status = ?3, response_excerpt = ?4, traceback = ") +
                           (keep_traceback ? "COALESCE(?5, traceback)" : "?5") + " WHERE id = ?6",
                       "cannot be written");
  up.bind(1, unix_now()).bind(2, a.error).bind(3, a.http_status).bind(4, a.response_excerpt);
  up.bind(5, a.traceback).bind(6, id);
  up.run();
  tx.commit();
}

std::vector<std::string> StateStore::pipelines() {
  std::lock_guard lock(impl_->mutex);
  Database& db = impl_->open();
  auto st = db.prepare(
      "SELECT pipeline FROM runs UNION SELECT pipeline FROM checkpoints "
      "UNION SELECT pipeline FROM dead_letters ORDER BY 1");
  std::vector<std::string> out;
  while (st.step()) out.push_back(Row(db, st, "a pipeline name").text(0, "pipeline"));
  return out;
}

void StateStore::backup(const std::string& dest) {
  std::lock_guard lock(impl_->mutex);
  if (impl_->path == ":memory:")
    throw Error(errc::state_error, "backup: an in-memory state has no file to copy");
  impl_->open().backup_to(dest);
}

void StateStore::close() {
  std::lock_guard lock(impl_->mutex);
  impl_->db.reset();
}

}  // namespace isthmus::store
