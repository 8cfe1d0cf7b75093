#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <unistd.h>

#include "isthmus/pipeline/sink.hpp"

namespace isthmus::pipeline {

namespace {

std::error_code failed(const std::string& what, const std::string& path, std::string& why) {
  const int e = errno;
  why = what + " " + path + ": " + std::strerror(e);
  return {e, std::generic_category()};
}

}  // namespace

JsonlWriter::JsonlWriter(std::string path, bool fsync) : path_(std::move(path)), fsync_(fsync) {}

JsonlWriter::~JsonlWriter() { close(); }

std::error_code JsonlWriter::open(std::string& why) {
  if (fd_ >= 0) return {};
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) return failed("cannot open", path_, why);
  return {};
}

std::error_code JsonlWriter::write(const MappedBatch& batch, std::string& why) {
  if (fd_ < 0) {
    errno = EBADF;
    return failed("not open:", path_, why);
  }
  // Written unbuffered: the batch is already one buffer, and a crash after write() loses at
  // most what the kernel has not flushed, which flush() (before each checkpoint) covers.
  std::string_view rest = batch.lines();
  while (!rest.empty()) {
    const ssize_t n = ::write(fd_, rest.data(), rest.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return failed("cannot write to", path_, why);
    }
    rest.remove_prefix(static_cast<std::size_t>(n));
  }
  return {};
}

std::error_code JsonlWriter::flush(std::string& why) {
  if (fd_ >= 0 && fsync_ && ::fsync(fd_) != 0) return failed("cannot fsync", path_, why);
  return {};
}

void JsonlWriter::close() {
  if (fd_ < 0) return;
  std::string ignored;
  flush(ignored);
  ::close(fd_);
  fd_ = -1;
}

}  // namespace isthmus::pipeline
