"""A loopback TCP fault proxy for the reliability tests.

Sits between a client and a server on 127.0.0.1 and damages the byte stream on demand:

- ``latency_ms``: each chunk is held that long before it is forwarded (both directions);
- ``bandwidth``: bytes per second per direction per connection (0 = unlimited);
- ``reset_after``: after that many bytes from the server on one connection, the client side
  is reset (RST, SO_LINGER 0) and the server side closed (None = never);
- ``black_hole``: bytes are swallowed in both directions; new connections are accepted and
  never answered;
- ``down()`` / ``up()``: the listening socket is closed (connects are refused) and every open
  connection reset; ``up()`` listens again on the same port.

Modes are plain attributes, read live by every connection, so a test can change them mid-run.
``stats()`` counts connections (accepted, open), resets it caused (``resets``: cut by
``reset_after``, ``partial_cuts`` of them inside a chunk of the server's bytes, i.e. mid-body;
``down_resets``: open connections reset by ``down()``), ``downs``, bytes ``forwarded`` and
``swallowed`` (black hole) and chunks ``delayed`` by latency. Threads only, no asyncio:
each connection has two pump threads; everything stops within ~0.1 s of ``stop()``.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import List, Optional, Tuple

__all__ = ["FaultProxy"]

_TICK = 0.05  # how often blocked threads look at the stop flags


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Conn:
    def __init__(self, proxy: FaultProxy, client: socket.socket):
        self.proxy = proxy
        self.client = client
        self.server: Optional[socket.socket] = None
        self.closed = threading.Event()
        self.from_server = 0
        self.lock = threading.Lock()
        self.threads: List[threading.Thread] = []

    def start(self) -> None:
        t = threading.Thread(target=self._run, name="fault-proxy-conn", daemon=True)
        self.threads.append(t)
        t.start()

    def _run(self) -> None:
        p = self.proxy
        self.client.settimeout(_TICK)
        if not p.black_hole:
            try:
                self.server = socket.create_connection(p.upstream, timeout=5)
                self.server.settimeout(_TICK)
            except OSError:
                self.close(reset=True)
                return
        up = threading.Thread(target=self._pump, args=(True,), name="fault-proxy-up", daemon=True)
        self.threads.append(up)
        up.start()
        self._pump(False)
        up.join()

    def _pump(self, to_server: bool) -> None:
        """to_server: client -> server; else server -> client."""
        p = self.proxy
        src = self.client if to_server else self.server
        while not self.closed.is_set():
            if src is None:  # black-holed from the start: just swallow the client's bytes
                if to_server:
                    src = self.client
                else:
                    self.closed.wait(_TICK)
                    continue
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                self.close(reset=True)
                return
            if not data:
                self.close(reset=False)
                return
            if p.black_hole or self.server is None:
                p._count("swallowed", len(data))
                continue
            if p.latency_ms > 0:
                p._count("delayed")
                if self.closed.wait(p.latency_ms / 1000.0):
                    return
            cut = partial = False
            if not to_server and p.reset_after is not None:
                with self.lock:
                    room = max(0, p.reset_after - self.from_server)
                    if len(data) >= room:
                        data, cut, partial = data[:room], True, 0 < room
                    self.from_server += len(data)
            if not self._send(self.server if to_server else self.client, data):
                return
            p._count("forwarded", len(data))
            if cut:
                p._count("resets")
                if partial:
                    p._count("partial_cuts")
                self.close(reset=True)
                return

    def _send(self, dst: socket.socket, data: bytes) -> bool:
        p = self.proxy
        view = memoryview(data)
        while view and not self.closed.is_set():
            bw = p.bandwidth
            piece = view if not bw else view[:max(1, bw // 20)]
            try:
                dst.sendall(piece)
            except OSError:
                self.close(reset=True)
                return False
            view = view[len(piece):]
            if bw:
                if self.closed.wait(len(piece) / bw):
                    return False
        return not self.closed.is_set()

    def close(self, reset: bool) -> None:
        with self.lock:
            if self.closed.is_set():
                return
            self.closed.set()
        for s in (self.client, self.server):
            if s is None:
                continue
            if reset:
                _reset(s)
            else:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        self.proxy._forget(self)


class FaultProxy:
    """``FaultProxy(upstream_port)`` listens on 127.0.0.1:<free port> and forwards to upstream."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", *, port: int = 0):
        self.upstream: Tuple[str, int] = (upstream_host, upstream_port)
        self.latency_ms = 0.0
        self.bandwidth = 0
        self.reset_after: Optional[int] = None
        self.black_hole = False
        self.port = port
        self._lock = threading.Lock()
        self._conns: List[_Conn] = []
        self._accepted = 0
        self._max_open = 0
        self._counts = dict.fromkeys(("resets", "partial_cuts", "down_resets", "downs", "forwarded",
                                      "swallowed", "delayed"), 0)
        self._listener: Optional[socket.socket] = None
        self._acceptor: Optional[threading.Thread] = None
        self._stopping = threading.Event()

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self.up()
        return self

    def stop(self) -> None:
        self.down()
        self._stopping.set()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        """Listen (again, on the same port once it has one)."""
        if self._listener is not None:
            return
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(128)
        s.settimeout(_TICK)
        self.port = s.getsockname()[1]
        self._listener = s
        self._acceptor = threading.Thread(target=self._accept, args=(s,), name="fault-proxy-accept", daemon=True)
        self._acceptor.start()

    def down(self) -> None:
        """Stop listening (connects are refused) and reset every open connection."""
        s, self._listener = self._listener, None
        if s is not None:
            s.close()
            self._count("downs")
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
            self._acceptor = None
        with self._lock:
            conns = list(self._conns)
        self._count("down_resets", len(conns))
        for c in conns:
            c.close(reset=True)
        for c in conns:
            for t in c.threads:
                if t is not threading.current_thread():
                    t.join(timeout=5)

    def reset_faults(self) -> None:
        self.latency_ms, self.bandwidth, self.reset_after, self.black_hole = 0.0, 0, None, False

    def stats(self) -> dict:
        with self._lock:
            return {"accepted": self._accepted, "open": len(self._conns), "max_open": self._max_open,
                    **self._counts}

    # -- internals ----------------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                sock, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn = _Conn(self, sock)
            with self._lock:
                self._accepted += 1
                self._conns.append(conn)
                self._max_open = max(self._max_open, len(self._conns))
            conn.start()

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self._counts[what] += n

    def _forget(self, conn: _Conn) -> None:
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)


if __name__ == "__main__":  # a manual check: python fault_proxy.py UPSTREAM_PORT
    import sys
    with FaultProxy(int(sys.argv[1])) as px:
        print(px.url, flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
