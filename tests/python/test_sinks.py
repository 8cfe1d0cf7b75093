"""Sinks on their own: what each accepts, rejects, and how a resend behaves."""

from __future__ import annotations

import json
import sqlite3

import pytest

import isthmus
from isthmus.sinks import Counters


def opened(sink):
    sink.open(Counters())
    return sink


def test_jsonl_sink_appends_lines_and_rejects_what_is_not_json(tmp_path):
    path = tmp_path / "out.jsonl"
    sink = opened(isthmus.JsonlSink(str(path)))
    rejected = sink.write([{"id": "a", "n": "é"}, {"id": "b", "bad": {1, 2}}, {"id": "c"}], ["a", "b", "c"])
    sink.close()
    assert [r["index"] for r in rejected] == [1] and "not JSON-serializable" in rejected[0]["error"]
    assert [json.loads(line) for line in path.read_text("utf-8").splitlines()] == [{"id": "a", "n": "é"}, {"id": "c"}]


def test_sqlite_sink_upserts_by_key(tmp_path):
    path = str(tmp_path / "out.db")
    sink = opened(isthmus.SqliteSink(path, "contacts", key="id"))
    sink.write([{"id": "a", "v": 1}, {"id": "b", "v": 1}], ["a", "b"])
    sink.write([{"id": "a", "v": 2}], ["a"])  # a resend after a crash replaces, never duplicates
    sink.close()
    rows = dict(sqlite3.connect(path).execute("SELECT key, record FROM contacts").fetchall())
    assert {k: json.loads(v)["v"] for k, v in rows.items()} == {"a": 2, "b": 1}
    with pytest.raises(isthmus.ConfigError, match="table"):
        isthmus.SqliteSink(path, "x; DROP TABLE y")


def test_callable_sink_isolates_the_records_that_raise():
    got = []

    def fn(batch):
        if any(r["id"] == "b" for r in batch):
            raise ValueError("b is not welcome")
        got.extend(batch)

    rejected = opened(isthmus.CallableSink(fn)).write([{"id": "a"}, {"id": "b"}, {"id": "c"}], ["a", "b", "c"])
    assert got == [{"id": "a"}, {"id": "c"}]
    assert [r["index"] for r in rejected] == [1] and "b is not welcome" in rejected[0]["traceback"]


def test_http_sink_resend_of_a_batch_is_an_idempotent_replay():
    with isthmus.Sandbox() as dst, isthmus.Client(dst.url) as client:
        sink = opened(isthmus.HttpSink(client, "/v1/contacts/batch", batch_size=2))
        records = [{"id": f"r{i}"} for i in range(5)]
        keys = [r["id"] for r in records]
        assert sink.write(records, keys) == []
        assert sink.write(records, keys) == []  # e.g. a rerun after a crash before the checkpoint
        got = dst.stats()["records_received"]["contacts"]
        assert got == {"unique": 5, "duplicate": 0, "idempotent_replays": 3}
        assert sink.counters.requests == 6


def test_http_sink_narrows_a_rejected_batch_to_its_bad_records():
    with isthmus.Sandbox(max_body_bytes=2048) as dst, isthmus.Client(dst.url) as client:
        sink = opened(isthmus.HttpSink(client, "/v1/contacts/batch", batch_size=4))
        records = [{"id": f"r{i}"} for i in range(8)]
        records[5]["blob"] = "x" * 3000
        rejected = sink.write(records, [r["id"] for r in records])
        assert [r["index"] for r in rejected] == [5]
        assert rejected[0]["http_status"] == 413 and rejected[0]["response_excerpt"]
        assert dst.stats()["records_received"]["contacts"]["unique"] == 7


def test_http_sink_gives_up_loudly_on_a_server_that_keeps_failing():
    faults = {"POST /v1/contacts/batch": {"error_rate": {"503": 1.0}}}
    with isthmus.Sandbox(faults=faults) as dst, isthmus.Client(dst.url) as client:
        sink = opened(isthmus.HttpSink(client, "/v1/contacts/batch", attempts=2))
        with pytest.raises(isthmus.PipelineError, match="503 after 2 attempts"):
            sink.write([{"id": "a"}], ["a"])
        assert sink.counters.retries == 1
