#include "runtime/engine_impl.hpp"

#include <gtest/gtest.h>

#include <boost/asio/post.hpp>
#include <future>

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
