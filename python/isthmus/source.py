"""Sources: what a ``Pipeline`` reads from. ``Stream`` is one; any Python class can be another.

A source hands the pipeline batches of records, each with a token: the state to checkpoint
once that batch is acknowledged. The pipeline acknowledges a batch (``ack``) once the sink
has settled every record of it, and checkpoints the token of the newest batch of the
contiguous acknowledged prefix, so a rerun opens the source there::

    class Lines:
        name = "lines"

        def __init__(self, path):
            self.path = path

        def open(self, state):
            self.offset = state["offset"] if state else 0

        def read_batch(self, max_records, timeout):
            rows = read_rows(self.path, self.offset, max_records)
            if not rows:
                return None  # exhausted
            self.offset += len(rows)
            return isthmus.Batch(rows, [str(r["id"]) for r in rows], {"offset": self.offset})

        def ack(self, batch):
            pass

The contract follows Benthos' ``ReadBatch`` and ``AckFunc``: every batch is acknowledged at
least once, in whatever order its records settle, and the checkpoint only moves over a
contiguous acknowledged prefix.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

from isthmus import _core, errors

__all__ = ["Source", "Batch"]

# What every source must have; the optional attributes are listed on Source.
_REQUIRED = ("open", "read_batch", "ack")


class Batch:
    """Records read together, their keys, and the ``token`` to checkpoint once they are acked.

    - ``records``: a list of records (usually dicts).
    - ``keys``: one text key per record, its identity (dead letters, idempotency keys, dedupe).
    - ``token``: where the source resumes once this batch and every one before it is
      acknowledged: a JSON object (a dict of JSON values) or None. The pipeline saves it in
      the state file and passes it to ``open`` on the next run.
    - ``skipped``: records the source read and left out by a rule of its own (an incremental
      cursor's boundary), counted as skipped in the run summary.

    A batch may be empty (no records yet, a partition finished): its token still counts.
    """

    __slots__ = ("records", "keys", "token", "skipped", "_number", "_mapped")

    def __init__(self, records: List[Any], keys: List[str], token: Optional[Dict[str, Any]] = None, *,
                 skipped: int = 0):
        if not isinstance(records, list):
            raise errors.ConfigError(f"Batch.records: {type(records).__name__} is not valid; expected a list")
        if not isinstance(keys, list) or len(keys) != len(records):
            got = f"{len(keys)} keys" if isinstance(keys, list) else type(keys).__name__
            raise errors.ConfigError(f"Batch.keys: {got} for {len(records)} records is not valid; "
                                     "expected a list of one text key per record")
        if token is not None and not isinstance(token, dict):
            raise errors.ConfigError(f"Batch.token: {type(token).__name__} {token!r:.80} is not valid; "
                                     "expected a JSON object (a dict) or None")
        if isinstance(skipped, bool) or not isinstance(skipped, int) or skipped < 0:
            raise errors.ConfigError(f"Batch.skipped: {skipped!r} is not valid; expected an int >= 0")
        self.records, self.keys, self.token, self.skipped = records, keys, token, skipped
        # Set by the pipeline when it reads the batch: a batch is read, and acked, once.
        self._number: Optional[int] = None
        # A Stream reading for a fused run (see Stream._fuse) hands over its page's records
        # as the core mapped them (an isthmus._core.MappedBatch) instead of `records`.
        self._mapped: Any = None

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"<Batch of {len(self.records)} records>"  # the token may hold a cursor: not shown


@runtime_checkable
class Source(Protocol):
    """What a ``Pipeline`` reads from: any object with these three methods.

    - ``open(state)``: called once at the start of a run with the token of the last
      acknowledged batch (what the previous run checkpointed), or None on a first run.
    - ``read_batch(max_records, timeout)``: the next ``Batch`` of at most ``max_records``
      records; an empty batch when nothing arrived within ``timeout`` seconds; None once the
      source is exhausted.
    - ``ack(batch)``: the sink has settled every record of ``batch`` (accepted, or filed as a
      dead letter); the source may let go of them (ack a queue's lease ...). Each batch is
      acknowledged once; the checkpoint moves with it. The pipeline has already let go of the
      batch's records by then (``batch.records`` is empty; ``keys`` and ``token`` are as
      read), so a run holds the records of the batches in flight, not of every batch since
      the last checkpoint: what an ack needs goes in the token, the keys or the source.

    Optional attributes the pipeline uses when present: ``name`` (what the checkpoint is
    filed under), ``identity`` (which data it reads: a checkpoint saved by a source with
    another identity refuses the run; default: the class's qualified name), ``total`` (the
    record count, for the progress bar), ``keys(records)`` (keys for the records a batch map
    returns; default: each record's ``id``, else a hash of its JSON), ``counters`` (its
    network counts: ``requests``, ``status_429``, ``retries``, ``bytes_in``, ``bytes_out``,
    ``wait_seconds``) and ``close()`` (called once when the run ends, however it ends).

    An exception in a method stops the run with a ``PipelineError`` naming the source and
    the batch (the original as ``__cause__``); what was acknowledged before stays
    checkpointed.
    """

    def open(self, state: Optional[Dict[str, Any]]) -> None:
        ...

    def read_batch(self, max_records: int, timeout: float) -> Optional[Batch]:
        ...

    def ack(self, batch: Batch) -> None:
        ...


def missing_methods(source: Any) -> List[str]:
    """The methods of the Source protocol ``source`` lacks (or has as non-callables)."""
    return [m for m in _REQUIRED if not callable(getattr(source, m, None))]


def record_keys(records: List[Any], path: Sequence[str] = ("id",)) -> List[str]:
    """Each record's identity as text, read at the dotted ``path``; a hash of its JSON when it
    has none."""
    out = _core.record_keys(records, list(path))
    for i, v in enumerate(out):
        if v is None:
            text = json.dumps(records[i], sort_keys=True, default=str)
            out[i] = "sha1:" + hashlib.sha1(text.encode()).hexdigest()
    return out


class Acks:
    """Which batches are acknowledged, and the token of the newest one of the contiguous
    acknowledged prefix: the checkpoint. Batches are numbered from 0 as they are read; acks
    may come in any order; acknowledging a batch twice, or one never read, is an error."""

    __slots__ = ("_read", "_low", "_tokens", "_acked")

    def __init__(self) -> None:
        self._read = 0  # the number the next batch read gets
        self._low = 0  # the first batch not acknowledged
        self._tokens: Dict[int, Optional[Dict[str, Any]]] = {}
        self._acked: set[int] = set()

    def read(self, token: Optional[Dict[str, Any]]) -> int:
        """Numbers a batch just read; returns its number."""
        n = self._read
        self._tokens[n] = token
        self._read += 1
        return n

    def ack(self, n: int) -> None:
        if n >= self._read or n < 0:
            raise errors.PipelineError(f"batch {n} was acknowledged but never read")
        if n < self._low or n in self._acked:
            raise errors.PipelineError(f"batch {n} was acknowledged twice")
        self._acked.add(n)

    def advance(self) -> Optional[Tuple[int, Optional[Dict[str, Any]]]]:
        """``(number, token)`` of the newest batch of the contiguous acknowledged prefix, when
        the prefix grew since the last call; None when it did not (a batch before is still out)."""
        newest: Optional[Tuple[int, Optional[Dict[str, Any]]]] = None
        while self._low in self._acked:
            self._acked.remove(self._low)
            newest = (self._low, self._tokens.pop(self._low))
            self._low += 1
        return newest

    @property
    def next_number(self) -> int:
        """The number the next batch read gets."""
        return self._read

    @property
    def outstanding(self) -> int:
        """Batches read and not acknowledged yet."""
        return self._read - self._low - len(self._acked)
