// The sandbox's ground truth: what it accepted, served and received. Every counter a test or a
// reconciliation needs lives here; the server and the router only report events.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace isthmus::sandbox {

class Stats {
 public:
  explicit Stats(std::size_t max_arrivals = 100000) : max_arrivals_(max_arrivals) {}

  void connection_opened();
  void connection_closed();

  // One answered (or deliberately unanswered) request. `when` is unix time in seconds.
  void request(std::string_view endpoint, int status, double when, std::string_view credential = {});
  void rate_limited() { rate_limited_.fetch_add(1, std::memory_order_relaxed); }
  void token_issued(std::string_view grant);
  void token_refreshed() { tokens_refreshed_.fetch_add(1, std::memory_order_relaxed); }
  void token_revoked() { tokens_revoked_.fetch_add(1, std::memory_order_relaxed); }
  void records_served(std::string_view resource, std::uint64_t n);
  // Returns true when this record id was new for the resource.
  bool record_received(std::string_view resource, const std::string& id);
  void idempotent_replay(std::string_view resource);
  void fault(std::string_view kind);
  void webhook(std::string_view outcome);  // "delivered", "failed_attempt", "gave_up"

  std::string json() const;
  void reset();

 private:
  struct Arrival {
    double when;
    std::string endpoint;
    int status;
    std::string credential;
  };
  struct Received {
    std::set<std::string, std::less<>> ids;
    std::uint64_t duplicates = 0;
    std::uint64_t replays = 0;
  };

  std::size_t max_arrivals_;
  std::atomic<std::uint64_t> accepted_{0}, open_{0}, max_open_{0};
  std::atomic<std::uint64_t> rate_limited_{0}, tokens_refreshed_{0}, tokens_revoked_{0};

  mutable std::mutex mutex_;
  std::uint64_t total_ = 0;
  std::map<std::string, std::map<int, std::uint64_t>, std::less<>> by_endpoint_;
  std::map<int, std::uint64_t> by_status_;
  std::map<std::string, std::uint64_t, std::less<>> tokens_issued_;
  std::map<std::string, std::uint64_t, std::less<>> served_;
  std::map<std::string, Received, std::less<>> received_;
  std::map<std::string, std::uint64_t, std::less<>> faults_;
  std::map<std::string, std::uint64_t, std::less<>> webhooks_;
  std::vector<Arrival> arrivals_;
  std::uint64_t arrivals_dropped_ = 0;
};

}  // namespace isthmus::sandbox
