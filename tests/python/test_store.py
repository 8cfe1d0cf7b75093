"""The state file: checkpoints and dead letters move together; runs keep their history."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

import isthmus
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


# -- helpers ---------------------------------------------------------------------------------------

# The schema state files were written with before identities and resolutions were kept.
OLD_SCHEMA = """
CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, pipeline TEXT NOT NULL, started_at REAL NOT NULL,
    finished_at REAL, status TEXT NOT NULL, counts TEXT NOT NULL DEFAULT '{}', error TEXT);
CREATE TABLE checkpoints (pipeline TEXT PRIMARY KEY, position TEXT, incremental TEXT,
    updated_at REAL NOT NULL, run_id INTEGER);
CREATE TABLE dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT, pipeline TEXT NOT NULL,
    record_key TEXT NOT NULL, stage TEXT NOT NULL, record TEXT NOT NULL, error TEXT NOT NULL, traceback TEXT,
    http_status INTEGER, response_excerpt TEXT, attempts INTEGER NOT NULL DEFAULT 1, first_seen REAL NOT NULL,
    last_seen REAL NOT NULL, run_id INTEGER, resolved_at REAL, UNIQUE (pipeline, stage, record_key));
"""


def old_state_file(path):
    """A state file as the old schema wrote it: a finished run, a checkpoint, an open and a
    replayed dead letter."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(OLD_SCHEMA)
    db.execute("INSERT INTO runs (pipeline, started_at, finished_at, status, counts) "
               "VALUES ('v1_contacts', 1, 2, 'completed', '{\"read\": 40}')")
    db.execute("INSERT INTO checkpoints VALUES ('v1_contacts', NULL, NULL, 2, 1)")
    for key, resolved in (("con_0000000003", None), ("con_0000000004", 3.0)):
        db.execute("INSERT INTO dead_letters (pipeline, record_key, stage, record, error, first_seen, last_seen, "
                   "run_id, resolved_at) VALUES ('v1_contacts', ?, 'map', ?, 'boom', 1, 1, 1, ?)",
                   (key, json.dumps({"id": key}), resolved))
    db.commit()
    db.close()
    return str(path)


def contacts(client, **kw):
    return isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 20}, **kw)


def nothing(records):
    return None


# -- the checkpoint belongs to one source ---------------------------------------------------------

def test_stream_identity_is_base_url_path_and_selecting_params_without_paging_or_secrets():
    with isthmus.Client("http://127.0.0.1:9/api/") as c:
        stream = isthmus.Stream(c, "/v1/contacts", paginator=isthmus.OffsetPaginator(param="skip", limit=50),
                                params={"status": "active", "limit": 50, "skip": 0, "cursor": "x", "owner": "a b",
                                        "api_key": "ak-51b7e0c3d9aa", "updated_since": "2024"},
                                incremental=isthmus.Incremental("updated_at", "updated_since"))
        assert stream.identity == "http://127.0.0.1:9/api/v1/contacts?api_key=***&owner=a%20b&status=active"
        with pytest.raises(AttributeError):
            stream.identity = "elsewhere"
    with isthmus.Client("http://127.0.0.1:9", params={"account": "42"}) as c:
        assert isthmus.Stream(c, "/v1/deals").identity == "http://127.0.0.1:9/v1/deals?account=42"


def test_two_base_urls_reading_one_path_do_not_share_a_checkpoint(tmp_path):
    state = str(tmp_path / "s.db")
    with isthmus.Sandbox(records=40) as a, isthmus.Sandbox(records=60) as b, \
            isthmus.Client(a.url) as ca, isthmus.Client(b.url) as cb:
        assert isthmus.Pipeline(contacts(ca), sink=isthmus.CallableSink(nothing), state=state).run().counts["read"] == 40
        other = isthmus.Pipeline(contacts(cb), sink=isthmus.CallableSink(nothing), state=state)
        with pytest.raises(isthmus.StateError) as caught:
            other.run()
        message = str(caught.value)
        assert state in message and f"{a.url}/v1/contacts" in message and f"{b.url}/v1/contacts" in message
        assert len(other.runs()) == 1  # refused before it started: no run of its own
        # Named explicitly, the pipeline says the state is its own: the checkpoint moves over.
        named = isthmus.Pipeline(contacts(cb), sink=isthmus.CallableSink(nothing), state=state, name="v1_contacts")
        assert named.run().counts["read"] == 60
        assert named.store.identity("v1_contacts") == f"{b.url}/v1/contacts"
        with pytest.raises(isthmus.StateError):
            isthmus.Pipeline(contacts(ca), sink=isthmus.CallableSink(nothing), state=state).run()


def test_the_identity_in_a_refusal_and_in_the_file_never_shows_a_secret(tmp_path):
    state = str(tmp_path / "s.db")
    secret = "ak-51b7e0c3d9aa"
    with isthmus.Sandbox(records=10) as a, isthmus.Client(a.url) as c:
        first = contacts(c)
        first.params["token"] = secret
        isthmus.Pipeline(first, sink=isthmus.CallableSink(nothing), state=state).run()
        second = contacts(c)
        second.params["segment"] = "vip"
        with pytest.raises(isthmus.StateError) as caught:
            isthmus.Pipeline(second, sink=isthmus.CallableSink(nothing), state=state).run()
    assert "token=***" in str(caught.value) and secret not in str(caught.value)
    for name in os.listdir(tmp_path):
        with open(tmp_path / name, "rb") as f:
            assert secret.encode() not in f.read()


def test_an_old_state_file_migrates_and_adopts_the_identity_on_its_first_run(tmp_path):
    state = old_state_file(tmp_path / "old.db")
    with isthmus.Sandbox(records=40) as a, isthmus.Sandbox(records=10) as b, \
            isthmus.Client(a.url) as ca, isthmus.Client(b.url) as cb:
        pipe = isthmus.Pipeline(contacts(ca), sink=isthmus.CallableSink(nothing), state=state)
        assert pipe.runs()["read"].tolist() == [40]
        everything = pipe.store.dead_letters("v1_contacts", include_resolved=True)
        assert {r["record_key"]: r["resolution"] for r in everything} == {
            "con_0000000003": None, "con_0000000004": "replayed"}
        pipe.run()
        assert pipe.store.identity("v1_contacts") == f"{a.url}/v1/contacts"
        with pytest.raises(isthmus.StateError, match="old.db"):
            isthmus.Pipeline(contacts(cb), sink=isthmus.CallableSink(nothing), state=state).run()
    # Plain tables still: pandas reads them as they are.
    import pandas as pd
    with sqlite3.connect(state) as db:
        assert pd.read_sql("SELECT pipeline, identity FROM checkpoints", db)["identity"].tolist() == [
            f"{a.url}/v1/contacts"]


def test_without_state_the_file_is_named_after_the_pipeline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with isthmus.Client("http://127.0.0.1:9") as c:
        isthmus.Pipeline(contacts(c), sink=isthmus.CallableSink(nothing))
        isthmus.Pipeline(contacts(c), sink=isthmus.CallableSink(nothing), name="crm/contacts (eu)")
    assert sorted(p for p in os.listdir(tmp_path) if p.endswith(".db")) == [
        "crm_contacts__eu_.isthmus.db", "v1_contacts.isthmus.db"]
