"""Where a pipeline's records go: ``HttpSink``, ``JsonlSink``, ``SqliteSink``, ``CallableSink``.

A sink's ``write(records, keys)`` returns once every record is either accepted or rejected
for good; it returns the rejections (they become dead letters) and raises when it cannot tell
(a transient failure that outlasted its retries): the pipeline then stops without moving the
checkpoint past those records, and a rerun sends them again.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence

from isthmus import _core, errors

__all__ = ["Sink", "HttpSink", "JsonlSink", "SqliteSink", "CallableSink"]

Rejection = Dict[str, Any]  # index, error, http_status, response_excerpt, attempts, traceback


class Counters:
    """What a run reports about the network: requests, 429s, retries, bytes."""

    __slots__ = ("requests", "status_429", "retries", "bytes_in", "bytes_out", "wait_seconds")

    def __init__(self) -> None:
        self.requests = self.status_429 = self.retries = self.bytes_in = self.bytes_out = 0
        self.wait_seconds = 0.0  # backing off between attempts (limiter waits are added by the run)


_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def _retry_after(response: Any) -> Optional[float]:
    value = response.headers.get("retry-after") if response is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def send_with_retry(client: Any, requests: Sequence[Any], counters: Counters, attempts: int,
                    concurrency: int = 8, backoff: float = 0.1) -> List[Any]:
    """Sends requests (in parallel), retrying 429, 5xx and transport errors with backoff.

    Returns one Response per request (the last one, which may still be a 4xx, or a 5xx after
    the last attempt) in order; raises the transport error of a request that never got an
    answer. Until the governor branch lands in the clients, this is the pipeline's retry.
    """
    results: List[Any] = [None] * len(requests)
    pending = list(range(len(requests)))
    for attempt in range(1, attempts + 1):
        batch = [requests[i] for i in pending]
        answers = client.get_many(batch, concurrency=concurrency, return_exceptions=True)
        counters.requests += len(batch)
        again, wait = [], 0.0
        for i, req, ans in zip(pending, batch, answers):
            if req.content:
                counters.bytes_out += len(req.content)
            if isinstance(ans, Exception):
                results[i] = ans
                if isinstance(ans, (errors.TransportError, errors.TimeoutError)):
                    again.append(i)
                continue
            # Counted without taking the body out of the core, which may parse it in place.
            counters.bytes_in += len(ans._content) if ans._content is not None else ans._raw.body_size
            results[i] = ans
            if ans.status_code == 429:
                counters.status_429 += 1
            if ans.status_code in _RETRYABLE_STATUS:
                again.append(i)
                wait = max(wait, _retry_after(ans) or 0.0)
        if not again or attempt == attempts:
            break
        counters.retries += len(again)
        # Exponential backoff with jitter, or longer when the server said so.
        pause = max(wait, backoff * (2 ** (attempt - 1)) * (0.5 + random.random()))
        counters.wait_seconds += pause
        time.sleep(pause)
        pending = again
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results


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
                 wrap: Optional[str] = None, headers: Optional[Dict[str, str]] = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 100_000:
            raise errors.ConfigError(f"batch_size: {batch_size!r} is not valid; expected an int from 1 to 100000")
        if not (idempotency_key in (True, False, None) or callable(idempotency_key)):
            raise errors.ConfigError(f"idempotency_key: {idempotency_key!r} is not valid; "
                                     "expected True, False or a function (records, keys) -> str")
        self.client, self.path, self.batch_size = client, path, batch_size
        self.idempotency_key = idempotency_key
        self.attempts, self.concurrency, self.wrap = attempts, concurrency, wrap
        self.headers = dict(headers or {})

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
        answers = send_with_retry(self.client, reqs, self.counters, self.attempts, self.concurrency)
        retry_singly: List[tuple] = []
        shown = _core.redact_url(self.path)  # an API key may travel in the query
        for (a, b), resp in zip(spans, answers):
            status = resp.status_code
            if 200 <= status < 300:
                continue
            if status in _RETRYABLE_STATUS:
                raise errors.PipelineError(
                    f"HttpSink: POST {shown} still answered {status} after {self.attempts} attempts; "
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
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, records: List[Any], keys: List[str]) -> List[Rejection]:
        dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        rejected: List[Rejection] = []
        try:
            text = "\n".join(map(dumps, records))
        except (TypeError, ValueError):
            lines = []
            for i, r in enumerate(records):
                try:
                    lines.append(dumps(r))
                except (TypeError, ValueError) as exc:
                    rejected.append({"index": i, "error": f"not JSON-serializable: {exc}", "attempts": 1})
            text = "\n".join(lines)
        if text:
            self._f.write(text + "\n")
            self.counters.bytes_out += len(text) + 1
        return rejected

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
                rows.append((str(key), json.dumps(r, ensure_ascii=False)))
            except (TypeError, ValueError) as exc:
                rejected.append({"index": i, "error": f"not JSON-serializable: {exc}", "attempts": 1})
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
