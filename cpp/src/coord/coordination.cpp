// The only translation unit that sees hiredis. One blocking connection per Coordination, driven
// by the coordination's own thread. Commands that queue up while one is out are written together
// and their replies read in order (a pipeline): under load, reservations arrive faster than one
// round trip each, and a call must not wait for seven others' round trips before its own.
#include "isthmus/coord/coordination.hpp"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "isthmus/error.hpp"
#include "isthmus/http/url.hpp"

namespace isthmus::coord {
namespace {

using Clock = std::chrono::steady_clock;

timeval to_timeval(double seconds) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(seconds);
  tv.tv_usec = static_cast<suseconds_t>((seconds - static_cast<double>(tv.tv_sec)) * 1e6);
  return tv;
}

Value from_reply(const redisReply* r) {
  Value v;
  switch (r->type) {
    case REDIS_REPLY_INTEGER:
      v.type = Value::Type::integer;
      v.integer = r->integer;
      break;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
      v.type = r->type == REDIS_REPLY_STRING ? Value::Type::string
               : r->type == REDIS_REPLY_STATUS ? Value::Type::status
                                               : Value::Type::error;
      v.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ARRAY:
      v.type = Value::Type::array;
      for (std::size_t i = 0; i < r->elements; ++i) v.elements.push_back(from_reply(r->element[i]));
      break;
    default:
      break;
  }
  return v;
}

struct ContextFree {
  void operator()(redisContext* c) const { redisFree(c); }
};
using Context = std::unique_ptr<redisContext, ContextFree>;

struct ReplyFree {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyFree>;

struct Argv {
  explicit Argv(const std::vector<std::string>& argv) {
    for (const auto& a : argv) {
      ptrs.push_back(a.data());
      lens.push_back(a.size());
    }
  }
  int size() const { return static_cast<int>(ptrs.size()); }
  std::vector<const char*> ptrs;
  std::vector<std::size_t> lens;
};

Reply run_argv(redisContext* c, const std::vector<std::string>& argv) {
  Argv a(argv);
  return Reply(static_cast<redisReply*>(redisCommandArgv(c, a.size(), a.ptrs.data(), a.lens.data())));
}

// Writes `argv` into the connection's output buffer; nothing is sent until a reply is read.
bool append_argv(redisContext* c, const std::vector<std::string>& argv) {
  Argv a(argv);
  return redisAppendCommandArgv(c, a.size(), a.ptrs.data(), a.lens.data()) == REDIS_OK;
}

Reply next_reply(redisContext* c) {
  void* r = nullptr;
  if (redisGetReply(c, &r) != REDIS_OK) return nullptr;
  return Reply(static_cast<redisReply*>(r));
}

// The most commands written before their replies are read: bounds the memory of one batch.
constexpr std::size_t kPipelineMax = 64;

bool timed_out(const redisContext* c) {
  const std::string e = c->errstr;
  return e.find("timed out") != std::string::npos || e.find("temporarily unavailable") != std::string::npos;
}

}  // namespace

void validate(const Options& o) {
  auto positive = [](double v, const char* field) {
    if (!std::isfinite(v) || v <= 0)
      throw Error(errc::invalid_argument, std::string(field) + ": " + std::to_string(v) + " must be seconds greater than 0");
  };
  positive(o.connect_timeout, "connect_timeout");
  positive(o.command_timeout, "command_timeout");
  positive(o.backoff_initial, "backoff_initial");
  positive(o.backoff_max, "backoff_max");
  if (o.ns.empty()) throw Error(errc::invalid_argument, "namespace: must not be empty");
  parse_redis_url(o.url);
}

class Coordination::Impl {
 public:
  struct Job {
    std::vector<std::string> argv;  // a command, or the keys and args of `script`
    const Script* script = nullptr;
    std::size_t nkeys = 0;
    Clock::time_point deadline;
    Done done;
    std::function<void()> task;  // instead of a command: run on the thread (see after())
  };

  Options o;
  RedisUrl url;
  std::string redacted;

  mutable std::mutex m;
  std::condition_variable cv;
  std::deque<Job> jobs;
  std::multimap<Clock::time_point, std::function<void()>> later;
  bool stopping = false;
  Stats stats;
  std::thread thread;

  // Slots reserved ahead, per set of shared rate buckets (see Coordination::reserve).
  struct Stock {
    struct Waiter {
      double max_wait;
      limits::TimePoint deadline;
      std::function<void(limits::SharedGrant)> done;
    };
    std::deque<Clock::time_point> slots;
    std::deque<Waiter> waiting;
    bool refilling = false;
  };
  std::mutex stock_m;
  std::map<std::string, Stock> stocks;

  // Thread-owned.
  Context ctx;
  Clock::time_point next_attempt{};
  double backoff = 0;
  std::string last_error;

  // One connection attempt: TCP, AUTH, SELECT and a PING that proves we may talk. On failure
  // the code says what kind, and `last_error` why.
  std::error_code open(Context& out) {
    Context c(redisConnectWithTimeout(url.host.c_str(), url.port, to_timeval(o.connect_timeout)));
    if (!c) {
      last_error = "out of memory";
      return make_error_code(errc::internal);
    }
    if (c->err) {
      last_error = c->errstr;
      return make_error_code(timed_out(c.get()) ? errc::timeout : errc::connect_failed);
    }
    redisSetTimeout(c.get(), to_timeval(o.connect_timeout));
    redisEnableKeepAlive(c.get());
    // A refusal of the credentials is access_refused, as the broker's is: the same class
    // (AccessRefused) whichever server of the scale-out said no.
    auto check = [&](std::vector<std::string> argv, const char* what,
                     errc refused = errc::connect_failed) -> std::error_code {
      Reply r = run_argv(c.get(), argv);
      if (!r) {
        last_error = c->errstr;
        return make_error_code(timed_out(c.get()) ? errc::timeout : errc::connect_failed);
      }
      if (r->type == REDIS_REPLY_ERROR) {
        const std::string_view reason(r->str, r->len);
        last_error = std::string(what) + ": " + printable(reason);
        const bool unauthenticated = reason.rfind("NOAUTH", 0) == 0 || reason.rfind("WRONGPASS", 0) == 0;
        return make_error_code(unauthenticated ? errc::access_refused : refused);
      }
      return {};
    };
    if (!url.password.empty()) {
      std::vector<std::string> auth{"AUTH"};
      if (!url.username.empty()) auth.push_back(url.username);
      auth.push_back(url.password);
      if (auto ec = check(std::move(auth), "the server refused the credentials", errc::access_refused)) return ec;
    }
    if (url.db != 0)
      if (auto ec = check({"SELECT", std::to_string(url.db)}, "cannot select the database")) return ec;
    if (auto ec = check({"PING"}, "the server refused to talk")) return ec;
    redisSetTimeout(c.get(), to_timeval(o.command_timeout));
    out = std::move(c);
    return {};
  }

  std::string failure(const std::string& what) const {
    return "Redis at " + redacted + " " + what + (last_error.empty() ? "" : ": " + last_error);
  }

  void loop() {
    for (;;) {
      Job job;
      {
        std::unique_lock lock(m);
        for (;;) {
          if (stopping) break;
          const auto now = Clock::now();
          while (!later.empty() && later.begin()->first <= now) {
            Job t;
            t.task = std::move(later.begin()->second);
            later.erase(later.begin());
            jobs.push_back(std::move(t));
          }
          if (!jobs.empty()) break;
          if (later.empty()) cv.wait(lock);
          else cv.wait_until(lock, later.begin()->first);
        }
        if (stopping) break;
        job = std::move(jobs.front());
        jobs.pop_front();
        if (!job.task && ctx) {
          // The commands queued behind this one go with it, in order, up to the first task.
          std::vector<Job> batch;
          while (!jobs.empty() && !jobs.front().task && batch.size() + 1 < kPipelineMax) {
            batch.push_back(std::move(jobs.front()));
            jobs.pop_front();
          }
          if (!batch.empty()) {
            batch.insert(batch.begin(), std::move(job));
            lock.unlock();
            run_pipelined(batch);
            continue;
          }
        }
      }
      if (job.task) job.task();
      else run(job);
    }
    // Nothing waits forever on a coordination that is gone.
    std::deque<Job> left;
    {
      std::lock_guard lock(m);
      left.swap(jobs);
      later.clear();
    }
    for (auto& j : left)
      if (j.done) j.done(make_error_code(errc::shutting_down), {});
  }

  // Sleeps until `until` unless asked to stop; false when stopping.
  bool pause_until(Clock::time_point until) {
    std::unique_lock lock(m);
    cv.wait_until(lock, until, [&] { return stopping; });
    return !stopping;
  }

  std::vector<std::string> wire(const Job& job) const {
    if (!job.script) return job.argv;
    std::vector<std::string> argv{"EVALSHA", job.script->sha1, std::to_string(job.nkeys)};
    argv.insert(argv.end(), job.argv.begin(), job.argv.end());
    return argv;
  }

  // The connection broke or the server stopped answering: the next command makes a new one.
  void broken() {
    last_error = ctx->errstr;
    ctx.reset();
    std::lock_guard lock(m);
    stats.connected = false;
  }

  // A restarted (or flushed) Redis forgot the script.
  static bool noscript(const Job& job, const Value& v) {
    return job.script && v.type == Value::Type::error && v.str.rfind("NOSCRIPT", 0) == 0;
  }

  // A batch on a live connection: one write, then every reply, in order, before any completion
  // runs (a completion may issue a command inline, which must not read a reply of this batch).
  // A job without its plain answer (the connection broke, NOSCRIPT) then goes through run()
  // alone, which reconnects, reloads the script and keeps the deadline rules.
  void run_pipelined(std::vector<Job>& batch) {
    std::size_t written = 0;
    for (const auto& j : batch) {
      if (!append_argv(ctx.get(), wire(j))) break;
      ++written;
    }
    std::vector<std::optional<Value>> replies(batch.size());
    for (std::size_t i = 0; i < written; ++i) {
      Reply r = next_reply(ctx.get());
      if (!r) {
        broken();
        break;
      }
      Value v = from_reply(r.get());
      if (noscript(batch[i], v)) continue;
      replies[i] = std::move(v);
    }
    {
      std::lock_guard lock(m);
      for (const auto& v : replies) stats.commands += v ? 1 : 0;
    }
    for (std::size_t i = 0; i < batch.size(); ++i) {
      if (!replies[i]) {
        run(batch[i]);
        continue;
      }
      std::error_code ec;
      if (replies[i]->type == Value::Type::error) ec = make_error_code(errc::internal);
      batch[i].done(ec, std::move(*replies[i]));
    }
  }

  void run(Job& job) {
    bool reloaded = false;
    for (;;) {
      if (!ctx) {
        const auto now = Clock::now();
        if (now < next_attempt) {
          if (job.deadline <= next_attempt) {
            // Wait out what is left of the deadline, then fail: never before it.
            if (!pause_until(job.deadline)) return job.done(make_error_code(errc::shutting_down), {});
            return fail(job, failure("is unreachable"));
          }
          if (!pause_until(next_attempt)) return job.done(make_error_code(errc::shutting_down), {});
        }
        if (open(ctx)) {
          ctx.reset();
          {
            std::lock_guard lock(m);
            stats.connected = false;
          }
          backoff = backoff == 0 ? o.backoff_initial : std::min(o.backoff_max, backoff * 2);
          next_attempt = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(backoff));
          if (Clock::now() >= job.deadline) return fail(job, failure("is unreachable"));
          continue;
        }
        backoff = 0;
        std::lock_guard lock(m);
        ++stats.connects;
        stats.connected = true;
      }
      Reply r = run_argv(ctx.get(), wire(job));
      if (!r) {
        // The connection broke or the server stopped answering: make a new one and send again.
        // A command may then run twice; the ones sent here are safe to (a limit counts a call
        // twice, which only makes it stricter; a lease compares its token).
        broken();
        continue;
      }
      Value v = from_reply(r.get());
      if (noscript(job, v) && !reloaded) {
        // A restarted (or flushed) Redis forgot the script: load it again and try once more.
        reloaded = true;
        Reply l = run_argv(ctx.get(), {"SCRIPT", "LOAD", job.script->text});
        if (!l) {
          last_error = ctx->errstr;
          ctx.reset();
          continue;
        }
        std::lock_guard lock(m);
        ++stats.scripts_loaded;
        continue;
      }
      {
        std::lock_guard lock(m);
        ++stats.commands;
      }
      std::error_code ec;
      if (v.type == Value::Type::error) ec = make_error_code(errc::internal);
      return job.done(ec, std::move(v));
    }
  }

  void fail(Job& job, std::string message) {
    {
      std::lock_guard lock(m);
      ++stats.failed;
    }
    Value v;
    v.type = Value::Type::error;
    v.str = std::move(message);
    job.done(make_error_code(errc::connect_failed), std::move(v));
  }

  // A command issued from a completion on the coordination's thread runs at once, inline:
  // queued, it would wait behind the very completion that waits for it.
  void push(Job job) {
    if (std::this_thread::get_id() == thread.get_id()) return run(job);
    {
      std::lock_guard lock(m);
      if (!stopping) {
        jobs.push_back(std::move(job));
        cv.notify_one();
        return;
      }
    }
    if (job.done) job.done(make_error_code(errc::shutting_down), {});
  }

  Value wait_for(const std::function<void(Done)>& start) {
    auto promise = std::make_shared<std::promise<std::pair<std::error_code, Value>>>();
    auto future = promise->get_future();
    start([promise](std::error_code ec, Value v) { promise->set_value({ec, std::move(v)}); });
    auto [ec, v] = future.get();
    if (ec) throw Error(ec, v.str.empty() ? "Redis at " + redacted + ": " + ec.message() : v.str);
    return v;
  }
};

std::shared_ptr<Coordination> Coordination::connect(Options options) {
  validate(options);
  auto impl = std::make_shared<Impl>();
  impl->o = std::move(options);
  impl->url = parse_redis_url(impl->o.url);
  impl->redacted = http::redact_url(impl->o.url);
  if (auto ec = impl->open(impl->ctx)) {
    throw Error(ec, impl->failure(ec == make_error_code(errc::timeout)
                                      ? "did not answer within the connect timeout (" +
                                            std::to_string(impl->o.connect_timeout) + " s)"
                                      : "cannot be used"));
  }
  impl->stats.connects = 1;
  impl->stats.connected = true;
  auto self = std::shared_ptr<Coordination>(new Coordination());
  self->impl_ = impl;
  // The thread keeps its Impl alive: the last Coordination reference may go on that thread.
  impl->thread = std::thread([impl] { impl->loop(); });
  return self;
}

Coordination::~Coordination() {
  {
    std::lock_guard lock(impl_->m);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  if (impl_->thread.joinable()) {
    // The last reference may be dropped by a completion on the coordination's own thread.
    if (impl_->thread.get_id() == std::this_thread::get_id()) impl_->thread.detach();
    else impl_->thread.join();
  }
}

void Coordination::command(std::vector<std::string> argv, limits::TimePoint deadline, Done done) {
  Impl::Job j;
  j.argv = std::move(argv);
  j.deadline = deadline;
  j.done = std::move(done);
  impl_->push(std::move(j));
}

void Coordination::eval(const Script& script, std::vector<std::string> keys, std::vector<std::string> args,
                        limits::TimePoint deadline, Done done) {
  Impl::Job j;
  j.script = &script;
  j.nkeys = keys.size();
  j.argv = std::move(keys);
  j.argv.insert(j.argv.end(), std::make_move_iterator(args.begin()), std::make_move_iterator(args.end()));
  j.deadline = deadline;
  j.done = std::move(done);
  impl_->push(std::move(j));
}

void Coordination::after(double seconds, std::function<void()> task) {
  const auto when = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  {
    std::lock_guard lock(impl_->m);
    if (impl_->stopping) return;
    impl_->later.emplace(when, std::move(task));
  }
  impl_->cv.notify_one();
}

namespace {
limits::TimePoint in(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}
}  // namespace

Value Coordination::call(std::vector<std::string> argv, double timeout) {
  return impl_->wait_for([&](Done d) { command(std::move(argv), in(timeout), std::move(d)); });
}

Value Coordination::call_script(const Script& script, std::vector<std::string> keys,
                                std::vector<std::string> args, double timeout) {
  return impl_->wait_for([&](Done d) { eval(script, std::move(keys), std::move(args), in(timeout), std::move(d)); });
}

namespace {

// A reservation answered by the limit script: {granted, wait, binding rule, resets_at}.
limits::SharedGrant to_grant(const std::vector<limits::SharedRule>& rules, std::error_code ec, const Value& v) {
  limits::SharedGrant g;
  if (ec) {
    g.error = ec;
    g.reason = v.str.empty() ? ec.message() : v.str + "; the call was not sent uncounted";
    return g;
  }
  if (v.type != Value::Type::array || v.elements.size() != 4) {
    g.error = make_error_code(errc::internal);
    g.reason = "the shared limit script answered something unexpected";
    return g;
  }
  g.granted = v.elements[0].integer == 1;
  g.wait = std::atof(v.elements[1].str.c_str());
  const auto binding = v.elements[2].integer;
  if (binding >= 1 && static_cast<std::size_t>(binding) <= rules.size())
    g.reason = "shared " + rules[static_cast<std::size_t>(binding) - 1].describe;
  if (!g.granted) {
    const bool quota = binding >= 1 && rules[static_cast<std::size_t>(binding) - 1].quota;
    g.error = make_error_code(quota ? errc::quota_exhausted : errc::rate_limited);
    g.resets_at = std::atof(v.elements[3].str.c_str());
  }
  return g;
}

// Slots taken from Redis in one reservation, at most: a few milliseconds of a busy limit, so a
// stock left unused (its process went idle, or Redis restarted and forgot it) stays small.
constexpr std::size_t kAheadMax = 8;
// Slots kept in stock beyond the calls already waiting. The slots are one interval of the whole
// limit apart, but a process uses them at its own share of it: a deeper stock goes stale (and
// is dropped, capacity lost) before it is used.
constexpr std::size_t kAheadSpare = 2;

}  // namespace

void Coordination::reserve_once(std::vector<limits::SharedRule> rules, double cost, double max_wait,
                                limits::TimePoint deadline, std::function<void(limits::SharedGrant)> done) {
  std::vector<std::string> keys, args{std::to_string(cost), std::to_string(max_wait)};
  char buf[64];
  for (const auto& r : rules) {
    keys.push_back(key("limit:" + r.bucket));
    args.emplace_back(r.quota ? "q" : "r");
    std::snprintf(buf, sizeof buf, "%.9g", r.a);
    args.emplace_back(buf);
    std::snprintf(buf, sizeof buf, "%.9g", r.b);
    args.emplace_back(buf);
  }
  eval(gcra_script(), std::move(keys), std::move(args), deadline,
       [rules = std::move(rules), done = std::move(done)](std::error_code ec, Value v) {
         done(to_grant(rules, ec, v));
       });
}

// Calls of cost 1 under rates alone take their slot from a stock this process reserved ahead:
// one script call commits k slots, spaced one interval apart, so most calls skip the Redis
// round trip and its two thread wake-ups (on a busy machine those, not the limit, capped the
// rate of 32 calls in flight). Each slot was counted in Redis before it is handed out, so
// nothing goes uncounted and a Redis that cannot be reached still grants nothing new. A slot
// whose moment passed by more than the rule's slack is dropped, not sent late in a bunch.
// Quotas, other costs, and any batch that fails or is refused go one reservation per call.
void Coordination::reserve(std::vector<limits::SharedRule> rules, double cost, double max_wait,
                           limits::TimePoint deadline, std::function<void(limits::SharedGrant)> done) {
  if (rules.empty()) {
    limits::SharedGrant g;
    g.granted = true;
    return done(g);
  }
  const bool ahead = cost == 1 && std::none_of(rules.begin(), rules.end(), [](const auto& r) { return r.quota; });
  if (!ahead) return reserve_once(std::move(rules), cost, max_wait, deadline, std::move(done));
  std::string name;
  for (const auto& r : rules) name += r.bucket + '\n';
  auto& im = *impl_;
  std::function<void(limits::SharedGrant)> now_done;
  limits::SharedGrant g;
  {
    std::lock_guard lock(im.stock_m);
    auto& stock = im.stocks[name];
    drop_stale(stock.slots, rules);
    if (stock.waiting.empty() && !stock.slots.empty()) {
      g.granted = true;
      g.wait = std::max(0.0, std::chrono::duration<double>(stock.slots.front() - Clock::now()).count());
      g.reason = "shared " + rules.front().describe;
      stock.slots.pop_front();
      now_done = std::move(done);
    } else {
      stock.waiting.push_back({max_wait, deadline, std::move(done)});
    }
  }
  if (now_done) now_done(std::move(g));
  refill(name, std::move(rules), max_wait, deadline);
}

void Coordination::drop_stale(std::deque<limits::TimePoint>& slots, const std::vector<limits::SharedRule>& rules) {
  double slack = rules.front().b - rules.front().a;
  for (const auto& r : rules) slack = std::min(slack, r.b - r.a);
  const auto oldest = Clock::now() - std::chrono::duration_cast<Clock::duration>(
                                         std::chrono::duration<double>(std::max(0.0, slack)));
  while (!slots.empty() && slots.front() < oldest) slots.pop_front();
}

// Asks Redis for the slots the waiting calls need and a few spare, unless a request is out.
void Coordination::refill(const std::string& name, std::vector<limits::SharedRule> rules, double max_wait,
                          limits::TimePoint deadline) {
  auto& im = *impl_;
  std::size_t k = 0;
  {
    std::lock_guard lock(im.stock_m);
    auto& stock = im.stocks[name];
    // No more than the rule's burst can admit at once. A limit with little burst keeps no
    // spare: a slot held ahead would delay the other processes by a whole interval.
    double fits = static_cast<double>(kAheadMax);
    for (const auto& r : rules) fits = std::min(fits, std::floor(r.b / r.a));
    const std::size_t spare = fits >= 2 * kAheadSpare ? kAheadSpare : 0;
    const std::size_t want = stock.waiting.size() + spare;
    if (stock.refilling || stock.slots.size() >= stock.waiting.size() + spare / 2) return;
    k = std::min(want - std::min(stock.slots.size(), want), static_cast<std::size_t>(std::max(1.0, fits)));
    if (k == 0) return;
    for (const auto& w : stock.waiting) deadline = std::min(deadline, w.deadline);
    stock.refilling = true;
  }
  double interval = 0;
  for (const auto& r : rules) interval = std::max(interval, r.a);
  std::weak_ptr<Coordination> weak = weak_from_this();
  reserve_once(rules, static_cast<double>(k), max_wait, deadline,
               [weak, name, rules, k, interval, max_wait, deadline](limits::SharedGrant g) {
                 auto self = weak.lock();
                 if (!self) return;
                 self->stocked(name, rules, k, interval, max_wait, deadline, std::move(g));
               });
}

// A batch came back: its slots go to the waiting calls first, in order. A failed or refused
// batch hands every waiting call to a reservation of its own, with its own deadline.
void Coordination::stocked(const std::string& name, const std::vector<limits::SharedRule>& rules, std::size_t k,
                           double interval, double max_wait, limits::TimePoint deadline, limits::SharedGrant batch) {
  auto& im = *impl_;
  std::vector<std::pair<std::function<void(limits::SharedGrant)>, limits::SharedGrant>> grants;
  std::deque<Impl::Stock::Waiter> alone;
  {
    std::lock_guard lock(im.stock_m);
    auto& stock = im.stocks[name];
    stock.refilling = false;
    if (!batch.granted) {
      alone.swap(stock.waiting);
    } else {
      const auto first = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                            std::chrono::duration<double>(std::max(0.0, batch.wait)));
      for (std::size_t i = 0; i < k; ++i)
        stock.slots.push_back(first + std::chrono::duration_cast<Clock::duration>(
                                          std::chrono::duration<double>(interval * static_cast<double>(i))));
      const auto now = Clock::now();
      while (!stock.waiting.empty() && !stock.slots.empty()) {
        limits::SharedGrant g;
        g.granted = true;
        g.wait = std::max(0.0, std::chrono::duration<double>(stock.slots.front() - now).count());
        g.reason = batch.reason;
        stock.slots.pop_front();
        grants.emplace_back(std::move(stock.waiting.front().done), std::move(g));
        stock.waiting.pop_front();
      }
    }
  }
  for (auto& [done, g] : grants) done(std::move(g));
  for (auto& w : alone) reserve_once(rules, 1, w.max_wait, w.deadline, std::move(w.done));
  if (batch.granted) refill(name, rules, max_wait, deadline);
}

std::string Coordination::key(std::string_view name) const { return impl_->o.ns + ":" + std::string(name); }
const std::string& Coordination::redacted_url() const { return impl_->redacted; }
const Options& Coordination::options() const { return impl_->o; }
Stats Coordination::stats() const {
  std::lock_guard lock(impl_->m);
  return impl_->stats;
}

}  // namespace isthmus::coord
