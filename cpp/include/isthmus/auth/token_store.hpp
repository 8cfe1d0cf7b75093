// Where OAuth2 tokens live between requests and across process restarts. One record per
// credential id. A record is saved before its tokens are used, so a crash can never lose the
// only valid (rotated) refresh token.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <system_error>

namespace isthmus::auth {

struct TokenRecord {
  std::string access_token;
  std::string refresh_token;
  std::string token_type = "Bearer";
  std::string scope;
  double expires_at = 0;  // unix seconds; 0 = unknown
};

class TokenStore {
 public:
  virtual ~TokenStore() = default;
  // Thread-safe. Throw isthmus::Error (errc::token_store_error / token_store_tampered).
  virtual std::optional<TokenRecord> load(const std::string& id) = 0;
  // Returns only once the record is durable (for the SQLite store: committed and synced).
  virtual void save(const std::string& id, const TokenRecord& record) = 0;
  virtual void erase(const std::string& id) = 0;
};

// Serializes token requests across the processes that share a store: a credential given one
// takes it before asking the token endpoint, re-reads the store (another process may have
// refreshed meanwhile), and gives it back once the new record is saved.
class RefreshLock {
 public:
  virtual ~RefreshLock() = default;
  using Release = std::function<void()>;
  // Completes once (on any thread) holding the lock for `id`, or with an error. The lock lapses
  // by itself `lease` seconds after it was taken, so a holder that died blocks nobody for long.
  virtual void acquire(const std::string& id, double lease,
                       std::function<void(std::error_code, Release release)> done) = 0;
};

std::shared_ptr<TokenStore> make_memory_token_store();

// The stored form of a record, for every store that keeps records outside the process: its
// JSON sealed with AES-256-GCM under `key32`, the id as associated data. open_record() throws
// errc::token_store_tampered (wrong key, altered) or token_store_error (`where` names the store).
std::string seal_record(const std::string& key32, const std::string& id, const TokenRecord& record);
TokenRecord open_record(const std::string& key32, const std::string& id, const std::string& sealed,
                        const std::string& where);

// SQLite (WAL, synchronous=FULL) with each record sealed by AES-256-GCM under `key32`, the id
// as associated data so a record cannot be moved to another credential. Several processes may
// share the file.
std::shared_ptr<TokenStore> make_sqlite_token_store(const std::string& path, std::string key32);

// The 32-byte key from text: 64 hex digits or base64 of 32 bytes (surrounding whitespace
// ignored). `source` names where it came from, for the error message.
std::string parse_token_key(const std::string& text, const std::string& source);
// The key from an environment variable or a key file (raw 32 bytes, or text as above); throws
// errc::token_store_error saying what is missing and how to make a key.
std::string token_key_from_env(const std::string& variable);
std::string token_key_from_file(const std::string& path);

}  // namespace isthmus::auth
