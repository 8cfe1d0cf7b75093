#include "runtime/engine_impl.hpp"

#include <stdexcept>

#include "isthmus/error.hpp"

namespace isthmus {

Engine::Impl::Impl(EngineOptions options)
    : io_(options.io_threads), work_(boost::asio::make_work_guard(io_)) {
  if (options.io_threads < 1 || options.io_threads > 256)
    throw Error(errc::invalid_argument, "io_threads must be between 1 and 256");
  threads_.reserve(options.io_threads);
  for (int i = 0; i < options.io_threads; ++i) threads_.emplace_back([this] { io_.run(); });
}

Engine::Impl::~Impl() { stop(); }

void Engine::Impl::stop() {
  std::lock_guard lock(stop_mutex_);
  if (stopped_.exchange(true)) return;
  work_.reset();
  io_.stop();
  for (auto& t : threads_) {
    if (t.get_id() == std::this_thread::get_id()) {
      t.detach();  // stop() from an I/O thread: never join ourselves
    } else if (t.joinable()) {
      t.join();
    }
  }
}

Engine::Engine(EngineOptions options) : impl_(std::make_unique<Impl>(options)) {}
Engine::~Engine() = default;

std::shared_ptr<Engine> Engine::create(EngineOptions options) {
  return std::shared_ptr<Engine>(new Engine(options));
}

namespace {
std::mutex shared_mutex;
// Deliberately leaked: static destructors run after the interpreter is gone, so the owner
// stops it explicitly through shutdown_shared() (Python registers it with atexit).
std::shared_ptr<Engine>* shared_engine = nullptr;
}  // namespace

std::shared_ptr<Engine> Engine::shared() {
  std::lock_guard lock(shared_mutex);
  if (!shared_engine || (*shared_engine)->stopped()) {
    delete shared_engine;
    shared_engine = new std::shared_ptr<Engine>(create());
  }
  return *shared_engine;
}

void Engine::shutdown_shared() {
  std::shared_ptr<Engine> engine;
  {
    std::lock_guard lock(shared_mutex);
    if (shared_engine) engine = *shared_engine;
  }
  if (engine) engine->stop();
}

void Engine::stop() { impl_->stop(); }
bool Engine::stopped() const { return impl_->stopped(); }
int Engine::io_threads() const { return impl_->threads(); }

}  // namespace isthmus
