"""Reliability: faults in every form, SIGKILL at random points, damaged state files.

The destination sandbox's own counters are the ground truth: unique records received,
duplicates (the same identity delivered again under another Idempotency-Key) and idempotent
replays (the same key and body again, which an idempotent API absorbs).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

import isthmus
from conftest import wait_until
from isthmus.store import StateStore

HERE = os.path.dirname(os.path.abspath(__file__))

FAULT_RECORDS = int(os.environ.get("ISTHMUS_FAULT_RECORDS", "50000"))
PAGE = 500
CLIENT_TIMEOUT = 0.5
# Log-normal latency: median 2 ms, p99 5 s, so about 5% of calls exceed CLIENT_TIMEOUT
# (ln(250) / ln(2450) = 1.645 / 2.326, the 95th and 99th percentiles of a normal).
LATENCY_TAIL = {"median": 2, "p99": 4900}


def _each_way(rate: float, statuses=("500", "503", "429")):
    return {"error_rate": {s: rate for s in statuses}, "reset": rate, "truncate": rate, "malformed": rate,
            "latency_ms": LATENCY_TAIL}


def _received(sb, resource="contacts"):
    return sb.stats()["records_received"].get(resource, {"unique": 0, "duplicate": 0, "idempotent_replays": 0})


def _map_with_bad_records(r):
    # Deterministic map failures: one record in 1,000 has a "bad" id and dead-letters in map.
    if int(r["id"][4:]) % 1000 == 7:
        raise ValueError(f"record {r['id']}: refusing on purpose (test dead letter)")
    return {"id": r["id"], "email": r.get("email"), "name": r.get("first_name")}


def test_fault_matrix(tmp_path):
    """5% of calls fail in each way at both ends; the run reconciles exactly, nothing duplicated.

    A failed run (a page whose every attempt failed, or a malformed page) is simply run again:
    at-least-once resume from the checkpoint is part of the guarantee under test. How many
    reruns it took is printed, and bounded.
    """
    src_faults = {"GET /v1/contacts": _each_way(0.05)}
    dst_faults = {"POST /v1/contacts/batch": _each_way(0.05)}
    common = dict(auth="oauth2", token_lifetime=2, max_page_size=PAGE, threads=2)
    with isthmus.Sandbox(records=FAULT_RECORDS, pagination="offset", faults=src_faults, **common) as src, \
            isthmus.Sandbox(faults=dst_faults, max_body_bytes=64 << 20, **common) as dst:
        def oauth(sb):
            # refresh_before=0: tokens are used to the last moment, so some really expire
            # mid-request and take the 401 -> refresh -> resend path.
            return isthmus.OAuth2ClientCredentials(sb.token_url, sb.client_id, sb.client_secret,
                                                   refresh_before=0)
        state = str(tmp_path / "fault.db")
        failures = []
        t0 = time.monotonic()
        with isthmus.Client(src.url, auth=oauth(src), timeout=CLIENT_TIMEOUT) as sc, \
                isthmus.Client(dst.url, auth=oauth(dst), timeout=CLIENT_TIMEOUT) as dc:
            stream = isthmus.Stream(sc, "/v1/contacts", attempts=8,
                                    paginator=isthmus.OffsetPaginator(limit=PAGE, total="meta.total", window=8))
            pipeline = isthmus.Pipeline(stream, map=_map_with_bad_records,
                                        sink=isthmus.HttpSink(dc, "/v1/contacts/batch", batch_size=PAGE,
                                                              attempts=8, concurrency=8),
                                        state=state)
            for _ in range(30):
                try:
                    run = pipeline.run()
                    break
                except isthmus.IsthmusError as exc:
                    failures.append(f"{type(exc).__name__}: {str(exc)[:160]}")
            else:
                pytest.fail(f"the pipeline never completed in 30 runs: {failures}")
            dead = pipeline.dead_letters()
        elapsed = time.monotonic() - t0
        got = _received(dst)
        sstats, dstats = src.stats(), dst.stats()

    print(f"\nfault matrix: {FAULT_RECORDS:,} records in {elapsed:.1f} s, {len(failures)} failed runs "
          f"then resumed; destination {got}; last run {run.summary()}; "
          f"source faults {sstats['faults']}; destination faults {dstats['faults']}; "
          f"tokens src {sstats['tokens']} dst {dstats['tokens']}")
    for f in failures:
        print("  failed run:", f)

    # The faults really happened, at both ends, in every form.
    for stats in (sstats, dstats):
        for kind in ("status_500", "status_503", "status_429", "reset", "truncate", "malformed", "latency"):
            assert stats["faults"].get(kind, 0) > 0, (kind, stats["faults"])
    assert sstats["tokens"]["issued"] >= 2 and dstats["tokens"]["issued"] >= 2  # tokens expired mid-run

    expected_dead = sum(1 for i in range(1, FAULT_RECORDS + 1) if i % 1000 == 7)
    assert len(dead) == expected_dead
    assert dead["error"].str.len().min() > 0
    assert dead["error"].str.contains("refusing on purpose").all()
    assert set(dead["stage"]) == {"map"}
    # Exact reconciliation at the idempotent sink.
    assert got["unique"] == FAULT_RECORDS - len(dead)
    assert got["duplicate"] == 0
    assert run.summary()["reconciled"] is True
    assert run.status == "completed"
    assert len(failures) <= 25


def test_a_malformed_page_is_fetched_again_within_the_run(tmp_path):
    faults = {"GET /v1/contacts": {"malformed": 0.2}}
    with isthmus.Sandbox(records=2000, pagination="offset", faults=faults) as src, \
            isthmus.Client(src.url, timeout=5) as sc:
        stream = isthmus.Stream(sc, "/v1/contacts",
                                paginator=isthmus.OffsetPaginator(limit=100, total="meta.total", window=4))
        out = []
        run = isthmus.Pipeline(stream, sink=isthmus.CallableSink(out.extend),
                               state=str(tmp_path / "s.db")).run()
        assert src.stats()["faults"].get("malformed", 0) > 0
    assert run.status == "completed" and len({r["id"] for r in out}) == 2000


# -- crash and resume --------------------------------------------------------------------------

CRASH_RECORDS = 80_000
CRASH_SEED = 20261128
CRASH_PAGE = 100  # crash_child.PAGE


def test_crash_resume(tmp_path):
    """SIGKILL at >= 10 seeded random points (timed, inside checkpoint writes, during token
    rotation); each restart resumes; at the end every record is at the destination once."""
    rng = random.Random(CRASH_SEED)
    plan = ["checkpoint:1", "checkpoint:2", "checkpoint:3", "token:2", "token:2"] + ["time"] * 7
    rng.shuffle(plan)
    state = str(tmp_path / "crash.db")
    src_opts = dict(records=CRASH_RECORDS, pagination="offset", auth="oauth2", token_lifetime=1,
                    client_id="crash-client", client_secret="crash-secret",
                    faults={"GET /v1/contacts": {"latency_ms": {"min": 5, "max": 25}}})
    restarts = []
    with isthmus.Sandbox(**src_opts) as src, isthmus.Sandbox() as dst:
        def child(mode):
            return subprocess.Popen([sys.executable, os.path.join(HERE, "crash_child.py"), src.url, dst.url,
                                     state, mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        for i, mode in enumerate(plan + ["run"]):
            before = _received(dst)
            position = StateStore(state).load("v1_contacts")["position"] if os.path.exists(state) else None
            p = child(mode if mode != "time" else "run")
            if mode == "time":
                # Let it deliver something first, then kill it at a seeded random moment.
                wait_until(lambda: _received(dst)["unique"] + _received(dst)["idempotent_replays"]
                           > before["unique"] + before["idempotent_replays"] or p.poll() is not None, timeout=30)
                time.sleep(rng.uniform(0.0, 0.5))
                p.send_signal(signal.SIGKILL)
            try:
                out, err = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
                pytest.fail(f"child {i} ({mode}) hung")
            after = _received(dst)
            resent = (after["duplicate"] - before["duplicate"]) + (after["idempotent_replays"]
                                                                   - before["idempotent_replays"])
            start = ((position or {"partitions": {}})["partitions"].get("{}", {}).get("inner") or {}).get("unit", 0)
            restarts.append({"run": i, "mode": mode, "rc": p.returncode, "resumed_at": start,
                             "new": after["unique"] - before["unique"],
                             # Every record already at the destination at or past the checkpoint
                             # is sent again by this run (exact: the run reads everything from it).
                             "resent_records": before["unique"] - start,
                             "replayed_batches": resent})
            if p.returncode == 0:
                break
            assert p.returncode == -signal.SIGKILL, err.decode()[-2000:]
        final = _received(dst)
        tokens = src.stats()["tokens"]

    print(f"\ncrash-resume: {CRASH_RECORDS:,} records, tokens {tokens}")
    for r in restarts:
        print("  ", r)
    kills = [r for r in restarts if r["rc"] == -signal.SIGKILL]
    assert len(kills) >= 10, restarts
    assert {r["mode"].split(":")[0] for r in kills} >= {"time", "checkpoint", "token"}
    assert restarts[-1]["rc"] == 0
    assert final["unique"] == CRASH_RECORDS
    assert final["duplicate"] == 0  # resends are idempotent replays, never a second delivery
    # Batches are pages, so each resent page comes back as one idempotent replay of its batch.
    for r in restarts:
        assert r["resent_records"] == CRASH_PAGE * r["replayed_batches"], r
    print(f"  re-sent per restart: {[r['resent_records'] for r in restarts[1:]]}, "
          f"total {sum(r['resent_records'] for r in restarts)} of {CRASH_RECORDS:,}")
    runs = StateStore(state).runs("v1_contacts")
    assert [r["status"] for r in runs][-1] == "completed"
    assert all(r["status"] == "running" for r in runs[:-1])  # every killed run left its row running


# -- damaged state ------------------------------------------------------------------------------

def _finished_state(tmp_path, records=3000):
    """A state file after a completed run with some dead letters and an incremental cursor."""
    state = str(tmp_path / "damaged.db")
    with isthmus.Sandbox(records=records) as src, isthmus.Client(src.url) as sc:
        stream = isthmus.Stream(sc, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 100},
                                incremental=isthmus.Incremental("updated_at", "updated_since"))
        p = isthmus.Pipeline(stream, map=_map_with_bad_records, sink=isthmus.CallableSink(lambda r: None),
                             state=state)
        p.run()
        assert len(p.dead_letters()) == 3
        p.store.close()
    return state


def _open_and_read(state):
    store = StateStore(state)
    try:
        return store.load("v1_contacts"), store.dead_letters("v1_contacts")
    finally:
        store.close()


@pytest.mark.parametrize("damage", ["garbage_header", "zero_length",
                                    "half_length", "garbage_middle"])
def test_damaged_state_is_never_silently_lost(tmp_path, damage):
    """Whatever happened to the file, opening it either fails loudly or gives back everything."""
    state = _finished_state(tmp_path)
    good = _open_and_read(state)
    size = os.path.getsize(state)
    with open(state, "r+b") as f:
        if damage == "garbage_header":
            f.write(os.urandom(100))
        elif damage == "zero_length":
            f.truncate(0)
        elif damage == "half_length":
            f.truncate(size // 2)
        else:
            f.seek(size // 2)
            f.write(b"\xa5" * 4096)
    try:
        got = _open_and_read(state)
    except isthmus.StateError as exc:
        assert str(state) in str(exc)
        return
    except sqlite3.DatabaseError as exc:  # damage SQLite only notices on a later read
        assert str(exc)
        return
    assert got == good, "the damaged state file opened and silently returned different state"


def test_a_corrupted_state_file_gives_a_typed_error_naming_it(tmp_path):
    state = _finished_state(tmp_path)
    with open(state, "r+b") as f:
        f.write(b"\x00" * 100)
    with isthmus.Sandbox(records=10) as src, isthmus.Client(src.url) as sc:
        stream = isthmus.Stream(sc, "/v1/contacts", paginator=isthmus.CursorPaginator())
        with pytest.raises(isthmus.IsthmusError, match="damaged.db"):
            isthmus.Pipeline(stream, sink=isthmus.CallableSink(lambda r: None), state=state).run()
