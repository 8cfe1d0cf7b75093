#include "isthmus/queue/queue.hpp"

#include <future>
#include <utility>

#include "isthmus/error.hpp"

namespace isthmus::queue {
namespace {

// Starts an operation and waits for its one completion, wherever the backend runs it.
template <class T, class Start>
T wait_for(Start start) {
  std::promise<std::pair<Status, T>> promise;
  auto result = promise.get_future();
  start([&promise](Status status, T value) { promise.set_value({std::move(status), std::move(value)}); });
  auto [status, value] = result.get();
  if (!status) throw Error(status.code, status.message);
  return std::move(value);
}

}  // namespace

std::size_t put(Queue& q, std::vector<Item> items) {
  return wait_for<std::size_t>([&](Handler<std::size_t> h) { q.async_put(std::move(items), std::move(h)); });
}

Lease lease(Queue& q, std::size_t n, std::chrono::milliseconds visibility) {
  return wait_for<Lease>([&](Handler<Lease> h) { q.async_lease(n, visibility, std::move(h)); });
}

std::size_t ack(Queue& q, std::string token, std::vector<std::uint64_t> ids) {
  return wait_for<std::size_t>(
      [&](Handler<std::size_t> h) { q.async_ack(std::move(token), std::move(ids), std::move(h)); });
}

std::size_t nack(Queue& q, std::string token, std::vector<std::uint64_t> ids,
                 std::chrono::milliseconds delay) {
  return wait_for<std::size_t>([&](Handler<std::size_t> h) {
    q.async_nack(std::move(token), std::move(ids), delay, std::move(h));
  });
}

std::vector<DeadLetter> dead_letters(Queue& q, std::size_t limit) {
  return wait_for<std::vector<DeadLetter>>(
      [&](Handler<std::vector<DeadLetter>> h) { q.async_dead_letters(limit, std::move(h)); });
}

Stats stats(Queue& q) {
  return wait_for<Stats>([&](Handler<Stats> h) { q.async_stats(std::move(h)); });
}

}  // namespace isthmus::queue
