// The page reader against the sandbox on loopback, through the real curl client.
#include "isthmus/pipeline/reader.hpp"

#include <gtest/gtest.h>

#include <condition_variable>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "isthmus/error.hpp"
#include "isthmus/http/client.hpp"
#include "isthmus/runtime/engine.hpp"
#include "isthmus/sandbox/server.hpp"
#include "support/loopback_server.hpp"

namespace isthmus::pipeline {
namespace {

using namespace std::chrono_literals;
using Kind = PaginatorSpec::Kind;

// The "id" of each record of a page.
class Ids : public JsonVisitor {
 public:
  std::vector<std::string> ids;
  void null() override { want_ = false; }
  void boolean(bool) override { want_ = false; }
  void integer(std::int64_t v) override { take(std::to_string(v)); }
  void unsigned_integer(std::uint64_t v) override { take(std::to_string(v)); }
  void number(double) override { want_ = false; }
  void string(std::string_view v) override { take(std::string(v)); }
  void begin_array(std::size_t) override { ++depth_; want_ = false; }
  void end_array() override { --depth_; }
  void begin_object(std::size_t) override { ++depth_; want_ = false; }
  void key(std::string_view k) override { want_ = depth_ == 2 && k == "id"; }
  void end_object() override { --depth_; }

 private:
  void take(std::string v) {
    if (want_) ids.push_back(std::move(v));
    want_ = false;
  }
  int depth_ = 0;
  bool want_ = false;
};

// Wraps the real client: counts what is sent and in flight, and keeps the URLs.
class Watching : public http::Transport {
 public:
  explicit Watching(std::shared_ptr<http::Transport> inner) : inner_(std::move(inner)) {}
  std::uint64_t send(http::Request request, http::Completion done) override {
    {
      std::lock_guard lock(m_);
      ++sent;
      ++busy_;
      max_in_flight = std::max(max_in_flight, ++in_flight);
      urls.push_back(request.url);
    }
    auto self = std::static_pointer_cast<Watching>(shared_from_this_());
    return inner_->send(std::move(request), [self, done = std::move(done)](std::error_code ec, http::Response r) {
      {
        std::lock_guard lock(self->m_);
        --self->in_flight;
      }
      // Busy until the reader has acted on the answer (and sent what follows from it).
      done(ec, std::move(r));
      std::lock_guard lock(self->m_);
      --self->busy_;
      self->cv_.notify_all();
    });
  }
  void cancel(std::uint64_t id) override { inner_->cancel(id); }
  void wait_idle() {
    std::unique_lock lock(m_);
    cv_.wait(lock, [&] { return busy_ == 0; });
  }
  std::shared_ptr<http::Transport> shared_from_this_() { return self_.lock(); }
  std::weak_ptr<Watching> self_;

  std::mutex m_;
  std::condition_variable cv_;
  int sent = 0, in_flight = 0, max_in_flight = 0, busy_ = 0;
  std::vector<std::string> urls;

 private:
  std::shared_ptr<http::Transport> inner_;
};

class Reader : public ::testing::Test {
 protected:
  void serve(const std::string& config) {
    server_ = std::make_unique<sandbox::Server>(sandbox::Options{.config_json = config});
    server_->start();
  }
  void SetUp() override {
    engine_ = Engine::create({.io_threads = 2});
    client_ = std::make_shared<http::Client>(engine_);
    watch_ = std::make_shared<Watching>(client_);
    watch_->self_ = watch_;
  }
  void TearDown() override {
    watch_->wait_idle();
    client_->close();
  }

  ReaderOptions options(PaginatorSpec pg, std::size_t partitions = 1) {
    ReaderOptions o;
    o.label = "Stream /v1/contacts";
    o.base_url = server_->url();
    o.path = "/v1/contacts";
    o.params = R"({"limit": 100})";
    o.paginator = std::move(pg);
    for (std::size_t i = 0; i < partitions; ++i) o.todo.push_back({i, ""});
    return o;
  }

  struct Read {
    std::vector<std::string> ids;
    std::vector<Chunk> chunks;  // without their pages, in arrival order
    PageReader::Next end = PageReader::Next::timeout;
    ReadError error;
    ReaderCounts counts;
  };

  // Reads to the end, or `pages` pages when given.
  Read read(ReaderOptions o, std::size_t pages = SIZE_MAX) {
    Read out;
    PageReader reader(watch_, std::move(o));
    reader.start();
    std::size_t seen = 0;
    for (;;) {
      Chunk c;
      auto r = reader.next(c, 30s);
      if (r == PageReader::Next::timeout) {
        ADD_FAILURE() << "no page in 30 s";
        break;
      }
      if (r != PageReader::Next::chunk) {
        out.end = r;
        break;
      }
      if (c.page) {
        Ids ids;
        c.page->visit_records("data", ids);
        EXPECT_EQ(ids.ids.size(), c.count);
        out.ids.insert(out.ids.end(), ids.ids.begin(), ids.ids.end());
        ++seen;
      }
      c.page.reset();
      c.response.body.clear();
      out.chunks.push_back(std::move(c));
      if (seen == pages) break;
    }
    out.error = reader.error();
    out.counts = reader.counts();
    return out;
  }

  std::shared_ptr<Engine> engine_;
  std::unique_ptr<sandbox::Server> server_;
  std::shared_ptr<http::Client> client_;
  std::shared_ptr<Watching> watch_;
};

PaginatorSpec cursor() {
  PaginatorSpec p;
  p.kind = Kind::cursor;
  p.cursor_path = "meta.next_cursor";
  p.param = "cursor";
  p.has_more_path = "meta.has_more";
  return p;
}

PaginatorSpec offset(std::size_t window = 4, std::string total = "meta.total") {
  PaginatorSpec p;
  p.kind = Kind::offset;
  p.param = "offset";
  p.size_param = "limit";
  p.size = 100;
  p.total_path = std::move(total);
  p.window = window;
  return p;
}

PaginatorSpec page_number() {
  PaginatorSpec p;
  p.kind = Kind::page_number;
  p.param = "page";
  p.size_param = "per_page";
  p.size = 100;
  p.total_path = "meta.total_pages";
  p.start = 1;
  p.window = 3;
  return p;
}

std::set<std::string> unique(const std::vector<std::string>& ids) { return {ids.begin(), ids.end()}; }

struct Case {
  const char* pagination;
  PaginatorSpec spec;
};

class EachPaginator : public Reader, public ::testing::WithParamInterface<Case> {};

TEST_P(EachPaginator, ReadsEveryRecordOnce) {
  serve(std::string(R"({"records": 1050, "pagination": ")") + GetParam().pagination + "\"}");
  auto r = read(options(GetParam().spec));
  EXPECT_EQ(r.end, PageReader::Next::end) << r.error.message;
  EXPECT_EQ(r.ids.size(), 1050u);
  EXPECT_EQ(unique(r.ids).size(), 1050u);
  ASSERT_FALSE(r.chunks.empty());
  EXPECT_TRUE(r.chunks.back().done);
  // Without a total, requests already sent past the first empty page are not counted.
  EXPECT_LE(r.counts.requests, static_cast<std::uint64_t>(watch_->sent));
  EXPECT_GE(r.counts.requests, 11u);
  EXPECT_GT(r.counts.bytes_in, 1050u * 50);
}

PaginatorSpec next_url() {
  PaginatorSpec p;
  p.kind = Kind::next_url;
  p.next_path = "next";
  return p;
}

PaginatorSpec link() {
  PaginatorSpec p;
  p.kind = Kind::link_header;
  return p;
}

INSTANTIATE_TEST_SUITE_P(Builtin, EachPaginator,
                         ::testing::Values(Case{"cursor", cursor()}, Case{"next_url", next_url()},
                                           Case{"link", link()}, Case{"offset", offset()},
                                           Case{"offset", offset(4, "")}, Case{"page", page_number()}),
                         [](const auto& info) {
                           return std::string(info.param.pagination) + std::to_string(info.index);
                         });

TEST_F(Reader, ACursorResumesAfterThePageItWasSavedWith) {
  serve(R"({"records": 1000, "pagination": "cursor"})");
  auto head = read(options(cursor()), 3);
  ASSERT_EQ(head.chunks.size(), 3u);
  const std::string after = head.chunks.back().after;
  auto step = nlohmann::json::parse(after);
  EXPECT_TRUE(step["url"].is_null());
  EXPECT_EQ(step["params"]["limit"], 100);  // the stream's params travel with the step
  EXPECT_TRUE(step["params"]["cursor"].is_string());
  auto o = options(cursor());
  o.todo = {{0, after}};
  auto rest = read(o);
  EXPECT_EQ(rest.end, PageReader::Next::end);
  auto all = head.ids;
  all.insert(all.end(), rest.ids.begin(), rest.ids.end());
  EXPECT_EQ(all.size(), 1000u);
  EXPECT_EQ(unique(all).size(), 1000u);
}

TEST_F(Reader, AnOffsetResumesAtItsUnitAndCountsWhatIsLeft) {
  serve(R"({"records": 1000, "pagination": "offset"})");
  auto o = options(offset());
  o.todo = {{0, R"({"unit": 600})"}};
  auto r = read(o);
  EXPECT_EQ(r.ids.size(), 400u);
  ASSERT_TRUE(r.chunks.front().total);
  EXPECT_EQ(*r.chunks.front().total, 400u);
  std::uint64_t expect = 600;
  for (const auto& c : r.chunks) {
    if (c.done) continue;
    ASSERT_TRUE(c.units);
    EXPECT_EQ(c.units->first, expect);  // handed over in order whatever order they answered in
    expect = c.units->second;
  }
  EXPECT_EQ(expect, 1000u);
}

// A worker's page task: one page per partition, nothing fetched ahead, and `after` naming
// where the partition continues ("" after its last page), for every kind of paginator.
TEST_F(Reader, ASinglePageReadFetchesOnePageAndNamesTheNextStep) {
  serve(R"({"records": 250, "pagination": "cursor"})");
  auto o = options(cursor());
  o.single_page = true;
  auto first = read(o);
  EXPECT_EQ(first.end, PageReader::Next::end) << first.error.message;
  EXPECT_EQ(first.ids.size(), 100u);
  EXPECT_EQ(watch_->sent, 1);
  ASSERT_FALSE(first.chunks.empty());
  const std::string after = first.chunks.front().after;
  ASSERT_FALSE(after.empty());
  o.todo = {{0, after}};
  auto second = read(o);
  EXPECT_EQ(second.ids.size(), 100u);
  EXPECT_EQ(watch_->sent, 2);
  EXPECT_TRUE(unique(second.ids).count(first.ids.front()) == 0);
}

TEST_F(Reader, ASinglePageOffsetReadNamesTheNextUnitUntilTheLastPage) {
  serve(R"({"records": 250, "pagination": "offset"})");
  auto o = options(offset());
  o.single_page = true;
  o.todo = {{0, R"({"unit": 100})"}};
  auto middle = read(o);
  EXPECT_EQ(middle.ids.size(), 100u);
  EXPECT_EQ(watch_->sent, 1);
  ASSERT_FALSE(middle.chunks.empty());
  EXPECT_EQ(nlohmann::json::parse(middle.chunks.front().after), nlohmann::json({{"unit", 200}}));
  o.todo = {{0, R"({"unit": 200})"}};
  auto last = read(o);
  EXPECT_EQ(last.ids.size(), 50u);
  ASSERT_FALSE(last.chunks.empty());
  EXPECT_TRUE(last.chunks.front().after.empty());  // the total says it was the last page
}

TEST_F(Reader, KeepsAWindowOfOffsetPagesInFlight) {
  serve(R"({"records": 5000, "pagination": "offset", "faults": {"/v1/contacts": {"latency_ms": {"min": 1, "max": 5}}}})");
  auto r = read(options(offset(6)));
  EXPECT_EQ(r.ids.size(), 5000u);
  EXPECT_EQ(unique(r.ids).size(), 5000u);
  EXPECT_EQ(watch_->max_in_flight, 6);
  EXPECT_EQ(watch_->sent, 50);
}

TEST_F(Reader, AFullChannelStopsRequestsUntilItIsDrained) {
  serve(R"({"records": 10000, "pagination": "offset"})");
  auto o = options(offset(2));
  o.prefetch = 1;
  PageReader reader(watch_, o);
  reader.start();
  Chunk c;
  ASSERT_EQ(reader.next(c, 30s), PageReader::Next::chunk);
  // The consumer stops; the reader settles with the channel full and a bounded number held.
  // It can only settle by pausing, since 100 pages remain.
  watch_->wait_idle();
  const int sent = watch_->sent;
  EXPECT_LE(sent, 1 + 1 + 1 + 2 * 2 + 2);  // taken, queued, held, twice the window, in flight
  std::size_t records = c.count;
  for (;;) {
    auto r = reader.next(c, 30s);
    ASSERT_NE(r, PageReader::Next::timeout);
    if (r != PageReader::Next::chunk) break;
    records += c.count;
  }
  EXPECT_EQ(records, 10000u);
  EXPECT_EQ(watch_->sent, 100);
}

TEST_F(Reader, PartitionsAreReadConcurrencyAtATimeEachWithTheIncrementalValue) {
  serve(R"({"records": 300, "pagination": "cursor"})");
  auto o = options(cursor(), 3);
  o.partitions = {R"({"region": "eu"})", R"({"region": "us"})", R"({"region": "ap"})"};
  o.incremental_param = "updated_since";
  o.incremental_value = R"("2020-01-01T00:00:00Z")";
  o.concurrency = 2;
  auto r = read(o);
  EXPECT_EQ(r.end, PageReader::Next::end);
  std::map<std::size_t, std::size_t> records, done;
  for (const auto& c : r.chunks) (c.done ? done : records)[c.partition] += c.count;
  EXPECT_EQ(records, (std::map<std::size_t, std::size_t>{{0, 300}, {1, 300}, {2, 300}}));
  EXPECT_EQ(done.size(), 3u);
  EXPECT_LE(watch_->max_in_flight, 2);
  for (const auto& url : watch_->urls) {
    EXPECT_NE(url.find("updated_since=2020-01-01T00%3A00%3A00Z"), std::string::npos) << url;
    EXPECT_NE(url.find("region="), std::string::npos) << url;
  }
}

TEST_F(Reader, AnErrorStatusNamesTheRedactedUrl) {
  serve(R"({"records": 10})");
  auto o = options(cursor());
  o.path = "/v1/nothing-here";
  o.client_query = "api_key=s3cret";
  auto r = read(o);
  EXPECT_EQ(r.end, PageReader::Next::failed);
  EXPECT_EQ(r.error.kind, ReadError::Kind::status);
  EXPECT_EQ(r.error.response.status, 404);
  EXPECT_NE(r.error.message.find("answered 404"), std::string::npos) << r.error.message;
  EXPECT_NE(r.error.message.find("api_key=***"), std::string::npos) << r.error.message;
  EXPECT_EQ(r.error.message.find("s3cret"), std::string::npos);
}

TEST_F(Reader, AMissingRecordsPathNamesTheTopLevelKeys) {
  serve(R"({"records": 10, "pagination": "cursor"})");
  auto o = options(cursor());
  o.records_path = "results";
  auto r = read(o);
  EXPECT_EQ(r.end, PageReader::Next::failed);
  EXPECT_EQ(r.error.kind, ReadError::Kind::records);
  EXPECT_NE(r.error.message.find("'results' is missing"), std::string::npos) << r.error.message;
  EXPECT_NE(r.error.message.find("top-level keys: data, meta"), std::string::npos) << r.error.message;
}

TEST_F(Reader, AMalformedPageIsFetchedAgainUpToAttempts) {
  serve(R"({"records": 10, "pagination": "cursor", "faults": {"/v1/contacts": {"malformed": 1.0}}})");
  auto o = options(cursor());
  o.attempts = 3;
  auto r = read(o);
  EXPECT_EQ(r.end, PageReader::Next::failed);
  EXPECT_EQ(r.error.kind, ReadError::Kind::malformed);
  EXPECT_NE(r.error.message.find("malformed JSON 3 times"), std::string::npos) << r.error.message;
  EXPECT_EQ(watch_->sent, 3);
  EXPECT_EQ(r.counts.retries, 2u);
}

TEST_F(Reader, ACursorSeenTwiceIsALoop) {
  testing::CannedServer same(
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n"
      R"({"data":[{"id":1}],"meta":{"next_cursor":"same1"}})");
  ReaderOptions o;
  o.label = "Stream /loop";
  o.path = same.url("/loop");
  o.paginator = cursor();
  o.paginator.has_more_path.clear();
  o.todo = {{0, ""}};
  auto r = read(o);
  EXPECT_EQ(r.end, PageReader::Next::failed);
  EXPECT_EQ(r.error.kind, ReadError::Kind::loop);
  EXPECT_NE(r.error.message.find("page 3 would fetch"), std::string::npos) << r.error.message;
  EXPECT_EQ(r.ids.size(), 2u);  // the pages before the loop were handed over
}

TEST_F(Reader, CloseCancelsWhatIsInFlight) {
  serve(R"({"records": 100000, "pagination": "offset", "faults": {"/v1/contacts": {"latency_ms": 20000}}})");
  PageReader reader(watch_, options(offset(4)));
  reader.start();
  reader.close();
  Chunk c;
  EXPECT_EQ(reader.next(c, 30s), PageReader::Next::end);
  watch_->wait_idle();  // every transfer completed (cancelled), long before the server answers
  EXPECT_EQ(watch_->sent, 1);
}

TEST_F(Reader, AFollowPaginatorFetchesOnlyTheStepItsConsumerNamesAfterEachPage) {
  serve(R"({"records": 350, "pagination": "cursor"})");
  PaginatorSpec pg;
  pg.kind = Kind::follow;
  pg.fields = {"meta.next_cursor"};
  PageReader reader(watch_, options(pg));
  reader.start();
  std::vector<std::string> ids;
  int pages = 0;
  for (;;) {
    Chunk c;
    const auto r = reader.next(c, 30s);
    ASSERT_NE(r, PageReader::Next::timeout);
    if (r != PageReader::Next::chunk) {
      EXPECT_EQ(r, PageReader::Next::end) << reader.error().message;
      break;
    }
    if (c.done) continue;
    ++pages;
    // Nothing more goes out until the consumer has named the next step.
    watch_->wait_idle();
    EXPECT_EQ(watch_->sent, pages);
    ASSERT_TRUE(c.page);
    Ids got;
    c.page->visit_records("data", got);
    ids.insert(ids.end(), got.ids.begin(), got.ids.end());
    ASSERT_EQ(c.fields.size(), 1u);
    std::string step;
    if (c.fields[0] && !c.fields[0]->empty() && !got.ids.empty())
      step = R"({"url": null, "params": {"limit": 100, "cursor": ")" + *c.fields[0] + R"("}})";
    reader.follow(c.partition, step);
  }
  EXPECT_EQ(ids.size(), 350u);
  EXPECT_EQ(unique(ids).size(), 350u);
  EXPECT_GE(pages, 4);
  // No page of that partition waits for a step any more.
  EXPECT_THROW(reader.follow(0, ""), Error);
}

TEST_F(Reader, RefusesOptionsThatAreNotValid) {
  serve("{}");
  auto o = options(offset(0));
  try {
    PageReader reader(watch_, o);
    FAIL() << "a window of 0 was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), make_error_code(errc::invalid_argument));
    EXPECT_NE(std::string(e.what()).find("paginator.window"), std::string::npos);
  }
  auto bad = options(cursor());
  bad.todo = {{0, R"({"unit": 3})"}};
  EXPECT_THROW(PageReader(watch_, bad), Error);
  bad.todo = {{5, ""}};
  EXPECT_THROW(PageReader(watch_, bad), Error);
}

}  // namespace
}  // namespace isthmus::pipeline
