"""Pipeline throughput: paginated API -> mapping -> JSONL (or an HTTP import), per tool.

A sandbox process serves GET /v1/contacts with offset pagination; each tool runs in its own
process, one after another, and must deliver every record. First wrk reads the same pages
with nothing else to do, which is the source's own rate: a client row near it is limited by
the source, not by itself. isthmus also runs at a tenth of the records, to show that peak RSS
does not grow with the record count.

    python bench/pipeline/run.py                  # 1,000,000 records, 500 per page
    python bench/pipeline/run.py --records 100000 --tools isthmus,aiohttp
    python bench/pipeline/run.py --profile        # then perf profiles of the isthmus rows
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(1, str(HERE))
import common  # noqa: E402
from common import EXIT_SKIP  # noqa: E402

NAME = "pipeline"
SANDBOX_ROW = "sandbox only (wrk)"
TOOLS = ["sandbox", "import", "isthmus", "isthmus-fieldmap", "isthmus-fieldmap-http", "aiohttp", "aiohttp-orjson",
         "dlt"]
PROFILED = ["isthmus", "isthmus-fieldmap", "isthmus-fieldmap-http"]
WORK_DIR = HERE.parent / "work"  # gitignored: perf data and reports

# wrk cycles through the offset pages the clients read, 16 connections like their window.
WRK_PAGES_LUA = """\
local page, total, n = 500, 1000000, 0
init = function(args)
  page = tonumber(args[1]); total = tonumber(args[2])
end
request = function()
  local offset = (n * page) % total
  n = n + 1
  return wrk.format("GET", "/v1/contacts?offset=" .. offset .. "&limit=" .. page)
end
"""

IMPORT_ROW = "import sandbox only (wrk POST)"
# wrk POSTs batches of one page's records to the import endpoint, 8 at a time like HttpSink;
# each request renumbers the contact ids so that every record is new to the endpoint.
WRK_IMPORT_LUA = """\
local body, page, n = nil, 500, 0
init = function(args)
  page = tonumber(args[1])
  local f = assert(io.open(args[2], "rb")); body = f:read("*a"); f:close()
end
request = function()
  local shift = n * page
  n = n + 1
  local b = body:gsub('"id":"con_(%d+)"', function(d)
    return string.format('"id":"con_%010d"', tonumber(d) + shift)
  end)
  return wrk.format("POST", "/v1/contacts/batch", {["Content-Type"] = "application/json"}, b)
end
"""

COLUMNS = (("cpu s/1k rec", "cpu_s_per_1k", 4), ("peak RSS MB", "peak_rss_mb", 1),
           ("server cpu s", "server_cpu_s", 1), ("seconds", "wall_s", 2))


class Sandbox:
    """`isthmus sandbox` in its own process (so its threads are not the client's)."""

    def __init__(self, records: int, page: int, threads: int):
        self.port = common.free_port()
        self.argv = [sys.executable, "-m", "isthmus.cli", "sandbox", "--port", str(self.port),
                     "--threads", str(threads), "--records", str(records), "--pagination", "offset",
                     "--max-page-size", str(max(page, 100))]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Sandbox:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        common._live[self.proc.pid] = self.proc
        try:
            common.wait_for_port(self.port, timeout=30, proc=self.proc)
        except RuntimeError as exc:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
            self.__exit__()
            raise common.Skip(f"the sandbox did not start ({exc}): {err.strip()[-300:]}") from None
        return self

    def cpu_s(self) -> float:
        return common.process_tree_cpu_s(self.proc.pid) if self.proc else 0.0

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/stats", timeout=30) as r:
            return json.loads(r.read())

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            common._terminate(self.proc)
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None


def client_argv(tool: str, url: str, n: int, page: int, out: str, sink_url: str | None) -> list[str]:
    argv = [sys.executable, str(HERE / "clients.py"), tool, url, str(n), str(page), out]
    return argv + (["--sink-url", sink_url] if sink_url else [])


def measure_sandbox(n: int, page: int, threads: int, seconds: float) -> dict[str, Any]:
    """wrk alone against the source: the most records/s these pages can be had at here."""
    wrk = shutil.which("wrk")
    if not wrk:
        return {"tool": SANDBOX_ROW, "value": None, "note": "wrk not installed (scripts/install-deps.sh bench)"}
    with Sandbox(n, page, threads) as api, tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "pages.lua"
        script.write_text(WRK_PAGES_LUA)
        before = api.cpu_s()
        run = common.run_client([wrk, "-t1", "-c16", f"-d{seconds:g}s", "-s", str(script), api.url,
                                 "--", str(page), str(n)], timeout=seconds + 60)
        server_cpu = api.cpu_s() - before
    m = re.search(r"Requests/sec:\s*([\d.]+)", run.stdout)
    done = re.search(r"(\d+) requests in ([\d.]+)s", run.stdout)
    if run.returncode != 0 or not m or not done:
        return {"tool": SANDBOX_ROW, "value": None, "note": f"wrk failed: {(run.stderr or run.stdout)[-300:]}"}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", run.stdout)
    requests = int(done.group(1))
    records = requests * page
    return {"tool": SANDBOX_ROW, "value": round(float(m.group(1)) * page), "records": records,
            "wall_s": float(done.group(2)), "cpu_s": round(run.cpu_s, 2),
            "cpu_s_per_1k": round(run.cpu_s / records * 1000, 4), "peak_rss_mb": run.peak_rss_mb,
            "server_cpu_s": round(server_cpu, 2), "requests": requests, "server_threads": threads,
            "note": f"{bad.group(1)} non-2xx" if bad else "wrk -t1 -c16, pages only"}


def measure_import(page: int, threads: int, seconds: float) -> dict[str, Any]:
    """wrk alone POSTing pages of records to the import endpoint: the HttpSink row's ceiling."""
    wrk = shutil.which("wrk")
    if not wrk:
        return {"tool": IMPORT_ROW, "value": None, "note": "wrk not installed (scripts/install-deps.sh bench)"}
    with Sandbox(page, page, 1) as src:
        with urllib.request.urlopen(f"{src.url}/v1/contacts?offset=0&limit={page}", timeout=30) as r:
            records = json.loads(r.read())["data"]
    import clients  # the same mapping the HttpSink row applies

    body = json.dumps([clients.trivial(x) for x in records], ensure_ascii=False, separators=(",", ":"))
    with Sandbox(1, page, threads) as dest, tempfile.TemporaryDirectory() as tmp:
        script, batch = Path(tmp) / "import.lua", Path(tmp) / "batch.json"
        script.write_text(WRK_IMPORT_LUA)
        batch.write_text(body, encoding="utf-8")
        before = dest.cpu_s()
        run = common.run_client([wrk, "-t1", "-c8", f"-d{seconds:g}s", "-s", str(script), dest.url,
                                 "--", str(page), str(batch)], timeout=seconds + 60)
        server_cpu = dest.cpu_s() - before
        received = dest.stats()["records_received"].get("contacts", {})
    done = re.search(r"(\d+) requests in ([\d.]+)s", run.stdout)
    if run.returncode != 0 or not done:
        return {"tool": IMPORT_ROW, "value": None, "note": f"wrk failed: {(run.stderr or run.stdout)[-300:]}"}
    requests, took = int(done.group(1)), float(done.group(2))
    # Count what the endpoint took as new, not what wrk sent: a batch still in flight at the end
    # or a refused one does not count.
    unique = int(received.get("unique", 0))
    return {"tool": IMPORT_ROW, "value": round(unique / took), "records": unique, "wall_s": took,
            "cpu_s": round(run.cpu_s, 2), "cpu_s_per_1k": round(run.cpu_s / max(unique, 1) * 1000, 4),
            "peak_rss_mb": run.peak_rss_mb, "server_cpu_s": round(server_cpu, 2), "requests": requests,
            "server_threads": threads, "received": received,
            "note": f"wrk -t1 -c8, POST {page} records a batch; {unique:,} unique received"}


def measure(tool: str, n: int, records: int, page: int, threads: int,
            wrap: list[str] | None = None) -> dict[str, Any]:
    """Serves n records from a fresh sandbox process and runs one tool over them."""
    label = tool if n == records else f"{tool} ({n:,} records)"
    http = tool == "isthmus-fieldmap-http"
    with Sandbox(n, page, threads) as api, tempfile.TemporaryDirectory() as tmp:
        dest = Sandbox(1, page, threads).__enter__() if http else None
        try:
            out = str(Path(tmp) / "out.jsonl")
            before = api.cpu_s() + (dest.cpu_s() if dest else 0.0)
            run = common.run_client((wrap or []) + client_argv(tool, api.url, n, page, out,
                                                               dest.url if dest else None), timeout=1800)
            server_cpu = api.cpu_s() + (dest.cpu_s() if dest else 0.0) - before
            received = dest.stats()["records_received"].get("contacts", {}) if dest else None
            served = api.stats()["records_served"].get("contacts")
        finally:
            if dest:
                dest.__exit__()
    if run.returncode == EXIT_SKIP:
        return {"tool": label, "value": None, "note": "not installed"}
    got = run.report.get("records")
    if received is not None and received.get("unique") != n:
        got = f"{got} sent, {received.get('unique')} unique received"
    if run.returncode != 0 or got != n:
        return {"tool": label, "value": None,
                "note": f"failed (exit {run.returncode}, {got} records): {run.stderr[-300:]}"}
    seconds, cpu = run.report["seconds"], run.report["cpu_s"]
    row = {"tool": label, "value": round(n / seconds), "records": n, "wall_s": round(seconds, 2),
           "cpu_s": round(cpu, 2), "cpu_s_per_1k": round(cpu / n * 1000, 4), "peak_rss_mb": run.peak_rss_mb,
           "process_wall_s": round(run.wall_s, 2), "process_cpu_s": round(run.cpu_s, 2),
           "server_cpu_s": round(server_cpu, 2), "server_threads": threads, "records_served": served,
           "requests": run.report.get("requests") or -(-n // page) + 1, "note": ""}
    if run.report.get("stage_seconds"):
        row["stage_seconds"] = run.report["stage_seconds"]
    if received is not None:
        row["received"] = received
        row["note"] = f"{received.get('unique'):,} unique at the import endpoint"
    return row


def profile(tool: str, records: int, page: int, threads: int) -> dict[str, Any]:
    """Runs one isthmus row again under `perf record` and keeps where its CPU went."""
    perf = shutil.which("perf")
    if not perf:
        return {"tool": tool, "note": "perf not installed (Debian: linux-perf)"}
    WORK_DIR.mkdir(exist_ok=True)
    data = WORK_DIR / f"perf-{tool}.data"
    row = measure(tool, records, records, page, threads,
                  wrap=[perf, "record", "-q", "-e", "cpu-clock", "-F", "499", "-o", str(data), "--"])
    report: dict[str, Any] = {"tool": tool, "records_per_s_under_perf": row.get("value"),
                              "stage_seconds": row.get("stage_seconds"), "threads": []}

    def rows_by(sort: str, limit: float) -> list[tuple[float, int, str]]:
        out = subprocess.run([perf, "report", "-i", str(data), "--stdio", "--no-children", "-g", "none",
                              "--percent-limit", str(limit), "--sort", "pid," + sort],
                             capture_output=True, text=True)
        found = []
        for line in out.stdout.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(\d+):\S+\s+(.*?)\s*$", line)
            if m:
                found.append((float(m.group(1)), int(m.group(2)), m.group(3)))
        return found

    # perf's `pid` key is the thread: the lowest id is the caller's thread, which runs run().
    totals: dict[int, float] = {}
    for pct, tid, _dso in rows_by("dso", 0):
        totals[tid] = totals.get(tid, 0.0) + pct
    main_tid = min(totals) if totals else None
    libs, funcs = rows_by("dso", 1.0), rows_by("sym", 0.7)
    for tid, pct in sorted(totals.items(), key=lambda kv: -kv[1]):
        if pct < 1.0:
            continue
        report["threads"].append({
            "thread": "caller (run(): map, sink, checkpoint)" if tid == main_tid else "core or fetch thread",
            "cpu_percent": round(pct, 1),
            "by_library": [f"{p:.1f}% {d}" for p, t, d in libs if t == tid],
            "top_functions": [f"{p:.1f}% {f}" for p, t, f in funcs if t == tid][:12]})
    (WORK_DIR / f"profile-{tool}.txt").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


ROW_NAMES = {
    SANDBOX_ROW: "sandbox alone (wrk reading the same pages)",
    IMPORT_ROW: "import sandbox alone (wrk posting pages of records)",
    "isthmus": "isthmus, trivial Python map -> JSONL",
    "isthmus-fieldmap": "isthmus, `FieldMap` -> JSONL",
    "isthmus-fieldmap-http": "isthmus, `FieldMap` -> `HttpSink` (import sandbox)",
    "aiohttp": "aiohttp rolling window of 16 -> JSONL",
    "aiohttp-orjson": "aiohttp rolling window, orjson -> JSONL",
    "dlt": "dlt `rest_api` -> filesystem JSONL",
}


def markdown_table(doc: dict[str, Any]) -> str:
    """The README's pipeline table, from a results document."""
    rows = [r for r in doc["rows"] if r.get("value")]
    ref = next((r["value"] for r in rows if r["tool"] == "aiohttp"), None)
    out = ["| tool | records/s | vs aiohttp | CPU s / 1k records | peak RSS |",
           "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        base, _, fewer = r["tool"].partition(" (")  # "isthmus (100,000 records)": the memory check
        name = ROW_NAMES.get(r["tool"]) or ROW_NAMES.get(base, base) + (f" ({fewer}" if fewer else "")
        vs = f"{r['value'] / ref:.2f}x" if ref else "-"
        out.append(f"| {name} | {r['value']:,} | {vs} | {r['cpu_s_per_1k']:.4f} | {r['peak_rss_mb']} MB |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--page", type=int, default=500)
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated, from {','.join(TOOLS)}")
    ap.add_argument("--quick", action="store_true", help="100,000 records")
    ap.add_argument("--server-threads", type=int, default=2,
                    help="the sandbox's I/O threads (default 2: one per core of the development machine)")
    ap.add_argument("--wrk-seconds", type=float, default=5.0)
    ap.add_argument("--profile", action="store_true",
                    help=f"afterwards, profile {', '.join(PROFILED)} under perf (bench/work/profile-*.txt)")
    ap.add_argument("--table", action="store_true",
                    help="print the README's table from bench/results/pipeline.json and stop")
    args = ap.parse_args()
    if args.table:
        print(markdown_table(json.loads((common.RESULTS_DIR / f"{NAME}.json").read_text())))
        return 0
    records = 100_000 if args.quick else args.records
    tools = args.tools.split(",")
    unknown = set(tools) - set(TOOLS)
    if unknown:
        ap.error(f"unknown tools {', '.join(sorted(unknown))}; expected some of {', '.join(TOOLS)}")
    plan = [(t, records) for t in tools]
    if "isthmus" in tools and records >= 100_000:
        plan.append(("isthmus", records // 10))  # the memory check: same page size, 10x fewer
    rows = []
    for tool, n in plan:
        try:
            if tool == "sandbox":
                rows.append(measure_sandbox(n, args.page, args.server_threads, args.wrk_seconds))
            elif tool == "import":
                rows.append(measure_import(args.page, args.server_threads, args.wrk_seconds))
            else:
                rows.append(measure(tool, n, records, args.page, args.server_threads))
        except common.Skip as exc:
            rows.append({"tool": tool, "value": None, "note": str(exc)})
        r = rows[-1]
        print(f"{r['tool']}: {r.get('value')} records/s, cpu {r.get('cpu_s_per_1k')} s/1k, "
              f"peak RSS {r.get('peak_rss_mb')} MB {r.get('stage_seconds') or ''} {r.get('note', '')}", flush=True)
    common.print_table(f"pipeline: {records:,} records, {args.page} per page, JSONL sink unless named",
                       rows, references=("aiohttp", SANDBOX_ROW), unit="records/s", columns=COLUMNS)
    profiles = []
    if args.profile:
        for tool in (t for t in PROFILED if t in tools):
            profiles.append(profile(tool, records, args.page, args.server_threads))
            print(f"\nprofile of {tool} (perf, cpu-clock; % of the client process's samples, per thread):")
            for t in profiles[-1].get("threads", []):
                print(f"  {t['cpu_percent']:5.1f}% {t['thread']}: {', '.join(t['by_library'][:5])}")
                print("         " + "; ".join(t["top_functions"][:6]))
    machine = common.machine_info()
    path = common.write_results(NAME, rows, unit="records/s", machine=machine, records=records,
                                page_size=args.page, window=16, server_threads=args.server_threads,
                                **({"profiles": profiles} if profiles else {}))
    print(f"results: {path}\n\nfor the README (`--table` prints it again):\n"
          + markdown_table(json.loads(path.read_text())))
    # A tool that is not installed is reported and skipped; one that ran and failed fails the run.
    return 1 if any(str(r.get("note", "")).startswith(("failed", "wrk failed")) for r in rows) else 0


if __name__ == "__main__":
    common.run_main(main, "the sandboxes and clients")
