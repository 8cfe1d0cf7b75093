"""Real RabbitMQ and Redis servers for tests: children of the test on free loopback ports, with
their data in a temp dir, stopped (and restarted) by PID, never by name.

    with RabbitMQ(tmp_path) as broker:       # broker.url == "amqp://guest:guest@127.0.0.1:PORT/"
        broker.restart()                     # SIGTERM by PID, start again on the same ports and data
        broker.kill(); broker.start()        # SIGKILL to the Erlang VM itself, then boot again
    with Redis(tmp_path) as redis:           # redis.url == "redis://127.0.0.1:PORT/0"
        redis.stop(); redis.start()

RabbitMQ's Erlang runtime wants a port mapper (epmd); a shared one would outlive the test, so
each broker starts its own epmd as a child on a free port (ERL_EPMD_PORT) and stops it by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import List, Optional

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # the Debian wrapper would su to another user
EPMD = shutil.which("epmd") or next(iter(sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))), None)
REDIS_SERVER = shutil.which("redis-server")

have_rabbitmq = os.path.exists(RABBITMQ_SERVER) and EPMD is not None
have_redis = REDIS_SERVER is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _stop(proc: Optional[subprocess.Popen], sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class _Server:
    """Start, stop and restart one server process; the subclass says how and when it is ready."""

    name = "server"
    start_timeout = 60.0

    def __init__(self, tmp_path: Path):
        self.dir = Path(tmp_path) / f"{self.name}-{free_port()}"
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.proc: Optional[subprocess.Popen] = None

    def _command(self) -> List[str]:
        raise NotImplementedError

    def _env(self) -> dict:
        return dict(os.environ)

    def _ready(self) -> bool:
        return _accepts(self.port)

    def _log(self) -> str:
        return ""

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is already running"
        # The child keeps its own copy of the descriptor; ours is closed at once.
        with open(self.dir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(self._command(), env=self._env(), cwd=self.dir, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                _stop(self.proc, signal.SIGKILL)
                raise RuntimeError(f"{self.name} did not start on 127.0.0.1:{self.port}:\n"
                                   + (self.dir / "stdout.log").read_text(errors="replace")[-3000:]
                                   + self._log())
            time.sleep(0.05)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), waiting until the process has exited."""
        _stop(self.proc)

    def kill(self) -> None:
        _stop(self.proc, signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def close(self) -> None:
        self.stop()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Redis(_Server):
    name = "redis"
    start_timeout = 20.0

    def __init__(self, tmp_path: Path, password: Optional[str] = None):
        super().__init__(tmp_path)
        self.password = password

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _command(self) -> List[str]:
        cmd = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
               "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no"]
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall((f"AUTH {self.password}\r\nPING\r\n" if self.password else "PING\r\n").encode())
                return b"PONG" in s.recv(256)
        except OSError:
            return False


class RabbitMQ(_Server):
    name = "rabbitmq"
    start_timeout = 90.0

    def __init__(self, tmp_path: Path):
        super().__init__(tmp_path)
        self.dist_port, self.epmd_port = free_port(), free_port()
        self.node = f"isthmus{self.port}@localhost"
        self.epmd: Optional[subprocess.Popen] = None
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            "log.console = false\n"
            "log.file.level = warning\n")
        (self.dir / "enabled_plugins").write_text("[].\n")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _env(self) -> dict:
        env = dict(os.environ, HOME=str(self.dir), ERL_EPMD_PORT=str(self.epmd_port),
                   RABBITMQ_NODENAME=self.node, RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
                   RABBITMQ_NODE_PORT=str(self.port), RABBITMQ_DIST_PORT=str(self.dist_port),
                   RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
                   RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
                   RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"), RABBITMQ_LOG_BASE=str(self.dir / "log"),
                   RABBITMQ_PID_FILE=str(self.dir / "rabbitmq.pid"))
        env.pop("RABBITMQ_CONF_ENV_FILE", None)
        return env

    def _command(self) -> List[str]:
        return [RABBITMQ_SERVER]

    def _ready(self) -> bool:
        # The AMQP listener opens once the broker has booted: its protocol header gets an answer.
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"AMQP\x00\x00\x09\x01")
                return len(s.recv(8)) > 0
        except OSError:
            return False

    def _log(self) -> str:
        logs = sorted((self.dir / "log").glob("*.log")) if (self.dir / "log").exists() else []
        return "".join(p.read_text(errors="replace")[-2000:] for p in logs)

    def start(self) -> None:
        if self.epmd is None or self.epmd.poll() is not None:
            self.epmd = subprocess.Popen([str(EPMD), "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         env=dict(os.environ, ERL_EPMD_PORT=str(self.epmd_port)))
            deadline = time.monotonic() + 10
            while not _accepts(self.epmd_port):
                assert self.epmd.poll() is None and time.monotonic() < deadline, "epmd did not start"
                time.sleep(0.02)
        super().start()

    def kill(self) -> None:
        """SIGKILL to the broker itself. The Debian script runs the Erlang VM as its own child
        and only forwards catchable signals, so killing the script alone would leave the broker
        running: the VM's PID comes from the pid file the broker writes at boot."""
        beam = None
        try:
            beam = int((self.dir / "rabbitmq.pid").read_text().strip())
        except (OSError, ValueError):
            pass
        if beam is not None and self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(beam, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 30
            while _alive(beam) and time.monotonic() < deadline:
                time.sleep(0.02)
        super().kill()

    def close(self) -> None:
        self.stop()
        _stop(self.epmd)


def _alive(pid: int) -> bool:
    """Whether a process that is not our child still runs (a zombie awaiting its reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
