#include "isthmus/queue/local_queue.hpp"

#include <filesystem>
#include <mutex>
#include <optional>
#include <utility>

#include "isthmus/auth/crypto.hpp"
#include "isthmus/error.hpp"
#include "isthmus/store/sqlite.hpp"

namespace isthmus::queue {
namespace {

constexpr const char* kFormat = "1";

// visible_at is when a message can be leased: its put time, the end of a nack's delay, or the
// end of its current lease. One column keeps "ready" one indexed range query.
constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS isthmus_queue (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT OR IGNORE INTO isthmus_queue (key, value) VALUES ('format', '1');
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused: a late ack cannot hit a newer message
    body BLOB NOT NULL,
    is_text INTEGER NOT NULL,
    enqueued_at REAL NOT NULL,
    visible_at REAL NOT NULL,
    lease TEXT,                             -- the token of the lease that took it last
    deliveries INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_visible ON messages (visible_at, id);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,                 -- the message's id
    body BLOB NOT NULL,
    is_text INTEGER NOT NULL,
    enqueued_at REAL NOT NULL,
    deliveries INTEGER NOT NULL,
    dead_at REAL NOT NULL,
    reason TEXT NOT NULL
);
)sql";

const std::vector<std::pair<std::string, std::vector<std::string>>> kTables = {
    {"isthmus_queue", {"key", "value"}},
    {"messages", {"id", "body", "is_text", "enqueued_at", "visible_at", "lease", "deliveries"}},
    {"dead_letters", {"id", "body", "is_text", "enqueued_at", "deliveries", "dead_at", "reason"}},
};

constexpr const char* kRestoreHint =
    "Move it aside (it may hold messages worth keeping), or delete it to start an empty queue.";

store::OpenOptions open_options(const LocalQueueOptions& o, bool create) {
  store::OpenOptions s;
  s.what = "queue file";
  s.create = create;
  s.busy_timeout_ms = o.busy_timeout_ms;
  // put() promises durability when it returns: one fsync per commit.
  s.sync = store::Sync::full;
  s.restore_hint = kRestoreHint;
  return s;
}

using Type = store::Statement::Type;

// A column read back from a file that may be damaged: SQLite stores any type in any column.
void expect(const store::Database& db, const store::Statement& row, int col, std::initializer_list<Type> ok,
            const char* column, std::int64_t id) {
  const Type t = row.type(col);
  for (Type want : ok)
    if (t == want) return;
  static const char* names[] = {"an integer", "a real", "text", "a blob", "NULL"};
  db.damaged("message " + std::to_string(id) + ": column " + column + " holds " +
             names[static_cast<int>(t)]);
}


}  // namespace

struct LocalQueue::Impl {
  std::mutex m;
  std::string path;
  LocalQueueOptions options;
  std::optional<store::Database> db;

  double now() const { return options.clock ? options.clock() : store::unix_now(); }

  store::Database& open() {
    if (!db) throw Error(errc::state_error, "queue file " + path + " is closed");
    return *db;
  }

  void check_schema(store::Database& d) {
    auto have = d.tables();
    if (have.empty()) {
      // An SQLite file with nothing in it yet (made by another tool): make it a queue.
      store::Transaction tx(d, "cannot be created");
      d.exec(kSchema, "cannot be created");
      tx.commit();
      return;
    }
    std::string names;
    for (const auto& [t, _] : have) names += (names.empty() ? "" : ", ") + t;
    for (const auto& [table, columns] : kTables) {
      const std::vector<std::string>* found = nullptr;
      for (const auto& [t, cols] : have)
        if (t == table) found = &cols;
      if (!found)
        d.damaged("it is not an isthmus queue file: it has no table " + table + " (it has " + names + ")");
      for (const auto& c : columns) {
        bool present = false;
        for (const auto& f : *found) present = present || f == c;
        if (!present) d.damaged("table " + table + " has no column " + c + ": it is damaged or not an isthmus queue file");
      }
    }
    auto format = d.prepare("SELECT value FROM isthmus_queue WHERE key = 'format'");
    if (!format.step()) d.damaged("it records no queue format: it is damaged or not an isthmus queue file");
    const std::string v = format.text(0);
    if (v != kFormat)
      d.damaged("its queue format is " + printable(v).substr(0, 20) + ", this version reads format " + kFormat);
  }

  // Messages delivered max_deliveries times whose lease ran out go to the dead letters before
  // anything is leased or counted, so they never come back a further time.
  void sweep(store::Database& d, double t) {
    auto move = d.prepare(
        "INSERT INTO dead_letters (id, body, is_text, enqueued_at, deliveries, dead_at, reason) "
        "SELECT id, body, is_text, enqueued_at, deliveries, ?1, "
        "'delivered ' || deliveries || ' times (max_deliveries ' || ?2 || '); the last lease expired' "
        "FROM messages WHERE visible_at <= ?1 AND deliveries >= ?2 AND lease IS NOT NULL",
        "cannot be written");
    move.bind(1, t).bind(2, options.max_deliveries).run();
    if (d.changes() == 0) return;
    auto drop = d.prepare(
        "DELETE FROM messages WHERE visible_at <= ?1 AND deliveries >= ?2 AND lease IS NOT NULL",
        "cannot be written");
    drop.bind(1, t).bind(2, options.max_deliveries).run();
  }

  template <class T, class F>
  void complete(const Handler<T>& done, F&& body) {
    Status status;
    T result{};
    try {
      std::lock_guard lock(m);
      result = body(open());
    } catch (const Error& e) {
      status = {e.code(), e.what()};
    } catch (const std::exception& e) {
      status = {make_error_code(errc::internal), std::string("queue file ") + path + ": " + e.what()};
    }
    // Outside the lock: a handler may start the next operation.
    done(std::move(status), std::move(result));
  }
};

LocalQueue::LocalQueue(const std::string& path, LocalQueueOptions options) : impl_(std::make_unique<Impl>()) {
  if (options.max_deliveries < 1)
    throw Error(errc::invalid_argument, "max_deliveries: " + std::to_string(options.max_deliveries) +
                                            " is not valid; expected an integer >= 1");
  if (options.busy_timeout_ms < 0)
    throw Error(errc::invalid_argument, "busy_timeout_ms: must be >= 0");
  if (path.empty()) throw Error(errc::invalid_argument, "path: '' is not valid; expected a file path");
  impl_->path = path;
  impl_->options = std::move(options);
  std::error_code ec;
  if (path != ":memory:" && !std::filesystem::exists(path, ec))
    store::Database::create_whole(path, kSchema, open_options(impl_->options, true));
  store::Database db(path, open_options(impl_->options, path == ":memory:"));
  impl_->check_schema(db);
  impl_->db.emplace(std::move(db));
}

LocalQueue::~LocalQueue() = default;

const std::string& LocalQueue::path() const noexcept { return impl_->path; }
int LocalQueue::max_deliveries() const noexcept { return impl_->options.max_deliveries; }

void LocalQueue::async_put(std::vector<Item> items, Handler<std::size_t> done) {
  impl_->complete(done, [&](store::Database& d) -> std::size_t {
    if (items.empty()) return 0;
    const double t = impl_->now();
    store::Transaction tx(d);
    auto insert = d.prepare(
        "INSERT INTO messages (body, is_text, enqueued_at, visible_at) VALUES (?1, ?2, ?3, ?3)",
        "cannot be written");
    for (const auto& item : items) {
      insert.bind_blob(1, item.body).bind(2, item.text ? 1 : 0).bind(3, t).run();
      insert.reset();
    }
    tx.commit();
    return items.size();
  });
}

void LocalQueue::async_lease(std::size_t n, std::chrono::milliseconds visibility, Handler<Lease> done) {
  if (n == 0 || visibility.count() <= 0) {
    done({make_error_code(errc::invalid_argument),
          n == 0 ? "n: 0 is not valid; expected an integer >= 1"
                 : "visibility: " + std::to_string(visibility.count()) + " ms is not valid; expected > 0"},
         {});
    return;
  }
  impl_->complete(done, [&](store::Database& d) -> Lease {
    const double t = impl_->now();
    Lease lease;
    lease.token = auth::hex(auth::random_bytes(16));
    lease.expires_at = t + static_cast<double>(visibility.count()) / 1000.0;
    store::Transaction tx(d);
    impl_->sweep(d, t);
    auto pick = d.prepare(
        "SELECT id, body, is_text, deliveries FROM messages WHERE visible_at <= ?1 "
        "ORDER BY visible_at, id LIMIT ?2");
    pick.bind(1, t).bind(2, static_cast<std::int64_t>(n));
    while (pick.step()) {
      expect(d, pick, 0, {Type::integer}, "id", 0);
      const auto id = pick.integer(0);
      expect(d, pick, 1, {Type::blob, Type::text}, "body", id);
      expect(d, pick, 2, {Type::integer}, "is_text", id);
      expect(d, pick, 3, {Type::integer}, "deliveries", id);
      Message msg;
      msg.id = static_cast<std::uint64_t>(id);
      msg.body = pick.text(1);
      msg.text = pick.integer(2) != 0;
      msg.deliveries = static_cast<int>(pick.integer(3)) + 1;
      lease.messages.push_back(std::move(msg));
    }
    auto take = d.prepare(
        "UPDATE messages SET lease = ?1, visible_at = ?2, deliveries = deliveries + 1 WHERE id = ?3",
        "cannot be written");
    for (const auto& msg : lease.messages) {
      take.bind(1, lease.token).bind(2, lease.expires_at).bind(3, static_cast<std::int64_t>(msg.id)).run();
      take.reset();
    }
    tx.commit();
    return lease;
  });
}

void LocalQueue::async_ack(std::string token, std::vector<std::uint64_t> ids, Handler<std::size_t> done) {
  impl_->complete(done, [&](store::Database& d) -> std::size_t {
    if (ids.empty()) return 0;
    store::Transaction tx(d);
    // Held by this token: a lease that expired and was taken by another lessee acks nothing.
    auto remove = d.prepare("DELETE FROM messages WHERE id = ?1 AND lease = ?2", "cannot be written");
    std::size_t removed = 0;
    for (auto id : ids) {
      remove.bind(1, static_cast<std::int64_t>(id)).bind(2, token).run();
      removed += static_cast<std::size_t>(d.changes());
      remove.reset();
    }
    tx.commit();
    return removed;
  });
}

void LocalQueue::async_nack(std::string token, std::vector<std::uint64_t> ids,
                            std::chrono::milliseconds delay, Handler<std::size_t> done) {
  if (delay.count() < 0) {
    done({make_error_code(errc::invalid_argument),
          "delay: " + std::to_string(delay.count()) + " ms is not valid; expected >= 0"},
         0);
    return;
  }
  impl_->complete(done, [&](store::Database& d) -> std::size_t {
    if (ids.empty()) return 0;
    const double t = impl_->now();
    const int max = impl_->options.max_deliveries;
    store::Transaction tx(d);
    auto bury = d.prepare(
        "INSERT INTO dead_letters (id, body, is_text, enqueued_at, deliveries, dead_at, reason) "
        "SELECT id, body, is_text, enqueued_at, deliveries, ?3, "
        "'delivered ' || deliveries || ' times (max_deliveries ' || ?4 || '); the last delivery was nacked' "
        "FROM messages WHERE id = ?1 AND lease = ?2 AND deliveries >= ?4",
        "cannot be written");
    auto drop = d.prepare("DELETE FROM messages WHERE id = ?1 AND lease = ?2 AND deliveries >= ?3",
                          "cannot be written");
    auto back = d.prepare("UPDATE messages SET lease = NULL, visible_at = ?3 WHERE id = ?1 AND lease = ?2",
                          "cannot be written");
    const double ready_at = t + static_cast<double>(delay.count()) / 1000.0;
    std::size_t returned = 0;
    for (auto id : ids) {
      const auto sid = static_cast<std::int64_t>(id);
      bury.bind(1, sid).bind(2, token).bind(3, t).bind(4, max).run();
      bury.reset();
      if (d.changes() > 0) {
        drop.bind(1, sid).bind(2, token).bind(3, max).run();
        drop.reset();
        ++returned;
        continue;
      }
      back.bind(1, sid).bind(2, token).bind(3, ready_at).run();
      returned += static_cast<std::size_t>(d.changes());
      back.reset();
    }
    tx.commit();
    return returned;
  });
}

void LocalQueue::async_dead_letters(std::size_t limit, Handler<std::vector<DeadLetter>> done) {
  impl_->complete(done, [&](store::Database& d) -> std::vector<DeadLetter> {
    {
      store::Transaction tx(d);
      impl_->sweep(d, impl_->now());
      tx.commit();
    }
    auto rows = d.prepare(
        "SELECT id, body, is_text, deliveries, enqueued_at, dead_at, reason FROM dead_letters "
        "ORDER BY id LIMIT ?1");
    rows.bind(1, limit == 0 ? std::int64_t{-1} : static_cast<std::int64_t>(limit));
    std::vector<DeadLetter> out;
    while (rows.step()) {
      expect(d, rows, 0, {Type::integer}, "id", 0);
      const auto id = rows.integer(0);
      expect(d, rows, 1, {Type::blob, Type::text}, "body", id);
      expect(d, rows, 2, {Type::integer}, "is_text", id);
      expect(d, rows, 3, {Type::integer}, "deliveries", id);
      expect(d, rows, 4, {Type::integer, Type::real}, "enqueued_at", id);
      expect(d, rows, 5, {Type::integer, Type::real}, "dead_at", id);
      expect(d, rows, 6, {Type::text}, "reason", id);
      DeadLetter dl;
      dl.id = static_cast<std::uint64_t>(id);
      dl.body = rows.text(1);
      dl.text = rows.integer(2) != 0;
      dl.deliveries = static_cast<int>(rows.integer(3));
      dl.enqueued_at = rows.real(4);
      dl.dead_at = rows.real(5);
      dl.reason = rows.text(6);
      out.push_back(std::move(dl));
    }
    return out;
  });
}

void LocalQueue::async_stats(Handler<Stats> done) {
  impl_->complete(done, [&](store::Database& d) -> Stats {
    const double t = impl_->now();
    store::Transaction tx(d);
    impl_->sweep(d, t);
    Stats s;
    auto counts = d.prepare(
        "SELECT COALESCE(SUM(visible_at <= ?1), 0), "
        "COALESCE(SUM(visible_at > ?1 AND lease IS NOT NULL), 0), "
        "COALESCE(SUM(visible_at > ?1 AND lease IS NULL), 0) FROM messages");
    counts.bind(1, t);
    if (counts.step()) {
      s.ready = counts.integer(0);
      s.leased = counts.integer(1);
      s.delayed = counts.integer(2);
    }
    auto dead = d.prepare("SELECT COUNT(*) FROM dead_letters");
    if (dead.step()) s.dead = dead.integer(0);
    tx.commit();
    return s;
  });
}

void LocalQueue::close() {
  std::lock_guard lock(impl_->m);
  impl_->db.reset();
}

}  // namespace isthmus::queue
