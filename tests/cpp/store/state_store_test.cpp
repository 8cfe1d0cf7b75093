#include "isthmus/store/state_store.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <thread>

#include "isthmus/error.hpp"
#include "isthmus/store/sqlite.hpp"
#include "support/temp_dir.hpp"

namespace isthmus::store {
namespace {

namespace fs = std::filesystem;
using isthmus::testing::TempDir;

std::string error_of(const std::function<void()>& f, errc expected = errc::state_error) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), make_error_code(expected)) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return {};
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

NewDeadLetter dead(const std::string& key, const std::string& stage = "map") {
  NewDeadLetter d;
  d.record_key = key;
  d.stage = stage;
  d.record = "{\"id\":\"" + key + "\"}";
  d.error = "boom";
  return d;
}

// A second connection on the same file, as pandas or the sqlite3 command would open it.
Database raw(const std::string& path) { return Database(path, {}); }

std::int64_t count(const std::string& path, const std::string& sql) {
  auto db = raw(path);
  auto st = db.prepare(sql);
  EXPECT_TRUE(st.step());
  return st.integer(0);
}

std::vector<std::string> columns_of(const std::string& path, const std::string& table) {
  auto db = raw(path);
  for (auto& [name, columns] : db.tables())
    if (name == table) return columns;
  return {};
}

// The layouts of older releases, as they created their files.
constexpr const char* kLayout1 = R"sql(
CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, pipeline TEXT NOT NULL, started_at REAL NOT NULL,
    finished_at REAL, status TEXT NOT NULL, counts TEXT NOT NULL DEFAULT '{}', error TEXT);
CREATE TABLE checkpoints (pipeline TEXT PRIMARY KEY, position TEXT, incremental TEXT,
    updated_at REAL NOT NULL, run_id INTEGER);
CREATE TABLE dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT, pipeline TEXT NOT NULL,
    record_key TEXT NOT NULL, stage TEXT NOT NULL, record TEXT NOT NULL, error TEXT NOT NULL, traceback TEXT,
    http_status INTEGER, response_excerpt TEXT, attempts INTEGER NOT NULL DEFAULT 1, first_seen REAL NOT NULL,
    last_seen REAL NOT NULL, run_id INTEGER, resolved_at REAL, UNIQUE (pipeline, stage, record_key));
INSERT INTO runs (pipeline, started_at, finished_at, status, counts) VALUES ('p', 1, 2, 'completed', '{"read": 4}');
INSERT INTO checkpoints VALUES ('p', '{"unit": 2}', NULL, 2, 1);
INSERT INTO dead_letters (pipeline, record_key, stage, record, error, first_seen, last_seen, run_id, resolved_at)
    VALUES ('p', 'a', 'map', '{}', 'boom', 1, 1, 1, NULL), ('p', 'b', 'map', '{}', 'boom', 1, 1, 1, 3.0);
)sql";
// Layout 2 kept the checkpoint's identity; resolutions came after.
constexpr const char* kLayout2Extra = "ALTER TABLE checkpoints ADD COLUMN identity TEXT;"
                                      "UPDATE checkpoints SET identity = 'http://api/v1/contacts';";

TEST(StateStore, ANewFileHoldsTheWholeSchemaAndRoundTripsEachTable) {
  TempDir tmp("isthmus-state-");
  const auto path = tmp.file("s.db");
  StateStore s(path);
  const auto run = s.begin_run("p");
  Commit c;
  c.pipeline = "p";
  c.run_id = run;
  c.position = "{\"cursor\":\"c1\"}";
  c.dead_letters = {dead("a")};
  c.dead_letters[0].http_status = 422;
  s.commit(c);
  s.finish_run(run, "completed", "{\"read\": 3}", std::nullopt);

  EXPECT_EQ(s.load("p").position, "{\"cursor\":\"c1\"}");
  EXPECT_FALSE(s.load("p").incremental);
  EXPECT_FALSE(s.load("other").position);
  const auto runs = s.runs("p");
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].status, "completed");
  EXPECT_EQ(runs[0].counts, "{\"read\": 3}");
  EXPECT_TRUE(runs[0].finished_at);
  const auto letters = s.dead_letters({});
  ASSERT_EQ(letters.size(), 1u);
  EXPECT_EQ(letters[0].record_key, "a");
  EXPECT_EQ(letters[0].http_status, 422);
  EXPECT_EQ(letters[0].run_id, run);
  EXPECT_EQ(s.pipelines(), std::vector<std::string>{"p"});
  EXPECT_EQ(columns_of(path, "dead_letters").size(), StateStore::dead_letter_columns().size() + 1);
  // Readable by another connection while this one is open: plain tables in WAL mode.
  auto other = raw(path);
  auto mode = other.prepare("PRAGMA journal_mode");
  ASSERT_TRUE(mode.step());
  EXPECT_EQ(mode.text(0), "wal");
}

TEST(StateStore, ACommitThatFailsHalfwayLeavesCheckpointAndDeadLettersAsTheyWere) {
  TempDir tmp("isthmus-state-");
  const auto path = tmp.file("s.db");
  StateStore s(path);
  Commit first;
  first.pipeline = "p";
  first.position = "{\"unit\":1}";
  s.commit(first);
  // SQLite itself refuses the third dead letter, after two were written in the transaction.
  raw(path).exec("CREATE TRIGGER refuse BEFORE INSERT ON dead_letters WHEN NEW.record_key = 'boom' "
                 "BEGIN SELECT RAISE(ABORT, 'refused on purpose'); END");
  Commit c;
  c.pipeline = "p";
  c.position = "{\"unit\":2}";
  c.dead_letters = {dead("a"), dead("b"), dead("boom")};
  const auto msg = error_of([&] { s.commit(c); });
  EXPECT_TRUE(contains(msg, path)) << msg;
  EXPECT_EQ(s.load("p").position, "{\"unit\":1}");
  EXPECT_TRUE(s.dead_letters({}).empty());
  // And the store goes on working after the failed transaction.
  c.dead_letters.pop_back();
  s.commit(c);
  EXPECT_EQ(s.dead_letters({}).size(), 2u);
}

TEST(StateStore, TheSameRecordFailingAgainIsOneDeadLetterWithMoreAttempts) {
  TempDir tmp("isthmus-state-");
  StateStore s(tmp.file("s.db"));
  Commit c;
  c.pipeline = "p";
  c.dead_letters = {dead("a", "sink")};
  s.commit(c);
  c.dead_letters[0].error = "409";
  s.commit(c);
  auto rows = s.dead_letters({});
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].attempts, 2);
  EXPECT_EQ(rows[0].error, "409");
  // Delivered anew by a later run: superseded, no longer open, still there for the record.
  Commit later;
  later.pipeline = "p";
  later.superseded = {"a"};
  s.commit(later);
  EXPECT_TRUE(s.dead_letters({}).empty());
  EXPECT_TRUE(s.open_dead_letter_keys("p").empty());
  DeadLetterQuery q;
  q.include = DeadLetterQuery::Include::open_and_superseded;
  rows = s.dead_letters(q);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].resolution, "superseded");
  s.resolve({rows[0].id});
  q.include = DeadLetterQuery::Include::all;
  EXPECT_EQ(s.dead_letters(q)[0].resolution, "replayed");
}

TEST(StateStore, AnIncrementalStateIsKeptUnlessTheCommitSetsIt) {
  TempDir tmp("isthmus-state-");
  StateStore s(tmp.file("s.db"));
  Commit c;
  c.pipeline = "p";
  c.set_incremental = true;
  c.incremental = "{\"max\":\"2024\"}";
  s.commit(c);
  Commit mid;
  mid.pipeline = "p";
  mid.position = "{\"unit\":100}";
  s.commit(mid);
  EXPECT_EQ(s.load("p").incremental, "{\"max\":\"2024\"}");
  mid.set_incremental = true;  // to NULL
  s.commit(mid);
  EXPECT_FALSE(s.load("p").incremental);
}

TEST(StateStore, AFailedReplayAtAnotherStageReplacesThatStagesDeadLetter) {
  TempDir tmp("isthmus-state-");
  StateStore s(tmp.file("s.db"));
  Commit c;
  c.pipeline = "p";
  c.dead_letters = {dead("k", "map"), dead("k", "sink")};
  c.dead_letters[0].traceback = "Traceback: map";
  s.commit(c);
  auto rows = s.dead_letters({});
  ASSERT_EQ(rows.size(), 2u);
  Attempt a;
  a.error = "refused";
  a.http_status = 400;
  a.stage = "sink";
  a.record = "{\"mapped\":true}";
  s.bump_dead_letter(rows[0].id, a);
  rows = s.dead_letters({});
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].stage, "sink");
  EXPECT_EQ(rows[0].record, "{\"mapped\":true}");
  EXPECT_EQ(rows[0].attempts, 2);
  EXPECT_FALSE(rows[0].traceback);  // the map stage's traceback no longer applies
  Attempt again;
  again.error = "still refused";
  s.bump_dead_letter(rows[0].id, again);
  EXPECT_EQ(s.dead_letters({})[0].attempts, 3);
}

TEST(StateStore, AClaimRefusesAnotherSourcesCheckpointUnlessAdopted) {
  TempDir tmp("isthmus-state-");
  const auto path = tmp.file("s.db");
  StateStore s(path);
  auto claim = s.claim("p", "http://a/v1", false);
  EXPECT_FALSE(claim.moved_from);
  EXPECT_EQ(s.identity("p"), "http://a/v1");
  EXPECT_FALSE(s.identity("q"));
  const auto msg = error_of([&] { s.claim("p", "http://b/v1", false); });
  EXPECT_TRUE(contains(msg, path) && contains(msg, "http://a/v1") && contains(msg, "http://b/v1")) << msg;
  EXPECT_TRUE(contains(msg, "name='p'")) << msg;
  claim = s.claim("p", "http://b/v1", true);
  EXPECT_EQ(claim.moved_from, "http://a/v1");
  EXPECT_EQ(s.identity("p"), "http://b/v1");
}

TEST(StateStore, EachOlderLayoutMigratesToTheCurrentOne) {
  for (const bool layout2 : {false, true}) {
    SCOPED_TRACE(layout2 ? "layout 2" : "layout 1");
    TempDir tmp("isthmus-state-");
    const auto path = tmp.file("old.db");
    {
      auto db = raw(path);
      db.exec(kLayout1);
      if (layout2) db.exec(kLayout2Extra);
    }
    StateStore s(path);
    EXPECT_EQ(columns_of(path, "checkpoints").back(), "identity");
    EXPECT_EQ(columns_of(path, "dead_letters").back(), "resolution");
    // What the old file held is all there; a dead letter resolved back then was replayed.
    EXPECT_EQ(s.load("p").position, "{\"unit\": 2}");
    EXPECT_EQ(s.identity("p"), layout2 ? std::optional<std::string>("http://api/v1/contacts") : std::nullopt);
    DeadLetterQuery all;
    all.include = DeadLetterQuery::Include::all;
    const auto rows = s.dead_letters(all);
    ASSERT_EQ(rows.size(), 2u);
    EXPECT_FALSE(rows[0].resolution);
    EXPECT_EQ(rows[1].resolution, "replayed");
    EXPECT_EQ(s.runs(std::nullopt).at(0).counts, "{\"read\": 4}");
    // A first run adopts its identity (layout 1) or is refused another's (layout 2).
    if (layout2)
      error_of([&] { s.claim("p", "http://elsewhere/v1", false); });
    else
      EXPECT_FALSE(s.claim("p", "http://api/v1/contacts", false).moved_from);
    // Opening it again changes nothing more.
    StateStore again(path);
    EXPECT_EQ(again.dead_letters(all).size(), 2u);
  }
}

TEST(StateStore, AFileMissingATableOrColumnIsRefusedNamingIt) {
  TempDir tmp("isthmus-state-");
  const auto path = tmp.file("s.db");
  StateStore(path).close();
  raw(path).exec("ALTER TABLE dead_letters DROP COLUMN traceback");
  auto msg = error_of([&] { StateStore s(path); });
  EXPECT_TRUE(contains(msg, "state file " + path + ": table dead_letters has no column traceback")) << msg;
  EXPECT_TRUE(contains(msg, StateStore::restore_hint())) << msg;
  raw(path).exec("DROP TABLE runs");
  msg = error_of([&] { StateStore s(path); });
  EXPECT_TRUE(contains(msg, "table runs is missing")) << msg;
}

TEST(StateStore, AValueOfTheWrongTypeOrNotUtf8IsDamageNamingRowAndColumn) {
  TempDir tmp("isthmus-state-");
  const auto path = tmp.file("s.db");
  StateStore s(path);
  s.begin_run("p");
  Commit c;
  c.pipeline = "p";
  c.position = "{}";
  c.dead_letters = {dead("a"), dead("b")};
  s.commit(c);
  raw(path).exec("UPDATE dead_letters SET http_status = 'teapot' WHERE id = 2");
  auto msg = error_of([&] { s.dead_letters({}); });
  EXPECT_TRUE(contains(msg, path + ": dead letter 2: column http_status holds text 'teapot'")) << msg;
  raw(path).exec("UPDATE dead_letters SET http_status = NULL, error = CAST(x'66ff' AS TEXT) WHERE id = 2");
  msg = error_of([&] { s.dead_letters({}); });
  EXPECT_TRUE(contains(msg, "column error holds text that is not UTF-8")) << msg;
  raw(path).exec("UPDATE runs SET started_at = 'yesterday'");
  msg = error_of([&] { s.runs(std::nullopt); });
  EXPECT_TRUE(contains(msg, "column started_at holds text 'yesterday'")) << msg;
  raw(path).exec("UPDATE checkpoints SET position = x'00ff'");
  msg = error_of([&] { s.load("p"); });
  EXPECT_TRUE(contains(msg, "the checkpoint of pipeline 'p' (position) holds blob data")) << msg;
  // A key stored as bytes matches no record: it supersedes nothing, and is no reason to stop a run.
  raw(path).exec("UPDATE dead_letters SET record_key = x'00ff', error = 'x' WHERE id = 1");
  EXPECT_EQ(s.open_dead_letter_keys("p"), std::vector<std::string>{"b"});
}

TEST(StateStore, ABadWhereConditionIsAnInvalidArgumentNotDamage) {
  TempDir tmp("isthmus-state-");
  StateStore s(tmp.file("s.db"));
  Commit c;
  c.pipeline = "p";
  c.dead_letters = {dead("a"), dead("b")};
  s.commit(c);
  DeadLetterQuery q;
  q.where = "record_key = ?";
  q.params = {std::string("b")};
  ASSERT_EQ(s.dead_letters(q).size(), 1u);
  q.params = {};
  auto msg = error_of([&] { s.dead_letters(q); }, errc::invalid_argument);
  EXPECT_TRUE(contains(msg, "1 placeholders for 0 params")) << msg;
  q.where = "colour = 'red'";
  msg = error_of([&] { s.dead_letters(q); }, errc::invalid_argument);
  EXPECT_TRUE(contains(msg, "where: \"colour = 'red'\" is not a valid condition")) << msg;
  EXPECT_TRUE(contains(msg, "no such column: colour")) << msg;
  q.where = "1); DELETE FROM dead_letters; SELECT (1";
  msg = error_of([&] { s.dead_letters(q); }, errc::invalid_argument);
  EXPECT_TRUE(contains(msg, "more than one statement")) << msg;
  EXPECT_EQ(s.dead_letters({}).size(), 2u);
}

TEST(StateStore, MissingEmptyClosedAndInMemory) {
  TempDir tmp("isthmus-state-");
  StateStoreOptions read_only;
  read_only.create = false;
  auto msg = error_of([&] { StateStore s(tmp.file("none.db"), read_only); });
  EXPECT_TRUE(contains(msg, "none.db does not exist")) << msg;
  EXPECT_FALSE(fs::exists(tmp.file("none.db")));
  { std::ofstream(tmp.file("empty.db")).close(); }
  msg = error_of([&] { StateStore s(tmp.file("empty.db")); });
  EXPECT_TRUE(contains(msg, "is empty")) << msg;
  StateStore s(tmp.file("s.db"));
  s.close();
  msg = error_of([&] { s.begin_run("p"); });
  EXPECT_TRUE(contains(msg, "is closed")) << msg;
  StateStore memory(":memory:");
  memory.begin_run("p");
  EXPECT_EQ(memory.pipelines(), std::vector<std::string>{"p"});
  error_of([&] { memory.backup(tmp.file("copy.db")); });
}

TEST(StateStore, ABackupIsAWholeStateFile) {
  TempDir tmp("isthmus-state-");
  StateStore s(tmp.file("s.db"));
  Commit c;
  c.pipeline = "p";
  c.position = "{\"unit\":7}";
  c.dead_letters = {dead("a")};
  s.commit(c);
  s.backup(tmp.file("copy.db"));
  StateStore copy(tmp.file("copy.db"));
  EXPECT_EQ(copy.load("p").position, "{\"unit\":7}");
  EXPECT_EQ(copy.dead_letters({}).size(), 1u);
  const auto msg = error_of([&] { s.backup(tmp.file("copy.db")); });
  EXPECT_TRUE(contains(msg, "already exists")) << msg;
}

// Threads sharing one store and threads with stores of their own on the same new file: every
// commit lands, none is torn, and every opener gets the whole schema.
TEST(StateStore, ThreadsSharingAStoreAndThreadsWithTheirOwnAllCommit) {
  TempDir tmp("isthmus-state-");
  const auto path = tmp.file("s.db");
  constexpr int kThreads = 4, kCommits = 25;
  std::atomic<int> failures{0};
  auto work = [&](StateStore& s, const std::string& pipeline) {
    try {
      const auto run = s.begin_run(pipeline);
      for (int i = 0; i < kCommits; ++i) {
        Commit c;
        c.pipeline = pipeline;
        c.run_id = run;
        c.position = "{\"unit\":" + std::to_string(i) + "}";
        c.dead_letters = {dead(pipeline + "-" + std::to_string(i))};
        s.commit(c);
        if (s.load(pipeline).position != c.position) ++failures;
      }
      s.finish_run(run, "completed", "{}", std::nullopt);
    } catch (const std::exception& e) {
      ADD_FAILURE() << e.what();
      ++failures;
    }
  };
  std::vector<std::thread> threads;
  std::vector<std::unique_ptr<StateStore>> own(kThreads);
  std::atomic<bool> go{false};
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      while (!go) std::this_thread::yield();
      own[t] = std::make_unique<StateStore>(path);  // racing to create the same new file
      work(*own[t], "own" + std::to_string(t));
    });
  go = true;
  for (auto& th : threads) th.join();
  threads.clear();
  StateStore shared(path);
  for (int t = 0; t < kThreads; ++t) threads.emplace_back([&, t] { work(shared, "shared" + std::to_string(t)); });
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(count(path, "SELECT COUNT(*) FROM dead_letters"), 2 * kThreads * kCommits);
  EXPECT_EQ(count(path, "SELECT COUNT(*) FROM runs WHERE status = 'completed'"), 2 * kThreads);
  EXPECT_EQ(shared.pipelines().size(), 2u * kThreads);
  std::set<std::string> left;
  for (const auto& e : fs::directory_iterator(tmp.dir)) left.insert(e.path().filename().string());
  EXPECT_EQ(left.count("s.db"), 1u);
  for (const auto& name : left) EXPECT_TRUE(name.rfind("s.db", 0) == 0) << name;
}

}  // namespace
}  // namespace isthmus::store
