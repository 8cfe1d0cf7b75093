"""Pipelines: a paginated ``Stream`` -> Python mapping in batches -> a sink, at-least-once.

::

    contacts = isthmus.Stream(client, "/v1/contacts", records="data",
                              paginator=isthmus.CursorPaginator("meta.next_cursor", param="cursor"),
                              params={"limit": 100})
    run = isthmus.Pipeline(contacts, map=to_ours, sink=isthmus.JsonlSink("out.jsonl"),
                           state="contacts.db").run(progress=True)
    run.summary()

Pages are fetched on background threads (one per partition being read, the core doing the
HTTP with the GIL released and retrying through the governor) into a small bounded queue;
mapping, the sink and checkpoints run on the caller's thread. A checkpoint moves each partition
only past records the sink accepted, so a rerun after a crash resumes there and may resend a
few records, never skip one.
"""

from __future__ import annotations

import collections
import copy
import datetime as _dt
import gc
import hashlib
import html
import itertools
import json
import queue
import sys
import threading
import time
import traceback
import urllib.parse
from typing import Any, Callable, Dict, Generator, Iterator, List, Optional, Sequence, Set, Tuple, Union

from isthmus import _core, errors
from isthmus.http import _merge_url, redact_url
from isthmus.mapping import FieldMap
from isthmus.sinks import Counters, Rejection, Sink, answered, as_stage_retry, governed, send, status_error
from isthmus.store import StateStore

__all__ = [
    "Stream", "Paginator", "CursorPaginator", "OffsetPaginator", "PageNumberPaginator",
    "LinkHeaderPaginator", "NextUrlPaginator", "Incremental", "TimeSlices", "Pipeline", "Run",
]

Step = Dict[str, Any]  # {"url": absolute URL or None (the stream's path), "params": {...}}

# Params that move through the data rather than select it; the paginator's own are added.
_PAGING_PARAMS = frozenset({"cursor", "offset", "limit", "page", "per_page", "page_size", "pagesize",
                            "starting_after", "ending_before", "page_token", "pagetoken", "next_page_token"})


def _call_repr(name: str, fields: Dict[str, Any], positional: Sequence[Any] = ()) -> str:
    args = [repr(v) for v in positional] + [f"{k}={v!r}" for k, v in fields.items()]
    return f"{name}({', '.join(args)})"


def _shown_params(params: Dict[str, Any]) -> Dict[str, Any]:
    """Params as a repr shows them: a value the core would redact in a URL's query is ``***``."""
    return {k: "***" if _core.redact_url("http://h/?" + urllib.parse.urlencode({str(k): "v"})).endswith("=***") else v
            for k, v in params.items()}


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

    def __init__(self, records: List[Any], fields: Dict[str, Optional[str]], response: Any, step: Step):
        self.records, self.fields, self.response, self.step = records, fields, response, step


# -- paginators ------------------------------------------------------------------------------

class Paginator:
    """The hook for odd APIs: subclass and override ``next`` (and ``fields`` for what to read).

    ``next(page)`` returns the next step, ``{"url": absolute-or-None, "params": {...}}``, or
    None when the stream is done. Steps are saved as checkpoints, so they must be JSON.
    """

    parallel = False

    def __repr__(self) -> str:
        return _call_repr(type(self).__name__, self._settings())

    def _settings(self) -> Dict[str, Any]:
        """What the repr shows: the settings given to the constructor."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

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

    def _settings(self) -> Dict[str, Any]:
        return {"next": self.path}

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

    def _settings(self) -> Dict[str, Any]:
        return {"param": self.unit_param, "limit_param": self.size_param, "limit": self.size,
                "total": self.total, "window": self.window}

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

    def _settings(self) -> Dict[str, Any]:
        return {"param": self.unit_param, "size_param": self.size_param, "size": self.size,
                "total_pages": self.total, "start": self.start, "window": self.window}

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

    def __repr__(self) -> str:
        return _call_repr("Incremental", {"cursor_field": self.cursor_field, "param": self.param,
                                          "lookback": self.lookback, "initial": self.initial})

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


# -- time slices -----------------------------------------------------------------------------

def _instant(field: str, value: Any) -> _dt.datetime:
    """An aware UTC datetime from a datetime, a date, ISO 8601 text or Unix seconds (UTC when
    no offset is given)."""
    when: Optional[_dt.datetime] = None
    if isinstance(value, _dt.datetime):
        when = value
    elif isinstance(value, _dt.date):
        when = _dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        when = _dt.datetime.fromtimestamp(value, _dt.timezone.utc)
    elif isinstance(value, str):
        try:
            when = _dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            when = None
    if when is None:
        raise errors.ConfigError(f"{field}: {value!r} is not valid; expected a datetime, a date, "
                                 "ISO 8601 text ('2024-01-01T00:00:00Z') or Unix seconds")
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when.astimezone(_dt.timezone.utc)


# The builtin generic, not typing.List: the class's bases stay exactly (list,).
class TimeSlices(list[Dict[str, Any]]):
    """Partitions for an API that filters by time: ``[start, end)`` cut into slices of ``every``,
    each ``{start_param: slice start, end_param: slice end}``. Give them to ``Stream(partitions=)``
    and ``concurrency`` slices are read at once::

        isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(),
                       partitions=isthmus.TimeSlices("2024-01-01", "2025-01-01", every=timedelta(days=30),
                                                     start_param="updated_since", end_param="updated_before"),
                       concurrency=4)

    With an inclusive start and an exclusive end at the API, every record is in exactly one
    slice; with both ends inclusive, a record exactly on a boundary comes twice (an idempotent
    sink absorbs it) — never zero times. ``end=None`` is now: the last slice then differs from
    run to run, so a resume reads it again from its start. ``format``: ``"iso"`` (UTC with
    milliseconds, ``2024-01-01T00:00:00.000Z``), ``"unix"`` (seconds) or a function of an aware
    datetime returning the param's value.
    """

    MAX_SLICES = 100_000

    def __init__(self, start: Any, end: Any = None, *, every: Union[float, _dt.timedelta],
                 start_param: str = "updated_since", end_param: str = "updated_before",
                 format: Union[str, Callable[[_dt.datetime], Any]] = "iso"):  # noqa: A002
        begin = _instant("start", start)
        finish = _dt.datetime.now(_dt.timezone.utc) if end is None else _instant("end", end)
        if finish <= begin:
            raise errors.ConfigError(f"end: {end!r} is not valid; expected a time after start ({begin.isoformat()})")
        if isinstance(every, _dt.timedelta):
            step = every
        elif isinstance(every, (int, float)) and not isinstance(every, bool) and every > 0:
            step = _dt.timedelta(seconds=every)
        else:
            raise errors.ConfigError(f"every: {every!r} is not valid; expected seconds > 0 or a timedelta")
        if step <= _dt.timedelta(0):
            raise errors.ConfigError(f"every: {every!r} is not valid; expected a positive duration")
        count = -(-(finish - begin) // step)
        if count > self.MAX_SLICES:
            raise errors.ConfigError(f"every: {every!r} cuts {begin.isoformat()} .. {finish.isoformat()} into "
                                     f"{count:,} slices; at most {self.MAX_SLICES:,} are allowed")
        for field, name in (("start_param", start_param), ("end_param", end_param)):
            if not isinstance(name, str) or not name:
                raise errors.ConfigError(f"{field}: {name!r} is not valid; expected a query parameter name")
        if start_param == end_param:
            raise errors.ConfigError(f"end_param: {end_param!r} is not valid; it must differ from start_param")
        render: Callable[[_dt.datetime], Any]
        if format == "iso":
            def render(t: _dt.datetime) -> Any:
                return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
        elif format == "unix":
            def render(t: _dt.datetime) -> Any:
                stamp = t.timestamp()
                return int(stamp) if stamp == int(stamp) else stamp
        elif callable(format):
            render = format
        else:
            raise errors.ConfigError(f"format: {format!r} is not valid; expected 'iso', 'unix' or a function")
        super().__init__()
        lo = begin
        while lo < finish:
            hi = min(lo + step, finish)
            self.append({start_param: render(lo), end_param: render(hi)})
            lo = hi
        self.start, self.end, self.every = begin, finish, step
        self.start_param, self.end_param = start_param, end_param

    def __repr__(self) -> str:
        return (f"TimeSlices({self.start.isoformat()} .. {self.end.isoformat()}, every={self.every}, "
                f"{len(self)} slices of {self.start_param}/{self.end_param})")


# -- the stream ------------------------------------------------------------------------------

class _Chunk:
    """One page, parsed, with where its partition resumes once the sink has accepted it; or,
    with ``done``, the mark that a partition has delivered its last page."""

    __slots__ = ("records", "partition", "after", "units", "total", "done")

    def __init__(self, records: List[Any], partition: int, after: Optional[Step], units: Optional[Tuple[int, int]],
                 total: Optional[int], done: bool = False):
        self.records, self.partition, self.after, self.units, self.total = records, partition, after, units, total
        self.done = done


# What the fetch threads hand the run: a chunk, the exception that stopped them, or None at the end.
_Fetched = Union[_Chunk, BaseException, None]


class Stream:
    """A paginated endpoint read as one stream of records::

        Stream(client, "/v1/contacts", records="data", paginator=CursorPaginator(), params={"limit": 100})

    - ``client``: the ``Client`` pages are fetched with (its auth, limits and retry apply).
    - ``path``: the endpoint, relative to the client's base URL.
    - ``records``: the dotted path of the records array in each page ("" for a bare array).
    - ``paginator``: how to get the next page (``CursorPaginator``, ``OffsetPaginator``, ...);
      None reads one page.
    - ``params``: query params of every page.
    - ``incremental``: an ``Incremental``, to read only what changed since the last run.
    - ``partitions``: a list of extra params (or ``TimeSlices``), each read as its own
      sub-stream, up to ``concurrency`` of them at once.
    - ``key``: the dotted path of a record's identity (dead letters, idempotency keys, dedupe).
    - ``retry``: the ``Retry`` pages are fetched with (default: the client's, else
      ``Retry(attempts=attempts)``); ``attempts`` also bounds refetches of a malformed page.
    - ``parser``: ``"core"`` (simdjson, the default) or ``"python"`` (``json.loads``).
    - ``name``: the name checkpoints are filed under (default: from the path).

    A page answered with an error status raises a ``PipelineError`` that is also what
    ``raise_for_status()`` raises (``AuthError`` for a 401 ...).
    """

    def __init__(self, client: Any, path: str, *, records: str = "data", paginator: Optional[Paginator] = None,
                 params: Optional[Dict[str, Any]] = None, incremental: Optional[Incremental] = None,
                 partitions: Optional[List[Dict[str, Any]]] = None, key: str = "id",
                 attempts: int = 6, parser: str = "core", name: Optional[str] = None,
                 concurrency: int = 4, retry: Any = None):
        if paginator is not None and not isinstance(paginator, Paginator):
            raise errors.ConfigError(f"paginator: {paginator!r} is not an isthmus.Paginator")
        if parser not in ("core", "python"):
            raise errors.ConfigError(f"parser: {parser!r} is not valid; expected 'core' or 'python'")
        if partitions is not None and (not isinstance(partitions, list)
                                       or not all(isinstance(p, dict) for p in partitions)):
            raise errors.ConfigError(f"partitions: {partitions!r} is not valid; expected a list of dicts of params")
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise errors.ConfigError(f"attempts: {attempts!r} is not valid; expected an int >= 1")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise errors.ConfigError(f"concurrency: {concurrency!r} is not valid; expected an int >= 1")
        self.client, self.path, self.records_path = client, path, records
        self.paginator = paginator
        self.params = dict(params or {})
        self.incremental = incremental
        self.partitions = list(partitions or [{}])
        # A partition's checkpoint is filed under its params, so a changed list never resumes
        # one partition at another's position.
        self.partition_keys = [json.dumps(p, sort_keys=True, default=str) for p in self.partitions]
        for i, k in enumerate(self.partition_keys):
            if self.partition_keys.index(k) != i:
                raise errors.ConfigError(f"partitions[{i}]: {self.partitions[i]!r} repeats "
                                         f"partitions[{self.partition_keys.index(k)}]; each must differ")
        if incremental is not None:
            for i, p in enumerate(self.partitions):
                if incremental.param in p:
                    raise errors.ConfigError(
                        f"partitions[{i}]: sets {incremental.param!r}, which incremental= also sets; "
                        "filter partitions by another param (e.g. TimeSlices(start_param=...))")
        self.key = key
        self._key_path = key.split(".")
        self.attempts, self.parser = attempts, parser
        self.concurrency = concurrency
        self.retry = as_stage_retry(retry)
        self._http: Any = None
        self.name = name or path.strip("/").replace("/", "_")

    def __repr__(self) -> str:
        base = getattr(self.client, "base_url", None) or ""
        shown: Dict[str, Any] = {"records": self.records_path, "paginator": self.paginator,
                                 "params": _shown_params(self.params), "key": self.key}
        if self.incremental is not None:
            shown["incremental"] = self.incremental
        if self.partitions != [{}]:
            shown["partitions"] = len(self.partitions)  # a count: the list can be long
        return _call_repr("Stream", shown, [redact_url(base + self.path)])

    @property
    def identity(self) -> str:
        """Which data this stream reads, as a URL: the client's base URL, the path, and the params
        that select records, sorted. Paging params (the paginator's, ``cursor``, ``offset``,
        ``limit``, ``page``, ...) and the incremental cursor are left out, and the values of
        secret-looking params (``api_key``, ``token``, ...) are masked as ``***``. A pipeline's
        checkpoint is filed under it, so another source cannot resume from it."""
        paging = set(_PAGING_PARAMS)
        for attr in ("param", "size_param", "unit_param"):
            name = getattr(self.paginator, attr, None)
            if isinstance(name, str):
                paging.add(name.lower())
        if self.incremental is not None:
            paging.add(self.incremental.param.lower())
        given = getattr(self.client, "params", None) or {}
        items = [*(given.items() if isinstance(given, dict) else given), *self.params.items()]
        selecting = sorted((str(k), str(v)) for k, v in items if str(k).lower() not in paging)
        url = _merge_url(getattr(self.client, "base_url", None), self.path)
        # Encoded here, not as on the wire, so an identity saved today still matches after the
        # client's query encoding changes.
        query = urllib.parse.urlencode(selecting, quote_via=urllib.parse.quote)
        if query:
            url += ("&" if "?" in url else "?") + query
        return redact_url(url)

    def keys(self, records: List[Any]) -> List[str]:
        """Each record's identity as text; a hash of its JSON when it has none."""
        out = _core.record_keys(records, self._key_path)
        for i, v in enumerate(out):
            if v is None:
                text = json.dumps(records[i], sort_keys=True, default=str)
                out[i] = "sha1:" + hashlib.sha1(text.encode()).hexdigest()
        return out

    def _open(self) -> None:
        """Picks the client pages go through (the governor's Retry does the retrying)."""
        if self._http is None:
            self._http, _ = governed(self.client, self.retry, self.attempts)

    # The fetch runs on background threads and puts _Chunks (or an exception) on `out`.
    def _fetch(self, todo: List[Tuple[int, Any]], inc_value: Any, out: queue.Queue[_Fetched],
               stop: threading.Event, counters: Counters) -> None:
        """Reads the partitions in ``todo`` (index, where to resume) on up to ``concurrency``
        threads. A partition's chunks arrive in order, then its done mark; after all of them
        None, or the first exception instead."""
        pending = list(reversed(todo))
        lock = threading.Lock()
        failed = threading.Event()

        def work() -> None:
            try:
                while not (stop.is_set() or failed.is_set()):
                    with lock:
                        if not pending:
                            return
                        p, inner = pending.pop()
                    self._fetch_partition(p, inner, inc_value, out, stop, counters)
                    if not stop.is_set():
                        self._put(out, _Chunk([], p, None, None, None, done=True), stop)
            except BaseException as exc:  # handed to the caller's thread, raised there
                failed.set()
                self._put(out, exc, stop)

        helpers = [threading.Thread(target=work, name=f"isthmus-fetch-{self.name}-{i + 1}", daemon=True)
                   for i in range(min(self.concurrency, len(todo)) - 1)]
        for t in helpers:
            t.start()
        work()
        for t in helpers:
            t.join()
        if not failed.is_set():
            self._put(out, None, stop)

    def _fetch_partition(self, p: int, inner: Any, inc_value: Any, out: queue.Queue[_Fetched],
                         stop: threading.Event, counters: Counters) -> None:
        base: Step = {"url": None, "params": {**self.params, **self.partitions[p]}}
        if self.incremental is not None and inc_value is not None:
            base["params"][self.incremental.param] = inc_value
        # Partitions page at the same time: each gets its own copy of the paginator.
        paginator = copy.copy(self.paginator)
        if paginator is not None and paginator.parallel:
            self._fetch_ranges(paginator, p, base, inner, out, stop, counters)
        else:
            self._fetch_sequential(paginator, p, base, inner, out, stop, counters)

    @staticmethod
    def _put(out: queue.Queue[_Fetched], item: Any, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _request(self, step: Step) -> Any:
        return self.client.build_request("GET", step["url"] or self.path, params=step["params"] or None)

    def _get_pages(self, paginator: Optional[Paginator], steps: List[Step], counters: Counters,
                   concurrency: int) -> List[Page]:
        reqs = [self._request(s) for s in steps]
        wanted = paginator.fields() if paginator else []
        pages: List[Optional[Page]] = [None] * len(steps)
        todo = list(range(len(steps)))
        for attempt in range(1, self.attempts + 1):
            answers = answered(send(self._http, [reqs[i] for i in todo], counters, concurrency))
            damaged = []
            for i, resp in zip(todo, answers):
                self._check_status(resp)
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
            counters.add_retries(len(damaged))
            todo = damaged
        return pages  # type: ignore[return-value]

    def _check_status(self, resp: Any) -> None:
        """Raises for an answer that is not a 2xx (the governor has retried it): a PipelineError
        that is also what ``raise_for_status`` raises (``AuthError`` for a 401 ...)."""
        if not 200 <= resp.status_code < 300:
            raise errors.pipeline_error(
                f"Stream {self.path}: GET {redact_url(resp.request.url)} answered {resp.status_code} "
                f"{resp.reason_phrase}" + (f" after {resp.attempts} attempts" if resp.attempts > 1 else "")
                + f": {resp._redacted_excerpt(300)}", status_error(resp))

    def _pages_in_order(self, pag: Any, base: Step, units: Iterator[int],
                        counters: Counters) -> Generator[Tuple[int, Page], None, None]:
        """Pages of a range paginator, in order, with ``pag.window`` requests in flight all the
        time: the next requests go out while this thread parses and hands over a page. Closing
        the iterator cancels what is still in flight."""
        wanted = pag.fields()
        # Units sent and not yet handed over, oldest first: answers come back in this order.
        sent: collections.deque[int] = collections.deque()

        def requests() -> Iterator[Any]:
            for u in units:
                sent.append(u)
                yield self._request(pag.step(base, u))

        answers = self._http.iter_many(requests(), concurrency=pag.window, chunk_size=2 * pag.window,
                                       return_exceptions=True)
        try:
            for resp in answers:
                u = sent.popleft()
                if isinstance(resp, Exception):
                    raise resp
                counters.count(resp._raw, resp.request)
                self._check_status(resp)
                try:
                    page = self._parse(pag.step(base, u), resp, wanted)
                except _MalformedPage:
                    # Damaged on the way: fetched again on its own, up to `attempts` times in all.
                    counters.add_retries(1)
                    page = self._get_pages(pag, [pag.step(base, u)], counters, 1)[0]
                yield u, page
        finally:
            answers.close()

    def _parse(self, step: Step, resp: Any, wanted: List[str]) -> Page:
        if self.parser == "core" and resp._content is None:
            status, records, values = _core.parse_page(resp._raw, self.records_path, wanted)
            if status.startswith("invalid:"):
                # Python's parser names the line and column, and reads the rare page the core
                # refuses but JSON allows (an integer wider than 64 bits).
                status, records, values = _parse_in_python(resp.content, self.records_path, wanted)
        else:
            status, records, values = _parse_in_python(resp.content, self.records_path, wanted)
        where = f"GET {_core.redact_url(resp.request.url)}"  # a key may travel in the query
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

    def _fetch_sequential(self, paginator: Optional[Paginator], partition: int, base: Step, inner: Optional[Step],
                          out: queue.Queue[_Fetched], stop: threading.Event, counters: Counters) -> None:
        step: Optional[Step] = inner or base
        seen: Set[str] = set()
        n = 0
        while step is not None and not stop.is_set():
            fingerprint = json.dumps(step, sort_keys=True)
            if fingerprint in seen:
                raise errors.PipelineError(
                    f"Stream {self.path}: the paginator loops: page {n + 1} would fetch {step!r} again "
                    f"(already fetched in this run); the API returned the same cursor twice")
            seen.add(fingerprint)
            page = self._get_pages(paginator, [step], counters, 1)[0]
            n += 1
            nxt = paginator.next(page) if paginator is not None else None
            if nxt is not None and not page.records:
                nxt = None  # an empty page with a cursor: nothing more will come
            self._put(out, _Chunk(page.records, partition, nxt, None, None), stop)
            step = nxt

    def _fetch_ranges(self, pag: Any, partition: int, base: Step, inner: Optional[Dict[str, Any]],
                      out: queue.Queue[_Fetched], stop: threading.Event, counters: Counters) -> None:
        unit = inner["unit"] if inner else pag.start
        per = pag.units_per_page()
        first = self._get_pages(pag, [pag.step(base, unit)], counters, 1)[0]
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
        units = itertools.count(unit + per, per) if end is None else iter(range(unit + per, end, per))
        pages = self._pages_in_order(pag, base, units, counters)
        try:
            for u, page in pages:
                if stop.is_set():
                    return
                if end is None and not page.records:
                    return  # without a total, the first empty page ends the stream
                self._put(out, _Chunk(page.records, partition, None, (u, u + per), None), stop)
        finally:
            pages.close()


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
            from IPython import get_ipython
            shell = get_ipython()
            # A Jupyter kernel's shell is ZMQInteractiveShell; the terminal IPython's is not.
            if shell is not None and "ZMQ" in type(shell).__name__:
                from IPython.display import HTML, display
                # IPython.display has no annotations: this says what the bar uses of HTML.
                self._HTML: Callable[[str], Any] = HTML
                self.mode = "jupyter"
                self.handle = display(self._HTML(""), display_id=True)  # type: ignore[no-untyped-call]
                return
        except Exception:
            pass
        self.mode = "tty" if sys.stderr.isatty() else "log"

    def text(self, done: int, total: Optional[int], waited: float = 0.0,
             completed: bool = False) -> Tuple[str, Optional[float]]:
        """The line, and how full the bar is: None while the total is unknown, 1.0 once the run
        completed (a total read from the API's first page may be off by what changed since)."""
        took = max(time.monotonic() - self.started, 1e-9)
        rate = done / took
        frac = min(done / total, 1.0) if total else None
        if total and frac is not None:
            eta = (total - done) / rate if rate > 0 else float("inf")
            bar = "#" * int(frac * 30)
            s = (f"{self.label} [{bar:<30}] {done:,}/{total:,} {frac * 100:5.1f}% "
                 f"{rate:,.0f} rec/s ETA {eta:,.0f}s")
        else:
            s = f"{self.label} {done:,} records {rate:,.0f} rec/s {took:,.0f}s"
        if waited >= 0.05:
            s += f", {waited:,.1f}s held back by rate limits and retries"
        return s, 1.0 if completed else frac

    def update(self, done: int, total: Optional[int], final: bool = False,
               waited: Optional[Callable[[], float]] = None, completed: bool = False) -> None:
        """``waited`` is only called when a line is drawn: it reads the limiters' counters.
        ``completed`` (with ``final``) fills the bar."""
        if self.mode == "off":
            return
        now = time.monotonic()
        gap = {"tty": 0.1, "jupyter": 0.25, "log": 5.0}[self.mode]
        if not final and now - self.last < gap:
            return
        self.last = now
        s, frac = self.text(done, total, waited() if waited else 0.0, completed=final and completed)
        if self.mode == "tty":
            sys.stderr.write("\r" + s + ("\n" if final else ""))
            sys.stderr.flush()
        elif self.mode == "log":
            print(s, file=sys.stderr, flush=True)
        else:
            # Without a value the browser draws an indeterminate bar: the total is not known yet.
            value = "" if frac is None else f" value='{frac:.4f}'"
            self.handle.update(self._HTML(
                f"<div><progress{value} max='1' style='width:30em'></progress> {html.escape(s)}</div>"))


# -- the run ---------------------------------------------------------------------------------

_STAGES = ("source", "map", "sink", "checkpoint")

_COUNT_NAMES = ["read", "written", "dead_lettered", "dropped", "skipped", "requests", "status_429",
                "retries", "bytes_in", "bytes_out", "wait_seconds"]


def _partition_positions(position: Optional[Dict[str, Any]], keys: List[str]) -> Dict[str, Dict[str, Any]]:
    """Each partition's saved position, by its key (the JSON of its params)."""
    if not position:
        return {}
    if "partitions" in position:
        return {k: dict(v) for k, v in position["partitions"].items()}
    # Saved when partitions were read one after another: those before `partition` are done.
    at = position.get("partition", 0)
    out: Dict[str, Dict[str, Any]] = {k: {"done": True} for k in keys[:at]}
    if at < len(keys) and position.get("inner") is not None:
        out[keys[at]] = {"inner": position["inner"]}
    return out


class _Newer:
    """Which open dead letters a run has delivered a newer version of, so a replay never sends
    the older one over it. The open keys are loaded once at the start and checked in memory;
    with none open, a batch costs two truth tests."""

    __slots__ = ("open", "hits")

    def __init__(self, open_keys: Set[str]):
        self.open: Set[str] = open_keys
        self.hits: Set[str] = set()

    def delivered(self, keys: Sequence[str], dead: List[Dict[str, Any]]) -> None:
        """``keys`` went to the sink, less those dead-lettered in ``dead``."""
        failed = {d["record_key"] for d in dead} if dead else ()
        if failed:
            # Dead-lettered now: a later delivery in this run supersedes it, an earlier one no longer.
            self.open.update(failed)
            self.hits.difference_update(failed)
        if self.open:
            hit = self.open.intersection(keys)
            if hit:
                self.hits.update(hit.difference(failed))

    def take(self) -> List[str]:
        """The keys to resolve as superseded in the next checkpoint."""
        hits, self.hits = self.hits, set()
        return list(hits)


class Run:
    """One run of a pipeline: its counts, ``summary()``, ``dead_letters()`` and a Jupyter repr."""

    def __init__(self, pipeline: Pipeline, run_id: int):
        self.pipeline, self.id = pipeline, run_id
        self.counts: Dict[str, float] = {k: 0 for k in _COUNT_NAMES}
        # Where the caller's thread spent the run: waiting for pages from the source, in the
        # mapping, in the sink, writing checkpoints. A large "source" means the API is the limit.
        self.stage_seconds: Dict[str, float] = {k: 0.0 for k in _STAGES}
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
        c: Dict[str, Any] = dict(self.counts)
        c.update(pipeline=self.pipeline.name, run_id=self.id, status=self.status,
                 duration_s=round(self.duration, 3),
                 records_per_s=round(c["read"] / self.duration, 1) if self.duration > 0 else None,
                 reconciled=c["read"] == c["written"] + c["dead_lettered"] + c["dropped"] + c["skipped"],
                 stage_seconds={k: round(v, 3) for k, v in self.stage_seconds.items()})
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
                ("time per stage", ", ".join(f"{k} {v:,.2f} s" for k, v in s["stage_seconds"].items())),
                ("records/s", f"{s['records_per_s'] or 0:,.0f}"),
                ("reconciled", "yes: read = written + dead-lettered + dropped + skipped"
                 if s["reconciled"] else "NO")]
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in rows)
        err = f"<pre>{html.escape(s['error'])}</pre>" if s.get("error") else ""
        return f"<div><b>isthmus run {s['run_id']} of {html.escape(s['pipeline'])}</b><table>{body}</table>{err}</div>"


class Pipeline:
    """``source`` -> ``map`` -> ``sink``, with state (checkpoints, dead letters, runs) in ``state``
    (a file path or a ``StateStore``; default ``<name>.isthmus.db`` in the working directory).

    ``name`` (default: the stream's name) files the checkpoint; a checkpoint saved under it by a
    source with another ``Stream.identity`` refuses the run with ``StateError``, unless ``name``
    is given explicitly (the checkpoint then moves to this source).

    ``map`` is ``record -> record or None`` (None drops it), or with ``batch=True`` ``list -> list``,
    or an ``isthmus.FieldMap`` (declared fields, run in the core).
    An exception in it dead-letters the record with its traceback and the run goes on.

    ``sink``: an ``HttpSink``, ``JsonlSink``, ``SqliteSink``, ``CallableSink`` or a ``Sink``
    subclass. ``state``: the SQLite file of checkpoints, dead letters and runs; ``name`` the
    pipeline's name in it. A checkpoint is written every ``checkpoint_every`` records or
    ``checkpoint_seconds``, whichever comes first, right after the sink's ``flush``.
    ``prefetch``: pages fetched ahead of the mapping. ``stop_after_failures``: when that many
    records have failed (mapping or sink) before any was written, the run stops with a
    ``PipelineError`` naming the most common reason instead of dead-lettering them all (0: never).
    """

    def __init__(self, source: Stream, *, sink: Sink, map: Optional[Callable[..., Any]] = None,
                 batch: bool = False, state: Union[str, StateStore, None] = None,
                 name: Optional[str] = None, checkpoint_every: int = 10_000, prefetch: int = 8,
                 checkpoint_seconds: float = 2.0, stop_after_failures: int = 1000):
        if not isinstance(source, Stream):
            raise errors.ConfigError(f"source: {source!r} is not an isthmus.Stream")
        if not isinstance(sink, Sink):
            raise errors.ConfigError(f"sink: {sink!r} is not an isthmus sink (HttpSink, JsonlSink, ...)")
        if map is not None and not callable(map):
            raise errors.ConfigError(f"map: {map!r} is not callable")
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise errors.ConfigError(f"checkpoint_every: {checkpoint_every!r} is not valid; expected an int >= 1")
        self.source, self.sink, self.map, self.batch = source, sink, map, batch
        self.name = name or source.name
        # Named by the user, the pipeline says which checkpoint is its own, whatever source
        # saved it; otherwise a checkpoint saved by another source refuses the run.
        self._named = name is not None
        if state is None:
            state = StateStore.default_path(self.name)
        self.store = state if isinstance(state, StateStore) else StateStore(state)
        self.checkpoint_every, self.prefetch = checkpoint_every, max(1, prefetch)
        if isinstance(checkpoint_seconds, bool) or not isinstance(checkpoint_seconds, (int, float)) \
                or not checkpoint_seconds > 0:
            raise errors.ConfigError(f"checkpoint_seconds: {checkpoint_seconds!r} is not valid; expected seconds > 0")
        if isinstance(stop_after_failures, bool) or not isinstance(stop_after_failures, int) or stop_after_failures < 0:
            raise errors.ConfigError(f"stop_after_failures: {stop_after_failures!r} is not valid; "
                                     "expected an int >= 0 (0 turns the check off)")
        self.checkpoint_seconds, self.stop_after_failures = float(checkpoint_seconds), stop_after_failures

    def __repr__(self) -> str:
        fn = self.map
        mapping = "" if fn is None else \
            f" -> map={fn!r}" if isinstance(fn, FieldMap) else f" -> map={getattr(fn, '__qualname__', repr(fn))}"
        return f"<Pipeline {self.name!r}: {self.source!r}{mapping} -> {self.sink!r}, state={self.store.path!r}>"

    # -- mapping -----------------------------------------------------------------------------
    def _apply_map(self, records: List[Any], keys: List[str], run: Optional[Run],
                   dead: List[Dict[str, Any]]) -> Tuple[List[Any], List[str], int]:
        """(mapped records, their keys, dropped); failures go to `dead`."""
        fn = self.map
        if fn is None:
            return records, keys, 0
        if isinstance(fn, FieldMap):
            mapped, failed = fn.apply(records)
            if not failed:
                return mapped, keys, 0
            bad = {i for i, _ in failed}
            for i, why in failed:
                dead.append({"record_key": keys[i], "stage": "map", "record": records[i], "error": why,
                             "traceback": None})
            return mapped, [k for i, k in enumerate(keys) if i not in bad], 0
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

    def _sink(self, mapped: List[Any], keys: List[str], dead: List[Dict[str, Any]], settle: bool = False) -> int:
        """Hands records to the sink; returns how many it has not rejected (counting, with a sink
        that keeps records, rejections of earlier ones). Rejections go to `dead`. ``settle``
        flushes too, so the count is final."""
        if not mapped:
            return 0
        accepted = len(mapped)
        result = self.sink.write(mapped, keys)
        if result:
            accepted -= self._file_rejections(result, "write", mapped, keys, dead)
        if settle:
            accepted -= self._file_rejections(self.sink.flush(), "flush", None, None, dead)
        return accepted

    def _file_rejections(self, result: Any, method: str, records: Optional[List[Any]],
                         keys: Optional[List[str]], dead: List[Dict[str, Any]]) -> int:
        """Turns what a sink's write or flush returned into dead letters; returns how many."""
        if not result:
            if result is None or isinstance(result, (list, tuple)):
                return 0
        expected = ("expected None or a list of isthmus.Rejection(error, index=<position in this write's records>)"
                    " or Rejection(error, key=<the record's key>, record=<the record>)")
        if method == "flush":
            expected = ("expected None or a list of isthmus.Rejection(error, key=<the record's key>,"
                        " record=<the record>)")
        where = f"{type(self.sink).__name__}.{method}"
        if not isinstance(result, (list, tuple)):
            raise errors.ConfigError(f"{where} returned {type(result).__name__} {result!r:.80}; {expected}")
        for rej in result:
            if not isinstance(rej, Rejection):
                raise errors.ConfigError(
                    f"{where} returned a list holding {type(rej).__name__} {rej!r:.80}; {expected}")
            if rej.index is None:
                key, record = rej.key, rej.record
            elif records is None or keys is None or rej.index >= len(records):
                raise errors.ConfigError(f"{where} returned {rej!r}, but there is no record at index {rej.index} "
                                         f"(it was given {len(records or ())}); {expected}")
            else:
                key, record = keys[rej.index], records[rej.index]
            dead.append({"record_key": key, "stage": "sink", "record": record, "error": rej.error,
                         "traceback": rej.traceback, "http_status": rej.http_status,
                         "response_excerpt": rej.response_excerpt, "attempts": rej.attempts})
        return len(result)

    # -- running -----------------------------------------------------------------------------
    def run(self, progress: bool = False) -> Run:
        """Reads the stream from the last checkpoint to its end, mapping and writing every record;
        returns the reconciled ``Run``.

        ``progress=True`` draws a bar (terminal), an updating HTML bar (Jupyter) or a line every
        5 s (logs). Records the sink rejects for good, and those the mapping fails on, become
        dead letters and the run goes on. It stops, with status ``failed`` and without moving the
        checkpoint past records the sink has not accepted, on what affects every record: a
        destination refusing the request (401, 403, 404 ...), a failure that outlasts the retries,
        or ``stop_after_failures`` records failing before any is written. The error raised is a
        ``PipelineError``, and also the class a direct call would raise (``AuthError`` ...) with
        the original as ``__cause__``. Raises ``ReconciliationError`` if the counts do not add up.
        """
        state = self.store.claim(self.name, self.source.identity, adopt=self._named)
        newer = _Newer(self.store.open_dead_letter_keys(self.name))
        run = Run(self, self.store.begin_run(self.name))
        counters = Counters()

        def waited() -> float:
            """Seconds calls were held back so far: by the clients' limiters, and backing off."""
            return counters.wait_seconds
        self.sink.open(counters)
        bar = _Progress(progress, self.name)
        src = self.source
        src._open()
        inc = _IncrementalTracker(src.incremental, state["incremental"]) if src.incremental else None
        inc_value = src.incremental.start_value(state["incremental"]) if src.incremental else None
        # Every partition's position: {"inner": where it resumes} or {"done": True}; a
        # partition not in it starts from the beginning.
        keys = src.partition_keys
        positions = _partition_positions(state["position"], keys)
        todo = [(i, positions.get(k, {}).get("inner")) for i, k in enumerate(keys)
                if not positions.get(k, {}).get("done")]
        stop = threading.Event()
        pages: queue.Queue[_Fetched] = queue.Queue(maxsize=self.prefetch)
        fetcher = threading.Thread(target=src._fetch, args=(todo, inc_value, pages, stop, counters),
                                   name=f"isthmus-fetch-{self.name}", daemon=True)
        watermarks: Dict[int, Any] = {}
        totals: Dict[int, int] = {}
        pending_dead: List[Dict[str, Any]] = []
        since_commit = 0
        last_commit = time.monotonic()
        # Where the checkpoint stands, kept for when the run stops without moving it.
        committed = state["position"]
        # Until a record is written, failures are watched for a cause that affects every record.
        watching = self.stop_after_failures > 0
        early_errors: List[str] = []
        tripped = False
        # False while the sink is being called: if it raises, what it holds is unknown and
        # nothing more is flushed or checkpointed.
        sink_ok = True
        total: Optional[int] = None
        started = time.monotonic()
        stage = run.stage_seconds

        def watch(dead: List[Dict[str, Any]]) -> None:
            """Stops the run once `stop_after_failures` records failed and none was written."""
            nonlocal watching, tripped
            c = run.counts
            if c["written"] > self.sink.buffered or c["dropped"]:
                watching = False
                return
            early_errors.extend(d["error"] for d in dead)
            if c["dead_lettered"] >= self.stop_after_failures:
                tripped = True
                # Grouped by kind (the exception's class, or the whole text of an HTTP refusal),
                # since each message names its own record.
                kinds = collections.Counter(e.split(": ", 1)[0] for e in early_errors)
                kind, times = kinds.most_common(1)[0]
                example = next(e for e in early_errors if e.split(": ", 1)[0] == kind)
                raise errors.PipelineError(
                    f"Pipeline {self.name}: the first {c['dead_lettered']:,} records all failed and none was "
                    f"written; stopping without moving the checkpoint past them (they are dead letters). "
                    f"Most common reason ({times:,} of {len(early_errors):,}): {example}. "
                    "Pipeline(stop_after_failures=0) turns this check off.")

        def commit(final: bool = False) -> None:
            nonlocal pending_dead, since_commit, last_commit, committed, sink_ok
            began = time.perf_counter()
            sink_ok = False
            flushed = self.sink.flush()
            sink_ok = True
            dead: List[Dict[str, Any]] = []
            if flushed:
                n = self._file_rejections(flushed, "flush", None, None, dead)
                run.counts["written"] -= n
                run.counts["dead_lettered"] += n
                pending_dead.extend(dead)
                newer.delivered((), dead)
            if watching:
                watch(dead)
            if final:
                self.store.commit(self.name, run.id, None, pending_dead,
                                  incremental=inc.state() if inc else ..., superseded=newer.take())
            else:
                # While every record so far failed, the checkpoint waits: those records are
                # read again once the cause is fixed.
                at = committed if watching else ({"partitions": positions} if positions else None)
                self.store.commit(self.name, run.id, at, pending_dead, superseded=newer.take())
                committed = at
            pending_dead, since_commit, last_commit = [], 0, time.monotonic()
            # Cycles made since the last checkpoint (a traceback kept for a dead letter, a
            # mapping's own) are collected here, young objects only: a few thousand at most.
            gc.collect(1)
            stage["checkpoint"] += time.perf_counter() - began

        # Python's automatic collector would start a collection every few hundred new records
        # and now and then walk the whole heap (a fifth of the run's CPU in the benchmark);
        # records hold no cycles, so it is paused for the run and young objects are collected
        # at each checkpoint instead.
        collector_was_on = gc.isenabled()
        gc.disable()
        fetcher.start()
        try:
            while True:
                began = time.perf_counter()
                item = pages.get()
                stage["source"] += time.perf_counter() - began
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                chunk: _Chunk = item
                if chunk.total is not None:
                    totals[chunk.partition] = chunk.total
                    total = sum(totals.values()) if len(totals) == len(todo) else None
                records = chunk.records
                run.counts["read"] += len(records)
                rkeys = src.keys(records)
                if inc is not None:
                    keep = [not inc.skip(r, k) for r, k in zip(records, rkeys)]
                    if not all(keep):
                        run.counts["skipped"] += keep.count(False)
                        records = [r for r, ok in zip(records, keep) if ok]
                        rkeys = [k for k, ok in zip(rkeys, keep) if ok]
                    inc.observe(records, rkeys)
                dead: List[Dict[str, Any]] = []
                began = time.perf_counter()
                mapped, mkeys, dropped = self._apply_map(records, rkeys, run, dead)
                mapped_at = time.perf_counter()
                sink_ok = False
                written = self._sink(mapped, mkeys, dead)
                sink_ok = True
                newer.delivered(mkeys, dead)
                stage["map"] += mapped_at - began
                stage["sink"] += time.perf_counter() - mapped_at
                run.counts["written"] += written
                run.counts["dropped"] += dropped
                run.counts["dead_lettered"] += len(dead)
                pending_dead.extend(dead)
                if watching:
                    watch(dead)
                # The sink has accepted (or rejected for good) every record of this chunk: its
                # partition may resume after it.
                p = chunk.partition
                if chunk.done or (chunk.units is None and chunk.after is None):
                    positions[keys[p]] = {"done": True}
                    watermarks.pop(p, None)
                elif chunk.units is not None:
                    if p not in watermarks:
                        watermarks[p] = _core.Watermark(chunk.units[0])
                    positions[keys[p]] = {"inner": {"unit": watermarks[p].complete(*chunk.units)}}
                else:
                    positions[keys[p]] = {"inner": chunk.after}
                since_commit += len(records)
                if since_commit >= self.checkpoint_every or time.monotonic() - last_commit > self.checkpoint_seconds:
                    commit()
                bar.update(int(run.counts["read"]), total, waited=waited)
            commit(final=True)
            run.status = "completed"
        except BaseException as exc:
            run.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            run.error = f"{type(exc).__name__}: {exc}"
            stop.set()
            try:
                if tripped:
                    # The failed records are dead letters; the checkpoint stays before them.
                    self.store.commit(self.name, run.id, committed, pending_dead)
                elif sink_ok:
                    # Whatever the sink accepted stays accepted: checkpoint it before giving up.
                    commit()
            except Exception:
                pass
            raise
        finally:
            stop.set()
            fetcher.join(timeout=30)
            if collector_was_on:
                gc.enable()
            run.duration = time.monotonic() - started
            for k in ("requests", "status_429", "retries", "bytes_in", "bytes_out"):
                run.counts[k] = getattr(counters, k)
            # Time calls spent held back: by the clients' limiters, and backing off to retry.
            run.counts["wait_seconds"] = round(waited(), 3)
            self.sink.close()
            bar.update(int(run.counts["read"]), total, final=True, waited=waited, completed=run.status == "completed")
            self.store.finish_run(run.id, run.status, run.summary(), run.error)
        run.reconcile()
        return run

    # -- dead letters ------------------------------------------------------------------------
    @staticmethod
    def _frame(rows: List[Dict[str, Any]]) -> Any:
        import pandas as pd
        cols = ["id", "record_key", "record", "stage", "error", "http_status", "response_excerpt", "attempts",
                "first_seen", "last_seen", "traceback", "run_id", "resolved_at", "resolution"]
        df = pd.DataFrame(rows, columns=cols)
        for c in ("first_seen", "last_seen", "resolved_at"):
            df[c] = pd.to_datetime(df[c], unit="s", utc=True)
        df["http_status"] = df["http_status"].astype("Int64")
        return df

    def dead_letters(self, include_resolved: bool = False) -> Any:
        """Every open dead letter of this pipeline, as a pandas DataFrame. With
        ``include_resolved``, also the resolved ones; ``resolution`` says how: ``replayed``
        (a replay delivered it) or ``superseded`` (a later run delivered a newer version)."""
        return self._frame(self.store.dead_letters(self.name, include_resolved=include_resolved))

    def replay_dead_letters(self, where: Union[str, Callable[[Dict[str, Any]], bool], None] = None,
                            force: bool = False) -> Dict[str, int]:
        """Sends dead letters through again (map ones through map and the sink, sink ones to the sink).

        ``where`` is an SQL condition on the dead-letter columns (``"stage = 'map'"``) or a function
        of a row dict. Delivered ones are marked resolved; the rest get one more attempt counted,
        with the stage they fail at now (a map dead letter that now maps but that the sink
        rejects becomes a sink dead letter holding the mapped record).

        A dead letter superseded by a newer version a later run delivered is skipped, so an
        older record never overwrites a newer one; ``force=True`` sends it anyway. The result
        counts ``replayed``, ``delivered``, ``failed`` and ``skipped``.
        """
        rows = self.store.dead_letters(self.name, where=where if isinstance(where, str) else None,
                                       include_superseded=True)
        if callable(where):
            rows = [r for r in rows if where(r)]
        skipped = 0 if force else sum(r["resolution"] == "superseded" for r in rows)
        if skipped:
            rows = [r for r in rows if r["resolution"] != "superseded"]
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
                ok = self._sink(mapped, mkeys, dead, settle=True) if mapped else 0
                if dead:
                    failed += 1
                    d = dead[0]
                    self.store.bump_dead_letter(row["id"], d["error"], d.get("http_status"),
                                                d.get("response_excerpt"), d.get("traceback"),
                                                stage=d["stage"], record=d["record"])
                elif ok or dropped:
                    delivered.append(row["id"])
            self.sink.flush()
            self.store.resolve(delivered)
        finally:
            self.sink.close()
        return {"replayed": len(rows), "delivered": len(delivered), "failed": failed, "skipped": skipped}

    def runs(self) -> Any:
        """This pipeline's run history as a DataFrame: one row per run, start and finish as UTC
        datetimes (finish empty while running, or when the process was killed), and its counts."""
        import pandas as pd
        rows = self.store.runs(self.name)
        flat = [{**{k: v for k, v in r.items() if k != "counts"}, **{k: r["counts"].get(k) for k in _COUNT_NAMES},
                 **{f"{k}_s": (r["counts"].get("stage_seconds") or {}).get(k) for k in _STAGES}}
                for r in rows]
        df = pd.DataFrame(flat, columns=["id", "pipeline", "started_at", "finished_at", "status", "error",
                                         *_COUNT_NAMES, *(f"{k}_s" for k in _STAGES)])
        for c in ("started_at", "finished_at"):
            df[c] = pd.to_datetime(df[c], unit="s", utc=True)
        return df
