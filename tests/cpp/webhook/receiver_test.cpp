// The receiver on a real socket and a real LocalQueue file: an acknowledged event is in the
// queue, a duplicate is not queued twice, rejections are counted, a full queue answers 503.
#include "isthmus/webhook/receiver.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "isthmus/auth/crypto.hpp"
#include "isthmus/error.hpp"
#include "isthmus/queue/local_queue.hpp"
#include "support/temp_dir.hpp"

namespace isthmus::webhook {
namespace {

const std::string kSecret = "whsec_" + auth::base64("receiver-test-key");

double now() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

// One request on its own connection; the whole answer (the receiver sends Content-Length).
std::string exchange(std::uint16_t port, const std::string& request) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  EXPECT_EQ(::send(fd, request.data(), request.size(), 0), static_cast<ssize_t>(request.size()));
  std::string out;
  char buf[4096];
  for (;;) {
    const auto head_end = out.find("\r\n\r\n");
    if (head_end != std::string::npos) {
      const auto cl = out.find("Content-Length: ");
      const std::size_t length = cl < head_end ? std::stoul(out.substr(cl + 16)) : 0;
      if (out.size() >= head_end + 4 + length) break;
    }
    const ssize_t r = ::recv(fd, buf, sizeof buf, 0);
    if (r <= 0) break;
    out.append(buf, static_cast<std::size_t>(r));
  }
  ::close(fd);
  return out;
}

std::string signed_post(const std::string& id, const std::string& body, double ts) {
  std::string r = "POST /hooks/crm HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  for (const auto& [k, v] : auth::sign_webhook(auth::WebhookScheme::standard, kSecret, id, ts, body))
    r += k + ": " + v + "\r\n";
  return r + "\r\n" + body;
}

ReceiverOptions options(std::shared_ptr<queue::Queue> q) {
  ReceiverOptions o;
  Route r;
  r.path = "/hooks/crm";
  r.secret = kSecret;
  o.routes.push_back(r);
  o.queue = std::move(q);
  return o;
}

TEST(WebhookReceiver, AcknowledgesOnlyWhatIsInTheQueue) {
  testing::TempDir tmp;
  auto q = std::make_shared<queue::LocalQueue>(tmp.file("q.db"));
  Receiver rx(options(q));
  rx.start();
  const std::string body = R"({"type":"contact.updated"})";
  auto first = exchange(rx.port(), signed_post("msg_1", body, now()));
  EXPECT_NE(first.find("HTTP/1.1 200"), std::string::npos) << first;
  EXPECT_NE(first.find(R"({"accepted": true})"), std::string::npos) << first;
  // Read back through another connection to the same file, before anything else happens.
  queue::LocalQueue reader(tmp.file("q.db"));
  auto lease = queue::lease(reader, 10, std::chrono::seconds(30));
  ASSERT_EQ(lease.messages.size(), 1u);
  EXPECT_NE(lease.messages[0].body.find(R"("event_id": "msg_1")"), std::string::npos);
  EXPECT_NE(lease.messages[0].body.find(R"("event": {"type":"contact.updated"}})"), std::string::npos);

  auto again = exchange(rx.port(), signed_post("msg_1", body, now()));
  EXPECT_NE(again.find(R"({"duplicate": true})"), std::string::npos) << again;
  // No signature headers at all.
  auto bad = exchange(rx.port(), "POST /hooks/crm HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}");
  EXPECT_NE(bad.find("HTTP/1.1 400"), std::string::npos) << bad;
  auto stale = exchange(rx.port(), signed_post("msg_3", body, now() - 1000));
  EXPECT_NE(stale.find("HTTP/1.1 401"), std::string::npos) << stale;
  auto lost = exchange(rx.port(), "GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_NE(lost.find("HTTP/1.1 404"), std::string::npos) << lost;
  rx.stop();

  auto s = rx.stats();
  EXPECT_EQ(s.requests, 5u);
  EXPECT_EQ(s.accepted, 1u);
  EXPECT_EQ(s.duplicates, 1u);
  EXPECT_EQ(s.bad_headers, 1u);
  EXPECT_EQ(s.stale, 1u);
  EXPECT_EQ(s.unknown_route, 1u);
  EXPECT_EQ(s.accepted_by_route["/hooks/crm"], 1u);
  EXPECT_EQ(queue::stats(*q).ready + queue::stats(*q).leased, 1);
}

TEST(WebhookReceiver, AFullQueueAnswers503WithRetryAfter) {
  testing::TempDir tmp;
  auto o = options(std::make_shared<queue::LocalQueue>(tmp.file("q.db")));
  o.max_depth = 1;
  o.retry_after_seconds = 9;
  Receiver rx(std::move(o));
  rx.start();
  EXPECT_NE(exchange(rx.port(), signed_post("a", "1", now())).find("HTTP/1.1 200"), std::string::npos);
  auto full = exchange(rx.port(), signed_post("b", "2", now()));
  EXPECT_NE(full.find("HTTP/1.1 503"), std::string::npos) << full;
  EXPECT_NE(full.find("Retry-After: 9"), std::string::npos) << full;
  EXPECT_EQ(rx.stats().queue_full, 1u);
}

TEST(WebhookReceiver, BadOptionsNameTheField) {
  auto o = options(nullptr);
  EXPECT_THROW(Receiver{o}, Error);
  testing::TempDir tmp;
  o = options(std::make_shared<queue::LocalQueue>(tmp.file("q.db")));
  o.threads = 0;
  try {
    Receiver rx(o);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("threads"), std::string::npos);
  }
}

}  // namespace
}  // namespace isthmus::webhook
