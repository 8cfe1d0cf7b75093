"""Scale-out: one pipeline as page tasks on 1, 2 and 4 worker processes, and limits shared by
many processes through Redis.

`workers`: a sandbox serving pages of 100 records at ~20 ms each (its own latency fault, 16
server threads) is read over 20 time-slice partitions and written to a second sandbox's
idempotent import, by the embedded single-process run (`isthmus run`, 4 partitions at once)
and by 1, 2 and 4 `isthmus worker` processes (concurrency 4 each) on a RabbitMQ broker and a
Redis of our own. Records/s is the records over the wall time from submit to the run settled
(filed by the worker that settled it);
the overhead per page task is a worker's time per page outside the fetch, the mapping and
the sink (the queue, the claims, the checkpoint), from the workers' own counts. Target: 4
workers >= 3x 1 worker.

`limits`: a limit of 500/s and one of 2,000/s shared by 4 processes x concurrency 8 against a
sandbox enforcing it: the achieved rate over a 10 s window of the steady state (as the sandbox
counted it) within 1% of the limit, 0 x 429; the whole run's rate, start and tail included,
is shown beside it.

    python bench/scaleout.py                                   # both parts
    python bench/scaleout.py --part workers --records 50000
    python bench/scaleout.py --part limits --seconds 5 --rates 500
    make bench B=scaleout
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "python"))
import common  # noqa: E402

NAME = "scaleout"
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))

# -- workers ---------------------------------------------------------------------------------

PARTITIONS = 20
CONCURRENCY = 4
PAGE = 100
LATENCY_MS = 20
WORKER_COLUMNS = (("pages", "pages", 0), ("seconds", "wall_s", 2), ("worker CPU ms/page", "cpu_ms", 2),
                  ("overhead us/page", "overhead_us", 0),
                  ("broker us", "broker_us", 0), ("redis us", "redis_us", 0), ("checkpoint us", "state_us", 0),
                  ("stale tasks", "stale", 0), ("busy", "busy", 0), ("empty looks", "empty_looks", 0),
                  ("machine CPU %", "machine_busy", 0), ("broker CPU ms/page", "broker_cpu_ms", 2),
                  ("redis CPU ms/page", "redis_cpu_ms", 2), ("sandboxes CPU ms/page", "bench_cpu_ms", 2),
                  ("unique at dest", "unique", 0))


def _doc(name: str, source_url: str, dest_url: str, state: Path, broker: str | None, redis: str | None) -> dict:
    doc = {
        "name": name, "state": str(state),
        "source": {"base_url": source_url, "path": "/v1/contacts", "params": {"limit": PAGE},
                   "paginator": {"type": "cursor", "cursor": "meta.next_cursor", "param": "cursor"},
                   "concurrency": CONCURRENCY,
                   "partitions": {"time_slices": {"start": "2024-01-01", "end": "2025-01-01",
                                                  "every": 366 * 86400 / PARTITIONS}}},
        "sink": {"type": "http", "base_url": dest_url, "path": "/v1/contacts/batch", "batch_size": PAGE},
    }
    if broker:
        doc.update(queue=broker, coordination=redis)
    return doc


def _write(tmp: Path, doc: dict) -> str:
    import yaml

    path = tmp / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "isthmus.cli", *args], env=ENV, text=True, **kw)


def embedded_row(tmp: Path, source, dest, records: int) -> dict:
    path = _write(tmp, _doc("embedded", source.url, dest.url, tmp / "embedded.db", None, None))
    t0 = time.monotonic()
    proc = _cli("run", path, "--no-progress", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=900)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"isthmus run failed: {err[-2000:]}")
    unique = dest.stats()["records_received"]["contacts"]["unique"]
    return {"tool": "embedded", "value": round(records / wall, 1), "wall_s": round(wall, 2),
            "pages": None, "unique": unique, "note": f"isthmus run, one process, {CONCURRENCY} partitions at once"}


def workers_row(tmp: Path, source, dest, broker, redis, n: int, records: int) -> dict:
    from isthmus.config import load_pipeline

    name = f"workers-{n}"
    path = _write(tmp, _doc(name, source.url, dest.url, tmp / f"{name}.db", broker.url, redis.url))
    logs = [open(tmp / f"{name}-{i}.log", "w+") for i in range(n)]
    procs = [_cli("worker", path, "--concurrency", str(CONCURRENCY), stdout=subprocess.PIPE, stderr=log)
             for log in logs]
    try:
        pipeline = load_pipeline(path)
        # Every worker has connected (it says so on stderr) before the clock starts.
        deadline = time.monotonic() + 120
        while not all(log.seek(0) == 0 and "isthmus.Worker" in log.read() for log in logs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{n} workers did not start")
            time.sleep(0.05)
        cpu0 = sum(common.process_tree_cpu_s(p.pid) for p in procs)
        machine0 = _machine_cpu()
        others0 = _others_cpu(broker, redis)
        t0 = time.time()
        run_id = pipeline.submit()
        # Looked at a few times a second (each look reads every partition's checkpoint, CPU the
        # workers would otherwise have); the wall time ends when the settling worker filed the run.
        while pipeline.progress(run_id)["going"]:
            time.sleep(0.25)
        row = next(r for r in pipeline.store.runs(pipeline.name) if r["id"] == run_id)
        while row["finished_at"] is None:
            time.sleep(0.05)
            row = next(r for r in pipeline.store.runs(pipeline.name) if r["id"] == run_id)
        wall = row["finished_at"] - t0
        machine1 = _machine_cpu()
        others1 = _others_cpu(broker, redis)
        cpu = sum(common.process_tree_cpu_s(p.pid) for p in procs) - cpu0
        progress = pipeline.progress(run_id)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        stats = []
        for p in procs:
            out, _ = p.communicate(timeout=60)
            lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            stats += lines[-1:]
        for log in logs:
            log.close()
    pages = sum(s["pages"] for s in stats)
    own = sum(s["task_s"] - s["fetch_s"] - s["sink_s"] for s in stats)
    per_page = {k: round(1e6 * sum(s[k] for s in stats) / max(pages, 1)) for k in ("queue_s", "redis_s", "state_s")}
    unique = dest.stats()["records_received"]["contacts"]["unique"]
    return {"tool": f"{n} worker{'s' if n > 1 else ''}", "value": round(records / wall, 1), "wall_s": round(wall, 2),
            "pages": pages, "overhead_us": round(1e6 * own / max(pages, 1)), "stale": progress["stale_tasks"],
            "cpu_ms": round(1000 * cpu / max(pages, 1), 2), "broker_us": per_page["queue_s"],
            "redis_us": per_page["redis_s"], "state_us": per_page["state_s"],
            "busy": sum(s["busy"] for s in stats), "empty_looks": sum(s["empty_looks"] for s in stats),
            "machine_busy": round(100 * (machine1[0] - machine0[0]) / max(machine1[1] - machine0[1], 1)),
            **{f"{k}_cpu_ms": round(1000 * (others1[k] - others0[k]) / max(pages, 1), 2) for k in others0},
            "unique": unique, "note": f"{n} x `isthmus worker --concurrency {CONCURRENCY}`"}


def _others_cpu(broker, redis) -> dict[str, float]:
    """CPU seconds so far of the broker, Redis and this process (both sandboxes and the
    progress polling), to set beside the workers' own."""
    return {"broker": common.process_tree_cpu_s(broker.pid), "redis": common.process_tree_cpu_s(redis.pid),
            "bench": sum(os.times()[:2])}


def _machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of every core, from /proc/stat: how loaded the machine was."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def run_workers(records: int, counts: list[int]) -> list[dict]:
    import isthmus
    from servers import RabbitMQ, Redis

    rows = []
    with tempfile.TemporaryDirectory(prefix="isthmus-bench-scaleout-") as tmp_name:
        tmp = Path(tmp_name)
        faults = {"GET /v1/contacts": {"latency_ms": LATENCY_MS}}
        with RabbitMQ(tmp / "broker") as broker, Redis(tmp) as redis, \
                isthmus.Sandbox(records=records, max_page_size=PAGE, threads=16, faults=faults) as source:
            # A destination per row: its idempotency keys would take a second row's batches as replays.
            print(f"embedded: {records:,} records, pages of {PAGE} at {LATENCY_MS} ms ...", flush=True)
            with isthmus.Sandbox(threads=4) as dest:
                rows.append(embedded_row(tmp, source, dest, records))
            for n in counts:
                print(f"{n} worker process(es) x concurrency {CONCURRENCY} ...", flush=True)
                with isthmus.Sandbox(threads=4) as dest:
                    rows.append(workers_row(tmp, source, dest, broker, redis, n, records))
    one = next((r for r in rows if r["tool"] == "1 worker"), None)
    for r in rows:
        r["vs_1_worker"] = round(r["value"] / one["value"], 2) if one else None
    return rows


# -- limits ----------------------------------------------------------------------------------

LIMIT_WORKERS = 4
LIMIT_CONCURRENCY = 8
LIMIT_COLUMNS = (("limit/s", "limit", 0), ("achieved/s", "value", 1), ("error %", "error_pct", 2),
                 ("whole run/s", "whole_run", 1), ("requests", "requests", 0), ("429s", "status_429", 0),
                 ("seconds", "wall_s", 2), ("redis cmds", "redis_commands", 0))


def limit_worker(redis_url: str, api_url: str, rate: float, burst: float, n: int) -> None:
    """One of the processes sharing the limit: n calls through a limiter counted in Redis."""
    import isthmus

    coord = isthmus.Coordination(redis_url)
    limiter = isthmus.Limiter(isthmus.RateLimit(rate, per="second", burst=burst), coordination=coord)
    with isthmus.Client(api_url, rate_limit=limiter, retry=None, max_connections=LIMIT_CONCURRENCY) as c:
        c.get("/v1/contacts?limit=1")  # connect and load the script before the clock starts
        print("ready", flush=True)
        sys.stdin.readline()
        responses = c.get_many(["/v1/contacts?limit=1"] * n, concurrency=LIMIT_CONCURRENCY)
    statuses: dict[str, int] = {}
    for r in responses:
        statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
    print(json.dumps({"statuses": statuses, "redis": coord.stats()["commands"]}), flush=True)


def limit_row(redis_url: str, rate: float, seconds: float) -> dict:
    """A sandbox enforcing `rate` (burst 2x the client's), with no retries, so every 429 shows.
    The achieved rate is what the sandbox counted over a `seconds` window of the steady state
    (from 1 s after the start signal; the processes have work for 2 s more), and, for the whole
    run, the requests over the wall time from the start signal to the last answer."""
    import isthmus

    burst = max(1.0, rate // 50)  # the RateLimit default
    n = int(rate * (seconds + 2)) // LIMIT_WORKERS
    with isthmus.Sandbox(rate_limit=rate, burst=int(2 * burst), records=10) as api:
        procs = [subprocess.Popen([sys.executable, __file__, "--limit-worker", redis_url, api.url, str(rate),
                                   str(burst), str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env=ENV)
                 for _ in range(LIMIT_WORKERS)]
        try:
            for p in procs:
                if p.stdout.readline().strip() != "ready":
                    raise RuntimeError("a worker did not start")
            api.reset_stats()
            t0 = time.monotonic()
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            window = []
            for at in (t0 + 1.0, t0 + 1.0 + seconds):
                time.sleep(max(0.0, at - time.monotonic()))
                before = time.monotonic()
                count = api.stats()["requests"]["total"]
                window.append(((before + time.monotonic()) / 2, count))
            results = [json.loads(p.stdout.readline()) for p in procs]
            wall = time.monotonic() - t0
        finally:
            for p in procs:
                p.kill()
                p.wait()
        stats = api.stats()
    total = stats["requests"]["total"]
    achieved = (window[1][1] - window[0][1]) / (window[1][0] - window[0][0])
    return {"tool": "isthmus", "limit": rate, "value": round(achieved, 1),
            "error_pct": round(100 * (achieved - rate) / rate, 2), "window_s": round(window[1][0] - window[0][0], 3),
            "whole_run": round(total / wall, 1), "requests": total,
            "status_429": stats["rate_limited"], "wall_s": round(wall, 2),
            "redis_commands": sum(r["redis"] for r in results),
            "ok": sum(r["statuses"].get("200", 0) for r in results),
            "note": f"{LIMIT_WORKERS} processes x concurrency {LIMIT_CONCURRENCY}, sandbox burst {int(2 * burst)}"}


def run_limits(rates: list[float], seconds: float) -> list[dict]:
    from servers import Redis

    rows = []
    with tempfile.TemporaryDirectory(prefix="isthmus-bench-scaleout-") as tmp, Redis(Path(tmp)) as redis:
        for rate in rates:
            print(f"limit {rate:g}/s shared by {LIMIT_WORKERS} processes x concurrency {LIMIT_CONCURRENCY}, "
                  f"{seconds:g} s ...", flush=True)
            rows.append(limit_row(redis.url, rate, seconds))
    return rows


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--limit-worker":
        limit_worker(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("all", "workers", "limits"), default="all")
    ap.add_argument("--records", type=int, default=100_000, help="records the workers part reads (default 100,000)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker process counts")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds per limit row")
    ap.add_argument("--rates", type=float, nargs="+", default=[500.0, 2000.0])
    args = ap.parse_args()
    try:
        from servers import have_rabbitmq, have_redis
    except ImportError as exc:
        print(f"isthmus is not installed here ({exc}); run `make install` first", file=sys.stderr)
        return 2
    if not have_redis or (args.part != "limits" and not have_rabbitmq):
        print("redis-server or rabbitmq-server is not installed; run `sudo bash scripts/install-deps.sh`",
              file=sys.stderr)
        return 2
    machine = common.machine_info()
    rows: list[dict] = []
    failed = False
    if args.part in ("all", "workers"):
        worker_rows = run_workers(args.records, args.workers)
        common.print_table(f"one pipeline on workers ({args.records:,} records, {PARTITIONS} partitions, "
                           f"pages of {PAGE} at {LATENCY_MS} ms)", worker_rows, references=("1 worker", "embedded"),
                           unit="records/s", columns=WORKER_COLUMNS)
        rows += [{**r, "part": "workers"} for r in worker_rows]
        four = next((r for r in worker_rows if r["tool"] == "4 workers"), None)
        failed |= bool(four and four["vs_1_worker"] is not None and four["vs_1_worker"] < 3)
        failed |= any(r["unique"] != args.records for r in worker_rows)
    if args.part in ("all", "limits"):
        limit_rows = run_limits(args.rates, args.seconds)
        common.print_table("a limit shared through Redis (achieved rate as the sandbox counted it)", limit_rows,
                           references=(), unit="calls/s", columns=LIMIT_COLUMNS)
        rows += [{**r, "part": "limits"} for r in limit_rows]
        failed |= any(abs(r["error_pct"]) > 1 or r["status_429"] for r in limit_rows)
    path = common.write_results(NAME, rows, unit="records/s (workers), calls/s (limits)", machine=machine,
                                settings={"part": args.part, "records": args.records, "partitions": PARTITIONS,
                                          "page": PAGE, "latency_ms": LATENCY_MS, "concurrency": CONCURRENCY,
                                          "seconds": args.seconds, "limit_workers": LIMIT_WORKERS,
                                          "limit_concurrency": LIMIT_CONCURRENCY})
    print(f"results: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
