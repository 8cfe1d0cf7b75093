// The one SQLite helper of the core: a connection, its prepared statements and its write
// transactions as RAII types, used by the durable queue, the state store and the token store.
//
// Every failure throws isthmus::Error(errc::state_error) with a message naming the file, what
// was being done and SQLite's reason, so a caller never sees a bare SQLite code. The SQLite
// handles are opaque here: this header does not include sqlite3.h.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "isthmus/error.hpp"

struct sqlite3;
struct sqlite3_stmt;

namespace isthmus::store {

// How hard a commit is pushed to disk. WAL + normal survives a process crash (only a power
// loss may drop the last commits); full survives a power loss too, at one fsync per commit.
enum class Sync { normal, full };

struct OpenOptions {
  // What the file is, in messages: "state file", "queue file", "token store".
  std::string what = "state file";
  bool create = true;     // false: a missing file is an error instead of a new database
  int busy_timeout_ms = 5000;
  Sync sync = Sync::normal;
  // Appended to "is damaged" messages: what the user can do about it.
  std::string restore_hint;
  // The code every failure carries (the token store keeps its own).
  errc code = errc::state_error;
};

class Statement;

class Database {
 public:
  // Opens (or creates, when options.create) the file, in WAL mode with the busy timeout set.
  // A file of zero bytes is refused: SQLite would take it for a new database, and a truncated
  // file would silently start over.
  Database(std::string path, OpenOptions options);
  ~Database();
  Database(Database&& other) noexcept;
  Database& operator=(Database&&) = delete;
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  // Creates `path` holding `schema` (several statements) whole: it is built in a temporary file
  // beside its place and hard-linked in, so a thread or process opening the same new path at the
  // same moment sees no file or a complete one, never an empty one. Returns false when another
  // opener created it first (its file is as complete as this one would be).
  static bool create_whole(const std::string& path, std::string_view schema,
                           const OpenOptions& options);

  const std::string& path() const noexcept { return path_; }
  const OpenOptions& options() const noexcept { return options_; }

  void exec(std::string_view sql, std::string_view doing = "cannot be written");
  Statement prepare(std::string_view sql, std::string_view doing = "cannot be read");

  std::int64_t last_insert_rowid() const noexcept;
  int changes() const noexcept;
  bool in_transaction() const noexcept;

  // The tables of the file and, for each, its column names (sqlite_master + table_info).
  std::vector<std::pair<std::string, std::vector<std::string>>> tables();

  // A consistent copy of the whole database at `dest` (SQLite's backup API), safe while others
  // write. `dest` must not exist; it appears whole or not at all.
  void backup_to(const std::string& dest);

  // The error for SQLite result `rc`: names the file, `doing` and SQLite's message. Busy or
  // locked beyond the timeout says so; anything else is called damaged, with the restore hint.
  [[noreturn]] void fail(int rc, std::string_view doing) const;
  // An error about the file's content (a wrong column type, bad JSON): "<what> <path>: <why>".
  [[noreturn]] void damaged(std::string_view why) const;
  // That error's message, for a caller that reports the damage itself (a decoder above the core).
  std::string damaged_message(std::string_view why) const;

  sqlite3* handle() const noexcept { return db_; }

 private:
  std::string path_;
  OpenOptions options_;
  sqlite3* db_ = nullptr;
};

// One prepared statement. bind() takes 1-based positions; step() returns true while it has a
// row. Text and blob arguments are copied by SQLite (the caller's buffers may go away).
class Statement {
 public:
  Statement(const Database& db, sqlite3_stmt* stmt, std::string_view doing);
  ~Statement();
  Statement(Statement&& other) noexcept;
  Statement& operator=(Statement&&) = delete;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  Statement& bind(int i, std::int64_t v);
  Statement& bind(int i, int v) { return bind(i, static_cast<std::int64_t>(v)); }
  Statement& bind(int i, double v);
  Statement& bind(int i, std::string_view text);
  Statement& bind(int i, const char* text) { return bind(i, std::string_view(text)); }
  Statement& bind(int i, const std::string& text) { return bind(i, std::string_view(text)); }
  Statement& bind_blob(int i, std::string_view bytes);
  Statement& bind_null(int i);
  Statement& bind(int i, const std::optional<std::string>& text);
  Statement& bind(int i, std::optional<std::int64_t> v);
  Statement& bind(int i, std::optional<double> v);

  bool step();
  // step() for a statement that returns no rows.
  void run() {
    while (step()) {
    }
  }
  void reset();

  // Column types as SQLite stores them: a column may hold any type in any row, so readers of
  // files that may be damaged check before they read.
  enum class Type { integer, real, text, blob, null };
  Type type(int col) const;
  bool is_null(int col) const { return type(col) == Type::null; }
  std::int64_t integer(int col) const;
  double real(int col) const;  // an integer column reads as a double too
  std::string text(int col) const;  // text or blob bytes
  std::optional<std::string> optional_text(int col) const;

 private:
  const Database* db_;
  sqlite3_stmt* stmt_ = nullptr;
  std::string doing_;
};

// A write transaction begun with BEGIN IMMEDIATE (the write lock is taken at once, so two
// writers never both read and then both try to upgrade). Rolled back unless commit() ran.
class Transaction {
 public:
  explicit Transaction(Database& db, std::string_view doing = "cannot be written");
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  void commit();

 private:
  Database& db_;
  std::string doing_;
  bool done_ = false;
};

// Seconds since the Unix epoch, as the files store times.
double unix_now();

}  // namespace isthmus::store
