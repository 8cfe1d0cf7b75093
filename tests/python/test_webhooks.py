"""The webhook receiver on real sockets: a real LocalQueue file (read back through a second
LocalQueue on the same file), a RabbitMQ broker, the sandbox's webhooks, a SIGKILLed child."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest
import requests

import isthmus
import servers
from conftest import wait_until
from isthmus import _core

HERE = os.path.dirname(os.path.abspath(__file__))
SECRET = "whsec_" + base64.b64encode(b"receiver-test-key-0123456789").decode()
ROUTE = "/hooks/crm"


def signed(event_id: str, body: bytes, *, scheme: str = "standard", secret: str = SECRET,
           ts: float | None = None) -> dict:
    return dict(_core.sign_webhook(scheme, secret, event_id, time.time() if ts is None else ts, body))


def event(n: int | str) -> bytes:
    return json.dumps({"type": "contact.updated", "data": {"id": str(n), "name": "Zoë"}}).encode()


def drain(path, n: int = 100_000) -> list:
    """Every message in the queue file, leased and acked through a second LocalQueue."""
    with isthmus.LocalQueue(path) as q:
        out = []
        while True:
            lease = q.lease(1000, visibility=60)
            if not lease:
                return out
            out += [json.loads(m.body) for m in lease]
            q.ack(lease)


@pytest.fixture
def queue_file(tmp_path):
    return tmp_path / "events.db"


@pytest.fixture
def rx(queue_file):
    with isthmus.WebhookReceiver(routes={ROUTE: {"scheme": "standard", "secret": SECRET}},
                                 queue=isthmus.LocalQueue(queue_file), max_body_bytes=4096) as r:
        yield r


def post(rx, body: bytes, headers: dict, path: str = ROUTE) -> requests.Response:
    return requests.post(rx.url + path, data=body, headers=headers, timeout=10)


def test_an_event_is_in_the_queue_when_it_is_acknowledged(rx, queue_file):
    body = event(1)
    ts = int(time.time())
    before = time.time()
    r = post(rx, body, signed("msg_1", body, ts=ts))
    assert r.status_code == 200 and r.json() == {"accepted": True}
    # Read back at once through another connection to the file: the write came first.
    (msg,) = drain(queue_file)
    assert list(msg) == ["route", "event_id", "received_at", "timestamp", "event"]
    assert msg["route"] == ROUTE and msg["event_id"] == "msg_1" and msg["timestamp"] == ts
    assert before - 1 <= msg["received_at"] <= time.time() + 1
    assert msg["event"] == json.loads(body)
    s = rx.stats()
    assert s["accepted"] == 1 and s["requests"] == 1 and s["routes"] == {ROUTE: 1}


@pytest.mark.parametrize("scheme", ["stripe", "github", "hmac-hex", "hmac-base64"])
def test_every_scheme_finds_its_event_id_and_timestamp(tmp_path, scheme):
    secret = "s3cret-for-" + scheme
    route = {"scheme": scheme.split("-")[0], "secret": secret}
    if scheme == "hmac-base64":
        route.update(id_header="X-Event-Id", timestamp_header="X-Event-Time", signature_header="X-Sig")
    body = json.dumps({"id": "evt_9", "object": "event"}).encode()
    ts = int(time.time())
    if scheme == "stripe":
        headers, want_id, want_ts = signed("ignored", body, scheme="stripe", secret=secret, ts=ts), "evt_9", ts
    elif scheme == "github":
        headers = signed("", body, scheme="github", secret=secret)
        headers["X-GitHub-Delivery"] = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
        want_id, want_ts = headers["X-GitHub-Delivery"], None
    elif scheme == "hmac-hex":
        headers = {"X-Webhook-Signature": _core.sign_hmac_webhook(secret, body), "X-Webhook-Id": "h-1"}
        want_id, want_ts = "h-1", None
    else:
        mac = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
        headers = {"X-Sig": mac, "X-Event-Id": "h-2", "X-Event-Time": str(ts)}
        want_id, want_ts = "h-2", ts
    with isthmus.WebhookReceiver(routes={"/in": route}, queue=tmp_path / "q.db") as rx:
        r = post(rx, body, headers, "/in")
        assert r.status_code == 200, r.text
        (msg,) = drain(tmp_path / "q.db")
        assert msg["event_id"] == want_id and msg["timestamp"] == want_ts and msg["event"]["id"] == "evt_9"
        # The same body under another secret is refused.
        if scheme == "hmac-hex":
            headers["X-Webhook-Signature"] = _core.sign_hmac_webhook("other", body)
            assert post(rx, body, headers, "/in").status_code == 401


def test_every_rejection_has_its_status_counter_and_check(rx, queue_file):
    body = event(2)
    good = signed("msg_2", body)
    cases = [
        # (path, method, body, headers, status, counter, check)
        ("/nope", "POST", body, good, 404, "unknown_route", "route"),
        (ROUTE, "GET", b"", {}, 405, "method_not_allowed", "method"),
        (ROUTE, "POST", b"x" * 5000, good, 413, "too_large", "size"),
        (ROUTE, "POST", body, {}, 400, "bad_headers", "header"),
        (ROUTE, "POST", body, {**good, "webhook-timestamp": "yesterday"}, 400, "bad_headers", "header"),
        (ROUTE, "POST", body + b" ", good, 401, "bad_signature", "signature"),
        (ROUTE, "POST", body, signed("msg_2", body, ts=time.time() - 301), 401, "stale", "timestamp"),
        (ROUTE, "POST", b"{not json", signed("msg_3", b"{not json"), 400, "bad_json", "json"),
        (ROUTE, "POST", body, signed("x" * 300, body), 400, "bad_headers", "event_id"),
    ]
    for path, method, data, headers, status, counter, check in cases:
        before = rx.stats()
        r = requests.request(method, rx.url + path, data=data, headers=headers, timeout=10)
        assert r.status_code == status, (counter, r.text)
        assert r.json()["error"] == check, (counter, r.text)
        assert SECRET not in r.text and SECRET[6:] not in r.text
        sig = headers.get("webhook-signature", "")
        assert not sig or sig[3:] not in r.text
        after = rx.stats()
        assert after[counter] == before[counter] + 1, counter
        assert after["requests"] == before["requests"] + 1, counter
    assert rx.stats()["accepted"] == 0
    assert drain(queue_file) == []


def test_a_body_over_the_limit_is_refused_without_being_read(rx):
    # A declared length over the limit is answered after the head: the body never needs sending.
    with socket.create_connection(("127.0.0.1", rx.port), timeout=10) as s:
        s.sendall(f"POST {ROUTE} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n".encode())
        head = s.recv(4096).decode()
        assert head.startswith("HTTP/1.1 413") and "Connection: close" in head
    # A chunked body is cut off at the limit.
    with socket.create_connection(("127.0.0.1", rx.port), timeout=10) as s:
        s.sendall(f"POST {ROUTE} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"y" * 3000
        s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2)
        assert s.recv(4096).decode().startswith("HTTP/1.1 413")
    assert rx.stats()["too_large"] == 2


def test_a_duplicate_is_answered_but_not_queued_again(rx, queue_file):
    body = event(3)
    headers = signed("msg_dup", body)
    assert post(rx, body, headers).json() == {"accepted": True}
    r = post(rx, body, headers)
    assert r.status_code == 200 and r.json() == {"duplicate": True}
    assert len(drain(queue_file)) == 1
    assert rx.stats()["duplicates"] == 1 and rx.stats()["accepted"] == 1


def test_concurrent_copies_of_one_event_are_written_once(rx, queue_file):
    body = event(4)
    headers = signed("msg_same", body)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: post(rx, body, headers).json(), range(32)))
    assert answers.count({"accepted": True}) == 1
    assert answers.count({"duplicate": True}) == 31
    assert len(drain(queue_file)) == 1


def test_concurrent_events_share_queue_writes(rx, queue_file):
    n = 400
    bodies = [event(i) for i in range(n)]
    sessions = threading.local()

    def send(i):
        if not hasattr(sessions, "s"):
            sessions.s = requests.Session()
        return sessions.s.post(rx.url + ROUTE, data=bodies[i], headers=signed(f"m{i}", bodies[i]), timeout=30)

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        statuses = [r.status_code for r in pool.map(send, range(n))]
    assert statuses == [200] * n
    s = rx.stats()
    assert s["accepted"] == n
    # Group commit: events that arrived during a write went out together in the next one.
    assert s["puts"] < n
    assert sorted(m["event_id"] for m in drain(queue_file)) == sorted(f"m{i}" for i in range(n))


def test_a_full_queue_answers_503_until_it_is_drained(tmp_path):
    path = tmp_path / "full.db"
    with isthmus.WebhookReceiver(routes={ROUTE: {"secret": SECRET}}, queue=path, max_depth=3,
                                 retry_after=7) as rx:
        for i in range(3):
            assert post(rx, event(i), signed(f"f{i}", event(i))).status_code == 200
        r = post(rx, event(9), signed("f9", event(9)))
        assert r.status_code == 503 and r.headers["Retry-After"] == "7" and r.json()["error"] == "queue_full"
        assert rx.stats()["queue_full"] == 1
        assert len(drain(path)) == 3
        # The receiver learns of the drain from the queue's stats (refreshed about once a second).
        wait_until(lambda: post(rx, event(9), signed("f9", event(9))).status_code == 200, timeout=15, interval=0.2)
        assert [m["event_id"] for m in drain(path)] == ["f9"]


def test_a_failed_write_answers_503_and_acknowledges_nothing(tmp_path):
    q = isthmus.LocalQueue(tmp_path / "q.db")
    with isthmus.WebhookReceiver(routes={ROUTE: {"secret": SECRET}}, queue=q) as rx:
        q.close()  # the file is gone from under the receiver: every put fails
        r = post(rx, event(5), signed("e5", event(5)))
        assert r.status_code == 503 and "Retry-After" in r.headers and r.json()["error"] == "queue"
        s = rx.stats()
        assert s["queue_errors"] == 1 and s["accepted"] == 0
    # The id was not remembered as accepted: a retry to a healthy receiver is written.
    with isthmus.WebhookReceiver(routes={ROUTE: {"secret": SECRET}}, queue=tmp_path / "q.db") as rx:
        assert post(rx, event(5), signed("e5", event(5))).json() == {"accepted": True}


def test_no_acknowledged_event_is_lost_to_kill_9(tmp_path):
    path = str(tmp_path / "crash.db")
    child = subprocess.Popen([sys.executable, os.path.join(HERE, "webhook_child.py"), path, SECRET],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = child.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), child.stderr.read()
        acked, lock, stop = [], threading.Lock(), threading.Event()

        def sender(k: int) -> None:
            s = requests.Session()
            i = 0
            while not stop.is_set():
                eid = f"k{k}-{i}"
                body = event(eid)
                try:
                    r = s.post(url + "/hooks/crash", data=body, headers=signed(eid, body), timeout=10)
                except requests.RequestException:
                    return  # the receiver died
                if r.status_code == 200:
                    with lock:
                        acked.append(eid)
                i += 1

        threads = [threading.Thread(target=sender, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        # Kill while events are flowing, right after the 300th acknowledgement.
        wait_until(lambda: len(acked) >= 300, timeout=60, interval=0.001)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    stored = {m["event_id"] for m in drain(path)}
    lost = set(acked) - stored
    assert len(acked) >= 300 and not lost, f"{len(lost)} acknowledged events lost"


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    if not servers.have_rabbitmq:
        pytest.skip("rabbitmq-server is not installed (scripts/install-deps.sh installs it)")
    with servers.RabbitMQ(tmp_path_factory.mktemp("broker")) as b:
        yield b


def test_events_go_to_a_rabbitmq_queue(broker):
    name = f"webhooks-{uuid.uuid4().hex[:8]}"
    with isthmus.WebhookReceiver(routes={ROUTE: {"secret": SECRET}}, queue=broker.url, queue_name=name) as rx:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda i: post(rx, event(i), signed(f"a{i}", event(i))).status_code, range(50)))
        assert statuses == [200] * 50
        assert post(rx, event(0), signed("a0", event(0))).json() == {"duplicate": True}
        with isthmus.AmqpQueue(broker.url, name) as q:
            got = []
            wait_until(lambda: got.extend(json.loads(m.body)["event_id"] for m in q.lease(100, visibility=60))
                       or len(got) >= 50, timeout=30, interval=0.05)
            assert sorted(got) == sorted(f"a{i}" for i in range(50))


def test_the_sandbox_webhooks_arrive_end_to_end(tmp_path):
    port = servers.free_port()
    path = tmp_path / "sandbox-events.db"
    with isthmus.Sandbox(webhook_backoff=0.1) as api:
        reg = requests.post(api.url + "/v1/webhooks", json={"url": f"http://127.0.0.1:{port}/hooks/sandbox"})
        assert reg.status_code == 201
        routes = {"/hooks/sandbox": {"scheme": "standard", "secret": reg.json()["secret"]}}
        with isthmus.WebhookReceiver(routes=routes, queue=path, port=port) as rx:
            for i in range(5):
                r = requests.post(api.url + "/v1/contacts", json={"id": f"sb{i}", "name": f"n{i}"})
                assert r.status_code == 201
            wait_until(lambda: api.stats()["webhooks"].get("delivered", 0) >= 5, timeout=20)
            assert rx.stats()["accepted"] == 5
    msgs = drain(path)
    assert sorted(m["event"]["data"]["id"] for m in msgs) == [f"sb{i}" for i in range(5)]
    assert all(m["event"]["type"] == "contacts.created" and m["route"] == "/hooks/sandbox" for m in msgs)


@pytest.mark.parametrize("routes, field", [
    ({}, "routes"),
    ({"hooks": {"secret": SECRET}}, "routes['hooks']"),
    ({ROUTE: {"scheme": "svix2", "secret": SECRET}}, "scheme"),
    ({ROUTE: {"secret": ""}}, "secret"),
    ({ROUTE: {"secret": "whsec_!!!"}}, "secret"),
    ({ROUTE: {"secret": SECRET, "tolerance": -1}}, "tolerance"),
    ({ROUTE: {"secret": SECRET, "signature_header": "X-Sig"}}, "signature_header"),
    ({ROUTE: {"scheme": "hmac", "secret": "s", "id_header": "bad header"}}, "id_header"),
    ({ROUTE: {"secret": SECRET, "tolerence": 5}}, "tolerence"),
])
def test_bad_routes_name_the_field(tmp_path, routes, field):
    with pytest.raises(isthmus.ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")) as caught:
        isthmus.WebhookReceiver(routes=routes, queue=tmp_path / "q.db")
    assert "!!!" not in str(caught.value) and SECRET not in str(caught.value)


@pytest.mark.parametrize("kw, field", [
    ({"port": 70000}, "port"), ({"threads": 0}, "threads"), ({"max_depth": 0}, "max_depth"),
    ({"max_body_bytes": 0}, "max_body_bytes"), ({"queue": 5}, "queue"), ({"host": "nowhere"}, "host"),
])
def test_bad_arguments_name_the_field(tmp_path, kw, field):
    args = {"routes": {ROUTE: {"secret": SECRET}}, "queue": tmp_path / "q.db", **kw}
    with pytest.raises(isthmus.ConfigError, match=field):
        isthmus.WebhookReceiver(**args).start()


def _serve(config, env=None):
    return subprocess.Popen([sys.executable, "-m", "isthmus.cli", "webhooks", "serve", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def test_cli_serves_a_yaml_file_until_sigterm(tmp_path):
    config = tmp_path / "webhooks.yaml"
    config.write_text(textwrap.dedent("""\
        port: 0
        queue: ./events.db
        routes:
          /hooks/crm:
            scheme: standard
            secret: "${CRM_WEBHOOK_SECRET}"
            tolerance: 600
        """))
    p = _serve(config, {"CRM_WEBHOOK_SECRET": SECRET})
    try:
        line = p.stdout.readline()
        assert line.startswith("isthmus webhooks serving on http://127.0.0.1:"), p.stderr.read()
        url = line.split()[4]
        body = event(7)
        r = requests.post(url + ROUTE, data=body, headers=signed("cli-7", body), timeout=10)
        assert r.json() == {"accepted": True}
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert "1 accepted" in out and SECRET not in out + err
    assert [m["event_id"] for m in drain(tmp_path / "events.db")] == ["cli-7"]


@pytest.mark.parametrize("text, message", [
    ("queue: ./e.db\nroutes:\n  /a: {secret: s, shceme: github}\n",
     "routes./a.shceme: unknown key; did you mean scheme?"),
    ("queue: ./e.db\nroutes:\n  /a: {scheme: gitlab, secret: s}\n", "routes./a.scheme: 'gitlab' is not valid"),
    ("routes:\n  /a: {secret: s}\n", "queue: missing"),
    ("queue: ./e.db\nport: high\nroutes:\n  /a: {secret: s}\n", "port: expected an integer"),
    ("queue: ./e.db\nroutes:\n  /a: {secret: \"${NOT_SET_ANYWHERE}\"}\n", "NOT_SET_ANYWHERE is not set"),
    ("queue: [./e.db\n", "not valid YAML"),
])
def test_cli_names_the_bad_field(tmp_path, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    p = _serve(config)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2 and message in err, err
