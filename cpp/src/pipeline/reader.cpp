#include "isthmus/pipeline/reader.hpp"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>

#include "isthmus/error.hpp"
#include "isthmus/http/link.hpp"
#include "isthmus/http/url.hpp"
#include "isthmus/queue/channel.hpp"

namespace isthmus::pipeline {

namespace {

// Insertion order matters: a step's params go on the wire in the order they were set.
using json = nlohmann::ordered_json;

[[noreturn]] void invalid(const std::string& field, const std::string& why) {
  throw Error(errc::invalid_argument, field + ": " + why);
}

json parse_json(const std::string& field, const std::string& text) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    invalid(field, std::string("is not JSON (") + e.what() + ")");
  }
}

// The query text of a step's params, as the Python client flattens them: a list repeats its
// name, null is left out, booleans are lower case, other scalars in their text form.
std::string encode_params(const json& params) {
  std::vector<std::pair<std::string, std::string>> flat;
  for (const auto& [name, value] : params.items()) {
    auto add = [&](const json& v) {
      if (v.is_null()) return;
      if (v.is_boolean()) flat.emplace_back(name, v.get<bool>() ? "true" : "false");
      else if (v.is_string()) flat.emplace_back(name, v.get<std::string>());
      else flat.emplace_back(name, v.dump());
    };
    if (value.is_array()) {
      for (const auto& v : value) add(v);
    } else {
      add(value);
    }
  }
  return http::encode_query(flat);
}

bool success(int status) { return status >= 200 && status < 300; }

// A scalar field of a page, as text (the paginator's cursor, next URL or total).
using Fields = std::function<std::optional<std::string>(const std::string&)>;

// The tree parser's view of a dotted path, for the rare page only it can read: the path as a
// JSON pointer, so nlohmann does the walking.
nlohmann::json::json_pointer pointer(const std::string& path) {
  std::string out;
  std::size_t at = 0;
  while (!path.empty() && at <= path.size()) {
    const std::size_t dot = std::min(path.find('.', at), path.size());
    out += '/';
    for (char c : path.substr(at, dot - at)) out += c == '~' ? "~0" : c == '/' ? "~1" : std::string(1, c);
    at = dot + 1;
  }
  return nlohmann::json::json_pointer(out);
}

// A step that cannot index what it meets (a name into an array) means the path is absent.
Page::Records tree_records(const nlohmann::json& doc, const std::string& path, std::size_t& count) {
  try {
    const auto ptr = pointer(path);
    if (!doc.contains(ptr)) return Page::Records::missing;
    const auto& at = doc.at(ptr);
    if (!at.is_array()) return Page::Records::not_an_array;
    count = at.size();
    return Page::Records::ok;
  } catch (const nlohmann::json::exception&) {
    return Page::Records::missing;
  }
}

std::optional<std::string> tree_text(const nlohmann::json& doc, const std::string& path) {
  try {
    const auto ptr = pointer(path);
    if (!doc.contains(ptr)) return std::nullopt;
    const auto& at = doc.at(ptr);
    if (at.is_string()) return at.get<std::string>();
    if (at.is_boolean()) return std::string(at.get<bool>() ? "true" : "false");
    if (at.is_number()) return at.dump();
  } catch (const nlohmann::json::exception&) {
  }
  return std::nullopt;
}

std::string tree_shape(const nlohmann::json& doc) {
  if (!doc.is_object()) return std::string("the body is a JSON ") + (doc.is_array() ? "list" : "value");
  std::string out = "top-level keys: ";
  std::size_t n = 0;
  for (const auto& [k, v] : doc.items()) {
    if (n == 20) break;
    out += (n++ ? ", " : "") + k;
  }
  return out;
}

std::uint64_t whole(const std::string& text) {
  // As Python's int(float(text)): "120", "120.0" and "1.2e2" all count 120 records.
  try {
    const double v = std::stod(text);
    return v > 0 ? static_cast<std::uint64_t>(v) : 0;
  } catch (const std::exception&) {
    return 0;
  }
}

}  // namespace

// Completions not yet destroyed by the transport; the reader's owner waits for none to be left.
struct Outstanding {
  std::mutex m;
  std::condition_variable cv;
  std::size_t n = 0;
};

struct Ticket {
  explicit Ticket(std::shared_ptr<Outstanding> o) : outstanding(std::move(o)) {
    std::lock_guard lock(outstanding->m);
    ++outstanding->n;
  }
  ~Ticket() {
    std::lock_guard lock(outstanding->m);
    if (--outstanding->n == 0) outstanding->cv.notify_all();
  }
  Ticket(const Ticket&) = delete;
  Ticket& operator=(const Ticket&) = delete;
  std::shared_ptr<Outstanding> outstanding;
};

class PageReader::Impl : public std::enable_shared_from_this<Impl> {
 public:
  // After close(): every completion has run and been released.
  void wait_for_completions() {
    std::unique_lock lock(outstanding_->m);
    outstanding_->cv.wait(lock, [&] { return outstanding_->n == 0; });
  }

  Impl(std::shared_ptr<http::Transport> transport, ReaderOptions options)
      : transport_(std::move(transport)), o_(std::move(options)), channel_(o_.prefetch) {}

  void validate_and_plan();
  void start();
  Next next(Chunk& out, std::chrono::milliseconds timeout);
  void close();
  void follow(std::size_t partition, const std::string& step);

  ReadError error() const {
    std::lock_guard lock(m_);
    return error_;
  }
  ReaderCounts counts() const {
    std::lock_guard lock(m_);
    return counts_;
  }

 private:
  // One partition being read.
  struct Part {
    std::size_t partition = 0;
    json base;  // {"url": null, "params": {...}}
    // Sequential paginators: the step to fetch next, and the steps fetched so far.
    json step;
    std::set<std::string> seen;
    std::size_t pages = 0;
    // Offset and page-number paginators.
    bool first = true;
    std::uint64_t unit0 = 0, per = 1;
    std::optional<std::uint64_t> end;
    std::uint64_t next_send = 0, next_deliver = 0;
    std::map<std::uint64_t, Chunk> arrived;  // answered out of order, waiting for their turn
    std::size_t in_flight = 0;
    std::deque<Chunk> held;  // ready, waiting for room in the channel
    bool started = false;
    bool fetch_done = false;  // nothing more to request; the done mark is queued
    bool finished = false;    // the done mark went into the channel
    bool armed = false;       // waiting for the channel's resume call
    bool following = false;   // follow: a page was handed over, its next step not yet named
  };

  struct Send {
    std::size_t part;
    json step;
    std::uint64_t unit;
    int attempt;
  };

  std::string url_of(const json& step) const;
  json range_step(const Part& p, std::uint64_t unit) const;
  void begin(std::size_t pi, std::vector<Send>& sends);
  void start_waiting(std::vector<Send>& sends);
  void pump(std::size_t pi, std::vector<Send>& sends);
  bool flush(std::size_t pi);
  void finish_part(std::size_t pi, std::vector<Send>& sends);
  void resume(std::size_t pi);
  void dispatch(std::vector<Send>& sends);
  void on_answer(const Send& s, std::uint64_t token, std::error_code ec, http::Response r);
  void fail(ReadError e);
  void accept_sequential(std::size_t pi, const json& step, Chunk chunk, const Fields& text,
                         std::vector<Send>& sends);
  void accept_range(std::size_t pi, std::uint64_t unit, Chunk chunk, const Fields& text,
                    std::vector<Send>& sends);

  std::shared_ptr<http::Transport> transport_;
  ReaderOptions o_;
  queue::Channel<Chunk> channel_;
  std::shared_ptr<Outstanding> outstanding_ = std::make_shared<Outstanding>();

  mutable std::mutex m_;
  json params_;
  std::vector<json> partitions_;
  std::vector<Part> parts_;
  std::deque<std::size_t> waiting_parts_;
  std::size_t active_ = 0, finished_ = 0;
  std::uint64_t next_token_ = 1;
  std::unordered_map<std::uint64_t, std::uint64_t> in_flight_;  // token -> transport id (0 until known)
  bool started_ = false, failed_ = false, closed_ = false;
  ReadError error_;
  ReaderCounts counts_;
};

void PageReader::Impl::validate_and_plan() {
  const auto& pg = o_.paginator;
  if (!transport_) invalid("transport", "is required");
  if (o_.concurrency < 1) invalid("concurrency", "expected an int >= 1");
  if (o_.attempts < 1) invalid("attempts", "expected an int >= 1");
  if (o_.prefetch < 1) invalid("prefetch", "expected an int >= 1");
  if (pg.ranges()) {
    if (pg.size < 1) invalid("paginator.size", "expected an int >= 1");
    if (pg.window < 1) invalid("paginator.window", "expected an int >= 1");
    if (pg.start < 0) invalid("paginator.start", "expected an int >= 0");
    if (pg.param.empty() || pg.size_param.empty()) invalid("paginator.param", "expected query parameter names");
  }
  if (pg.kind == PaginatorSpec::Kind::cursor && (pg.param.empty() || pg.cursor_path.empty()))
    invalid("paginator.cursor", "expected a cursor path and a query parameter name");
  if (pg.kind == PaginatorSpec::Kind::next_url && pg.next_path.empty())
    invalid("paginator.next", "expected the path of the next URL");
  params_ = parse_json("params", o_.params);
  if (!params_.is_object()) invalid("params", "expected a JSON object");
  if (o_.partitions.empty()) o_.partitions.push_back("{}");
  for (std::size_t i = 0; i < o_.partitions.size(); ++i) {
    const std::string field = "partitions[" + std::to_string(i) + "]";
    partitions_.push_back(parse_json(field, o_.partitions[i]));
    if (!partitions_.back().is_object()) invalid(field, "expected a JSON object of params");
  }
  json inc_value;
  if (!o_.incremental_param.empty()) inc_value = parse_json("incremental_value", o_.incremental_value);
  for (const auto& r : o_.todo) {
    const std::string field = "todo[" + std::to_string(parts_.size()) + "]";
    if (r.partition >= partitions_.size()) invalid(field, "names a partition that does not exist");
    Part p;
    p.partition = r.partition;
    json params = params_;
    for (const auto& [k, v] : partitions_[r.partition].items()) params[k] = v;
    if (!o_.incremental_param.empty()) params[o_.incremental_param] = inc_value;
    p.base = json{{"url", nullptr}, {"params", params}};
    json inner = r.inner.empty() ? json() : parse_json(field + ".inner", r.inner);
    if (pg.ranges()) {
      const std::uint64_t first = pg.kind == PaginatorSpec::Kind::page_number
                                      ? static_cast<std::uint64_t>(pg.start) : 0;
      if (inner.is_null()) {
        p.unit0 = first;
      } else if (inner.is_object() && inner.contains("unit") && inner["unit"].is_number_unsigned()) {
        p.unit0 = inner["unit"].get<std::uint64_t>();
      } else if (inner.is_object() && inner.contains("unit") && inner["unit"].is_number_integer() &&
                 inner["unit"].get<std::int64_t>() >= 0) {
        p.unit0 = static_cast<std::uint64_t>(inner["unit"].get<std::int64_t>());
      } else {
        invalid(field + ".inner", "expected {\"unit\": n} for this paginator, got " + inner.dump());
      }
      p.per = pg.kind == PaginatorSpec::Kind::offset ? pg.size : 1;
    } else if (inner.is_null()) {
      p.step = p.base;
    } else {
      if (!inner.is_object() || !inner.contains("params") || !inner["params"].is_object() ||
          !(inner.value("url", json()).is_null() || inner["url"].is_string()))
        invalid(field + ".inner", "expected a step {\"url\": ..., \"params\": {...}}, got " + inner.dump());
      p.step = inner;
    }
    parts_.push_back(std::move(p));
    waiting_parts_.push_back(parts_.size() - 1);
  }
}

std::string PageReader::Impl::url_of(const json& step) const {
  std::string target = step.contains("url") && step["url"].is_string() ? step["url"].get<std::string>() : o_.path;
  // As the Python client joins a path to its base URL; an absolute URL stays as it is.
  std::string full;
  if (target.find("://") != std::string::npos || o_.base_url.empty()) {
    full = target;
  } else if (target.empty()) {
    full = o_.base_url;
  } else {
    std::string base = o_.base_url;
    while (!base.empty() && base.back() == '/') base.pop_back();
    std::size_t skip = 0;
    while (skip < target.size() && target[skip] == '/') ++skip;
    full = base + "/" + target.substr(skip);
  }
  std::string query = o_.client_query;
  const std::string own = encode_params(step["params"]);
  if (!own.empty()) query += (query.empty() ? "" : "&") + own;
  if (!query.empty()) full += (full.find('?') == std::string::npos ? "?" : "&") + query;
  return http::encode_url(full);
}

json PageReader::Impl::range_step(const Part& p, std::uint64_t unit) const {
  json step = p.base;
  step["params"][o_.paginator.size_param] = o_.paginator.size;
  step["params"][o_.paginator.param] = unit;
  return step;
}

// Called with m_ held. Queues the partition's first request.
void PageReader::Impl::begin(std::size_t pi, std::vector<Send>& sends) {
  Part& p = parts_[pi];
  p.started = true;
  ++active_;
  if (o_.paginator.ranges()) {
    ++p.in_flight;
    sends.push_back({pi, range_step(p, p.unit0), p.unit0, 1});
  } else {
    pump(pi, sends);
  }
}

// Called with m_ held: starts partitions while fewer than `concurrency` are being read.
void PageReader::Impl::start_waiting(std::vector<Send>& sends) {
  while (active_ < o_.concurrency && !waiting_parts_.empty()) {
    const std::size_t next = waiting_parts_.front();
    waiting_parts_.pop_front();
    begin(next, sends);
  }
}

// Called with m_ held: queues the requests the partition may send now. Nothing is sent while
// its pages wait for room in the channel, so a slow consumer holds the reader back.
void PageReader::Impl::pump(std::size_t pi, std::vector<Send>& sends) {
  Part& p = parts_[pi];
  if (failed_ || closed_ || p.fetch_done || !p.held.empty()) return;
  const auto& pg = o_.paginator;
  if (!pg.ranges()) {
    if (p.in_flight > 0 || p.following) return;
    std::string fingerprint = nlohmann::json(p.step).dump();  // sorted keys: one text per step
    if (!p.seen.insert(fingerprint).second) {
      ReadError e;
      e.kind = ReadError::Kind::loop;
      e.message = o_.label + ": the paginator loops: page " + std::to_string(p.pages + 1) + " would fetch " +
                  http::redact_url(p.step.dump()) +
                  " again (already fetched in this run); the API returned the same cursor twice";
      failed_ = true;
      error_ = std::move(e);
      return;
    }
    ++p.in_flight;
    sends.push_back({pi, p.step, 0, 1});
    return;
  }
  if (p.first) return;  // the first page decides the step and the end
  // At most `window` pages sent ahead of the page handed over next, answered or not: a parsed
  // page weighs one to two times its body (its own copy of the tape and strings), so answers
  // that arrive early wait in a bounded number.
  while (p.in_flight < pg.window && (p.next_send - p.next_deliver) / p.per < pg.window &&
         (!p.end || p.next_send < *p.end)) {
    ++p.in_flight;
    sends.push_back({pi, range_step(p, p.next_send), p.next_send, 1});
    p.next_send += p.per;
  }
}

// Called with m_ held: moves the partition's ready pages into the channel, in order. Returns
// false when the channel is full (the resume is armed) or closed.
bool PageReader::Impl::flush(std::size_t pi) {
  Part& p = parts_[pi];
  while (!p.held.empty()) {
    const bool mark = p.held.front().done;
    std::function<void()> on_room;
    if (!p.armed) {
      on_room = [weak = weak_from_this(), pi] {
        if (auto self = weak.lock()) self->resume(pi);
      };
    }
    auto r = channel_.push(p.held.front(), std::move(on_room));
    if (r == queue::Channel<Chunk>::Push::full) {
      p.armed = true;
      return false;
    }
    if (r == queue::Channel<Chunk>::Push::closed) return false;
    p.held.pop_front();
    if (mark) {
      p.finished = true;
      ++finished_;
      --active_;
    }
  }
  return true;
}

// Called with m_ held, once the partition has nothing more to request.
void PageReader::Impl::finish_part(std::size_t pi, std::vector<Send>& sends) {
  Part& p = parts_[pi];
  if (p.fetch_done) return;
  p.fetch_done = true;
  Chunk mark;
  mark.partition = p.partition;
  mark.done = true;
  p.held.push_back(std::move(mark));
}

// The channel has room again (called by the consumer's pop, without the channel's lock).
void PageReader::Impl::resume(std::size_t pi) {
  std::vector<Send> sends;
  bool all_done = false;
  {
    std::lock_guard lock(m_);
    parts_[pi].armed = false;
    if (failed_ || closed_) return;
    if (flush(pi)) pump(pi, sends);
    start_waiting(sends);
    all_done = finished_ == parts_.size();
  }
  // Closed outside m_: close() runs resume callbacks, which take it.
  if (all_done) channel_.close();
  dispatch(sends);
}

void PageReader::Impl::start() {
  std::vector<Send> sends;
  bool nothing = false;
  {
    std::lock_guard lock(m_);
    if (started_) return;
    started_ = true;
    start_waiting(sends);
    nothing = parts_.empty();
  }
  if (nothing) channel_.close();
  dispatch(sends);
}

// Sends without holding m_: a transport may complete a refused request inline.
void PageReader::Impl::dispatch(std::vector<Send>& sends) {
  bool loop_failed = false;
  {
    std::lock_guard lock(m_);
    loop_failed = failed_ && !channel_.closed();
  }
  if (loop_failed) {
    fail(error());
    return;
  }
  for (auto& s : sends) {
    http::Request req;
    req.method = "GET";
    req.url = url_of(s.step);
    req.headers = o_.headers;
    std::uint64_t token;
    {
      std::lock_guard lock(m_);
      if (failed_ || closed_) return;
      token = next_token_++;
      in_flight_.emplace(token, 0);
    }
    // The completion holds the reader weakly, and a ticket the reader's owner waits for: the
    // last reference to the reader (and through it to the transport) is then never dropped on
    // an I/O thread, where destroying the client would wait for that very thread.
    auto ticket = std::make_shared<Ticket>(outstanding_);
    const std::uint64_t id = transport_->send(
        std::move(req), [weak = weak_from_this(), s, token, ticket](std::error_code ec, http::Response r) {
          if (auto self = weak.lock()) self->on_answer(s, token, ec, std::move(r));
        });
    bool cancel = false;
    {
      std::lock_guard lock(m_);
      auto it = in_flight_.find(token);
      if (it != in_flight_.end()) {
        it->second = id;
        cancel = failed_ || closed_;
      }
    }
    if (cancel) transport_->cancel(id);
  }
}

void PageReader::Impl::on_answer(const Send& s, std::uint64_t token, std::error_code ec, http::Response r) {
  {
    std::lock_guard lock(m_);
    in_flight_.erase(token);
    --parts_[s.part].in_flight;
    if (failed_ || closed_ || parts_[s.part].fetch_done) return;
    counts_.requests += static_cast<std::uint64_t>(std::max(r.attempts, 0));
    counts_.retries += static_cast<std::uint64_t>(std::max(r.attempts - 1, 0));
    counts_.status_429 += static_cast<std::uint64_t>(r.retried_429) + (r.status == 429 ? 1 : 0);
    counts_.bytes_in += r.retried_bytes + r.body.size();
    counts_.wait_seconds += r.waited;
  }
  const std::string where = http::redact_url(s.step.is_null() ? std::string() : url_of(s.step));
  if (ec) {
    ReadError e;
    e.kind = ec == make_error_code(errc::cancelled) ? ReadError::Kind::cancelled : ReadError::Kind::transport;
    e.code = ec;
    e.url = where;
    e.message = r.error_message;
    e.response = std::move(r);
    return fail(std::move(e));
  }
  if (!success(r.status)) {
    ReadError e;
    e.kind = ReadError::Kind::status;
    e.url = where;
    e.message = o_.label + ": GET " + where + " answered " + std::to_string(r.status) +
                (r.attempts > 1 ? " after " + std::to_string(r.attempts) + " attempts" : "");
    e.response = std::move(r);
    return fail(std::move(e));
  }
  // Parsed here, on the I/O thread that got the answer, outside the reader's lock.
  std::string parse_error;
  std::shared_ptr<const Page> page(Page::parse(r.body, parse_error));
  Fields fields;
  std::size_t count = 0;
  Page::Records found = Page::Records::missing;
  std::string shape;
  nlohmann::json doc;  // only for a page the core's parser refuses but JSON allows
  if (page) {
    found = page->find_records(o_.records_path, count);
    fields = [&page](const std::string& path) { return page->text(path); };
    if (found != Page::Records::ok) shape = page->shape();
  } else if (nlohmann::json::accept(r.body)) {
    // Valid JSON the core cannot hold (an integer wider than 64 bits): the page goes to the
    // consumer unparsed, its raw body to be read by a parser that can; the fields the
    // paginator needs come from a slower tree parse.
    doc = nlohmann::json::parse(r.body);
    found = tree_records(doc, o_.records_path, count);
    fields = [&doc](const std::string& path) { return tree_text(doc, path); };
    if (found != Page::Records::ok) shape = tree_shape(doc);
  } else if (s.attempt < o_.attempts) {
    // A body damaged on the way (a proxy cutting it) is fetched again, like a 5xx.
    std::vector<Send> again{{s.part, s.step, s.unit, s.attempt + 1}};
    {
      std::lock_guard lock(m_);
      ++counts_.retries;
      ++parts_[s.part].in_flight;
    }
    return dispatch(again);
  } else {
    ReadError e;
    e.kind = ReadError::Kind::malformed;
    e.url = where;
    e.message = o_.label + ": GET " + where + " returned malformed JSON " + std::to_string(o_.attempts) +
                " times: " + parse_error;
    e.response = std::move(r);
    return fail(std::move(e));
  }
  if (found != Page::Records::ok) {
    ReadError e;
    e.kind = ReadError::Kind::records;
    e.url = where;
    e.top_level = shape;
    e.message = o_.label + ": the records path '" + o_.records_path + "' " +
                (found == Page::Records::missing ? "is missing" : "is not an array") + " in the page from GET " +
                where + " (" + e.top_level + "); set records= to the path of the records array";
    e.response = std::move(r);
    return fail(std::move(e));
  }
  if (page && !o_.keep_body) std::string().swap(r.body);
  Chunk chunk;
  chunk.partition = parts_[s.part].partition;
  chunk.page = page;
  chunk.count = count;
  chunk.response = std::move(r);
  std::vector<Send> sends;
  bool all_done = false;
  {
    std::lock_guard lock(m_);
    if (failed_ || closed_ || parts_[s.part].fetch_done) return;
    if (o_.paginator.ranges()) {
      accept_range(s.part, s.unit, std::move(chunk), fields, sends);
    } else {
      accept_sequential(s.part, s.step, std::move(chunk), fields, sends);
    }
    if (flush(s.part)) pump(s.part, sends);
    start_waiting(sends);
    all_done = finished_ == parts_.size();
  }
  // Closed outside m_: close() runs resume callbacks, which take it.
  if (all_done) channel_.close();
  dispatch(sends);
}

// Called with m_ held: the page of a sequential paginator and the step after it.
void PageReader::Impl::accept_sequential(std::size_t pi, const json& step, Chunk chunk, const Fields& text,
                                         std::vector<Send>& sends) {
  Part& p = parts_[pi];
  const auto& pg = o_.paginator;
  ++p.pages;
  json next;
  switch (pg.kind) {
    case PaginatorSpec::Kind::cursor: {
      auto value = text(pg.cursor_path);
      const bool more = pg.has_more_path.empty() || text(pg.has_more_path) != "false";
      if (value && !value->empty() && more) {
        next = json{{"url", step["url"]}, {"params", step["params"]}};
        next["params"][pg.param] = *value;
      }
      break;
    }
    case PaginatorSpec::Kind::next_url:
      if (auto url = text(pg.next_path); url && !url->empty()) next = json{{"url", *url}, {"params", json::object()}};
      break;
    case PaginatorSpec::Kind::link_header:
      if (auto url = http::find_link(chunk.response.headers, pg.rel)) next = json{{"url", *url}, {"params", json::object()}};
      break;
    case PaginatorSpec::Kind::follow:
      // The consumer names the next step once it has seen the page (follow()).
      for (const auto& f : pg.fields) chunk.fields.push_back(text(f));
      p.following = true;
      p.held.push_back(std::move(chunk));
      return;
    default:
      break;
  }
  if (!next.is_null() && chunk.count == 0) next = json();  // an empty page with a cursor: the end
  if (!next.is_null()) chunk.after = next.dump();
  p.held.push_back(std::move(chunk));
  if (next.is_null() || o_.single_page) {
    finish_part(pi, sends);
  } else {
    p.step = std::move(next);
  }
}

// Called with m_ held: a page of an offset or page-number paginator, handed over in order.
void PageReader::Impl::accept_range(std::size_t pi, std::uint64_t unit, Chunk chunk, const Fields& text,
                                    std::vector<Send>& sends) {
  Part& p = parts_[pi];
  const auto& pg = o_.paginator;
  const bool offset = pg.kind == PaginatorSpec::Kind::offset;
  if (p.first) {
    p.first = false;
    if (!pg.total_path.empty()) {
      if (auto t = text(pg.total_path)) {
        p.end = offset ? whole(*t) : static_cast<std::uint64_t>(pg.start) + whole(*t);
      }
    }
    const std::uint64_t n = chunk.count;
    if (offset && n > 0 && n < p.per && (!p.end || p.unit0 + n < *p.end)) {
      // The server clamped the page size (or this is the last page): step by what it really
      // serves, so no offset is skipped; an empty page then ends the stream.
      p.per = n;
    }
    if (p.end) {
      const std::uint64_t span = *p.end > p.unit0 ? *p.end - p.unit0 : 0;
      chunk.total = offset ? span : span * std::max<std::uint64_t>(n, 1);
    }
    chunk.units = std::make_pair(p.unit0, p.unit0 + p.per);
    p.next_send = p.next_deliver = p.unit0 + p.per;
    const bool last = n == 0 || (p.end && p.next_send >= *p.end);
    if (o_.single_page && !last) chunk.after = json{{"unit", p.next_send}}.dump();
    p.held.push_back(std::move(chunk));
    if (last || o_.single_page) finish_part(pi, sends);
    return;
  }
  p.arrived.emplace(unit, std::move(chunk));
  for (auto it = p.arrived.find(p.next_deliver); it != p.arrived.end(); it = p.arrived.find(p.next_deliver)) {
    Chunk c = std::move(it->second);
    p.arrived.erase(it);
    if (!p.end && c.count == 0) {
      // Without a total, the first empty page ends the stream: what is still in flight beyond
      // it is dropped when it answers.
      p.arrived.clear();
      finish_part(pi, sends);
      return;
    }
    c.units = std::make_pair(p.next_deliver, p.next_deliver + p.per);
    p.held.push_back(std::move(c));
    p.next_deliver += p.per;
    if (p.end && p.next_deliver >= *p.end) {
      finish_part(pi, sends);
      return;
    }
  }
}

void PageReader::Impl::follow(std::size_t partition, const std::string& step) {
  json next;
  if (!step.empty()) {
    next = parse_json("step", step);
    if (!next.is_object() || !next.contains("params") || !next["params"].is_object() ||
        !(next.value("url", json()).is_null() || next["url"].is_string()))
      invalid("step", "expected {\"url\": ..., \"params\": {...}}, got " + next.dump());
  }
  std::vector<Send> sends;
  bool all_done = false;
  {
    std::lock_guard lock(m_);
    if (failed_ || closed_) return;
    auto it = std::find_if(parts_.begin(), parts_.end(),
                           [&](const Part& p) { return p.partition == partition && p.following; });
    if (it == parts_.end()) invalid("partition", std::to_string(partition) + " has no page waiting for its next step");
    const std::size_t pi = static_cast<std::size_t>(it - parts_.begin());
    it->following = false;
    if (next.is_null()) {
      finish_part(pi, sends);
    } else {
      it->step = std::move(next);
    }
    if (flush(pi)) pump(pi, sends);
    start_waiting(sends);
    all_done = finished_ == parts_.size();
  }
  if (all_done) channel_.close();
  dispatch(sends);
}

void PageReader::Impl::fail(ReadError e) {
  std::vector<std::uint64_t> ids;
  {
    std::lock_guard lock(m_);
    if (closed_) return;
    // The first error is the one reported (a loop found while queueing requests is recorded
    // first and shut down here).
    if (!failed_) error_ = std::move(e);
    failed_ = true;
    for (const auto& [token, id] : in_flight_)
      if (id) ids.push_back(id);
    // Pages already queued are still handed out; those held back are dropped with the read.
    for (auto& p : parts_) p.held.clear();
  }
  channel_.close();
  for (auto id : ids) transport_->cancel(id);
}

PageReader::Next PageReader::Impl::next(Chunk& out, std::chrono::milliseconds timeout) {
  auto r = channel_.pop(out, timeout);
  if (r == queue::Channel<Chunk>::Pop::ok) return Next::chunk;
  if (r == queue::Channel<Chunk>::Pop::timeout) return Next::timeout;
  std::lock_guard lock(m_);
  return failed_ && !closed_ ? Next::failed : Next::end;
}

void PageReader::Impl::close() {
  std::vector<std::uint64_t> ids;
  {
    std::lock_guard lock(m_);
    if (closed_) return;
    closed_ = true;
    for (const auto& [token, id] : in_flight_)
      if (id) ids.push_back(id);
    for (auto& p : parts_) p.held.clear();
  }
  channel_.close();
  channel_.clear();
  for (auto id : ids) transport_->cancel(id);
}

PageReader::PageReader(std::shared_ptr<http::Transport> transport, ReaderOptions options)
    : impl_(std::make_shared<Impl>(std::move(transport), std::move(options))) {
  impl_->validate_and_plan();
}

PageReader::~PageReader() {
  impl_->close();
  impl_->wait_for_completions();
}

void PageReader::start() { impl_->start(); }

PageReader::Next PageReader::next(Chunk& out, std::chrono::milliseconds timeout) {
  return impl_->next(out, timeout);
}

void PageReader::follow(std::size_t partition, const std::string& step) { impl_->follow(partition, step); }
ReadError PageReader::error() const { return impl_->error(); }
ReaderCounts PageReader::counts() const { return impl_->counts(); }
void PageReader::close() { impl_->close(); }

}  // namespace isthmus::pipeline
