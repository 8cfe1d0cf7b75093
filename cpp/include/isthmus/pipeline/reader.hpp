// The page fetch loop of a paginated stream, run by transport completions on the engine's I/O
// threads. A PageReader reads every partition of a stream through one http::Transport (the
// client's governed stack, so auth, limits and retries apply), follows the built-in paginators,
// parses each page once and hands the parsed pages, in order per partition, to one consumer
// through a bounded channel. When the channel is full the reader stops sending requests and
// resumes when the consumer drains it; an I/O thread never waits.
//
// Steps and positions are JSON text so that checkpoints written by earlier versions resume:
//   a step      {"url": null | "absolute or relative URL", "params": {...}}
//   a position  sequential paginators: the step after the page ("after"), or none at the end;
//               offset and page-number paginators: the units [begin, end) of the page, and the
//               consumer keeps the watermark ({"unit": n} is where a partition resumes).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "isthmus/http/client.hpp"
#include "isthmus/http/message.hpp"
#include "isthmus/pipeline/page.hpp"

namespace isthmus::pipeline {

struct PaginatorSpec {
  // `follow`: the consumer pages (a user's own paginator). Each page comes with the `fields`
  // it asked for, and the partition sends nothing more until PageReader::follow names the
  // next step, so the paginator is asked once per page and the fetch stays in the core.
  enum class Kind { single, cursor, next_url, link_header, offset, page_number, follow };
  Kind kind = Kind::single;
  std::vector<std::string> fields;  // follow: the paths whose text each chunk carries
  std::string param;        // cursor: the query param; offset/page: the unit param
  std::string cursor_path;  // cursor: where the next cursor is
  std::string has_more_path;  // cursor: "false" there ends the stream; empty = not read
  std::string next_path;      // next_url: where the next URL is
  std::string rel = "next";   // link_header
  std::string size_param;     // offset: the limit param; page: the page-size param
  std::uint64_t size = 100;   // records per page (offset) or page size (page number)
  std::string total_path;     // offset: total records; page: total pages; empty = unknown
  std::int64_t start = 0;     // page number: the first page
  std::size_t window = 8;     // offset/page: requests in flight

  bool ranges() const { return kind == Kind::offset || kind == Kind::page_number; }
};

// Where one partition starts: `inner` is "" (from the beginning), a step, or {"unit": n}.
struct Resume {
  std::size_t partition = 0;
  std::string inner;
};

struct ReaderOptions {
  std::string label;         // starts every error message, e.g. "Stream /v1/contacts"
  std::string base_url;      // the client's base URL; "" when it has none
  std::string path;          // the stream's path (joined to base_url) or an absolute URL
  std::string client_query;  // the client's own params, already encoded ("a=1&b=2")
  http::Headers headers;     // sent with every request
  std::string records_path = "data";
  std::string params = "{}";             // JSON object: the stream's params
  std::vector<std::string> partitions;   // JSON objects of extra params; empty = one, {}
  std::string incremental_param;         // "" = none; else its value is added to every partition
  std::string incremental_value;         // JSON value
  PaginatorSpec paginator;
  std::vector<Resume> todo;  // the partitions to read, in order (none: the read ends at once)
  std::size_t concurrency = 4;  // partitions read at once
  int attempts = 6;             // a malformed 2xx page is fetched at most this many times
  std::size_t prefetch = 8;     // parsed pages that may wait for the consumer
  // Keep each parsed page's raw body in its chunk too; by default it is freed once parsed,
  // since the parsed page holds everything and a waiting page would otherwise weigh double.
  bool keep_body = false;
  // One page per partition in `todo`, then the partition stops: its chunk's `after` names the
  // step the partition continues with ({"unit": n} for offset and page-number paginators too),
  // "" when that page was its last. A worker's page task reads through this.
  bool single_page = false;
};

// One parsed page (or the end mark of a partition). A C++ consumer reads `page` directly
// (records by visit_records(records_path, ...), fields by text()); `response` keeps the
// status and headers of the answer, and its raw body with keep_body. A page that is valid
// JSON the core's parser cannot hold (an integer wider than 64 bits) comes with `page` null
// and `done` false: its records are in `response.body` (always kept), for a parser that can.
struct Chunk {
  std::size_t partition = 0;
  std::shared_ptr<const Page> page;  // null on a done mark and on an unparsed page
  std::size_t count = 0;             // records in the page
  http::Response response;
  std::string after;                 // sequential: the next step as JSON, "" = none
  std::optional<std::pair<std::uint64_t, std::uint64_t>> units;  // ranges: [begin, end)
  std::optional<std::uint64_t> total;  // records in the partition, on its first page if known
  std::vector<std::optional<std::string>> fields;  // follow: the text at each of spec.fields
  bool done = false;                   // the partition has delivered its last page
};

// Why a read stopped. `response` and `url` are set when an answer was involved.
struct ReadError {
  enum class Kind { none, transport, status, malformed, records, loop, cancelled };
  Kind kind = Kind::none;
  std::error_code code;   // transport: the core's code
  std::string message;    // names the stream, the redacted URL and what was wrong
  std::string url;        // redacted
  http::Response response;
  std::string top_level;  // records: "top-level keys: a, b" or what the body is
};

// Counted over every attempt behind each answer.
struct ReaderCounts {
  std::uint64_t requests = 0;
  std::uint64_t status_429 = 0;
  std::uint64_t retries = 0;
  std::uint64_t bytes_in = 0;
  double wait_seconds = 0;  // held back by limiters and backing off
};

class PageReader {
 public:
  // Throws isthmus::Error(invalid_argument) naming the field when the options are not valid.
  PageReader(std::shared_ptr<http::Transport> transport, ReaderOptions options);
  // Closes, and waits until the transport has completed (cancelled) what was in flight.
  ~PageReader();
  PageReader(const PageReader&) = delete;
  PageReader& operator=(const PageReader&) = delete;

  // Sends the first requests. Once.
  void start();

  enum class Next { chunk, timeout, end, failed };
  // Waits up to `timeout` for the next chunk. After the last one: end, or failed (see error()).
  Next next(Chunk& out, std::chrono::milliseconds timeout);
  // The first error; valid once next() answered failed.
  ReadError error() const;
  ReaderCounts counts() const;

  // Paginator kind follow: the step after the last page handed over from `partition` (JSON,
  // as a step above), or "" when that page was its last. Ignored after close() or a failure.
  void follow(std::size_t partition, const std::string& step);

  // Cancels what is in flight and drops what waits; next() then answers end. Idempotent.
  void close();

  class Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace isthmus::pipeline
