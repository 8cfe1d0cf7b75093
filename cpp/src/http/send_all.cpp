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
  bool pumping = false;       // one thread at a time refills the window
};

// Fills the window. A transport may complete inline from send(); the `pumping` flag turns
// that recursion into another turn of this loop, so the stack stays flat for any batch size.
void pump(Transport& transport, const std::shared_ptr<Batch>& b, std::unique_lock<std::mutex>& lock) {
  if (b->pumping) return;
  b->pumping = true;
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
  b->pumping = false;
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
