// The cost of one reservation in the core (Google Benchmark). Rates are set so high that no
// call waits: what is measured is the bookkeeping, the lock and the key lookup.
#include <benchmark/benchmark.h>

#include "isthmus/limits/limiter.hpp"

namespace {

using namespace isthmus::limits;

LimiterOptions options(std::vector<Rule> rules) {
  LimiterOptions o;
  o.rules = std::move(rules);
  o.probe_timeout = 0;  // no answers come back here
  return o;
}

void BM_ReserveRate(benchmark::State& state) {
  Limiter limiter(options({Rule{RateSpec{1e12, 1, 1e6}}}));
  const Key key{"api.example.com", "app", "tenant-1", ""};
  for (auto _ : state) benchmark::DoNotOptimize(limiter.reserve(key, 1).wait);
}
BENCHMARK(BM_ReserveRate);

// "10/s and 10,000/day and at most 8 in flight", scaled up so nothing waits; with release().
void BM_ReserveComposed(benchmark::State& state) {
  Limiter limiter(options({Rule{RateSpec{1e12, 1, 1e6}}, Rule{QuotaSpec{1e15, 86400}}, Rule{ConcurrencySpec{8}}}));
  const Key key{"api.example.com", "app", "tenant-1", ""};
  for (auto _ : state) {
    auto r = limiter.reserve(key, 1);
    limiter.release(r.ticket);
  }
}
BENCHMARK(BM_ReserveComposed);

void BM_ReserveManyKeys(benchmark::State& state) {
  Limiter limiter(options({Rule{RateSpec{1e12, 1, 1e6}}}));
  std::vector<Key> keys;
  for (int i = 0; i < 1000; ++i) keys.push_back(Key{"api.example.com", "app", "tenant-" + std::to_string(i), ""});
  std::size_t i = 0;
  for (auto _ : state) benchmark::DoNotOptimize(limiter.reserve(keys[i++ % keys.size()], 1).wait);
}
BENCHMARK(BM_ReserveManyKeys);

// A tenant with a share nested in the app's rate: its own rate and in-flight cap, with release().
void BM_ReserveWithShare(benchmark::State& state) {
  LimiterOptions o = options({Rule{RateSpec{1e12, 1, 1e6}, kProvider | kCredential}});
  o.shares["tenant-1"] = ShareSpec{2, {Rule{RateSpec{1e12, 1, 1e6}}, Rule{ConcurrencySpec{8}}}};
  Limiter limiter(std::move(o));
  const Key key{"api.example.com", "app", "tenant-1", ""};
  for (auto _ : state) {
    auto r = limiter.reserve(key, 1);
    limiter.release(r.ticket);
  }
}
BENCHMARK(BM_ReserveWithShare);

void BM_ReserveContended(benchmark::State& state) {
  static Limiter* limiter = nullptr;
  if (state.thread_index() == 0) limiter = new Limiter(options({Rule{RateSpec{1e12, 1, 1e6}}}));
  const Key key{"api.example.com", "app", "tenant-1", ""};
  for (auto _ : state) benchmark::DoNotOptimize(limiter->reserve(key, 1).wait);
  if (state.thread_index() == 0) {
    delete limiter;
    limiter = nullptr;
  }
}
BENCHMARK(BM_ReserveContended)->Threads(2);

}  // namespace

BENCHMARK_MAIN();
