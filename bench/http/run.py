"""HTTP client throughput: the same keep-alive GETs of one small JSON document, per tool.

Servers: (a) nginx serving the document as a static file, (b) isthmus.Sandbox's GET /json.
Tools, in order: wrk (the ceiling), isthmus, isthmus-async, aiohttp, httpx, requests. Each
client runs in its own process so its CPU time and peak RSS are its own.

    python bench/http/run.py                 # defaults: 100,000 requests, 64 in flight
    python bench/http/run.py --quick         # a smoke test in well under a minute
    python bench/http/run.py --total-of httpx=20000 --servers nginx
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402
from common import EXIT_SKIP, Nginx, Skip  # noqa: E402

NAME = "http"
TOOLS = ["wrk", "isthmus", "isthmus-async", "aiohttp", "httpx", "requests"]
SERVERS = ["nginx", "sandbox"]
PATH = "/json"
# Tools too slow for 100,000 requests in a reasonable time on one core; the row says so.
SLOW_TOTALS = {"httpx": 10_000, "requests": 20_000}


def document() -> bytes:
    """A ~400-byte JSON record, the size of a typical SaaS list item."""
    record = {
        "id": "cus_8f14e45fceea167a",
        "object": "customer",
        "created": 1700000000,
        "email": "ada.lovelace@example.com",
        "name": "Ada Lovelace",
        "currency": "eur",
        "balance": 0,
        "delinquent": False,
        "address": {"line1": "12 St James's Square", "city": "London", "postal_code": "SW1Y 4JH",
                    "country": "GB"},
        "metadata": {"plan": "growth", "seats": "25", "region": "eu-west"},
        "tags": ["b2b", "annual", "priority"],
        "updated": "2024-11-28T17:17:00Z",
    }
    return json.dumps(record, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------------------
# Servers

def nginx_server(stack: ExitStack) -> str:
    return stack.enter_context(Nginx({PATH: document()})).url


def sandbox_server(stack: ExitStack) -> str:
    try:
        import isthmus
    except ImportError as exc:
        raise Skip(f"isthmus is not importable ({exc}); build it with `make install`") from exc
    if not hasattr(isthmus, "Sandbox"):
        raise Skip("isthmus.Sandbox is missing from this build")
    # The sandbox serves from its own C++ threads; this process only waits on clients.
    return stack.enter_context(isthmus.Sandbox()).url


def body_length(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as r:
        if r.status != 200:
            raise Skip(f"GET {url} answered {r.status}")
        return len(r.read())


# ---------------------------------------------------------------------------------------------
# Tools

def run_wrk(url: str, a: argparse.Namespace) -> dict[str, Any]:
    exe = shutil.which("wrk")
    if exe is None:
        raise Skip("wrk not found (Debian: apt-get install wrk)")
    run = common.run_client([exe, "-t1", f"-c{a.concurrency}", f"-d{a.wrk_duration}s", url + PATH])
    if run.returncode != 0:
        raise RuntimeError(f"wrk exited {run.returncode}: {run.stderr.strip() or run.stdout.strip()}")
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", run.stdout)
    rate = re.search(r"Requests/sec:\s*([\d.]+)", run.stdout)
    if not done or not rate:
        raise RuntimeError(f"cannot read wrk's output:\n{run.stdout}")
    total = int(done.group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", run.stdout)
    sock = re.search(r"Socket errors:\s*(.*)", run.stdout)
    row = {
        "value": round(float(rate.group(1)), 1),
        "requests": total,
        "errors": int(bad.group(1)) if bad else 0,
        # wrk has no start-up worth speaking of, so its whole-process CPU is the timed CPU.
        "cpu_s": round(run.cpu_s, 3),
        "cpu_s_per_1k": round(run.cpu_s / total * 1000, 4),
        "peak_rss_mb": run.peak_rss_mb,
        "duration_s": a.wrk_duration,
    }
    if sock:
        row["socket_errors"] = sock.group(1).strip()
    return row


def run_python_client(tool: str, url: str, a: argparse.Namespace, total: int, expect: int,
                      warmup: int | None = None) -> dict[str, Any]:
    argv = [sys.executable, str(HERE / "clients.py"), tool, "--url", url, "--path", PATH,
            "--total", str(total), "--concurrency", str(a.concurrency),
            "--warmup", str(a.warmup if warmup is None else warmup), "--expect-bytes", str(expect),
            "--async-pattern", a.async_pattern]
    run = common.run_client(argv, timeout=a.timeout)
    if run.returncode == EXIT_SKIP:
        raise Skip(run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "not available")
    if run.returncode != 0 or not run.report:
        tail = "\n".join(run.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{tool} exited {run.returncode}:\n{tail}")
    rep = run.report
    row = {
        "value": round(rep["requests"] / rep["elapsed_s"], 1),
        "requests": rep["requests"],
        "errors": rep["errors"],
        "elapsed_s": rep["elapsed_s"],
        "cpu_s": rep["cpu_s"],  # the timed section only, all threads
        "cpu_s_per_1k": round(rep["cpu_s"] / rep["requests"] * 1000, 4),
        "cpu_s_process": round(run.cpu_s, 3),  # start-up, imports and warm-up included
        "peak_rss_mb": rep["peak_rss_mb"],
    }
    if rep.get("first_error"):
        row["first_error"] = rep["first_error"]
    return row


def total_for(tool: str, a: argparse.Namespace) -> int:
    return a.total_of.get(tool, min(a.total, SLOW_TOTALS.get(tool, a.total)))


# ---------------------------------------------------------------------------------------------

def bench_server(server: str, url: str, a: argparse.Namespace, rows: list, skipped: list,
                 failed: list) -> None:
    """Runs every tool against one server, appending to rows, skipped and failed."""
    expect = body_length(url + PATH)
    print(f"\n== {server} at {url}{PATH} ({expect} bytes), {a.concurrency} in flight", flush=True)
    for tool in a.tools:
        total = total_for(tool, a)
        label = f"{a.wrk_duration}s" if tool == "wrk" else f"{total:,} requests"
        print(f"  {tool:<14} {label} ...", end=" ", flush=True)
        try:
            result = run_wrk(url, a) if tool == "wrk" else run_python_client(tool, url, a, total, expect)
        except Skip as exc:
            print(f"skipped: {exc}", flush=True)
            skipped.append({"tool": tool, "server": server, "reason": str(exc)})
            continue
        except Exception as exc:  # one broken tool must not lose the others' numbers
            print(f"FAILED: {exc}", flush=True)
            failed.append({"tool": tool, "server": server, "error": str(exc)})
            continue
        row = {"tool": tool, "server": server, **result, "concurrency": a.concurrency}
        notes = []
        if tool != "wrk" and total < a.total:
            notes.append(f"{total:,} requests only (slow)")
        if row.get("errors"):
            notes.append(f"{row['errors']} errors")
        if notes:
            row["note"] = "; ".join(notes)
        rows.append(row)
        print(f"{row['value']:,.0f} req/s", flush=True)


def flat_memory(url: str, a: argparse.Namespace, expect: int) -> dict[str, Any]:
    """Peak RSS at two batch sizes: get_many (keeps every response it returns) and iter_many
    (streams them), to show how memory grows with the number of requests."""
    out: dict[str, Any] = {"server": "nginx", "runs": []}
    for tool, how in (("isthmus", "get_many"), ("isthmus-iter", "iter_many")):
        runs = []
        for n in a.flat_memory:
            print(f"  isthmus {how} {n:,} requests, peak RSS ...", end=" ", flush=True)
            row = run_python_client(tool, url, a, n, expect, warmup=0)
            runs.append({"tool": f"{tool}-{n / 1000:g}k-rss", "requests": n,
                         "peak_rss_mb": row["peak_rss_mb"], "value": row["value"]})
            print(f"{row['peak_rss_mb']} MB", flush=True)
        out["runs"] += runs
        if len(runs) >= 2 and runs[-1]["requests"] > runs[0]["requests"]:
            grown = runs[-1]["peak_rss_mb"] - runs[0]["peak_rss_mb"]
            out[f"{how}_growth_mb"] = round(grown, 1)
            out[f"{how}_growth_bytes_per_request"] = round(
                grown * 1024 * 1024 / (runs[-1]["requests"] - runs[0]["requests"]))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", "-c", type=int, default=64, help="requests in flight (default 64)")
    p.add_argument("--total", "-n", type=int, default=100_000, help="requests per tool (default 100,000)")
    p.add_argument("--total-of", action="append", default=[], metavar="TOOL=N",
                   help="requests for one tool; defaults: " + ", ".join(f"{k}={v:,}" for k, v in SLOW_TOTALS.items()))
    p.add_argument("--warmup", type=int, default=None, help="untimed requests first (default 4 x concurrency)")
    p.add_argument("--async-pattern", choices=["workers", "gather"], default="workers",
                   help="asyncio clients: 64 worker tasks (default) or gather of every request "
                        "under a semaphore")
    p.add_argument("--wrk-duration", type=int, default=5, help="seconds wrk runs (default 5)")
    p.add_argument("--tools", default=",".join(TOOLS), help="comma-separated, from: " + ",".join(TOOLS))
    p.add_argument("--servers", default=",".join(SERVERS), help="comma-separated, from: " + ",".join(SERVERS))
    p.add_argument("--flat-memory", default="10000,100000",
                   help="isthmus get_many sizes whose peak RSS to compare ('' to skip)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before a client is killed")
    p.add_argument("--quick", action="store_true", help="small counts for a smoke test")
    a = p.parse_args(argv)
    if a.quick:
        a.total, a.wrk_duration = min(a.total, 5_000), min(a.wrk_duration, 2)
        a.flat_memory = "2000,10000" if a.flat_memory == "10000,100000" else a.flat_memory
        SLOW_TOTALS.update(httpx=1_000, requests=2_000)
    a.warmup = 4 * a.concurrency if a.warmup is None else a.warmup
    a.tools = [t for t in a.tools.split(",") if t]
    a.servers = [s for s in a.servers.split(",") if s]
    for name, allowed in (("tool", TOOLS), ("server", SERVERS)):
        for v in getattr(a, name + "s"):
            if v not in allowed:
                p.error(f"unknown {name} {v!r}; valid: {', '.join(allowed)}")
    totals = {}
    for item in a.total_of:
        tool, _, n = item.partition("=")
        if tool not in TOOLS or not n.isdigit():
            p.error(f"--total-of {item!r}: expected TOOL=N with TOOL one of {', '.join(TOOLS)}")
        totals[tool] = int(n)
    a.total_of = totals
    a.flat_memory = [int(x) for x in a.flat_memory.split(",") if x.strip()]
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    machine = common.machine_info()
    machine.update(nginx=common.nginx_version(), wrk=common.wrk_version())
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    flat: dict[str, Any] | None = None
    starters = {"nginx": nginx_server, "sandbox": sandbox_server}

    for server in a.servers:
        with ExitStack() as stack:
            try:
                url = starters[server](stack)
            except Skip as exc:
                print(f"\n== {server}: skipped: {exc}", flush=True)
                skipped.append({"tool": "*", "server": server, "reason": str(exc)})
                continue
            bench_server(server, url, a, rows, skipped, failed)
            if server == "nginx" and a.flat_memory and "isthmus" in a.tools:
                try:
                    flat = flat_memory(url, a, body_length(url + PATH))
                except Skip as exc:
                    print(f"skipped: {exc}", flush=True)
                    flat = {"skipped": str(exc)}
                except Exception as exc:
                    print(f"FAILED: {exc}", flush=True)
                    flat = {"failed": str(exc)}
        # Leaving the block stopped that server before the next one starts.

    for server in a.servers:
        mine = [r for r in rows if r["server"] == server]
        if mine:
            common.print_table(f"{server}: {a.concurrency} in flight, body {len(document())} B"
                               if server == "nginx" else f"{server}: {a.concurrency} in flight",
                               mine, references=("wrk", "aiohttp"))
    if flat and flat.get("runs"):
        print("\nflat memory against nginx (get_many returns every response; iter_many streams):")
        for r in flat["runs"]:
            print(f"  {r['tool']:<18} {r['requests']:>9,} requests  peak RSS {r['peak_rss_mb']:>7.1f} MB")
        for how in ("get_many", "iter_many"):
            if f"{how}_growth_bytes_per_request" in flat:
                print(f"  {how} growth: {flat[how + '_growth_mb']} MB, "
                      f"{flat[how + '_growth_bytes_per_request']} B per extra request")
    for s in skipped:
        print(f"skipped {s['tool']} on {s['server']}: {s['reason']}")
    for f in failed:
        print(f"FAILED {f['tool']} on {f['server']}: {f['error']}")

    settings = {"concurrency": a.concurrency, "total": a.total, "path": PATH, "warmup": a.warmup,
                "wrk_duration_s": a.wrk_duration, "async_pattern": a.async_pattern, "body_bytes_nginx": len(document()),
                "totals": {t: total_for(t, a) for t in a.tools if t != "wrk"}}
    path = common.write_results(NAME, rows, machine=machine, settings=settings, skipped=skipped,
                                failed=failed, flat_memory=flat)
    print(f"\nwrote {path.relative_to(HERE.parent.parent)}")
    return 1 if failed else 0



if __name__ == "__main__":
    common.run_main(main, "servers and clients")
