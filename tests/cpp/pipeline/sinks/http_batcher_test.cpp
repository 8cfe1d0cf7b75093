// The HTTP batcher against the in-process sandbox, over real loopback sockets.
#include <algorithm>
#include <mutex>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "isthmus/http/client.hpp"
#include "isthmus/pipeline/sink.hpp"
#include "isthmus/runtime/engine.hpp"
#include "isthmus/sandbox/server.hpp"

namespace isthmus::pipeline {
namespace {

using nlohmann::json;

// Keeps a copy of every request on its way to the real client.
class Recording : public http::Transport {
 public:
  explicit Recording(std::shared_ptr<http::Transport> inner) : inner_(std::move(inner)) {}
  std::uint64_t send(http::Request r, http::Completion done) override {
    {
      std::lock_guard lock(m_);
      sent_.push_back(r);
    }
    return inner_->send(std::move(r), std::move(done));
  }
  void cancel(std::uint64_t id) override { inner_->cancel(id); }
  std::vector<http::Request> sent() {
    std::lock_guard lock(m_);
    return sent_;
  }

 private:
  std::shared_ptr<http::Transport> inner_;
  std::mutex m_;
  std::vector<http::Request> sent_;
};

class HttpBatcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<sandbox::Server>(sandbox::Options{.threads = 2});
    server_->start();
    client_ = std::make_shared<http::Client>(engine_);
    recording_ = std::make_shared<Recording>(client_);
  }
  HttpBatcher batcher(const std::string& path, std::size_t batch_size, std::size_t concurrency,
                      std::string wrap = "") {
    HttpBatchOptions o;
    o.url = server_->url() + path;
    o.headers = {{"Content-Type", "application/json"}};
    o.batch_size = batch_size;
    o.concurrency = concurrency;
    o.wrap = std::move(wrap);
    return HttpBatcher(recording_, o);
  }
  static MappedBatch records(int from, int to) {
    MappedBatch b;
    for (int i = from; i < to; ++i) b.add("{\"id\":" + std::to_string(i) + "}", std::to_string(i));
    return b;
  }
  json received() { return json::parse(server_->stats_json())["records_received"]; }

  std::shared_ptr<Engine> engine_ = Engine::create();
  std::unique_ptr<sandbox::Server> server_;
  std::shared_ptr<http::Client> client_;
  std::shared_ptr<Recording> recording_;
};

TEST_F(HttpBatcherTest, FillsBatchesAcrossWritesAndSendsTheRestOnFlush) {
  auto b = batcher("/v1/contacts/batch", 2, 2);
  auto o = b.write(records(0, 3));
  EXPECT_TRUE(recording_->sent().empty());  // 3 < 2 batches of 2: kept
  EXPECT_EQ(b.buffered(), 3u);
  o = b.write(records(3, 5));
  EXPECT_FALSE(o.stop);
  EXPECT_EQ(recording_->sent().size(), 2u);  // the two full batches
  EXPECT_EQ(b.buffered(), 1u);
  EXPECT_EQ(o.counts.requests, 2u);
  o = b.flush();
  EXPECT_FALSE(o.stop);
  EXPECT_EQ(b.buffered(), 0u);
  const auto sent = recording_->sent();
  ASSERT_EQ(sent.size(), 3u);
  std::vector<std::string> bodies;
  for (const auto& r : sent) bodies.push_back(*r.body);
  std::sort(bodies.begin(), bodies.end());
  EXPECT_EQ(bodies, (std::vector<std::string>{R"([{"id":0},{"id":1}])", R"([{"id":2},{"id":3}])", R"([{"id":4}])"}));
  EXPECT_EQ(received()["contacts"]["unique"], 5);
}

TEST_F(HttpBatcherTest, TheIdempotencyKeyComesFromTheRecordsKeys) {
  auto b = batcher("/v1/contacts/batch", 10, 1, "records");
  b.write(records(0, 2));
  b.flush();
  b.write(records(0, 2));  // a resend: the same key, so the endpoint replays its answer
  b.flush();
  const auto sent = recording_->sent();
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(*sent[0].body, R"({"records":[{"id":0},{"id":1}]})");
  const std::string* key = http::find_header(sent[0].headers, "Idempotency-Key");
  ASSERT_TRUE(key);
  // "ist-" + sha256("0\x1f1").hexdigest()[:40], as isthmus.HttpSink has always sent it.
  EXPECT_EQ(*key, "ist-1bb4027db324470c3db67d54acb349046ffffdc5");
  EXPECT_EQ(*http::find_header(sent[1].headers, "Idempotency-Key"), *key);
  EXPECT_EQ(received()["contacts"]["unique"], 2);
  EXPECT_EQ(received()["contacts"]["idempotent_replays"], 1);
}

TEST_F(HttpBatcherTest, ABatchAnswered4xxIsNarrowedRecordByRecord) {
  // A destination taking bodies of at most 1 KiB: the batch is too large (413), and so is
  // one of its records on its own.
  server_ = std::make_unique<sandbox::Server>(sandbox::Options{.threads = 1, .config_json = R"({"max_body_bytes": 1024})"});
  server_->start();
  auto b = batcher("/v1/contacts/batch", 3, 2);  // 3 records: kept until the flush
  MappedBatch in;
  const std::string big = R"({"id":"b","pad":")" + std::string(1100, 'x') + R"("})";
  in.add(R"({"id":"a"})", "a");
  in.add(big, "b");
  in.add(R"({"id":"c"})", "c");
  b.write(in);
  auto o = b.flush();
  EXPECT_FALSE(o.stop);
  ASSERT_EQ(o.rejected.size(), 1u);
  EXPECT_EQ(o.rejected[0].key, "b");
  EXPECT_EQ(o.rejected[0].record, big);
  EXPECT_EQ(o.rejected[0].response.status, 413);
  EXPECT_EQ(recording_->sent().size(), 4u);  // the batch, then each record alone
  EXPECT_EQ(received()["contacts"]["unique"], 2);
}

TEST_F(HttpBatcherTest, ARefusingAnswerStopsAndKeepsTheRecords) {
  auto b = batcher("/status/404", 2, 2);
  b.write(records(0, 3));
  auto o = b.flush();
  ASSERT_TRUE(o.stop);
  EXPECT_EQ(o.stop->status, 404);
  EXPECT_TRUE(o.rejected.empty());
  EXPECT_EQ(b.buffered(), 3u);  // never settled: sent again by a later flush, or by the rerun
}

TEST_F(HttpBatcherTest, NoAnswerStopsWithTheTransportError) {
  HttpBatchOptions o;
  o.url = "http://127.0.0.1:1/v1/contacts/batch";  // nothing listens on port 1
  HttpBatcher b(client_, o);
  b.write(records(0, 1));
  auto out = b.flush();
  ASSERT_TRUE(out.stop);
  EXPECT_TRUE(out.stop->error);
  EXPECT_EQ(b.buffered(), 1u);
}

}  // namespace
}  // namespace isthmus::pipeline
