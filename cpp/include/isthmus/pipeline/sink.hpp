// The sink writers of the core: JSON Lines, SQLite, and the HTTP batcher. Each takes a
// MappedBatch, whether a FieldMap filled it from a page or the bindings encoded it from Python
// records, so isthmus.JsonlSink, SqliteSink and HttpSink behave the same on both paths.
// Synchronous: the caller (the run loop, with the GIL released) waits for each call.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "isthmus/http/client.hpp"
#include "isthmus/pipeline/mapped.hpp"

namespace isthmus::pipeline {

// Appends each record as one line. flush() makes the lines durable (fsync unless told not to),
// so a checkpoint written after it never outruns the file.
class JsonlWriter {
 public:
  JsonlWriter(std::string path, bool fsync);
  ~JsonlWriter();
  JsonlWriter(const JsonlWriter&) = delete;
  JsonlWriter& operator=(const JsonlWriter&) = delete;

  // Each returns an errno-category code and says what failed in `why` (the path included).
  std::error_code open(std::string& why);
  std::error_code write(const MappedBatch& batch, std::string& why);
  std::error_code flush(std::string& why);
  void close();
  bool is_open() const noexcept { return fd_ >= 0; }
  const std::string& path() const noexcept { return path_; }

 private:
  std::string path_;
  bool fsync_;
  int fd_ = -1;
};

// Upserts (key, record JSON) rows into a table, one transaction per write; a resend of a key
// replaces its row.
class SqliteWriter {
 public:
  // `key_field`: a record that is an object holding this top-level field is filed under the
  // field's value (as Python's str() words it); any other record under its batch key.
  SqliteWriter(std::string path, std::string table, std::string key_field);
  ~SqliteWriter();
  SqliteWriter(const SqliteWriter&) = delete;
  SqliteWriter& operator=(const SqliteWriter&) = delete;

  std::error_code open(std::string& why);
  // With `keys_are_final` the batch keys are used as they are (the caller has read the key
  // field itself); a record without a key is refused with invalid_argument.
  std::error_code write(const MappedBatch& batch, bool keys_are_final, std::string& why);
  void close();

  struct Db;

 private:
  std::string path_, table_, key_field_;
  std::unique_ptr<Db> db_;
};

struct HttpBatchOptions {
  std::string url;       // absolute; the same for every batch
  http::Headers headers;  // every POST's headers (Content-Type included)
  std::size_t batch_size = 100;
  std::size_t concurrency = 8;
  std::string wrap;              // empty: the body is the array; else {"<wrap>": [...]}
  bool idempotency_key = true;   // "Idempotency-Key: ist-<sha256 of the keys>"
  double timeout = 0;            // seconds per request; 0 = the client's
  // The caller's own key for the batch of records [begin, end) (JSON texts and keys), used
  // instead of the hash when set; an empty key sends no header. An exception it throws comes
  // out of write() or flush() before anything is sent, and the records stay kept.
  std::function<std::string(const std::vector<std::string>& records, const std::vector<std::string>& keys,
                            std::size_t begin, std::size_t end)>
      key_fn;
};

// What the requests of one write or flush cost, counted as isthmus' Counters count them.
struct HttpCounts {
  std::uint64_t requests = 0, retries = 0, status_429 = 0, bytes_in = 0, bytes_out = 0;
  double waited = 0;
};

struct HttpOutcome {
  struct Rejected {
    std::string key;
    std::string record;       // JSON
    http::Response response;  // the 4xx it got on its own
  };
  std::vector<Rejected> rejected;
  // Set when the run must stop: an answer that refuses the request itself (401, 403, 404,
  // 405, 407, 410), a transient status that outlasted the retries, or no answer at all
  // (response.error). The records it covered stay kept.
  std::optional<http::Response> stop;
  HttpCounts counts;
};

// POSTs records as JSON arrays of batch_size, filled across writes, concurrency batches in
// flight through `transport` (the client's governed stack, which does the retrying). A batch
// answered with another 4xx is narrowed record by record.
class HttpBatcher {
 public:
  HttpBatcher(std::shared_ptr<http::Transport> transport, HttpBatchOptions options);

  // Keeps the records (every one must have a key); once concurrency full batches are kept,
  // sends every full one.
  HttpOutcome write(const MappedBatch& batch);
  // Sends every kept record.
  HttpOutcome flush();
  std::size_t buffered() const noexcept { return keys_.size(); }
  void clear();

  // "ist-" + the first 40 hex digits of SHA-256 over the keys joined by 0x1f.
  static std::string idempotency_key(const std::vector<std::string>& keys, std::size_t begin, std::size_t end);

 private:
  HttpOutcome send_kept(std::size_t n);
  void send(const std::vector<std::pair<std::size_t, std::size_t>>& spans, bool narrowing, HttpOutcome& out);
  http::Request request(std::size_t begin, std::size_t end) const;

  std::shared_ptr<http::Transport> transport_;
  HttpBatchOptions options_;
  std::vector<std::string> records_;
  std::vector<std::string> keys_;
};

}  // namespace isthmus::pipeline
