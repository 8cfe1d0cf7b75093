"""Shared fixtures: a real sandbox server on 127.0.0.1 for the whole session."""

from __future__ import annotations

import socket
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

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


def authorization_code_refresh_token(api) -> str:
    """A refresh token from the sandbox, obtained by hand (authorize -> code -> token)."""
    redirect = "http://127.0.0.1:9/cb"
    r = requests.get(api.authorize_url, params={"response_type": "code", "client_id": api.client_id,
                                                "redirect_uri": redirect}, allow_redirects=False)
    code = parse_qs(urlsplit(r.headers["Location"]).query)["code"][0]
    t = requests.post(api.token_url, data={"grant_type": "authorization_code", "code": code,
                                           "redirect_uri": redirect},
                      auth=(api.client_id, api.client_secret))
    t.raise_for_status()
    return t.json()["refresh_token"]
