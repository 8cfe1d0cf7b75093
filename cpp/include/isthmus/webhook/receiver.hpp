// The webhook receiver: an HTTP server (Boost.Beast, its own io_context and threads) that
// checks each delivery (webhook/request.hpp), drops the ones it already accepted, writes the
// rest durably to a queue and only then answers 200. Writes are grouped: whatever arrived while
// the previous put was being written goes out as one put of many items.
//
// Answers: 200 {"accepted": true} once the event is in the queue; 200 {"duplicate": true} for
// an event id the route already accepted (a copy that arrives while the first is being written
// waits for that write and shares its outcome); 503 with Retry-After when the queue holds
// max_depth ready messages or a put failed, in which case nothing was acknowledged; the checks'
// statuses (404, 405, 413, 400, 401) with {"error": check, "message": ...}.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "isthmus/queue/queue.hpp"
#include "isthmus/webhook/request.hpp"

namespace isthmus::webhook {

struct ReceiverOptions {
  std::string host = "127.0.0.1";
  std::uint16_t port = 0;  // 0: a free port
  int threads = 1;         // I/O threads of the server
  std::vector<Route> routes;
  std::shared_ptr<queue::Queue> queue;
  std::size_t max_body_bytes = 1 << 20;
  // Ready messages in the queue at which new events get 503 until a consumer drains it.
  std::int64_t max_depth = 100000;
  // Accepted ids remembered per route for deduplication: the newest this many, none older than
  // the route's replay window (the downstream change log dedupes again by id).
  std::size_t dedupe_ids = 100000;
  // Items in one put at most; the rest of a burst waits for the next.
  std::size_t max_batch = 1024;
  int retry_after_seconds = 1;
  // Unix seconds; tests pass their own.
  std::function<double()> clock;
};

struct ReceiverStats {
  std::uint64_t requests = 0, accepted = 0, duplicates = 0, bad_signature = 0, stale = 0,
                unknown_route = 0, method_not_allowed = 0, too_large = 0, bad_json = 0,
                bad_headers = 0, queue_full = 0, queue_errors = 0;
  std::uint64_t puts = 0;         // queue writes made (each of one or more events)
  std::int64_t depth = 0;         // the receiver's estimate of the queue's ready messages
  std::map<std::string, std::uint64_t> accepted_by_route;
};

class Receiver {
 public:
  // Validates the options (Error(errc::invalid_argument) naming the field); start() listens.
  explicit Receiver(ReceiverOptions options);
  ~Receiver();  // stops
  Receiver(const Receiver&) = delete;
  Receiver& operator=(const Receiver&) = delete;

  void start();  // binds and serves; Error(errc::invalid_argument) when it cannot listen
  // Stops accepting, lets the puts in flight finish (their events are answered or the peer
  // sees the connection close; either way nothing acknowledged is lost), joins the threads.
  void stop();
  std::uint16_t port() const;
  std::string url() const;
  ReceiverStats stats() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace isthmus::webhook
