// The queue interface: durable put, lease with a visibility timeout, ack, nack with a delay,
// a delivery count and dead letters. LocalQueue (SQLite, embedded) implements it; a RabbitMQ
// backend implements the same contract (publisher confirms for put, manual acks and prefetch
// for lease, a delivery limit and a dead-letter exchange, a delay queue for nack).
//
// Operations complete through a handler with a Status (an std::error_code from the project's
// category and a message naming what failed) and a result. A backend may run the handler on the
// calling thread (LocalQueue does: SQLite is synchronous) or later on one of its I/O threads (a
// broker's confirm arrives on the connection's thread). The blocking facade below waits for the
// handler and throws isthmus::Error, for callers that have a thread to spare.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <system_error>
#include <vector>

namespace isthmus::queue {

// One body to put. `text` says it was given as text (a Python str) and is handed back as text.
struct Item {
  std::string body;
  bool text = false;
};

struct Message {
  std::uint64_t id = 0;  // unique in the queue for its lifetime (LocalQueue: never reused)
  std::string body;
  bool text = false;
  int deliveries = 0;  // times it has been leased, this lease included
};

// Messages held by one lessee until `expires_at` (Unix seconds). Acks and nacks name the lease
// by its token: once it expired and another lessee took the message, the old token acks nothing.
struct Lease {
  std::string token;
  double expires_at = 0;
  std::vector<Message> messages;
};

// A message delivered `deliveries` times without an ack, moved aside so it stops coming back.
struct DeadLetter {
  std::uint64_t id = 0;
  std::string body;
  bool text = false;
  int deliveries = 0;
  double enqueued_at = 0;
  double dead_at = 0;
  std::string reason;
};

struct Stats {
  std::int64_t ready = 0;    // can be leased now (including messages whose lease expired)
  std::int64_t leased = 0;   // held by a live lease
  std::int64_t delayed = 0;  // nacked with a delay that has not passed yet
  std::int64_t dead = 0;     // in the dead-letter table
};

struct Status {
  std::error_code code;
  std::string message;
  explicit operator bool() const noexcept { return !code; }
};

template <class T>
using Handler = std::function<void(Status, T)>;

class Queue {
 public:
  virtual ~Queue() = default;

  // All of `items` or none; durable once the handler reports success. Result: how many.
  virtual void async_put(std::vector<Item> items, Handler<std::size_t> done) = 0;
  // Up to `n` ready messages, each held for `visibility`; an empty lease when none is ready
  // (the call never waits for messages to arrive).
  virtual void async_lease(std::size_t n, std::chrono::milliseconds visibility,
                           Handler<Lease> done) = 0;
  // Removes the messages of `ids` still held by lease `token`. Result: how many were removed
  // (fewer when a lease expired and another lessee took some).
  virtual void async_ack(std::string token, std::vector<std::uint64_t> ids,
                         Handler<std::size_t> done) = 0;
  // Returns them to ready after `delay` (or to the dead letters once delivered max times).
  virtual void async_nack(std::string token, std::vector<std::uint64_t> ids,
                          std::chrono::milliseconds delay, Handler<std::size_t> done) = 0;
  // The oldest `limit` dead letters (0: all).
  virtual void async_dead_letters(std::size_t limit, Handler<std::vector<DeadLetter>> done) = 0;
  virtual void async_stats(Handler<Stats> done) = 0;
  // Releases the backend's resources; later operations fail with errc::state_error.
  virtual void close() = 0;
};

// The blocking facade: each waits for the operation's handler (on whatever thread it runs) and
// throws isthmus::Error with its status on failure.
std::size_t put(Queue& q, std::vector<Item> items);
Lease lease(Queue& q, std::size_t n, std::chrono::milliseconds visibility);
std::size_t ack(Queue& q, std::string token, std::vector<std::uint64_t> ids);
std::size_t nack(Queue& q, std::string token, std::vector<std::uint64_t> ids,
                 std::chrono::milliseconds delay);
std::vector<DeadLetter> dead_letters(Queue& q, std::size_t limit = 0);
Stats stats(Queue& q);

}  // namespace isthmus::queue
