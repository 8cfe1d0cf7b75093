"""The loopback fault proxy, with a real sandbox behind it and an isthmus.Client in front.

Each fault must surface as the typed isthmus error a pipeline retries on; each test also checks
that the fault really happened (a proxy counter, a byte count), so a proxy that passes bytes
through untouched fails here.
"""

from __future__ import annotations

import time

import pytest

import isthmus
from fault_proxy import FaultProxy


@pytest.fixture
def proxied(fresh_sandbox):
    with FaultProxy(fresh_sandbox.port) as px:
        yield fresh_sandbox, px


def test_passes_bytes_through_and_counts_connections(proxied):
    sb, px = proxied
    with isthmus.Client(px.url, timeout=5) as c:
        for _ in range(3):
            r = c.get("/bytes/100000")
            assert r.status_code == 200
            assert len(r.content) == 100_000
        assert c.get("/json").json()
    assert px.stats()["accepted"] >= 1
    assert sb.stats()["requests"]["by_endpoint"]["GET /bytes/{n}"] == {"200": 3}
    # Body identical to the direct answer.
    with isthmus.Client(sb.url, timeout=5) as direct, isthmus.Client(px.url, timeout=5) as c:
        assert c.get("/bytes/70000").content == direct.get("/bytes/70000").content


def test_connection_counter_counts_each_client(proxied):
    _, px = proxied
    for _ in range(3):
        with isthmus.Client(px.url, timeout=5) as c:
            assert c.get("/json").status_code == 200
    assert px.stats()["accepted"] == 3
    px.down()  # resets whatever is still open
    assert px.stats()["open"] == 0
    px.up()


def test_latency_delays_and_times_out(proxied):
    _, px = proxied
    px.latency_ms = 300
    with isthmus.Client(px.url, timeout=5) as c:
        t0 = time.monotonic()
        assert c.get("/json").status_code == 200
        # At least one hold each way.
        assert time.monotonic() - t0 >= 0.55
    with isthmus.Client(px.url, timeout=0.15) as c:
        with pytest.raises(isthmus.TimeoutError):
            c.get("/json")


def test_bandwidth_cap(proxied):
    _, px = proxied
    px.bandwidth = 400_000
    with isthmus.Client(px.url, timeout=10) as c:
        t0 = time.monotonic()
        r = c.get("/bytes/200000")
        elapsed = time.monotonic() - t0
    assert len(r.content) == 200_000
    assert elapsed >= 0.45  # 200 kB at 400 kB/s is 0.5 s; never faster than the cap


def test_reset_after_n_bytes(proxied):
    sb, px = proxied
    px.reset_after = 5_000
    with isthmus.Client(px.url, timeout=5) as c:
        with pytest.raises(isthmus.TransportError):
            c.get("/bytes/100000")
        assert px.stats()["resets"] == 1
        # A short answer fits under the limit on a new connection.
        assert c.get("/json").status_code == 200
    assert sb.stats()["requests"]["by_endpoint"]["GET /bytes/{n}"] == {"200": 1}


def test_black_hole_times_out(proxied):
    sb, px = proxied
    px.black_hole = True
    with isthmus.Client(px.url, timeout=0.3) as c:
        t0 = time.monotonic()
        with pytest.raises(isthmus.TimeoutError):
            c.get("/json")
        assert time.monotonic() - t0 >= 0.25
    assert "GET /json" not in sb.stats()["requests"]["by_endpoint"]
    px.black_hole = False
    with isthmus.Client(px.url, timeout=5) as c:
        assert c.get("/json").status_code == 200


def test_down_refuses_and_up_recovers(proxied):
    _, px = proxied
    port = px.port
    with isthmus.Client(px.url, timeout=5) as c:
        assert c.get("/json").status_code == 200
        px.down()
        with pytest.raises(isthmus.TransportError):
            c.get("/json")
        px.up()
        assert px.port == port
        assert c.get("/json").status_code == 200
    with isthmus.Client(f"http://127.0.0.1:{port}", timeout=5, connect_timeout=2) as c:
        px.down()
        with pytest.raises(isthmus.ConnectError):
            c.get("/json")
        px.up()


def test_modes_change_on_a_live_connection(proxied):
    """A keep-alive connection picks up a new mode without reconnecting."""
    _, px = proxied
    with isthmus.Client(px.url, timeout=0.3) as c:
        assert c.get("/json").status_code == 200
        px.black_hole = True
        with pytest.raises(isthmus.TimeoutError):
            c.get("/json")
