"""Pipelines: a ``Source`` -> Python mapping in batches -> a sink, at-least-once.

::

    contacts = isthmus.Stream(client, "/v1/contacts", records="data",
                              paginator=isthmus.CursorPaginator("meta.next_cursor", param="cursor"),
                              params={"limit": 100})
    run = isthmus.Pipeline(contacts, map=to_ours, sink=isthmus.JsonlSink("out.jsonl"),
                           state="contacts.db").run(progress=True)
    run.summary()

The source hands over batches (a ``Stream`` fetches pages on its own threads); mapping, the
sink and checkpoints run on the caller's thread. Once the sink has settled a batch's records
the batch is acknowledged, and the checkpoint moves to the token of the newest batch of the
contiguous acknowledged prefix, with that prefix's dead letters, in one transaction: a rerun
after a crash resumes there and may resend a few records, never skip one.
"""

from __future__ import annotations

import collections
import gc
import html
import json
import logging
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

from isthmus import errors
from isthmus._transport import NETWORK_COUNTS, Counters
from isthmus.mapping import FieldMap
from isthmus.sinks import HttpSink, JsonlSink, Rejection, Sink, SqliteSink
from isthmus.source import Acks, Batch, missing_methods, record_keys
from isthmus.store import StateStore

__all__ = ["Pipeline", "Run"]

log = logging.getLogger("isthmus")

# Records asked of the source per batch: about a page, and the unit a batch map gets.
_MAX_BATCH = 10_000

# Sinks whose writer is in the core: with a FieldMap (or no map) and a source that can map in
# the core, records go from the page parser to the sink writer without becoming Python objects.
# Exact types: a subclass may override write() and expect Python records.
_FUSED_SINKS = (JsonlSink, SqliteSink, HttpSink)


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

# The counts of a run, named once: Run.counts and summary(), the state file's run history,
# Pipeline.runs() and `isthmus run` all use these names.
RECORD_COUNTS = ("read", "written", "dead_lettered", "dropped", "skipped")
COUNT_NAMES = RECORD_COUNTS + NETWORK_COUNTS


def all_failed_error(pipeline: str, failed: int, reasons: List[str], held: bool = True) -> errors.PipelineError:
    """The error a run stops with when its first ``failed`` records all failed and none was
    written, naming the most common of ``reasons``. They are grouped by kind (the exception's
    class, or the whole text of an HTTP refusal), since each message names its own record.
    ``held``: the checkpoint stayed before them (an embedded run); on workers, pages are
    checkpointed one by one and the records are replayed from their dead letters."""
    kinds = collections.Counter(e.split(": ", 1)[0] for e in reasons)
    kind, times = kinds.most_common(1)[0]
    example = next(e for e in reasons if e.split(": ", 1)[0] == kind)
    kept = ("without moving the checkpoint past them (they are dead letters)" if held else
            "(they are dead letters, which `isthmus dlq replay` sends again once the cause is fixed)")
    return errors.PipelineError(
        f"Pipeline {pipeline}: the first {failed:,} records all failed and none was written; stopping {kept}. "
        f"Most common reason ({times:,} of {len(reasons):,}): {example}. Pipeline(stop_after_failures=0) turns "
        "this check off.")


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
        self.counts: Dict[str, float] = {k: 0 for k in COUNT_NAMES}
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


def _cluster_spec(queue: Any, coordination: Any, source: Any) -> Tuple[Any, Any]:
    """Checks ``queue=`` and ``coordination=`` without connecting (a run on workers connects on
    first use)."""
    if queue is None and coordination is None:
        return None, None
    from isthmus.coordination import Coordination
    from isthmus.queue import AmqpQueue, LocalQueue

    if queue is None:
        return None, coordination
    if isinstance(queue, str):
        if not queue.startswith(("amqp://", "amqps://")):
            raise errors.ConfigError("queue: a URL that is not amqp:// or amqps:// is not valid; expected the "
                                     "RabbitMQ broker's URL (amqp://user:password@host:5672/)")
    elif not isinstance(queue, (AmqpQueue, LocalQueue)):
        raise errors.ConfigError(f"queue: {type(queue).__name__} is not valid; expected an amqp:// URL or a queue")
    if coordination is None:
        raise errors.ConfigError("coordination: required with queue=; expected a Redis URL (redis://host:6379/0) "
                                 "for the partition claims and the workers' heartbeats")
    if isinstance(coordination, str):
        if not coordination.startswith("redis://"):
            raise errors.ConfigError("coordination: a URL that is not redis:// is not valid; expected "
                                     "redis://[:password@]host:6379/0")
    elif not isinstance(coordination, Coordination):
        raise errors.ConfigError(f"coordination: {type(coordination).__name__} is not valid; expected a "
                                 "redis:// URL or an isthmus.Coordination")
    if not hasattr(source, "_read_page"):
        raise errors.ConfigError(f"queue: page tasks read a Stream one page at a time; {type(source).__name__} "
                                 "is not a Stream")
    return queue, coordination


class Pipeline:
    """``source`` -> ``map`` -> ``sink``, with state (checkpoints, dead letters, runs) in ``state``
    (a file path or a ``StateStore``; default ``<name>.isthmus.db`` in the working directory).

    ``source``: a ``Stream``, or any object with the methods of ``isthmus.Source`` (``open``,
    ``read_batch``, ``ack``). ``name`` (default: the source's ``name``, else its class's) files
    the checkpoint; a checkpoint saved under it by a source with another ``identity`` refuses
    the run with ``StateError``, unless ``name`` is given explicitly (the checkpoint then moves
    to this source).

    ``map`` is ``record -> record or None`` (None drops it), or with ``batch=True`` ``list -> list``,
    or an ``isthmus.FieldMap`` (declared fields, run in the core).
    An exception in it dead-letters the record with its traceback and the run goes on.

    ``sink``: an ``HttpSink``, ``JsonlSink``, ``SqliteSink``, ``CallableSink`` or a ``Sink``
    subclass. ``state``: the SQLite file of checkpoints, dead letters and runs; ``name`` the
    pipeline's name in it. A checkpoint is written every ``checkpoint_every`` records or
    ``checkpoint_seconds``, whichever comes first, right after the sink's ``flush``.
    ``stop_after_failures``: when that many
    records have failed (mapping or sink) before any was written, the run stops with a
    ``PipelineError`` naming the most common reason instead of dead-lettering them all (0: never).
    """

    def __init__(self, source: Any, *, sink: Sink, map: Optional[Callable[..., Any]] = None,
                 batch: bool = False, state: Union[str, StateStore, None] = None,
                 name: Optional[str] = None, checkpoint_every: int = 10_000,
                 checkpoint_seconds: float = 2.0, stop_after_failures: int = 1000,
                 queue: Any = None, coordination: Any = None, max_deliveries: int = 5):
        missing = missing_methods(source)
        if missing:
            raise errors.ConfigError(
                f"source: {type(source).__name__} {source!r:.80} is not an isthmus.Source: it has no "
                f"{', '.join(m + '()' for m in missing)}; a source has open(state), "
                "read_batch(max_records, timeout) and ack(batch) (see isthmus.Source)")
        if not isinstance(sink, Sink):
            raise errors.ConfigError(f"sink: {sink!r} is not an isthmus sink (HttpSink, JsonlSink, ...)")
        if map is not None and not callable(map):
            raise errors.ConfigError(f"map: {map!r} is not callable")
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise errors.ConfigError(f"checkpoint_every: {checkpoint_every!r} is not valid; expected an int >= 1")
        self.source, self.sink, self.map, self.batch = source, sink, map, batch
        self.name = name or getattr(source, "name", None) or type(source).__name__
        if not isinstance(self.name, str):
            raise errors.ConfigError(f"name: {self.name!r} is not valid; expected text")
        # Named by the user, the pipeline says which checkpoint is its own, whatever source
        # saved it; otherwise a checkpoint saved by another source refuses the run.
        self._named = name is not None
        if state is None:
            state = StateStore.default_path(self.name)
        self.store = state if isinstance(state, StateStore) else StateStore(state)
        self.checkpoint_every = checkpoint_every
        if isinstance(checkpoint_seconds, bool) or not isinstance(checkpoint_seconds, (int, float)) \
                or not checkpoint_seconds > 0:
            raise errors.ConfigError(f"checkpoint_seconds: {checkpoint_seconds!r} is not valid; expected seconds > 0")
        if isinstance(stop_after_failures, bool) or not isinstance(stop_after_failures, int) or stop_after_failures < 0:
            raise errors.ConfigError(f"stop_after_failures: {stop_after_failures!r} is not valid; "
                                     "expected an int >= 0 (0 turns the check off)")
        self.checkpoint_seconds, self.stop_after_failures = float(checkpoint_seconds), stop_after_failures
        self._queue_spec, self._coordination_spec = _cluster_spec(queue, coordination, source)
        if isinstance(max_deliveries, bool) or not isinstance(max_deliveries, int) or max_deliveries < 1:
            raise errors.ConfigError(f"max_deliveries: {max_deliveries!r} is not valid; expected an int >= 1")
        self.max_deliveries = max_deliveries
        self._connected: Optional[Tuple[Any, Any]] = None

    # -- on workers --------------------------------------------------------------------------
    @property
    def queue_name(self) -> str:
        """The broker queue this pipeline's page tasks go to."""
        return "isthmus." + "".join(c if c.isalnum() or c in "._-" else "_" for c in self.name)

    def _cluster(self) -> Tuple[Any, Any]:
        """(the task queue, the Coordination), connected on first use: a bad URL or refused
        credentials raise here, naming the URL with its password masked."""
        if self._queue_spec is None:
            raise errors.ConfigError(f"Pipeline {self.name}: queue= is not set; page tasks need a broker "
                                     "(queue='amqp://...') and coordination='redis://...'")
        if self._connected is None:
            from isthmus.coordination import Coordination

            q, c = self._queue_spec, self._coordination_spec
            coord = c if isinstance(c, Coordination) else Coordination(c)
            self._connected = (self._open_queue() or q, coord)
        return self._connected

    def _open_queue(self, **options: Any) -> Any:
        """Another connection to the task queue (None when queue= was given as an object);
        ``options`` go to ``AmqpQueue`` (a worker's ``prefetch=1, consume=True``)."""
        if not isinstance(self._queue_spec, str):
            return None
        from isthmus.queue import AmqpQueue

        return AmqpQueue(self._queue_spec, self.queue_name, max_deliveries=self.max_deliveries, **options)

    def submit(self) -> int:
        """Starts a run on workers: one first-page task per partition of the source, published
        with confirm. Returns the run id (``runs()`` shows it; ``isthmus status`` its progress).

        When a failure that affects every record halted the pipeline's last run, that run is
        resumed instead: the halt is cleared, the run is marked running again and every chain
        still going gets its task at its checkpoint (published again, so a purged queue loses
        nothing; the copies still in the queue are dropped as stale)."""
        from isthmus.worker import first_tasks, halt_checkpoint, halt_of, resume_tasks

        queue, _ = self._cluster()
        halt = halt_of(self)
        if halt is not None:
            run_id, tasks = resume_tasks(self, halt)
            if tasks:
                queue.put(tasks)
            self.store.commit(halt_checkpoint(self.name), run_id, None)
            self.store.finish_run(run_id, "running", {}, None)
            log.info("pipeline %s: run %d resumed after its halt (%s): %d chain(s) going", self.name, run_id,
                     halt["error"], len(tasks))
            return run_id
        run_id = self.store.begin_run(self.name)
        queue.put(first_tasks(self, run_id))
        log.info("pipeline %s: run %d submitted to %s", self.name, run_id, self.queue_name)
        return run_id

    def progress(self, run_id: int) -> Dict[str, Any]:
        """A submitted run's progress across every worker: partitions done, dead (stopped at a
        dead-lettered page) and going, pages, stale tasks dropped, and the summed counts."""
        from isthmus.worker import run_progress

        return run_progress(self, run_id)

    def _run_on_workers(self, progress: bool) -> Run:
        """``run()`` with queue=: submits, then works in this process until the run settles."""
        from isthmus.worker import Worker, run_progress

        worker = Worker(self, concurrency=getattr(self.source, "concurrency", 1))
        run_id = self.submit()
        run = Run(self, run_id)
        bar = _Progress(progress, self.name)
        failure: List[BaseException] = []

        def work() -> None:
            try:
                worker.run(run_id=run_id)
            except BaseException as exc:
                failure.append(exc)
        # The workers' threads work; this one draws the bar from the run's checkpoints.
        thread = threading.Thread(target=work, name="isthmus-run-on-workers", daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                thread.join(0.25)
                if progress:
                    bar.update(int(run_progress(self, run_id)["counts"]["read"]), None)
        except KeyboardInterrupt:
            worker.stop()
            thread.join()
            raise
        if failure:
            raise failure[0]
        done = run_progress(self, run_id)
        run.counts.update(done["counts"])
        run.duration = time.time() - run.started
        run.status = "completed" if done["dead"] == 0 else "failed"
        if done["dead"]:
            run.error = f"{done['dead']} partition(s) stopped at a dead-lettered page"
        bar.update(int(run.counts["read"]), None, final=True, completed=run.status == "completed")
        run.reconcile()
        return run

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
                out_keys = self._keys(result)
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

    def _keys(self, records: List[Any]) -> List[str]:
        """Keys for records a batch map returned: the source's ``keys`` when it has one."""
        keys = getattr(self.source, "keys", None)
        if callable(keys):
            return list(keys(records))
        return record_keys(records)

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
        result = self._at_sink(self.sink.write, mapped, keys)
        if result:
            accepted -= self._file_rejections(result, "write", mapped, keys, dead)
        if settle:
            accepted -= self._file_rejections(self._at_sink(self.sink.flush), "flush", None, None, dead)
        return accepted

    def _at_sink(self, call: Callable[..., Any], *args: Any) -> Any:
        """Calls the sink. An isthmus error a direct call would raise (a refused connect, a
        token the credential could not get) stops the run as its PipelineError, naming the sink."""
        try:
            return call(*args)
        except errors.IsthmusError as exc:
            wrapped = errors.in_run(type(self.sink).__name__, exc)
            if wrapped is exc:
                raise
            raise wrapped from exc

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

    # -- the fused path ----------------------------------------------------------------------
    def _fuse(self, src: Any) -> bool:
        """Whether this run's records go from the source's parser to the sink in the core."""
        fuse = getattr(src, "_fuse", None)
        if not callable(fuse):
            return False
        fusable = type(self.sink) in _FUSED_SINKS and (self.map is None or isinstance(self.map, FieldMap))
        mapper = self.map._core if isinstance(self.map, FieldMap) else None
        return bool(fuse(mapper, enabled=fusable))

    def _write_mapped(self, mapped: Any, dead: List[Dict[str, Any]]) -> int:
        """A batch the core mapped: its failures become dead letters (as ``_apply_map`` files
        them), the rest goes to the sink's core writer. Returns how many the sink accepted."""
        for _, why, text, key in mapped.failures:
            record = json.loads(text)
            dead.append({"record_key": key if key is not None else self._keys([record])[0], "stage": "map",
                         "record": record, "error": why, "traceback": None})
        for i, text in mapped.keyless:
            mapped.set_key(i, self._keys([json.loads(text)])[0])
        result = self.sink._write_batch(mapped)  # type: ignore[attr-defined]
        return len(mapped) - self._file_rejections(result, "write", None, None, dead)

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
        if self._queue_spec is not None:
            return self._run_on_workers(progress)
        src = self.source
        label = f"{type(src).__name__} {self.name!r}"
        identity = getattr(src, "identity", None) or f"{type(src).__module__}.{type(src).__qualname__}"
        state = self.store.claim(self.name, identity, adopt=self._named)
        # Where the checkpoint stands, kept for when the run stops without moving it.
        committed = StateStore.token(state)
        self._fuse(src)
        self._open_source(src, label, committed)
        try:
            newer = _Newer(self.store.open_dead_letter_keys(self.name))
            run = Run(self, self.store.begin_run(self.name))
        except BaseException:
            self._close_source(src)
            raise
        source_counters = getattr(src, "counters", None)
        counters = Counters()
        self.sink.open(counters)

        def waited() -> float:
            """Seconds calls were held back so far: by the clients' limiters, and backing off."""
            return counters.wait_seconds + float(getattr(source_counters, "wait_seconds", 0.0) or 0.0)
        bar = _Progress(progress, self.name)
        acks = Acks()
        # Batches handed to the sink since the last checkpoint, acknowledged at the next one.
        unacked: collections.deque[Batch] = collections.deque()
        latest: Tuple[int, Optional[Dict[str, Any]]] = (-1, committed)
        pending_dead: List[Dict[str, Any]] = []
        since_commit = 0
        last_commit = time.monotonic()
        # Until a record is written, failures are watched for a cause that affects every record.
        watching = self.stop_after_failures > 0
        early_errors: List[str] = []
        tripped = False
        # False while the sink is being called: if it raises, what it holds is unknown and
        # nothing more is flushed or checkpointed.
        sink_ok = True
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
                raise all_failed_error(self.name, int(c["dead_lettered"]), early_errors)

        def commit(final: bool = False) -> None:
            nonlocal pending_dead, since_commit, last_commit, committed, sink_ok, latest
            began = time.perf_counter()
            sink_ok = False
            flushed = self._at_sink(self.sink.flush)
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
            # The sink has settled every record of these batches: they are acknowledged. A
            # failing ack stops the run after checkpointing the batches acknowledged before it.
            failure: Optional[BaseException] = None
            while unacked and failure is None:
                failure = self._ack(src, label, acks, unacked[0])
                if failure is None:
                    unacked.popleft()
            moved = acks.advance()
            if moved is not None:
                latest = moved
            # While every record so far failed, the checkpoint waits: those records are read
            # again once the cause is fixed.
            at = committed if watching and not final else latest[1]
            self.store.commit(self.name, run.id, at, pending_dead, incremental=None, superseded=newer.take())
            committed = at
            pending_dead, since_commit, last_commit = [], 0, time.monotonic()
            # Cycles made since the last checkpoint (a traceback kept for a dead letter, a
            # mapping's own) are collected here, young objects only: a few thousand at most.
            gc.collect(1)
            stage["checkpoint"] += time.perf_counter() - began
            if failure is not None:
                raise failure

        # Python's automatic collector would start a collection every few hundred new records
        # and now and then walk the whole heap (a fifth of the run's CPU in the benchmark);
        # records hold no cycles, so it is paused for the run and young objects are collected
        # at each checkpoint instead.
        collector_was_on = gc.isenabled()
        gc.disable()
        try:
            while True:
                began = time.perf_counter()
                batch = self._read(src, label, acks, self.checkpoint_seconds)
                stage["source"] += time.perf_counter() - began
                if batch is None:
                    break
                unacked.append(batch)
                records, rkeys = batch.records, batch.keys
                read = len(records) + batch.skipped
                run.counts["skipped"] += batch.skipped
                dead: List[Dict[str, Any]] = []
                written = dropped = 0
                if batch._mapped is not None:
                    # Mapped in the core: the records reach the sink's writer as JSON text.
                    fused = batch._mapped
                    read = fused.read
                    began = time.perf_counter()
                    sink_ok = False
                    written = self._write_mapped(fused, dead)
                    sink_ok = True
                    stage["sink"] += time.perf_counter() - began
                    # Keys become Python objects only while a dead letter is open to supersede.
                    newer.delivered(fused.keys() if newer.open or dead else (), dead)
                elif records:
                    began = time.perf_counter()
                    mapped, mkeys, dropped = self._apply_map(records, rkeys, run, dead)
                    mapped_at = time.perf_counter()
                    sink_ok = False
                    written = self._sink(mapped, mkeys, dead)
                    sink_ok = True
                    newer.delivered(mkeys, dead)
                    stage["map"] += mapped_at - began
                    stage["sink"] += time.perf_counter() - mapped_at
                if records or batch._mapped is not None:
                    run.counts["written"] += written
                    run.counts["dropped"] += dropped
                    run.counts["dead_lettered"] += len(dead)
                    pending_dead.extend(dead)
                    if watching:
                        watch(dead)
                run.counts["read"] += read
                since_commit += read
                # The sink has the records now (written, kept as its own JSON text, or filed as
                # dead letters): until its ack the batch keeps only its keys and token, so
                # memory follows the pages in flight, not the records since the last checkpoint.
                batch.records, batch._mapped = [], None
                if since_commit >= self.checkpoint_every or time.monotonic() - last_commit > self.checkpoint_seconds:
                    commit()
                bar.update(int(run.counts["read"]), getattr(src, "total", None), waited=waited)
            commit(final=True)
            run.status = "completed"
        except BaseException as exc:
            run.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            run.error = f"{type(exc).__name__}: {exc}"
            try:
                if tripped:
                    # The failed records are dead letters; the checkpoint stays before them.
                    self.store.commit(self.name, run.id, committed, pending_dead, incremental=None)
                elif sink_ok:
                    # Whatever the sink accepted stays accepted: checkpoint it before giving up.
                    commit()
            except Exception:
                pass
            raise
        finally:
            self._close_source(src)
            if collector_was_on:
                gc.enable()
            run.duration = time.monotonic() - started
            # What the sink's counters and the source's (when it keeps any) counted.
            for k in NETWORK_COUNTS:
                run.counts[k] = getattr(counters, k) + (getattr(source_counters, k, 0) or 0)
            # Time calls spent held back: by the clients' limiters, and backing off to retry.
            run.counts["wait_seconds"] = round(waited(), 3)
            self.sink.close()
            bar.update(int(run.counts["read"]), getattr(src, "total", None), final=True, waited=waited,
                       completed=run.status == "completed")
            self.store.finish_run(run.id, run.status, run.summary(), run.error)
        run.reconcile()
        return run

    # -- the source --------------------------------------------------------------------------
    def _open_source(self, src: Any, label: str, token: Optional[Dict[str, Any]]) -> None:
        try:
            src.open(token)
        except errors.StateError as exc:
            # The source refuses the token its last run checkpointed: the file is not to be trusted.
            raise self.store.damaged_checkpoint(self.name, str(exc)) from exc
        except errors.PipelineError:
            raise
        except Exception as exc:
            raise errors.pipeline_error(f"source {label}: open(state) raised {type(exc).__name__}: {exc}",
                                        exc) from exc

    def _read(self, src: Any, label: str, acks: Acks, timeout: float) -> Optional[Batch]:
        """The source's next batch, checked; None at its end."""
        n = acks.next_number
        try:
            batch = src.read_batch(_MAX_BATCH, timeout)
        except errors.PipelineError:
            raise  # a Stream's own: it names the stream and the page
        except Exception as exc:
            raise errors.pipeline_error(f"source {label}, batch {n}: read_batch raised "
                                        f"{type(exc).__name__}: {exc}", exc) from exc
        if batch is None:
            return None
        problem = None
        if not isinstance(batch, Batch):
            problem = (f"read_batch returned {type(batch).__name__} {batch!r:.80} for batch {n}; "
                       "expected an isthmus.Batch(records, keys, token) or None")
        elif batch._number is not None:
            problem = (f"read_batch returned batch {batch._number} again as batch {n}; a batch is read, "
                       "and acknowledged, once")
        elif not isinstance(batch.records, list) or not isinstance(batch.keys, list) \
                or len(batch.keys) != len(batch.records):
            problem = f"batch {n} holds {len(batch.records)} records but {len(batch.keys)} keys"
        elif not all(type(k) is str for k in batch.keys):
            bad = next(k for k in batch.keys if type(k) is not str)
            problem = f"batch {n} has a key that is {type(bad).__name__} {bad!r:.40}, expected text"
        elif batch.token is not None and not isinstance(batch.token, dict):
            problem = f"batch {n} has a token that is {type(batch.token).__name__}, expected a dict or None"
        else:
            # Checked as it arrives, so the error names the batch, not a later checkpoint.
            try:
                json.dumps(batch.token, allow_nan=False)
            except (TypeError, ValueError) as exc:
                problem = f"the token of batch {n} is not JSON ({exc}); a token is a dict of JSON values"
        if problem:
            raise errors.pipeline_error(f"source {label}: {problem}", errors.ConfigError(problem))
        checked: Batch = batch
        checked._number = acks.read(checked.token)
        return checked

    @staticmethod
    def _ack(src: Any, label: str, acks: Acks, batch: Batch) -> Optional[BaseException]:
        """Acknowledges one batch to the source and the watermark; the error instead, if any."""
        n = batch._number
        assert n is not None
        try:
            src.ack(batch)
        except Exception as exc:
            return errors.pipeline_error(f"source {label}, batch {n}: ack raised {type(exc).__name__}: {exc}", exc)
        try:
            acks.ack(n)
        except errors.PipelineError as exc:
            return errors.PipelineError(f"source {label}: {exc}")
        return None

    @staticmethod
    def _close_source(src: Any) -> None:
        close = getattr(src, "close", None)
        if callable(close):
            try:
                close()
            except Exception:
                log.warning("source %s: close() raised", type(src).__name__, exc_info=True)

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
        from isthmus.worker import TASK_STAGE, replay_tasks

        pages = [r for r in rows if r["stage"] == TASK_STAGE]
        if pages:
            # Pages workers could not fetch: their tasks go to the queue again, and this
            # process works the runs they belong to until those settle.
            result = replay_tasks(self, pages)
            rows = [r for r in rows if r["stage"] != TASK_STAGE]
            if not rows:
                return {**result, "skipped": skipped}
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
        out = {"replayed": len(rows), "delivered": len(delivered), "failed": failed, "skipped": skipped}
        if pages:
            out = {k: out[k] + result.get(k, 0) for k in out}
        return out

    def runs(self) -> Any:
        """This pipeline's run history as a DataFrame: one row per run, start and finish as UTC
        datetimes (finish empty while running, or when the process was killed), and its counts."""
        import pandas as pd
        rows = self.store.runs(self.name)
        flat = [{**{k: v for k, v in r.items() if k != "counts"}, **{k: r["counts"].get(k) for k in COUNT_NAMES},
                 **{f"{k}_s": (r["counts"].get("stage_seconds") or {}).get(k) for k in _STAGES}}
                for r in rows]
        df = pd.DataFrame(flat, columns=["id", "pipeline", "started_at", "finished_at", "status", "error",
                                         *COUNT_NAMES, *(f"{k}_s" for k in _STAGES)])
        for c in ("started_at", "finished_at"):
            df[c] = pd.to_datetime(df[c], unit="s", utc=True)
        return df
