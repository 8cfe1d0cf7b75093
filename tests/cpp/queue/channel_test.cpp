#include "isthmus/queue/channel.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace isthmus::queue {
namespace {

using namespace std::chrono_literals;

TEST(Channel, RefusesPastItsCapacityAndKeepsTheItem) {
  Channel<std::string> ch(2);
  EXPECT_EQ(ch.push(std::string("a")), Channel<std::string>::Push::ok);
  EXPECT_EQ(ch.push(std::string("b")), Channel<std::string>::Push::ok);
  std::string c = "c";
  EXPECT_EQ(ch.push(c), Channel<std::string>::Push::full);
  EXPECT_EQ(c, "c");  // a refused item stays with the producer
  EXPECT_EQ(ch.size(), 2u);
  std::string out;
  ASSERT_EQ(ch.pop(out, 0ms), Channel<std::string>::Pop::ok);
  EXPECT_EQ(out, "a");
  EXPECT_EQ(ch.push(c), Channel<std::string>::Push::ok);
  ASSERT_EQ(ch.pop(out, 0ms), Channel<std::string>::Pop::ok);
  EXPECT_EQ(out, "b");
  ASSERT_EQ(ch.pop(out, 0ms), Channel<std::string>::Pop::ok);
  EXPECT_EQ(out, "c");
  EXPECT_EQ(ch.pop(out, 0ms), Channel<std::string>::Pop::timeout);
}

TEST(Channel, ResumeFiresOnceOnDrain) {
  Channel<int> ch(1);
  ASSERT_EQ(ch.push(1), Channel<int>::Push::ok);
  int resumed = 0;
  int two = 2;
  ASSERT_EQ(ch.push(two, [&] { ++resumed; }), Channel<int>::Push::full);
  EXPECT_EQ(resumed, 0);
  int out = 0;
  ASSERT_EQ(ch.pop(out, 0ms), Channel<int>::Pop::ok);
  EXPECT_EQ(resumed, 1);
  ASSERT_EQ(ch.push(two), Channel<int>::Push::ok);
  ASSERT_EQ(ch.pop(out, 0ms), Channel<int>::Pop::ok);
  ch.close();
  EXPECT_EQ(resumed, 1);  // armed once, fired once
}

TEST(Channel, CloseWakesTheConsumerAndPausedProducers) {
  Channel<int> ch(1);
  auto waiting = std::async(std::launch::async, [&] {
    int out = 0;
    return ch.pop(out, std::chrono::hours(1));
  });
  ch.close();
  EXPECT_EQ(waiting.get(), Channel<int>::Pop::closed);

  Channel<int> full(1);
  ASSERT_EQ(full.push(1), Channel<int>::Push::ok);
  bool resumed = false;
  int two = 2;
  ASSERT_EQ(full.push(two, [&] { resumed = true; }), Channel<int>::Push::full);
  full.close();
  EXPECT_TRUE(resumed);
  EXPECT_EQ(full.push(3), Channel<int>::Push::closed);
  int out = 0;
  EXPECT_EQ(full.pop(out, 0ms), Channel<int>::Pop::ok);  // what was queued is still delivered
  EXPECT_EQ(out, 1);
  EXPECT_EQ(full.pop(out, 0ms), Channel<int>::Pop::closed);
}

// Producers that never block: each pushes its numbers, pausing on a full channel until its
// resume callback says there is room (a stand-in for a fetch loop on an I/O thread).
TEST(Channel, ManyProducersOneConsumerLoseNothing) {
  constexpr int kProducers = 4, kEach = 5000;
  Channel<int> ch(8);
  std::atomic<std::size_t> high{0};
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      for (int i = 0; i < kEach; ++i) {
        int item = p * kEach + i;
        for (;;) {
          std::promise<void> room;
          auto ready = room.get_future();
          auto r = ch.push(item, [&room] { room.set_value(); });
          if (r == Channel<int>::Push::ok) break;
          ASSERT_EQ(r, Channel<int>::Push::full);
          ready.wait();
        }
        high = std::max(high.load(), ch.size());
      }
    });
  }
  std::set<int> seen;
  std::vector<int> last(kProducers, -1);
  int out = 0;
  while (seen.size() < static_cast<std::size_t>(kProducers * kEach)) {
    ASSERT_EQ(ch.pop(out, 10s), Channel<int>::Pop::ok);
    EXPECT_TRUE(seen.insert(out).second) << out << " delivered twice";
    int p = out / kEach;
    EXPECT_GT(out, last[p]) << "a producer's items arrive in its order";
    last[p] = out;
  }
  for (auto& t : producers) t.join();
  EXPECT_LE(high.load(), ch.capacity());
  ch.close();
  EXPECT_EQ(ch.pop(out, 0ms), Channel<int>::Pop::closed);
}

}  // namespace
}  // namespace isthmus::queue
