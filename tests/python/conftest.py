"""Shared fixtures: a real sandbox server on 127.0.0.1 for the whole session."""

from __future__ import annotations

import socket
import time

import pytest

import isthmus


@pytest.fixture(scope="session")
def sandbox():
    with isthmus.Sandbox() as sb:
        yield sb


@pytest.fixture
def fresh_sandbox():
    """A sandbox of the test's own, for tests that count connections."""
    with isthmus.Sandbox() as sb:
        yield sb


@pytest.fixture
def client(sandbox):
    with isthmus.Client(sandbox.url) as c:
        yield c


@pytest.fixture
def closed_port():
    """A loopback port with nothing listening on it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until(predicate, timeout=10.0, interval=0.01):
    """Poll until predicate() is true; fail the test if the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("condition not reached before the deadline")
