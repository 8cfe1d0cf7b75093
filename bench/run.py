"""Runs the benchmarks: `python bench/run.py` for all, `python bench/run.py http` for one.

A benchmark is bench/<name>/run.py, or a module bench/<name>.py with a main(); each runs in
its own interpreter so one cannot skew or break the next. Arguments after the name go to that
benchmark (`python bench/run.py http --quick`); arguments alone go to every benchmark.
Results land in bench/results/<name>.json.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
NOT_BENCHMARKS = {"run", "common"}


def _has_main(path: Path) -> bool:
    try:
        tree = ast.parse(path.read_text(), str(path))
    except (OSError, SyntaxError):
        return False
    return any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)


def discover() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for child in sorted(BENCH.iterdir()):
        if child.is_dir() and (child / "run.py").is_file():
            found[child.name] = child / "run.py"
        elif child.suffix == ".py" and child.stem not in NOT_BENCHMARKS and _has_main(child):
            found[child.stem] = child
    return found


def command(path: Path, args: list[str]) -> list[str]:
    if path.name == "run.py":
        return [sys.executable, str(path), *args]
    # A module with main(): import it beside common.py and call main().
    code = (f"import sys; sys.path.insert(0, {str(BENCH)!r}); sys.argv[0] = {str(path)!r}; "
            f"import {path.stem} as m; r = m.main(); sys.exit(r if isinstance(r, int) else 0)")
    return [sys.executable, "-c", code, *args]


def main(argv: list[str]) -> int:
    benchmarks = discover()
    if argv and argv[0] in ("-h", "--help", "--list"):
        print(__doc__.strip())
        print("\nbenchmarks: " + ", ".join(benchmarks))
        return 0
    if argv and not argv[0].startswith("-"):
        name, args = argv[0], argv[1:]
        if name not in benchmarks:
            print(f"no benchmark {name!r}; there are: {', '.join(benchmarks)}", file=sys.stderr)
            return 2
        chosen = {name: benchmarks[name]}
    else:
        chosen, args = benchmarks, argv

    failed = []
    for name, path in chosen.items():
        print(f"\n######## {name}", flush=True)
        start = time.monotonic()
        try:
            rc = subprocess.call(command(path, args))
        except KeyboardInterrupt:
            return 130
        print(f"######## {name}: {'ok' if rc == 0 else f'exit {rc}'} in {time.monotonic() - start:.0f}s",
              flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
