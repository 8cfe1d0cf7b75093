// AmqpQueue: the RabbitMQ backend of the queue interface. One AMQP connection, owned by the
// queue and driven by its own I/O thread; every operation is posted to that thread and completes
// there. What lives on the broker, for a queue named N:
//
//   N                 quorum queue, durable: the work. x-delivery-limit = max_deliveries and
//                     dead-lettering (at-least-once) to the exchange N.dlx.
//   N.dlx, N.dead     a fanout exchange and the classic durable queue of dead letters.
//   N.delay.1s ...    quorum queues with a fixed message TTL (1 s, 10 s, 60 s, 300 s) that
//                     dead-letter back to N: where nack(delay) parks a message.
//
// Puts complete when the broker confirmed every item (publisher confirms); leases pull with
// basic.get and manual acks, at most `prefetch` messages held at once (or, with `consume`, take
// what the broker pushed to the client's consumer, within the same window); a lease past its
// visibility is returned by the client. The connection is re-opened with exponential back-off
// when the broker goes away; the leases held on the lost connection are gone (the broker
// requeues their messages), so acks under them report 0.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "isthmus/queue/queue.hpp"

namespace isthmus::queue {

struct AmqpQueueOptions {
  // A message delivered this many times without an ack goes to the dead letters.
  int max_deliveries = 5;
  // The most messages this client holds in live leases at once (AMQP's prefetch window).
  int prefetch = 100;
  // Deliveries pushed by the broker to a consumer (basic.consume, `prefetch` as its QoS window)
  // instead of pulled with one basic.get round trip per lease: a lease takes what already
  // arrived, and a lease with a wait blocks until a message arrives. What the consumer holds
  // unleased counts against prefetch and goes back to the queue when the connection closes.
  bool consume = false;
  // Bounds opening the connection (TCP, TLS, login, declarations) and each reconnect attempt.
  std::chrono::milliseconds connect_timeout{10000};
  // Bounds every broker round trip once connected (an RPC, the confirms of one put).
  std::chrono::milliseconds operation_timeout{30000};
};

class AmqpQueue final : public Queue {
 public:
  // Connects to `url` (amqp:// or amqps://) and declares the queues above. Throws Error naming
  // the URL with its password masked: invalid_url, resolve_failed, connect_failed, tls_error,
  // timeout, access_refused (credentials or vhost) or invalid_argument (bad options, or a
  // declaration the broker refused: the queue exists with other arguments).
  AmqpQueue(const std::string& url, const std::string& name, AmqpQueueOptions options = {});
  ~AmqpQueue() override;

  const std::string& name() const noexcept;
  const std::string& redacted_url() const noexcept;
  int max_deliveries() const noexcept;
  int prefetch() const noexcept;
  bool consume() const noexcept;

  // Each completes later on the queue's I/O thread (or at once, for a refused argument).
  void async_put(std::vector<Item> items, Handler<std::size_t> done) override;
  void async_lease(std::size_t n, std::chrono::milliseconds visibility, Handler<Lease> done) override;
  // As async_lease, waiting up to `wait` for a message when none is ready (only a consuming
  // queue waits; others answer at once). Other operations posted meanwhile end the wait.
  void async_lease_within(std::size_t n, std::chrono::milliseconds visibility, std::chrono::milliseconds wait,
                          Handler<Lease> done);
  // A consuming queue stops taking pushes: the consumer is cancelled and what it held unleased
  // goes back to the queue with its delivery count unchanged (result: how many). The next
  // lease subscribes again. Nothing for a queue that does not consume.
  void async_pause(Handler<std::size_t> done);
  void async_ack(std::string token, std::vector<std::uint64_t> ids, Handler<std::size_t> done) override;
  void async_nack(std::string token, std::vector<std::uint64_t> ids, std::chrono::milliseconds delay,
                  Handler<std::size_t> done) override;
  void async_dead_letters(std::size_t limit, Handler<std::vector<DeadLetter>> done) override;
  void async_stats(Handler<Stats> done) override;
  // Closes the connection (the broker requeues what leases still hold) and joins the thread.
  void close() override;

  // The delay queues' TTLs: nack(delay) parks a message in the smallest one >= delay (the
  // largest when none is).
  static const std::vector<std::chrono::milliseconds>& delay_steps();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace isthmus::queue
