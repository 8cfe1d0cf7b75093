"""Helpers the benchmarks share: a throwaway nginx, measured client subprocesses, result tables.

Everything binds 127.0.0.1 and nothing touches the network. Each benchmark is a script that
runs its peers one after another on the same work and writes bench/results/<name>.json.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

# Exit code a client uses to say "this tool is not available here" (not a failure).
EXIT_SKIP = 3


class Skip(Exception):
    """A row that cannot run on this machine (tool or API missing); the reason is the message."""


# ---------------------------------------------------------------------------------------------
# Processes that must not outlive the benchmark

_live: dict[int, subprocess.Popen] = {}


def _stop_all() -> None:
    for proc in list(_live.values()):
        _terminate(proc)


def _on_signal(signum: int, _frame: Any) -> None:
    _stop_all()
    # Unwinding (rather than dying here) lets the with-blocks remove their temp dirs.
    raise SystemExit(128 + signum)


atexit.register(_stop_all)
for _sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, _on_signal)


def _terminate(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """Stops a process started in its own session, and everything it spawned."""
    _live.pop(proc.pid, None)
    if proc.poll() is not None:
        return
    # nginx's master forwards SIGTERM to its workers; the group kill covers a master that died.
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


# ---------------------------------------------------------------------------------------------
# nginx

_NGINX_CONF = """\
daemon off;
master_process on;
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 100000;
    keepalive_timeout 75s;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{http_conf}
    server {{
        listen 127.0.0.1:{port} reuseport;
        root {tmp}/www;
{locations}
    }}
}}
"""


class Nginx:
    """nginx on 127.0.0.1 serving `files` ({"/path": bytes}) from a temp dir.

    `with Nginx({"/json": body}) as ng: ng.url` -- stopped on exit, on SIGTERM, and at
    interpreter exit, whichever comes first. `workers` is nginx's worker_processes.

    A path may carry a query (`"/v1/items?limit=1"`): the body is then answered for exactly
    that path and query string, so a load generator can send the same request line to nginx
    as to the server it is compared with. A path cannot be served both with and without one.

    `http_conf` is added to the http block and `location_conf` to every location (e.g. a
    `limit_req_zone` and its `limit_req`).
    """

    # Files for paths with a query live under this directory of the web root, one directory
    # per path, named after the raw query string.
    _QUERY_DIR = "_by_query"

    def __init__(self, files: dict[str, bytes], content_type: str = "application/json",
                 workers: int = 1, http_conf: str = "", location_conf: str = ""):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        plain = {p for p in files if "?" not in p}
        for path in files:
            base, _, query = path.partition("?")
            if query and (base in plain or "/" in query):
                raise ValueError(f"nginx cannot serve {path!r}: the query holds a '/' or "
                                 f"{base!r} is also served without a query")
        self.files = files
        self.content_type = content_type
        self.workers = workers
        self.http_conf = http_conf
        self.location_conf = location_conf
        self.port = 0
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Nginx:
        exe = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
        if exe is None:
            raise Skip("nginx not found (Debian: apt-get install nginx-light)")
        self._tmp = tempfile.TemporaryDirectory(prefix="isthmus-bench-nginx-")
        tmp = Path(self._tmp.name)
        # Started as root, nginx's worker runs as nobody and must be able to read the files.
        tmp.chmod(0o755)
        (tmp / "www").mkdir(mode=0o755)
        locations = []
        by_query: set[str] = set()
        for path, body in self.files.items():
            base, _, query = path.partition("?")
            if query:
                # /v1/items?limit=1 -> www/_by_query/v1/items/limit=1, found via $args below.
                target = tmp / "www" / self._QUERY_DIR / base.lstrip("/") / query
            else:
                target = tmp / "www" / path.lstrip("/")
            for d in reversed(target.relative_to(tmp / "www").parents[:-1]):
                (tmp / "www" / d).mkdir(mode=0o755, exist_ok=True)
            target.write_bytes(body)
            target.chmod(0o644)
            if not query:
                # Exact-match location so the extension-less file still gets the right type.
                locations.append(f"        location = {path} {{ default_type {self.content_type}; "
                                 f"{self.location_conf} }}")
            elif base not in by_query:
                by_query.add(base)
                locations.append(f"        location = {base} {{ default_type {self.content_type}; "
                                 f"try_files /{self._QUERY_DIR}{base}/$args =404; {self.location_conf} }}")
        self.port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(tmp=tmp, port=self.port, workers=self.workers,
                                           http_conf=self.http_conf, locations="\n".join(locations)))
        # -e: the default error log under /var/log may not be writable; -p keeps paths in tmp.
        self._proc = subprocess.Popen(
            [exe, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        _live[self._proc.pid] = self._proc
        try:
            wait_for_port(self.port, proc=self._proc)
        except Exception as exc:
            err = self._proc.stderr.read().decode(errors="replace") if self._proc.poll() is not None else ""
            self.__exit__(None, None, None)
            raise RuntimeError(f"nginx did not start: {err.strip()}") from exc
        return self

    def cpu_seconds(self) -> float:
        """User + system CPU seconds nginx's master and workers have used so far."""
        if self._proc is None:
            return 0.0
        return process_tree_cpu_s(self._proc.pid)

    def __exit__(self, *exc: Any) -> None:
        if self._proc is not None:
            _terminate(self._proc)
            if self._proc.stderr:
                self._proc.stderr.close()
            self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def process_tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process and its live descendants, from /proc.

    Children that already exited are not counted, so read it before and after a run of a
    server whose processes stay up (nginx's workers do).
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                # The name (field 2) may hold spaces; fields after it are plain numbers.
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total / tick


def nginx_version() -> str | None:
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    try:
        out = subprocess.run([exe, "-v"], capture_output=True, text=True, timeout=5)
    except OSError:
        return None
    return (out.stderr or out.stdout).strip().split("/")[-1] or None


def wrk_version() -> str | None:
    exe = shutil.which("wrk")
    if not exe:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True)
    first = (out.stdout or out.stderr).splitlines()
    return first[0].split("[")[0].replace("wrk", "").strip() if first else None


def run_main(main: Any, stopped: str) -> None:
    """Run a benchmark's main() as a script: its return value is the exit status, and Ctrl-C
    exits 130 after saying what was stopped (the atexit hooks stop the servers)."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print(f"\ninterrupted; {stopped} stopped", file=sys.stderr)
        sys.exit(130)


# ---------------------------------------------------------------------------------------------
# Measured client runs

@dataclass
class ClientRun:
    argv: list[str]
    returncode: int
    wall_s: float
    cpu_s: float  # user+sys of the whole child process, from wait4()
    peak_rss_mb: float | None  # VmHWM sampled from /proc while it ran
    stdout: str
    stderr: str
    report: dict[str, Any] = field(default_factory=dict)  # last JSON line the client printed


def _vm_hwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def run_client(argv: Sequence[str], timeout: float = 900.0, env: dict[str, str] | None = None) -> ClientRun:
    """Runs one client in its own process and measures it.

    CPU comes from wait4() (this child only, unlike RUSAGE_CHILDREN deltas, which would also
    count anything else we reaped). Peak RSS is the child's own VmHWM: ru_maxrss is useless
    here because Linux carries the forking parent's high-water mark across exec.
    A client may print a JSON object as its last stdout line; it is parsed into `report`.
    """
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    start = time.monotonic()
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                            start_new_session=True, env=env)
    _live[proc.pid] = proc
    hwm: int | None = None
    rusage = None
    status = 0
    deadline = start + timeout
    try:
        while True:
            sample = _vm_hwm_kb(proc.pid)
            if sample is not None:
                hwm = max(hwm or 0, sample)
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, rusage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
    except BaseException:
        # Ctrl-C does not reach a child in its own session; stop it ourselves.
        _terminate(proc)
        raise
    finally:
        _live.pop(proc.pid, None)
    wall = time.monotonic() - start
    # We reaped it ourselves; tell Popen so it does not try again.
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    stdout = out.read().decode(errors="replace")
    stderr = err.read().decode(errors="replace")
    out.close()
    err.close()
    report: dict[str, Any] = {}
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                report = json.loads(line)
            except ValueError:
                pass
            break
    return ClientRun(
        argv=list(argv), returncode=proc.returncode, wall_s=wall,
        cpu_s=(rusage.ru_utime + rusage.ru_stime) if rusage else 0.0,
        peak_rss_mb=round(hwm / 1024, 1) if hwm else None,
        stdout=stdout, stderr=stderr, report=report,
    )


def read_self_usage() -> dict[str, float]:
    """For use inside a client: CPU seconds so far (all threads) and VmHWM in MB."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    hwm = _vm_hwm_kb(os.getpid())
    return {"cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mb": round(hwm / 1024, 1) if hwm else 0.0}


# ---------------------------------------------------------------------------------------------
# Reporting

def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def ratio(value: float | None, reference: float | None) -> float | None:
    if not value or not reference:
        return None
    return value / reference


# (header, row key, decimals) of the columns after the ratios, before `note`.
DEFAULT_COLUMNS = (("cpu s/1k req", "cpu_s_per_1k", 3), ("peak RSS MB", "peak_rss_mb", 1),
                   ("requests", "requests", 0))


def print_table(title: str, rows: Sequence[dict[str, Any]], references: Iterable[str] = ("wrk",),
                unit: str = "requests/s", file=None,
                columns: Sequence[tuple[str, str, int]] = DEFAULT_COLUMNS) -> None:
    """One line per tool: value, ratio to each reference row present, then `columns`
    (by default CPU per 1k requests, peak RSS and requests) and the note."""
    file = file or sys.stdout
    by_tool = {r["tool"]: r for r in rows if r.get("value")}
    refs = [name for name in references if name in by_tool]
    header = ["tool", unit] + [f"vs {name}" for name in refs] + [c[0] for c in columns] + ["note"]
    table = []
    for row in rows:
        cells = [row["tool"], _fmt(row.get("value"))]
        for name in refs:
            r = ratio(row.get("value"), by_tool[name]["value"])
            cells.append("-" if r is None else f"{r:.3f}x" if r < 0.1 else f"{r:.2f}x")
        cells += [_fmt(row.get(key), digits) for _, key, digits in columns] + [row.get("note", "")]
        table.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *table)]
    print(f"\n{title}", file=file)
    print("  ".join(h.ljust(w) if i in (0, len(header) - 1) else h.rjust(w)
                    for i, (h, w) in enumerate(zip(header, widths))), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for cells in table:
        print("  ".join(c.ljust(w) if i in (0, len(cells) - 1) else c.rjust(w)
                        for i, (c, w) in enumerate(zip(cells, widths))), file=file)
    file.flush()


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        # Other work on the box makes numbers noisy; keep the evidence with the numbers.
        info["loadavg_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def write_results(name: str, rows: list[dict[str, Any]], unit: str = "requests/s",
                  machine: dict[str, Any] | None = None, **extra: Any) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "unit": unit,
        "rows": rows,
        "machine": machine or machine_info(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
    return path
