#include <cctype>

#include <sqlite3.h>

#include "../json_text.hpp"
#include "isthmus/error.hpp"
#include "isthmus/pipeline/sink.hpp"

namespace isthmus::pipeline {

struct SqliteWriter::Db {
  sqlite3* db = nullptr;
  sqlite3_stmt* upsert = nullptr;
  simdjson::dom::parser parser;  // reads the key field of a record

  ~Db() {
    sqlite3_finalize(upsert);
    sqlite3_close_v2(db);
  }
};

namespace {

std::error_code sqlite_failed(sqlite3* db, const std::string& what, const std::string& path, std::string& why) {
  why = what + " " + path + ": " + (db ? sqlite3_errmsg(db) : "out of memory");
  return make_error_code(errc::internal);
}

bool exec(sqlite3* db, const char* sql) { return sqlite3_exec(db, sql, nullptr, nullptr, nullptr) == SQLITE_OK; }

}  // namespace

SqliteWriter::SqliteWriter(std::string path, std::string table, std::string key_field)
    : path_(std::move(path)), table_(std::move(table)), key_field_(std::move(key_field)) {}

SqliteWriter::~SqliteWriter() = default;

std::error_code SqliteWriter::open(std::string& why) {
  if (db_) return {};
  for (char c : table_) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_')) {
      why = "table: '" + table_ + "' is not valid; expected letters, digits and _";
      return make_error_code(errc::invalid_argument);
    }
  }
  auto db = std::make_unique<Db>();
  if (sqlite3_open_v2(path_.c_str(), &db->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                      nullptr) != SQLITE_OK)
    return sqlite_failed(db->db, "cannot open", path_, why);
  sqlite3_busy_timeout(db->db, 5000);  // another reader of the file holds a lock a moment
  const std::string create = "CREATE TABLE IF NOT EXISTS \"" + table_ +
                             "\" (key TEXT PRIMARY KEY, record TEXT NOT NULL)";
  if (!exec(db->db, "PRAGMA journal_mode=WAL") || !exec(db->db, create.c_str()))
    return sqlite_failed(db->db, "cannot set up", path_, why);
  const std::string upsert = "INSERT INTO \"" + table_ + "\" (key, record) VALUES (?, ?) "
                             "ON CONFLICT (key) DO UPDATE SET record = excluded.record";
  if (sqlite3_prepare_v2(db->db, upsert.c_str(), -1, &db->upsert, nullptr) != SQLITE_OK)
    return sqlite_failed(db->db, "cannot prepare the upsert into", path_, why);
  db_ = std::move(db);
  return {};
}

std::error_code SqliteWriter::write(const MappedBatch& batch, bool keys_are_final, std::string& why) {
  if (!db_) {
    why = "SqliteWriter " + path_ + " is not open";
    return make_error_code(errc::invalid_argument);
  }
  sqlite3* db = db_->db;
  if (!exec(db, "BEGIN")) return sqlite_failed(db, "cannot begin a transaction on", path_, why);
  std::string key;
  for (std::size_t i = 0; i < batch.size(); ++i) {
    const std::string_view record = batch.record(i);
    bool found = false;
    if (!keys_are_final) {
      auto doc = db_->parser.parse(record.data(), record.size());
      simdjson::dom::object obj;
      if (!doc.error() && !doc.value_unsafe().get_object().get(obj)) {
        simdjson::dom::element v;
        if (!obj.at_key(key_field_).get(v)) {
          found = true;
          if (v.is_null()) {
            key = "None";  // str(None), as the Python sink filed it
          } else if (auto text = python_text(v)) {
            key = *text;
          } else {
            key.clear();
            append_json(key, v);
          }
        }
      }
    }
    if (!found) {
      if (!batch.key(i)) {
        exec(db, "ROLLBACK");
        why = "record " + std::to_string(i) + " has no key";
        return make_error_code(errc::invalid_argument);
      }
      key = *batch.key(i);
    }
    sqlite3_stmt* st = db_->upsert;
    sqlite3_bind_text(st, 1, key.data(), static_cast<int>(key.size()), SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, record.data(), static_cast<int>(record.size()), SQLITE_STATIC);
    const int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
      auto ec = sqlite_failed(db, "cannot write to", path_, why);
      exec(db, "ROLLBACK");
      return ec;
    }
  }
  if (!exec(db, "COMMIT")) {
    auto ec = sqlite_failed(db, "cannot commit to", path_, why);
    exec(db, "ROLLBACK");
    return ec;
  }
  return {};
}

void SqliteWriter::close() { db_.reset(); }

}  // namespace isthmus::pipeline
