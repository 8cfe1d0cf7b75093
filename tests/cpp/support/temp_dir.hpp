// A fresh folder under the system's temporary directory, removed with everything in it when the
// test ends: for tests that need real files (SQLite state, queue and token files).
#pragma once

#include <filesystem>
#include <random>
#include <string>

namespace isthmus::testing {

struct TempDir {
  std::filesystem::path dir;
  explicit TempDir(const std::string& prefix = "isthmus-test-") {
    std::random_device rd;
    dir = std::filesystem::temp_directory_path() / (prefix + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (dir / name).string(); }
};

}  // namespace isthmus::testing
