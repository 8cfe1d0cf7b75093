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

import json
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

from isthmus import _core, errors
from isthmus._transport import Counters, as_stage_retry, core_client, excerpt, governed, status_error
from isthmus.http import Response, redact_url

__all__ = ["Sink", "Rejection", "HttpSink", "JsonlSink", "SqliteSink", "CallableSink"]

# Answers that say nothing about whether a batch was applied: the run stops on them.
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


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

    - ``open(counters)`` is called once per run (and per replay) before the first write, and
      again after ``close()`` when a worker could not deliver a page: drop what was kept then.
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

    ``idempotency_key``: True (``ist-`` + a hash of the keys), False/None (no header), or a
    function ``(records, keys) -> str`` (the records as decoded JSON). ``retry``: a ``Retry``
    (or a number of attempts); by default the client's, else ``Retry(attempts=attempts)``.
    ``headers`` are added to every POST (never shown in reprs). The batching, the requests and
    the status rules run in the core (``isthmus._core.HttpBatcher``) with the GIL released.
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
        self._batcher: Any = None
        self._post: Any = None  # the Request every batch is built like, for errors and excerpts

    def __repr__(self) -> str:
        base = getattr(self.client, "base_url", None) or ""
        wrap = f", wrap={self.wrap!r}" if self.wrap else ""
        return (f"HttpSink({redact_url(base + self.path)!r}, batch_size={self.batch_size}, "
                f"concurrency={self.concurrency}{wrap})")

    def open(self, counters: Counters) -> None:
        super().open(counters)
        if self._http is None:
            self._http, _ = governed(self.client, self.retry, self.attempts)
        # Records kept from a run that stopped were never checkpointed: its rerun reads them
        # again, so a fresh batcher starts empty.
        self._post = self.client.build_request("POST", self.path, json=[], headers=self.headers)
        key_function = None
        if callable(self.idempotency_key):
            fn = self.idempotency_key

            def key_function(texts: List[str], keys: List[str]) -> str:
                return str(fn([json.loads(t) for t in texts], keys))
        self._batcher = _core.HttpBatcher(
            core_client(self._http), self._post.url, self._post.headers.multi_items(), self.batch_size,
            self.concurrency, self.wrap or "", self.idempotency_key is True, self._post.timeout or 0.0,
            key_function)

    @property
    def buffered(self) -> int:
        return int(self._batcher.buffered) if self._batcher is not None else 0

    def write(self, records: List[Any], keys: List[str]) -> List[Rejection]:
        """Keeps the records; once ``concurrency`` full batches are kept, sends every full one."""
        batch, left_out = _core.json_batch(records, keys)
        rejected = [Rejection(reason, index=i) for i, reason in left_out]
        return rejected + self._write_batch(batch)

    def _write_batch(self, batch: Any) -> List[Rejection]:
        """A batch of records as JSON (``_core.MappedBatch``) into the batcher."""
        return self._settle(self._batcher.write(batch))

    def flush(self) -> List[Rejection]:
        """Sends every kept record; returns the ones rejected for good."""
        return self._settle(self._batcher.flush()) if self._batcher is not None else []

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.clear()

    def _settle(self, outcome: Tuple[List[Any], Any, Dict[str, Any]]) -> List[Rejection]:
        rejected, stop, counts = outcome
        self.counters.add(counts)
        if stop is not None:
            # On an error the checkpoint stays before these records; a rerun sends them again.
            if not stop.ok:
                raise stop.exception("POST", redact_url(self._post.url))
            raise self._stop(Response(stop, self._post))
        shown = _core.redact_url(self.path)  # an API key may travel in the query
        out: List[Rejection] = []
        for key, text, raw in rejected:
            resp = Response(raw, self._post)
            out.append(Rejection(f"{resp.status_code} {resp.reason_phrase} from POST {shown}", key=key,
                                 record=json.loads(text), http_status=resp.status_code,
                                 response_excerpt=excerpt(resp), attempts=1))
        return out

    @staticmethod
    def _stop(resp: Any) -> errors.PipelineError:
        status, where = resp.status_code, f"POST {redact_url(resp.request.url)}"
        if status in errors.REFUSED_STATUS:
            why = (f"HttpSink: {where} answered {status} {resp.reason_phrase}: the destination refuses the "
                   "request itself (check the credentials, the path and the method); stopping without "
                   "moving the checkpoint")
        else:
            why = (f"HttpSink: {where} still answered {status} after {resp.attempts} attempts; "
                   "stopping without moving the checkpoint")
        return errors.pipeline_error(f"{why}: {excerpt(resp, 200)}", status_error(resp))


class JsonlSink(Sink):
    """Appends one JSON document per line. ``flush`` fsyncs, so a checkpoint never outruns the file.

    The lines are written by the core (``isthmus._core.JsonlWriter``) with the GIL released."""

    def __init__(self, path: str, *, fsync: bool = True):
        self.path, self.fsync = str(path), fsync
        self._w: Any = None

    def open(self, counters: Counters) -> None:
        super().open(counters)
        self._w = _core.JsonlWriter(self.path, self.fsync)
        self._w.open()

    def write(self, records: List[Any], keys: List[str]) -> List[Rejection]:
        # The core writes every record in one pass and leaves out (and names) what it cannot.
        batch, left_out = _core.json_batch(records, keys)
        self._write_batch(batch)
        return [Rejection(reason, index=i) for i, reason in left_out]

    def _write_batch(self, batch: Any) -> List[Rejection]:
        """A batch of records as JSON (``_core.MappedBatch``) appended as it is."""
        self.counters.bytes_out += self._w.write(batch)
        return []

    def __repr__(self) -> str:
        return f"JsonlSink({self.path!r}, fsync={self.fsync})"

    def flush(self) -> None:
        """Writes the lines through to the file (and fsyncs it, unless ``fsync=False``)."""
        if self._w is not None:
            self._w.flush()

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None


class SqliteSink(Sink):
    """Upserts records into ``table`` (key column plus the record as JSON); a resend replaces.

    A record is filed under its ``key`` field (str() of it), else under its key in the stream.
    Each write is one transaction, run by the core (``isthmus._core.SqliteWriter``)."""

    def __init__(self, path: str, table: str, *, key: str = "id"):
        if not table.replace("_", "").isalnum():
            raise errors.ConfigError(f"table: {table!r} is not valid; expected letters, digits and _")
        self.path, self.table, self.key = str(path), table, key
        self._w: Any = None

    def open(self, counters: Counters) -> None:
        super().open(counters)
        self._w = _core.SqliteWriter(self.path, self.table, self.key)
        self._w.open()

    def __repr__(self) -> str:
        return f"SqliteSink({self.path!r}, {self.table!r}, key={self.key!r})"

    def write(self, records: List[Any], keys: List[str]) -> List[Rejection]:
        # Keys read here from the Python records, so a value JSON cannot hold (a datetime) is
        # filed under its str() as before.
        final = [str(r.get(self.key, k)) if isinstance(r, dict) else k for r, k in zip(records, keys)]
        batch, left_out = _core.json_batch(records, final)
        self._w.write(batch, True)
        return [Rejection(reason, index=i) for i, reason in left_out]

    def _write_batch(self, batch: Any) -> List[Rejection]:
        """A batch of records as JSON (``_core.MappedBatch``): the core reads each key field."""
        self._w.write(batch, False)
        return []

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None


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
