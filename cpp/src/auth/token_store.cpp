#include "isthmus/auth/token_store.hpp"

#include <openssl/crypto.h>
#include <sqlite3.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

#include "isthmus/auth/crypto.hpp"
#include "isthmus/error.hpp"

namespace isthmus::auth {
namespace {

constexpr const char* kKeyHelp =
    "a key is 32 random bytes written as 64 hex digits or base64; "
    "python -c \"import isthmus; print(isthmus.TokenStore.generate_key())\" makes one";

std::string to_json(const TokenRecord& r) {
  nlohmann::json j = {{"access_token", r.access_token}, {"refresh_token", r.refresh_token},
                      {"token_type", r.token_type},     {"scope", r.scope},
                      {"expires_at", r.expires_at}};
  return j.dump();
}

TokenRecord from_json(const std::string& s) {
  auto j = nlohmann::json::parse(s);
  TokenRecord r;
  r.access_token = j.value("access_token", "");
  r.refresh_token = j.value("refresh_token", "");
  r.token_type = j.value("token_type", "Bearer");
  r.scope = j.value("scope", "");
  r.expires_at = j.value("expires_at", 0.0);
  return r;
}

class MemoryStore final : public TokenStore {
 public:
  std::optional<TokenRecord> load(const std::string& id) override {
    std::lock_guard lock(m_);
    auto it = records_.find(id);
    if (it == records_.end()) return std::nullopt;
    return it->second;
  }
  void save(const std::string& id, const TokenRecord& r) override {
    std::lock_guard lock(m_);
    records_[id] = r;
  }
  void erase(const std::string& id) override {
    std::lock_guard lock(m_);
    records_.erase(id);
  }

 private:
  std::mutex m_;
  std::map<std::string, TokenRecord> records_;
};

class SqliteStore final : public TokenStore {
 public:
  SqliteStore(const std::string& path, std::string key) : path_(path), key_(std::move(key)) {
    if (key_.size() != 32)
      throw Error(errc::token_store_error, "token store: the key must be 32 bytes; " + std::string(kKeyHelp));
    if (sqlite3_open_v2(path.c_str(), &db_,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                        nullptr) != SQLITE_OK) {
      std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
      sqlite3_close(db_);
      db_ = nullptr;
      throw Error(errc::token_store_error, "token store " + path + ": cannot open: " + msg);
    }
    // Other processes may hold the write lock for a moment; wait rather than fail.
    sqlite3_busy_timeout(db_, 5000);
    // WAL + FULL: a committed save survives a crash or power loss, readers never block it.
    exec("PRAGMA journal_mode=WAL");
    exec("PRAGMA synchronous=FULL");
    exec("CREATE TABLE IF NOT EXISTS isthmus_tokens ("
         " id TEXT PRIMARY KEY, sealed BLOB NOT NULL, updated_at REAL NOT NULL)");
  }

  ~SqliteStore() override {
    OPENSSL_cleanse(key_.data(), key_.size());
    sqlite3_close(db_);
  }

  std::optional<TokenRecord> load(const std::string& id) override {
    std::lock_guard lock(m_);
    Stmt st(db_, "SELECT sealed FROM isthmus_tokens WHERE id = ?1", path_);
    sqlite3_bind_text(st.s, 1, id.data(), static_cast<int>(id.size()), SQLITE_TRANSIENT);
    int rc = sqlite3_step(st.s);
    if (rc == SQLITE_DONE) return std::nullopt;
    if (rc != SQLITE_ROW) fail("read");
    const auto* p = static_cast<const char*>(sqlite3_column_blob(st.s, 0));
    std::string sealed(p ? p : "", static_cast<std::size_t>(sqlite3_column_bytes(st.s, 0)));
    std::string plain = aes256gcm_open(key_, sealed, id);
    try {
      auto r = from_json(plain);
      OPENSSL_cleanse(plain.data(), plain.size());
      return r;
    } catch (const nlohmann::json::exception&) {
      OPENSSL_cleanse(plain.data(), plain.size());
      throw Error(errc::token_store_error, "token store " + path_ + ": a record is not valid JSON");
    }
  }

  void save(const std::string& id, const TokenRecord& r) override {
    std::string plain = to_json(r);
    const std::string sealed = aes256gcm_seal(key_, plain, id);
    OPENSSL_cleanse(plain.data(), plain.size());
    const double now = std::chrono::duration<double>(
                           std::chrono::system_clock::now().time_since_epoch()).count();
    std::lock_guard lock(m_);
    Stmt st(db_,
            "INSERT INTO isthmus_tokens (id, sealed, updated_at) VALUES (?1, ?2, ?3) "
            "ON CONFLICT(id) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at",
            path_);
    sqlite3_bind_text(st.s, 1, id.data(), static_cast<int>(id.size()), SQLITE_TRANSIENT);
    sqlite3_bind_blob(st.s, 2, sealed.data(), static_cast<int>(sealed.size()), SQLITE_TRANSIENT);
    sqlite3_bind_double(st.s, 3, now);
    if (sqlite3_step(st.s) != SQLITE_DONE) fail("write");
  }

  void erase(const std::string& id) override {
    std::lock_guard lock(m_);
    Stmt st(db_, "DELETE FROM isthmus_tokens WHERE id = ?1", path_);
    sqlite3_bind_text(st.s, 1, id.data(), static_cast<int>(id.size()), SQLITE_TRANSIENT);
    if (sqlite3_step(st.s) != SQLITE_DONE) fail("delete");
  }

 private:
  struct Stmt {
    sqlite3_stmt* s = nullptr;
    Stmt(sqlite3* db, const char* sql, const std::string& path) {
      if (sqlite3_prepare_v2(db, sql, -1, &s, nullptr) != SQLITE_OK)
        throw Error(errc::token_store_error, "token store " + path + ": " + sqlite3_errmsg(db));
    }
    ~Stmt() { sqlite3_finalize(s); }
  };

  void exec(const char* sql) {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
      std::string msg = err ? err : "unknown error";
      sqlite3_free(err);
      throw Error(errc::token_store_error, "token store " + path_ + ": " + msg);
    }
  }

  [[noreturn]] void fail(const char* what) {
    throw Error(errc::token_store_error,
                "token store " + path_ + ": cannot " + what + ": " + sqlite3_errmsg(db_));
  }

  std::mutex m_;
  std::string path_;
  std::string key_;
  sqlite3* db_ = nullptr;
};

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return {};
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

}  // namespace

std::shared_ptr<TokenStore> make_memory_token_store() { return std::make_shared<MemoryStore>(); }

std::shared_ptr<TokenStore> make_sqlite_token_store(const std::string& path, std::string key32) {
  return std::make_shared<SqliteStore>(path, std::move(key32));
}

std::string parse_token_key(const std::string& text, const std::string& source) {
  const std::string t = trim(text);
  std::string key;
  try {
    if (t.size() == 64) key = unhex(t);
    else key = unbase64(t);
  } catch (const Error&) {
    key.clear();
  }
  if (key.size() != 32)
    throw Error(errc::token_store_error,
                "token store key from " + source + " is not 32 bytes; " + std::string(kKeyHelp));
  return key;
}

std::string token_key_from_env(const std::string& variable) {
  const char* v = std::getenv(variable.c_str());
  if (!v || !*v)
    throw Error(errc::token_store_error, "token store: the environment variable " + variable +
                                             " is not set; " + std::string(kKeyHelp));
  return parse_token_key(v, "the environment variable " + variable);
}

std::string token_key_from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw Error(errc::token_store_error,
                "token store: cannot read the key file " + path + "; " + std::string(kKeyHelp));
  std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (raw.size() == 32) return raw;
  return parse_token_key(raw, "the key file " + path);
}

}  // namespace isthmus::auth
