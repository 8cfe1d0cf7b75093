"""Where a pipeline's records go: ``HttpSink``, ``JsonlSink``, ``SqliteSink``, ``CallableSink``.

A sink's ``write(records, keys)`` returns once every record is either accepted or rejected
for good; it returns the rejections (they become dead letters) and raises when it cannot tell
(a transient failure that outlasted its retries): the pipeline then stops without moving the
checkpoint past those records, and a rerun sends them again.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from isthmus import _core, errors
from isthmus.http import Response, redact_url
from isthmus.limits import Retry, as_retry

__all__ = ["Sink", "HttpSink", "JsonlSink", "SqliteSink", "CallableSink"]

Rejection = Dict[str, Any]  # index, error, http_status, response_excerpt, attempts, traceback

# Answers that say nothing about whether a batch was applied: the run stops on them.
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class Counters:
    """What a run reports about the network: requests, 429s, retries, bytes, time held back.

    Several fetch threads count at once, so counting goes through ``count`` (under a lock).
    """

    __slots__ = ("requests", "status_429", "retries", "bytes_in", "bytes_out", "wait_seconds", "_lock")

    def __init__(self) -> None:
        self.requests = self.status_429 = self.retries = self.bytes_in = self.bytes_out = 0
        self.wait_seconds = 0.0  # held back by the limiter and backing off between attempts
        self._lock = threading.Lock()

    def count(self, raw: Any, request: Any) -> None:
        """Counts every attempt behind one answer of the core (a raw response)."""
        # Counted without taking the body out of the core, which may parse it in place.
        with self._lock:
            self.requests += raw.attempts
            self.retries += max(0, raw.attempts - 1)
            self.status_429 += raw.retried_429 + (raw.status == 429)
            self.bytes_in += raw.retried_bytes + raw.body_size
            if request.content:
                self.bytes_out += len(request.content) * raw.attempts
            self.wait_seconds += raw.waited

    def add_retries(self, n: int) -> None:
        with self._lock:
            self.retries += n


def governed(client: Any, retry: Optional[Retry], attempts: int) -> Tuple[Any, Retry]:
    """The client a stream or sink sends through, and the ``Retry`` it retries by.

    One retry mechanism, the governor's: ``retry`` when given, else the client's own, else
    ``Retry(attempts=attempts)`` without a circuit breaker (a run stops on failures that
    outlast the attempts, and its rerun resumes from the checkpoint).
    """
    if retry is not None:
        return client._with_retry(retry), retry
    if getattr(client, "retry", None) is not None:
        return client, client.retry
    default = Retry(attempts=attempts, circuit_breaker=False)
    return client._with_retry(default), default


def as_stage_retry(retry: Any) -> Optional[Retry]:
    """``retry=`` of a Stream or HttpSink: None (the client's, or a default), a Retry, or attempts."""
    if retry is None:
        return None
    if isinstance(retry, bool):
        raise errors.ConfigError(f"retry: {retry!r} is not valid; expected a Retry(...), an int number "
                                 "of attempts, or None for the client's retry")
    return as_retry(retry)


def send(client: Any, requests: Sequence[Any], counters: Counters,
         concurrency: int) -> List[Union[Any, Exception]]:
    """Sends requests in parallel through the client (its governor retries 429s, 5xx and
    transport errors); counts every attempt. One Response, or the error of a request that
    never got an answer, per request, in order."""
    client._check_open()
    raws = client._exchange_many(list(requests), concurrency)
    out: List[Union[Any, Exception]] = []
    for raw, req in zip(raws, requests):
        counters.count(raw, req)
        out.append(Response(raw, req) if raw.ok else raw.exception(req.method, redact_url(req.url)))
    return out


def _excerpt(response: Any, limit: int = 500) -> str:
    try:
        return response._redacted_excerpt(limit)
    except Exception:
        return ""


class Sink:
    """The interface. Subclasses override ``write``; ``flush``/``close`` are optional."""

    counters: Counters

    def open(self, counters: Counters) -> None:
        self.counters = counters

    def write(self, records: List[Any], keys: List[str]) -> List[Rejection]:
        raise NotImplementedError

    def flush(self) -> None:
        """Makes everything written durable; the checkpoint moves right after."""

    def close(self) -> None:
        pass


class HttpSink(Sink):
    """POSTs batches as a JSON array with an ``Idempotency-Key`` derived from the records' identities.

    A resent batch (a retry, a rerun after a crash) carries the same key, so an idempotent
    endpoint applies it once. A 4xx for a batch is narrowed down record by record; a record that
    still gets a 4xx is rejected with its status and the response excerpt.
    """

    def __init__(self, client: Any, path: str, *, batch_size: int = 100,
                 idempotency_key: Any = True, attempts: int = 6, concurrency: int = 8,
                 wrap: Optional[str] = None, headers: Optional[Dict[str, str]] = None,
                 retry: Any = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 100_000:
            raise errors.ConfigError(f"batch_size: {batch_size!r} is not valid; expected an int from 1 to 100000")
        if not (idempotency_key in (True, False, None) or callable(idempotency_key)):
            raise errors.ConfigError(f"idempotency_key: {idempotency_key!r} is not valid; "
                                     "expected True, False or a function (records, keys) -> str")
        self.client, self.path, self.batch_size = client, path, batch_size
        self.idempotency_key = idempotency_key
        self.attempts, self.concurrency, self.wrap = attempts, concurrency, wrap
        self.headers = dict(headers or {})
        self.retry = as_stage_retry(retry)
        self._http: Any = None

    def open(self, counters: Counters) -> None:
        super().open(counters)
        if self._http is None:
            self._http, _ = governed(self.client, self.retry, self.attempts)

    def _key(self, records: List[Any], keys: List[str]) -> Optional[str]:
        if self.idempotency_key in (False, None):
            return None
        if callable(self.idempotency_key):
            return str(self.idempotency_key(records, keys))
        return "ist-" + hashlib.sha256("\x1f".join(keys).encode()).hexdigest()[:40]

    def _request(self, records: List[Any], keys: List[str]) -> Any:
        headers = dict(self.headers)
        key = self._key(records, keys)
        if key:
            headers["Idempotency-Key"] = key
        body = {self.wrap: records} if self.wrap else records
        return self.client.build_request("POST", self.path, json=body, headers=headers)

    def write(self, records: List[Any], keys: List[str]) -> List[Rejection]:
        rejected: List[Rejection] = []
        spans = [(i, min(i + self.batch_size, len(records))) for i in range(0, len(records), self.batch_size)]
        self._send(records, keys, spans, rejected, narrowing=False)
        return rejected

    def _send(self, records: List[Any], keys: List[str], spans: List[tuple], rejected: List[Rejection],
              narrowing: bool) -> None:
        reqs = [self._request(records[a:b], keys[a:b]) for a, b in spans]
        answers = send(self._http, reqs, self.counters, self.concurrency)
        for resp in answers:
            if isinstance(resp, Exception):
                raise resp  # the checkpoint stays before these records; a rerun sends them again
        retry_singly: List[tuple] = []
        shown = _core.redact_url(self.path)  # an API key may travel in the query
        for (a, b), resp in zip(spans, answers):
            status = resp.status_code
            if 200 <= status < 300:
                continue
            if status in _TRANSIENT_STATUS:
                raise errors.PipelineError(
                    f"HttpSink: POST {shown} still answered {status} after {resp.attempts} attempts; "
                    f"stopping without moving the checkpoint: {_excerpt(resp, 200)}")
            if b - a > 1 and not narrowing:
                retry_singly.extend((i, i + 1) for i in range(a, b))
            else:
                for i in range(a, b):
                    rejected.append({"index": i, "error": f"{status} {resp.reason_phrase} from POST {shown}",
                                     "http_status": status, "response_excerpt": _excerpt(resp),
                                     "attempts": 1})
        if retry_singly:
            self._send(records, keys, retry_singly, rejected, narrowing=True)


class JsonlSink(Sink):
    """Appends one JSON document per line. ``flush`` fsyncs, so a checkpoint never outruns the file."""

    def __init__(self, path: str, *, fsync: bool = True):
        self.path, self.fsync = str(path), fsync
        self._f: Any = None

    def open(self, counters: Counters) -> None:
        super().open(counters)
        self._f = open(self.path, "ab")

    def write(self, records: List[Any], keys: List[str]) -> List[Rejection]:
        # The core writes every record in one pass and leaves out (and names) what it cannot.
        text, left_out = _core.json_lines(records)
        if text:
            self._f.write(text)
            self.counters.bytes_out += len(text)
        return [{"index": i, "error": reason, "attempts": 1} for i, reason in left_out]

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()
            if self.fsync:
                os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self.flush()
            self._f.close()
            self._f = None


class SqliteSink(Sink):
    """Upserts records into ``table`` (key column plus the record as JSON); a resend replaces."""

    def __init__(self, path: str, table: str, *, key: str = "id"):
        if not table.replace("_", "").isalnum():
            raise errors.ConfigError(f"table: {table!r} is not valid; expected letters, digits and _")
        self.path, self.table, self.key = str(path), table, key
        self._db: Any = None

    def open(self, counters: Counters) -> None:
        super().open(counters)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f'CREATE TABLE IF NOT EXISTS "{self.table}" (key TEXT PRIMARY KEY, record TEXT NOT NULL)')

    def write(self, records: List[Any], keys: List[str]) -> List[Rejection]:
        rows, rejected = [], []
        for i, (r, k) in enumerate(zip(records, keys)):
            key = r.get(self.key, k) if isinstance(r, dict) else k
            try:
                rows.append((str(key), _core.json_dumps(r).decode()))
            except TypeError as exc:
                rejected.append({"index": i, "error": str(exc), "attempts": 1})
        self._db.execute("BEGIN")
        try:
            self._db.executemany(
                f'INSERT INTO "{self.table}" (key, record) VALUES (?, ?) '
                "ON CONFLICT (key) DO UPDATE SET record = excluded.record", rows)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return rejected

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class CallableSink(Sink):
    """Calls ``fn(records)``; when it raises, each record is tried alone and the ones that
    still raise are rejected with their traceback."""

    def __init__(self, fn: Callable[[List[Any]], Any]):
        if not callable(fn):
            raise errors.ConfigError(f"fn: {fn!r} is not callable")
        self.fn = fn

    def write(self, records: List[Any], keys: List[str]) -> List[Rejection]:
        try:
            self.fn(records)
            return []
        except Exception:
            pass
        rejected = []
        for i, r in enumerate(records):
            try:
                self.fn([r])
            except Exception as exc:
                rejected.append({"index": i, "error": f"{type(exc).__name__}: {exc}",
                                 "traceback": traceback.format_exc(), "attempts": 1})
        return rejected
