"""Pipelines: a paginated ``Stream`` -> Python mapping in batches -> a sink, at-least-once.

::

    contacts = isthmus.Stream(client, "/v1/contacts", records="data",
                              paginator=isthmus.CursorPaginator("meta.next_cursor", param="cursor"),
                              params={"limit": 100})
    run = isthmus.Pipeline(contacts, map=to_ours, sink=isthmus.JsonlSink("out.jsonl"),
                           state="contacts.db").run(progress=True)
    run.summary()

Pages are fetched on a background thread (the core does the HTTP and parses each page's JSON
with the GIL released) into a small bounded queue; mapping, the sink and checkpoints run on
the caller's thread. A checkpoint moves only past records the sink accepted, so a rerun after
a crash resumes there and may resend a few records, never skip one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import html
import json
import queue
import re
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from isthmus import _core, errors
from isthmus.sinks import Counters, Sink, send_with_retry
from isthmus.store import StateStore

__all__ = [
    "Stream", "Paginator", "CursorPaginator", "OffsetPaginator", "PageNumberPaginator",
    "LinkHeaderPaginator", "NextUrlPaginator", "Incremental", "Pipeline", "Run",
]

Step = Dict[str, Any]  # {"url": absolute URL or None (the stream's path), "params": {...}}


def _get_path(record: Any, path: Sequence[str]) -> Any:
    for step in path:
        if not isinstance(record, dict):
            return None
        record = record.get(step)
    return record



class _MalformedPage(errors.PipelineError):
    """A 2xx page whose JSON does not parse: fetched again before it stops the run."""

class Page:
    """What a paginator sees of one page: its records, the fields it asked for, the response."""

    __slots__ = ("records", "fields", "response", "step")

    def __init__(self, records: list, fields: Dict[str, Optional[str]], response: Any, step: Step):
        self.records, self.fields, self.response, self.step = records, fields, response, step


# -- paginators ------------------------------------------------------------------------------

class Paginator:
    """The hook for odd APIs: subclass and override ``next`` (and ``fields`` for what to read).

    ``next(page)`` returns the next step, ``{"url": absolute-or-None, "params": {...}}``, or
    None when the stream is done. Steps are saved as checkpoints, so they must be JSON.
    """

    parallel = False

    def fields(self) -> List[str]:
        """Dotted paths to read from each page for ``next`` (``page.fields[path]`` is text or None)."""
        return []

    def next(self, page: Page) -> Optional[Step]:
        raise NotImplementedError


class CursorPaginator(Paginator):
    """``param=<value at cursor path>`` until the cursor is null or empty (or ``has_more`` is false)."""

    def __init__(self, cursor: str = "meta.next_cursor", param: str = "cursor", has_more: Optional[str] = None):
        self.cursor, self.param, self.has_more = cursor, param, has_more

    def fields(self) -> List[str]:
        return [self.cursor] + ([self.has_more] if self.has_more else [])

    def next(self, page: Page) -> Optional[Step]:
        value = page.fields.get(self.cursor)
        if not value or (self.has_more and page.fields.get(self.has_more) == "false"):
            return None
        return {"url": page.step["url"], "params": {**page.step["params"], self.param: value}}


class NextUrlPaginator(Paginator):
    """Follows the URL at ``next`` in the body until it is null."""

    def __init__(self, next: str = "next"):
        self.path = next

    def fields(self) -> List[str]:
        return [self.path]

    def next(self, page: Page) -> Optional[Step]:
        url = page.fields.get(self.path)
        return {"url": url, "params": {}} if url else None


class LinkHeaderPaginator(Paginator):
    """Follows ``Link: <url>; rel="next"`` (RFC 8288) until there is none.

    The core parses every Link field of the response: quoted parameters, several relation
    types in one ``rel``, several links in a field and several fields; ``rel`` is compared
    case-insensitively.
    """

    def __init__(self, rel: str = "next"):
        self.rel = rel

    def next(self, page: Page) -> Optional[Step]:
        url = _core.find_link(page.response.headers.get_list("link"), self.rel)
        return {"url": url, "params": {}} if url is not None else None


class _RangePaginator(Paginator):
    """Pages addressed by a number, so a window of them can be fetched in parallel."""

    parallel = True
    unit_param = ""
    start = 0

    def __init__(self, size: int, size_param: str, total: Optional[str], window: int):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise errors.ConfigError(f"limit: {size!r} is not valid; expected an int >= 1")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise errors.ConfigError(f"window: {window!r} is not valid; expected an int >= 1")
        self.size, self.size_param, self.total, self.window = size, size_param, total, window

    def fields(self) -> List[str]:
        return [self.total] if self.total else []

    def step(self, base: Step, unit: int) -> Step:
        return {"url": base["url"], "params": {**base["params"], self.size_param: self.size, self.unit_param: unit}}

    def units_per_page(self) -> int:
        raise NotImplementedError

    def end_unit(self, total_text: Optional[str]) -> Optional[int]:
        raise NotImplementedError


class OffsetPaginator(_RangePaginator):
    """``offset=`` and ``limit=``; ``total`` (a path to the record count) lets pages go in parallel."""

    def __init__(self, param: str = "offset", limit_param: str = "limit", limit: int = 100,
                 total: Optional[str] = "meta.total", window: int = 8):
        super().__init__(limit, limit_param, total, window)
        self.unit_param = param

    def units_per_page(self) -> int:
        return self.size

    def end_unit(self, total_text: Optional[str]) -> Optional[int]:
        return int(float(total_text)) if total_text else None


class PageNumberPaginator(_RangePaginator):
    """``page=`` (from ``start``) and a page size; ``total_pages`` lets pages go in parallel."""

    def __init__(self, param: str = "page", size_param: str = "per_page", size: int = 100,
                 total_pages: Optional[str] = "meta.total_pages", start: int = 1, window: int = 8):
        super().__init__(size, size_param, total_pages, window)
        self.unit_param, self.start = param, start

    def units_per_page(self) -> int:
        return 1

    def end_unit(self, total_text: Optional[str]) -> Optional[int]:
        return self.start + int(float(total_text)) if total_text else None


# -- incremental -----------------------------------------------------------------------------

def _parse_time(v: Any) -> Optional[float]:
    if v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return _dt.datetime.fromisoformat(str(v).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Incremental:
    """Read only what changed: ``param=<last max of cursor_field - lookback>`` on the next run.

    Records at the boundary (within ``lookback`` of the last maximum) that come back unchanged
    are skipped, so an inclusive filter or a lookback does not deliver them twice.
    """

    def __init__(self, cursor_field: str = "updated_at", param: str = "updated_since",
                 lookback: float = 0.0, initial: Any = None):
        if not isinstance(lookback, (int, float)) or lookback < 0:
            raise errors.ConfigError(f"lookback: {lookback!r} is not valid; expected seconds >= 0")
        self.cursor_field, self.param, self.lookback, self.initial = cursor_field, param, float(lookback), initial
        self._path = cursor_field.split(".")

    def start_value(self, state: Optional[Dict[str, Any]]) -> Any:
        if not state or state.get("max") is None:
            return self.initial
        t = _parse_time(state["max"])
        if t is None:
            return state["max"]
        t -= self.lookback
        return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class _IncrementalTracker:
    def __init__(self, inc: Incremental, state: Optional[Dict[str, Any]]):
        self.inc = inc
        self.previous = {k: v for k, v in (state or {}).get("boundary", [])}
        self.max_value: Any = (state or {}).get("max")
        self.max_t = _parse_time(self.max_value)
        self.boundary: Dict[str, Any] = {}

    def skip(self, record: Any, key: str) -> bool:
        value = _get_path(record, self.inc._path)
        return key in self.previous and self.previous[key] == value

    def observe(self, records: List[Any], keys: List[str]) -> None:
        path, lookback = self.inc._path, self.inc.lookback
        for r, k in zip(records, keys):
            v = _get_path(r, path)
            t = _parse_time(v)
            if t is None:
                continue
            if self.max_t is None or t > self.max_t:
                self.max_t, self.max_value = t, v
                if self.boundary:
                    self.boundary = {bk: bv for bk, bv in self.boundary.items()
                                     if (_parse_time(bv) or 0) >= t - lookback}
            if t >= self.max_t - lookback:
                self.boundary[k] = v

    def state(self) -> Dict[str, Any]:
        merged = {k: v for k, v in self.previous.items()
                  if self.max_t is None or (_parse_time(v) or 0) >= self.max_t - self.inc.lookback}
        merged.update(self.boundary)
        return {"max": self.max_value, "boundary": sorted(merged.items())}


# -- the stream ------------------------------------------------------------------------------

class _Chunk:
    """One page, parsed, with where a resume should start once the sink has accepted it."""

    __slots__ = ("records", "partition", "after", "units", "total", "bytes")

    def __init__(self, records: list, partition: int, after: Optional[Step], units: Optional[Tuple[int, int]],
                 total: Optional[int]):
        self.records, self.partition, self.after, self.units, self.total = records, partition, after, units, total


class Stream:
    """A paginated endpoint read as one stream of records.

    ``records`` is the dotted path of the records array in each page ("" for a bare array);
    ``key`` the dotted path of a record's identity (dead letters, idempotency keys, dedupe);
    ``partitions`` a list of extra params, each read as its own sub-stream in turn.
    """

    def __init__(self, client: Any, path: str, *, records: str = "data", paginator: Optional[Paginator] = None,
                 params: Optional[Dict[str, Any]] = None, incremental: Optional[Incremental] = None,
                 partitions: Optional[List[Dict[str, Any]]] = None, key: str = "id",
                 attempts: int = 6, parser: str = "python", name: Optional[str] = None):
        if paginator is not None and not isinstance(paginator, Paginator):
            raise errors.ConfigError(f"paginator: {paginator!r} is not an isthmus.Paginator")
        if parser not in ("core", "python"):
            raise errors.ConfigError(f"parser: {parser!r} is not valid; expected 'core' or 'python'")
        if partitions is not None and (not isinstance(partitions, list) or not all(isinstance(p, dict) for p in partitions)):
            raise errors.ConfigError(f"partitions: {partitions!r} is not valid; expected a list of dicts of params")
        self.client, self.path, self.records_path = client, path, records
        self.paginator = paginator
        self.params = dict(params or {})
        self.incremental = incremental
        self.partitions = partitions or [{}]
        self.key = key
        self._key_path = key.split(".")
        self.attempts, self.parser = attempts, parser
        self.name = name or path.strip("/").replace("/", "_")

    def keys(self, records: List[Any]) -> List[str]:
        """Each record's identity as text; a hash of its JSON when it has none."""
        if len(self._key_path) == 1:
            k = self._key_path[0]
            out = [r.get(k) if isinstance(r, dict) else None for r in records]
        else:
            out = [_get_path(r, self._key_path) for r in records]
        for i, v in enumerate(out):
            if v is None:
                out[i] = "sha1:" + hashlib.sha1(json.dumps(records[i], sort_keys=True, default=str).encode()).hexdigest()
            elif not isinstance(v, str):
                out[i] = str(v)
        return out

    # The fetch loop runs on a background thread and puts _Chunks (or an exception) on `out`.
    def _fetch(self, position: Optional[Dict[str, Any]], inc_value: Any, out: "queue.Queue",
               stop: threading.Event, counters: Counters) -> None:
        try:
            start_partition = (position or {}).get("partition", 0)
            for p in range(start_partition, len(self.partitions)):
                inner = (position or {}).get("inner") if p == start_partition else None
                base: Step = {"url": None, "params": {**self.params, **self.partitions[p]}}
                if self.incremental is not None and inc_value is not None:
                    base["params"][self.incremental.param] = inc_value
                if self.paginator is not None and self.paginator.parallel:
                    self._fetch_ranges(p, base, inner, out, stop, counters)
                else:
                    self._fetch_sequential(p, base, inner, out, stop, counters)
                if stop.is_set():
                    return
            self._put(out, None, stop)
        except BaseException as exc:  # handed to the caller's thread, raised there
            self._put(out, exc, stop)

    @staticmethod
    def _put(out: "queue.Queue", item: Any, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _request(self, step: Step) -> Any:
        return self.client.build_request("GET", step["url"] or self.path, params=step["params"] or None)

    def _get_pages(self, steps: List[Step], counters: Counters, concurrency: int) -> List[Page]:
        reqs = [self._request(s) for s in steps]
        wanted = self.paginator.fields() if self.paginator else []
        pages: List[Optional[Page]] = [None] * len(steps)
        todo = list(range(len(steps)))
        for attempt in range(1, self.attempts + 1):
            answers = send_with_retry(self.client, [reqs[i] for i in todo], counters, self.attempts, concurrency)
            damaged = []
            for i, resp in zip(todo, answers):
                if not 200 <= resp.status_code < 300:
                    raise errors.PipelineError(
                        f"Stream {self.path}: GET {resp.request.url} answered {resp.status_code} "
                        f"{resp.reason_phrase}" + (f" after {self.attempts} attempts" if resp.status_code >= 500
                                                   or resp.status_code == 429 else "")
                        + f": {resp._redacted_excerpt(300)}")
                try:
                    pages[i] = self._parse(steps[i], resp, wanted)
                except _MalformedPage:
                    # A body damaged on the way (a gateway or proxy cutting it) is fetched again,
                    # like a 5xx; only a page that stays malformed stops the run.
                    if attempt == self.attempts:
                        raise
                    damaged.append(i)
            if not damaged:
                break
            counters.retries += len(damaged)
            todo = damaged
        return pages  # type: ignore[return-value]

    def _parse(self, step: Step, resp: Any, wanted: List[str]) -> Page:
        if self.parser == "core" and resp._content is None:
            status, records, values = _core.parse_page(resp._raw, self.records_path, wanted)
        else:
            status, records, values = _parse_in_python(resp.content, self.records_path, wanted)
        where = f"GET {resp.request.url}"
        if status.startswith("invalid:"):
            raise _MalformedPage(f"Stream {self.path}: {where} returned malformed JSON "
                                 f"{self.attempts} times: {status[8:]}")
        if status != "ok":
            shape = _describe_top(resp)
            what = "is missing" if status == "missing" else "is not an array"
            raise errors.PipelineError(
                f"Stream {self.path}: the records path {self.records_path!r} {what} in the page from {where} "
                f"({shape}); set records= to the path of the records array")
        return Page(records, dict(zip(wanted, values)), resp, step)

    def _fetch_sequential(self, partition: int, base: Step, inner: Optional[Step], out: "queue.Queue",
                          stop: threading.Event, counters: Counters) -> None:
        step: Optional[Step] = inner or base
        seen: set = set()
        n = 0
        while step is not None and not stop.is_set():
            fingerprint = json.dumps(step, sort_keys=True)
            if fingerprint in seen:
                raise errors.PipelineError(
                    f"Stream {self.path}: the paginator loops: page {n + 1} would fetch {step!r} again "
                    f"(already fetched in this run); the API returned the same cursor twice")
            seen.add(fingerprint)
            page = self._get_pages([step], counters, 1)[0]
            n += 1
            nxt = self.paginator.next(page) if self.paginator is not None else None
            if nxt is not None and not page.records and self.paginator is not None:
                nxt = None  # an empty page with a cursor: nothing more will come
            self._put(out, _Chunk(page.records, partition, nxt, None, None), stop)
            step = nxt

    def _fetch_ranges(self, partition: int, base: Step, inner: Optional[Dict[str, Any]], out: "queue.Queue",
                      stop: threading.Event, counters: Counters) -> None:
        pag: _RangePaginator = self.paginator  # type: ignore[assignment]
        unit = inner["unit"] if inner else pag.start
        per = pag.units_per_page()
        first = self._get_pages([pag.step(base, unit)], counters, 1)[0]
        end = pag.end_unit(first.fields.get(pag.total)) if pag.total else None
        n = len(first.records)
        if isinstance(pag, OffsetPaginator) and 0 < n < per and (end is None or unit + n < end):
            # The server clamped the page size (or this is the last page): step by what it
            # really serves, so no offset is skipped; an empty page then ends the stream.
            per = n
        total_records = None
        if end is not None:
            total_records = (end - unit) if isinstance(pag, OffsetPaginator) else (end - unit) * max(n, 1)
        self._put(out, _Chunk(first.records, partition, None, (unit, unit + per), total_records), stop)
        if n == 0:
            return
        unit += per
        while not stop.is_set() and (end is None or unit < end):
            units = [unit + per * k for k in range(pag.window)]
            if end is not None:
                units = [u for u in units if u < end]
            pages = self._get_pages([pag.step(base, u) for u in units], counters, pag.window)
            for u, page in zip(units, pages):
                if end is None and not page.records:
                    return  # without a total, the first empty page ends the stream
                self._put(out, _Chunk(page.records, partition, None, (u, u + per), None), stop)
            unit = units[-1] + per


def _parse_in_python(body: bytes, path: str, wanted: List[str]) -> Tuple[str, Any, List[Optional[str]]]:
    try:
        doc = json.loads(body)
    except ValueError as exc:
        return "invalid:" + str(exc), None, []

    def walk(p: str) -> Any:
        at = doc
        for step in p.split(".") if p else []:
            if isinstance(at, dict):
                at = at.get(step)
            elif isinstance(at, list) and step.isdigit() and int(step) < len(at):
                at = at[int(step)]
            else:
                return None
        return at

    def text(v: Any) -> Optional[str]:
        if v is None or isinstance(v, (dict, list)):
            return None
        return ("true" if v else "false") if isinstance(v, bool) else str(v)

    values = [text(walk(f)) for f in wanted]
    records = walk(path)
    if records is None:
        return "missing", None, values
    if not isinstance(records, list):
        return "not_an_array", None, values
    return "ok", records, values


def _describe_top(resp: Any) -> str:
    try:
        doc = json.loads(resp.content)
    except ValueError:
        return "the body is not JSON"
    if isinstance(doc, dict):
        return "top-level keys: " + ", ".join(sorted(doc)[:20])
    return f"the body is a JSON {type(doc).__name__}"


# -- progress --------------------------------------------------------------------------------

class _Progress:
    """A one-line bar on a terminal, an updating HTML line in Jupyter, a line every 5 s in logs."""

    def __init__(self, enabled: bool, label: str):
        self.enabled, self.label = enabled, label
        self.started = time.monotonic()
        self.last = 0.0
        self.handle: Any = None
        self.mode = "off"
        if not enabled:
            return
        try:
            from IPython import get_ipython  # type: ignore
            shell = get_ipython()
            # A Jupyter kernel's shell is ZMQInteractiveShell; the terminal IPython's is not.
            if shell is not None and "ZMQ" in type(shell).__name__:
                from IPython.display import HTML, display  # type: ignore
                self.mode, self._HTML = "jupyter", HTML
                self.handle = display(HTML(""), display_id=True)
                return
        except Exception:
            pass
        self.mode = "tty" if sys.stderr.isatty() else "log"

    def text(self, done: int, total: Optional[int]) -> Tuple[str, float]:
        took = max(time.monotonic() - self.started, 1e-9)
        rate = done / took
        frac = min(done / total, 1.0) if total else None
        if frac is not None:
            eta = (total - done) / rate if rate > 0 else float("inf")
            bar = "#" * int(frac * 30)
            s = (f"{self.label} [{bar:<30}] {done:,}/{total:,} {frac * 100:5.1f}% "
                 f"{rate:,.0f} rec/s ETA {eta:,.0f}s")
        else:
            s = f"{self.label} {done:,} records {rate:,.0f} rec/s {took:,.0f}s"
        return s, frac or 0.0

    def update(self, done: int, total: Optional[int], final: bool = False) -> None:
        if self.mode == "off":
            return
        now = time.monotonic()
        gap = {"tty": 0.1, "jupyter": 0.25, "log": 5.0}[self.mode]
        if not final and now - self.last < gap:
            return
        self.last = now
        s, frac = self.text(done, total)
        if self.mode == "tty":
            sys.stderr.write("\r" + s + ("\n" if final else ""))
            sys.stderr.flush()
        elif self.mode == "log":
            print(s, file=sys.stderr, flush=True)
        else:
            self.handle.update(self._HTML(
                f"<div><progress value='{frac:.4f}' max='1' style='width:30em'></progress> "
                f"{html.escape(s)}</div>"))


# -- the run ---------------------------------------------------------------------------------

_COUNT_NAMES = ["read", "written", "dead_lettered", "dropped", "skipped", "requests", "status_429",
                "retries", "bytes_in", "bytes_out", "wait_seconds"]


def _limiter_wait_seconds(*clients: Any) -> float:
    """Seconds the clients' limiters have held calls back so far (a limiter shared by several
    clients counts once)."""
    seen, total = set(), 0.0
    for client in clients:
        limiter = getattr(client, "limiter", None)
        if limiter is None or id(limiter) in seen:
            continue
        seen.add(id(limiter))
        total += sum(v.get("wait_seconds", 0.0) for v in limiter.snapshot().values())
    return total


class Run:
    """One run of a pipeline: its counts, ``summary()``, ``dead_letters()`` and a Jupyter repr."""

    def __init__(self, pipeline: "Pipeline", run_id: int):
        self.pipeline, self.id = pipeline, run_id
        self.counts: Dict[str, int] = {k: 0 for k in _COUNT_NAMES}
        self.started = time.time()
        self.duration = 0.0
        self.status = "running"
        self.error: Optional[str] = None

    def reconcile(self) -> None:
        """Raises ReconciliationError unless read = written + dead-lettered + dropped + skipped."""
        c = self.counts
        accounted = c["written"] + c["dead_lettered"] + c["dropped"] + c["skipped"]
        if c["read"] != accounted:
            raise errors.ReconciliationError(
                f"run {self.id} of {self.pipeline.name}: read {c['read']:,} != written {c['written']:,} + "
                f"dead-lettered {c['dead_lettered']:,} + dropped {c['dropped']:,} + skipped {c['skipped']:,}")

    def summary(self) -> Dict[str, Any]:
        c = dict(self.counts)
        c.update(pipeline=self.pipeline.name, run_id=self.id, status=self.status,
                 duration_s=round(self.duration, 3),
                 records_per_s=round(c["read"] / self.duration, 1) if self.duration > 0 else None,
                 reconciled=c["read"] == c["written"] + c["dead_lettered"] + c["dropped"] + c["skipped"])
        if self.error:
            c["error"] = self.error
        return c

    def dead_letters(self) -> Any:
        return self.pipeline._frame(self.pipeline.store.dead_letters(self.pipeline.name, run_id=self.id,
                                                                     include_resolved=True))

    def __repr__(self) -> str:
        s = self.summary()
        return (f"<Run {s['run_id']} {s['pipeline']} {s['status']}: read {s['read']:,}, written {s['written']:,}, "
                f"dead-lettered {s['dead_lettered']:,}, dropped {s['dropped']:,}, skipped {s['skipped']:,}; "
                f"{s['requests']:,} requests, {s['status_429']:,} 429s, {s['retries']:,} retries, "
                f"{(s['bytes_in'] + s['bytes_out']) / 1e6:,.1f} MB in {s['duration_s']:.2f} s"
                f"{'' if s['reconciled'] else ' NOT RECONCILED'}>")

    def _repr_html_(self) -> str:
        s = self.summary()
        rows = [("status", s["status"]), ("read", f"{s['read']:,}"), ("written", f"{s['written']:,}"),
                ("dead-lettered", f"{s['dead_lettered']:,}"), ("dropped", f"{s['dropped']:,}"),
                ("skipped (incremental)", f"{s['skipped']:,}"), ("requests", f"{s['requests']:,}"),
                ("429s", f"{s['status_429']:,}"), ("retries", f"{s['retries']:,}"),
                ("waiting on limits and retries", f"{s['wait_seconds']:,.2f} s"),
                ("bytes in / out", f"{s['bytes_in']:,} / {s['bytes_out']:,}"),
                ("duration", f"{s['duration_s']:.2f} s"),
                ("records/s", f"{s['records_per_s'] or 0:,.0f}"),
                ("reconciled", "yes: read = written + dead-lettered + dropped + skipped"
                 if s["reconciled"] else "NO")]
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in rows)
        err = f"<pre>{html.escape(s['error'])}</pre>" if s.get("error") else ""
        return f"<div><b>isthmus run {s['run_id']} of {html.escape(s['pipeline'])}</b><table>{body}</table>{err}</div>"


class Pipeline:
    """``source`` -> ``map`` -> ``sink``, with state (checkpoints, dead letters, runs) in ``state``.

    ``map`` is ``record -> record or None`` (None drops it), or with ``batch=True`` ``list -> list``.
    An exception in it dead-letters the record with its traceback and the run goes on.
    """

    def __init__(self, source: Stream, *, sink: Sink, map: Optional[Callable[..., Any]] = None,
                 batch: bool = False, state: Union[str, StateStore] = "isthmus-state.db",
                 name: Optional[str] = None, checkpoint_every: int = 10_000, prefetch: int = 8):
        if not isinstance(source, Stream):
            raise errors.ConfigError(f"source: {source!r} is not an isthmus.Stream")
        if not isinstance(sink, Sink):
            raise errors.ConfigError(f"sink: {sink!r} is not an isthmus sink (HttpSink, JsonlSink, ...)")
        if map is not None and not callable(map):
            raise errors.ConfigError(f"map: {map!r} is not callable")
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise errors.ConfigError(f"checkpoint_every: {checkpoint_every!r} is not valid; expected an int >= 1")
        self.source, self.sink, self.map, self.batch = source, sink, map, batch
        self.store = state if isinstance(state, StateStore) else StateStore(state)
        self.name = name or source.name
        self.checkpoint_every, self.prefetch = checkpoint_every, max(1, prefetch)

    # -- mapping -----------------------------------------------------------------------------
    def _apply_map(self, records: List[Any], keys: List[str], run: Optional[Run],
                   dead: List[Dict[str, Any]]) -> Tuple[List[Any], List[str], int]:
        """(mapped records, their keys, dropped); failures go to `dead`."""
        fn = self.map
        if fn is None:
            return records, keys, 0
        if self.batch:
            try:
                result = fn(list(records))
                if not isinstance(result, list) or not all(isinstance(r, dict) for r in result):
                    raise TypeError(f"the batch map returned {type(result).__name__}, expected a list of dicts")
                if len(result) > len(records):
                    raise TypeError(f"the batch map returned {len(result)} records for {len(records)}; "
                                    "it may drop records, not add them")
                out_keys = self.source.keys(result)
                return result, out_keys, len(records) - len(result)
            except Exception:
                if len(records) == 1:
                    dead.append(self._map_dead_letter(records[0], keys[0]))
                    return [], [], 0
            # Narrow the failure down to the records that cause it.
            out, out_keys, dropped = [], [], 0
            for r, k in zip(records, keys):
                o, ok, d = self._apply_map([r], [k], run, dead)
                out += o
                out_keys += ok
                dropped += d
            return out, out_keys, dropped
        out, out_keys, dropped = [], [], 0
        append, append_key = out.append, out_keys.append
        for r, k in zip(records, keys):
            try:
                m = fn(r)
                if m is None:
                    dropped += 1
                    continue
                if not isinstance(m, dict):
                    raise TypeError(f"map returned {type(m).__name__}, expected a dict or None")
            except Exception:
                dead.append(self._map_dead_letter(r, k))
                continue
            append(m)
            append_key(k)
        return out, out_keys, dropped

    @staticmethod
    def _map_dead_letter(record: Any, key: str) -> Dict[str, Any]:
        exc = sys.exc_info()[1]
        return {"record_key": key, "stage": "map", "record": record,
                "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}

    def _sink(self, mapped: List[Any], keys: List[str], dead: List[Dict[str, Any]]) -> int:
        """Writes; returns how many the sink accepted. Rejections go to `dead`."""
        if not mapped:
            return 0
        rejected = self.sink.write(mapped, keys)
        for rej in rejected:
            i = rej["index"]
            dead.append({"record_key": keys[i], "stage": "sink", "record": mapped[i], "error": rej["error"],
                         "traceback": rej.get("traceback"), "http_status": rej.get("http_status"),
                         "response_excerpt": rej.get("response_excerpt"), "attempts": rej.get("attempts", 1)})
        return len(mapped) - len(rejected)

    # -- running -----------------------------------------------------------------------------
    def run(self, progress: bool = False) -> Run:
        """Reads the stream from the last checkpoint to its end; returns the reconciled Run."""
        state = self.store.load(self.name)
        run = Run(self, self.store.begin_run(self.name))
        counters = Counters()
        clients = (getattr(self.source, "client", None), getattr(self.sink, "client", None))
        limiter_waits = _limiter_wait_seconds(*clients)
        self.sink.open(counters)
        bar = _Progress(progress, self.name)
        src = self.source
        inc = _IncrementalTracker(src.incremental, state["incremental"]) if src.incremental else None
        inc_value = src.incremental.start_value(state["incremental"]) if src.incremental else None
        position = state["position"]
        if position is not None and position.get("done"):
            position = None
        stop = threading.Event()
        pages: "queue.Queue" = queue.Queue(maxsize=self.prefetch)
        fetcher = threading.Thread(target=src._fetch, args=(position, inc_value, pages, stop, counters),
                                   name=f"isthmus-fetch-{self.name}", daemon=True)
        watermark: Optional[Any] = None
        wm_partition = -1
        committed_position = position
        pending_position = position
        pending_dead: List[Dict[str, Any]] = []
        since_commit = 0
        last_commit = time.monotonic()
        total: Optional[int] = None
        started = time.monotonic()

        def commit(final: bool = False) -> None:
            nonlocal committed_position, pending_dead, since_commit, last_commit
            self.sink.flush()
            if final:
                self.store.commit(self.name, run.id, None, pending_dead,
                                  incremental=inc.state() if inc else ...)
            else:
                self.store.commit(self.name, run.id, pending_position, pending_dead)
            committed_position = pending_position
            pending_dead, since_commit, last_commit = [], 0, time.monotonic()

        fetcher.start()
        try:
            while True:
                item = pages.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                chunk: _Chunk = item
                if chunk.total is not None:
                    total = chunk.total
                records = chunk.records
                run.counts["read"] += len(records)
                keys = src.keys(records)
                if inc is not None:
                    keep = [not inc.skip(r, k) for r, k in zip(records, keys)]
                    if not all(keep):
                        run.counts["skipped"] += keep.count(False)
                        records = [r for r, ok in zip(records, keep) if ok]
                        keys = [k for k, ok in zip(keys, keep) if ok]
                    inc.observe(records, keys)
                dead: List[Dict[str, Any]] = []
                mapped, mkeys, dropped = self._apply_map(records, keys, run, dead)
                written = self._sink(mapped, mkeys, dead)
                run.counts["written"] += written
                run.counts["dropped"] += dropped
                run.counts["dead_lettered"] += len(dead)
                pending_dead.extend(dead)
                # The sink has accepted (or rejected for good) every record of this chunk.
                if chunk.units is not None:
                    if watermark is None or wm_partition != chunk.partition:
                        watermark, wm_partition = _core.Watermark(chunk.units[0]), chunk.partition
                    mark = watermark.complete(*chunk.units)
                    pending_position = {"partition": chunk.partition, "inner": {"unit": mark}}
                elif chunk.after is not None:
                    pending_position = {"partition": chunk.partition, "inner": chunk.after}
                else:
                    pending_position = {"partition": chunk.partition + 1, "inner": None}
                since_commit += len(records)
                if since_commit >= self.checkpoint_every or time.monotonic() - last_commit > 2.0:
                    commit()
                bar.update(run.counts["read"], total)
            commit(final=True)
            run.status = "completed"
        except BaseException as exc:
            run.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            run.error = f"{type(exc).__name__}: {exc}"
            stop.set()
            # Whatever the sink accepted stays accepted: checkpoint it before giving up.
            try:
                commit()
            except Exception:
                pass
            raise
        finally:
            stop.set()
            fetcher.join(timeout=30)
            run.duration = time.monotonic() - started
            for k in ("requests", "status_429", "retries", "bytes_in", "bytes_out"):
                run.counts[k] = getattr(counters, k)
            # Time calls spent held back: by the clients' rate limiters, and backing off to retry.
            run.counts["wait_seconds"] = round(
                counters.wait_seconds + _limiter_wait_seconds(*clients) - limiter_waits, 3)
            self.sink.close()
            bar.update(run.counts["read"], total, final=True)
            self.store.finish_run(run.id, run.status, run.summary(), run.error)
        run.reconcile()
        return run

    # -- dead letters ------------------------------------------------------------------------
    @staticmethod
    def _frame(rows: List[Dict[str, Any]]) -> Any:
        import pandas as pd
        cols = ["id", "record_key", "record", "stage", "error", "http_status", "response_excerpt", "attempts",
                "first_seen", "last_seen", "traceback", "run_id", "resolved_at"]
        df = pd.DataFrame(rows, columns=cols)
        for c in ("first_seen", "last_seen", "resolved_at"):
            df[c] = pd.to_datetime(df[c], unit="s", utc=True)
        df["http_status"] = df["http_status"].astype("Int64")
        return df

    def dead_letters(self, include_resolved: bool = False) -> Any:
        """Every unresolved dead letter of this pipeline, as a pandas DataFrame."""
        return self._frame(self.store.dead_letters(self.name, include_resolved=include_resolved))

    def replay_dead_letters(self, where: Union[str, Callable[[Dict[str, Any]], bool], None] = None) -> Dict[str, int]:
        """Sends dead letters through again (map ones through map and the sink, sink ones to the sink).

        ``where`` is an SQL condition on the dead-letter columns (``"stage = 'map'"``) or a function
        of a row dict. Delivered ones are marked resolved; the rest get one more attempt counted.
        """
        rows = self.store.dead_letters(self.name, where=where if isinstance(where, str) else None)
        if callable(where):
            rows = [r for r in rows if where(r)]
        counters = Counters()
        self.sink.open(counters)
        delivered: List[int] = []
        failed = 0
        try:
            for row in rows:
                dead: List[Dict[str, Any]] = []
                rec, key = row["record"], row["record_key"]
                if row["stage"] == "map":
                    mapped, mkeys, dropped = self._apply_map([rec], [key], None, dead)
                else:
                    mapped, mkeys, dropped = [rec], [key], 0
                ok = self._sink(mapped, mkeys, dead) if mapped else 0
                if dead:
                    failed += 1
                    d = dead[0]
                    self.store.bump_dead_letter(row["id"], d["error"], d.get("http_status"),
                                                d.get("response_excerpt"), d.get("traceback"))
                elif ok or dropped:
                    delivered.append(row["id"])
            self.sink.flush()
            self.store.commit(self.name, 0, self.store.load(self.name)["position"], resolved=delivered)
        finally:
            self.sink.close()
        return {"replayed": len(rows), "delivered": len(delivered), "failed": failed}

    def runs(self) -> Any:
        import pandas as pd
        rows = self.store.runs(self.name)
        flat = [{**{k: v for k, v in r.items() if k != "counts"}, **{k: r["counts"].get(k) for k in _COUNT_NAMES}}
                for r in rows]
        return pd.DataFrame(flat)
