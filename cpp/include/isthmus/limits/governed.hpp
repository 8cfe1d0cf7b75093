// The governor on the request path. A Governor is the shared, timer-driving face of a Limiter:
// calls wait in a queue per key and go when the limiter says so, the next chosen across queues by
// priority and then by weighted fair share between tenants (limits/fair_queue.hpp).
// GovernedTransport puts a Governor, retries and a circuit breaker in front of any Transport:
// for each attempt it waits for the governor, sends, reports the outcome, and backs off and
// tries again when the retry policy says so — completing the caller exactly once.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "isthmus/http/client.hpp"
#include "isthmus/limits/limiter.hpp"
#include "isthmus/retry/circuit_breaker.hpp"
#include "isthmus/retry/policy.hpp"

namespace isthmus {
class Engine;
}

namespace isthmus::limits {

// A request header the transport reads and strips: "high", "normal" or "low".
inline constexpr const char* kPriorityHeader = "Isthmus-Priority";
// On a quota_exhausted error response: when the quota refills, in Unix seconds.
inline constexpr const char* kResetsAtHeader = "Isthmus-Resets-At";

class Governor {
 public:
  Governor(std::shared_ptr<Engine> engine, std::shared_ptr<Limiter> limiter);
  ~Governor();
  Governor(const Governor&) = delete;
  Governor& operator=(const Governor&) = delete;

  // Called once, on an I/O thread or inside acquire()/cancel(): ec empty = go now, and
  // release(reservation.ticket) when the call is over.
  using Granted = std::function<void(std::error_code ec, const Reservation& reservation)>;
  // `deadline` (steady time; default none): fail with retry_deadline rather than wait past it.
  std::uint64_t acquire(const Key& key, double cost, Priority priority, Granted granted,
                        std::optional<TimePoint> deadline = std::nullopt);
  // The waiting call completes with errc::cancelled, unless it was already granted.
  void cancel(std::uint64_t id);
  void release(std::uint64_t ticket);
  // Calls waiting now, over all keys.
  std::size_t waiting() const;

  Limiter& limiter();
  const std::shared_ptr<Limiter>& limiter_ptr() const;

  class Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

struct GovernedOptions {
  std::optional<retry::Policy> retry;              // none = one attempt
  std::optional<retry::BreakerOptions> breaker;    // none = no circuit breaker
  // Key parts. An empty provider means the URL's host (with port).
  std::string provider;
  std::string credential;
  std::string tenant;
};

class GovernedTransport final : public http::Transport {
 public:
  GovernedTransport(std::shared_ptr<Engine> engine, std::shared_ptr<Governor> governor,
                    std::shared_ptr<http::Transport> inner, GovernedOptions options);
  ~GovernedTransport() override;

  std::uint64_t send(http::Request request, http::Completion done) override;
  void cancel(std::uint64_t id) override;

  const std::shared_ptr<Governor>& governor() const;
  // The circuit breaker's view of a host (closed when there is no breaker).
  retry::CircuitBreaker::State circuit(const std::string& host) const;

  class Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

// "https://user@api.example.com:8443/v1/x?y" -> host "api.example.com:8443", path "/v1/x".
std::pair<std::string, std::string> host_and_path(std::string_view url);

}  // namespace isthmus::limits
