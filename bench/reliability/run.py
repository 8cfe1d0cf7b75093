"""The fault matrix at benchmark size: 1,000,000 records through every fault, reconciled exactly.

The same matrix as tests/python/test_reliability.py::test_fault_matrix (50,000 records, run
by `make test`), from the same code (tests/python/fault_matrix.py): two sandboxes failing 5%
of their calls in each way, a fault proxy in front of each bouncing, cutting, black-holing
and throttling the transport mid-run, OAuth2 tokens expiring every 2 s. It prints the figures
and the checks, writes bench/results/reliability.json, and exits 1 when a check fails.

    python bench/reliability/run.py                    # 1,000,000 records
    python bench/reliability/run.py --records 200000 --rate 0.1
    make bench B=reliability
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent / "tests" / "python"))
import common  # noqa: E402

NAME = "reliability"
COLUMNS = (("seconds", "wall_s", 1), ("runs", "runs", 0), ("unique", "unique", 0),
           ("duplicates", "duplicate", 0), ("dead letters", "dead_letters", 0), ("requests", "requests", 0),
           ("retries", "retries", 0), ("cpu s", "cpu_s", 1), ("peak RSS MB", "peak_rss_mb", 1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=0.05, help="share of calls failing in each way (0.05)")
    ap.add_argument("--episodes", type=int, default=16, help="transport episodes spread over the run (16)")
    ap.add_argument("--quick", action="store_true", help="50,000 records, as in make test")
    args = ap.parse_args()
    records = 50_000 if args.quick else args.records
    try:
        import fault_matrix
    except ImportError as exc:
        print(f"isthmus is not installed here ({exc}); run `make install` first", file=sys.stderr)
        return 2

    machine = common.machine_info()
    print(f"fault matrix: {records:,} records, {args.rate:.0%} of calls failing in each way, "
          f"{args.episodes} transport episodes", flush=True)
    cpu0 = common.read_self_usage()["cpu_s"]
    with tempfile.TemporaryDirectory(prefix="isthmus-bench-reliability-") as tmp:
        t0 = time.monotonic()
        result = fault_matrix.run_matrix(records, str(Path(tmp) / "state.db"), rate=args.rate,
                                         episodes=args.episodes)
        wall = time.monotonic() - t0
    usage = common.read_self_usage()
    problems = fault_matrix.problems(result)
    got = result["destination"]
    row = {"tool": "isthmus", "value": result["records_per_s"], "records": records, "wall_s": round(wall, 1),
           "runs": result["runs"], "unique": got["unique"], "duplicate": got["duplicate"],
           "idempotent_replays": got["idempotent_replays"], "dead_letters": result["dead_letters"],
           "requests": result["requests"], "retries": result["retries"],
           "cpu_s": round(usage["cpu_s"] - cpu0, 1), "peak_rss_mb": usage["peak_rss_mb"],
           "reconciled": not problems, "note": "reconciled exactly" if not problems else "CHECKS FAILED"}
    # Both sandboxes and both proxies run in this process: CPU and RSS are the whole matrix's.
    common.print_table(f"fault matrix: {records:,} records (sandboxes, proxies and pipeline in one process)",
                       [row], references=(), unit="records/s", columns=COLUMNS)
    print(f"\nsandbox faults injected: {result['sandbox_faults']}")
    print(f"tokens issued: source {result['tokens']['source']['issued']}, "
          f"destination {result['tokens']['destination']['issued']}")
    for e in result["episodes"]:
        effect = {k: v for k, v in e.items() if k not in ("episode", "proxy", "at_records", "seconds") and v}
        print(f"  {e['episode']:<15} {e['proxy']:<12} at {e['at_records']:>9,} records, {e['seconds']:.1f} s: {effect}")
    for f in result["failed_runs"]:
        print(f"  failed run (resumed): {f}")
    print("\nchecks: " + ("all passed: unique = source - dead letters, 0 duplicates, every dead letter "
                          "says why, every fault happened mid-run" if not problems else ""))
    for p in problems:
        print(f"  FAILED: {p}")
    detail = {k: v for k, v in result.items() if k not in ("dead_letter_errors", "dead_letter_keys")}
    path = common.write_results(NAME, [row], unit="records/s", machine=machine, matrix=detail,
                                problems=problems, settings={"records": records, "rate": args.rate,
                                                             "episodes": args.episodes,
                                                             "page": fault_matrix.PAGE,
                                                             "client_timeout": fault_matrix.CLIENT_TIMEOUT})
    print(f"results: {path}")
    return 1 if problems else 0


if __name__ == "__main__":
    common.run_main(main, "the sandboxes")
