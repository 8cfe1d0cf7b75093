"""The queue interface on both backends: LocalQueue (a real SQLite file, shared by threads and
processes, killed with SIGKILL while it works) and AmqpQueue (a real RabbitMQ broker, a child of
the test on free loopback ports, killed and restarted while it holds messages).

The contract tests take a `make_queue` fixture and run on both backends; the tests after them
are one backend's own. pika looks at the broker independently of the client under test."""

from __future__ import annotations

import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import pytest

import isthmus
import servers
from conftest import wait_until
from isthmus import AmqpQueue, LocalQueue


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """One broker for the module (it takes seconds to start); each test uses its own queues."""
    if not servers.have_rabbitmq:
        pytest.skip("rabbitmq-server is not installed (scripts/install-deps.sh installs it)")
    with servers.RabbitMQ(tmp_path_factory.mktemp("broker")) as b:
        yield b


def _queue_name(request) -> str:
    return f"{request.node.originalname}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["local", "amqp"])
def make_queue(request, tmp_path):
    """make_queue(**kw) opens a fresh, empty queue on the backend of the test's parameter."""
    opened = []

    def make(**kw):
        if request.param == "local":
            q = LocalQueue(tmp_path / f"q{len(opened)}.db", **kw)
        else:
            q = AmqpQueue(request.getfixturevalue("broker").url, _queue_name(request), **kw)
        opened.append(q)
        return q

    yield make
    for q in opened:
        q.close()


def test_put_lease_ack(make_queue):
    with make_queue() as q:
        assert q.put(["a", "b"]) == 2
        assert q.put("c") == 1
        lease = q.lease(2, visibility=30)
        assert [m.body for m in lease] == ["a", "b"]
        assert [m.deliveries for m in lease] == [1, 1]
        assert lease.expires_at > time.time()
        assert q.stats() == {"ready": 1, "leased": 2, "delayed": 0, "dead": 0}
        assert q.ack(lease) == 2
        assert q.stats() == {"ready": 1, "leased": 0, "delayed": 0, "dead": 0}
        (last,) = q.lease(5, visibility=30)
        assert last.body == "c"
        assert not q.lease(5, visibility=30)


def test_str_and_bytes_come_back_as_they_went_in(make_queue):
    with make_queue() as q:
        q.put(["tëxt", b"\x00\xffbytes", b"", ""])
        bodies = [m.body for m in q.lease(10, visibility=30)]
        assert bodies == ["tëxt", b"\x00\xffbytes", b"", ""]
        assert [type(b) for b in bodies] == [str, bytes, bytes, str]


def test_ack_of_some_messages_and_nack_of_the_rest(make_queue):
    with make_queue() as q:
        q.put(["a", "b", "c"])
        a, b, c = q.lease(3, visibility=30)
        assert q.ack(b) == 1
        assert q.nack([a, c], delay=3600) == 2
        assert q.stats() == {"ready": 0, "leased": 0, "delayed": 2, "dead": 0}
        assert not q.lease(3, visibility=30)  # delayed: not ready before the delay passes


def test_nack_without_delay_is_ready_again_with_one_more_delivery(make_queue):
    with make_queue() as q:
        q.put("a")
        q.nack(q.lease(1, visibility=30))
        (again,) = q.lease(1, visibility=30)
        assert (again.body, again.deliveries) == ("a", 2)


def test_dead_letter_after_max_deliveries(make_queue):
    with make_queue(max_deliveries=3) as q:
        q.put(["poison", "fine"])
        for _ in range(3):
            lease = q.lease(2, visibility=30)
            q.ack([m for m in lease if m.body == "fine"])
            q.nack([m for m in lease if m.body == "poison"])
        assert not q.lease(5, visibility=30)
        (dead,) = q.dead_letters()
        assert (dead.body, dead.deliveries) == ("poison", 3)
        assert "max_deliveries 3" in dead.reason and "nacked" in dead.reason
        assert q.stats() == {"ready": 0, "leased": 0, "delayed": 0, "dead": 1}


def test_an_expired_lease_comes_back_and_its_late_ack_removes_nothing(make_queue):
    with make_queue() as q:
        q.put("a")
        first = q.lease(1, visibility=0.05)
        leases = []

        def taken_again():
            leases.append(q.lease(1, visibility=600))
            return bool(leases[-1])

        wait_until(taken_again)
        second = leases[-1]
        (m,) = second
        assert m.deliveries == 2
        assert q.ack(first) == 0  # another lessee holds it now
        assert q.ack(second) == 1


def test_messages_survive_reopening_and_the_file_is_readable_by_sqlite(tmp_path):
    path = tmp_path / "q.db"
    with LocalQueue(path) as q:
        q.put(["a", "b"])
    with LocalQueue(path) as q:
        assert q.stats()["ready"] == 2
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [r[0] for r in db.execute("SELECT body FROM messages ORDER BY id")] == [b"a", b"b"]


@pytest.mark.parametrize("call, field", [
    (lambda q: q.lease(0), "n"),
    (lambda q: q.lease(True), "n"),
    (lambda q: q.lease(1, visibility=0), "visibility"),
    (lambda q: q.lease(1, visibility=float("nan")), "visibility"),
    (lambda q: q.lease(1, visibility=1e30), "visibility"),
    (lambda q: q.nack([], delay=-1), "delay"),
    (lambda q: q.put([1]), "items[0]"),
    (lambda q: q.put(["ok", None]), "items[1]"),
    (lambda q: q.ack(["not a message"]), "messages[0]"),
    (lambda q: q.dead_letters(-1), "limit"),
])
def test_bad_arguments_are_config_errors_naming_the_argument(make_queue, call, field):
    with make_queue() as q:
        with pytest.raises(isthmus.ConfigError, match="^" + re.escape(field)):
            call(q)
        assert q.stats()["ready"] == 0  # a refused put put nothing


@pytest.mark.parametrize("value", [0, -1, 1.5, "5", None])
def test_bad_max_deliveries(make_queue, value):
    with pytest.raises(isthmus.ConfigError, match="max_deliveries"):
        make_queue(max_deliveries=value)


def test_the_core_validates_too(tmp_path):
    with pytest.raises(isthmus.ConfigError, match="max_deliveries"):
        isthmus._core.LocalQueue(str(tmp_path / "q.db"), 0)


def test_a_file_that_is_not_sqlite_is_a_state_error_naming_it(tmp_path):
    path = tmp_path / "q.db"
    path.write_bytes(b"not a database " * 500)
    with pytest.raises(isthmus.StateError, match=rf"queue file {path}.*not a database"):
        LocalQueue(path)


def test_an_empty_file_is_a_state_error(tmp_path):
    path = tmp_path / "q.db"
    path.write_bytes(b"")
    with pytest.raises(isthmus.StateError, match=rf"queue file {path} is empty"):
        LocalQueue(path)


def test_a_state_store_is_not_a_queue(tmp_path):
    from isthmus.store import StateStore
    path = tmp_path / "state.db"
    StateStore(str(path)).close()
    with pytest.raises(isthmus.StateError, match="not an isthmus queue file: it has no table isthmus_queue"):
        LocalQueue(path)


def test_a_dropped_column_and_a_damaged_row_are_state_errors(tmp_path):
    path = tmp_path / "q.db"
    with LocalQueue(path) as q:
        q.put("a")
    db = sqlite3.connect(path)
    db.execute("UPDATE messages SET body = 12345")
    db.commit()
    with LocalQueue(path) as q:
        with pytest.raises(isthmus.StateError, match=rf"queue file {path}: message 1: column body holds an integer"):
            q.lease(1)
    db.execute("ALTER TABLE dead_letters DROP COLUMN reason")
    db.commit()
    db.close()
    with pytest.raises(isthmus.StateError, match="table dead_letters has no column reason"):
        LocalQueue(path)


def test_flipped_bytes_are_a_state_error(tmp_path):
    path = tmp_path / "q.db"
    with LocalQueue(path) as q:
        q.put([f"message {i}" * 50 for i in range(200)])
    data = bytearray(path.read_bytes())
    rng = random.Random(7)
    for i in rng.sample(range(100, len(data)), 400):  # past the header: damaged pages, not a foreign file
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(isthmus.StateError, match=f"queue file {path}"):
        with LocalQueue(path) as q:
            while q.lease(50, visibility=600):
                pass
            q.stats()
            q.dead_letters()


def test_closed_queue_raises_state_error(make_queue):
    q = make_queue()
    q.close()
    q.close()
    with pytest.raises(isthmus.StateError, match="is closed"):
        q.put("a")
    assert "closed" in repr(q)


def test_the_gil_is_released_while_sqlite_waits(tmp_path):
    """Another connection holds the write lock; a put in a thread waits for it inside the core.
    The main thread must still run Python to release the lock: were the GIL held, it could not,
    and the put would fail as locked after the busy timeout."""
    path = tmp_path / "q.db"
    q = LocalQueue(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    started = threading.Event()
    result = []

    def put():
        started.set()
        result.append(q.put("a"))

    t = threading.Thread(target=put)
    t.start()
    started.wait()
    time.sleep(0.05)  # lets the put reach SQLite's busy wait; the test cannot fail because of it
    holder.execute("COMMIT")
    t.join()
    assert result == [1]
    q.close()


def test_threads_sharing_one_queue_never_share_a_live_lease(make_queue):
    with make_queue() as q:
        q.put([str(i) for i in range(300)])
        seen = []
        lock = threading.Lock()

        def work():
            while lease := q.lease(7, visibility=600):
                with lock:
                    seen.extend(m.body for m in lease)
                q.ack(lease)

        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(seen, key=int) == [str(i) for i in range(300)]


_WORKER = r"""
import sys, isthmus
q = isthmus.open_queue(*sys.argv[1:])
while lease := q.lease(5, visibility=600):
    for m in lease:
        sys.stdout.write(m.body + "\n")
    sys.stdout.flush()
    q.ack(lease)
"""


@pytest.mark.parametrize("backend", ["local", "amqp"])
def test_processes_sharing_one_queue_never_share_a_live_lease(tmp_path, request, backend):
    if backend == "local":
        where = [str(tmp_path / "q.db")]
    else:
        where = [request.getfixturevalue("broker").url, _queue_name(request)]
    with isthmus.open_queue(*where) as q:
        q.put([str(i) for i in range(400)])
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, *where], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    seen = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        seen.extend(out.split())
    assert sorted(seen, key=int) == [str(i) for i in range(400)]


# A child that puts numbered items and leases and acks some, reporting on stdout each step
# once it has returned: "put" lines after put(), "acking" before ack() and "acked" after it.
_CHILD = r"""
import os, random, sys, isthmus
path, start, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
q = isthmus.LocalQueue(path, max_deliveries=1000)
def say(*words):
    os.write(1, (" ".join(words) + "\n").encode())
i = start
while True:
    k = 200 if rng.random() < 0.05 else rng.randint(1, 5)
    batch = [f"item-{j}" for j in range(i, i + k)]
    i += k
    q.put(batch)
    say("put", *batch)
    if rng.random() < 0.6:
        lease = q.lease(rng.randint(1, 8), visibility=1.0)
        acked = [m for m in lease if rng.random() < 0.5]
        if acked:
            say("acking", *(m.body for m in acked))
            q.ack(acked)
            say("acked", *(m.body for m in acked))
"""


def test_sigkill_ten_times_loses_no_acknowledged_put_and_unacked_leases_come_back(tmp_path):
    path = str(tmp_path / "q.db")
    rng = random.Random(13)
    put, acked, acking = set(), set(), []
    for run in range(10):
        kill_after = rng.randint(3, 80)  # lines reported before the kill
        child = subprocess.Popen([sys.executable, "-c", _CHILD, path, str(run * 1_000_000), str(rng.randrange(2**32))],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lines = []
        try:
            while len(lines) < kill_after:
                line = child.stdout.readline()
                if not line:
                    pytest.fail(f"child {run} stopped by itself: {child.stderr.read().decode()[-2000:]}")
                lines.append(line)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=60)
            # Read the rest through the same buffered file readline used: communicate() would
            # read the pipe itself and skip lines readline had already buffered.
            rest, err = child.stdout.read(), child.stderr.read()
            child.stdout.close()
            child.stderr.close()
        assert child.returncode == -signal.SIGKILL, err.decode()[-2000:]
        lines += [line + b"\n" for line in rest.split(b"\n")]
        for line in lines:
            if not line.endswith(b"\n") or not line.strip():
                continue  # a line cut short by the kill reports nothing
            verb, *bodies = line.decode().split()
            if verb == "put":
                put.update(bodies)
            elif verb == "acking":
                acking.append(frozenset(bodies))
            elif verb == "acked":
                acked.update(bodies)
    uncertain = [batch for batch in acking if not batch <= acked]  # killed inside ack()

    db = sqlite3.connect(path)
    present = [r[0].decode() for r in db.execute("SELECT body FROM messages UNION ALL "
                                                 "SELECT body FROM dead_letters")]
    db.close()
    assert len(present) == len(set(present)), "a message is in the file twice"
    present_set = set(present)
    assert not (present_set & acked), "an acknowledged ack left its message"
    for batch in uncertain:  # one transaction: all of the batch acked or none of it
        assert batch <= present_set or not (batch & present_set), sorted(batch)
    maybe_gone = set().union(*uncertain) if uncertain else set()
    lost = put - acked - maybe_gone - present_set
    assert not lost, f"acknowledged puts lost: {sorted(lost)[:10]}"

    # Every message not acked comes back to a new lessee once the dead children's leases expire.
    expected = set(present_set)
    back = []
    with LocalQueue(path, max_deliveries=1000) as q:
        def collect():
            while lease := q.lease(500, visibility=600):
                back.extend(m.body for m in lease)
            return set(back) >= expected
        wait_until(collect, timeout=60, interval=0.1)
        assert len(back) == len(set(back)) == len(expected)
        assert q.stats() == {"ready": 0, "leased": len(expected), "delayed": 0, "dead": 0}
    assert len(put) > 50  # the children did real work between the kills


# ---- AmqpQueue on a real broker --------------------------------------------------------------

pika = pytest.importorskip("pika")


def _observe(broker):
    """A pika channel on the broker: an observer independent of the client under test."""
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    return connection, connection.channel()


def _count(broker, queue):
    connection, channel = _observe(broker)
    try:
        return channel.queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def _amqp(broker, request, **kw):
    return AmqpQueue(broker.url, _queue_name(request), **kw)


def _lease_all(q, n):
    """A lease of n messages, once the queue has recovered after a broker restart (a quorum
    queue replays its log shortly after the broker boots and counts 0 until then)."""
    wait_until(lambda: q.stats()["ready"] >= n, timeout=30, interval=0.1)
    return q.lease(n, visibility=600)


def test_the_broker_holds_a_quorum_queue_with_the_delivery_limit_and_dead_letters(broker, request):
    with _amqp(broker, request, max_deliveries=4) as q:
        connection, channel = _observe(broker)
        try:
            # Declaring again with the same arguments is accepted: these are the queue's own.
            channel.queue_declare(q.name, durable=True, arguments={
                "x-queue-type": "quorum", "x-delivery-limit": 4, "x-dead-letter-exchange": f"{q.name}.dlx",
                "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
            for seconds in (1, 10, 60, 300):
                channel.queue_declare(f"{q.name}.delay.{seconds}s", passive=True)
            channel.queue_declare(f"{q.name}.dead", passive=True)
            with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="x-delivery-limit"):
                channel.queue_declare(q.name, durable=True, arguments={
                    "x-queue-type": "quorum", "x-delivery-limit": 5, "x-dead-letter-exchange": f"{q.name}.dlx",
                    "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
        finally:
            connection.close()
        assert isthmus.AmqpQueue.__name__ in repr(q) and "guest:***@" in repr(q)


def test_a_put_returns_only_once_the_broker_holds_it(broker, request):
    """kill -9 right after put() returns: the restarted broker still has every item."""
    q = _amqp(broker, request)
    try:
        assert q.put([f"item {i}" for i in range(50)]) == 50
        broker.kill()
        broker.start()
        # A quorum queue recovers its log shortly after the broker boots: until then it counts 0.
        wait_until(lambda: _count(broker, q.name) == 50, timeout=30, interval=0.1)
        # The client reconnects by itself and sees them too.
        assert q.stats() == {"ready": 50, "leased": 0, "delayed": 0, "dead": 0}
        got = []
        while lease := q.lease(20, visibility=60):
            got.extend(m.body for m in lease)
            q.ack(lease)
        assert sorted(got) == sorted(f"item {i}" for i in range(50))
    finally:
        q.close()


def test_a_broker_restart_mid_lease_loses_nothing_and_counts_the_delivery(broker, request):
    work = _amqp(broker, request)
    last = AmqpQueue(broker.url, _queue_name(request) + "-last", max_deliveries=1)
    try:
        work.put(["a", "b", "c"])
        last.put("only once")
        lease = work.lease(3, visibility=600)
        assert [m.deliveries for m in lease] == [1, 1, 1]
        (once,) = last.lease(1, visibility=600)
        broker.restart()
        # The lease died with its connection: the broker put its messages back.
        assert work.ack(lease) == 0
        again = _lease_all(work, 3)
        assert sorted(m.body for m in again) == ["a", "b", "c"]
        assert [m.deliveries for m in again] == [2, 2, 2]
        assert work.ack(again) == 3
        assert work.stats() == {"ready": 0, "leased": 0, "delayed": 0, "dead": 0}
        # Delivered its one allowed time already: back from the broker, it goes to the dead letters.
        assert last.ack(once) == 0
        wait_until(lambda: last.stats()["ready"] + last.stats()["dead"] == 1, timeout=30, interval=0.1)
        assert not last.lease(1, visibility=600)
        (dead,) = last.dead_letters()
        assert (dead.body, dead.deliveries) == ("only once", 1)
        assert "connection holding its last lease was lost" in dead.reason
    finally:
        work.close()
        last.close()


def test_nack_with_a_delay_parks_the_message_in_a_delay_queue(broker, request):
    assert isthmus._core.AmqpQueue.delay_steps() == [1.0, 10.0, 60.0, 300.0]
    with _amqp(broker, request) as q:
        q.put(["soon", "later"])
        soon, later = q.lease(2, visibility=60)
        assert q.nack(soon, delay=0.5) == 1    # the smallest delay queue >= 0.5 s: 1 s
        assert q.nack(later, delay=120) == 1   # 300 s
        assert _count(broker, f"{q.name}.delay.300s") == 1
        back = []

        def returned():
            back.extend(q.lease(1, visibility=60))
            return bool(back)

        wait_until(returned, timeout=30, interval=0.1)
        (m,) = back
        assert (m.body, m.deliveries) == ("soon", 2)  # the count survives the parking
        assert q.stats() == {"ready": 0, "leased": 1, "delayed": 1, "dead": 0}


def test_reading_dead_letters_leaves_them_on_the_broker(broker, request):
    with _amqp(broker, request, max_deliveries=1) as q:
        q.put(["x", "y", "z"])
        q.nack(q.lease(3, visibility=60))
        first = q.dead_letters()
        assert [d.body for d in first] == ["x", "y", "z"]
        assert q.dead_letters(limit=2) == first[:2]
        assert q.dead_letters() == first
        assert _count(broker, f"{q.name}.dead") == 3
        assert q.stats()["dead"] == 3
        assert all(d.dead_at >= d.enqueued_at > 0 for d in first)


def test_a_wrong_url_is_invalid_url():
    for url in ("http://127.0.0.1:5672/", "amqp://", "amqp://user:s3cret@:70000/"):
        with pytest.raises(isthmus.InvalidURL) as caught:
            AmqpQueue(url, "q")
        assert "s3cret" not in str(caught.value)


def test_a_closed_port_is_a_connect_error_naming_the_url_without_its_password():
    url = f"amqp://guest:s3cret@127.0.0.1:{servers.free_port()}/"
    with pytest.raises(isthmus.ConnectError, match=r"amqp://guest:\*\*\*@127\.0\.0\.1") as caught:
        AmqpQueue(url, "q", connect_timeout=2)
    assert "s3cret" not in str(caught.value)
    assert isinstance(caught.value, ConnectionError)


def test_a_silent_port_times_out_within_the_connect_timeout():
    """A listener that never answers the AMQP handshake."""
    import socket
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"amqp://guest:guest@127.0.0.1:{listener.getsockname()[1]}/"
        with pytest.raises(isthmus.TimeoutError, match="amqp://guest:\\*\\*\\*@127.0.0.1"):
            AmqpQueue(url, "q", connect_timeout=0.5)


def test_wrong_credentials_are_access_refused(broker):
    url = broker.url.replace("guest:guest@", "guest:wrong-s3cret@")
    with pytest.raises(isthmus.AccessRefused) as caught:
        AmqpQueue(url, "q", connect_timeout=5)
    assert "s3cret" not in str(caught.value) and "guest:***@" in str(caught.value)
    assert isinstance(caught.value, PermissionError)


def test_a_queue_declared_with_other_arguments_is_a_config_error(broker, request):
    name = _queue_name(request)
    connection, channel = _observe(broker)
    channel.queue_declare(name, durable=True)  # a classic queue
    connection.close()
    with pytest.raises(isthmus.ConfigError, match=rf"declaring queue {name}: the broker refused it: 406"):
        AmqpQueue(broker.url, name)
    # Two clients that disagree on max_deliveries: the second is refused, naming the argument.
    with AmqpQueue(broker.url, name + "-five", max_deliveries=5):
        with pytest.raises(isthmus.ConfigError, match="x-delivery-limit"):
            AmqpQueue(broker.url, name + "-five", max_deliveries=4)


@pytest.mark.parametrize("kw, field", [
    ({"name": ""}, "name"),
    ({"name": "amq.reserved"}, "name"),
    ({"name": "x" * 201}, "name"),
    ({"prefetch": 0}, "prefetch"),
    ({"connect_timeout": 0}, "connect_timeout"),
])
def test_bad_amqp_arguments_name_the_field(kw, field):
    args = {"name": "q", **kw}
    with pytest.raises(isthmus.ConfigError, match="^" + field):
        AmqpQueue("amqp://guest:guest@127.0.0.1:1/", args.pop("name"), **args)


def test_prefetch_caps_what_one_client_holds(broker, request):
    with _amqp(broker, request, prefetch=3) as q:
        q.put([str(i) for i in range(5)])
        assert len(q.lease(10, visibility=60)) == 3
        assert not q.lease(1, visibility=60)
        assert q.stats() == {"ready": 2, "leased": 3, "delayed": 0, "dead": 0}


def test_open_queue_picks_the_backend(broker, request, tmp_path):
    with isthmus.open_queue(tmp_path / "q.db") as local:
        assert isinstance(local, LocalQueue)
    with isthmus.open_queue(broker.url, name=_queue_name(request), max_deliveries=2) as remote:
        assert isinstance(remote, AmqpQueue) and remote.max_deliveries == 2
    with pytest.raises(isthmus.ConfigError, match="^name: required"):
        isthmus.open_queue(broker.url)
    with pytest.raises(isthmus.ConfigError, match="^name"):
        isthmus.open_queue(tmp_path / "q.db", name="x")


def test_while_the_broker_is_down_calls_fail_typed_and_work_resumes_by_itself(broker, request):
    with _amqp(broker, request, connect_timeout=2) as q:
        q.put("kept")
        broker.stop()
        # The connection is gone and every attempt is refused: a typed error naming the URL, after
        # waiting for the next reconnect attempt (never a silent success, never a tight retry).
        for call in (lambda: q.put("refused"), lambda: q.lease(1), q.stats):
            with pytest.raises(ConnectionError, match=r"amqp://guest:\*\*\*@127\.0\.0\.1"):
                call()
        broker.start()

        def back():
            try:
                return q.stats()["ready"] == 1
            except ConnectionError:  # until the back-off's next attempt finds the broker up
                return False

        wait_until(back, timeout=30, interval=0.1)
        assert q.put("after") == 1
        assert sorted(m.body for m in q.lease(5, visibility=60)) == ["after", "kept"]


def test_a_message_the_broker_dead_letters_itself_reaches_the_dead_letters(broker, request):
    """Another client rejects a message: the broker moves it through N.dlx into N.dead."""
    with _amqp(broker, request) as q:
        q.put("rejected elsewhere")
        connection, channel = _observe(broker)
        try:
            method, _, body = channel.basic_get(q.name, auto_ack=False)
            assert body == b"rejected elsewhere"
            channel.basic_reject(method.delivery_tag, requeue=False)
        finally:
            connection.close()
        wait_until(lambda: q.stats()["dead"] == 1, timeout=30, interval=0.05)
        (dead,) = q.dead_letters()
        assert dead.body == "rejected elsewhere"
        assert dead.reason == "dead-lettered by the broker: rejected"
        assert dead.dead_at > 0


# ---- a consuming AmqpQueue: the broker pushes, a lease takes what arrived ----------------------

def _reconnected(call):
    """call() once the client found the restarted broker (its back-off may refuse a few times)."""
    def ready():
        try:
            call()
            return True
        except ConnectionError:
            return False

    wait_until(ready, timeout=30, interval=0.1)


def test_a_consuming_lease_waits_for_a_message_put_meanwhile(broker, request):
    name = _queue_name(request)
    with AmqpQueue(broker.url, name, prefetch=1, consume=True) as q, AmqpQueue(broker.url, name) as producer:
        assert q.consume and "consume" in repr(q)
        assert not q.lease(1, visibility=60)  # nothing there, no wait asked: answers at once
        putter = threading.Timer(0.2, producer.put, args=("pushed",))
        putter.start()
        try:
            lease = q.lease(1, visibility=60, wait=30)
        finally:
            putter.join()
        assert [(m.body, m.deliveries) for m in lease] == [("pushed", 1)]
        assert q.ack(lease) == 1
        assert producer.stats() == {"ready": 0, "leased": 0, "delayed": 0, "dead": 0}


def test_a_consumer_holds_no_more_than_its_prefetch_and_the_rest_stays_for_others(broker, request):
    name = _queue_name(request)
    with AmqpQueue(broker.url, name, prefetch=1, consume=True) as q, AmqpQueue(broker.url, name) as other:
        other.put(["a", "b", "c"])
        first = q.lease(5, visibility=60, wait=30)
        assert len(first) == 1
        # The broker pushes nothing more to it while that one is unacked: the others are free.
        rest = other.lease(5, visibility=60)
        assert sorted(m.body for m in [*first, *rest]) == ["a", "b", "c"]
        assert other.ack(rest) == 2
        assert q.ack(first) == 1
        assert not q.lease(1, visibility=60, wait=0.2)


def test_what_a_consumer_held_unleased_goes_back_when_it_closes(broker, request):
    name = _queue_name(request)
    with AmqpQueue(broker.url, name) as other:
        q = AmqpQueue(broker.url, name, prefetch=1, consume=True)
        other.put("held")
        # Pushed to q's consumer: no longer ready on the broker, though no lease took it.
        wait_until(lambda: _count(broker, name) == 0, timeout=30, interval=0.05)
        q.close()
        wait_until(lambda: _count(broker, name) == 1, timeout=30, interval=0.05)
        (m,) = other.lease(1, visibility=60)
        assert m.body == "held"
        assert other.ack(m) == 1


def test_a_consuming_queue_consumes_again_after_a_broker_restart(broker, request):
    name = _queue_name(request)
    with AmqpQueue(broker.url, name, prefetch=1, consume=True, connect_timeout=2) as q, \
            AmqpQueue(broker.url, name, connect_timeout=2) as producer:
        producer.put("before")
        (m,) = q.lease(1, visibility=600, wait=30)
        broker.restart()
        # The lease died with its connection; the broker returns the message to the new consumer.
        got: list = []

        def take(wait):
            lease = q.lease(1, visibility=600, wait=wait)
            got.extend(x.body for x in lease)
            assert q.ack(lease) == len(lease)
            return lease

        _reconnected(lambda: take(0.1))
        _reconnected(lambda: producer.put("after"))
        while len(got) < 2:
            assert take(30), f"only {got} came back"
        assert sorted(got) == ["after", "before"]
        assert q.ack(m) == 0


@pytest.mark.parametrize("kw, field", [({"consume": "yes"}, "consume"), ({"consume": 1}, "consume")])
def test_bad_consume_names_the_field(kw, field):
    with pytest.raises(isthmus.ConfigError, match="^" + field):
        AmqpQueue("amqp://guest:guest@127.0.0.1:1/", "q", **kw)


def test_a_bad_wait_names_the_field(broker, request):
    with _amqp(broker, request, consume=True) as q:
        for wait in (-1, float("nan"), "1"):
            with pytest.raises(isthmus.ConfigError, match="^wait"):
                q.lease(1, wait=wait)


def test_a_paused_consumer_gives_back_what_it_held_uncounted_and_the_next_lease_resumes(broker, request):
    name = _queue_name(request)
    with AmqpQueue(broker.url, name, prefetch=1, consume=True) as q, AmqpQueue(broker.url, name) as other:
        other.put("held")
        wait_until(lambda: _count(broker, name) == 0, timeout=30, interval=0.05)  # pushed to q
        assert q.pause() == 1
        assert q.pause() == 0  # paused already
        (m,) = other.lease(1, visibility=60)
        assert (m.body, m.deliveries) == ("held", 1)  # going back was not a delivery
        other.put("next")
        lease = q.lease(1, visibility=60, wait=30)  # subscribes again, then waits for the push
        assert [x.body for x in lease] == ["next"]
        assert q.ack(lease) == 1 and other.ack(m) == 1
    with _amqp(broker, request) as plain:
        assert plain.pause() == 0
