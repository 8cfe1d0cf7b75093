#include "runtime/engine_impl.hpp"

#include <gtest/gtest.h>

#include <boost/asio/post.hpp>
#include <chrono>
#include <future>
#include <memory>
#include <thread>

#include "isthmus/error.hpp"

namespace isthmus {
namespace {

TEST(Engine, RunsPostedWorkOnItsThreads) {
  auto engine = Engine::create({.io_threads = 2});
  std::promise<std::thread::id> ran;
  boost::asio::post(engine->impl().io(), [&] { ran.set_value(std::this_thread::get_id()); });
  EXPECT_NE(ran.get_future().get(), std::this_thread::get_id());
  EXPECT_EQ(engine->io_threads(), 2);
}

TEST(Engine, StopIsIdempotent) {
  auto engine = Engine::create();
  engine->stop();
  engine->stop();
  EXPECT_TRUE(engine->stopped());
}

TEST(Engine, StopFromItsOwnThreadThenDestroyFromOutside) {
  auto engine = Engine::create({.io_threads = 2});
  std::promise<void> stopped;
  boost::asio::post(engine->impl().io(), [&] {
    engine->stop();  // must not join (or detach) the thread it runs on
    stopped.set_value();
  });
  stopped.get_future().get();
  EXPECT_TRUE(engine->stopped());
  engine.reset();  // joins both threads, the one that called stop() included
}

TEST(Engine, TheLastOwnerMayLetGoInsideOneOfItsHandlers) {
  // An operation that keeps its engine alive can finish after every other owner let go: the
  // engine is then destroyed on one of its own threads, inside the handler that is running.
  struct Sentinel {};
  std::weak_ptr<Sentinel> pending;
  std::promise<void> released, destroyed;
  {
    auto engine = Engine::create();
    auto& io = engine->impl().io();
    auto sentinel = std::make_shared<Sentinel>();
    pending = sentinel;
    boost::asio::post(io, [engine, &released, &destroyed]() mutable {
      released.get_future().wait();
      engine.reset();  // the last owner: ~Engine runs here, on the I/O thread
      destroyed.set_value();
    });
    // Queued behind it, never run: destroyed with the io_context, which releases the sentinel.
    boost::asio::post(io, [sentinel] {});
  }
  released.set_value();
  destroyed.get_future().get();
  // The io_context is destroyed once its thread has left the handler (ASan/TSan check that it
  // is not destroyed under it); until then the queued handler keeps the sentinel alive.
  for (int i = 0; i < 500 && !pending.expired(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(pending.expired());
}

TEST(Engine, RejectsZeroThreads) {
  EXPECT_THROW(Engine::create({.io_threads = 0}), Error);
}

TEST(Engine, SharedIsOneEngine) {
  EXPECT_EQ(Engine::shared(), Engine::shared());
}

TEST(ErrorCategory, NamesCodes) {
  std::error_code ec = errc::timeout;
  EXPECT_EQ(ec.category().name(), std::string("isthmus"));
  EXPECT_EQ(ec.message(), "timed out");
}

}  // namespace
}  // namespace isthmus
