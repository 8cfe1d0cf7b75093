"""LocalQueue: a durable queue in a real SQLite file, shared by threads and processes, and
killed with SIGKILL while it works."""

from __future__ import annotations

import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

import isthmus
from conftest import wait_until
from isthmus import LocalQueue


def test_put_lease_ack(tmp_path):
    with LocalQueue(tmp_path / "q.db") as q:
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


def test_str_and_bytes_come_back_as_they_went_in(tmp_path):
    with LocalQueue(tmp_path / "q.db") as q:
        q.put(["tëxt", b"\x00\xffbytes", b"", ""])
        bodies = [m.body for m in q.lease(10, visibility=30)]
        assert bodies == ["tëxt", b"\x00\xffbytes", b"", ""]
        assert [type(b) for b in bodies] == [str, bytes, bytes, str]


def test_ack_of_some_messages_and_nack_of_the_rest(tmp_path):
    with LocalQueue(tmp_path / "q.db") as q:
        q.put(["a", "b", "c"])
        a, b, c = q.lease(3, visibility=30)
        assert q.ack(b) == 1
        assert q.nack([a, c], delay=3600) == 2
        assert q.stats() == {"ready": 0, "leased": 0, "delayed": 2, "dead": 0}
        assert not q.lease(3, visibility=30)  # delayed: not ready before the delay passes


def test_nack_without_delay_is_ready_again_with_one_more_delivery(tmp_path):
    with LocalQueue(tmp_path / "q.db") as q:
        q.put("a")
        q.nack(q.lease(1, visibility=30))
        (again,) = q.lease(1, visibility=30)
        assert (again.body, again.deliveries) == ("a", 2)


def test_dead_letter_after_max_deliveries(tmp_path):
    with LocalQueue(tmp_path / "q.db", max_deliveries=3) as q:
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


def test_an_expired_lease_comes_back_and_its_late_ack_removes_nothing(tmp_path):
    with LocalQueue(tmp_path / "q.db") as q:
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
def test_bad_arguments_are_config_errors_naming_the_argument(tmp_path, call, field):
    with LocalQueue(tmp_path / "q.db") as q:
        with pytest.raises(isthmus.ConfigError, match="^" + re.escape(field)):
            call(q)
        assert q.stats()["ready"] == 0  # a refused put put nothing


@pytest.mark.parametrize("value", [0, -1, 1.5, "5", None])
def test_bad_max_deliveries(tmp_path, value):
    with pytest.raises(isthmus.ConfigError, match="max_deliveries"):
        LocalQueue(tmp_path / "q.db", max_deliveries=value)


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


def test_closed_queue_raises_state_error(tmp_path):
    q = LocalQueue(tmp_path / "q.db")
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


def test_threads_sharing_one_queue_never_share_a_live_lease(tmp_path):
    with LocalQueue(tmp_path / "q.db") as q:
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
q = isthmus.LocalQueue(sys.argv[1])
while lease := q.lease(5, visibility=600):
    for m in lease:
        sys.stdout.write(m.body + "\n")
    sys.stdout.flush()
    q.ack(lease)
"""


def test_processes_sharing_one_file_never_share_a_live_lease(tmp_path):
    path = str(tmp_path / "q.db")
    with LocalQueue(path) as q:
        q.put([str(i) for i in range(400)])
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, path], stdout=subprocess.PIPE, text=True)
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
            rest, err = child.communicate(timeout=60)
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
