// LocalQueue: the embedded backend of the queue interface, one SQLite file in WAL mode. Safe to
// share between threads (one connection behind a mutex) and between processes (each write is
// a BEGIN IMMEDIATE transaction, so two lessees never take the same message).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "isthmus/queue/queue.hpp"

namespace isthmus::queue {

struct LocalQueueOptions {
  // A message leased this many times without an ack goes to the dead letters instead of
  // coming back a further time.
  int max_deliveries = 5;
  int busy_timeout_ms = 5000;
  // Unix seconds; tests pass their own to move time without waiting.
  std::function<double()> clock;
};

class LocalQueue final : public Queue {
 public:
  // Opens `path`, creating it whole when missing. Throws Error(errc::invalid_argument) for bad
  // options and Error(errc::state_error) naming the file when it is damaged or not a queue.
  LocalQueue(const std::string& path, LocalQueueOptions options = {});
  ~LocalQueue() override;

  const std::string& path() const noexcept;
  int max_deliveries() const noexcept;

  // Each completes on the calling thread before returning.
  void async_put(std::vector<Item> items, Handler<std::size_t> done) override;
  void async_lease(std::size_t n, std::chrono::milliseconds visibility, Handler<Lease> done) override;
  void async_ack(std::string token, std::vector<std::uint64_t> ids, Handler<std::size_t> done) override;
  void async_nack(std::string token, std::vector<std::uint64_t> ids, std::chrono::milliseconds delay,
                  Handler<std::size_t> done) override;
  void async_dead_letters(std::size_t limit, Handler<std::vector<DeadLetter>> done) override;
  void async_stats(Handler<Stats> done) override;
  void close() override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace isthmus::queue
