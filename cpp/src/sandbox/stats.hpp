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

// Events carry the tenant they belong to (its index; -1: none, such as /json or a request with
// an unknown credential). A single-tenant sandbox reports everything as tenant 0 and shows no
// per-tenant section; with tenants, json() adds "tenants" and the top-level counts are the totals.
class Stats {
 public:
  explicit Stats(std::size_t max_arrivals = 100000, std::size_t tenants = 0);

  void connection_opened();
  void connection_closed();

  // One answered (or deliberately unanswered) request. `when` is unix time in seconds.
  void request(std::string_view endpoint, int status, double when, std::string_view credential = {},
               int tenant = -1);
  // A 429 from a limit; `app`: the app-wide limit refused it (the tenant's own would not have).
  void rate_limited(int tenant = 0, bool app = false);
  void token_issued(std::string_view grant, int tenant = 0);
  void token_refreshed(int tenant = 0);
  void token_revoked(int tenant = 0, std::uint64_t n = 1);
  void records_served(std::string_view resource, std::uint64_t n, int tenant = 0);
  // Returns true when this record id was new for the resource (of that tenant).
  bool record_received(std::string_view resource, const std::string& id, int tenant = 0);
  void idempotent_replay(std::string_view resource, int tenant = 0);
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
    int tenant;
  };
  struct Received {
    std::set<std::string, std::less<>> ids;
    std::uint64_t duplicates = 0;
    std::uint64_t replays = 0;
  };
  using Counts = std::map<std::string, std::uint64_t, std::less<>>;
  // What one tenant did, and (the entry of the totals) what everyone did.
  struct Counters {
    std::uint64_t requests = 0;
    std::map<std::string, std::map<int, std::uint64_t>, std::less<>> by_endpoint;
    std::map<int, std::uint64_t> by_status;
    std::uint64_t rate_limited = 0, app_rate_limited = 0;
    Counts tokens_issued;
    std::uint64_t tokens_refreshed = 0, tokens_revoked = 0;
    Counts served;
    std::map<std::string, Received, std::less<>> received;  // ids are per tenant: kept here only
  };
  // The tenant's counters, or null when the event belongs to none (or there are no tenants).
  Counters* of(int tenant);
  static void count_request(Counters& c, std::string_view endpoint, int status);

  std::size_t max_arrivals_;
  std::atomic<std::uint64_t> accepted_{0}, open_{0}, max_open_{0};

  mutable std::mutex mutex_;
  Counters totals_;  // its `received` stays empty: json() sums the tenants' (or single_'s)
  Counters single_;  // only `received`: the ids a single-tenant sandbox was sent
  std::vector<Counters> tenants_;
  std::uint64_t without_tenant_ = 0;
  std::map<std::string, std::uint64_t, std::less<>> faults_;
  std::map<std::string, std::uint64_t, std::less<>> webhooks_;
  std::vector<Arrival> arrivals_;
  std::uint64_t arrivals_dropped_ = 0;
};

}  // namespace isthmus::sandbox
