#include "isthmus/auth/token_store.hpp"

#include <openssl/crypto.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

#include "isthmus/auth/crypto.hpp"
#include "isthmus/error.hpp"
#include "isthmus/store/sqlite.hpp"

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
  SqliteStore(const std::string& path, std::string key) : key_(std::move(key)), db_(open(path, key_)) {
    db_.exec("CREATE TABLE IF NOT EXISTS isthmus_tokens ("
             " id TEXT PRIMARY KEY, sealed BLOB NOT NULL, updated_at REAL NOT NULL)",
             "cannot be created");
  }

  ~SqliteStore() override { OPENSSL_cleanse(key_.data(), key_.size()); }

  std::optional<TokenRecord> load(const std::string& id) override {
    std::lock_guard lock(m_);
    auto st = db_.prepare("SELECT sealed FROM isthmus_tokens WHERE id = ?1", "cannot be read");
    st.bind(1, id);
    if (!st.step()) return std::nullopt;
    return open_record(key_, id, st.text(0), "token store " + db_.path());
  }

  void save(const std::string& id, const TokenRecord& r) override {
    const std::string sealed = seal_record(key_, id, r);
    std::lock_guard lock(m_);
    db_.prepare("INSERT INTO isthmus_tokens (id, sealed, updated_at) VALUES (?1, ?2, ?3) "
                "ON CONFLICT(id) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at",
                "cannot be written")
        .bind(1, id)
        .bind_blob(2, sealed)
        .bind(3, store::unix_now())
        .run();
  }

  void erase(const std::string& id) override {
    std::lock_guard lock(m_);
    db_.prepare("DELETE FROM isthmus_tokens WHERE id = ?1", "cannot be written").bind(1, id).run();
  }

 private:
  static store::Database open(const std::string& path, const std::string& key) {
    if (key.size() != 32)
      throw Error(errc::token_store_error, "token store: the key must be 32 bytes; " + std::string(kKeyHelp));
    store::OpenOptions o;
    o.what = "token store";
    o.code = errc::token_store_error;
    // FULL: a committed save (a rotated refresh token) survives a power loss too.
    o.sync = store::Sync::full;
    return store::Database(path, o);
  }

  std::mutex m_;
  std::string key_;
  store::Database db_;
};

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return {};
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

}  // namespace

std::string seal_record(const std::string& key32, const std::string& id, const TokenRecord& record) {
  std::string plain = to_json(record);
  std::string sealed = aes256gcm_seal(key32, plain, id);
  OPENSSL_cleanse(plain.data(), plain.size());
  return sealed;
}

TokenRecord open_record(const std::string& key32, const std::string& id, const std::string& sealed,
                        const std::string& where) {
  std::string plain = aes256gcm_open(key32, sealed, id);
  try {
    auto r = from_json(plain);
    OPENSSL_cleanse(plain.data(), plain.size());
    return r;
  } catch (const nlohmann::json::exception&) {
    OPENSSL_cleanse(plain.data(), plain.size());
    throw Error(errc::token_store_error, where + ": a record is not valid JSON");
  }
}

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
