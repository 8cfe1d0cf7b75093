#include <filesystem>
#include <map>
#include <string>

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include "isthmus/error.hpp"
#include "isthmus/pipeline/sink.hpp"

namespace isthmus::pipeline {
namespace {

std::map<std::string, std::string> rows(const std::string& path, const std::string& table) {
  std::map<std::string, std::string> out;
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  const std::string sql = "SELECT key, record FROM \"" + table + "\"";
  EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr), SQLITE_OK);
  while (sqlite3_step(st) == SQLITE_ROW)
    out[reinterpret_cast<const char*>(sqlite3_column_text(st, 0))] =
        reinterpret_cast<const char*>(sqlite3_column_text(st, 1));
  sqlite3_finalize(st);
  sqlite3_close(db);
  return out;
}

class SqliteWriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = (std::filesystem::temp_directory_path() / ("isthmus-sqlite-" + std::to_string(::getpid()) + ".db"))
                .string();
    std::filesystem::remove(path_);
  }
  void TearDown() override {
    for (auto suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path_ + suffix);
  }
  std::string path_;
};

TEST_F(SqliteWriterTest, UpsertsByTheKeyFieldAndAResendReplaces) {
  SqliteWriter w(path_, "contacts", "id");
  std::string why;
  ASSERT_FALSE(w.open(why)) << why;
  MappedBatch a;
  a.add(R"({"id":1,"v":"a"})", "k1");
  a.add(R"({"id":"x","v":"b"})", "k2");
  a.add(R"({"v":"no id"})", "k3");         // filed under its batch key
  a.add(R"({"id":null,"v":"null id"})", "k4");  // str(None), as the Python sink filed it
  a.add(R"([1,2])", "k5");                  // not an object: its batch key
  ASSERT_FALSE(w.write(a, false, why)) << why;
  MappedBatch b;
  b.add(R"({"id":1,"v":"newer"})", "k1");
  ASSERT_FALSE(w.write(b, false, why)) << why;
  w.close();
  const std::map<std::string, std::string> want{{"1", R"({"id":1,"v":"newer"})"},
                                                {"x", R"({"id":"x","v":"b"})"},
                                                {"k3", R"({"v":"no id"})"},
                                                {"None", R"({"id":null,"v":"null id"})"},
                                                {"k5", "[1,2]"}};
  EXPECT_EQ(rows(path_, "contacts"), want);
}

TEST_F(SqliteWriterTest, FinalKeysAreUsedAsGiven) {
  SqliteWriter w(path_, "t", "id");
  std::string why;
  ASSERT_FALSE(w.open(why)) << why;
  MappedBatch a;
  a.add(R"({"id":1})", "given");
  ASSERT_FALSE(w.write(a, true, why)) << why;
  MappedBatch keyless;
  keyless.add(R"({"id":2})", std::nullopt);
  EXPECT_TRUE(w.write(keyless, true, why));  // refused whole: one transaction per write
  EXPECT_NE(why.find("no key"), std::string::npos) << why;
  w.close();
  EXPECT_EQ(rows(path_, "t"), (std::map<std::string, std::string>{{"given", R"({"id":1})"}}));
}

TEST_F(SqliteWriterTest, RefusesATableNameThatIsNotAnIdentifier) {
  SqliteWriter w(path_, "t; DROP TABLE x", "id");
  std::string why;
  EXPECT_EQ(w.open(why), make_error_code(errc::invalid_argument));
  EXPECT_NE(why.find("table"), std::string::npos);
}

}  // namespace
}  // namespace isthmus::pipeline
