"""Sandbox server throughput: wrk against isthmus.Sandbox and against nginx serving the same bytes.

The sandbox issue's target: at least 50,000 small GETs/s, and at least 0.5x nginx, on this
machine. The sandbox (records=1,000,000, N I/O threads) runs inside this process; nginx runs
with N workers and serves, for every path, the exact body the sandbox sent for it, under the
same path and query string. wrk drives each server and path in turn, one at a time.

    python bench/sandbox/run.py                    # defaults: 1 server thread, wrk -t1 -c64 -d5s
    python bench/sandbox/run.py --threads 2 --wrk-threads 2
    python bench/sandbox/run.py --quick            # a smoke test in well under a minute
    python bench/sandbox/run.py --rounds 3         # each pair 3 times, alternating; median kept
"""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import sys
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402
from common import Nginx, Skip  # noqa: E402

NAME = "sandbox"
SERVERS = ["sandbox", "nginx"]
PATHS = ["/json", "/v1/contacts?limit=1", "/v1/contacts?limit=20"]
# The target, for small GETs; a 20-record page is measured but not held to it.
TARGET_RPS = 50_000
TARGET_VS_NGINX = 0.5
SMALL = {"/json", "/v1/contacts?limit=1"}

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


# ---------------------------------------------------------------------------------------------
# Servers

def start_sandbox(stack: ExitStack, a: argparse.Namespace):
    try:
        import isthmus
    except ImportError as exc:
        raise Skip(f"isthmus is not importable ({exc}); build it with `make install`") from exc
    if not hasattr(isthmus, "Sandbox"):
        raise Skip("isthmus.Sandbox is missing from this build")
    # Serves from its own C++ threads; this process only waits on wrk while it runs.
    return stack.enter_context(isthmus.Sandbox(records=a.records, threads=a.threads))


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        if r.status != 200:
            raise RuntimeError(f"GET {url} answered {r.status}")
        return r.read()


def sandbox_bodies(url: str, paths: list[str]) -> dict[str, bytes]:
    """Each path's body from the sandbox, fetched twice to be sure it does not change."""
    bodies = {}
    for path in paths:
        body = fetch(url + path)
        if fetch(url + path) != body:
            raise RuntimeError(f"the sandbox's {path} differs between two GETs; nginx could not "
                               f"serve the same bytes")
        bodies[path] = body
    return bodies


def check_same_bytes(url: str, bodies: dict[str, bytes]) -> None:
    for path, body in bodies.items():
        got = fetch(url + path)
        if got != body:
            raise RuntimeError(f"nginx's {path} is {len(got)} bytes, not the sandbox's {len(body)}")


def own_cpu_s() -> float:
    """This process's CPU: the sandbox's threads, plus a harness that sleeps while wrk runs."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# ---------------------------------------------------------------------------------------------
# wrk

def wrk_exe() -> str:
    exe = shutil.which("wrk")
    if exe is None:
        raise Skip("wrk not found (Debian: apt-get install wrk)")
    return exe


def _ms(number: str, unit: str) -> float:
    return round(float(number) * _UNITS[unit], 3)


def run_wrk(exe: str, url: str, a: argparse.Namespace, duration: int) -> dict[str, Any]:
    argv = [exe, f"-t{a.wrk_threads}", f"-c{a.connections}", f"-d{duration}s", "--latency", url]
    run = common.run_client(argv, timeout=duration + 60)
    if run.returncode != 0:
        raise RuntimeError(f"wrk exited {run.returncode}: {run.stderr.strip() or run.stdout.strip()}")
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", run.stdout)
    rate = re.search(r"Requests/sec:\s*([\d.]+)", run.stdout)
    if not done or not rate:
        raise RuntimeError(f"cannot read wrk's output:\n{run.stdout}")
    row: dict[str, Any] = {"value": round(float(rate.group(1)), 1), "requests": int(done.group(1))}
    # --latency prints the distribution: "     50%  512.00us" ... "     99%    2.10ms".
    for pct in ("50", "99"):
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", run.stdout, re.M)
        if m:
            row[f"p{pct}_ms"] = _ms(*m.groups())
    bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", run.stdout)
    row["errors"] = int(bad.group(1)) if bad else 0
    sock = re.search(r"Socket errors:\s*(.*)", run.stdout)
    if sock:
        row["socket_errors"] = sock.group(1).strip()
    row["wrk_cpu_s"] = round(run.cpu_s, 3)
    return row


def measure(exe: str, base: str, path: str, a: argparse.Namespace,
            server_cpu: Callable[[], float]) -> dict[str, Any]:
    """An untimed warm-up, then the timed wrk run, with the server's CPU read around it."""
    if a.warmup:
        run_wrk(exe, base + path, a, a.warmup)
    before = server_cpu()
    row = run_wrk(exe, base + path, a, a.duration)
    used = server_cpu() - before
    row["server_cpu_s"] = round(used, 3)
    row["server_cpu_s_per_1k"] = round(used / row["requests"] * 1000, 4) if row["requests"] else None
    return row


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median requests/s (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: r["value"])
    row = dict(ordered[(len(ordered) - 1) // 2])
    if len(runs) > 1:
        row["rounds"] = [r["value"] for r in runs]
    return row


# ---------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1,
                   help="sandbox I/O threads, and nginx worker_processes (default 1)")
    p.add_argument("--records", type=int, default=1_000_000, help="sandbox records (default 1,000,000)")
    p.add_argument("-c", "--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("-t", "--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument("-d", "--duration", type=int, default=5, help="seconds each timed wrk run lasts (default 5)")
    p.add_argument("--warmup", type=int, default=1,
                   help="seconds of untimed wrk before each timed run (default 1; 0 for none)")
    p.add_argument("--rounds", type=int, default=1,
                   help="timed runs per server and path, alternating servers; the median is kept (default 1)")
    p.add_argument("--paths", default=",".join(PATHS), help="comma-separated (default: %(default)s)")
    p.add_argument("--servers", default=",".join(SERVERS), help="comma-separated, from: " + ",".join(SERVERS))
    p.add_argument("--quick", action="store_true", help="2-second runs, no warm-up: a smoke test")
    a = p.parse_args(argv)
    if a.quick:
        a.duration, a.warmup, a.rounds = min(a.duration, 2), 0, 1
    a.paths = [x for x in a.paths.split(",") if x]
    a.servers = [x for x in a.servers.split(",") if x]
    for s in a.servers:
        if s not in SERVERS:
            p.error(f"unknown server {s!r}; valid: {', '.join(SERVERS)}")
    if not a.paths or any(not x.startswith("/") for x in a.paths):
        p.error("--paths: each path starts with '/'")
    for name in ("threads", "connections", "wrk_threads", "duration", "rounds"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if a.connections < a.wrk_threads:
        p.error("wrk needs at least as many connections as threads")
    return a


def verdict(path: str, rows: dict[str, dict[str, Any]]) -> str:
    sb, ng = rows.get("sandbox"), rows.get("nginx")
    if sb is None:
        return "no sandbox number"
    r = common.ratio(sb["value"], ng["value"]) if ng else None
    if path not in SMALL:
        return f"{r:.2f}x nginx (a page; not held to the small-GET target)" if r else "a page; no target"
    parts = [f"{sb['value']:,.0f} req/s {'>=' if sb['value'] >= TARGET_RPS else '<'} {TARGET_RPS:,}"]
    if r is not None:
        parts.append(f"{r:.2f}x nginx {'>=' if r >= TARGET_VS_NGINX else '<'} {TARGET_VS_NGINX}x")
    met = sb["value"] >= TARGET_RPS and (r is None or r >= TARGET_VS_NGINX)
    return ("target met: " if met else "target MISSED: ") + ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    machine = common.machine_info()
    machine.update(nginx=common.nginx_version(), wrk=common.wrk_version())
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    bodies: dict[str, bytes] = {}

    with ExitStack() as stack:
        try:
            exe = wrk_exe()
            # The sandbox is needed even for nginx-only runs: it supplies the bytes.
            sandbox = start_sandbox(stack, a)
            bodies = sandbox_bodies(sandbox.url, a.paths)
        except Skip as exc:
            print(f"skipped: {exc}", flush=True)
            skipped.append({"tool": "*", "path": "*", "reason": str(exc)})
            exe = None
        servers: dict[str, tuple[str, Callable[[], float]]] = {}
        if exe is not None:
            if "sandbox" in a.servers:
                servers["sandbox"] = (sandbox.url, own_cpu_s)
            if "nginx" in a.servers:
                try:
                    ng = stack.enter_context(Nginx(bodies, workers=a.threads))
                    check_same_bytes(ng.url, bodies)
                    servers["nginx"] = (ng.url, ng.cpu_seconds)
                except Skip as exc:
                    print(f"nginx skipped: {exc}", flush=True)
                    skipped.append({"tool": "nginx", "path": "*", "reason": str(exc)})
        print(f"\n== wrk -t{a.wrk_threads} -c{a.connections} -d{a.duration}s"
              f"{f' (after {a.warmup}s warm-up)' if a.warmup else ''}; sandbox threads={a.threads}, "
              f"records={a.records:,}; nginx worker_processes={a.threads}", flush=True)
        for path in a.paths if servers else []:
            runs: dict[str, list[dict[str, Any]]] = {s: [] for s in servers}
            print(f"  {path} ({len(bodies[path]):,} bytes)", flush=True)
            for rnd in range(a.rounds):
                # Alternate who goes first so a drifting machine load does not favour one side.
                order = list(servers) if rnd % 2 == 0 else list(reversed(servers))
                for server in order:
                    base, cpu = servers[server]
                    print(f"    {server:<8} ...", end=" ", flush=True)
                    try:
                        row = measure(exe, base, path, a, cpu)
                    except Exception as exc:  # keep the other rows' numbers
                        print(f"FAILED: {exc}", flush=True)
                        failed.append({"tool": server, "path": path, "error": str(exc)})
                        continue
                    runs[server].append(row)
                    print(f"{row['value']:,.0f} req/s, p50 {row.get('p50_ms', '-')} ms, "
                          f"p99 {row.get('p99_ms', '-')} ms", flush=True)
            for server in servers:
                if not runs[server]:
                    continue
                row = {"tool": server, "path": path, **median_row(runs[server]),
                       "body_bytes": len(bodies[path]), "connections": a.connections}
                if row.get("errors") or row.get("socket_errors"):
                    row["note"] = "; ".join(x for x in (f"{row['errors']} non-2xx" if row["errors"] else "",
                                                        row.get("socket_errors", "")) if x)
                rows.append(row)
        # Leaving the block stops nginx and the sandbox.

    columns = (("p50 ms", "p50_ms", 3), ("p99 ms", "p99_ms", 3),
               ("server cpu s/1k", "server_cpu_s_per_1k", 4), ("requests", "requests", 0))
    verdicts = {}
    for path in a.paths:
        mine = [r for r in rows if r["path"] == path]
        if not mine:
            continue
        common.print_table(f"{path}: {len(bodies[path]):,} B body, wrk -t{a.wrk_threads} "
                           f"-c{a.connections} -d{a.duration}s, {a.threads} server thread(s)",
                           mine, references=("nginx",), columns=columns)
        verdicts[path] = verdict(path, {r["tool"]: r for r in mine})
        print(f"  {verdicts[path]}")
    for s in skipped:
        print(f"skipped {s['tool']}: {s['reason']}")
    for f in failed:
        print(f"FAILED {f['tool']} on {f['path']}: {f['error']}")

    settings = {"threads": a.threads, "nginx_workers": a.threads, "records": a.records,
                "connections": a.connections, "wrk_threads": a.wrk_threads, "duration_s": a.duration,
                "warmup_s": a.warmup, "rounds": a.rounds, "paths": a.paths,
                "body_bytes": {p: len(b) for p, b in bodies.items()},
                "target": {"requests_per_s": TARGET_RPS, "vs_nginx": TARGET_VS_NGINX,
                           "paths": sorted(SMALL & set(a.paths))}}
    out = common.write_results(NAME, rows, machine=machine, settings=settings, verdicts=verdicts,
                               skipped=skipped, failed=failed)
    print(f"\nwrote {out.relative_to(HERE.parent.parent)}")
    return 1 if failed else 0



if __name__ == "__main__":
    common.run_main(main, "servers and wrk")
