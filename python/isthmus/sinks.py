"""Where a pipeline's records go: ``HttpSink``, ``JsonlSink``, ``SqliteSink``, ``CallableSink``,
or a ``Sink`` subclass of your own.

A sink settles every record it is given: it accepts it, or rejects it for good with a
``Rejection`` (which becomes a dead letter), or raises when it cannot tell (a transient failure
that outlasted its retries, a destination that refuses every batch): the pipeline then stops
without moving the checkpoint past those records, and a rerun sends them again. ``write`` may
keep records and settle them in a later ``write`` or in ``flush``, which the pipeline calls
right before each checkpoint; the contract is in docs/pipeline.md.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

from isthmus import _core, errors
from isthmus._transport import Counters, answered, as_stage_retry, excerpt, governed, send, status_error
from isthmus.http import redact_url

__all__ = ["Sink", "Rejection", "HttpSink", "JsonlSink", "SqliteSink", "CallableSink"]

# Answers that say nothing about whether a batch was applied: the run stops on them.
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Answers about the request, not its records (a wrong key, path or method): every other batch
# would get the same, so the run stops instead of trying the records one by one.
_REFUSED_STATUS = frozenset({401, 403, 404, 405, 407, 410})


class Rejection:
    """A record a sink refused for good; the pipeline files it as a dead letter.

    Name the record by ``index``, its position in the ``records`` of the ``write`` call that
    returns the rejection, or by ``key`` and ``record`` (the record itself): that form can
    name a record handed over in an earlier ``write`` and kept by the sink, and it is the only
    one ``flush`` may return. ``error`` says why; ``http_status``, ``response_excerpt`` (redact
    secrets first), ``attempts`` and ``traceback`` are optional and shown with the dead letter.
    """

    __slots__ = ("error", "index", "key", "record", "http_status", "response_excerpt", "attempts", "traceback")

    def __init__(self, error: str, *, index: Optional[int] = None, key: Optional[str] = None,
                 record: Any = None, http_status: Optional[int] = None,
                 response_excerpt: Optional[str] = None, attempts: int = 1,
                 traceback: Optional[str] = None):
        if not isinstance(error, str) or not error:
            raise errors.ConfigError(f"Rejection.error: {error!r} is not valid; expected the reason as text")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int) or index < 0):
            raise errors.ConfigError(f"Rejection.index: {index!r} is not valid; expected an int >= 0")
        if index is None and not isinstance(key, str):
            raise errors.ConfigError(f"Rejection: name the record by index=<position in this write's records>, "
                                     f"or by key=<its key as text> and record=<the record>; got key={key!r}")
        self.error, self.index, self.key, self.record = error, index, key, record
        self.http_status, self.response_excerpt = http_status, response_excerpt
        self.attempts, self.traceback = attempts, traceback

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Rejection) and all(getattr(self, a) == getattr(other, a) for a in self.__slots__)

    def __repr__(self) -> str:
        which = f"index={self.index}" if self.index is not None else f"key={self.key!r}"
        status = f", http_status={self.http_status}" if self.http_status is not None else ""
        return f"Rejection({self.error!r}, {which}{status})"


class Sink:
    """The interface every sink implements; subclass it for a destination of your own.

    - ``open(counters)`` is called once per run (and per replay) before the first write.
    - ``write(records, keys)`` gets the mapped records of a page and their keys. It returns
      the records it rejected for good, as a list of ``Rejection`` (None or ``[]`` when there
      are none), and raises when it cannot tell whether records were applied.
    - ``flush()`` settles everything handed over so far (sends what is kept, makes it durable)
      and returns the rejections found doing so; the checkpoint moves right after it.
    - ``close()`` releases resources; it must not send anything.

    A sink that keeps records between calls says how many in ``buffered``.
    """

    counters: Counters

    def open(self, counters: Counters) -> None:
        """Called before the first write of a run; ``counters`` counts its requests and bytes."""
        self.counters = counters

    def write(self, records: List[Any], keys: List[str]) -> Optional[List[Rejection]]:
        """Takes records (and their keys) over; returns the ones rejected for good."""
        raise NotImplementedError

    def flush(self) -> Optional[List[Rejection]]:
        """Settles every record handed over so far; returns the ones rejected for good."""
        return None

    def close(self) -> None:
        """Releases what the sink holds; sends nothing."""

    @property
    def buffered(self) -> int:
        """Records handed to ``write`` and not settled yet (0 for a sink that settles each call)."""
        return 0


class HttpSink(Sink):
    """POSTs records as JSON arrays of ``batch_size`` (or ``{wrap: [...]}``), ``concurrency``
    batches at a time, each with an ``Idempotency-Key`` derived from its records' keys.

    Batches are filled across pages: ``write`` keeps records until ``concurrency`` full
    batches are ready, ``flush`` sends the rest. A resent batch (a retry, a rerun after a
    crash) carries the same key, so an idempotent endpoint applies it once. A batch answered
    401, 403, 404, 405, 407 or 410 (a wrong key, path or method) stops the run with an error
    that is both a ``PipelineError`` and the ``AuthError``/``ClientError`` a direct call would
    raise; a transient answer (429, 5xx) that outlasts the retries stops it too. Any other 4xx
    for a batch is narrowed down record by record, and a record that still gets a 4xx is
    rejected with its status and the (redacted) response excerpt.

    ``retry``: a ``Retry`` (or a number of attempts); by default the client's, else
    ``Retry(attempts=attempts)``. ``headers`` are added to every POST (never shown in reprs).
    """

    def __init__(self, client: Any, path: str, *, batch_size: int = 100,
                 idempotency_key: Any = True, attempts: int = 6, concurrency: int = 8,
                 wrap: Optional[str] = None, headers: Optional[Dict[str, str]] = None,
                 retry: Any = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 100_000:
            raise errors.ConfigError(f"batch_size: {batch_size!r} is not valid; expected an int from 1 to 100000")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise errors.ConfigError(f"concurrency: {concurrency!r} is not valid; expected an int >= 1")
        if not (idempotency_key in (True, False, None) or callable(idempotency_key)):
            raise errors.ConfigError(f"idempotency_key: {idempotency_key!r} is not valid; "
                                     "expected True, False or a function (records, keys) -> str")
        self.client, self.path, self.batch_size = client, path, batch_size
        self.idempotency_key = idempotency_key
        self.attempts, self.concurrency, self.wrap = attempts, concurrency, wrap
        self.headers = dict(headers or {})
        self.retry = as_stage_retry(retry)
        self._http: Any = None
        self._records: List[Any] = []
        self._keys: List[str] = []

    def __repr__(self) -> str:
        base = getattr(self.client, "base_url", None) or ""
        wrap = f", wrap={self.wrap!r}" if self.wrap else ""
        return (f"HttpSink({redact_url(base + self.path)!r}, batch_size={self.batch_size}, "
                f"concurrency={self.concurrency}{wrap})")

    def open(self, counters: Counters) -> None:
        super().open(counters)
        if self._http is None:
            self._http, _ = governed(self.client, self.retry, self.attempts)
        # Records kept from a run that stopped were never checkpointed: its rerun reads them again.
        self._records, self._keys = [], []

    @property
    def buffered(self) -> int:
        return len(self._records)

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
        """Keeps the records; once ``concurrency`` full batches are kept, sends every full one."""
        self._records.extend(records)
        self._keys.extend(keys)
        if len(self._records) < self.batch_size * self.concurrency:
            return []
        return self._send_kept(len(self._records) - len(self._records) % self.batch_size)

    def flush(self) -> List[Rejection]:
        """Sends every kept record; returns the ones rejected for good."""
        return self._send_kept(len(self._records)) if self._records else []

    def close(self) -> None:
        self._records, self._keys = [], []

    def _send_kept(self, n: int) -> List[Rejection]:
        records, keys = self._records[:n], self._keys[:n]
        rejected: List[Rejection] = []
        spans = [(i, min(i + self.batch_size, n)) for i in range(0, n, self.batch_size)]
        self._send(records, keys, spans, rejected, narrowing=False)
        # Only now: records of a send that raised stay kept, and a later flush sends them again.
        del self._records[:n], self._keys[:n]
        return rejected

    def _send(self, records: List[Any], keys: List[str], spans: List[Tuple[int, int]],
              rejected: List[Rejection], narrowing: bool) -> None:
        reqs = [self._request(records[a:b], keys[a:b]) for a, b in spans]
        # On an error the checkpoint stays before these records; a rerun sends them again.
        answers = answered(send(self._http, reqs, self.counters, self.concurrency))
        retry_singly: List[Tuple[int, int]] = []
        for (a, b), resp in zip(spans, answers):
            status = resp.status_code
            if 200 <= status < 300:
                continue
            if status in _REFUSED_STATUS or status in _TRANSIENT_STATUS:
                raise self._stop(resp)
            if b - a > 1 and not narrowing:
                retry_singly.extend((i, i + 1) for i in range(a, b))
            else:
                shown = _core.redact_url(self.path)  # an API key may travel in the query
                for i in range(a, b):
                    rejected.append(Rejection(f"{status} {resp.reason_phrase} from POST {shown}", key=keys[i],
                                              record=records[i], http_status=status,
                                              response_excerpt=excerpt(resp), attempts=1))
        if retry_singly:
            self._send(records, keys, retry_singly, rejected, narrowing=True)

    @staticmethod
    def _stop(resp: Any) -> errors.PipelineError:
        status, where = resp.status_code, f"POST {redact_url(resp.request.url)}"
        if status in _REFUSED_STATUS:
            why = (f"HttpSink: {where} answered {status} {resp.reason_phrase}: the destination refuses the "
                   "request itself (check the credentials, the path and the method); stopping without "
                   "moving the checkpoint")
        else:
            why = (f"HttpSink: {where} still answered {status} after {resp.attempts} attempts; "
                   "stopping without moving the checkpoint")
        return errors.pipeline_error(f"{why}: {excerpt(resp, 200)}", status_error(resp))


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
        return [Rejection(reason, index=i) for i, reason in left_out]

    def __repr__(self) -> str:
        return f"JsonlSink({self.path!r}, fsync={self.fsync})"

    def flush(self) -> None:
        """Writes the lines through to the file (and fsyncs it, unless ``fsync=False``)."""
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

    def __repr__(self) -> str:
        return f"SqliteSink({self.path!r}, {self.table!r}, key={self.key!r})"

    def write(self, records: List[Any], keys: List[str]) -> List[Rejection]:
        rows: List[Tuple[str, str]] = []
        rejected: List[Rejection] = []
        for i, (r, k) in enumerate(zip(records, keys)):
            key = r.get(self.key, k) if isinstance(r, dict) else k
            try:
                rows.append((str(key), _core.json_dumps(r).decode()))
            except TypeError as exc:
                rejected.append(Rejection(str(exc), index=i))
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

    def __repr__(self) -> str:
        return f"CallableSink({getattr(self.fn, '__qualname__', type(self.fn).__name__)})"

    def write(self, records: List[Any], keys: List[str]) -> List[Rejection]:
        try:
            self.fn(records)
            return []
        except Exception:
            pass
        rejected: List[Rejection] = []
        for i, r in enumerate(records):
            try:
                self.fn([r])
            except Exception as exc:
                rejected.append(Rejection(f"{type(exc).__name__}: {exc}", index=i,
                                          traceback=traceback.format_exc()))
        return rejected
