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
    assert [r.index for r in rejected] == [1] and "not JSON-serializable" in rejected[0].error
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
    assert [r.index for r in rejected] == [1] and "b is not welcome" in rejected[0].traceback


def test_http_sink_resend_of_a_batch_is_an_idempotent_replay():
    with isthmus.Sandbox() as dst, isthmus.Client(dst.url) as client:
        sink = opened(isthmus.HttpSink(client, "/v1/contacts/batch", batch_size=2))
        records = [{"id": f"r{i}"} for i in range(5)]
        keys = [r["id"] for r in records]
        assert sink.write(records, keys) == [] and sink.flush() == []
        # e.g. a rerun after a crash before the checkpoint
        assert sink.write(records, keys) == [] and sink.flush() == []
        got = dst.stats()["records_received"]["contacts"]
        assert got == {"unique": 5, "duplicate": 0, "idempotent_replays": 3}
        assert sink.counters.requests == 6


def test_http_sink_narrows_a_rejected_batch_to_its_bad_records():
    with isthmus.Sandbox(max_body_bytes=2048) as dst, isthmus.Client(dst.url) as client:
        sink = opened(isthmus.HttpSink(client, "/v1/contacts/batch", batch_size=4))
        records = [{"id": f"r{i}"} for i in range(8)]
        records[5]["blob"] = "x" * 3000
        assert sink.write(records, [r["id"] for r in records]) == []  # kept: not a full round of batches yet
        rejected = sink.flush()
        # Named by key, with the record: it may come from an earlier write than the one it is returned by.
        assert [(r.key, r.record) for r in rejected] == [("r5", records[5])]
        assert rejected[0].http_status == 413 and rejected[0].response_excerpt
        assert dst.stats()["records_received"]["contacts"]["unique"] == 7


def test_http_sink_gives_up_loudly_on_a_server_that_keeps_failing():
    faults = {"POST /v1/contacts/batch": {"error_rate": {"503": 1.0}}}
    with isthmus.Sandbox(faults=faults) as dst, isthmus.Client(dst.url) as client:
        sink = opened(isthmus.HttpSink(client, "/v1/contacts/batch", attempts=2))
        sink.write([{"id": "a"}], ["a"])
        with pytest.raises(isthmus.PipelineError, match="503 after 2 attempts") as caught:
            sink.flush()
        assert isinstance(caught.value, isthmus.ServerError) and caught.value.status_code == 503
        assert sink.counters.retries == 1
        assert sink.buffered == 1  # not settled: a later flush sends it again


def posts(sb):
    """POSTs the sandbox received, to any path (an unknown one is counted as unmatched)."""
    return sum(n for endpoint, by_status in sb.stats()["requests"]["by_endpoint"].items()
               if endpoint.startswith("POST") for n in by_status.values())


def test_http_sink_fills_batches_across_writes():
    with isthmus.Sandbox() as dst, isthmus.Client(dst.url) as client:
        sink = opened(isthmus.HttpSink(client, "/v1/contacts/batch", batch_size=10, concurrency=2))
        records = [{"id": f"r{i}"} for i in range(47)]
        for i in range(0, 47, 7):  # pages of 7
            assert sink.write(records[i:i + 7], [r["id"] for r in records[i:i + 7]]) == []
        # Two full batches went as soon as 20 were kept, then two more at 40; 7 wait for flush.
        assert posts(dst) == 4 and sink.buffered == 7
        assert sink.flush() == [] and sink.buffered == 0
        assert posts(dst) == 5
        assert dst.stats()["records_received"]["contacts"] == {"unique": 47, "duplicate": 0, "idempotent_replays": 0}


@pytest.mark.parametrize("problem, status, cls", [("key", 401, isthmus.AuthError), ("path", 404, isthmus.ClientError)])
def test_http_sink_stops_on_a_refused_request_instead_of_narrowing_it(problem, status, cls):
    with isthmus.Sandbox(auth="api_key", api_key="right-key") as dst, \
            isthmus.Client(dst.url, auth=isthmus.ApiKey("wrong-key" if problem == "key" else "right-key",
                                                        header="X-API-Key")) as client:
        path = "/v1/contacts/batch?api_key=in-the-query" if problem == "key" else "/v1/nowhere/batch"
        sink = opened(isthmus.HttpSink(client, path, batch_size=10, concurrency=2))
        records = [{"id": f"r{i}"} for i in range(20)]
        with pytest.raises(isthmus.PipelineError) as caught:
            sink.write(records, [r["id"] for r in records])
        err = caught.value
        assert isinstance(err, cls) and err.status_code == status
        assert isinstance(err.__cause__, cls) and not isinstance(err.__cause__, isthmus.PipelineError)
        assert f"HttpSink: POST {dst.url}" in str(err) and f"answered {status}" in str(err)
        assert "in-the-query" not in str(err) and "wrong-key" not in str(err)
        assert posts(dst) == 2  # the two batches, never one record at a time


def test_a_rejection_names_its_record_and_refuses_nonsense():
    assert isthmus.Rejection("too big", index=3, http_status=413).index == 3
    rej = isthmus.Rejection("duplicate", key="con_1", record={"id": "con_1"})
    assert (rej.key, rej.record, rej.attempts, rej.index) == ("con_1", {"id": "con_1"}, 1, None)
    with pytest.raises(isthmus.ConfigError, match="index=.*key="):
        isthmus.Rejection("no record named")
    with pytest.raises(isthmus.ConfigError, match="Rejection.index"):
        isthmus.Rejection("x", index=-1)


def test_sinks_have_reprs_without_secrets(tmp_path):
    with isthmus.Client("http://127.0.0.1:9") as client:
        r = repr(isthmus.HttpSink(client, "/v1/import?api_key=s3cret", batch_size=50,
                                  headers={"Authorization": "Bearer s3cret"}))
    assert r.startswith("HttpSink('http://127.0.0.1:9/v1/import?api_key=***', batch_size=50") and "s3cret" not in r
    assert repr(isthmus.JsonlSink("out.jsonl")) == "JsonlSink('out.jsonl', fsync=True)"
    assert repr(isthmus.SqliteSink("o.db", "contacts")) == "SqliteSink('o.db', 'contacts', key='id')"
    assert "Rejection" in isthmus.Sink.__doc__ and "Settles" in isthmus.Sink.flush.__doc__


# -- the fused path: a FieldMap (or no map) and a core sink, records never Python objects ----

FIELDS = {"id": "id", "name": "first_name", "city": "address.city", "one": ("address.number", "bool"),
          "source": {"value": "crm"}}


class PythonPath:
    """The same sinks reached through a subclass, which the pipeline hands Python records."""

    class Jsonl(isthmus.JsonlSink):
        pass

    class Sqlite(isthmus.SqliteSink):
        pass

    class Http(isthmus.HttpSink):
        pass


def run(stream, sink, tmp_path, name, fields=FIELDS):
    before = isthmus._core.python_records_built()
    result = isthmus.Pipeline(stream, map=isthmus.FieldMap(fields) if fields else None, sink=sink,
                              state=str(tmp_path / f"{name}.db"), stop_after_failures=0).run()
    return result, isthmus._core.python_records_built() - before


def dead(result):
    return sorted((d["record_key"], d["error"], json.dumps(d["record"], sort_keys=True))
                  for d in result.dead_letters().to_dict("records"))


@pytest.mark.parametrize("fields", [FIELDS, None], ids=["field_map", "no_map"])
def test_a_fused_jsonl_run_writes_what_the_python_path_writes(tmp_path, fields):
    with isthmus.Sandbox(records=2_345, pagination="offset") as src, isthmus.Client(src.url) as client:
        def stream():
            return isthmus.Stream(client, "/v1/contacts", paginator=isthmus.OffsetPaginator(limit=200))
        fused, built = run(stream(), isthmus.JsonlSink(tmp_path / "fused.jsonl"), tmp_path, "fused", fields)
        slow, slow_built = run(stream(), PythonPath.Jsonl(tmp_path / "python.jsonl"), tmp_path, "python", fields)
    assert (tmp_path / "fused.jsonl").read_bytes() == (tmp_path / "python.jsonl").read_bytes()
    assert fused.counts["read"] == slow.counts["read"] == 2_345
    for k in ("written", "dead_lettered", "bytes_out"):
        assert fused.counts[k] == slow.counts[k], k
    assert dead(fused) == dead(slow)
    if fields:
        assert 0 < fused.counts["dead_lettered"] < 2_345  # address.number 1 casts to a bool; the rest do not
        assert "field 'one' (from 'address.number'):" in dead(fused)[0][1]
    # The fused run made no Python object per record; the Python path made one or two each.
    assert built == 0 and slow_built >= 2_345


def test_a_fused_sqlite_run_files_the_rows_the_python_path_files(tmp_path):
    with isthmus.Sandbox(records=1_200) as src, isthmus.Client(src.url) as client:
        def stream():
            return isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 100})
        run(stream(), isthmus.SqliteSink(tmp_path / "fused.sqlite", "contacts"), tmp_path, "fused")
        run(stream(), PythonPath.Sqlite(tmp_path / "python.sqlite", "contacts"), tmp_path, "python")
    rows = {}
    for name in ("fused", "python"):
        with sqlite3.connect(tmp_path / f"{name}.sqlite") as db:
            rows[name] = db.execute("SELECT key, record FROM contacts ORDER BY key").fetchall()
    assert rows["fused"] == rows["python"] and rows["fused"]


def test_a_fused_http_run_posts_the_bodies_and_keys_the_python_path_posts(tmp_path):
    # The Python path runs second against the same destination: every one of its batches is an
    # idempotent replay only if it carries the same Idempotency-Key with the same body (the
    # sandbox answers 422 to a key reused with another body).
    with isthmus.Sandbox(records=1_500, pagination="offset") as src, isthmus.Sandbox() as dst, \
            isthmus.Client(src.url) as sc, isthmus.Client(dst.url) as dc:
        def stream():
            return isthmus.Stream(sc, "/v1/contacts", paginator=isthmus.OffsetPaginator(limit=250))
        fields = {"id": "id", "email": "email", "city": "address.city"}
        fused, built = run(stream(), isthmus.HttpSink(dc, "/v1/contacts/batch", batch_size=100, concurrency=4),
                           tmp_path, "fused", fields)
        first = dict(dst.stats()["records_received"]["contacts"])
        slow, _ = run(stream(), PythonPath.Http(dc, "/v1/contacts/batch", batch_size=100, concurrency=4),
                      tmp_path, "python", fields)
        second = dst.stats()["records_received"]["contacts"]
    assert first == {"unique": 1_500, "duplicate": 0, "idempotent_replays": 0}
    assert second == {"unique": 1_500, "duplicate": 0, "idempotent_replays": 15}
    assert fused.counts["written"] == slow.counts["written"] == 1_500 and built == 0
    assert fused.counts["requests"] == slow.counts["requests"]
    assert fused.counts["bytes_out"] == slow.counts["bytes_out"] > 0


def test_a_fused_http_run_narrows_batches_the_destination_refuses(tmp_path):
    # Batches too large for the destination (413) are sent again record by record.
    with isthmus.Sandbox(records=300, pagination="offset") as src, isthmus.Sandbox(max_body_bytes=4096) as dst, \
            isthmus.Client(src.url) as sc, isthmus.Client(dst.url) as dc:
        stream = isthmus.Stream(sc, "/v1/contacts", paginator=isthmus.OffsetPaginator(limit=100))
        fields = {"id": "id", "pad": {"value": "x" * 40}}
        result, built = run(stream, isthmus.HttpSink(dc, "/v1/contacts/batch", batch_size=100), tmp_path,
                            "fused", fields)
        got = dst.stats()["records_received"]["contacts"]["unique"]
    # Every batch of 100 padded records is over 4 KiB: narrowed to single records, all accepted.
    assert result.counts["written"] == got == 300 and result.counts["dead_lettered"] == 0 and built == 0


def test_a_fused_run_resumes_from_its_checkpoint(tmp_path):
    # Pages that fail for good now and then (one attempt each): every failed run checkpoints
    # what the sink accepted, and the next resumes there, until one completes.
    faults = {"GET /v1/contacts": {"error_rate": {"503": 0.15}}}
    with isthmus.Sandbox(records=3_000, faults=faults) as src, isthmus.Client(src.url) as client:
        statuses = []
        while "completed" not in statuses and len(statuses) < 40:
            stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(),
                                    params={"limit": 100}, retry=1)
            pipeline = isthmus.Pipeline(stream, map=isthmus.FieldMap({"id": "id"}),
                                        sink=isthmus.JsonlSink(tmp_path / "out.jsonl"),
                                        state=str(tmp_path / "s.db"), checkpoint_every=100)
            try:
                statuses.append(pipeline.run().status)
            except isthmus.PipelineError:
                statuses.append("failed")
    assert "failed" in statuses and statuses[-1] == "completed"
    ids = [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    # Each rerun resumes at its checkpoint: at most the page in hand when a run failed comes twice.
    assert len(set(ids)) == 3_000 and len(ids) - 3_000 <= 100 * statuses.count("failed")


def test_http_sink_takes_an_idempotency_key_function_and_its_errors_keep_the_records():
    seen = []

    def key(records, keys):
        seen.append((records, keys))
        if records[0]["id"] == "boom":
            raise LookupError("no key for boom")
        return "mine-" + "-".join(keys)

    with isthmus.Sandbox() as dst, isthmus.Client(dst.url) as client:
        sink = opened(isthmus.HttpSink(client, "/v1/contacts/batch", batch_size=2, idempotency_key=key))
        records = [{"id": "a", "n": 1.5}, {"id": "b"}, {"id": "c"}]
        assert sink.write(records, ["a", "b", "c"]) == [] and sink.flush() == []
        assert seen == [([records[0], records[1]], ["a", "b"]), ([records[2]], ["c"])]
        assert sink.write(records, ["a", "b", "c"]) == [] and sink.flush() == []  # the same keys again
        assert dst.stats()["records_received"]["contacts"]["idempotent_replays"] == 2
        sink.write([{"id": "boom"}], ["boom"])
        with pytest.raises(LookupError, match="no key for boom"):
            sink.flush()
        assert sink.buffered == 1  # nothing was sent: the record stays kept
