#include <algorithm>

#include "../json_text.hpp"
#include "isthmus/auth/crypto.hpp"
#include "isthmus/pipeline/sink.hpp"

namespace isthmus::pipeline {

namespace {

// Answers that say nothing about whether a batch was applied: the run stops on them.
bool transient(int status) {
  return status == 408 || status == 425 || status == 429 || status == 500 || status == 502 || status == 503 ||
         status == 504;
}

// Answers about the request, not its records (a wrong key, path or method): every other batch
// would get the same, so the run stops instead of trying the records one by one.
bool refused(int status) {
  return status == 401 || status == 403 || status == 404 || status == 405 || status == 407 || status == 410;
}

}  // namespace

HttpBatcher::HttpBatcher(std::shared_ptr<http::Transport> transport, HttpBatchOptions options)
    : transport_(std::move(transport)), options_(std::move(options)) {
  options_.batch_size = std::max<std::size_t>(1, options_.batch_size);
  options_.concurrency = std::max<std::size_t>(1, options_.concurrency);
}

std::string HttpBatcher::idempotency_key(const std::vector<std::string>& keys, std::size_t begin, std::size_t end) {
  std::string joined;
  for (std::size_t i = begin; i < end; ++i) {
    if (i > begin) joined += '\x1f';
    joined += keys[i];
  }
  return "ist-" + auth::hex(auth::sha256(joined)).substr(0, 40);
}

http::Request HttpBatcher::request(std::size_t begin, std::size_t end) const {
  std::string body;
  if (!options_.wrap.empty()) {
    body += '{';
    append_quoted(body, options_.wrap);
    body += ':';
  }
  body += '[';
  for (std::size_t i = begin; i < end; ++i) {
    if (i > begin) body += ',';
    body += records_[i];
  }
  body += ']';
  if (!options_.wrap.empty()) body += '}';
  http::Request r;
  r.method = "POST";
  r.url = options_.url;
  r.headers = options_.headers;
  if (options_.key_fn) {
    std::string key = options_.key_fn(records_, keys_, begin, end);
    if (!key.empty()) r.headers.emplace_back("Idempotency-Key", std::move(key));
  } else if (options_.idempotency_key) {
    r.headers.emplace_back("Idempotency-Key", idempotency_key(keys_, begin, end));
  }
  r.body = std::make_shared<const std::string>(std::move(body));
  r.timeout = options_.timeout;
  return r;
}

HttpOutcome HttpBatcher::write(const MappedBatch& batch) {
  for (std::size_t i = 0; i < batch.size(); ++i) {
    records_.emplace_back(batch.record(i));
    keys_.push_back(batch.key(i).value_or(std::string()));
  }
  if (keys_.size() < options_.batch_size * options_.concurrency) return {};
  return send_kept(keys_.size() - keys_.size() % options_.batch_size);
}

HttpOutcome HttpBatcher::flush() { return keys_.empty() ? HttpOutcome{} : send_kept(keys_.size()); }

void HttpBatcher::clear() {
  records_.clear();
  keys_.clear();
}

HttpOutcome HttpBatcher::send_kept(std::size_t n) {
  std::vector<std::pair<std::size_t, std::size_t>> spans;
  for (std::size_t i = 0; i < n; i += options_.batch_size) spans.emplace_back(i, std::min(i + options_.batch_size, n));
  HttpOutcome out;
  send(spans, /*narrowing=*/false, out);
  // Only now: the records of a send that stops stay kept, and a later flush sends them again.
  if (!out.stop) {
    records_.erase(records_.begin(), records_.begin() + static_cast<std::ptrdiff_t>(n));
    keys_.erase(keys_.begin(), keys_.begin() + static_cast<std::ptrdiff_t>(n));
  } else {
    out.rejected.clear();  // nothing is settled when the run stops; a rerun sends them all again
  }
  return out;
}

void HttpBatcher::send(const std::vector<std::pair<std::size_t, std::size_t>>& spans, bool narrowing,
                       HttpOutcome& out) {
  std::vector<http::Request> requests;
  std::vector<std::size_t> sizes;
  requests.reserve(spans.size());
  for (auto [a, b] : spans) {
    requests.push_back(request(a, b));
    sizes.push_back(requests.back().body->size());
  }
  auto answers = http::send_all(*transport_, std::move(requests), options_.concurrency);
  std::vector<std::pair<std::size_t, std::size_t>> singly;
  for (std::size_t k = 0; k < answers.size(); ++k) {
    http::Response& r = answers[k];
    auto& c = out.counts;
    c.requests += static_cast<std::uint64_t>(r.attempts);
    c.retries += static_cast<std::uint64_t>(std::max(0, r.attempts - 1));
    c.status_429 += static_cast<std::uint64_t>(r.retried_429 + (r.status == 429));
    c.bytes_in += r.retried_bytes + r.body.size();
    c.bytes_out += sizes[k] * static_cast<std::uint64_t>(r.attempts);
    c.waited += r.waited;
  }
  // A request that got no answer stops the run first (the governor has retried it), then the
  // first answer that refuses the request or stayed transient.
  for (int pass = 0; pass < 2; ++pass) {
    for (auto& r : answers) {
      if (pass == 0 ? bool(r.error) : (refused(r.status) || transient(r.status))) {
        if (!out.stop) out.stop = std::move(r);
        return;
      }
    }
  }
  for (std::size_t k = 0; k < answers.size(); ++k) {
    http::Response& r = answers[k];
    if (r.status >= 200 && r.status < 300) continue;
    const auto [a, b] = spans[k];
    if (b - a > 1 && !narrowing) {
      for (std::size_t i = a; i < b; ++i) singly.emplace_back(i, i + 1);
    } else {
      for (std::size_t i = a; i < b; ++i) out.rejected.push_back({keys_[i], records_[i], r});
    }
  }
  if (!singly.empty()) send(singly, /*narrowing=*/true, out);
}

}  // namespace isthmus::pipeline
