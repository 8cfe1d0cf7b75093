"""Receiving webhooks: the isthmus receiver against FastAPI + uvicorn, on the same signed events.

Each receiver verifies ~1 KB Standard Webhooks events, dedupes by id and writes them durably
to SQLite (isthmus: LocalQueue, fsync per group commit; the peer: WAL, synchronous=FULL, a
UNIQUE event id, one commit per event), answering 200 only after the write. Nothing consumes
the queue meanwhile. The peer is fastapi_app.py (the `standardwebhooks` package verifies, uvicorn
with uvloop and httptools, 1 and 2 workers). Each receiver runs in its own process on a fresh
file; its CPU (all its threads and workers) is read from /proc around the timed part.

Rows:
- throughput: N pre-signed events, built into HTTP requests before the clock starts, sent by
  sender.cpp (one epoll thread, built here with g++, copying bytes only, so it leaves the two
  cores to the receiver) with 64 in flight on keep-alive connections, after an untimed warm-up;
- latency at a paced 1,000 events/s for --seconds: an asyncio sender on 16 keep-alive
  connections; each event's latency runs from its scheduled send time (so a stalled receiver
  is not excused by the sender waiting), p50 and p99.

    python bench/webhooks/run.py                 # 20,000 events (isthmus), 5,000 (peer)
    python bench/webhooks/run.py --events 50000 --peer-events 10000 --seconds 10
    make bench B=webhooks
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402

NAME = "webhooks"
SECRET = "whsec_" + base64.b64encode(b"bench-webhooks-secret-key-32byte").decode()
ROUTE = "/hooks/crm"
COLUMNS = (("p50 ms", "p50_ms", 2), ("p99 ms", "p99_ms", 2), ("CPU µs/event", "cpu_us", 0),
           ("events", "events", 0))


def bodies(n: int, tag: str) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        eid = f"evt_{tag}_{i}"
        doc = {"type": "contact.updated", "id": eid, "timestamp": "2026-12-02T18:00:00Z",
               "data": {"id": f"c{i}", "email": f"person{i}@example.com", "name": "Zoë Example",
                        "company": "Example GmbH", "notes": "n" * 820}}
        out.append((eid, json.dumps(doc).encode()))
    return out


def signed_requests(events: list[tuple[str, bytes]]) -> list[tuple[dict, bytes]]:
    import isthmus._core as core

    now = time.time()
    return [(dict(core.sign_webhook("standard", SECRET, eid, now, body)), body) for eid, body in events]


class Receiver:
    """One receiver process on a fresh file; stopped by its PID."""

    def __init__(self, kind: str, workers: int, tmp: Path):
        self.kind, self.workers = kind, workers
        self.port = common.free_port()
        self.db = tmp / f"{kind}-{workers}-{time.monotonic_ns()}.db"
        if kind == "isthmus":
            cmd = [sys.executable, str(HERE / "isthmus_server.py"), str(self.port), str(self.db), SECRET,
                   str(workers)]
            env = dict(os.environ)
        else:
            cmd = [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--port", str(self.port), "--host",
                   "127.0.0.1", "--loop", "uvloop", "--http", "httptools", "--workers", str(workers),
                   "--log-level", "warning", "--no-access-log"]
            env = dict(os.environ, BENCH_SECRET=SECRET, BENCH_DB=str(self.db))
        self.proc = subprocess.Popen(cmd, cwd=HERE, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        common._live[self.proc.pid] = self.proc  # stopped at exit if the run is interrupted
        common.wait_for_port(self.port, timeout=60, proc=self.proc)
        self.url = f"http://127.0.0.1:{self.port}"
        if kind == "fastapi" and workers > 1:
            time.sleep(2.0)  # the workers fork after the port opens; let each import the app

    @property
    def label(self) -> str:
        if self.kind == "isthmus":
            return f"isthmus WebhookReceiver, {self.workers} I/O thread{'s' if self.workers > 1 else ''}"
        return f"fastapi+uvicorn {self.workers} worker{'s' if self.workers > 1 else ''}"

    def cpu_s(self) -> float:
        return common.process_tree_cpu_s(self.proc.pid)

    def stop(self) -> None:
        common._terminate(self.proc)

    def rows_stored(self) -> int:
        import sqlite3

        with sqlite3.connect(self.db) as db:
            table = "messages" if self.kind == "isthmus" else "events"
            return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def wire(url: str, events: list[tuple[dict, bytes]]) -> list[bytes]:
    """Each event as the bytes of one HTTP/1.1 POST, built before anything is timed."""
    host = url.split("//")[1]
    out = []
    for headers, body in events:
        head = f"POST {ROUTE} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head += f"Content-Length: {len(body)}\r\n\r\n"
        out.append(head.encode() + body)
    return out


def build_sender(tmp: Path) -> Path:
    exe = tmp / "sender"
    subprocess.run(["g++", "-O2", "-std=c++17", "-o", str(exe), str(HERE / "sender.cpp")], check=True)
    return exe


def send_all(sender: Path, rx: Receiver, events: list[tuple[dict, bytes]], concurrency: int, tmp: Path) -> dict:
    path = tmp / f"requests-{time.monotonic_ns()}.bin"
    with open(path, "wb") as f:
        for w in wire(rx.url, events):
            f.write(struct.pack("<I", len(w)) + w)
    out = subprocess.run([str(sender), "127.0.0.1", str(rx.port), str(concurrency), str(path)],
                         capture_output=True, text=True, timeout=900)
    path.unlink()
    if out.returncode != 0:
        raise RuntimeError(f"sender: {out.stderr.strip()}")
    report: dict = json.loads(out.stdout)
    if report["ok"] != len(events):
        raise RuntimeError(f"{rx.label}: {report['other']} of {len(events)} events not answered 200")
    return report


def throughput(rx: Receiver, n: int, concurrency: int, sender: Path, tmp: Path) -> dict:
    send_all(sender, rx, signed_requests(bodies(min(500, n), f"warm{rx.port}")), concurrency, tmp)
    work = signed_requests(bodies(n, f"tp{rx.port}"))
    cpu0 = rx.cpu_s()
    report = send_all(sender, rx, work, concurrency, tmp)
    cpu = rx.cpu_s() - cpu0
    wall = report["elapsed_s"]
    return {"tool": f"{rx.label}", "value": round(n / wall), "events": n, "wall_s": round(wall, 3),
            "cpu_us": cpu / n * 1e6, "sender_cpu_us": report["cpu_s"] / n * 1e6,
            "note": f"max throughput, {concurrency} in flight"}


async def _paced(url: str, events: list[tuple[dict, bytes]], rate: float, connections: int) -> list[float]:
    host, port = url.split("//")[1].split(":")
    requests = wire(url, events)
    latencies: list[float] = []
    next_index = 0
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2

    async def conn() -> None:
        nonlocal next_index
        reader, writer = await asyncio.open_connection(host, int(port))
        while next_index < len(requests):
            i = next_index
            next_index += 1
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(requests[i])
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"event {i}: {head.splitlines()[0]!r}")
            latencies.append(loop.time() - due)
        writer.close()

    await asyncio.gather(*(conn() for _ in range(connections)))
    return latencies


def latency(rx: Receiver, rate: float, seconds: float) -> dict:
    n = int(rate * seconds)
    events = signed_requests(bodies(n, f"lat{rx.port}"))
    cpu0 = rx.cpu_s()
    lat = asyncio.run(_paced(rx.url, events, rate, 16))
    cpu = rx.cpu_s() - cpu0
    lat.sort()
    q = statistics.quantiles(lat, n=100)
    return {"tool": f"{rx.label} @ {rate:g}/s", "value": round(n / seconds), "events": n,
            "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "max_ms": lat[-1] * 1000, "cpu_us": cpu / n * 1e6,
            "note": f"paced {rate:g} events/s for {seconds:g} s, 16 connections"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=20000, help="events for the isthmus throughput row")
    ap.add_argument("--peer-events", type=int, default=5000, help="events for each peer's throughput row")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, nargs="+", default=[1],
                    help="the isthmus receiver's I/O threads, a row each")
    args = ap.parse_args()
    try:
        import fastapi  # noqa: F401
        import standardwebhooks  # noqa: F401
        import uvicorn  # noqa: F401
        peers = [("fastapi", 1), ("fastapi", 2)]
    except ImportError as exc:
        print(f"peer unavailable ({exc}); pip install -r requirements-bench.txt", file=sys.stderr)
        peers = []
    machine = common.machine_info()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as tmp:
        sender = build_sender(Path(tmp))
        for kind, workers in [*(("isthmus", t) for t in args.threads), *peers]:
            n = args.events if kind == "isthmus" else args.peer_events
            for measure in ("throughput", "latency"):
                rx = Receiver(kind, workers, Path(tmp))
                try:
                    if measure == "throughput":
                        row = throughput(rx, n, args.concurrency, sender, Path(tmp))
                        expect = n + min(500, n)
                    else:
                        row = latency(rx, args.rate, args.seconds)
                        expect = row["events"]
                    stored = rx.rows_stored()
                    if stored != expect:
                        raise RuntimeError(f"{rx.label}: {stored} rows stored, {expect} acknowledged")
                finally:
                    rx.stop()
                rows.append(row)
                print(f"  {row['tool']}: {row['value']} events/s"
                      + (f", p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms" if "p99_ms" in row else "")
                      + f", {row['cpu_us']:.0f} µs CPU/event", flush=True)
    common.print_table("webhooks received, verified, deduped and durably written", rows,
                       references=("fastapi+uvicorn 1 worker", "fastapi+uvicorn 2 workers"),
                       unit="events/s", columns=COLUMNS)
    path = common.write_results(NAME, rows, unit="events/s", machine=machine,
                                targets={"throughput_vs_fastapi": ">= 10x", "p99_at_1000_per_s_ms": "< 10"})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    common.run_main(main, "webhooks benchmark")
