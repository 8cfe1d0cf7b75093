#include "runtime/engine_impl.hpp"

#include <algorithm>
#include <stdexcept>

#include "isthmus/error.hpp"

namespace isthmus {

Engine::Impl::Impl(EngineOptions options)
    : io_(options.io_threads), work_(boost::asio::make_work_guard(io_)) {
  if (options.io_threads < 1 || options.io_threads > 256)
    throw Error(errc::invalid_argument, "io_threads must be between 1 and 256");
  threads_.reserve(options.io_threads);
  for (int i = 0; i < options.io_threads; ++i) {
    threads_.emplace_back([this] { io_.run(); });
    thread_ids_.push_back(threads_.back().get_id());
  }
}

// Never runs on an I/O thread: Engine::~Engine hands that case to a thread of its own.
Engine::Impl::~Impl() { stop(); }

bool Engine::Impl::on_io_thread() const {
  return std::find(thread_ids_.begin(), thread_ids_.end(), std::this_thread::get_id()) != thread_ids_.end();
}

void Engine::Impl::stop() {
  {
    std::lock_guard lock(stop_mutex_);
    if (!stopped_.exchange(true)) {
      work_.reset();
      io_.stop();
    }
  }
  // An I/O thread cannot join itself, and joining the others from inside a handler could wait
  // on this one: it only stops the loop. Its thread leaves run() when the handler returns and
  // is joined by a later stop() from outside or by the destructor.
  if (on_io_thread()) return;
  std::lock_guard lock(join_mutex_);
  for (auto& t : threads_)
    if (t.joinable()) t.join();
}

Engine::Engine(EngineOptions options) : impl_(std::make_unique<Impl>(options)) {}

Engine::~Engine() {
  if (!impl_->on_io_thread()) return;  // ~Impl stops and joins
  // The last owner let go inside a handler on one of this engine's own threads (an operation
  // that kept the engine alive finished there). The io_context cannot be destroyed under the
  // handler that is running: stop it, and let a thread of its own join the I/O threads (this
  // one leaves run() when the handler returns) and then destroy it.
  impl_->stop();
  std::thread([impl = std::move(impl_)]() mutable { impl.reset(); }).detach();
}

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
