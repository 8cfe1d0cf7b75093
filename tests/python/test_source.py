"""The Source seam: a user's own class runs through Pipeline with checkpoints and resume; acks
move the checkpoint over a contiguous prefix only; a misbehaving source gets a typed error
naming it and the batch, and keeps what was acknowledged before."""

from __future__ import annotations

import json
import sqlite3

import pytest

import isthmus
from isthmus.source import Acks
from isthmus.store import StateStore


class JsonLines:
    """A source of our own: records of a JSON-lines file, resumed at a line offset."""

    name = "people"

    def __init__(self, path, fail_at_offset=None):
        self.path, self.fail_at_offset = path, fail_at_offset
        self.opened_with, self.acked = [], []

    @property
    def identity(self):
        return "file://" + str(self.path)

    def open(self, state):
        self.opened_with.append(state)
        with open(self.path) as f:
            self.lines = f.read().splitlines()
        self.offset = state["offset"] if state else 0

    def read_batch(self, max_records, timeout):
        if self.offset == self.fail_at_offset:
            raise OSError(f"disk went away at line {self.offset}")
        rows = [json.loads(line) for line in self.lines[self.offset:self.offset + min(max_records, 7)]]
        if not rows:
            return None
        self.offset += len(rows)
        return isthmus.Batch(rows, [str(r["id"]) for r in rows], {"offset": self.offset})

    def ack(self, batch):
        self.acked.append(batch.token["offset"])


@pytest.fixture
def people(tmp_path):
    path = tmp_path / "people.jsonl"
    path.write_text("".join(json.dumps({"id": i, "name": f"p{i}"}) + "\n" for i in range(100)))
    return path


def pipeline(source, tmp_path, sink_rows, **kw):
    return isthmus.Pipeline(source, sink=isthmus.CallableSink(sink_rows.extend), state=str(tmp_path / "s.db"),
                            checkpoint_every=kw.pop("checkpoint_every", 20), **kw)


def checkpoint(tmp_path, name="people"):
    return StateStore(str(tmp_path / "s.db")).load(name)["position"]


def test_a_source_of_our_own_runs_with_checkpoints_and_resumes_after_a_failure(people, tmp_path):
    written = []
    first = JsonLines(people, fail_at_offset=56)
    assert isinstance(first, isthmus.Source)
    with pytest.raises(isthmus.PipelineError) as caught:
        pipeline(first, tmp_path, written).run()
    # Every batch handed to the sink was acked, and the checkpoint is the last one's token.
    assert first.acked == list(range(7, 57, 7))
    assert checkpoint(tmp_path) == {"offset": 56}
    assert isinstance(caught.value.__cause__, OSError) and isinstance(caught.value, OSError)
    assert "people" in str(caught.value) and "batch 8" in str(caught.value)

    second = JsonLines(people)
    run = pipeline(second, tmp_path, written).run()
    assert second.opened_with == [{"offset": 56}]
    assert run.counts["read"] == 44 and run.counts["written"] == 44
    # Nothing acknowledged was lost, nothing was skipped, nothing was sent twice here.
    assert sorted(r["id"] for r in written) == list(range(100))
    assert checkpoint(tmp_path) == {"offset": 100}
    assert pipeline(JsonLines(people), tmp_path, written).run().counts["read"] == 0


def test_the_watermark_moves_only_over_a_contiguous_acknowledged_prefix():
    acks = Acks()
    numbers = [acks.read({"at": i}) for i in range(5)]
    assert numbers == [0, 1, 2, 3, 4]
    acks.ack(2)
    acks.ack(1)
    assert acks.advance() is None  # batch 0 is still out
    acks.ack(0)
    assert acks.advance() == (2, {"at": 2})
    acks.ack(4)
    assert acks.advance() is None and acks.outstanding == 1
    acks.ack(3)
    assert acks.advance() == (4, {"at": 4})
    with pytest.raises(isthmus.PipelineError, match="batch 3 was acknowledged twice"):
        acks.ack(3)
    with pytest.raises(isthmus.PipelineError, match="batch 5 was acknowledged but never read"):
        acks.ack(5)


class _Row(dict):
    """A record that can be watched: a dict subclass takes weak references."""


def test_the_pipeline_lets_go_of_records_once_the_sink_has_them(tmp_path):
    # Records must not wait for the checkpoint (here never before the end): a run would then
    # hold every record since the last one. Batches read two back must be gone, and an ack
    # still gets each batch's keys and token.
    import gc
    import weakref

    class Watched:
        name = "watched"

        def open(self, state):
            self.n, self.refs, self.acked, self.alive_when_read = 0, [], [], []

        def read_batch(self, max_records, timeout):
            if self.n == 20:
                return None
            gc.collect()
            self.alive_when_read.append(sum(r() is not None for r in self.refs[:-2 * 5]))
            rows = [_Row(id=self.n * 5 + i) for i in range(5)]
            self.refs += [weakref.ref(r) for r in rows]
            self.n += 1
            return isthmus.Batch(rows, [str(r["id"]) for r in rows], {"n": self.n})

        def ack(self, batch):
            self.acked.append((batch.token["n"], len(batch.keys), batch.records))

    src = Watched()
    run = isthmus.Pipeline(src, sink=isthmus.CallableSink(lambda records: None), state=str(tmp_path / "w.db"),
                           checkpoint_every=1_000_000, checkpoint_seconds=3600).run()
    assert run.counts["written"] == 100
    assert src.alive_when_read == [0] * 20
    assert src.acked == [(n, 5, []) for n in range(1, 21)]


def test_something_that_is_not_a_source_is_refused_naming_what_it_lacks(tmp_path):
    class Half:
        def open(self, state):
            pass

    lacks = r"Half .*is not an isthmus.Source: it has no read_batch\(\), ack\(\)"
    with pytest.raises(isthmus.ConfigError, match=lacks):
        isthmus.Pipeline(Half(), sink=isthmus.CallableSink(print), state=str(tmp_path / "s.db"))
    assert not isinstance(Half(), isthmus.Source)


class Misbehaving(JsonLines):
    """Reads like JsonLines, then does `how` at batch `at` (counted from 0)."""

    def __init__(self, path, how, at=3):
        super().__init__(path)
        self.how, self.at, self.n, self.last = how, at, 0, None

    def read_batch(self, max_records, timeout):
        n, self.n = self.n, self.n + 1
        if n == self.at:
            if self.how == "raises":
                raise KeyError("no such column")
            if self.how == "not a batch":
                return [{"id": 1}]
            if self.how == "keys differ":
                return isthmus.Batch([{"id": 1}, {"id": 2}], ["1"], {"offset": 0})
            if self.how == "token not JSON":
                return isthmus.Batch([], [], {"offset": object()})
            if self.how == "same batch again":
                return self.last
        self.last = super().read_batch(max_records, timeout)
        return self.last

    def ack(self, batch):
        if self.how == "ack raises" and batch.token["offset"] > 7 * self.at:
            raise RuntimeError("lease expired")
        super().ack(batch)


@pytest.mark.parametrize("how, error, says", [
    ("raises", KeyError, "read_batch raised KeyError: 'no such column'"),
    ("not a batch", isthmus.ConfigError, "read_batch returned list"),
    ("keys differ", isthmus.ConfigError, "Batch.keys: 1 keys for 2 records"),
    ("token not JSON", isthmus.ConfigError, "the token of batch 3 is not JSON"),
    ("same batch again", isthmus.ConfigError, "returned batch 2 again as batch 3"),
    ("ack raises", RuntimeError, "ack raised RuntimeError: lease expired"),
])
def test_a_misbehaving_source_gets_an_error_naming_it_and_the_batch_and_keeps_what_was_acked(
        people, tmp_path, how, error, says):
    written = []
    with pytest.raises(isthmus.PipelineError) as caught:
        pipeline(Misbehaving(people, how), tmp_path, written, checkpoint_every=1).run()
    err = caught.value
    assert isinstance(err, error), repr(err)
    assert "Misbehaving 'people'" in str(err) and "batch 3" in str(err) and says in str(err), str(err)
    # Batches 0-2 (21 records) were acknowledged and checkpointed before it went wrong.
    assert checkpoint(tmp_path) == {"offset": 21}
    assert sorted(r["id"] for r in written)[:21] == list(range(21))
    runs = StateStore(str(tmp_path / "s.db")).runs("people")
    assert [r["status"] for r in runs] == ["failed"]


def test_a_stream_resumes_from_a_state_file_in_the_layout_before_tokens(tmp_path):
    """A file written before the Source seam kept the incremental cursor in its own column."""
    state = str(tmp_path / "s.db")
    out = []
    with isthmus.Sandbox(records=300) as src, isthmus.Client(src.url) as client:
        def pipe():
            stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 100},
                                    incremental=isthmus.Incremental("updated_at", "updated_since", lookback=0))
            return isthmus.Pipeline(stream, sink=isthmus.CallableSink(out.extend), state=state)
        assert pipe().run().counts["written"] == 300
        token = StateStore(state).load("v1_contacts")["position"]
        assert set(token) == {"incremental"} and token["incremental"]["max"]
        # The same checkpoint as the earlier layout wrote it: no position, the cursor apart.
        old = StateStore(state)
        old.commit("v1_contacts", 0, None, incremental=token["incremental"])
        old.close()
        with sqlite3.connect(state) as db:
            assert db.execute("SELECT position, incremental FROM checkpoints").fetchone()[0] is None
        db.close()
        second = pipe().run()
    # The cursor was read from the old column: only the newest record came back, and was skipped.
    assert 1 <= second.counts["read"] < 300 and second.counts["written"] == 0
    assert second.counts["skipped"] == second.counts["read"]
    assert StateStore(state).load("v1_contacts") == {"position": token, "incremental": None}


def test_streams_and_sinks_reach_clients_only_through_the_transport_seam():
    """The engine's modules never touch the private parts of a Client or a Response: they go
    through isthmus._transport, which uses the internal interface http.py gives it."""
    import pathlib
    import re
    private = re.compile(r"(?<!_http)\._(raw|content|with_retry|exchange_many|check_open|redacted_excerpt)\b")
    package = pathlib.Path(isthmus.__file__).parent
    engine = ["_transport", "source", "stream", "paginators", "incremental", "pipeline", "sinks"]
    found = [f"{name}.py:{i}" for name in engine
             for i, line in enumerate((package / f"{name}.py").read_text().splitlines(), 1) if private.search(line)]
    assert found == []
