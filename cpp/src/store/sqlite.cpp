#include "isthmus/store/sqlite.hpp"

#include <sqlite3.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <system_error>

namespace isthmus::store {
namespace {

namespace fs = std::filesystem;

std::string random_suffix() {
  static constexpr char kHex[] = "0123456789abcdef";
  std::random_device rd;
  std::string out;
  for (int i = 0; i < 16; ++i) out.push_back(kHex[rd() % 16]);
  return out;
}

bool is_busy(int rc) {
  const int primary = rc & 0xff;
  return primary == SQLITE_BUSY || primary == SQLITE_LOCKED;
}

// Failures that say nothing about the file's content: the user fixes the folder, the disk or
// the permissions, not the file.
bool is_environment(int rc) {
  switch (rc & 0xff) {
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
    case SQLITE_READONLY:
    case SQLITE_FULL:
    case SQLITE_IOERR:
    case SQLITE_NOMEM:
    case SQLITE_INTERRUPT:
      return true;
    default:
      return false;
  }
}

void unlink_quietly(const std::string& path) {
  std::error_code ignored;
  for (const char* suffix : {"", "-wal", "-shm", "-journal"}) fs::remove(path + suffix, ignored);
}

// Closes a connection that may still have statements; used on paths that already failed.
struct Handle {
  sqlite3* db = nullptr;
  ~Handle() { sqlite3_close_v2(db); }
};

}  // namespace

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

Database::Database(std::string path, OpenOptions options)
    : path_(std::move(path)), options_(std::move(options)) {
  const bool memory = path_ == ":memory:";
  if (!memory) {
    std::error_code ec;
    const bool exists = fs::exists(path_, ec);
    if (!exists && !options_.create)
      throw Error(options_.code, options_.what + " " + path_ + " does not exist");
    if (exists && fs::is_regular_file(path_, ec) && fs::file_size(path_, ec) == 0)
      throw Error(options_.code,
                  options_.what + " " + path_ + " is empty (truncated?): it holds nothing. " +
                      options_.restore_hint);
  }
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX;
  if (options_.create) flags |= SQLITE_OPEN_CREATE;
  const int rc = sqlite3_open_v2(path_.c_str(), &db_, flags, nullptr);
  if (rc != SQLITE_OK) {
    if (!db_) throw Error(options_.code, options_.what + " " + path_ + " cannot be opened: out of memory");
    try {
      fail(rc, "cannot be opened");
    } catch (...) {
      sqlite3_close_v2(db_);
      db_ = nullptr;
      throw;
    }
  }
  sqlite3_extended_result_codes(db_, 1);
  // Other processes may hold the write lock for a moment: wait rather than fail.
  sqlite3_busy_timeout(db_, options_.busy_timeout_ms);
  try {
    // The first statement reads the header: a file that is not SQLite fails here.
    exec("PRAGMA journal_mode=WAL", "cannot be opened");
    exec(options_.sync == Sync::full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL",
         "cannot be opened");
  } catch (...) {
    sqlite3_close_v2(db_);
    db_ = nullptr;
    throw;
  }
}

Database::~Database() {
  if (db_) sqlite3_close_v2(db_);
}

Database::Database(Database&& other) noexcept
    : path_(std::move(other.path_)), options_(std::move(other.options_)), db_(other.db_) {
  other.db_ = nullptr;
}

bool Database::create_whole(const std::string& path, std::string_view schema,
                            const OpenOptions& options) {
  const fs::path target = fs::absolute(path);
  std::error_code ec;
  if (!fs::is_directory(target.parent_path(), ec))
    throw Error(options.code, options.what + " " + path + " cannot be created: its folder " +
                                  target.parent_path().string() + " does not exist");
  const std::string tmp =
      (target.parent_path() / (target.filename().string() + "." + random_suffix() + ".new")).string();
  auto write_schema = [&](const std::string& where) {
    OpenOptions o = options;
    o.create = true;
    Database db(where, o);
    Transaction tx(db, "cannot be created");
    db.exec(schema, "cannot be created");
    tx.commit();
  };  // closing folds the WAL into the file, so the file linked in is complete
  bool created = true;
  try {
    write_schema(tmp);
    if (::link(tmp.c_str(), path.c_str()) != 0) {
      if (errno == EEXIST) {
        created = false;
      } else {
        // A file system without hard links: a file moved over the path could replace another
        // opener's, so the schema is written in place (the narrow race returns).
        write_schema(path);
      }
    }
  } catch (const Error& e) {
    unlink_quietly(tmp);
    // The message names the temporary file; the user knows the path they asked for.
    std::string msg = e.what();
    for (auto at = msg.find(tmp); at != std::string::npos; at = msg.find(tmp, at + path.size()))
      msg.replace(at, tmp.size(), path);
    throw Error(e.code(), msg);
  }
  unlink_quietly(tmp);
  return created;
}

void Database::exec(std::string_view sql, std::string_view doing) {
  const std::string text(sql);
  char* err = nullptr;
  const int rc = sqlite3_exec(db_, text.c_str(), nullptr, nullptr, &err);
  sqlite3_free(err);  // the same text as sqlite3_errmsg, which fail() reads
  if (rc != SQLITE_OK) fail(rc, doing);
}

Statement Database::prepare(std::string_view sql, std::string_view doing) {
  sqlite3_stmt* stmt = nullptr;
  const int rc = sqlite3_prepare_v2(db_, sql.data(), static_cast<int>(sql.size()), &stmt, nullptr);
  if (rc != SQLITE_OK) {
    sqlite3_finalize(stmt);
    fail(rc, doing);
  }
  return Statement(*this, stmt, doing);
}

std::int64_t Database::last_insert_rowid() const noexcept { return sqlite3_last_insert_rowid(db_); }
int Database::changes() const noexcept { return sqlite3_changes(db_); }
bool Database::in_transaction() const noexcept { return db_ && sqlite3_get_autocommit(db_) == 0; }

std::vector<std::pair<std::string, std::vector<std::string>>> Database::tables() {
  std::vector<std::pair<std::string, std::vector<std::string>>> out;
  auto names = prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name");
  while (names.step()) out.push_back({names.text(0), {}});
  for (auto& [table, columns] : out) {
    auto info = prepare("SELECT name FROM pragma_table_info(?1)");
    info.bind(1, table);
    while (info.step()) columns.push_back(info.text(0));
  }
  return out;
}

void Database::backup_to(const std::string& dest) {
  const std::string prefix = "backup of " + path_ + ": ";
  std::error_code ec;
  if (fs::exists(dest, ec))
    throw Error(options_.code, prefix + dest + " already exists; choose a new name");
  const fs::path target = fs::absolute(dest);
  const std::string tmp =
      (target.parent_path() / (target.filename().string() + "." + random_suffix() + ".partial")).string();
  Handle copy;
  int rc = sqlite3_open_v2(tmp.c_str(), &copy.db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
  if (rc != SQLITE_OK) {
    const std::string why = copy.db ? sqlite3_errmsg(copy.db) : sqlite3_errstr(rc);
    unlink_quietly(tmp);
    throw Error(options_.code, prefix + dest + " cannot be created: " + why);
  }
  sqlite3_backup* b = sqlite3_backup_init(copy.db, "main", db_, "main");
  if (!b) {
    const std::string why = sqlite3_errmsg(copy.db);
    unlink_quietly(tmp);
    throw Error(options_.code, prefix + dest + " cannot be written: " + why);
  }
  rc = sqlite3_backup_step(b, -1);
  sqlite3_backup_finish(b);
  if (rc != SQLITE_DONE) {
    sqlite3_close_v2(copy.db);
    copy.db = nullptr;
    unlink_quietly(tmp);
    fail(rc, "cannot be backed up");
  }
  sqlite3_close_v2(copy.db);
  copy.db = nullptr;
  // Put in place whole, so a crash mid-copy never leaves a truncated backup at dest.
  if (::link(tmp.c_str(), dest.c_str()) != 0) {
    const int err = errno;
    if (err == EEXIST) {
      unlink_quietly(tmp);
      throw Error(options_.code, prefix + dest + " already exists; choose a new name");
    }
    fs::rename(tmp, dest, ec);  // a file system without hard links
    if (ec) {
      unlink_quietly(tmp);
      throw Error(options_.code, prefix + dest + " cannot be created: " + ec.message());
    }
    return;
  }
  unlink_quietly(tmp);
}

void Database::fail(int rc, std::string_view doing) const {
  std::string why = db_ && sqlite3_extended_errcode(db_) == rc ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
  std::string head = options_.what + " " + path_ + " " + std::string(doing);
  if (is_busy(rc))
    throw Error(options_.code, head + ": another process held it locked for more than " +
                                   std::to_string(options_.busy_timeout_ms / 1000) + " s (" + why + ")");
  if (is_environment(rc)) throw Error(options_.code, head + ": " + why);
  std::string msg = head + " (" + why + "): it is damaged or not an isthmus " + options_.what + ".";
  if (!options_.restore_hint.empty()) msg += " " + options_.restore_hint;
  throw Error(options_.code, msg);
}

void Database::damaged(std::string_view why) const { throw Error(options_.code, damaged_message(why)); }

std::string Database::damaged_message(std::string_view why) const {
  std::string msg = options_.what + " " + path_ + ": " + std::string(why) + ".";
  if (!options_.restore_hint.empty()) msg += " " + options_.restore_hint;
  return msg;
}

Statement::Statement(const Database& db, sqlite3_stmt* stmt, std::string_view doing)
    : db_(&db), stmt_(stmt), doing_(doing) {}

Statement::~Statement() { sqlite3_finalize(stmt_); }

Statement::Statement(Statement&& other) noexcept
    : db_(other.db_), stmt_(other.stmt_), doing_(std::move(other.doing_)) {
  other.stmt_ = nullptr;
}

Statement& Statement::bind(int i, std::int64_t v) {
  if (int rc = sqlite3_bind_int64(stmt_, i, v); rc != SQLITE_OK) db_->fail(rc, doing_);
  return *this;
}

Statement& Statement::bind(int i, double v) {
  if (int rc = sqlite3_bind_double(stmt_, i, v); rc != SQLITE_OK) db_->fail(rc, doing_);
  return *this;
}

Statement& Statement::bind(int i, std::string_view text) {
  if (int rc = sqlite3_bind_text64(stmt_, i, text.data(), text.size(), SQLITE_TRANSIENT, SQLITE_UTF8);
      rc != SQLITE_OK)
    db_->fail(rc, doing_);
  return *this;
}

Statement& Statement::bind_blob(int i, std::string_view bytes) {
  // A zero-length blob needs a non-null pointer, or SQLite binds NULL.
  static const char kEmpty = 0;
  if (int rc = sqlite3_bind_blob64(stmt_, i, bytes.empty() ? &kEmpty : bytes.data(), bytes.size(),
                                   SQLITE_TRANSIENT);
      rc != SQLITE_OK)
    db_->fail(rc, doing_);
  return *this;
}

Statement& Statement::bind_null(int i) {
  if (int rc = sqlite3_bind_null(stmt_, i); rc != SQLITE_OK) db_->fail(rc, doing_);
  return *this;
}

Statement& Statement::bind(int i, const std::optional<std::string>& text) {
  return text ? bind(i, std::string_view(*text)) : bind_null(i);
}
Statement& Statement::bind(int i, std::optional<std::int64_t> v) { return v ? bind(i, *v) : bind_null(i); }
Statement& Statement::bind(int i, std::optional<double> v) { return v ? bind(i, *v) : bind_null(i); }

bool Statement::step() {
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  db_->fail(rc, doing_);
}

void Statement::reset() {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

Statement::Type Statement::type(int col) const {
  switch (sqlite3_column_type(stmt_, col)) {
    case SQLITE_INTEGER: return Type::integer;
    case SQLITE_FLOAT: return Type::real;
    case SQLITE_TEXT: return Type::text;
    case SQLITE_BLOB: return Type::blob;
    default: return Type::null;
  }
}

std::int64_t Statement::integer(int col) const { return sqlite3_column_int64(stmt_, col); }
double Statement::real(int col) const { return sqlite3_column_double(stmt_, col); }

std::string Statement::text(int col) const {
  const void* p = sqlite3_column_blob(stmt_, col);
  const auto n = static_cast<std::size_t>(sqlite3_column_bytes(stmt_, col));
  return p ? std::string(static_cast<const char*>(p), n) : std::string();
}

std::optional<std::string> Statement::optional_text(int col) const {
  if (is_null(col)) return std::nullopt;
  return text(col);
}

Transaction::Transaction(Database& db, std::string_view doing) : db_(db), doing_(doing) {
  db_.exec("BEGIN IMMEDIATE", doing_);
}

Transaction::~Transaction() {
  // SQLite may have rolled back already (a damaged page or a full disk ends the transaction).
  if (!done_ && db_.in_transaction()) sqlite3_exec(db_.handle(), "ROLLBACK", nullptr, nullptr, nullptr);
}

void Transaction::commit() {
  db_.exec("COMMIT", doing_);
  done_ = true;
}

}  // namespace isthmus::store
