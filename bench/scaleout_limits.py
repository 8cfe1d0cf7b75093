"""One shared allowance, many processes: 4 workers x concurrency 8 under a limit kept in Redis.

Each row: a sandbox enforcing R calls/s (burst 2x the client's), a Redis of our own, and 4
worker processes, each a Client with concurrency 8 and ``Limiter(RateLimit(R),
coordination=...)``, sending R x seconds calls between them. The achieved rate is what the
sandbox counted over the wall time from the start signal to the last answer; the target is
within 1% of R, with 0 x 429 (no retries: every 429 would show).

    python bench/scaleout_limits.py                 # 500/s and 2,000/s, 10 s each
    python bench/scaleout_limits.py --seconds 5 --rates 500
    make bench B=scaleout_limits
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "python"))
import common  # noqa: E402

NAME = "scaleout_limits"
WORKERS = 4
CONCURRENCY = 8
COLUMNS = (("limit/s", "limit", 0), ("achieved/s", "value", 1), ("error %", "error_pct", 2),
           ("requests", "requests", 0), ("429s", "status_429", 0), ("seconds", "wall_s", 2),
           ("redis cmds", "redis_commands", 0))


def worker(redis_url: str, api_url: str, rate: float, burst: float, n: int) -> None:
    import isthmus

    coord = isthmus.Coordination(redis_url)
    limiter = isthmus.Limiter(isthmus.RateLimit(rate, per="second", burst=burst), coordination=coord)
    with isthmus.Client(api_url, rate_limit=limiter, retry=None, max_connections=CONCURRENCY) as c:
        c.get("/v1/contacts?limit=1")  # connect and load the script before the clock starts
        print("ready", flush=True)
        sys.stdin.readline()
        responses = c.get_many(["/v1/contacts?limit=1"] * n, concurrency=CONCURRENCY)
    statuses: dict[str, int] = {}
    for r in responses:
        statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
    print(json.dumps({"statuses": statuses, "redis": coord.stats()["commands"]}), flush=True)


def one_row(redis_url: str, rate: float, seconds: float) -> dict:
    import isthmus

    burst = max(1.0, rate // 50)  # the RateLimit default
    n = int(rate * seconds) // WORKERS
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    with isthmus.Sandbox(rate_limit=rate, burst=int(2 * burst), records=10) as api:
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", redis_url, api.url, str(rate), str(burst),
                                   str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
                 for _ in range(WORKERS)]
        try:
            for p in procs:
                if p.stdout.readline().strip() != "ready":
                    raise RuntimeError("a worker did not start")
            api.reset_stats()
            t0 = time.monotonic()
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            results = [json.loads(p.stdout.readline()) for p in procs]
            wall = time.monotonic() - t0
        finally:
            for p in procs:
                p.kill()
                p.wait()
        stats = api.stats()
    total = stats["requests"]["total"]
    achieved = total / wall
    return {"tool": "isthmus", "limit": rate, "value": round(achieved, 1),
            "error_pct": round(100 * (achieved - rate) / rate, 2), "requests": total,
            "status_429": stats["rate_limited"], "wall_s": round(wall, 2),
            "redis_commands": sum(r["redis"] for r in results),
            "ok": sum(r["statuses"].get("200", 0) for r in results),
            "note": f"{WORKERS} processes x concurrency {CONCURRENCY}, sandbox burst {int(2 * burst)}"}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rates", type=float, nargs="+", default=[500.0, 2000.0])
    args = ap.parse_args()
    try:
        from servers import Redis, have_redis
    except ImportError as exc:
        print(f"isthmus is not installed here ({exc}); run `make install` first", file=sys.stderr)
        return 2
    if not have_redis:
        print("redis-server is not installed; run `sudo bash scripts/install-deps.sh`", file=sys.stderr)
        return 2
    machine = common.machine_info()
    rows = []
    with tempfile.TemporaryDirectory(prefix="isthmus-bench-scaleout-") as tmp, Redis(Path(tmp)) as redis:
        for rate in args.rates:
            print(f"limit {rate:g}/s shared by {WORKERS} processes x concurrency {CONCURRENCY}, "
                  f"{args.seconds:g} s ...", flush=True)
            rows.append(one_row(redis.url, rate, args.seconds))
    common.print_table("a limit shared through Redis (achieved rate as the sandbox counted it)", rows,
                       references=(), unit="calls/s", columns=COLUMNS)
    path = common.write_results(NAME, rows, unit="calls/s", machine=machine,
                                settings={"seconds": args.seconds, "workers": WORKERS, "concurrency": CONCURRENCY})
    print(f"results: {path}")
    off = [r for r in rows if abs(r["error_pct"]) > 1 or r["status_429"]]
    return 1 if off else 0


if __name__ == "__main__":
    sys.exit(main())
