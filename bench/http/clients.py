"""One HTTP client per process: `python clients.py <tool> --url U --path P --total N ...`.

Each tool sends `total` keep-alive GETs of the same path with at most `concurrency` in flight,
reads every body in full and checks its status and length. After a short untimed warm-up (it
opens the connections) it times the rest and prints one JSON line:
{"requests", "errors", "elapsed_s", "cpu_s", "peak_rss_mb", "body_bytes"}.
Exit status 3 means the tool is not available here (message on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import EXIT_SKIP, read_self_usage  # noqa: E402


class Tally:
    """Counts responses that were not a 200 with the expected body length."""

    def __init__(self, expect_bytes: int) -> None:
        self.expect = expect_bytes
        self.errors = 0
        self.body_bytes = 0
        self.first_error: str | None = None

    def check(self, status: int, body: bytes) -> None:
        self.body_bytes += len(body)
        if status != 200 or (self.expect and len(body) != self.expect):
            self.errors += 1
            if self.first_error is None:
                self.first_error = f"status {status}, {len(body)} bytes (expected 200, {self.expect})"

    def fail(self, exc: BaseException) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"{type(exc).__name__}: {exc}"


def skip(reason: str) -> None:
    print(reason, file=sys.stderr)
    sys.exit(EXIT_SKIP)


class Phases:
    """Runs a warm-up batch (untimed, its own tally) and then the timed batch, on one client."""

    def __init__(self, warmup: int, total: int, expect_bytes: int) -> None:
        self.warmup, self.total = warmup, total
        self.tally = Tally(expect_bytes)
        self._warm_tally = Tally(expect_bytes)
        self.elapsed = self.cpu = 0.0

    def run(self, batch: Callable[[int, Tally], None]) -> None:
        if self.warmup:
            batch(self.warmup, self._warm_tally)
        before, t0 = read_self_usage(), time.perf_counter()
        batch(self.total, self.tally)
        self.elapsed = time.perf_counter() - t0
        self.cpu = read_self_usage()["cpu_s"] - before["cpu_s"]

    async def run_async(self, batch: Callable[[int, Tally], Any]) -> None:
        if self.warmup:
            await batch(self.warmup, self._warm_tally)
        before, t0 = read_self_usage(), time.perf_counter()
        await batch(self.total, self.tally)
        self.elapsed = time.perf_counter() - t0
        self.cpu = read_self_usage()["cpu_s"] - before["cpu_s"]


async def bounded(n: int, concurrency: int, tally: Tally, one: Callable[[], Any],
                  pattern: str = "workers") -> None:
    """Awaits one() n times with at most `concurrency` in flight.

    "workers": `concurrency` tasks, each taking the next request until none are left.
    "gather": asyncio.gather over n coroutines under a semaphore. Same concurrency, but it
    creates n tasks up front (~1 KB each), which shows in peak RSS at 100,000 requests and
    would be charged to the library rather than to the way the benchmark calls it.
    """

    async def guarded() -> None:
        try:
            await one()
        except Exception as exc:  # a failed request is counted, not fatal
            tally.fail(exc)

    if pattern == "gather":
        sem = asyncio.Semaphore(concurrency)

        async def gated() -> None:
            async with sem:
                await guarded()

        await asyncio.gather(*(gated() for _ in range(n)))
        return

    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1  # no await between the test and the claim, so no two tasks take one
            await guarded()

    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))


# ---------------------------------------------------------------------------------------------
# isthmus, sync and async. Its Python API is being built alongside this benchmark; these two
# functions are the only code that depends on it.

def _isthmus() -> Any:
    try:
        import isthmus
    except ImportError as exc:
        skip(f"isthmus is not importable ({exc}); build it with `make install`")
    return isthmus


def run_isthmus(a: argparse.Namespace, ph: Phases) -> None:
    isthmus = _isthmus()
    if not hasattr(isthmus, "Client"):
        skip("isthmus.Client is missing from this build")
    client = isthmus.Client(a.url)

    def batch(n: int, tally: Tally) -> None:
        for r in client.get_many([a.path] * n, concurrency=a.concurrency):
            tally.check(r.status_code, r.content)

    ph.run(batch)


def run_isthmus_async(a: argparse.Namespace, ph: Phases) -> None:
    isthmus = _isthmus()
    if not hasattr(isthmus, "AsyncClient"):
        skip("isthmus.AsyncClient is missing from this build")

    async def main() -> None:
        async with isthmus.AsyncClient(a.url) as client:
            async def batch(n: int, tally: Tally) -> None:
                async def one() -> None:
                    r = await client.get(a.path)
                    tally.check(r.status_code, r.content)

                await bounded(n, a.concurrency, tally, one, a.async_pattern)

            await ph.run_async(batch)

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------
# Python peers

def run_aiohttp(a: argparse.Namespace, ph: Phases) -> None:
    try:
        import aiohttp
    except ImportError:
        skip("aiohttp is not installed (pip install -r requirements-bench.txt)")
    url = a.url + a.path

    async def main() -> None:
        connector = aiohttp.TCPConnector(limit=a.concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def batch(n: int, tally: Tally) -> None:
                async def one() -> None:
                    async with session.get(url) as r:
                        tally.check(r.status, await r.read())

                await bounded(n, a.concurrency, tally, one, a.async_pattern)

            await ph.run_async(batch)

    asyncio.run(main())


def run_httpx(a: argparse.Namespace, ph: Phases) -> None:
    try:
        import httpx
    except ImportError:
        skip("httpx is not installed (pip install -r requirements-bench.txt)")

    async def main() -> None:
        limits = httpx.Limits(max_connections=a.concurrency, max_keepalive_connections=a.concurrency)
        async with httpx.AsyncClient(base_url=a.url, limits=limits) as client:
            async def batch(n: int, tally: Tally) -> None:
                async def one() -> None:
                    r = await client.get(a.path)  # reads the whole body
                    tally.check(r.status_code, r.content)

                await bounded(n, a.concurrency, tally, one, a.async_pattern)

            await ph.run_async(batch)

    asyncio.run(main())


def run_requests(a: argparse.Namespace, ph: Phases) -> None:
    try:
        import requests
        from requests.adapters import HTTPAdapter
    except ImportError:
        skip("requests is not installed (pip install -r requirements-bench.txt)")
    from concurrent.futures import ThreadPoolExecutor

    session = requests.Session()
    # The default pool keeps 10 connections; let each of the threads keep one alive.
    session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=a.concurrency, pool_block=True))
    url = a.url + a.path

    def batch(n: int, tally: Tally) -> None:
        tickets = itertools.count()
        lock = threading.Lock()

        def worker() -> None:
            while True:
                with lock:
                    if next(tickets) >= n:
                        return
                try:
                    r = session.get(url)
                    tally.check(r.status_code, r.content)
                except Exception as exc:
                    tally.fail(exc)

        # A thread per connection, each taking the next request until none are left.
        with ThreadPoolExecutor(max_workers=a.concurrency) as pool:
            for f in [pool.submit(worker) for _ in range(a.concurrency)]:
                f.result()

    ph.run(batch)


TOOLS: dict[str, Callable[[argparse.Namespace, Phases], None]] = {
    "isthmus": run_isthmus,
    "isthmus-async": run_isthmus_async,
    "aiohttp": run_aiohttp,
    "httpx": run_httpx,
    "requests": run_requests,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tool", choices=sorted(TOOLS))
    p.add_argument("--url", required=True, help="base URL, http://127.0.0.1:<port>")
    p.add_argument("--path", default="/json")
    p.add_argument("--total", type=int, default=100_000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--warmup", type=int, default=0, help="untimed requests sent first")
    p.add_argument("--async-pattern", choices=["workers", "gather"], default="workers",
                   help="how the asyncio clients bound concurrency (see bounded())")
    p.add_argument("--expect-bytes", type=int, default=0, help="body length every response must have")
    a = p.parse_args()
    if not a.url.startswith(("http://127.0.0.1", "http://[::1]")):
        p.error("benchmarks talk to loopback only")

    ph = Phases(a.warmup, a.total, a.expect_bytes)
    TOOLS[a.tool](a, ph)
    print(json.dumps({
        "requests": a.total, "errors": ph.tally.errors, "first_error": ph.tally.first_error,
        "elapsed_s": round(ph.elapsed, 4), "cpu_s": round(ph.cpu, 4),
        "peak_rss_mb": read_self_usage()["peak_rss_mb"], "body_bytes": ph.tally.body_bytes,
    }))


if __name__ == "__main__":
    main()
