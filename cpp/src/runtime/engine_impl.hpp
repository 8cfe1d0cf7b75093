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
  // Stops the io_context; from any thread but an I/O thread, also joins the I/O threads.
  void stop();
  bool stopped() const { return stopped_.load(); }
  int threads() const { return static_cast<int>(threads_.size()); }
  bool on_io_thread() const;

 private:
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  std::vector<std::thread> threads_;
  std::vector<std::thread::id> thread_ids_;  // written once, before anyone can post work
  std::mutex stop_mutex_;                    // never held while joining: I/O threads take it too
  std::mutex join_mutex_;
  std::atomic<bool> stopped_{false};
};

}  // namespace isthmus
