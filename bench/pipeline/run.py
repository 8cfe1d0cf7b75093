"""Pipeline throughput: paginated API -> trivial Python mapping -> JSONL, per tool.

The sandbox serves GET /v1/contacts with offset pagination from its own process; each tool
runs in its own process (wall time, CPU and peak RSS measured from outside) and must write
every record. isthmus also runs at a tenth of the records, to show that peak RSS does not
grow with the record count.

    python bench/pipeline/run.py                  # 1,000,000 records, 500 per page
    python bench/pipeline/run.py --records 100000 --tools isthmus,aiohttp
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402
from common import EXIT_SKIP  # noqa: E402

NAME = "pipeline"
TOOLS = ["isthmus", "isthmus-fieldmap", "isthmus-fieldmap-http", "aiohttp", "dlt"]


def sandbox(port: int, n: int, page: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "isthmus.cli", "sandbox", "--port", str(port), "--threads", "2",
         "--records", str(n), "--pagination", "offset", "--max-page-size", str(max(page, 100))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    common._live[server.pid] = server
    return server


def measure(tool: str, n: int, records: int, page: int) -> dict:
    """Serves n records from a fresh sandbox process and runs one tool over them."""
    port = common.free_port()
    server = sandbox(port, n, page)
    # The HttpSink row posts to a second sandbox process (its import endpoint) instead of a file.
    dest_port = common.free_port() if tool.endswith("-http") else None
    dest = sandbox(dest_port, 0, page) if dest_port else None
    label = tool if n == records else f"{tool} ({n:,} records)"
    try:
        common.wait_for_port(port, proc=server)
        if dest:
            common.wait_for_port(dest_port, proc=dest)
        with tempfile.TemporaryDirectory() as tmp:
            out = f"http://127.0.0.1:{dest_port}" if dest else str(Path(tmp) / "out.jsonl")
            run = common.run_client([sys.executable, str(HERE / "clients.py"), tool, f"http://127.0.0.1:{port}",
                                     str(n), str(page), out], timeout=1800)
    finally:
        common._terminate(server)
        if dest:
            common._terminate(dest)
    if run.returncode == EXIT_SKIP:
        return {"tool": label, "value": None, "note": "not installed"}
    got = run.report.get("records")
    if run.returncode != 0 or got != n:
        return {"tool": label, "value": None,
                "note": f"failed (exit {run.returncode}, {got} records): {run.stderr[-300:]}"}
    return {"tool": label, "value": round(n / run.wall_s), "records": n, "wall_s": round(run.wall_s, 2),
            "cpu_s": round(run.cpu_s, 2), "cpu_s_per_1k": round(run.cpu_s / n * 1000, 4),
            "peak_rss_mb": run.peak_rss_mb, "requests": n // page + 1, "note": ""}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--page", type=int, default=500)
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--quick", action="store_true", help="100,000 records")
    args = ap.parse_args()
    records = 100_000 if args.quick else args.records
    plan = [(t, records) for t in args.tools.split(",")]
    if "isthmus" in args.tools.split(",") and records >= 100_000:
        plan.append(("isthmus", records // 10))  # the memory check: same page size, 10x fewer
    rows = []
    for tool, n in plan:
        rows.append(measure(tool, n, records, args.page))
        print(f"{rows[-1]['tool']}: {rows[-1].get('value')} records/s, peak RSS {rows[-1].get('peak_rss_mb')} MB",
              flush=True)
    common.print_table(f"pipeline: {records:,} records, {args.page} per page, JSONL sink", rows,
                       references=("dlt", "aiohttp"), unit="records/s")
    path = common.write_results(NAME, rows, unit="records/s", records=records, page_size=args.page)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
