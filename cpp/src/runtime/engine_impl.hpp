// Private: the Asio side of Engine. Only .cpp files under cpp/src include this.
#pragma once

#include <utility>  // before Asio: Boost 1.74 + GCC 12 in C++20

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <mutex>
#include <thread>
#include <vector>

#include "isthmus/runtime/engine.hpp"

namespace isthmus {

class Engine::Impl {
 public:
  explicit Impl(EngineOptions options);
  ~Impl();

  boost::asio::io_context& io() { return io_; }
  void stop();
  bool stopped() const { return stopped_.load(); }
  int threads() const { return static_cast<int>(threads_.size()); }

 private:
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  std::vector<std::thread> threads_;
  std::mutex stop_mutex_;
  std::atomic<bool> stopped_{false};
};

}  // namespace isthmus
