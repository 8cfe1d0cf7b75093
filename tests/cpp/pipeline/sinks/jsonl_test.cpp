#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <unistd.h>

#include "isthmus/pipeline/sink.hpp"

namespace isthmus::pipeline {
namespace {

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / (name + "-" + std::to_string(::getpid()))).string();
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

TEST(JsonlWriter, AppendsEachBatchAsLines) {
  const auto path = temp_path("isthmus-jsonl");
  std::filesystem::remove(path);
  {
    std::ofstream(path) << "{\"kept\":true}\n";  // an earlier run's lines stay
  }
  MappedBatch a, b;
  a.add(R"({"id":1})", "1");
  a.add(R"({"id":2})", "2");
  b.add(R"({"id":3})", "3");
  JsonlWriter w(path, /*fsync=*/true);
  std::string why;
  ASSERT_FALSE(w.open(why)) << why;
  ASSERT_FALSE(w.write(a, why)) << why;
  ASSERT_FALSE(w.write(b, why)) << why;
  ASSERT_FALSE(w.flush(why)) << why;
  w.close();
  EXPECT_EQ(slurp(path), "{\"kept\":true}\n{\"id\":1}\n{\"id\":2}\n{\"id\":3}\n");
  std::filesystem::remove(path);
}

TEST(JsonlWriter, NamesThePathWhenItCannotOpen) {
  JsonlWriter w("/nonexistent-dir/x.jsonl", true);
  std::string why;
  const auto ec = w.open(why);
  EXPECT_EQ(ec, std::errc::no_such_file_or_directory);
  EXPECT_NE(why.find("/nonexistent-dir/x.jsonl"), std::string::npos) << why;
  MappedBatch a;
  a.add("1", "1");
  EXPECT_TRUE(w.write(a, why));
}

}  // namespace
}  // namespace isthmus::pipeline
