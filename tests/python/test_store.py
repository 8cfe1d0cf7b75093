"""The state file: checkpoints and dead letters move together; runs keep their history."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import sqlite3
import subprocess
import sys
import threading

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
        first = isthmus.Pipeline(contacts(ca), sink=isthmus.CallableSink(nothing), state=state)
        assert first.run().counts["read"] == 40
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


# -- many openers at once --------------------------------------------------------------------------

def assert_one_whole_schema(path):
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                           "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        assert tables == ["checkpoints", "dead_letters", "runs"]
        columns = [r[1] for r in db.execute("PRAGMA table_info(dead_letters)")]
        assert columns.count("resolution") == 1
        assert "identity" in [r[1] for r in db.execute("PRAGMA table_info(checkpoints)")]
    finally:
        db.close()
    # Nothing left behind by the openers that lost the race to create the file.
    folder = os.path.dirname(path)
    assert sorted(n for n in os.listdir(folder) if not n.endswith(("-wal", "-shm"))) == [os.path.basename(path)]


def open_state_at_once(path, barrier, stores, failures):
    barrier.wait()
    try:
        store = StateStore(path)
        store.begin_run("p")
        stores.append(store)
    except Exception as exc:  # every failure counts, whatever its type
        failures.append(exc)


@pytest.mark.parametrize("start", ["new", "old schema"])
def test_eight_threads_opening_one_state_file_at_once_all_succeed(tmp_path, start):
    for attempt in range(6):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        path = str(folder / "s.db")
        if start == "old schema":
            old_state_file(path)
        barrier = threading.Barrier(8)
        failures, stores = [], []
        threads = [threading.Thread(target=open_state_at_once, args=(path, barrier, stores, failures))
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == [] and len(stores) == 8
        assert len(stores[0].runs("p")) == 8
        for store in stores:
            store.close()
        assert_one_whole_schema(path)


OPENER = """
import os, sys, time
from isthmus.store import StateStore
go = sys.argv[2]
while not os.path.exists(go):  # all eight start together
    time.sleep(0.001)
StateStore(sys.argv[1]).begin_run("p")
"""


def test_eight_processes_opening_one_new_state_file_at_once_all_succeed(tmp_path):
    for attempt in range(3):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        path, go = str(folder / "s.db"), str(tmp_path / f"go{attempt}")
        children = [subprocess.Popen([sys.executable, "-c", OPENER, path, go], stderr=subprocess.PIPE, text=True)
                    for _ in range(8)]
        open(go, "w").close()
        results = [(c.wait(timeout=60), c.stderr.read()) for c in children]
        for c in children:
            c.stderr.close()
        assert results == [(0, "")] * 8
        assert len(StateStore(path).runs("p")) == 8
        assert_one_whole_schema(path)


# -- backups -------------------------------------------------------------------------------------

def snapshot(path):
    store = StateStore(path, create=False)
    try:
        return ({p: store.load(p) for p in store.pipelines()}, store.dead_letters(include_resolved=True), store.runs())
    finally:
        store.close()


def failing_on_sevens(r):
    if r["id"].endswith("7"):
        raise ValueError("refused on purpose")
    return r


def test_a_backup_taken_while_a_run_writes_holds_what_was_committed(tmp_path):
    state, copies = str(tmp_path / "s.db"), []
    with isthmus.Sandbox(records=400) as src, isthmus.Client(src.url) as c:
        reader = StateStore(state)  # another connection, as `isthmus state backup` would open

        def sink(records):
            # Mid-run, after some checkpoints: each backup must be what was committed by then.
            if len(copies) < 3:
                dest = str(tmp_path / f"copy{len(copies)}.db")
                seen = ({p: reader.load(p) for p in reader.pipelines()},
                        reader.dead_letters(include_resolved=True), reader.runs())
                reader.backup(dest)
                copies.append((dest, seen))

        pipe = isthmus.Pipeline(contacts(c), map=failing_on_sevens, sink=isthmus.CallableSink(sink), state=state,
                                checkpoint_every=40)
        run = pipe.run()
        assert run.counts["dead_lettered"] == 40
        reader.close()
    assert len(copies) == 3
    for dest, seen in copies:
        assert snapshot(dest) == seen
    assert copies[-1][1][1], "the last backup was taken after dead letters were committed"
    # After the run, through the command line.
    from isthmus.cli import main
    assert main(["state", "backup", state, str(tmp_path / "after.db")]) == 0
    assert snapshot(str(tmp_path / "after.db")) == snapshot(state)
    with sqlite3.connect(str(tmp_path / "after.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_backup_never_overwrites_and_never_creates_a_missing_source(tmp_path, capsys):
    from isthmus.cli import main
    state = str(tmp_path / "s.db")
    StateStore(state).begin_run("p")
    with pytest.raises(isthmus.StateError, match="already exists"):
        StateStore(state).backup(state)
    assert main(["state", "backup", str(tmp_path / "missing.db"), str(tmp_path / "x.db")]) == 1
    assert "missing.db does not exist" in capsys.readouterr().err
    assert not [n for n in os.listdir(tmp_path) if not n.startswith("s.db")]


# -- damaged contents ------------------------------------------------------------------------------

def finished_state(path, client):
    """A state file after a completed incremental run with 40 dead letters (tracebacks and all)."""
    pipe = isthmus.Pipeline(contacts(client, incremental=isthmus.Incremental("updated_at", "updated_since")),
                            map=failing_on_sevens, sink=isthmus.CallableSink(nothing), state=path)
    assert pipe.run().counts["dead_lettered"] == 40
    pipe.store.close()  # the last connection closed: everything is in the main file, no -wal
    return path


def attempt(path, what, client):
    """'ok', or the StateError that reading (or running from) the state file raised."""
    from isthmus.cli import main
    try:
        if what == "cli":
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(["dlq", "list", path, "--all"])
            if code != 0:  # the command line may print the error as one line instead of raising
                assert path in err.getvalue()
                return isthmus.StateError(err.getvalue())
            return "ok"
        if what == "store":
            store = StateStore(path, create=False)
            try:
                for p in store.pipelines():
                    store.load(p)
                    store.identity(p)
                store.runs()
                store.dead_letters(include_resolved=True)
            finally:
                store.close()
            return "ok"
        pipe = isthmus.Pipeline(contacts(client, incremental=isthmus.Incremental("updated_at", "updated_since")),
                                map=failing_on_sevens, sink=isthmus.CallableSink(nothing), state=path)
        try:
            if what == "run":
                pipe.run()
            elif what == "runs":
                pipe.runs()
            else:
                pipe.dead_letters(include_resolved=True)
        finally:
            pipe.store.close()
        return "ok"
    except isthmus.StateError as exc:
        assert path in str(exc), f"{what}: the error does not name the file: {exc}"
        return exc


PATHS = ("run", "runs", "dead_letters", "cli", "store")

DAMAGE = {
    "checkpoint is not JSON": ("UPDATE checkpoints SET position = '{\"partitions\": '", {"run", "store"}),
    "checkpoint is a list": ("UPDATE checkpoints SET position = '[1, 2]'", {"run", "store"}),
    "partitions is a list": ("UPDATE checkpoints SET position = '{\"partitions\": [1]}'", {"run"}),
    "partition position is a number": (
        "UPDATE checkpoints SET position = '{\"partitions\": {\"{}\": {\"inner\": 5}}}'", {"run"}),
    "partition unit is text": (
        "UPDATE checkpoints SET position = '{\"partitions\": {\"{}\": {\"inner\": {\"unit\": \"ten\"}}}}'", {"run"}),
    "partition params is a list": (
        "UPDATE checkpoints SET position = '{\"partitions\": {\"{}\": {\"inner\": {\"params\": []}}}}'", {"run"}),
    "checkpoint is a number": ("UPDATE checkpoints SET position = 42", {"run", "store"}),
    "incremental is not JSON": ("UPDATE checkpoints SET incremental = 'nope'", {"run", "store"}),
    "incremental boundary is a number": (
        "UPDATE checkpoints SET incremental = '{\"max\": \"2024-01-01\", \"boundary\": 7}'", {"run"}),
    "run counts are not JSON": ("UPDATE runs SET counts = '{'", {"runs", "store"}),
    "run counts are a list": ("UPDATE runs SET counts = '[]'", {"runs", "store"}),
    "stage seconds are a list": ("UPDATE runs SET counts = '{\"stage_seconds\": [1]}'", {"runs", "store"}),
    "run start is text": ("UPDATE runs SET started_at = 'yesterday'", {"runs", "store"}),
    "dead-letter record is not JSON": (
        "UPDATE dead_letters SET record = '{oops' WHERE id = 3", {"dead_letters", "cli", "store"}),
    "dead-letter status is text": (
        "UPDATE dead_letters SET http_status = 'teapot' WHERE id = 2", {"dead_letters", "cli", "store"}),
    "dead-letter key is a blob": (
        "UPDATE dead_letters SET record_key = x'00ff' WHERE id = 1", {"dead_letters", "cli", "store"}),
    "a table is missing": ("DROP TABLE runs", set(PATHS)),
    "a column is missing": ("ALTER TABLE dead_letters DROP COLUMN traceback", set(PATHS)),
}


@pytest.fixture(scope="module")
def source():
    with isthmus.Sandbox(records=400) as src, isthmus.Client(src.url) as c:
        yield c


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_contents_raise_a_state_error_naming_the_file(tmp_path, source, damage):
    sql, failing = DAMAGE[damage]
    path = finished_state(str(tmp_path / "s.db"), source)
    with sqlite3.connect(path) as db:
        db.execute(sql)
    db.close()
    outcomes = {what: attempt(path, what, source) for what in PATHS}
    assert {w for w, o in outcomes.items() if o != "ok"} == failing, outcomes


def test_flipped_bytes_in_any_page_give_back_the_state_or_a_state_error(tmp_path, source):
    good = finished_state(str(tmp_path / "good.db"), source)
    with open(good, "rb") as f:
        original = f.read()
    page = int.from_bytes(original[16:18], "big")
    pages = len(original) // page
    assert pages >= 8, "a state file of a few pages only would test little"
    refused = 0
    for n in range(pages):
        rng = random.Random(1000 + n)
        damaged = bytearray(original)
        for offset in rng.sample(range(n * page, (n + 1) * page), 16):
            damaged[offset] ^= 1 << rng.randrange(8)
        path = str(tmp_path / f"page{n}.db")
        with open(path, "wb") as f:
            f.write(damaged)
        # Every way in either works or raises StateError naming the file; anything else fails here.
        outcomes = [attempt(path, what, source) for what in PATHS]
        refused += any(o != "ok" for o in outcomes)
    assert refused > 0, "no flipped page was noticed at all"


# -- a newer version supersedes an older dead letter -------------------------------------------

@pytest.mark.parametrize("stage", ["map", "sink"])
def test_a_later_delivery_supersedes_the_dead_letter_and_replay_skips_it(tmp_path, stage, capsys):
    from isthmus.cli import main
    key = "con_0000000017"
    broken, delivered = {key}, []

    def mapping(r):
        if stage == "map" and r["id"] in broken:
            raise ValueError("lookup failed")
        return {"id": r["id"], "version": version[0]}

    def sink(records):
        if stage == "sink" and any(r["id"] in broken for r in records):
            raise ValueError("the destination refuses it")
        delivered.extend(records)

    version = [1]
    state = str(tmp_path / "s.db")
    with isthmus.Sandbox(records=40) as src, isthmus.Client(src.url) as c:
        pipe = isthmus.Pipeline(contacts(c), map=mapping, sink=isthmus.CallableSink(sink), state=state)
        pipe.run()
        assert pipe.dead_letters()["record_key"].tolist() == [key]
        broken.clear()
        version[0] = 2
        second = pipe.run()  # the next run delivers version 2 of the record
        assert second.counts["written"] == 40
        assert pipe.dead_letters().empty
        (row,) = pipe.store.dead_letters(pipe.name, include_resolved=True)
        assert (row["record_key"], row["resolution"]) == (key, "superseded") and row["resolved_at"]
        assert pipe.dead_letters(include_resolved=True)["resolution"].tolist() == ["superseded"]
        assert main(["dlq", "list", state, "--all"]) == 0
        assert "superseded" in capsys.readouterr().out
        # Replaying would send version 1 over version 2: skipped, unless forced.
        delivered.clear()
        assert pipe.replay_dead_letters() == {"replayed": 0, "delivered": 0, "failed": 0, "skipped": 1}
        assert delivered == []
        assert pipe.replay_dead_letters(force=True) == {"replayed": 1, "delivered": 1, "failed": 0, "skipped": 0}
        assert [r["id"] for r in delivered] == [key]
        (row,) = pipe.store.dead_letters(pipe.name, include_resolved=True)
        assert row["resolution"] == "replayed"
        # Failing again in a later run opens it again, with the newer record.
        broken.add(key)
        version[0] = 3
        pipe.run()
        (row,) = pipe.store.dead_letters(pipe.name)
        assert row["resolution"] is None and row["attempts"] == 2
        if stage == "sink":
            assert row["record"]["version"] == 3


def test_a_record_dead_lettered_after_its_delivery_in_the_same_run_stays_open(tmp_path):
    # The same key twice in one stream: delivered first, then its later version fails.
    pages = {"id": "k1"}, {"id": "k1", "bad": True}
    store = StateStore(str(tmp_path / "s.db"))
    store.commit("p", 1, None, [{"record_key": "k1", "stage": "map", "record": {}, "error": "old"}])
    from isthmus.pipeline import _Newer
    newer = _Newer(store.open_dead_letter_keys("p"))
    newer.delivered(["k1"], [])
    newer.delivered([], [{"record_key": "k1", "stage": "map", "record": pages[1], "error": "new"}])
    store.commit("p", 2, None, [{"record_key": "k1", "stage": "map", "record": pages[1], "error": "new"}],
                 superseded=newer.take())
    (row,) = store.dead_letters("p")
    assert (row["error"], row["resolution"]) == ("new", None)


# -- each earlier layout opens with what it held ----------------------------------------------------

# Layout 3, the current one, as Python's sqlite3 wrote it before the store moved into the core.
LAYOUT_3 = OLD_SCHEMA.replace("run_id INTEGER);", "run_id INTEGER, identity TEXT);").replace(
    "resolved_at REAL, UNIQUE", "resolved_at REAL, resolution TEXT, UNIQUE")


@pytest.mark.parametrize("layout", [1, 2, 3])
def test_a_state_file_of_each_earlier_layout_opens_with_all_it_held(tmp_path, layout):
    path = str(tmp_path / f"layout{layout}.db")
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(LAYOUT_3 if layout == 3 else OLD_SCHEMA)
    if layout == 2:
        db.execute("ALTER TABLE checkpoints ADD COLUMN identity TEXT")
    db.execute("INSERT INTO runs (pipeline, started_at, finished_at, status, counts, error) VALUES "
               "('p', 1.5, 2.5, 'failed', ?, 'the sink refused')",
               (json.dumps({"read": 7, "stage_seconds": {"map": 0.25}}),))
    db.execute("INSERT INTO checkpoints (pipeline, position, incremental, updated_at, run_id) VALUES "
               "('p', ?, ?, 2.5, 1)", (json.dumps({"partitions": {"{}": {"unit": 5}}}),
                                       json.dumps({"max": "2024-05-01T00:00:00Z", "boundary": ["c9"]})))
    if layout >= 2:
        db.execute("UPDATE checkpoints SET identity = 'http://127.0.0.1:9/v1/contacts'")
    db.execute("INSERT INTO dead_letters (pipeline, record_key, stage, record, error, traceback, http_status, "
               "response_excerpt, attempts, first_seen, last_seen, run_id, resolved_at) VALUES "
               "('p', 'k1', 'sink', ?, '422', 'Traceback ...', 422, '{\"error\": \"bad\"}', 3, 1, 2, 1, 4.0)",
               (json.dumps({"id": "k1", "name": "Zoë"}),))
    db.commit()
    db.close()

    store = StateStore(path, create=False)
    assert store.load("p") == {"position": {"partitions": {"{}": {"unit": 5}}},
                               "incremental": {"max": "2024-05-01T00:00:00Z", "boundary": ["c9"]}}
    assert store.identity("p") == (None if layout == 1 else "http://127.0.0.1:9/v1/contacts")
    (run,) = store.runs("p")
    assert (run["status"], run["counts"], run["error"]) == (
        "failed", {"read": 7, "stage_seconds": {"map": 0.25}}, "the sink refused")
    (row,) = store.dead_letters("p", include_resolved=True)
    assert row["record"] == {"id": "k1", "name": "Zoë"}
    assert (row["attempts"], row["http_status"], row["traceback"]) == (3, 422, "Traceback ...")
    # Resolved before resolutions were kept: it was replayed (the only way then). A layout-3 file
    # already says (here: nothing, as written).
    assert row["resolution"] == (None if layout == 3 else "replayed")
    store.close()
    import pandas as pd
    with sqlite3.connect(path) as db:
        frame = pd.read_sql("SELECT record_key, resolution FROM dead_letters", db)
    assert frame["record_key"].tolist() == ["k1"]


def test_a_store_waiting_for_another_writer_lets_other_python_threads_run(tmp_path):
    path = str(tmp_path / "s.db")
    store = StateStore(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's write lock
    started, outcome = threading.Event(), []

    def begin():
        started.set()
        try:
            outcome.append(store.begin_run("p"))
        except Exception as exc:  # every failure counts
            outcome.append(exc)

    thread = threading.Thread(target=begin)
    thread.start()
    started.wait()
    # This thread runs while the other waits in SQLite for the lock; holding the GIL there, it
    # would keep this COMMIT from running until the busy timeout made begin_run fail.
    other.execute("COMMIT")
    thread.join()
    other.close()
    assert outcome == [1]
