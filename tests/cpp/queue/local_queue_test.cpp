#include "isthmus/queue/local_queue.hpp"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "isthmus/error.hpp"

namespace isthmus::queue {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

struct TempDir {
  fs::path dir;
  TempDir() {
    std::random_device rd;
    dir = fs::temp_directory_path() / ("isthmus-queue-" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(dir);
  }
  ~TempDir() { fs::remove_all(dir); }
  std::string file(const std::string& name) const { return (dir / name).string(); }
};

// Time that moves only when the test says so.
struct FakeClock {
  std::shared_ptr<std::atomic<double>> t = std::make_shared<std::atomic<double>>(1000.0);
  std::function<double()> fn() const {
    auto p = t;
    return [p] { return p->load(); };
  }
  void advance(double s) const { *t = t->load() + s; }
};

LocalQueueOptions with(const FakeClock& c, int max_deliveries = 5) {
  LocalQueueOptions o;
  o.clock = c.fn();
  o.max_deliveries = max_deliveries;
  return o;
}

std::vector<Item> items(std::initializer_list<const char*> bodies) {
  std::vector<Item> out;
  for (const char* b : bodies) out.push_back({b, true});
  return out;
}

std::vector<std::uint64_t> ids(const Lease& l) {
  std::vector<std::uint64_t> out;
  for (const auto& m : l.messages) out.push_back(m.id);
  return out;
}

std::string state_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), make_error_code(errc::state_error)) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return {};
}

TEST(LocalQueue, PutLeaseAckInOrder) {
  TempDir tmp;
  FakeClock clock;
  LocalQueue q(tmp.file("q.db"), with(clock));
  EXPECT_EQ(put(q, items({"a", "b", "c"})), 3u);
  auto l = lease(q, 2, milliseconds(30000));
  ASSERT_EQ(l.messages.size(), 2u);
  EXPECT_EQ(l.messages[0].body, "a");
  EXPECT_EQ(l.messages[1].body, "b");
  EXPECT_EQ(l.messages[0].deliveries, 1);
  EXPECT_TRUE(l.messages[0].text);
  EXPECT_EQ(l.expires_at, 1030.0);
  auto s = stats(q);
  EXPECT_EQ(s.ready, 1);
  EXPECT_EQ(s.leased, 2);
  EXPECT_EQ(ack(q, l.token, ids(l)), 2u);
  s = stats(q);
  EXPECT_EQ(s.ready, 1);
  EXPECT_EQ(s.leased, 0);
  auto rest = lease(q, 10, milliseconds(1000));
  ASSERT_EQ(rest.messages.size(), 1u);
  EXPECT_EQ(rest.messages[0].body, "c");
  EXPECT_TRUE(lease(q, 10, milliseconds(1000)).messages.empty());
}

TEST(LocalQueue, BinaryBodiesStayBinary) {
  TempDir tmp;
  LocalQueue q(tmp.file("q.db"));
  put(q, {Item{std::string("\0\xff", 2), false}, Item{"", false}});
  auto l = lease(q, 5, milliseconds(1000));
  ASSERT_EQ(l.messages.size(), 2u);
  EXPECT_EQ(l.messages[0].body, std::string("\0\xff", 2));
  EXPECT_FALSE(l.messages[0].text);
  EXPECT_EQ(l.messages[1].body, "");
}

TEST(LocalQueue, AnExpiredLeaseComesBackAndItsTokenNoLongerAcks) {
  TempDir tmp;
  FakeClock clock;
  LocalQueue q(tmp.file("q.db"), with(clock));
  put(q, items({"a"}));
  auto first = lease(q, 1, milliseconds(10000));
  clock.advance(9.999);
  EXPECT_TRUE(lease(q, 1, milliseconds(10000)).messages.empty()) << "leased twice while live";
  clock.advance(0.001);
  auto second = lease(q, 1, milliseconds(10000));
  ASSERT_EQ(second.messages.size(), 1u);
  EXPECT_EQ(second.messages[0].deliveries, 2);
  EXPECT_EQ(ack(q, first.token, ids(first)), 0u) << "a stale lease acked another lessee's message";
  EXPECT_EQ(ack(q, second.token, ids(second)), 1u);
  EXPECT_EQ(stats(q).ready, 0);
}

TEST(LocalQueue, NackWithDelayReturnsAfterTheDelay) {
  TempDir tmp;
  FakeClock clock;
  LocalQueue q(tmp.file("q.db"), with(clock));
  put(q, items({"a"}));
  auto l = lease(q, 1, milliseconds(10000));
  EXPECT_EQ(nack(q, l.token, ids(l), milliseconds(5000)), 1u);
  auto s = stats(q);
  EXPECT_EQ(s.delayed, 1);
  EXPECT_EQ(s.leased, 0);
  EXPECT_TRUE(lease(q, 1, milliseconds(1000)).messages.empty());
  clock.advance(5);
  auto again = lease(q, 1, milliseconds(1000));
  ASSERT_EQ(again.messages.size(), 1u);
  EXPECT_EQ(again.messages[0].deliveries, 2);
  EXPECT_EQ(nack(q, l.token, ids(l), milliseconds(0)), 0u) << "a nack under an old token moved it";
}

TEST(LocalQueue, DeadLetterAfterMaxDeliveriesByNackOrExpiry) {
  TempDir tmp;
  FakeClock clock;
  LocalQueue q(tmp.file("q.db"), with(clock, 2));
  put(q, items({"nacked", "expired"}));
  for (int round = 0; round < 2; ++round) {
    auto l = lease(q, 2, milliseconds(1000));
    ASSERT_EQ(l.messages.size(), 2u) << round;
    nack(q, l.token, {l.messages[0].body == "nacked" ? l.messages[0].id : l.messages[1].id}, milliseconds(0));
    clock.advance(1);
  }
  auto s = stats(q);
  EXPECT_EQ(s.ready, 0);
  EXPECT_EQ(s.dead, 2);
  auto dead = dead_letters(q);
  ASSERT_EQ(dead.size(), 2u);
  std::set<std::string> reasons;
  for (const auto& d : dead) {
    EXPECT_EQ(d.deliveries, 2);
    reasons.insert(d.body + ": " + d.reason);
  }
  EXPECT_EQ(*reasons.begin(), "expired: delivered 2 times (max_deliveries 2); the last lease expired");
  EXPECT_EQ(*reasons.rbegin(), "nacked: delivered 2 times (max_deliveries 2); the last delivery was nacked");
  EXPECT_TRUE(lease(q, 5, milliseconds(1000)).messages.empty());
}

TEST(LocalQueue, MessagesSurviveReopening) {
  TempDir tmp;
  const auto path = tmp.file("q.db");
  {
    LocalQueue q(path);
    put(q, items({"a", "b"}));
  }
  LocalQueue q(path);
  EXPECT_EQ(stats(q).ready, 2);
}

TEST(LocalQueue, BadOptionsAreInvalidArguments) {
  TempDir tmp;
  LocalQueueOptions o;
  o.max_deliveries = 0;
  try {
    LocalQueue q(tmp.file("q.db"), o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), make_error_code(errc::invalid_argument));
    EXPECT_NE(std::string(e.what()).find("max_deliveries"), std::string::npos);
  }
  LocalQueue q(tmp.file("q.db"));
  for (auto f : std::vector<std::function<void()>>{
           [&] { lease(q, 0, milliseconds(1000)); }, [&] { lease(q, 1, milliseconds(0)); },
           [&] { nack(q, "t", {1}, milliseconds(-1)); }}) {
    try {
      f();
      ADD_FAILURE();
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), make_error_code(errc::invalid_argument)) << e.what();
    }
  }
}

TEST(LocalQueue, ADamagedOrForeignFileIsAStateErrorNamingIt) {
  TempDir tmp;
  const auto garbage = tmp.file("garbage.db");
  std::ofstream(garbage) << std::string(4096, 'z');
  auto msg = state_error([&] { LocalQueue q(garbage); });
  EXPECT_NE(msg.find("queue file " + garbage), std::string::npos) << msg;

  const auto foreign = tmp.file("foreign.db");
  {
    sqlite3* db = nullptr;
    sqlite3_open(foreign.c_str(), &db);
    sqlite3_exec(db, "CREATE TABLE runs (id INTEGER)", nullptr, nullptr, nullptr);
    sqlite3_close(db);
  }
  msg = state_error([&] { LocalQueue q(foreign); });
  EXPECT_NE(msg.find("not an isthmus queue file: it has no table isthmus_queue (it has runs)"),
            std::string::npos)
      << msg;

  const auto bad_row = tmp.file("badrow.db");
  {
    LocalQueue q(bad_row);
    put(q, items({"a"}));
  }
  {
    sqlite3* db = nullptr;
    sqlite3_open(bad_row.c_str(), &db);
    sqlite3_exec(db, "UPDATE messages SET deliveries = 'many'", nullptr, nullptr, nullptr);
    sqlite3_close(db);
  }
  LocalQueue q(bad_row);
  msg = state_error([&] { lease(q, 1, milliseconds(1000)); });
  EXPECT_NE(msg.find("column deliveries holds text"), std::string::npos) << msg;
}

TEST(LocalQueue, ClosedQueueRefusesWork) {
  TempDir tmp;
  LocalQueue q(tmp.file("q.db"));
  q.close();
  const auto msg = state_error([&] { put(q, items({"a"})); });
  EXPECT_NE(msg.find("is closed"), std::string::npos) << msg;
}

TEST(LocalQueue, ThreadsWithTheirOwnConnectionsNeverShareALiveLease) {
  TempDir tmp;
  const auto path = tmp.file("q.db");
  constexpr int kMessages = 400;
  {
    LocalQueue q(path);
    std::vector<Item> all;
    for (int i = 0; i < kMessages; ++i) all.push_back({std::to_string(i), true});
    put(q, std::move(all));
  }
  std::mutex m;
  std::multiset<std::string> seen;
  std::vector<std::thread> workers;
  for (int w = 0; w < 4; ++w)
    workers.emplace_back([&] {
      LocalQueue q(path);  // one connection each, as separate processes would have
      for (;;) {
        auto l = lease(q, 7, milliseconds(600000));
        if (l.messages.empty()) return;
        {
          std::lock_guard lock(m);
          for (const auto& msg : l.messages) seen.insert(msg.body);
        }
        ack(q, l.token, ids(l));
      }
    });
  for (auto& t : workers) t.join();
  EXPECT_EQ(seen.size(), static_cast<std::size_t>(kMessages));
  for (const auto& body : seen) EXPECT_EQ(seen.count(body), 1u) << body;
}

TEST(LocalQueue, TheAsyncInterfaceCompletesOnceWithAStatus) {
  TempDir tmp;
  LocalQueue q(tmp.file("q.db"));
  Queue& iface = q;
  int calls = 0;
  iface.async_put(items({"a"}), [&](Status s, std::size_t n) {
    ++calls;
    EXPECT_TRUE(s);
    EXPECT_EQ(n, 1u);
  });
  iface.async_lease(0, milliseconds(1000), [&](Status s, Lease) {
    ++calls;
    EXPECT_EQ(s.code, make_error_code(errc::invalid_argument));
    EXPECT_NE(s.message.find("n: 0"), std::string::npos);
  });
  EXPECT_EQ(calls, 2);
}

}  // namespace
}  // namespace isthmus::queue
