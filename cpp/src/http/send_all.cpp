// send_all: a bounded window over a Transport. No curl or Asio here: it only needs send().
#include <condition_variable>
#include <mutex>

#include "isthmus/error.hpp"
#include "isthmus/http/client.hpp"

namespace isthmus::http {
namespace {

struct Batch {
  std::mutex mutex;
  std::condition_variable all_done;
  std::vector<Request> requests;
  std::vector<Response> results;
  std::size_t next = 0;       // first request not yet sent
  std::size_t in_flight = 0;
  std::size_t finished = 0;
  std::size_t window = 1;
};

// The batch this thread is filling right now, if any.
thread_local const Batch* t_pumping = nullptr;

// Fills the window. A transport may complete inline from send(); such a completion returns
// at once and the enclosing loop takes the free slot, so the stack stays flat for any batch
// size. Completions on other threads (the I/O thread) refill directly rather than handing
// the work back to the caller's thread, which would cost a wake-up per request.
void pump(Transport& transport, const std::shared_ptr<Batch>& b, std::unique_lock<std::mutex>& lock) {
  if (t_pumping == b.get()) return;
  const Batch* outer = t_pumping;
  t_pumping = b.get();
  while (b->in_flight < b->window && b->next < b->requests.size()) {
    const std::size_t index = b->next++;
    ++b->in_flight;
    Request request = std::move(b->requests[index]);
    b->requests[index] = Request{};  // release what the moved-from request still holds
    lock.unlock();
    transport.send(std::move(request), [&transport, b, index](std::error_code ec, Response r) {
      if (ec && !r.error) r.error = ec;
      std::unique_lock inner(b->mutex);
      b->results[index] = std::move(r);
      --b->in_flight;
      ++b->finished;
      if (b->finished == b->results.size()) {
        b->all_done.notify_all();
        return;
      }
      pump(transport, b, inner);
    });
    lock.lock();
  }
  t_pumping = outer;
}

}  // namespace

std::vector<Response> send_all(Transport& transport, std::vector<Request> requests,
                               std::size_t concurrency) {
  auto b = std::make_shared<Batch>();
  const std::size_t n = requests.size();
  if (n == 0) return {};
  b->requests = std::move(requests);
  b->results.resize(n);
  b->window = concurrency == 0 ? 1 : concurrency;
  std::unique_lock lock(b->mutex);
  pump(transport, b, lock);
  b->all_done.wait(lock, [&] { return b->finished == n; });
  return std::move(b->results);
}

}  // namespace isthmus::http
