"""The fault matrix: one pipeline between two faulty sandboxes, through two fault proxies.

Used by ``test_reliability.py::test_fault_matrix`` (50,000 records, in ``make test``) and by
``bench/reliability/run.py`` (1,000,000 records); both call ``run_matrix`` and then
``problems``, so the test and the benchmark check exactly the same things.

The layers of damage:

- each sandbox fails ``rate`` of its calls in each way: HTTP 500, 503 and 429, a reset, a
  truncated body, a malformed JSON body, and a latency tail past the client timeout; OAuth2
  access tokens live 2 s and are used to their last moment, so they expire mid-run;
- a ``FaultProxy`` sits in front of each sandbox (token endpoint included) and, at evenly
  spaced points of the run (measured in records the destination has received), damages the
  transport: a down/up bounce, resets mid-body, a black hole, a slow and thin link;
- the map dead-letters one record in 1,000 on purpose, so dead letters are part of the sum.

A run that fails (a page whose every attempt failed) is run again from its checkpoint, as an
operator would; how many it took is part of the result. Nothing else is retried by hand.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List

import isthmus
from fault_proxy import FaultProxy

PAGE = 500
CLIENT_TIMEOUT = 0.5
TOKEN_TIMEOUT = 2.0
# Log-normal latency: median 2 ms, p99 5 s, so about 5% of calls exceed CLIENT_TIMEOUT
# (ln(250) / ln(2450) = 1.645 / 2.326, the 95th and 99th percentiles of a normal).
LATENCY_TAIL = {"median": 2, "p99": 4900}
SANDBOX_FAULTS = ("status_500", "status_503", "status_429", "reset", "truncate", "malformed", "latency")
EPISODES = ("bounce", "reset_mid_body", "black_hole", "slow_link")
MAX_RUNS = 30
RERUN_PAUSE = 0.5  # seconds between a failed run and the next


def each_way(rate: float) -> Dict[str, Any]:
    """Sandbox faults: ``rate`` of the calls fail in each way."""
    return {"error_rate": {s: rate for s in ("500", "503", "429")}, "reset": rate, "truncate": rate,
            "malformed": rate, "latency_ms": LATENCY_TAIL}


def is_bad(record_id: str) -> bool:
    """One record in 1,000 (ids ending in ...007) dead-letters in map, on purpose."""
    return int(record_id[4:]) % 1000 == 7


def map_with_bad_records(r: Dict[str, Any]) -> Dict[str, Any]:
    if is_bad(r["id"]):
        raise ValueError(f"record {r['id']}: refusing on purpose (test dead letter)")
    return {"id": r["id"], "email": r.get("email"), "name": r.get("first_name")}


def received(sb: isthmus.Sandbox, resource: str = "contacts") -> Dict[str, int]:
    """What the sandbox's idempotent import endpoint counted: unique, duplicate, replays."""
    return sb.stats()["records_received"].get(resource, {"unique": 0, "duplicate": 0, "idempotent_replays": 0})


class TransportChaos(threading.Thread):
    """Damages the proxies under a running pipeline, one episode at each mark of progress.

    ``progress[name]()`` is how far the run is on that proxy's side (records the source has
    served, records the destination has); ``marks`` are the counts at which episodes start.
    Progress is per side because the source is read ahead of the destination: an episode on the
    source timed by the destination's count could start after the last page was fetched.
    Episodes take turns over ``EPISODES`` and over the proxies. Each episode records what it did
    and what the proxy counted, so a test can check it really happened.
    """

    def __init__(self, proxies: Dict[str, FaultProxy], progress: Dict[str, Callable[[], int]], marks: List[int]):
        super().__init__(name="fault-matrix-chaos", daemon=True)
        self.proxies, self.progress, self.marks = proxies, progress, marks
        self.stop = threading.Event()
        self.episodes: List[Dict[str, Any]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        names = list(self.proxies)
        plan: Dict[str, List[Any]] = {name: [] for name in names}
        for i, mark in enumerate(self.marks):
            kind = EPISODES[i % len(EPISODES)]
            # reset_mid_body needs big answers to cut into: the source's pages.
            name = "source" if kind == "reset_mid_body" else names[(i // len(EPISODES) + i) % len(names)]
            plan[name].append((kind, mark))
        # One thread per side, so a long episode on one proxy never delays the other's.
        sides = [threading.Thread(target=self._side, args=(name, items), daemon=True) for name, items in plan.items()]
        for t in sides:
            t.start()
        for t in sides:
            t.join()

    def _side(self, name: str, items: List[Any]) -> None:
        try:
            for kind, mark in items:
                while self.progress[name]() < mark:
                    if self.stop.wait(0.05):
                        return
                self.episodes.append(self._episode(kind, name, self.proxies[name]))
        except BaseException as exc:  # reported by the caller, not lost in a thread
            self.error = exc

    def _episode(self, kind: str, name: str, px: FaultProxy) -> Dict[str, Any]:
        before, at, t0 = px.stats(), self.progress[name](), time.monotonic()
        if kind == "bounce":
            # With a connection open, so that the bounce cuts one (a client between two
            # connections would only meet refused connects, which the proxy cannot count).
            # (Up to 30 s: between failed runs a side can be idle for a while.)
            # A connection seen open may close before the bounce lands (a token request's
            # does at once): then the bounce is tried again, a few times.
            deadline = time.monotonic() + 30.0
            for _ in range(5):
                while not px.stats()["open"] and time.monotonic() < deadline and not self.stop.is_set():
                    self.stop.wait(0.005)
                px.down()  # refuses connects and resets every open connection
                self.stop.wait(0.3)
                px.up()
                if px.stats()["down_resets"] > before["down_resets"] or self.stop.is_set():
                    break
        elif kind == "reset_mid_body":
            px.reset_after = 3000  # a page is ~100 KB: cut inside the body of each answer
            deadline = time.monotonic() + 3.0
            while px.stats()["partial_cuts"] - before["partial_cuts"] < 3 and time.monotonic() < deadline:
                self.stop.wait(0.01)
            px.reset_after = None
        elif kind == "black_hole":
            px.black_hole = True  # nothing answered: every call through it times out
            # For a while, and until a call has gone in: a side can be idle for seconds (the
            # source reads ahead of the sink, so it rests while the sink catches up).
            deadline = time.monotonic() + 30.0
            self.stop.wait(4 * CLIENT_TIMEOUT)
            while px.stats()["swallowed"] == before["swallowed"] and time.monotonic() < deadline:
                self.stop.wait(0.01)
            px.black_hole = False
        else:  # slow_link
            px.latency_ms, px.bandwidth = 30.0, 512 * 1024
            # At least a second, and until something has gone through slowly (the source is
            # read ahead of the sink, so its traffic comes in bursts).
            deadline = time.monotonic() + 5.0
            self.stop.wait(1.0)
            while px.stats()["delayed"] == before["delayed"] and time.monotonic() < deadline:
                self.stop.wait(0.01)
            px.latency_ms, px.bandwidth = 0.0, 0
        after = px.stats()
        return {"episode": kind, "proxy": name, "at_records": at, "began": t0,
                "seconds": round(time.monotonic() - t0, 2),
                **{k: after[k] - before[k] for k in ("resets", "partial_cuts", "down_resets", "downs",
                                                     "swallowed", "delayed", "forwarded")}}


def run_matrix(records: int, state: str, *, rate: float = 0.05, page: int = PAGE,
               episodes: int = 2 * len(EPISODES)) -> Dict[str, Any]:
    """Runs the pipeline to completion under every fault; returns what happened (see problems)."""
    src_faults = {"GET /v1/contacts": each_way(rate)}
    dst_faults = {"POST /v1/contacts/batch": each_way(rate)}
    common = dict(auth="oauth2", token_lifetime=2, max_page_size=page, threads=2)
    failures: List[str] = []
    with isthmus.Sandbox(records=records, pagination="offset", faults=src_faults, **common) as src, \
            isthmus.Sandbox(faults=dst_faults, max_body_bytes=64 << 20, **common) as dst, \
            FaultProxy(src.port) as src_px, FaultProxy(dst.port) as dst_px:
        proxies = {"source": src_px, "destination": dst_px}

        def oauth(sb: isthmus.Sandbox, px: FaultProxy) -> isthmus.OAuth2ClientCredentials:
            # refresh_before=0: tokens are used to the last moment, so some really expire
            # mid-request and take the 401 -> refresh -> resend path. A token request caught
            # in a black hole fails the run after TOKEN_TIMEOUT (the default is 30 s).
            return isthmus.OAuth2ClientCredentials(px.url + "/oauth/token", sb.client_id, sb.client_secret,
                                                   refresh_before=0, timeout=TOKEN_TIMEOUT)

        expected = records - sum(1 for i in range(1, records + 1) if i % 1000 == 7)
        # Episodes at evenly spaced points, clear of the start and the end of the run.
        marks = [expected * (i + 1) // (episodes + 2) for i in range(episodes)]
        chaos = TransportChaos(proxies, {"source": lambda: src.stats()["records_served"].get("contacts", 0),
                                         "destination": lambda: received(dst)["unique"]}, marks)
        t0 = time.monotonic()
        with isthmus.Client(src_px.url, auth=oauth(src, src_px), timeout=CLIENT_TIMEOUT) as sc, \
                isthmus.Client(dst_px.url, auth=oauth(dst, dst_px), timeout=CLIENT_TIMEOUT) as dc:
            stream = isthmus.Stream(sc, "/v1/contacts", attempts=8,
                                    paginator=isthmus.OffsetPaginator(limit=page, total="meta.total", window=8))
            pipeline = isthmus.Pipeline(stream, map=map_with_bad_records,
                                        sink=isthmus.HttpSink(dc, "/v1/contacts/batch", batch_size=page,
                                                              attempts=8, concurrency=8),
                                        state=state)
            chaos.start()
            run = None
            try:
                for _ in range(MAX_RUNS):
                    try:
                        run = pipeline.run()
                        break
                    except isthmus.IsthmusError as exc:
                        failures.append(f"{type(exc).__name__}: {str(exc)[:160]}")
                        # Rerun after a pause, as a scheduler would: a run that failed on a
                        # proxy that is down for 0.3 s would otherwise fail again at once.
                        chaos.stop.wait(RERUN_PAUSE)
                finished_at, finished_t = received(dst)["unique"], time.monotonic()
            finally:
                chaos.stop.set()
                chaos.join(timeout=10)
            elapsed = time.monotonic() - t0
            dead = pipeline.dead_letters()
            history = pipeline.runs()
        got = received(dst)
        sstats, dstats = src.stats(), dst.stats()
        proxy_stats = {name: px.stats() for name, px in proxies.items()}

    return {
        "records": records, "expected_unique": expected, "seconds": round(elapsed, 1),
        "records_per_s": round(records / elapsed), "completed": run is not None and run.status == "completed",
        "reconciled": run is not None and run.summary()["reconciled"] is True,
        "runs": len(failures) + (run is not None), "failed_runs": failures,
        "destination": got, "finished_at": finished_at, "finished_t": finished_t,
        "dead_letters": len(dead), "dead_letter_stages": sorted(set(dead["stage"])),
        "dead_letter_errors": dead["error"].tolist(), "dead_letter_keys": dead["record_key"].tolist(),
        # Summed over every run in the state file's history, failed ones included.
        "requests": int(history["requests"].sum()), "retries": int(history["retries"].sum()),
        "status_429_seen": int(history["status_429"].sum()),
        "sandbox_faults": {"source": sstats["faults"], "destination": dstats["faults"]},
        "tokens": {"source": sstats["tokens"], "destination": dstats["tokens"]},
        "proxies": proxy_stats, "episodes": chaos.episodes, "planned_episodes": len(marks),
        "chaos_error": repr(chaos.error) if chaos.error else None,
    }


def problems(result: Dict[str, Any]) -> List[str]:
    """Every way the result falls short of the guarantee; empty when it holds."""
    out: List[str] = []
    got, records = result["destination"], result["records"]
    if not result["completed"]:
        out.append(f"the pipeline never completed in {MAX_RUNS} runs: {result['failed_runs']}")
    if len(result["failed_runs"]) > MAX_RUNS - 5:
        out.append(f"{len(result['failed_runs'])} failed runs before completing")
    # Exact reconciliation at the idempotent sink, against an independent count of bad records.
    expected_dead = records - result["expected_unique"]
    if result["dead_letters"] != expected_dead:
        out.append(f"{result['dead_letters']} dead letters, expected {expected_dead}")
    if got["unique"] != records - result["dead_letters"]:
        out.append(f"unique at the destination {got['unique']:,} != source {records:,} - dead letters "
                   f"{result['dead_letters']:,}")
    if got["duplicate"]:
        out.append(f"{got['duplicate']} duplicates at the destination")
    if not result["reconciled"]:
        out.append("the last run's summary does not reconcile")
    if not all("refusing on purpose" in e for e in result["dead_letter_errors"]):
        out.append("a dead letter does not say why it is one")
    if result["dead_letter_stages"] not in ([], ["map"]):
        out.append(f"dead letters from stages {result['dead_letter_stages']}, expected only map")
    if not all(is_bad(k) for k in result["dead_letter_keys"]):
        out.append("a good record was dead-lettered")
    # The faults really happened, at both ends, in every form.
    for end, faults in result["sandbox_faults"].items():
        missing = [k for k in SANDBOX_FAULTS if not faults.get(k)]
        if missing:
            out.append(f"the {end} sandbox never injected {missing}")
    for end, tokens in result["tokens"].items():
        if tokens["issued"] < 2:
            out.append(f"the {end} issued {tokens['issued']} token(s): none expired mid-run")
    if result["chaos_error"]:
        out.append(f"the transport chaos failed: {result['chaos_error']}")
    episodes = result["episodes"]
    if len(episodes) != result["planned_episodes"]:
        out.append(f"{len(episodes)} of {result['planned_episodes']} transport episodes ran")
    evidence = {"bounce": "down_resets", "reset_mid_body": "partial_cuts", "black_hole": "swallowed",
                "slow_link": "delayed"}
    for e in episodes:
        if not e[evidence[e["episode"]]]:
            out.append(f"episode {e['episode']} on the {e['proxy']} proxy had no effect: {e}")
        if e["began"] >= result["finished_t"]:
            out.append(f"episode {e['episode']} started after the run had finished")
    return out
