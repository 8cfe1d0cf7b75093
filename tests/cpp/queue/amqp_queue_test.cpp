// The parts of AmqpQueue that need no broker: option checks, URLs, an unreachable port, and
// the I/O thread's start and stop. tests/python/test_queue.py runs the rest on a real broker.
#include "isthmus/queue/amqp_queue.hpp"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "isthmus/error.hpp"

namespace isthmus::queue {
namespace {

// A loopback port nothing listens on: bound, then closed.
int closed_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t n = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &n);
  ::close(fd);
  return ntohs(a.sin_port);
}

template <class F>
Error error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no error";
  return Error(errc::internal, "");
}

TEST(AmqpQueue, BadOptionsNameTheField) {
  const std::string url = "amqp://guest:guest@127.0.0.1:1/";
  AmqpQueueOptions o;
  o.max_deliveries = 0;
  auto e = error_of([&] { AmqpQueue(url, "q", o); });
  EXPECT_EQ(e.code(), make_error_code(errc::invalid_argument));
  EXPECT_EQ(std::string(e.what()).rfind("max_deliveries:", 0), 0u) << e.what();
  o = {};
  o.prefetch = 70000;
  EXPECT_EQ(std::string(error_of([&] { AmqpQueue(url, "q", o); }).what()).rfind("prefetch:", 0), 0u);
  EXPECT_EQ(std::string(error_of([&] { AmqpQueue(url, "amq.gen", {}); }).what()).rfind("name:", 0), 0u);
  EXPECT_EQ(std::string(error_of([&] { AmqpQueue(url, "", {}); }).what()).rfind("name:", 0), 0u);
}

TEST(AmqpQueue, BadUrlsAreInvalidUrlsWithoutThePassword) {
  for (const char* url : {"http://u:s3cret@127.0.0.1/", "amqp://u:s3cret@/", "amqp://u:s3cret@:5672/",
                          "amqp://u:s3cret@host:notaport/"}) {
    auto e = error_of([&] { AmqpQueue(url, "q", {}); });
    EXPECT_EQ(e.code(), make_error_code(errc::invalid_url)) << url << ": " << e.what();
    EXPECT_EQ(std::string(e.what()).find("s3cret"), std::string::npos) << e.what();
  }
}

TEST(AmqpQueue, AClosedPortIsConnectFailedNamingTheRedactedUrl) {
  const std::string url = "amqp://guest:s3cret@127.0.0.1:" + std::to_string(closed_port()) + "/";
  AmqpQueueOptions o;
  o.connect_timeout = std::chrono::milliseconds(2000);
  auto e = error_of([&] { AmqpQueue(url, "q", o); });
  EXPECT_EQ(e.code(), make_error_code(errc::connect_failed)) << e.what();
  const std::string what = e.what();
  EXPECT_NE(what.find("amqp://guest:***@127.0.0.1"), std::string::npos) << what;
  EXPECT_EQ(what.find("s3cret"), std::string::npos) << what;
}

TEST(AmqpQueue, DelayStepsAreSortedSeconds) {
  const auto& steps = AmqpQueue::delay_steps();
  ASSERT_FALSE(steps.empty());
  for (std::size_t i = 1; i < steps.size(); ++i) EXPECT_LT(steps[i - 1], steps[i]);
  for (auto s : steps) EXPECT_EQ(s.count() % 1000, 0);  // the queue names say whole seconds
}

}  // namespace
}  // namespace isthmus::queue
