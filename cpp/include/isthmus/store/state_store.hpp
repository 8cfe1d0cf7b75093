// The state store: a pipeline's checkpoints, dead letters and run history in one SQLite file
// (WAL), over the core's one SQLite helper (sqlite.hpp). The tables stay plain, so pandas and
// any SQLite tool read them; older files gain the columns added since when first opened.
//
// JSON columns (checkpoint positions, run counts, dead-letter records) are text the caller
// wrote and decodes: the store checks that each value read back has the storage type its
// column must hold (SQLite itself would keep anything anywhere), and that text is UTF-8.
//
// Safe to share between threads (one connection behind a mutex) and between processes (each
// write is a BEGIN IMMEDIATE transaction; a notebook reads while a run writes). Every failure
// throws isthmus::Error(errc::state_error) naming the file; a bad `where` condition throws
// errc::invalid_argument.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace isthmus::store {

struct StateStoreOptions {
  // false: a missing file is an error instead of a new state file (tools that only read).
  bool create = true;
  int busy_timeout_ms = 5000;
};

// Where a pipeline resumes, as JSON text (nullopt: NULL).
struct Checkpoint {
  std::optional<std::string> position;
  std::optional<std::string> incremental;
};

// What claim() found and did.
struct Claim {
  Checkpoint checkpoint;  // after the claim
  // The identity the checkpoint was filed under before, when adopt moved it to a new one.
  std::optional<std::string> moved_from;
};

// A record that failed at one stage, as a run reports it.
struct NewDeadLetter {
  std::string record_key;
  std::string stage;   // map, sink
  std::string record;  // JSON text
  std::string error;
  std::optional<std::string> traceback;
  std::optional<std::int64_t> http_status;
  std::optional<std::string> response_excerpt;
  std::int64_t attempts = 1;
};

// A dead letter as the file holds it: the failure, and its history in the file.
struct DeadLetter : NewDeadLetter {
  std::int64_t id = 0;
  double first_seen = 0;
  double last_seen = 0;
  std::optional<std::int64_t> run_id;
  std::optional<double> resolved_at;
  std::optional<std::string> resolution;  // replayed, superseded; nullopt while open
};

struct Run {
  std::int64_t id = 0;
  std::string pipeline;
  double started_at = 0;
  std::optional<double> finished_at;
  std::string status;  // running, completed, failed, interrupted
  std::string counts;  // JSON text
  std::optional<std::string> error;
};

// One checkpoint commit: everything in it lands in one transaction, or none of it does.
struct Commit {
  std::string pipeline;
  std::int64_t run_id = 0;
  std::optional<std::string> position;  // JSON text; nullopt when the source is done
  // The pipeline the dead letters (and superseded keys) belong to, when the checkpoint is a
  // part of it (a partition's chain on workers); empty: `pipeline`.
  std::string dead_letters_of;
  // Whether `incremental` replaces the stored incremental state (false leaves it as it is).
  bool set_incremental = false;
  std::optional<std::string> incremental;
  std::vector<NewDeadLetter> dead_letters;
  std::vector<std::int64_t> resolved;    // dead letters a replay delivered
  std::vector<std::string> superseded;   // keys of records delivered anew: their open dead letters
};

// One value bound to a `?` of a where condition.
using SqlValue = std::variant<std::monostate, std::int64_t, double, std::string>;

struct DeadLetterQuery {
  std::optional<std::string> pipeline;
  std::optional<std::int64_t> run_id;
  enum class Include { open, open_and_superseded, all };
  Include include = Include::open;
  std::string where;  // an SQL condition on the dead-letter columns; empty for none
  std::vector<SqlValue> params;
};

// One more failed attempt of a dead letter (a replay that failed).
struct Attempt {
  std::string error;
  std::optional<std::int64_t> http_status;
  std::optional<std::string> response_excerpt;
  std::optional<std::string> traceback;
  // The stage it fails at now and the record as that stage saw it (JSON text), when it moved.
  std::optional<std::string> stage;
  std::optional<std::string> record;
};

class StateStore {
 public:
  // Opens `path` (":memory:" for a state that lives only as long as the store), creating it
  // whole when missing and migrating an older layout.
  explicit StateStore(std::string path, StateStoreOptions options = {});
  ~StateStore();
  StateStore(const StateStore&) = delete;
  StateStore& operator=(const StateStore&) = delete;

  const std::string& path() const noexcept;
  // The columns every read returns, in order (the dead_letters table minus `pipeline`).
  static const std::vector<std::string>& dead_letter_columns();
  // What a user can do about a damaged file, appended to those errors.
  static const std::string& restore_hint();
  // The text of the error for a damaged file: "state file <path>: <why>. <hint>".
  std::string damaged_message(std::string_view why) const;

  // -- runs
  std::int64_t begin_run(const std::string& pipeline);
  void finish_run(std::int64_t run_id, const std::string& status, const std::string& counts,
                  const std::optional<std::string>& error);
  std::vector<Run> runs(const std::optional<std::string>& pipeline);

  // -- checkpoints
  Checkpoint load(const std::string& pipeline);
  // The checkpoint a run of `pipeline` reading `identity` resumes from. Another source's
  // checkpoint under the same name is refused unless `adopt`; then (as for a checkpoint from
  // before identities were kept) it is filed under `identity`.
  Claim claim(const std::string& pipeline, const std::string& identity, bool adopt);
  std::optional<std::string> identity(const std::string& pipeline);
  void commit(const Commit& c);

  // -- dead letters
  void resolve(const std::vector<std::int64_t>& ids);
  std::vector<std::string> open_dead_letter_keys(const std::string& pipeline);
  std::vector<DeadLetter> dead_letters(const DeadLetterQuery& q);
  void bump_dead_letter(std::int64_t id, const Attempt& a);

  // Every pipeline with a run, a checkpoint or a dead letter in the file, sorted.
  std::vector<std::string> pipelines();

  // A consistent copy of the whole file at `dest` (which must not exist), safe while others write.
  void backup(const std::string& dest);
  // Closes the connection; any later call throws state_error.
  void close();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace isthmus::store
