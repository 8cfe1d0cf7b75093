// The change log: the latest known state of each record, one entry per (connection, resource,
// record id), fed by webhooks, by fetches that thin webhooks trigger and by reconciliation polls.
//
// A change is applied only when it is newer than the entry it would replace: by the record's
// version, then its updated_at, then a tombstone over a live record, then (the same version and
// time with other contents) the larger canonical JSON, so every order of arrival ends in the
// same state. Each applied change takes the next sequence number; a reader that remembers the
// last number it saw reads every record whose state changed since, once, in its latest state.
// Webhook event ids are kept, so an event delivered twice is applied once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace isthmus::webhook {

// Where a record keeps the fields the change log orders by: dotted paths into its JSON.
struct RecordFields {
  std::string id = "id";
  std::string version = "version";        // an integer (or digits); absent: ordered by time
  std::string updated_at = "updated_at";  // RFC 3339 or Unix seconds
  std::string deleted = "deleted";        // true marks a tombstone
};

struct Change {
  std::string connection;
  std::string resource;
  std::string id;
  std::optional<std::int64_t> version;
  std::optional<std::int64_t> updated_ms;  // Unix milliseconds
  bool deleted = false;
  std::string data;      // the record as canonical JSON; "" for a tombstone without contents
  std::string origin;    // "webhook", "fetch" or "poll"
  std::string event_id;  // the webhook's id, "" for a poll; an id seen before is not applied
};

// Reads a record's identity and order from its JSON (any key order; the data is stored in
// canonical form). Throws isthmus::Error(invalid_argument) naming the field when the id is
// missing or a version or time cannot be read.
Change change_from_record(std::string_view record_json, const RecordFields& fields, std::string connection,
                          std::string resource, std::string origin);

// True when `a` should replace `b` (both for the same record).
bool newer(const Change& a, const Change& b);

// How a webhook event names its record, in the queued form the receiver writes:
// {"route", "event_id", "received_at", "timestamp", "event": <the body as sent>}.
struct EventFormat {
  std::string type = "type";  // path of "<resource>.<action>" in the event
  std::string data = "data";  // path of the record (or of its id alone, for a thin event)
  // "auto": an event whose data holds nothing but the id is thin; "always"; "never".
  std::string thin = "auto";
  std::vector<std::string> delete_actions{"deleted", "removed", "archived"};
};

// A thin event: the record must be fetched; the event id is recorded with the fetched change.
struct ThinEvent {
  std::size_t index = 0;  // position in the batch given to ingest()
  std::string connection, resource, id, event_id;
  bool deleted = false;  // the event says the record was deleted
};

// An event that cannot be read: kept in the log's rejected table, never retried.
struct RejectedEvent {
  std::size_t index = 0;
  std::string event_id, route, reason;
};

struct ApplyCounts {
  std::size_t applied = 0;     // took a new sequence number
  std::size_t stale = 0;       // older than the entry held: kept out
  std::size_t unchanged = 0;   // the state held already
  std::size_t duplicates = 0;  // a webhook event applied before
};

struct Entry {
  std::string connection, resource, id;
  std::optional<std::int64_t> version, updated_ms;
  bool deleted = false;
  std::string data;
  std::string origin;
  std::int64_t seq = 0;
  double changed_at = 0;  // when the change log applied it (Unix seconds)
};

struct LogStats {
  std::int64_t entries = 0, live = 0, deleted = 0, last_seq = 0, events = 0, rejected = 0;
};

class ChangeLog {
 public:
  // Opens or creates the SQLite file at `path`.
  explicit ChangeLog(std::string path);
  ~ChangeLog();
  ChangeLog(const ChangeLog&) = delete;
  ChangeLog& operator=(const ChangeLog&) = delete;

  // Applies `changes` in order, in one transaction. `seen_events` are webhook ids to record as
  // applied without a change of their own (thin events whose fetch a change of another event
  // carried).
  ApplyCounts apply(const std::vector<Change>& changes, const std::vector<std::string>& seen_events = {});
  struct Ingested;
  // Reads queued webhook events (the receiver's envelopes): fat events are applied, in one
  // transaction with the rejected ones; thin events not seen before are returned to be fetched.
  // `connections` maps a route to its connection; other routes file under `default_connection`.
  Ingested ingest(const std::vector<std::string>& envelopes, const EventFormat& format,
                  const RecordFields& fields, const std::vector<std::pair<std::string, std::string>>& connections,
                  const std::string& default_connection);
  // Rejected events, oldest first (0: all): event id, route, reason, envelope, when.
  struct Rejected {
    std::string event_id, route, reason, envelope;
    double at = 0;
  };
  std::vector<Rejected> rejected(std::size_t limit = 0);

  // Which of `event_ids` were applied before.
  std::vector<bool> seen(const std::vector<std::string>& event_ids);

  // Entries with seq > after_seq in seq order, at most `limit`; empty filters match all.
  std::vector<Entry> read(std::int64_t after_seq, std::size_t limit, std::string_view connection = {},
                          std::string_view resource = {});
  std::optional<Entry> get(std::string_view connection, std::string_view resource, std::string_view id);

  // Small named values beside the log (a poll's checkpoint token).
  std::optional<std::string> meta(std::string_view key);
  void set_meta(std::string_view key, std::string_view value);

  LogStats stats(std::string_view connection = {}, std::string_view resource = {});
  const std::string& path() const;
  void close();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct ChangeLog::Ingested {
  ApplyCounts counts;
  std::vector<ThinEvent> thin;
  std::vector<RejectedEvent> rejected;
};

}  // namespace isthmus::webhook
