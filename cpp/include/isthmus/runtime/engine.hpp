// Engine: one Asio io_context and the I/O threads that run it. Clients, servers and timers
// share an engine; one per process by default (Engine::shared()).
#pragma once

#include <memory>

namespace isthmus {

struct EngineOptions {
  int io_threads = 1;
};

class Engine {
 public:
  static std::shared_ptr<Engine> create(EngineOptions options = {});
  // The process-wide engine, created on first use.
  static std::shared_ptr<Engine> shared();
  // Stops the process-wide engine if it was created (for interpreter shutdown).
  static void shutdown_shared();

  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Stops the I/O threads and joins them. Idempotent. From an I/O thread (inside a handler)
  // it only stops them; they are joined by a later stop() from outside or by the destructor.
  // The last reference may be dropped anywhere, an I/O thread included.
  void stop();
  bool stopped() const;
  int io_threads() const;

  // Asio lives behind this; see cpp/src/runtime/engine_impl.hpp.
  class Impl;
  Impl& impl() { return *impl_; }

 private:
  explicit Engine(EngineOptions options);
  std::unique_ptr<Impl> impl_;
};

}  // namespace isthmus
