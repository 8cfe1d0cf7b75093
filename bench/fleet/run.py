"""A fleet: many customers of one integration sharing one app allowance, side by side with an
asyncio peer.

`fairness`: N connections against one multi-tenant sandbox with an app limit (default 100
requests/s, burst 10): one connection with `--big` records (default 1,000,000) and N-1 with
`--small` (default 1,000), every connection read over 4 time-slice partitions, pages of 100,
into a JSONL file per connection. Reported from the sandbox's own arrival log: Jain's fairness
index of the requests per connection over the busy period (from the first request until the
first connection finishes: every connection has work then; target >= 0.9), the seconds until
every small connection has finished (they must not wait for the big one), the achieved app
rate over the run (target >= 0.95 of the limit) and its 429s (target 0), and the CPU per
request of the process that ran the connections.

The peer is what a capable engineer writes instead: asyncio and aiohttp, one shared
`aiolimiter.AsyncLimiter` paced like the sandbox (10 per 0.1 s), every customer's partitions
as chains at once with at most 2 requests in flight per customer, a 429 waiting out its
Retry-After, each page's records appended to the customer's JSONL file as they come.

`revoked`: the same fleet again, one small customer revoking the app's access a second in:
it goes `relink_needed` and the others' records/s changes by less than 5% (target).

`capped`: 10 connections with plenty of records, one of them capped at 10/s inside the app's
100/s (`Connection(limit=RateLimit(10, burst=2))`), run for `--cap-seconds`: over the steady window
(the first 20% and the last 10% left out) the capped one stays within 1% of 10/s and the
others together get at least 88/s.

Each measured side runs in a child process (so its CPU is its own, not the sandbox's).

    python bench/fleet/run.py                  # 100 connections, the full fleet (about 2 minutes)
    python bench/fleet/run.py --quick          # 20 small connections, under a minute
    make bench B=fleet
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402

NAME = "fleet"
PAGE = 100
SLICES = 4
START, END = "2024-01-01", "2025-01-01"
IN_FLIGHT = 2
COLUMNS = (("fairness", "fairness", 3), ("small done s", "small_done_s", 1), ("all done s", "done_s", 1),
           ("rate / limit", "rate_share", 3), ("429s", "status_429", 0), ("requests", "requests", 0),
           ("CPU ms/request", "cpu_ms", 3), ("capped /s", "capped_rate", 2), ("others /s", "others_rate", 1),
           ("others' change %", "others_change_pct", 2))


# -- the measured sides, each run as a child process -----------------------------------------

def _slices() -> list[dict]:
    import isthmus

    every = (366 * 86400) / SLICES
    return list(isthmus.TimeSlices(START, END, every=every))


def child_fleet(spec: dict) -> dict:
    """The connections as an isthmus Fleet in this process."""
    import isthmus

    os.environ.setdefault("ISTHMUS_TOKEN_KEY", isthmus.TokenStore.generate_key())
    out = Path(spec["out"])

    def contacts(connection):
        client = connection.client(connection.config["base_url"],
                                   auth=isthmus.ApiKey(connection.credentials["api_key"], header="X-API-Key"))
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(),
                                params={"limit": PAGE}, partitions=isthmus.TimeSlices(START, END,
                                                                                      every=366 * 86400 / SLICES))
        sink = isthmus.JsonlSink(out / f"{connection.connection_id}.jsonl", fsync=False)
        return connection.pipeline(stream, sink=sink)

    integration = isthmus.Integration(contacts, name="contacts", config=["base_url"], credentials=["api_key"])
    fleet = isthmus.Fleet(str(out / "fleet.db"), app_limit=isthmus.RateLimit(spec["limit"], burst=spec["burst"]),
                          max_in_flight=IN_FLIGHT)
    for i, key in enumerate(spec["keys"]):
        cap = spec.get("caps", {}).get(str(i))
        limit = isthmus.RateLimit(cap["rate"], burst=cap["burst"]) if cap else None
        fleet.add(isthmus.Connection(f"customer-{i:03d}", integration, credentials={"api_key": key},
                                     config={"base_url": spec["url"]}, limit=limit))
    if spec.get("seconds"):
        threading.Timer(spec["seconds"], fleet.stop).start()
    c0, t0 = _cpu(), time.time()
    result = fleet.run()
    wall, cpu = time.time() - t0, _cpu() - c0
    status = fleet.status()
    written = {row["connection_id"]: int(row["written"]) for _, row in status.iterrows()}
    failed = result.failed if not spec.get("seconds") else []
    fleet.close()
    return {"t0": t0, "wall_s": wall, "cpu_s": cpu, "written": written, "failed": failed}


def child_peer(spec: dict) -> dict:
    """The same connections with asyncio, aiohttp and aiolimiter."""
    import asyncio

    import aiohttp
    from aiolimiter import AsyncLimiter

    out = Path(spec["out"])
    slices = _slices()

    async def customer(i: int, key: str, session, limiter) -> int:
        gate = asyncio.Semaphore(IN_FLIGHT)
        written = 0
        with open(out / f"peer-{i:03d}.jsonl", "w") as f:
            async def chain(params: dict) -> None:
                nonlocal written
                cursor = None
                while True:
                    q = {"limit": PAGE, **params, **({"cursor": cursor} if cursor else {})}
                    while True:
                        async with gate:
                            async with limiter:
                                async with session.get(f"{spec['url']}/v1/contacts", params=q,
                                                       headers={"X-API-Key": key}) as r:
                                    if r.status == 429:
                                        wait = float(r.headers.get("Retry-After", "1"))
                                        body = None
                                    else:
                                        r.raise_for_status()
                                        body = await r.json()
                        if body is not None:
                            break
                        await asyncio.sleep(wait)
                    for rec in body["data"]:
                        f.write(json.dumps(rec) + "\n")
                    written += len(body["data"])
                    cursor = body["meta"].get("next_cursor")
                    if not cursor:
                        return
            await asyncio.gather(*(chain(p) for p in slices))
        return written

    async def main() -> dict:
        limiter = AsyncLimiter(spec["burst"], spec["burst"] / spec["limit"])
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as session:
            counts = await asyncio.gather(*(customer(i, k, session, limiter) for i, k in enumerate(spec["keys"])))
        return {f"customer-{i:03d}": n for i, n in enumerate(counts)}

    c0, t0 = _cpu(), time.time()
    written = asyncio.run(main())
    return {"t0": t0, "wall_s": time.time() - t0, "cpu_s": _cpu() - c0, "written": written, "failed": []}


def _cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def _child(side: str, spec: dict, tmp: Path) -> dict:
    spec_path = tmp / f"{side}-spec.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, __file__, "--child", side, str(spec_path)], capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- what the sandbox saw ----------------------------------------------------------------------

def _arrivals(api, t0: float, t1: float) -> list[dict]:
    return [a for a in api.stats()["arrivals"] if t0 <= a["t"] <= t1 and a["endpoint"] == "GET /v1/contacts"]


def jain(xs: list[float]) -> float:
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs)) if xs and any(xs) else 0.0


def fairness_row(tool: str, api, run: dict, records: list[int], limit: float) -> dict:
    arr = _arrivals(api, run["t0"], run["t0"] + run["wall_s"] + 1)
    n = len(records)
    by_tenant: dict[int, list[float]] = {i: [] for i in range(n)}
    for a in arr:
        by_tenant[a["tenant"]].append(a["t"])
    first = min(a["t"] for a in arr)
    last_of = {i: max(ts) for i, ts in by_tenant.items() if ts}
    busy_end = min(last_of.values())  # the first connection to finish: until then all have work
    share = [sum(1 for t in by_tenant[i] if t <= busy_end) for i in range(n)]
    small_done = max(last_of[i] for i in range(1, n)) - first
    done = max(last_of.values()) - first
    requests = len(arr)
    lost = sum(records) - sum(run["written"].values())
    return {"tool": tool, "value": round(requests / done, 1) if done else None, "fairness": round(jain(share), 3),
            "small_done_s": round(small_done, 2), "done_s": round(done, 2),
            "rate_share": round(requests / done / limit, 3) if done else None,
            "status_429": sum(1 for a in arr if a["status"] == 429), "requests": requests,
            "cpu_ms": round(1000 * run["cpu_s"] / max(requests, 1), 3), "busy_s": round(busy_end - first, 2),
            "lost": lost, "note": f"{n} connections: 1 x {records[0]:,} records, {n - 1} x {records[1]:,}"}


def revoked_row(api, run: dict, baseline: dict, records: list[int], revoked: int, limit: float) -> dict:
    """The others' throughput (records/s over the time they took) beside the fleet's first run."""
    arr = _arrivals(api, run["t0"], run["t0"] + run["wall_s"] + 1)
    first = min(a["t"] for a in arr)
    done = max(a["t"] for a in arr if a.get("tenant", revoked) != revoked) - first
    others = sum(r for i, r in enumerate(records) if i != revoked)
    rate = others / done
    base = others / baseline["done_s"]
    return {"tool": "isthmus Fleet, one revoked", "value": round(len(arr) / done, 1), "done_s": round(done, 2),
            "status_429": sum(1 for a in arr if a["status"] == 429), "requests": len(arr),
            "cpu_ms": round(1000 * run["cpu_s"] / max(len(arr), 1), 3),
            "others_change_pct": round(100 * (rate - base) / base, 2),
            "note": f"customer-{revoked:03d} revoked after 1 s: relink_needed; the others' records/s vs the first run"}


def capped_row(api, run: dict, n: int, cap: float, burst: int, limit: float) -> dict:
    arr = _arrivals(api, run["t0"], run["t0"] + run["wall_s"] + 1)
    first = min(a["t"] for a in arr)
    last = max(a["t"] for a in arr)
    span = last - first
    lo, hi = first + 0.2 * span, last - 0.1 * span
    window = [a for a in arr if lo <= a["t"] <= hi and a["status"] != 429]
    seconds = hi - lo
    capped = sum(1 for a in window if a["tenant"] == 0) / seconds
    others = sum(1 for a in window if a["tenant"] != 0) / seconds
    return {"tool": "isthmus Fleet, one capped", "value": round((capped + others), 1),
            "capped_rate": round(capped, 2), "capped_error_pct": round(100 * (capped - cap) / cap, 2),
            "others_rate": round(others, 1), "status_429": sum(1 for a in arr if a["status"] == 429),
            "requests": len(arr), "cpu_ms": round(1000 * run["cpu_s"] / max(len(arr), 1), 3),
            "window_s": round(seconds, 1),
            "note": f"{n} connections, customer-000 capped at {cap:g}/s (burst {burst}) inside {limit:g}/s"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 connections, 20,000 + 19 x 500 records")
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=1_000)
    ap.add_argument("--limit", type=float, default=100.0, help="the app's requests/s")
    ap.add_argument("--burst", type=int, default=10)
    ap.add_argument("--cap-seconds", type=float, default=30.0)
    ap.add_argument("--cap-burst", type=int, default=2,
                    help="the capped connection's burst (with 1, a call granted late by the app's limit loses "
                         "that time for good)")
    ap.add_argument("--child", nargs=2, metavar=("SIDE", "SPEC"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        side, spec_path = args.child
        spec = json.loads(Path(spec_path).read_text())
        print(json.dumps({"fleet": child_fleet, "peer": child_peer}[side](spec)))
        return 0
    if args.quick:
        args.connections, args.big, args.small, args.cap_seconds = 20, 20_000, 500, 12.0
    try:
        import isthmus
    except ImportError as exc:
        print(f"isthmus is not installed here ({exc}); run `make install` first", file=sys.stderr)
        return 2
    machine = common.machine_info()
    rows: list[dict] = []
    records = [args.big] + [args.small] * (args.connections - 1)
    max_arrivals = 3 * (sum(r // PAGE + SLICES for r in records)) + 10_000
    with tempfile.TemporaryDirectory(prefix="isthmus-bench-fleet-") as tmp_name:
        tmp = Path(tmp_name)
        with isthmus.Sandbox(tenants=args.connections, auth="api_key", tenant_records=records,
                             app_rate_limit=args.limit, app_burst=args.burst, max_page_size=PAGE,
                             max_arrivals=max_arrivals, threads=4) as api:
            spec = {"url": api.url, "keys": [t.api_key for t in api.tenants], "limit": args.limit,
                    "burst": args.burst}
            for tool, side in (("isthmus Fleet", "fleet"), ("asyncio + aiohttp + aiolimiter", "peer")):
                (tmp / side).mkdir()
                print(f"{tool}: {args.connections} connections ...", flush=True)
                run = _child(side, {**spec, "out": str(tmp / side)}, tmp)
                if run["failed"]:
                    raise RuntimeError(f"{tool}: connections did not complete: {run['failed']}")
                rows.append(fairness_row(tool, api, run, records, args.limit))
                time.sleep(1.0)  # the app bucket refills between the rows
            # The same fleet again, one small customer revoking the app's access a second in.
            revoked = args.connections - 1
            (tmp / "revoked").mkdir()
            print(f"isthmus Fleet: customer-{revoked:03d} revoked after 1 s ...", flush=True)
            threading.Timer(1.0, api.tenants[revoked].revoke_access).start()
            run = _child("fleet", {**spec, "out": str(tmp / "revoked")}, tmp)
            if run["failed"] != [f"customer-{revoked:03d}"]:
                raise RuntimeError(f"revoked: expected customer-{revoked:03d} alone to fail, got {run['failed']}")
            rows.append(revoked_row(api, run, rows[0], records, revoked, args.limit))
        n = 10
        per = int(args.limit * args.cap_seconds * PAGE)  # more than any connection can read in the time
        with isthmus.Sandbox(tenants=n, auth="api_key", tenant_records=[per] * n, app_rate_limit=args.limit,
                             app_burst=args.burst, max_page_size=PAGE, max_arrivals=max_arrivals,
                             threads=4) as api:
            (tmp / "capped").mkdir()
            print(f"isthmus Fleet, one of {n} capped at 10/s, {args.cap_seconds:g} s ...", flush=True)
            spec = {"url": api.url, "keys": [t.api_key for t in api.tenants], "limit": args.limit,
                    "burst": args.burst, "caps": {"0": {"rate": 10.0, "burst": args.cap_burst}},
                    "seconds": args.cap_seconds, "out": str(tmp / "capped")}
            rows.append(capped_row(api, _child("fleet", spec, tmp), n, 10.0, args.cap_burst, args.limit))
    common.print_table(f"fleet: one app allowance of {args.limit:g} requests/s (burst {args.burst}) shared by "
                       "many connections", rows, references=("asyncio + aiohttp + aiolimiter",),
                       unit="requests/s", columns=COLUMNS)
    fleet_row = rows[0]
    path = common.write_results(NAME, rows, unit="requests/s", machine=machine,
                                settings={"connections": args.connections, "big": args.big, "small": args.small,
                                          "limit": args.limit, "burst": args.burst, "page": PAGE,
                                          "slices": SLICES, "max_in_flight": IN_FLIGHT,
                                          "cap_seconds": args.cap_seconds},
                                fairness=fleet_row["fairness"])
    print(f"results: {path}")
    capped = rows[-1]
    revoked = rows[2]
    met = (fleet_row["fairness"] >= 0.9 and fleet_row["rate_share"] >= 0.95 and not fleet_row["status_429"]
           and not fleet_row["lost"] and abs(revoked["others_change_pct"]) < 5
           and abs(capped["capped_error_pct"]) <= 1 and capped["others_rate"] >= 0.88 * args.limit)
    return 0 if met else 1


if __name__ == "__main__":
    common.run_main(main, "the sandboxes")
