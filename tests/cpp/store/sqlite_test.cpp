#include "isthmus/store/sqlite.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "isthmus/error.hpp"
#include "support/temp_dir.hpp"

namespace isthmus::store {
namespace {

namespace fs = std::filesystem;
using isthmus::testing::TempDir;

constexpr const char* kSchema = "CREATE TABLE t (k TEXT PRIMARY KEY, v REAL NOT NULL);";

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), make_error_code(errc::state_error));
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return {};
}

TEST(Sqlite, StatementsBindAndReadEveryType) {
  TempDir tmp;
  Database db(tmp.file("a.db"), {});
  db.exec("CREATE TABLE x (i INTEGER, r REAL, t TEXT, b BLOB, n TEXT)");
  db.prepare("INSERT INTO x VALUES (?1, ?2, ?3, ?4, ?5)")
      .bind(1, std::int64_t{1} << 40)
      .bind(2, 2.5)
      .bind(3, "text")
      .bind_blob(4, std::string("a\0b", 3))
      .bind_null(5)
      .run();
  auto row = db.prepare("SELECT i, r, t, b, n FROM x");
  ASSERT_TRUE(row.step());
  EXPECT_EQ(row.type(0), Statement::Type::integer);
  EXPECT_EQ(row.integer(0), std::int64_t{1} << 40);
  EXPECT_EQ(row.real(1), 2.5);
  EXPECT_EQ(row.text(2), "text");
  EXPECT_EQ(row.type(3), Statement::Type::blob);
  EXPECT_EQ(row.text(3), std::string("a\0b", 3));
  EXPECT_TRUE(row.is_null(4));
  EXPECT_FALSE(row.optional_text(4).has_value());
  EXPECT_FALSE(row.step());
}

TEST(Sqlite, TransactionRollsBackUnlessCommitted) {
  TempDir tmp;
  Database db(tmp.file("a.db"), {});
  db.exec(kSchema);
  {
    Transaction tx(db);
    db.prepare("INSERT INTO t VALUES ('a', 1)").run();
  }
  EXPECT_FALSE(db.in_transaction());
  auto count = db.prepare("SELECT COUNT(*) FROM t");
  ASSERT_TRUE(count.step());
  EXPECT_EQ(count.integer(0), 0);
  {
    Transaction tx(db);
    db.prepare("INSERT INTO t VALUES ('a', 1)").run();
    tx.commit();
  }
  count.reset();
  ASSERT_TRUE(count.step());
  EXPECT_EQ(count.integer(0), 1);
}

TEST(Sqlite, ErrorsNameTheFileAndWhatWasDone) {
  TempDir tmp;
  const auto path = tmp.file("a.db");
  Database db(path, {});
  db.exec(kSchema);
  const auto msg = error_of([&] { db.prepare("SELECT nope FROM t", "cannot be read"); });
  EXPECT_NE(msg.find("state file " + path + " cannot be read"), std::string::npos) << msg;
  EXPECT_NE(msg.find("no such column"), std::string::npos) << msg;
}

TEST(Sqlite, RefusesAnEmptyFileAndAFileThatIsNotSqlite) {
  TempDir tmp;
  const auto empty = tmp.file("empty.db");
  std::ofstream(empty).close();
  auto msg = error_of([&] { Database(empty, {}); });
  EXPECT_NE(msg.find(empty + " is empty"), std::string::npos) << msg;
  const auto text = tmp.file("text.db");
  std::ofstream(text) << std::string(8192, 'x');
  OpenOptions o;
  o.what = "queue file";
  o.restore_hint = "Move it aside.";
  msg = error_of([&] { Database(text, o); });
  EXPECT_NE(msg.find("queue file " + text + " cannot be opened"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not a database"), std::string::npos) << msg;
  EXPECT_NE(msg.find("Move it aside."), std::string::npos) << msg;
}

TEST(Sqlite, MissingFileWithoutCreateIsAnError) {
  TempDir tmp;
  OpenOptions o;
  o.create = false;
  const auto msg = error_of([&] { Database(tmp.file("none.db"), o); });
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(tmp.file("none.db")));
}

TEST(Sqlite, ACustomCodeTravelsWithEveryError) {
  TempDir tmp;
  OpenOptions o;
  o.code = errc::token_store_error;
  o.create = false;
  try {
    Database(tmp.file("none.db"), o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), make_error_code(errc::token_store_error));
  }
}

TEST(Sqlite, CreateWholeFromManyThreadsMakesOneCompleteFile) {
  TempDir tmp;
  const auto path = tmp.file("new.db");
  std::atomic<int> created{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i)
    threads.emplace_back([&] {
      try {
        if (!fs::exists(path) && Database::create_whole(path, kSchema, {})) ++created;
        Database db(path, {});
        auto tables = db.tables();
        if (tables.size() != 1 || tables[0].first != "t") ++failures;
      } catch (const Error&) {
        ++failures;
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(created.load(), 1);
  EXPECT_EQ(failures.load(), 0);
  // No temporary file is left beside it.
  int files = 0;
  for (const auto& e : fs::directory_iterator(tmp.dir))
    if (e.path().filename().string().find(".new") != std::string::npos) ++files;
  EXPECT_EQ(files, 0);
}

TEST(Sqlite, CreateWholeInAMissingFolderNamesTheFolder) {
  TempDir tmp;
  const auto path = tmp.file("no/such/folder/new.db");
  const auto msg = error_of([&] { Database::create_whole(path, kSchema, {}); });
  EXPECT_NE(msg.find("state file " + path + " cannot be created: its folder"), std::string::npos) << msg;
}

TEST(Sqlite, TablesListsColumns) {
  TempDir tmp;
  Database db(tmp.file("a.db"), {});
  db.exec(kSchema);
  auto tables = db.tables();
  ASSERT_EQ(tables.size(), 1u);
  EXPECT_EQ(tables[0].second, (std::vector<std::string>{"k", "v"}));
}

TEST(Sqlite, BackupIsAWholeCopyAndNeverOverwrites) {
  TempDir tmp;
  Database db(tmp.file("a.db"), {});
  db.exec(kSchema);
  db.prepare("INSERT INTO t VALUES ('a', 1)").run();
  const auto dest = tmp.file("copy.db");
  db.backup_to(dest);
  Database copy(dest, {});
  auto row = copy.prepare("SELECT k FROM t");
  ASSERT_TRUE(row.step());
  EXPECT_EQ(row.text(0), "a");
  const auto msg = error_of([&] { db.backup_to(dest); });
  EXPECT_NE(msg.find("already exists"), std::string::npos) << msg;
}

TEST(Sqlite, BusyBeyondTheTimeoutSaysLocked) {
  TempDir tmp;
  const auto path = tmp.file("a.db");
  Database a(path, {});
  a.exec(kSchema);
  OpenOptions quick;
  quick.busy_timeout_ms = 0;
  Database b(path, quick);
  Transaction hold(a);
  const auto msg = error_of([&] { Transaction t(b); });
  EXPECT_NE(msg.find("locked"), std::string::npos) << msg;
}

}  // namespace
}  // namespace isthmus::store
