"""bench/limits: what a limiter costs, and how well it keeps a rate, side by side.

  1. The cost of one reservation: in C++ (Google Benchmark, bench/limits/reserve_bench.cpp,
     built into build/bench when libbenchmark-dev is installed) and through Python, for
     isthmus, aiolimiter and pyrate-limiter (reservations per second; higher is better).
  2. Rate keeping at 50, 500 and 5,000 requests/s against the sandbox enforcing the same rate
     and burst: the rate the sandbox accepted, its error against the target, and 429s. The
     sandbox's own arrival times are the clock. Goal: within 1% and zero 429s.
  3. Adaptive: the sandbox silently overloads above a hidden capacity C (500/502/503, no 429);
     isthmus' Adaptive limit, not told C, should reach >= 0.9 C with <= 1% errors after warm-up.
  4. Told nothing: a client with no limit of its own against the sandbox at 40/s (burst 5), paced
     only by the sandbox's headers. Goal: close to 40/s, 429s only in the first wave.
  5. Adaptive against a real leaky bucket: nginx `limit_req rate=50r/s burst=5 nodelay`,
     answering 429 with no headers. Goal: accepted rate >= 0.9 x 50 with <= 1% refused.

Writes bench/results/limits.json: rows of {"tool", "case", "value", ...}; value is higher-better
(reservations/s, accepted requests/s, or goodput as a fraction of C).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import Nginx, Skip, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

try:
    import isthmus
except ImportError:  # pragma: no cover - make bench installs it
    isthmus = None


# --- 1. cost of a reservation ----------------------------------------------------------------

def cpp_reserve_rows() -> list[dict]:
    build = ROOT / "build" / "bench"
    exe = build / "isthmus_bench_limits"
    try:
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                        "-DISTHMUS_BENCH=ON", "-Wno-dev"], check=True, capture_output=True)
        subprocess.run(["cmake", "--build", str(build), "--target", "isthmus_bench_limits"], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"  C++ benchmark skipped (needs libbenchmark-dev: scripts/install-deps.sh bench): {exc}")
        return []
    out = subprocess.run([str(exe), "--benchmark_format=json", "--benchmark_min_time=0.5"], check=True,
                         capture_output=True, text=True).stdout
    rows = []
    for b in json.loads(out)["benchmarks"]:
        ns = b["real_time"] * {"ns": 1, "us": 1e3, "ms": 1e6}[b["time_unit"]]
        rows.append({"tool": "isthmus (C++)", "case": f"reserve: {b['name']}", "value": 1e9 / ns,
                     "ns_per_op": ns})
    return rows


def py_reserve_rows(n: int = 200_000) -> list[dict]:
    rows = []

    def timed(tool, case, fn, count=n):
        start = time.perf_counter()
        fn(count)
        secs = time.perf_counter() - start
        rows.append({"tool": tool, "case": case, "value": count / secs, "ns_per_op": secs / count * 1e9})

    if isthmus is not None:
        lim = isthmus.Limiter(isthmus.RateLimit(1e12, burst=1e6))
        core = lim._core

        def fast(k):
            for _ in range(k):
                core.reserve_fast(1.0)

        def full(k):
            for _ in range(k):
                lim.reserve()

        timed("isthmus", "reserve (Python): _core.reserve_fast", fast)
        timed("isthmus", "reserve (Python): Limiter.reserve", full)
    try:
        from aiolimiter import AsyncLimiter

        async def aio(k):
            limiter = AsyncLimiter(1e12, 1)
            for _ in range(k):
                await limiter.acquire()

        timed("aiolimiter", "reserve (Python): await acquire()", lambda k: asyncio.run(aio(k)))
    except ImportError:
        print("  aiolimiter not installed")
    try:
        from pyrate_limiter import Duration, Limiter, Rate

        def pyrate(k):
            limiter = Limiter(Rate(10**9, Duration.SECOND))
            for _ in range(k):
                limiter.try_acquire("k", blocking=False)

        timed("pyrate-limiter", "reserve (Python): try_acquire(blocking=False)", pyrate, min(n, 50_000))
    except ImportError:
        print("  pyrate-limiter not installed")
    return rows


# --- 2. rate keeping against the sandbox -----------------------------------------------------

def burst_for(rate: float) -> int:
    return max(5, int(rate / 50))


def run_isthmus(url: str, rate: float, burst: int, n: int, concurrency: int) -> None:
    with isthmus.Client(url, rate_limit=isthmus.RateLimit(rate, burst=burst), max_connections=concurrency) as c:
        c.get_many(["/v1/contacts?limit=1"] * n, concurrency=concurrency, return_exceptions=True)


def run_aiolimiter(url: str, rate: float, burst: int, n: int, concurrency: int) -> None:
    import aiohttp
    from aiolimiter import AsyncLimiter

    async def main():
        limiter = AsyncLimiter(burst, burst / rate)  # a bucket of `burst` draining at `rate`
        left = n
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
            async def worker():
                nonlocal left
                while left > 0:
                    left -= 1
                    async with limiter:
                        async with s.get(url + "/v1/contacts?limit=1") as r:
                            await r.read()
            await asyncio.gather(*(worker() for _ in range(concurrency)))

    asyncio.run(main())


def run_pyrate(url: str, rate: float, burst: int, n: int, concurrency: int) -> None:
    import aiohttp
    from pyrate_limiter import Limiter, Rate

    async def main():
        limiter = Limiter(Rate(burst, int(round(1000 * burst / rate))))  # `burst` per burst/rate (ms)
        left = n
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
            async def worker():
                nonlocal left
                while left > 0:
                    left -= 1
                    await limiter.try_acquire_async("k")
                    async with s.get(url + "/v1/contacts?limit=1") as r:
                        await r.read()
            await asyncio.gather(*(worker() for _ in range(concurrency)))

    asyncio.run(main())


TOOLS = {"isthmus": run_isthmus, "aiolimiter": run_aiolimiter, "pyrate-limiter": run_pyrate}


def rate_rows(rates: list[float], seconds: float, concurrency: int) -> list[dict]:
    rows = []
    for rate in rates:
        burst = burst_for(rate)
        n = int(rate * seconds) + burst
        for tool, fn in TOOLS.items():
            if tool == "isthmus" and isthmus is None:
                continue
            with isthmus.Sandbox(rate_limit=rate, burst=burst, records=1000, max_arrivals=n + 10) as api:
                started = time.monotonic()
                try:
                    fn(api.url, rate, burst, n, concurrency)
                except ImportError as exc:
                    print(f"  {tool}: not installed ({exc})")
                    continue
                wall = time.monotonic() - started
                stats = api.stats()
            ok = [a["t"] for a in stats["arrivals"] if a["status"] == 200]
            span = (max(ok) - min(ok)) if len(ok) > 1 else float("nan")
            # A client that uses the burst at the start sends `burst` at once, then one per 1/rate.
            achieved = (len(ok) - burst) / span if span > 0 else float("nan")
            row = {"tool": tool, "case": f"rate {rate:g}/s (burst {burst})", "value": achieved,
                   "target": rate, "error_pct": (achieved - rate) / rate * 100, "status_429": stats["rate_limited"],
                   "requests": n, "accepted": len(ok), "wall_s": wall}
            rows.append(row)
            print(f"  {tool:15s} {rate:>6g}/s  achieved {achieved:9.2f}/s  error {row['error_pct']:+6.2f}%  "
                  f"429s {row['status_429']:5d}  ({len(ok)}/{n} accepted in {wall:.1f} s)", flush=True)
    return rows


# --- 3. adaptive against silent overload ------------------------------------------------------

def adaptive_rows(capacity: float, seconds: float, warmup: float, concurrency: int) -> list[dict]:
    if isthmus is None:
        return []
    n = int(capacity * seconds * 1.2)
    with isthmus.Sandbox(overload_capacity=capacity, overload_behavior="errors", records=1000,
                         max_arrivals=n + 10) as api:
        with isthmus.Client(api.url, rate_limit=isthmus.Adaptive(min=5, max=100_000),
                            max_connections=concurrency) as c:
            c.get_many(["/v1/contacts?limit=1"] * n, concurrency=concurrency, return_exceptions=True)
            snap = next(iter(c.limits_snapshot().values()))
        arrivals = api.stats()["arrivals"]
    t0 = arrivals[0]["t"]
    after = [a for a in arrivals if a["t"] >= t0 + warmup]
    span = after[-1]["t"] - after[0]["t"] if len(after) > 1 else float("nan")
    good = sum(1 for a in after if a["status"] == 200)
    errors = len(after) - good
    row = {"tool": "isthmus", "case": f"adaptive vs silent overload (C={capacity:g}/s, hidden)",
           "value": good / span / capacity, "goodput_per_s": good / span,
           "error_pct": errors / max(1, len(after)) * 100,
           "final_limit": snap["adaptive_limit"], "warmup_s": warmup, "requests": n}
    print(f"  adaptive: goodput {row['goodput_per_s']:.1f}/s = {row['value']:.3f} C, errors {row['error_pct']:.2f}% "
          f"after {warmup:g} s warm-up; limit ended at {snap['adaptive_limit']:.1f}", flush=True)
    return [row]


def told_nothing_rows(rate: float, burst: int, n: int, concurrency: int) -> list[dict]:
    if isthmus is None:
        return []
    with isthmus.Sandbox(rate_limit=rate, burst=burst, records=1000, max_arrivals=n * 2) as api:
        with isthmus.Client(api.url, retry=isthmus.Retry(attempts=5), max_connections=concurrency) as c:
            c.get_many(["/v1/contacts?limit=1"] * n, concurrency=concurrency, return_exceptions=True)
        stats = api.stats()
    ok = sorted(a["t"] for a in stats["arrivals"] if a["status"] == 200)
    achieved = (len(ok) - burst) / (ok[-1] - ok[0]) if len(ok) > 1 else float("nan")
    # Once the first wave's 429s (and their Retry-After) are past: the pace the headers give.
    last_429 = max((a["t"] for a in stats["arrivals"] if a["status"] == 429), default=ok[0])
    after = [t for t in ok if t > last_429]
    steady = (len(after) - 1) / (after[-1] - after[0]) if len(after) > 1 else float("nan")
    row = {"tool": "isthmus", "case": f"told nothing, sandbox {rate:g}/s (burst {burst})", "value": achieved,
           "target": rate, "error_pct": (achieved - rate) / rate * 100, "status_429": stats["rate_limited"],
           "requests": n, "accepted": len(ok), "after_first_wave_per_s": steady}
    print(f"  told nothing: achieved {achieved:.2f}/s of {rate:g}/s ({row['error_pct']:+.2f}%), "
          f"{steady:.2f}/s after the first wave, "
          f"429s {row['status_429']} ({len(ok)}/{n} accepted, concurrency {concurrency})", flush=True)
    return [row]


def leaky_bucket_rows(rate: int, warmup: float, seconds: float, concurrency: int) -> list[dict]:
    if isthmus is None:
        return []
    zone = f"limit_req_zone $server_port zone=bench:1m rate={rate}r/s; limit_req_status 429;"
    try:
        ng = Nginx({"/v1/ping": b'{"ok": true}'}, http_conf=zone,
                   location_conf="limit_req zone=bench burst=5 nodelay;")
        ng.__enter__()
    except Skip as exc:
        print(f"  skipped: {exc}")
        return []
    try:
        with isthmus.Client(ng.url, rate_limit=isthmus.Adaptive(min=1, max=10_000),
                            max_connections=concurrency) as c:
            c.get_many(["/v1/ping"] * int(rate * warmup), concurrency=concurrency, return_exceptions=True)
            n = int(rate * seconds)
            started = time.monotonic()
            answers = c.get_many(["/v1/ping"] * n, concurrency=concurrency, return_exceptions=True)
            wall = time.monotonic() - started
            limit = next(iter(c.limits_snapshot().values()))["adaptive_limit"]
    finally:
        ng.__exit__(None, None, None)
    ok = sum(1 for a in answers if getattr(a, "status_code", 0) == 200)
    refused = sum(1 for a in answers if getattr(a, "status_code", 0) == 429)
    row = {"tool": "isthmus", "case": f"adaptive vs nginx limit_req {rate}r/s burst=5 nodelay",
           "value": ok / wall / rate, "accepted_per_s": ok / wall, "refused_pct": refused / n * 100,
           "other_failures": n - ok - refused, "final_limit": limit, "warmup_s": warmup, "requests": n}
    print(f"  leaky bucket: accepted {row['accepted_per_s']:.1f}/s = {row['value']:.3f} x {rate}/s, "
          f"refused {row['refused_pct']:.2f}% after {warmup:g} s warm-up; limit ended at {limit:.1f}", flush=True)
    return [row]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    ap.add_argument("--rates", default="50,500,5000")
    ap.add_argument("--seconds", type=float, default=6.0, help="per rate-keeping run")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--capacity", type=float, default=300.0, help="hidden capacity for the adaptive run")
    ap.add_argument("--only", choices=["reserve", "rate", "adaptive", "told", "bucket"], help="run one part")
    args = ap.parse_args()
    if isthmus is None:
        print("isthmus is not installed: `make install` first", file=sys.stderr)
    seconds = 2.0 if args.quick else args.seconds
    rows: list[dict] = []
    if args.only in (None, "reserve"):
        print("cost of one reservation")
        rows += cpp_reserve_rows()
        rows += py_reserve_rows(50_000 if args.quick else 200_000)
        for r in rows:
            print(f"  {r['tool']:15s} {r['case']:50s} {r['ns_per_op']:9.0f} ns")
    if args.only in (None, "rate"):
        print("rate keeping against the sandbox (same rate and burst on both sides)")
        rows += rate_rows([float(x) for x in args.rates.split(",")], seconds, args.concurrency)
    if args.only in (None, "adaptive"):
        print("adaptive limit against silent overload")
        rows += adaptive_rows(args.capacity, 10.0 if args.quick else 30.0, 3.0 if args.quick else 10.0,
                              args.concurrency)
    if args.only in (None, "told"):
        print("a client told nothing, paced by the sandbox's rate-limit headers")
        rows += told_nothing_rows(40.0, 5, 200 if args.quick else 400, 8)
    if args.only in (None, "bucket"):
        print("adaptive limit against nginx's leaky bucket (limit_req, 429, no headers)")
        rows += leaky_bucket_rows(50, 5.0 if args.quick else 10.0, 10.0 if args.quick else 30.0,
                                  args.concurrency)
    path = write_results("limits", rows, unit="higher is better: reservations/s, accepted requests/s, goodput/C",
                         load_average=os.getloadavg()[0])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
