"""The state file: checkpoints and dead letters move together; runs keep their history."""

from __future__ import annotations

import sqlite3

import pytest

from isthmus.store import StateStore


def test_checkpoint_and_dead_letters_commit_together(tmp_path):
    store = StateStore(str(tmp_path / "s.db"))
    run = store.begin_run("p")
    dl = {"record_key": "a", "stage": "map", "record": {"id": "a"}, "error": "boom"}
    store.commit("p", run, {"cursor": "c1"}, [dl])
    assert store.load("p")["position"] == {"cursor": "c1"}
    # A failure inside the transaction leaves both the checkpoint and the dead letters as they were.
    with pytest.raises(KeyError):  # the second dead letter lacks its error: the whole commit fails
        store.commit("p", run, {"cursor": "c2"}, [dl, {"record_key": "b", "stage": "map", "record": {}}])
    assert store.load("p")["position"] == {"cursor": "c1"}
    rows = store.dead_letters("p")
    assert len(rows) == 1 and rows[0]["attempts"] == 1


def test_the_same_record_failing_again_is_one_dead_letter_with_more_attempts(tmp_path):
    store = StateStore(str(tmp_path / "s.db"))
    run = store.begin_run("p")
    dl = {"record_key": "a", "stage": "sink", "record": {"id": "a"}, "error": "422", "http_status": 422}
    store.commit("p", run, None, [dl])
    store.commit("p", run, None, [dict(dl, error="409", http_status=409)])
    (row,) = store.dead_letters("p")
    assert (row["attempts"], row["error"], row["http_status"]) == (2, "409", 409)
    assert row["last_seen"] >= row["first_seen"]


def test_state_is_wal_and_readable_while_open(tmp_path):
    path = str(tmp_path / "s.db")
    store = StateStore(path)
    run = store.begin_run("p")
    store.finish_run(run, "completed", {"read": 3})
    other = sqlite3.connect(path)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert other.execute("SELECT status, counts FROM runs").fetchall() == [("completed", '{"read": 3}')]
    assert store.runs("p")[0]["counts"] == {"read": 3}
    assert store.pipelines() == ["p"]


def test_incremental_state_is_kept_apart_from_the_position(tmp_path):
    store = StateStore(str(tmp_path / "s.db"))
    store.commit("p", 1, None, incremental={"max": "2024-12-31T00:00:00Z", "boundary": []})
    store.commit("p", 2, {"unit": 100})  # a mid-run checkpoint keeps the last incremental state
    assert store.load("p") == {"position": {"unit": 100},
                               "incremental": {"max": "2024-12-31T00:00:00Z", "boundary": []}}
