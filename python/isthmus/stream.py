"""``Stream``: a paginated endpoint read as one stream of records, one ``isthmus.Source``.

Pages are fetched and parsed by the core on its I/O threads (``_core.PageReader``: the
paginators and partitions, through the client's governor) into a small bounded channel;
``read_batch`` takes them with the GIL released. A fused run (``Pipeline`` with a ``FieldMap``
or no map and a core sink) gets each page mapped in the core as a ``MappedBatch``; otherwise
the records are built as Python objects in one pass. A custom ``Paginator`` is asked once per
page, on the caller's thread, for the step the core fetches next. A batch's token is where
every partition resumes once that batch (and every one before it) is acknowledged, plus the
incremental cursor's state, so a rerun after a crash resumes there and may resend a few
records, never skip one.
"""

from __future__ import annotations

import copy
import json
import urllib.parse
from typing import Any, Dict, List, Optional, Tuple

from isthmus import _core, _transport, errors
from isthmus._transport import Counters, as_stage_retry, governed
from isthmus.http import _encode_params, _merge_url, redact_url
from isthmus.incremental import Incremental, _IncrementalTracker
from isthmus.paginators import Page, Paginator, Step, _call_repr
from isthmus.source import Batch, record_keys

__all__ = ["Stream"]

# Params that move through the data rather than select it; the paginator's own are added.
_PAGING_PARAMS = frozenset({"cursor", "offset", "limit", "page", "per_page", "page_size", "pagesize",
                            "starting_after", "ending_before", "page_token", "pagetoken", "next_page_token"})


def _shown_params(params: Dict[str, Any]) -> Dict[str, Any]:
    """Params as a repr shows them: a value the core would redact in a URL's query is ``***``."""
    return {k: "***" if _core.redact_url("http://h/?" + urllib.parse.urlencode({str(k): "v"})).endswith("=***") else v
            for k, v in params.items()}


# -- the stream ------------------------------------------------------------------------------

class _Chunk:
    """One page, parsed, with where its partition resumes once the sink has accepted it; or,
    with ``done``, the mark that a partition has delivered its last page."""

    __slots__ = ("records", "partition", "after", "units", "total", "done")

    def __init__(self, records: List[Any], partition: int, after: Optional[Step], units: Optional[Tuple[int, int]],
                 total: Optional[int], done: bool = False):
        self.records, self.partition, self.after, self.units, self.total = records, partition, after, units, total
        self.done = done


class _Reading:
    """One run's reading of a stream: the core's reader, a custom paginator's copy and step per
    partition, and where every partition resumes after the batches handed over so far."""

    __slots__ = ("positions", "inc_state", "tracker", "todo", "reader", "paginators", "steps", "counted",
                 "totals", "watermarks", "finished", "left", "left_keys", "left_before", "left_after", "token")

    def __init__(self, positions: Dict[str, Dict[str, Any]], inc_state: Optional[Dict[str, Any]],
                 tracker: Optional[_IncrementalTracker], todo: int):
        # Every partition's position: {"inner": where it resumes} or {"done": True}; a
        # partition not in it starts from the beginning.
        self.positions, self.inc_state, self.tracker, self.todo = positions, inc_state, tracker, todo
        self.reader: Any = None  # _core.PageReader
        # A custom paginator: each partition's own copy (it may keep state), and the step its
        # last page was fetched with.
        self.paginators: Dict[int, Paginator] = {}
        self.steps: Dict[int, Step] = {}
        self.counted: Dict[str, Any] = {}  # the reader's counts already added to the stream's
        self.totals: Dict[int, int] = {}
        self.watermarks: Dict[int, Any] = {}
        self.finished = False
        self.left: List[Any] = []  # the rest of a page longer than a batch
        self.left_keys: List[str] = []
        self.left_before: Optional[Dict[str, Any]] = None
        self.left_after: Optional[Dict[str, Any]] = None
        self.token = self._snapshot()

    def advance(self, key: str, chunk: _Chunk) -> None:
        """Moves the chunk's partition past it (or marks it done) and takes the new token."""
        p = chunk.partition
        if chunk.done or (chunk.units is None and chunk.after is None):
            self.positions[key] = {"done": True}
            self.watermarks.pop(p, None)
        elif chunk.units is not None:
            if p not in self.watermarks:
                self.watermarks[p] = _core.Watermark(chunk.units[0])
            self.positions[key] = {"inner": {"unit": self.watermarks[p].complete(*chunk.units)}}
        else:
            self.positions[key] = {"inner": chunk.after}
        self.token = self._snapshot()

    def _snapshot(self) -> Optional[Dict[str, Any]]:
        # A copy per batch: the batch's token must not move with later pages. The incremental
        # state stays the one this run started from until everything was read.
        token: Optional[Dict[str, Any]] = {"partitions": dict(self.positions)} if self.positions else None
        if self.inc_state is not None:
            token = {**(token or {}), "incremental": self.inc_state}
        return token


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


def _json_kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _token_problem(token: Any) -> Optional[str]:
    """What is wrong with a stream's checkpoint token, or None. Tokens are
    ``{"partitions": {key: {"done": true} | {"inner": step}}, "incremental": state}``, or from
    before partitions ran in parallel ``{"partition": n, "inner": step}``; a step is
    ``{"unit": n}`` or ``{"url", "params"}``; both parts are optional."""
    def step_problem(step: Any, where: str) -> Optional[str]:
        if step is None:
            return None
        if not isinstance(step, dict):
            return f"{where} is {_json_kind(step)}, expected an object"
        if "unit" in step and (isinstance(step["unit"], bool) or not isinstance(step["unit"], int)):
            return f"{where}.unit is {_json_kind(step['unit'])}, expected an integer"
        if step.get("url") is not None and not isinstance(step["url"], str):
            return f"{where}.url is {_json_kind(step['url'])}, expected a string or null"
        if "params" in step and not isinstance(step["params"], dict):
            return f"{where}.params is {_json_kind(step['params'])}, expected an object"
        return None

    def incremental_problem(state: Any) -> Optional[str]:
        if state is None:
            return None
        if not isinstance(state, dict):
            return f"(incremental) is {_json_kind(state)}, expected an object"
        boundary = state.get("boundary", [])
        if not isinstance(boundary, list) or not all(isinstance(p, list) and len(p) == 2 for p in boundary):
            return "(incremental) boundary is not an array of [key, value] pairs"
        return None

    if token is None:
        return None
    if not isinstance(token, dict):
        return f"(position) is {_json_kind(token)}, expected an object"
    problem = incremental_problem(token.get("incremental"))
    if problem:
        return problem
    if "partitions" in token:
        parts = token["partitions"]
        if not isinstance(parts, dict):
            return f"(position) partitions is {_json_kind(parts)}, expected an object"
        for key, part in parts.items():
            where = f"partitions[{key}]"
            if not isinstance(part, dict):
                return f"(position) {where} is {_json_kind(part)}, expected an object"
            if "done" in part and not isinstance(part["done"], bool):
                return f"(position) {where}.done is {_json_kind(part['done'])}, expected a boolean"
            problem = step_problem(part.get("inner"), where + ".inner")
            if problem:
                return "(position) " + problem
        return None
    at = token.get("partition", 0)
    if isinstance(at, bool) or not isinstance(at, int) or at < 0:
        return f"(position) partition is {_json_kind(at)} {at!r}, expected an integer >= 0"
    problem = step_problem(token.get("inner"), "inner")
    return "(position) " + problem if problem else None


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
    - ``prefetch``: parsed pages that may wait for the mapping (the core's bounded channel;
      the reader sends nothing more while it is full).

    A page answered with an error status raises a ``PipelineError`` that is also what
    ``raise_for_status()`` raises (``AuthError`` for a 401 ...).
    """

    def __init__(self, client: Any, path: str, *, records: str = "data", paginator: Optional[Paginator] = None,
                 params: Optional[Dict[str, Any]] = None, incremental: Optional[Incremental] = None,
                 partitions: Optional[List[Dict[str, Any]]] = None, key: str = "id",
                 attempts: int = 6, parser: str = "core", name: Optional[str] = None,
                 concurrency: int = 4, retry: Any = None, prefetch: int = 8):
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
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise errors.ConfigError(f"prefetch: {prefetch!r} is not valid; expected an int >= 1")
        self.prefetch = prefetch
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
        # What a run reads (set by `open`): the network counts, and the record count once every
        # partition's first page told it.
        self.counters = Counters()
        self.total: Optional[int] = None
        self._run: Optional[_Reading] = None
        # Set by _fuse for the next run: the FieldMap's core (None: records as they are) that
        # maps each page in the core; a 1-tuple so that "no mapping" differs from "not fused".
        self._fused: Optional[Tuple[Any]] = None

    def _fuse(self, mapper: Any, enabled: bool = True) -> bool:
        """For the next run: map each page in the core with ``mapper`` (a FieldMap's core, or
        None to copy) and hand the pipeline mapped batches instead of records, when this stream
        can (the core parser, no incremental cursor, a paginator the core runs: a custom one may
        read the records). Returns whether it will."""
        can = enabled and self.parser == "core" and self.incremental is None \
            and (self.paginator is None or self.paginator._core_spec() is not None)
        self._fused = (mapper,) if can else None
        return can

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
        return record_keys(records, self._key_path)

    # -- the Source protocol -------------------------------------------------------------------
    def open(self, state: Optional[Dict[str, Any]]) -> None:
        """Starts reading where ``state`` (a token of this stream's batches) says: each
        partition's position and the incremental cursor; from the start when None. Raises
        ``StateError`` for a token this stream cannot have written."""
        problem = _token_problem(state)
        if problem:
            raise errors.StateError(problem)
        self.close()
        inc_state = (state or {}).get("incremental")
        tracker = _IncrementalTracker(self.incremental, inc_state) if self.incremental else None
        inc_value = self.incremental.start_value(inc_state) if self.incremental else None
        keys = self.partition_keys
        positions = _partition_positions(state, keys)
        todo = [(i, positions.get(k, {}).get("inner")) for i, k in enumerate(keys)
                if not positions.get(k, {}).get("done")]
        self.counters, self.total = Counters(), None
        reading = _Reading(positions, inc_state, tracker, len(todo))
        if self.paginator is not None and self._custom():
            # The core fetches and parses; the paginator names each next step (read_batch).
            for p, inner in todo:
                reading.paginators[p] = copy.copy(self.paginator)
                reading.steps[p] = inner or self._base(p, inc_value)
        reading.reader = self._reader(todo, inc_value)
        self._run = reading

    def _custom(self) -> bool:
        """Whether the paginator is a user's own (the core asks it for each next step)."""
        return self.paginator is not None and self.paginator._core_spec() is None

    def _reader(self, todo: List[Tuple[int, Optional[Step]]], inc_value: Any, single_page: bool = False,
                partitions: Optional[List[Dict[str, Any]]] = None) -> Any:
        """The core's reader of the partitions in ``todo`` (index, where it starts), from the
        incremental value ``inc_value``; with ``single_page``, one page of each (a page task).
        ``partitions``: the list the indexes refer to (default: all of the stream's)."""
        if self._http is None:
            # The governor's Retry does the retrying.
            self._http, _ = governed(self.client, self.retry, self.attempts)
        custom = self._custom()
        spec = {"kind": "follow", "fields": self.paginator.fields()} if custom and self.paginator is not None \
            else (self.paginator._core_spec() if self.paginator is not None else {})
        http = self._http
        return _core.PageReader(_transport.core_client(http), {
            "label": f"Stream {self.path}", "base_url": http.base_url or "", "path": self.path,
            "client_query": _encode_params(http.params), "headers": http.headers.multi_items(),
            "records": self.records_path, "params": self.params,
            "partitions": self.partitions if partitions is None else partitions,
            "incremental": (self.incremental.param, inc_value)
            if self.incremental is not None and inc_value is not None else None,
            "paginator": spec or None, "todo": todo, "concurrency": self.concurrency,
            "attempts": self.attempts, "prefetch": self.prefetch,
            # A custom paginator's page.response is whole, body included.
            "keep_body": self.parser == "python" or custom, "single_page": single_page,
            "fused": self._fused is not None, "mapper": self._fused[0] if self._fused else None, "key": self.key})

    def _read_page(self, p: int, step: Optional[Step], inc_value: Any) -> Tuple[Any, Optional[Step], Dict[str, Any]]:
        """One page of partition ``p`` from ``step`` (None: its first page), through the same
        core reader as a whole run, with a budget of one page: (its records, or a MappedBatch
        when fused; the step after it, None when it was the partition's last; the reader's
        counts). A worker's page task reads this way."""
        # Only this partition's params go to the core: a task reads one of them.
        reader = self._reader([(0, step)], inc_value, single_page=True, partitions=[self.partitions[p]])
        try:
            while True:
                item = reader.next(None, body=self.parser == "python")
                if item is None:
                    return [], None, reader.counts()
                _, records, after, _units, _total, done, fields, response = item
                if not done:
                    break
            if isinstance(records, bytes):
                records = self._python_records(records)
            if fields is not None and self.paginator is not None:
                # A custom paginator names the next step from this page alone: a task carries
                # no paginator state from one page to the next.
                paginator = copy.copy(self.paginator)
                base = step if step is not None and "unit" not in step else self._base(p, inc_value)
                page = Page(records, dict(zip(paginator.fields(), fields)), _transport.response_of(response), base)
                after = paginator.next(page) if records else None
            return records, after, reader.counts()
        finally:
            reader.close()

    def read_batch(self, max_records: int, timeout: float) -> Optional[Batch]:
        """The next page's records (split when longer than ``max_records``); an empty batch when
        no page arrived within ``timeout`` seconds or a partition finished; None at the end."""
        r = self._run
        if r is None:
            raise errors.PipelineError(f"Stream {self.path}: read_batch before open")
        if r.left:
            return self._piece(r, max_records)
        if r.finished:
            return None
        chunk = self._next_chunk(r, timeout)
        if chunk is False:
            return Batch([], [], r.token)
        if chunk is None:
            # Everything was read: the incremental cursor moves on with the last batch.
            r.finished = True
            final = None if r.tracker is None else {"incremental": r.tracker.state()}
            return Batch([], [], final)
        assert isinstance(chunk, _Chunk)
        if chunk.total is not None:
            r.totals[chunk.partition] = chunk.total
            self.total = sum(r.totals.values()) if len(r.totals) == r.todo else None
        records = chunk.records
        if isinstance(records, _core.MappedBatch):
            # Mapped in the core: the pipeline hands it to the sink's writer as it is.
            r.advance(self.partition_keys[chunk.partition], chunk)
            batch = Batch([], [], r.token)
            batch._mapped = records
            return batch
        rkeys = self.keys(records)
        skipped = 0
        if r.tracker is not None:
            keep = [not s for s in r.tracker.skipped(records, rkeys)]
            if not all(keep):
                skipped = keep.count(False)
                records = [rec for rec, ok in zip(records, keep) if ok]
                rkeys = [k for k, ok in zip(rkeys, keep) if ok]
            r.tracker.observe(records, rkeys)
        before = r.token
        r.advance(self.partition_keys[chunk.partition], chunk)
        if len(records) <= max_records:
            return Batch(records, rkeys, r.token, skipped=skipped)
        # Until its last piece is acknowledged, the page's partition resumes before it.
        r.left, r.left_keys, r.left_before, r.left_after = records, rkeys, before, r.token
        piece = self._piece(r, max_records)
        piece.skipped = skipped
        return piece

    def _next_chunk(self, r: _Reading, timeout: float) -> Any:
        """The next page as a _Chunk, None at the end, False when ``timeout`` passed first."""
        # Waits with the GIL released; the records (or the mapped batch) are built on this thread.
        item = r.reader.next(timeout, body=self.parser == "python")
        r.counted = self.counters.absorb(r.reader.counts(), r.counted)
        if item is None or item is False:
            return item
        p, records, after, units, total, done, fields, response = item
        if isinstance(records, bytes):
            records = self._python_records(records)
        if fields is not None:
            after = self._follow(r, p, records, fields, response)
        return _Chunk(records, p, after, tuple(units) if units else None, total, done)

    def _python_records(self, body: bytes) -> List[Any]:
        """The records of a page the core handed over unparsed: parser="python", or a page
        holding a number the core cannot (wider than 64 bits)."""
        status, records = _parse_in_python(body, self.records_path)
        if status != "ok":
            raise errors.PipelineError(
                f"Stream {self.path}: a page's records path {self.records_path!r} does not hold an "
                f"array when read by Python's parser ({status}); set records= to its path")
        return records  # type: ignore[no-any-return]

    def _follow(self, r: _Reading, p: int, records: Any, fields: List[Optional[str]], raw: Any) -> Optional[Step]:
        """Asks partition ``p``'s custom paginator for the step after this page and tells the
        core's reader, which fetches it; returns that step (None after the last page)."""
        paginator, step = r.paginators[p], r.steps[p]
        response = _transport.response_of(raw)
        page = Page(records, dict(zip(paginator.fields(), fields)), response, step)
        nxt = paginator.next(page)
        if nxt is not None and not records:
            nxt = None  # an empty page with a cursor: nothing more will come
        r.reader.follow(p, nxt)
        if nxt is not None:
            r.steps[p] = nxt
        return nxt

    @staticmethod
    def _piece(r: _Reading, n: int) -> Batch:
        records, keys = r.left[:n], r.left_keys[:n]
        del r.left[:n], r.left_keys[:n]
        return Batch(records, keys, r.left_before if r.left else r.left_after)

    def ack(self, batch: Batch) -> None:
        """Nothing to let go of: the pipeline checkpoints the batch's token."""

    def close(self) -> None:
        """Cancels what the run under way has in flight, if any."""
        r, self._run = self._run, None
        if r is None:
            return
        if r.reader is not None:
            r.reader.close()
            r.counted = self.counters.absorb(r.reader.counts(), r.counted)

    def _base(self, p: int, inc_value: Any) -> Step:
        """Partition ``p``'s first step: the stream's params, the partition's, the incremental value."""
        base: Step = {"url": None, "params": {**self.params, **self.partitions[p]}}
        if self.incremental is not None and inc_value is not None:
            base["params"][self.incremental.param] = inc_value
        return base


def _parse_in_python(body: bytes, path: str) -> Tuple[str, Any]:
    """A page the core hands over unparsed, read by ``json.loads``: (status, records)."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        return "invalid:" + str(exc), None
    # The core's dotted-path walk, the one every record path goes through.
    records = _core.record_values([doc], path.split(".") if path else [])[0]
    if records is None:
        return "missing", None
    if not isinstance(records, list):
        return "not_an_array", None
    return "ok", records
