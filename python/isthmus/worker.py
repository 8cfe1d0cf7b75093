"""Workers: one pipeline definition run as page tasks on many processes.

A pipeline given ``queue=`` (a RabbitMQ URL) and ``coordination=`` (a Redis URL) can be
submitted as a run of page tasks and worked by any number of ``Worker`` processes::

    pipeline = ist.Pipeline(stream, sink=sink, state="contacts.db",
                            queue="amqp://guest:guest@10.0.0.4/", coordination="redis://10.0.0.5/0")
    run_id = pipeline.submit()                    # one first-page task per partition
    ist.Worker(pipeline, concurrency=4).run()     # on each machine: `isthmus worker pipeline.yaml`

A task is one page of one partition: JSON with the run id, the stream's identity, the
partition, the step to fetch, its sequence number in the partition's chain, the incremental
value and the counts of the chain so far. A worker takes a task, claims its partition in
Redis (a lease, renewed while it works), drops it when the partition's checkpoint is already
at or past it (a duplicate left by a crash), fetches that one page through the core's reader,
maps it, writes it to the sink and flushes, commits the partition's checkpoint with the
page's dead letters, releases the claim, publishes the next page's task (confirmed) and acks.
docs/scaleout.md says what a kill at each step re-runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional, Tuple

from isthmus import errors
from isthmus._transport import NETWORK_COUNTS, Counters
from isthmus.incremental import _IncrementalTracker

__all__ = ["Worker"]

log = logging.getLogger("isthmus")

TASK_VERSION = 1
# Record counts and network counts a chain carries from page to page.
CHAIN_COUNTS = ("read", "written", "dead_lettered", "dropped", "skipped") + NETWORK_COUNTS
# The stage a page that kept failing is filed under as a dead letter: its record is the task.
TASK_STAGE = "source"


def _zero() -> Dict[str, float]:
    return {k: 0 for k in CHAIN_COUNTS}


def partition_checkpoint(pipeline_name: str, partition_key: str) -> str:
    """The name a partition's chain checkpoints under, in the pipeline's state file."""
    return f"{pipeline_name}/partition/{partition_key}"


def halt_checkpoint(pipeline_name: str) -> str:
    """The name a pipeline's halt is kept under in its state file: set when a failure that
    affects every record stopped its run on the workers, cleared when the run is resumed."""
    return f"{pipeline_name}/halt"


def halt_of(pipeline: Any) -> Optional[Dict[str, Any]]:
    """The pipeline's halt (``run``, ``error``, ``partition``, ``seq``, ``worker``, ``at``), or None."""
    halt = pipeline.store.load(halt_checkpoint(pipeline.name))["position"]
    return halt if isinstance(halt, dict) else None


def _run_incremental(pipeline: Any) -> Optional[Dict[str, Any]]:
    """What every page of a run of an incremental stream filters on: from where the last run
    left the cursor, leaving out what that run already delivered at the boundary."""
    src = pipeline.source
    if getattr(src, "incremental", None) is None:
        return None
    token = pipeline.store.token(pipeline.store.load(pipeline.name)) or {}
    start = token.get("incremental")
    return {"value": src.incremental.start_value(start), "start": start}


def first_tasks(pipeline: Any, run_id: int) -> List[str]:
    """The first-page task of every partition of a new run, as JSON."""
    incremental = _run_incremental(pipeline)
    return [task_json(pipeline, run_id, i, 0, None, incremental, _zero())
            for i in range(len(pipeline.source.partitions))]


def resume_tasks(pipeline: Any, halt: Dict[str, Any]) -> Tuple[int, List[str]]:
    """A halted run going again: (its id, the task of every chain still going, at its
    checkpoint). The run's tasks left in the queue become duplicates the checkpoints drop."""
    run_id = int(halt["run"])
    incremental = _run_incremental(pipeline)
    tasks = []
    for i, key in enumerate(pipeline.source.partition_keys):
        token = pipeline.store.load(partition_checkpoint(pipeline.name, key))["position"] or {}
        if token.get("run") != run_id:
            tasks.append(task_json(pipeline, run_id, i, 0, None, incremental, _zero()))
        elif not (token.get("done") or token.get("dead")):
            tasks.append(task_json(pipeline, run_id, i, token["seq"] + 1, token["next"], incremental,
                                   _chain_counts(token)))
    return run_id, tasks


def _chain_counts(token: Dict[str, Any]) -> Dict[str, float]:
    """The chain's counts so far, as its checkpoint holds them."""
    return {k: token["counts"].get(k, 0) for k in CHAIN_COUNTS}


def task_json(pipeline: Any, run_id: int, partition: int, seq: int, step: Any, incremental: Any,
              counts: Dict[str, float]) -> str:
    src = pipeline.source
    return json.dumps({"v": TASK_VERSION, "pipeline": pipeline.name, "identity": src.identity, "run": run_id,
                       "partition": partition, "key": src.partition_keys[partition], "seq": seq, "step": step,
                       "incremental": incremental, "counts": counts}, sort_keys=True)


def run_progress(pipeline: Any, run_id: int) -> Dict[str, Any]:
    """A run's progress read from the partitions' checkpoints: partitions done, dead (a page
    dead-lettered, the chain stopped there), still going, and the counts summed across every
    worker."""
    counts = _zero()
    done = dead = 0
    pages = stale = 0
    src = pipeline.source
    for key in src.partition_keys:
        token = pipeline.store.load(partition_checkpoint(pipeline.name, key))["position"] or {}
        if token.get("run") != run_id:
            continue
        for k in CHAIN_COUNTS:
            counts[k] += token.get("counts", {}).get(k, 0)
        pages += token.get("seq", -1) + 1
        stale += token.get("stale", 0)
        done += bool(token.get("done"))
        dead += bool(token.get("dead"))
    total = len(src.partition_keys)
    return {"run_id": run_id, "partitions": total, "done": done, "dead": dead, "going": total - done - dead,
            "pages": pages, "stale_tasks": stale, "counts": counts}


# An idle thread's pauses between looks at the queue: from _FIRST_PAUSE doubling up to
# idle_wait, or up to _HOT_PAUSE within _HOT_SECONDS of its last task.
_FIRST_PAUSE = 0.005
_HOT_PAUSE = 0.025
_HOT_SECONDS = 2.0
# The pauses between tries at a claim its predecessor still holds (None: give up).
_CLAIM_WAITS: Tuple[Optional[float], ...] = (0.001,) * 20 + tuple(0.002 * 2 ** i for i in range(8)) + (None,)


class _Stop(Exception):
    """The partition's claim was lost to another worker: this task stops before it commits."""


class _Halt(Exception):
    """A failure that affects every record: the run stops on every worker. ``dead``: the page's
    dead letters, filed with the checkpoint left where it was."""

    def __init__(self, cause: BaseException, dead: Optional[List[Dict[str, Any]]] = None):
        super().__init__(str(cause))
        self.cause, self.dead = cause, dead or []


class Worker:
    """Takes page tasks of ``pipeline`` from its queue and works them, ``concurrency`` at once.

    ``lease``: seconds a partition claim (and the worker's heartbeat) lives without renewal;
    renewed every third of it. ``visibility``: seconds a task may take before the queue hands
    it to another worker. ``idle_wait``: the longest pause between looks at an empty queue (the
    pause doubles from 5 ms up to it, so an idle worker never spins; within 2 s of its last task
    a thread looks at least every 25 ms, since a chain's next task is due soon).

    A failure that affects every record (the sink or the API refusing the request itself: 401,
    403, 404 ...; a refused credential; a sink still failing on a task's last delivery; the
    first ``stop_after_failures`` records all failing) halts the pipeline: the worker that met
    it files the halt in the state file and marks the run failed, and every worker stops taking
    tasks; the run's tasks stay in the queue and nothing past the failing page is checkpointed.
    ``run(run_id=)`` and ``run(until_idle=)`` then raise the ``PipelineError``; a worker
    running until stopped (``isthmus worker``) waits, looking every ``idle_wait`` seconds, until
    ``Pipeline.submit()`` (``isthmus submit``) resumes the run.
    """

    def __init__(self, pipeline: Any, *, concurrency: int = 1, lease: float = 10.0, visibility: float = 120.0,
                 idle_wait: float = 0.25, name: Optional[str] = None):
        from isthmus.pipeline import Pipeline

        if not isinstance(pipeline, Pipeline):
            raise errors.ConfigError(f"pipeline: {pipeline!r} is not an isthmus.Pipeline")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise errors.ConfigError(f"concurrency: {concurrency!r} is not valid; expected an int >= 1")
        for field, value in (("lease", lease), ("visibility", visibility), ("idle_wait", idle_wait)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise errors.ConfigError(f"{field}: {value!r} is not valid; expected seconds > 0")
        self.pipeline, self.concurrency = pipeline, concurrency
        self.lease, self.visibility, self.idle_wait = float(lease), float(visibility), float(idle_wait)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.queue, self.coordination = pipeline._cluster()
        # Counts, and the seconds tasks spent in all (task_s), fetching (fetch_s), in the mapping
        # and the sink (sink_s), publishing and acking (queue_s), claiming (redis_s) and reading
        # and committing checkpoints (state_s); bench/scaleout.py reports them per page.
        self.stats: Dict[str, float] = {"tasks": 0, "pages": 0, "stale": 0, "busy": 0, "parked": 0,
                                        "failed": 0, "dead_lettered": 0, "empty_looks": 0,
                                        "task_s": 0.0, "fetch_s": 0.0, "sink_s": 0.0, "queue_s": 0.0,
                                        "redis_s": 0.0, "state_s": 0.0}
        self._lock = threading.Lock()
        self._sink_lock = threading.Lock()
        # Held while a claim is renewed or released: the keeper thread and the task's own
        # thread never drive one claim at once.
        self._claim_lock = threading.Lock()
        self._claims: Dict[str, Any] = {}
        self._in_flight: Dict[int, str] = {}
        self._stop = threading.Event()
        self._sink_counters = Counters()
        self._fused = False
        self._local = threading.local()
        self._opened: List[Any] = []
        # The pipeline's halt as last read from the state file (at most every 0.5 s), and the
        # failure behind it when this worker met it.
        self._halt: Optional[Dict[str, Any]] = None
        self._halt_read = 0.0
        self._halt_cause: Optional[BaseException] = None
        self._halt_logged = False
        # Per run: the open dead letters of the pipeline that a page of it delivered a newer
        # version of (the checkpoint resolves them as superseded).
        self._newer: Dict[int, Any] = {}

    def __repr__(self) -> str:
        return f"<isthmus.Worker {self.name} of {self.pipeline.name!r} concurrency={self.concurrency}>"

    def _queue(self) -> Any:
        """This thread's connection to the broker. One per thread: a confirmed publish holds
        its connection until the broker answers, and the other threads' tasks would queue
        behind it (the broker also hands a lease's ack only to the connection that leased).
        It consumes with a window of one: the broker pushes a task the moment the thread has
        none, instead of the thread asking every few milliseconds."""
        q = getattr(self._local, "queue", None)
        if q is None:
            q = self.pipeline._open_queue(prefetch=1, consume=True) or self.queue
            self._local.queue = q
            if q is not self.queue:
                with self._lock:
                    self._opened.append(q)
        return q

    def _pause_queue(self, q: Any = None) -> None:
        """A halted thread holds no task: its consumer gives back what the broker pushed."""
        q = q or getattr(self._local, "queue", None)
        if q is not None and getattr(q, "consume", False):
            try:
                q.pause()
            except errors.IsthmusError as exc:
                log.warning("worker %s: queue: %s", self.name, exc)

    def stop(self) -> None:
        """Asks the workers' threads to stop after the task each is on."""
        self._stop_asked = True
        self._stop.set()

    # -- the loop ----------------------------------------------------------------------------
    def run(self, until_idle: Optional[float] = None, run_id: Optional[int] = None) -> Dict[str, float]:
        """Works tasks until ``stop()`` (or SIGTERM in ``isthmus worker``); with ``until_idle``,
        until the queue has had no task for that many seconds; with ``run_id``, until that run
        is settled (every partition done or dead-lettered). Returns this worker's counts."""
        p = self.pipeline
        self._fused = p._fuse(p.source)
        p.sink.open(self._sink_counters)
        self._stop.clear()
        self._stop_asked = False
        self._halt_logged = False
        self._idle_since = time.monotonic()
        threads = [threading.Thread(target=self._loop, args=(until_idle, run_id), name=f"isthmus-worker-{i}",
                                    daemon=True) for i in range(self.concurrency)]
        keeper = threading.Thread(target=self._keep_alive, name="isthmus-worker-leases", daemon=True)
        keeper.start()
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        except KeyboardInterrupt:
            self._stop.set()
            for t in threads:
                t.join()
            raise
        finally:
            self._stop.set()
            keeper.join()
            for q in self._opened:
                # What a slot's consumer holds unleased goes back uncounted (a close would
                # count it as a delivery).
                self._pause_queue(q)
                q.close()
            self._opened.clear()
            p.sink.close()
            self._heartbeat(gone=True)
        halt = self._halted(fresh=True)
        if halt is not None and (until_idle is not None or run_id is not None) and not self._stop_asked:
            raise self._halt_error(halt)
        return dict(self.stats)

    def _count(self, what: str, n: float = 1) -> None:
        with self._lock:
            self.stats[what] += n

    @contextlib.contextmanager
    def _timed(self, what: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self._count(what, time.perf_counter() - began)

    def _loop(self, until_idle: Optional[float], run_id: Optional[int]) -> None:
        pause = _FIRST_PAUSE
        worked = float("-inf")  # when this thread last finished a task
        while not self._stop.is_set():
            halt = self._halted()
            if halt is not None:
                self._pause_queue()
                if until_idle is not None or run_id is not None:
                    self._stop.set()
                    return
                self._log_halt(halt)
                self._stop.wait(self.idle_wait)
                continue
            try:
                q = self._queue()
                waits = bool(getattr(q, "consume", False))
                # A consuming queue waits for the broker's push; another one is asked again
                # after a pause.
                lease = q.lease(1, visibility=self.visibility, wait=self.idle_wait) if waits \
                    else q.lease(1, visibility=self.visibility)
            except errors.IsthmusError as exc:
                # The broker is away: the queue reconnects by itself; wait, do not spin.
                log.warning("worker %s: queue: %s", self.name, exc)
                self._stop.wait(min(pause, self.idle_wait))
                pause = min(pause * 2, self.idle_wait)
                continue
            if not lease:
                self._count("empty_looks")
                if self._finished(until_idle, run_id):
                    self._stop.set()
                    return
                if not waits:
                    self._stop.wait(pause)
                hot = time.monotonic() - worked < _HOT_SECONDS
                pause = min(pause * 2, min(self.idle_wait, _HOT_PAUSE) if hot else self.idle_wait)
                continue
            pause = _FIRST_PAUSE
            for m in lease:
                self._in_flight[threading.get_ident()] = str(m.body)[:200]
                try:
                    self._work(m)
                except Exception:
                    # Redis or the state file failed before the page was worked: the task goes
                    # back (a lease left to expire would hold its chain up for `visibility`).
                    self._count("failed")
                    log.exception("worker %s: task failed", self.name)
                    try:
                        self._queue().nack(m, delay=1)
                    except errors.IsthmusError:
                        pass  # the broker is away: it hands the task out again itself
                finally:
                    self._in_flight.pop(threading.get_ident(), None)
                    worked = time.monotonic()
                    with self._lock:
                        self._idle_since = worked
            # Working for one run (Pipeline.run): stop once it is settled, whatever else waits.
            if run_id is not None and self._finished(None, run_id):
                self._stop.set()
                return

    # -- halts -------------------------------------------------------------------------------
    def _halted(self, fresh: bool = False) -> Optional[Dict[str, Any]]:
        """The pipeline's halt, read from the state file at most every 0.5 s (or now)."""
        now = time.monotonic()
        with self._lock:
            if not fresh and now - self._halt_read < 0.5:
                return self._halt
            self._halt_read = now
        try:
            halt = halt_of(self.pipeline)
        except errors.IsthmusError as exc:
            log.warning("worker %s: reading the halt: %s", self.name, exc)
            return self._halt
        with self._lock:
            self._halt = halt
            if halt is None:
                self._halt_logged = False
            return halt

    def _log_halt(self, halt: Dict[str, Any]) -> None:
        with self._lock:
            if self._halt_logged:
                return
            self._halt_logged = True
        log.error("worker %s: pipeline %s is halted: %s; waiting for `isthmus submit` to resume run %s",
                  self.name, self.pipeline.name, halt["error"], halt["run"])

    def _halt_error(self, halt: Dict[str, Any]) -> errors.PipelineError:
        message = (f"Pipeline {self.pipeline.name}: run {halt['run']} stopped on the workers at partition "
                   f"{halt['partition']} page {halt['seq']}: {halt['error']}. Nothing past the failing page was "
                   "checkpointed and the run's tasks wait in the queue; fix the cause, then Pipeline.submit() "
                   "(`isthmus submit`) resumes the run.")
        cause = self._halt_cause
        if cause is None:
            return errors.PipelineError(message)
        return errors.pipeline_error(message, cause.cause if isinstance(cause, _Halt) else cause)

    def _halt_run(self, message: Any, task: Dict[str, Any], cp_name: str, token: Dict[str, Any],
                  failure: _Halt) -> None:
        """Halts the pipeline on a failure that affects every record: files the halt and the
        page's dead letters (the checkpoint stays), marks the run failed and puts the task back
        as it was (a fresh copy, so the halt does not count as one of its deliveries)."""
        p = self.pipeline
        exc = failure.cause
        error = f"{type(exc).__name__}: {exc}"
        halt = {"run": task["run"], "error": error, "partition": task["key"], "seq": task["seq"],
                "http_status": getattr(exc, "status_code", None), "worker": self.name, "at": time.time()}
        with self._lock:
            first = self._halt is None
            self._halt, self._halt_cause, self._halt_read = halt, failure, time.monotonic()
        log.error("worker %s: partition %s page %s: %s; halting pipeline %s", self.name, task["key"], task["seq"],
                  error, p.name)
        if failure.dead:
            p.store.commit(cp_name, task["run"], token or None, failure.dead, dead_letters_of=p.name)
        if first and halt_of(p) is None:
            p.store.commit(halt_checkpoint(p.name), task["run"], halt)
            rows = [r for r in p.store.runs(p.name) if r["id"] == task["run"]]
            started = rows[0]["started_at"] if rows else time.time()
            p.store.finish_run(task["run"], "failed", run_summary(p, run_progress(p, task["run"]), started),
                               f"halted: {error}")
        self._put_back(message)

    def _put_back(self, message: Any) -> None:
        """Returns a task untouched: a fresh copy is published (confirmed), then the lease acked."""
        self._put(str(message.body))
        self._ack(message)

    def _finished(self, until_idle: Optional[float], run_id: Optional[int]) -> bool:
        if run_id is not None:
            try:
                progress = run_progress(self.pipeline, run_id)
            except errors.IsthmusError:
                return False
            return bool(progress["going"] == 0)
        if until_idle is None:
            return False
        with self._lock:
            idle = time.monotonic() - self._idle_since >= until_idle and not self._in_flight
        if not idle:
            return False
        try:
            s = self.queue.stats()
        except errors.IsthmusError:
            return False
        return bool(s["ready"] == 0 and s["delayed"] == 0)

    # -- leases and heartbeats ---------------------------------------------------------------
    def _keep_alive(self) -> None:
        """Renews the partition claims this worker holds and its heartbeat, every third of the lease."""
        while True:
            self._heartbeat()
            with self._lock:
                claims = list(self._claims.items())
            for name, claim in claims:
                try:
                    with self._claim_lock:
                        renewed = claim.renew()
                    if not renewed:
                        log.warning("worker %s: claim on %s lapsed", self.name, name)
                except errors.IsthmusError as exc:
                    log.warning("worker %s: renewing %s: %s", self.name, name, exc)
            if self._stop.wait(self.lease / 3):
                return

    def _heartbeat(self, gone: bool = False) -> None:
        key = self.coordination._core.key(f"worker:{self.pipeline.name}:{self.name}")
        try:
            if gone:
                self.coordination._command(["DEL", key])
                return
            with self._lock:
                beat = {"name": self.name, "pid": os.getpid(), "host": socket.gethostname(),
                        "concurrency": self.concurrency, "in_flight": len(self._in_flight), **self.stats}
            self.coordination._command(["SET", key, json.dumps(beat), "PX", str(int(self.lease * 1000))])
        except errors.IsthmusError as exc:
            log.warning("worker %s: heartbeat: %s", self.name, exc)

    # -- one task ----------------------------------------------------------------------------
    def _work(self, message: Any) -> None:
        p = self.pipeline
        try:
            task = json.loads(message.body)
            if not isinstance(task, dict) or task.get("v") != TASK_VERSION or task.get("pipeline") != p.name:
                raise ValueError("not a page task of this pipeline")
            partition, key, seq, run_id = task["partition"], task["key"], task["seq"], task["run"]
            if p.source.partition_keys[partition] != key:
                raise ValueError(f"partition {partition} is not {key} in this pipeline's stream")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            # Another definition's task, or a damaged one: set aside by the queue, not worked.
            log.error("worker %s: task %.200r refused: %s", self.name, message.body, exc)
            self._queue().nack(message, delay=60)
            return
        if self._halted() is not None:
            # Leased just as the pipeline halted: back to the queue as it was.
            self._put_back(message)
            return
        self._count("tasks")
        began = time.perf_counter()
        cp_name = partition_checkpoint(p.name, key)
        with self._timed("redis_s"):
            claim = self._claim(cp_name)
        if claim is None:
            # Another worker is on this partition's chain: look again in a second.
            self._count("busy")
            self._queue().nack(message, delay=1)
            return
        try:
            token: Dict[str, Any] = {}
            with self._timed("state_s"):
                token = p.store.load(cp_name)["position"] or {}
            if self._stale(task, token):
                self._count("stale")
                token["stale"] = token.get("stale", 0) + 1
                p.store.commit(cp_name, int(token["run"]), token)
                with self._timed("redis_s"):
                    self._release(cp_name, claim)
                claim = None
                if message.deliveries > 1 and token.get("run") == run_id and token.get("seq") == seq \
                        and not (token.get("done") or token.get("dead")):
                    # Handed out again with its page committed: the worker before may have died
                    # between the commit and the publish, losing the next task. It is published
                    # again from the checkpoint (a copy already in the queue is dropped as stale
                    # in its turn). A first delivery is a copy, never the task that went missing.
                    with self._timed("queue_s"):
                        self._put(task_json(p, run_id, partition, seq + 1, token["next"], task.get("incremental"),
                                            _chain_counts(token)))
                self._ack(message)
                return
            fetched = time.perf_counter()
            try:
                inc = task.get("incremental") or {}
                records, after, fetch_counts = p.source._read_page(partition, task["step"], inc.get("value"))
            except (errors.RateLimited, errors.Throttled, errors.QuotaExhausted) as exc:
                # A long wait asked for by the API or the shared limit: the task waits in a
                # delay queue instead of holding this worker.
                wait = _wait_of(exc)
                self._count("parked")
                log.info("worker %s: partition %s page %s parked for %.0f s: %s", self.name, key, seq, wait, exc)
                self._queue().nack(message, delay=wait)
                return
            except Exception as exc:
                # A refused request, or on the task's last delivery an API that cannot be
                # reached at all (no answer is never about one page), stops every page alike.
                if errors.affects_every_record(exc) or (isinstance(exc, errors.ConnectError)
                                                       and message.deliveries >= self.queue.max_deliveries):
                    raise _Halt(exc) from exc
                raise  # another delivery may fetch it: back to the queue, a dead letter on the last
            delivered = time.perf_counter()
            try:
                chain_inc = token.get("incremental") if token.get("run") == run_id else None
                records, skipped, chain_inc = self._incremental(records, inc.get("start"), chain_inc)
                try:
                    counts, dead, superseded = self._deliver(records, fetch_counts, run_id, skipped)
                except Exception as exc:
                    # A sink refusing the request, failing in its own code, or still failing on
                    # the task's last delivery would refuse every page the same way.
                    if errors.affects_every_record(exc) or not isinstance(exc, errors.IsthmusError) \
                            or message.deliveries >= self.queue.max_deliveries:
                        raise _Halt(exc) from exc
                    raise
                if dead and not counts["written"] and not counts["dropped"] and p.stop_after_failures:
                    self._watch(run_id, dead)
                sunk = time.perf_counter()
                chain = {k: task["counts"].get(k, 0) + counts.get(k, 0) for k in CHAIN_COUNTS}
                with self._timed("redis_s"):
                    claim = self._hold(cp_name, claim)
                done_token = {"run": run_id, "seq": seq, "next": after, "done": after is None, "counts": chain,
                              "stale": token.get("stale", 0) if token.get("run") == run_id else 0}
                if chain_inc is not None:
                    done_token["incremental"] = chain_inc
                with self._timed("state_s"):
                    p.store.commit(cp_name, run_id, done_token, dead, dead_letters_of=p.name, superseded=superseded)
            except _Stop as exc:
                log.warning("worker %s: %s; the task goes back to the queue", self.name, exc)
                self._queue().nack(message)
                return
            self._count("pages")
            self._count("fetch_s", delivered - fetched)
            self._count("sink_s", sunk - delivered)
        except _Stop:
            raise
        except _Halt as failure:
            self._halt_run(message, task, cp_name, token, failure)
            return
        except Exception as exc:
            self._failed_page(message, task, cp_name, token, exc)
            return
        finally:
            if claim is not None:
                with self._timed("redis_s"):
                    self._release(cp_name, claim)
        # The next page's task goes out once the claim is released, so the slot it lands on
        # finds the partition free; a kill before it is confirmed is repaired by this task's
        # redelivery (dropped as stale, it publishes the next task from the checkpoint).
        with self._timed("queue_s"):
            if after is not None:
                self._put(task_json(p, run_id, partition, seq + 1, after, task.get("incremental"), chain))
            self._ack(message)
        self._count("task_s", time.perf_counter() - began)
        if after is None:
            self._settle(run_id)

    @staticmethod
    def _stale(task: Dict[str, Any], token: Dict[str, Any]) -> bool:
        """Whether the partition's checkpoint is at or past this task (a duplicate after a crash,
        or a task of an older run)."""
        if not token:
            return False
        if task["run"] != token.get("run"):
            return bool(task["run"] < token.get("run", 0))
        return bool(task["seq"] <= token.get("seq", -1) or token.get("done"))

    def _claim(self, name: str) -> Any:
        """The partition's claim, or None when another worker holds it. A task is published
        just before its predecessor commits and releases the claim, so the next worker often
        finds it still held for a millisecond or two: it looks again every millisecond for
        20 ms, then after 2 ms doubling up to 256 ms (about half a second in all)."""
        for wait in _CLAIM_WAITS:
            claim = self.coordination.claim(name, lease=self.lease)
            if claim:
                with self._lock:
                    self._claims[name] = claim
                return claim
            if wait is None or self._stop.wait(wait):
                return None
        return None

    def _hold(self, name: str, claim: Any) -> Any:
        """The claim, still ours, right before a commit. One that vanished (a restarted Redis
        forgot it) is taken again when nobody else took it meanwhile; otherwise ``_Stop``."""
        with self._claim_lock:
            renewed = claim.renew()
        if renewed:
            return claim
        again = self.coordination.claim(name, lease=self.lease)
        if not again:
            raise _Stop(f"claim on {name} lost before its checkpoint")
        with self._lock:
            self._claims[name] = again
        return again

    def _release(self, name: str, claim: Any) -> None:
        with self._lock:
            self._claims.pop(name, None)
        try:
            with self._claim_lock:
                claim.release()
        except errors.IsthmusError as exc:
            # It lapses by itself after its lease.
            log.warning("worker %s: releasing %s: %s", self.name, name, exc)

    def _put(self, body: str) -> None:
        """Publishes a task, confirmed. While the broker is away the put waits for it to come
        back (with back-off): the page is already written, so giving up would re-run it."""
        pause = 0.1
        while True:
            try:
                self._queue().put(body)
                return
            except (errors.ConnectError, errors.TimeoutError, errors.ReadError) as exc:
                if self._stop.is_set() and pause >= 5:
                    raise
                log.warning("worker %s: publishing the next task: %s", self.name, exc)
                time.sleep(pause)
                pause = min(pause * 2, 5.0)

    def _ack(self, message: Any) -> None:
        try:
            self._queue().ack(message)
        except errors.IsthmusError as exc:
            # The lease went with a lost connection: the broker hands the task out again and
            # the checkpoint, already past it, has it dropped as stale.
            log.warning("worker %s: ack: %s", self.name, exc)

    def _incremental(self, records: Any, start: Optional[Dict[str, Any]],
                     chain: Optional[Dict[str, Any]]) -> Tuple[Any, int, Optional[Dict[str, Any]]]:
        """An incremental stream's page: (the records the last run did not already deliver at
        its boundary, how many it left out, the chain's cursor state after this page)."""
        inc = getattr(self.pipeline.source, "incremental", None)
        if inc is None or not isinstance(records, list):
            return records, 0, chain
        keys = self.pipeline.source.keys(records)
        skip = _IncrementalTracker(inc, start).skipped(records, keys)
        kept = [r for r, s in zip(records, skip) if not s]
        tracker = _IncrementalTracker(inc, chain)
        tracker.observe(kept, [k for k, s in zip(keys, skip) if not s])
        return kept, len(records) - len(kept), tracker.state()

    def _deliver(self, records: Any, fetch_counts: Dict[str, Any], run_id: int,
                 skipped: int = 0) -> Tuple[Dict[str, float], List[Dict[str, Any]], List[str]]:
        """Maps the page and writes it to the sink, flushed: (its counts, its dead letters, the
        keys of open dead letters it delivered a newer version of)."""
        from isthmus.pipeline import _Newer

        p = self.pipeline
        dead: List[Dict[str, Any]] = []
        counts: Dict[str, float] = {k: fetch_counts.get(k, 0) for k in NETWORK_COUNTS}
        with self._sink_lock:
            newer = self._newer.get(run_id)
            if newer is None:
                newer = self._newer[run_id] = _Newer(p.store.open_dead_letter_keys(p.name))
            before = {k: getattr(self._sink_counters, k) for k in NETWORK_COUNTS}
            try:
                if not isinstance(records, list):
                    read = records.read
                    written = p._write_mapped(records, dead)
                    flushed = p._at_sink(p.sink.flush)
                    n = p._file_rejections(flushed, "flush", None, None, dead) if flushed else 0
                    written -= n
                    dropped = 0
                    newer.delivered(records.keys() if newer.open or dead else (), dead)
                else:
                    read = len(records) + skipped
                    keys = p.source.keys(records)
                    mapped, mkeys, dropped = p._apply_map(records, keys, None, dead)
                    written = p._sink(mapped, mkeys, dead, settle=True)
                    newer.delivered(mkeys, dead)
            except BaseException:
                # The page is not checkpointed and will be read again: what the sink kept of it
                # must not go out with the next page (in other batches, under other keys).
                p.sink.close()
                p.sink.open(self._sink_counters)
                raise
            for k in NETWORK_COUNTS:
                counts[k] += getattr(self._sink_counters, k) - before[k]
            superseded = newer.take()
        counts.update(read=read, written=written, dropped=dropped, dead_lettered=len(dead), skipped=skipped)
        return counts, dead, superseded

    def _watch(self, run_id: int, dead: List[Dict[str, Any]]) -> None:
        """Halts the run once ``stop_after_failures`` records failed and none was written, over
        every worker's checkpointed pages and this one."""
        from isthmus.pipeline import all_failed_error

        p = self.pipeline
        c = run_progress(p, run_id)["counts"]
        if c["written"] or c["dropped"]:
            return
        failed = int(c["dead_lettered"]) + len(dead)
        if failed >= p.stop_after_failures:
            raise _Halt(all_failed_error(p.name, failed, [d["error"] for d in dead], held=False), dead)

    def _failed_page(self, message: Any, task: Dict[str, Any], cp_name: str, token: Dict[str, Any],
                     exc: BaseException) -> None:
        """A page that could not be fetched: back to the queue, or on its last delivery a dead
        letter in the state file (``isthmus dlq replay`` publishes it again) and its chain stops."""
        p = self.pipeline
        self._count("failed")
        if message.deliveries < self.queue.max_deliveries:
            log.warning("worker %s: partition %s page %s failed (delivery %d of %d): %s", self.name, task["key"],
                        task["seq"], message.deliveries, self.queue.max_deliveries, exc)
            self._queue().nack(message, delay=1)
            return
        self._count("dead_lettered")
        dead = [{"record_key": f"page:{task['key']}:{task['seq']}", "stage": TASK_STAGE, "record": task,
                 "error": f"{type(exc).__name__}: {exc}", "traceback": None,
                 "http_status": getattr(exc, "status_code", None), "attempts": message.deliveries}]
        stopped = {"run": task["run"], "seq": task["seq"] - 1, "next": task["step"], "done": False, "dead": True,
                   "counts": task["counts"],
                   "stale": token.get("stale", 0) if token.get("run") == task["run"] else 0}
        p.store.commit(cp_name, task["run"], stopped, dead, dead_letters_of=p.name)
        self._ack(message)
        self._settle(task["run"])

    def _settle(self, run_id: int) -> None:
        """Once every partition of the run is done or dead-lettered, files the run's summary."""
        p = self.pipeline
        progress = run_progress(p, run_id)
        if progress["going"]:
            return
        rows = [r for r in p.store.runs(p.name) if r["id"] == run_id]
        started = rows[0]["started_at"] if rows else time.time()
        summary = run_summary(p, progress, started)
        status = "completed" if progress["dead"] == 0 else "failed"
        error = None if status == "completed" else \
            f"{progress['dead']} partition(s) stopped at a dead-lettered page (isthmus dlq replay sends it again)"
        if status == "completed" and getattr(p.source, "incremental", None) is not None:
            self._advance_cursor(run_id)
        p.store.finish_run(run_id, status, summary, error)

    def _advance_cursor(self, run_id: int) -> None:
        """Every partition is done: the pipeline's incremental cursor moves to what the run
        read, merged over the partitions (the newest value, and the records at the boundary
        within the lookback), so the next run starts there. A run with a dead-lettered page
        leaves it: the records after that page were not read yet."""
        p = self.pipeline
        inc = p.source.incremental
        start = p.store.token(p.store.load(p.name)) or {}
        merged = _IncrementalTracker(inc, start.get("incremental"))
        for key in p.source.partition_keys:
            token = p.store.load(partition_checkpoint(p.name, key))["position"] or {}
            state = token.get("incremental") if token.get("run") == run_id else None
            if state:
                # Each chain's boundary holds its newest records: observed again, the newest
                # of all the chains wins.
                merged.observe([_at(inc._path, v) for _, v in state["boundary"]], [k for k, _ in state["boundary"]])
        p.store.commit(p.name, run_id, {"incremental": merged.state()})


def status(pipeline: Any) -> Dict[str, Any]:
    """What ``isthmus status`` shows: the task queue, the workers alive and what they hold, the
    open dead letters, the pipeline's halt (None unless a failure that affects every record
    stopped its run) and the runs still going (or the last one)."""
    queue, coord = pipeline._cluster()
    q = dict(queue.stats())
    prefix = coord._core.key(f"worker:{pipeline.name}:")
    keys: List[str] = []
    cursor = "0"
    while True:
        cursor, found = coord._command(["SCAN", cursor, "MATCH", prefix + "*", "COUNT", "1000"])
        keys += found
        if cursor == "0":
            break
    beats = [json.loads(b) for b in (coord._command(["MGET", *keys]) if keys else []) if b]
    # The broker counts only this client's leases: the workers' heartbeats say what they hold.
    q["leased"] = sum(b.get("in_flight", 0) for b in beats)
    runs = pipeline.store.runs(pipeline.name)
    shown = [r for r in runs if r["status"] == "running"] or runs[-1:]
    progress = []
    for r in shown:
        pr = run_progress(pipeline, r["id"])
        progress.append({**pr, "status": r["status"]})
    dead = pipeline.store.dead_letters(pipeline.name)
    return {"pipeline": pipeline.name, "queue_name": pipeline.queue_name, "queue_url": queue.url,
            "state": pipeline.store.path, "queue": q, "in_flight": q["leased"],
            "workers": sorted(beats, key=lambda b: b.get("name", "")), "dead_letters": len(dead),
            "halt": halt_of(pipeline), "runs": progress}


def replay_tasks(pipeline: Any, rows: List[Dict[str, Any]]) -> Dict[str, int]:
    """Publishes the tasks of dead-lettered pages again (their chains resume there) and works
    their runs in this process until they settle. A page that fails again is a dead letter
    again (counted as ``failed``)."""
    queue, _ = pipeline._cluster()
    runs = set()
    for row in rows:
        task = row["record"]
        cp_name = partition_checkpoint(pipeline.name, task["key"])
        token = pipeline.store.load(cp_name)["position"] or {}
        if token.get("run") == task["run"] and token.get("dead"):
            # The chain is going again: the run is not settled until this page is.
            token.pop("dead")
            pipeline.store.commit(cp_name, task["run"], token)
        queue.put(json.dumps(task, sort_keys=True))
        pipeline.store.resolve([row["id"]])
        runs.add(task["run"])
    worker = Worker(pipeline, concurrency=1)
    for run_id in sorted(runs):
        worker.run(run_id=run_id)
    again = {r["record_key"] for r in pipeline.store.dead_letters(pipeline.name) if r["stage"] == TASK_STAGE}
    failed = sum(r["record_key"] in again for r in rows)
    return {"replayed": len(rows), "delivered": len(rows) - failed, "failed": failed}


def run_summary(pipeline: Any, progress: Dict[str, Any], started: float) -> Dict[str, Any]:
    """A distributed run's summary, shaped like ``Run.summary()``: the counts of every worker."""
    c: Dict[str, Any] = dict(progress["counts"])
    duration = max(time.time() - started, 1e-9)
    c.update(pipeline=pipeline.name, run_id=progress["run_id"], duration_s=round(duration, 3),
             records_per_s=round(c["read"] / duration, 1), pages=progress["pages"],
             stale_tasks=progress["stale_tasks"], partitions_dead=progress["dead"],
             reconciled=c["read"] == c["written"] + c["dead_lettered"] + c["dropped"] + c["skipped"])
    return c


def _at(path: List[str], value: Any) -> Dict[str, Any]:
    """A record holding ``value`` at the dotted ``path``."""
    record: Any = value
    for part in reversed(path):
        record = {part: record}
    return record  # type: ignore[no-any-return]


def _wait_of(exc: BaseException) -> float:
    """How long a limit asks to wait, from the error the governor raised."""
    for attr in ("retry_after", "wait"):
        v = getattr(exc, attr, None)
        if isinstance(v, (int, float)) and v > 0:
            return float(v)
    resets = getattr(exc, "resets_at", None)
    if isinstance(resets, (int, float)) and resets > time.time():
        return resets - time.time()
    return 60.0
