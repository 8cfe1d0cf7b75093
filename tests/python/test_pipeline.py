"""Pipelines end to end against real sandboxes: the destination's own counts are the truth."""

from __future__ import annotations

import datetime
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types

import pytest

import isthmus
from isthmus.paginators import Page
from isthmus.store import StateStore

N = 1000

PAGINATORS = {
    "cursor": lambda: isthmus.CursorPaginator("meta.next_cursor", param="cursor"),
    "next_url": lambda: isthmus.NextUrlPaginator("next"),
    "link": lambda: isthmus.LinkHeaderPaginator(),
    "offset": lambda: isthmus.OffsetPaginator(limit=100, total="meta.total", window=4),
    "page": lambda: isthmus.PageNumberPaginator(size_param="per_page", size=100, total_pages="meta.total_pages"),
}


def slim(r):
    return {"id": r["id"], "email": r.get("email")}


@pytest.fixture
def dest():
    with isthmus.Sandbox() as sb, isthmus.Client(sb.url) as c:
        yield sb, c


def received(sb):
    return sb.stats()["records_received"].get("contacts", {"unique": 0, "duplicate": 0})


@pytest.mark.parametrize("style", sorted(PAGINATORS))
def test_every_pagination_style_delivers_every_record_exactly_once(style, dest, tmp_path):
    dst, dclient = dest
    with isthmus.Sandbox(records=N, pagination=style) as src, isthmus.Client(src.url) as client:
        stream = isthmus.Stream(client, "/v1/contacts", records="data", paginator=PAGINATORS[style](),
                                params={"limit": 100} if style in ("cursor", "next_url", "link") else None)
        run = isthmus.Pipeline(stream, map=slim, sink=isthmus.HttpSink(dclient, "/v1/contacts/batch"),
                               state=str(tmp_path / "s.db")).run()
    assert run.counts["read"] == N and run.counts["written"] == N
    assert received(dst) == {"unique": N, "duplicate": 0, "idempotent_replays": 0}


def _link_page(*values):
    response = types.SimpleNamespace(headers=isthmus.Headers([("Link", v) for v in values]))
    return Page([], {}, response, {"url": None, "params": {}})


@pytest.mark.parametrize("values, rel, expected", [
    (['<https://h/p?page=2>; rel="next"'], "next", "https://h/p?page=2"),
    (['<https://h/p?page=1>; rel="prev", <https://h/p?page=3>; rel=next'], "next", "https://h/p?page=3"),
    (['<https://h/p?page=9>; rel="last next"'], "next", "https://h/p?page=9"),
    (['<https://h/a,b>; title="a, b; \\"c\\""; rel="Next"'], "next", "https://h/a,b"),
    (['<https://h/p?page=1>; rel=prev', '<https://h/p?page=4>; rel=next'], "next", "https://h/p?page=4"),
    (['<https://h/p?page=1>; rel=prev', '<https://h/p?page=4>; rel=next'], "prev", "https://h/p?page=1"),
    (['<https://h/p?page=9>; rel="last"'], "next", None),
    (['<https://h/x>; rel="nextpage"', '<https://h/y>; title="rel=next"'], "next", None),
    (["garbage, <https://h/p?page=5>; rel=next"], "next", "https://h/p?page=5"),
    ([], "next", None),
])
def test_link_header_paginator_reads_every_link_field(values, rel, expected):
    step = isthmus.LinkHeaderPaginator(rel=rel).next(_link_page(*values))
    assert step == (None if expected is None else {"url": expected, "params": {}})


@pytest.mark.parametrize("body, says", [
    (b'{"data": [1], "x": 1e600}', "number"),                     # was a RuntimeError
    (b'{"data": [1], "x": \xc3\xa9}', "improper structure"),     # was a UnicodeDecodeError
    (b"", "empty"),                                               # undefined behaviour in simdjson
    (b'{"data": ' + b"[" * 1_000_000 + b"]" * 1_000_000 + b"}", "nested deeper than 1000"),  # was a segfault
])
def test_hostile_page_bodies_are_malformed_pages(body, says):
    status, records, _ = isthmus._core.parse_page(body, "data", [])
    assert status.startswith("invalid:") and says in status and records is None


def test_offset_without_total_stops_at_the_first_empty_page(dest, tmp_path):
    dst, dclient = dest
    with isthmus.Sandbox(records=N + 37, pagination="offset", max_page_size=50) as src, \
            isthmus.Client(src.url) as client:
        # Asks for 100 per page; the server clamps to 50, and the stream steps by what it serves.
        stream = isthmus.Stream(client, "/v1/contacts",
                                paginator=isthmus.OffsetPaginator(limit=100, total=None, window=3))
        run = isthmus.Pipeline(stream, sink=isthmus.HttpSink(dclient, "/v1/contacts/batch"),
                               state=str(tmp_path / "s.db")).run()
    assert run.counts["read"] == N + 37
    assert received(dst)["unique"] == N + 37 and received(dst)["duplicate"] == 0


def test_core_and_python_parsers_give_the_same_records(tmp_path):
    with isthmus.Sandbox(records=250) as src, isthmus.Client(src.url) as client:
        got = {}
        for parser in ("core", "python"):
            out = []
            stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(),
                                    params={"limit": 100}, parser=parser)
            isthmus.Pipeline(stream, sink=isthmus.CallableSink(out.extend),
                             state=str(tmp_path / f"{parser}.db")).run()
            got[parser] = out
    assert len(got["core"]) == 250
    assert got["core"] == got["python"]


# A pipeline run in a child process that SIGKILLs itself while mapping its kill_at-th record:
# no cleanup, no final checkpoint. The stream and the pipeline's options follow.
KILLED_WHILE_MAPPING = textwrap.dedent("""
    import datetime, os, signal, sys
    import isthmus
    src_url, dst_url, state, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    seen = 0
    def mapping(r):
        global seen
        seen += 1
        if seen == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return {"id": r["id"]}
    client, dclient = isthmus.Client(src_url), isthmus.Client(dst_url)
""")

CRASHING_CHILD = KILLED_WHILE_MAPPING + textwrap.dedent("""
    stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 50})
    isthmus.Pipeline(stream, map=mapping, sink=isthmus.HttpSink(dclient, "/v1/contacts/batch", batch_size=25),
                     state=state, checkpoint_every=100).run()
""")


def test_a_killed_run_resumes_and_loses_nothing(dest, tmp_path):
    dst, dclient = dest
    state = str(tmp_path / "s.db")
    with isthmus.Sandbox(records=N) as src:
        child = subprocess.run([sys.executable, "-c", CRASHING_CHILD, src.url, dst.url, state, "640"],
                               capture_output=True, timeout=60)
        assert child.returncode == -signal.SIGKILL, child.stderr.decode()
        before = received(dst)
        assert 0 < before["unique"] < N  # it really died part way
        with isthmus.Client(src.url) as client:
            stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(),
                                    params={"limit": 50})
            run = isthmus.Pipeline(stream, map=lambda r: {"id": r["id"]},
                                   sink=isthmus.HttpSink(dclient, "/v1/contacts/batch", batch_size=25),
                                   state=state, checkpoint_every=100).run()
    after = received(dst)
    assert after["unique"] == N  # every record arrived
    assert run.counts["read"] < N  # resumed from the checkpoint, not from the start
    # Only what was sent after the last checkpoint is sent again (and the idempotency keys
    # turn resent batches into replays, not duplicates).
    assert after["duplicate"] + after["idempotent_replays"] <= 150
    runs = isthmus.Pipeline(stream, sink=isthmus.JsonlSink(str(tmp_path / "x")), state=state).runs()
    assert list(runs["status"]) == ["running", "completed"]  # the killed run never finished
    assert str(runs["started_at"].dtype) == str(runs["finished_at"].dtype) == "datetime64[ns, UTC]"
    assert runs["finished_at"].isna().tolist() == [True, False]
    assert runs["started_at"].iloc[0] < runs["started_at"].iloc[1] < runs["finished_at"].iloc[1]


def test_mapping_errors_and_wrong_types_dead_letter_and_the_run_reconciles(dest, tmp_path):
    dst, dclient = dest

    def mapping(r):
        n = int(r["id"][4:])
        if n % 10 == 1:
            raise KeyError("no_such_field")
        if n % 10 == 2:
            return [r["id"]]  # the wrong type
        if n % 10 == 3:
            return None  # dropped on purpose
        return slim(r)

    with isthmus.Sandbox(records=N) as src, isthmus.Client(src.url) as client:
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 100})
        pipe = isthmus.Pipeline(stream, map=mapping, sink=isthmus.HttpSink(dclient, "/v1/contacts/batch"),
                                state=str(tmp_path / "s.db"))
        run = pipe.run()
    s = run.summary()
    assert (s["read"], s["written"], s["dead_lettered"], s["dropped"]) == (N, 700, 200, 100)
    assert s["reconciled"] and received(dst)["unique"] == 700
    df = run.dead_letters()
    assert len(df) == 200 and set(df["stage"]) == {"map"}
    row = df[df["record_key"] == "con_0000000011"].iloc[0]
    assert "KeyError" in row["error"] and "no_such_field" in row["traceback"]
    assert row["record"]["id"] == "con_0000000011"
    wrong = df[df["record_key"] == "con_0000000012"].iloc[0]
    assert wrong["error"] == "TypeError: map returned list, expected a dict or None"
    assert "reconciled" in run._repr_html_() and "dead-lettered 200" in repr(run)


def test_batch_map_narrows_an_exception_to_its_record(tmp_path):
    def batch(records):
        for r in records:
            if r["id"] == "con_0000000042":
                raise ValueError("bad record 42")
        return [slim(r) for r in records if not r["id"].endswith("0")]

    out = []
    with isthmus.Sandbox(records=300) as src, isthmus.Client(src.url) as client:
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 100})
        run = isthmus.Pipeline(stream, map=batch, batch=True, sink=isthmus.CallableSink(out.extend),
                               state=str(tmp_path / "s.db")).run()
    assert run.counts["dead_lettered"] == 1 and run.counts["dropped"] == 30
    assert len(out) == 269 and run.dead_letters()["record_key"].tolist() == ["con_0000000042"]


def test_sink_4xx_dead_letters_the_record_with_status_and_excerpt(tmp_path):
    def mapping(r):
        m = {"id": r["id"]}
        if r["id"].endswith("5"):
            m["blob"] = "x" * 5000  # too large for the destination: 413
        return m

    with isthmus.Sandbox(records=200) as src, isthmus.Sandbox(max_body_bytes=4096) as dst, \
            isthmus.Client(src.url) as client, isthmus.Client(dst.url) as dclient:
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 100})
        pipe = isthmus.Pipeline(stream, map=mapping,
                                sink=isthmus.HttpSink(dclient, "/v1/contacts/batch", batch_size=10),
                                state=str(tmp_path / "s.db"))
        run = pipe.run()
        assert received(dst)["unique"] == 180
    assert run.counts["written"] == 180 and run.counts["dead_lettered"] == 20
    df = pipe.dead_letters()
    assert set(df["stage"]) == {"sink"} and set(df["http_status"]) == {413}
    assert df["response_excerpt"].str.len().min() > 0
    assert sorted(df["record_key"])[0] == "con_0000000005"


def test_a_looping_paginator_raises_a_clear_error(tmp_path):
    class StuckCursor(isthmus.Paginator):
        """The Python hook: an odd API that hands back its first cursor forever."""
        first = None

        def fields(self):
            return ["meta.next_cursor"]

        def next(self, page):
            self.first = self.first or page.fields["meta.next_cursor"]
            return {"url": None, "params": {"limit": 50, "cursor": self.first}}

    out = []
    with isthmus.Sandbox(records=500) as src, isthmus.Client(src.url) as client:
        stream = isthmus.Stream(client, "/v1/contacts", paginator=StuckCursor(), params={"limit": 50})
        pipe = isthmus.Pipeline(stream, sink=isthmus.CallableSink(out.extend), state=str(tmp_path / "s.db"))
        with pytest.raises(isthmus.PipelineError, match="paginator loops"):
            pipe.run()
    assert len(out) == 100  # both pages it did read were delivered before it stopped
    assert pipe.runs()["status"].tolist() == ["failed"]


def test_a_missing_records_path_names_the_path_and_what_is_there(tmp_path):
    with isthmus.Sandbox(records=10) as src, isthmus.Client(src.url) as client:
        stream = isthmus.Stream(client, "/v1/contacts", records="results", paginator=isthmus.CursorPaginator())
        with pytest.raises(isthmus.PipelineError, match=r"'results' is missing .*top-level keys: data, meta"):
            isthmus.Pipeline(stream, sink=isthmus.CallableSink(lambda r: None), state=str(tmp_path / "s.db")).run()


def test_incremental_rerun_reads_only_the_boundary_and_skips_it(tmp_path):
    out = []
    state = str(tmp_path / "s.db")
    with isthmus.Sandbox(records=300) as src, isthmus.Client(src.url) as client:
        def pipeline():
            stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 100},
                                    incremental=isthmus.Incremental("updated_at", "updated_since", lookback=0))
            return isthmus.Pipeline(stream, sink=isthmus.CallableSink(out.extend), state=state)
        first = pipeline().run()
        second = pipeline().run()
    assert first.counts["written"] == 300
    # The inclusive updated_since brings back the newest record; it is unchanged, so skipped.
    assert second.counts["read"] >= 1 and second.counts["written"] == 0
    assert second.counts["skipped"] == second.counts["read"]
    assert len(out) == 300


def test_replay_delivers_dead_letters_once_the_mapping_is_fixed(dest, tmp_path):
    dst, dclient = dest
    broken = {"on": True}

    def mapping(r):
        if broken["on"] and r["id"].endswith("9"):
            raise RuntimeError("upstream lookup failed")
        return slim(r)

    with isthmus.Sandbox(records=200) as src, isthmus.Client(src.url) as client:
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 100})
        pipe = isthmus.Pipeline(stream, map=mapping, sink=isthmus.HttpSink(dclient, "/v1/contacts/batch"),
                                state=str(tmp_path / "s.db"))
        pipe.run()
        assert len(pipe.dead_letters()) == 20
        assert pipe.replay_dead_letters(where="record_key LIKE '%19'") == {"replayed": 2, "delivered": 0, "failed": 2,
                                                                           "skipped": 0}
        assert pipe.dead_letters()["attempts"].max() == 2
        broken["on"] = False
        assert pipe.replay_dead_letters()["delivered"] == 20
    assert pipe.dead_letters().empty
    assert received(dst) == {"unique": 200, "duplicate": 0, "idempotent_replays": 0}


def test_reconciliation_raises_when_counts_do_not_add_up(tmp_path):
    with isthmus.Sandbox(records=10) as src, isthmus.Client(src.url) as client:
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator())
        run = isthmus.Pipeline(stream, sink=isthmus.CallableSink(lambda r: None), state=str(tmp_path / "s.db")).run()
    run.counts["written"] -= 1
    with pytest.raises(isthmus.ReconciliationError, match="read 10 != written 9"):
        run.reconcile()


def test_source_faults_are_retried_and_counted(dest, tmp_path):
    dst, dclient = dest
    faults = {"GET /v1/contacts": {"error_rate": {"503": 0.2}}}
    with isthmus.Sandbox(records=N, faults=faults) as src, isthmus.Client(src.url) as client:
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 50})
        run = isthmus.Pipeline(stream, sink=isthmus.HttpSink(dclient, "/v1/contacts/batch"),
                               state=str(tmp_path / "s.db")).run()
        assert src.stats()["faults"].get("status_503", 0) == run.counts["retries"] > 0
    assert received(dst)["unique"] == N


def test_bad_configuration_names_the_field():
    with pytest.raises(isthmus.ConfigError, match="sink"):
        isthmus.Pipeline(isthmus.Stream(None, "/x"), sink=object())
    with pytest.raises(isthmus.ConfigError, match="batch_size"):
        isthmus.HttpSink(None, "/x", batch_size=0)
    with pytest.raises(isthmus.ConfigError, match="paginator"):
        isthmus.Stream(None, "/x", paginator="cursor")


def test_run_reports_time_held_back_by_the_rate_limiter(tmp_path):
    # 41 pages at 20 a second with a burst of 1: about two seconds of calls held back.
    with isthmus.Sandbox(records=400, pagination="offset") as src, \
            isthmus.Client(src.url, rate_limit=isthmus.RateLimit(20, burst=1)) as client:
        stream = isthmus.Stream(client, "/v1/contacts",
                                paginator=isthmus.OffsetPaginator(limit=10, total="meta.total", window=4))
        run = isthmus.Pipeline(stream, sink=isthmus.CallableSink(lambda records: None),
                               state=str(tmp_path / "s.db")).run()
        held = sum(v["wait_seconds"] for v in client.limits_snapshot().values())
    summary = run.summary()
    assert summary["read"] == 400
    assert summary["wait_seconds"] == pytest.approx(held, abs=0.01)
    assert summary["wait_seconds"] >= 1.0


def test_progress_shows_rate_total_and_time_held_back(tmp_path, capsys):
    with isthmus.Sandbox(records=400, pagination="offset") as src, \
            isthmus.Client(src.url, rate_limit=isthmus.RateLimit(20, burst=1)) as client:
        stream = isthmus.Stream(client, "/v1/contacts",
                                paginator=isthmus.OffsetPaginator(limit=10, total="meta.total", window=4))
        run = isthmus.Pipeline(stream, sink=isthmus.CallableSink(lambda records: None),
                               state=str(tmp_path / "s.db")).run(progress=True)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    # Not a terminal here, so the bar is a log line; the last one is the final state.
    assert "400/400 100.0%" in last and "rec/s" in last
    held = float(last.rsplit(", ", 1)[1].split("s held back")[0])
    assert held == pytest.approx(run.summary()["wait_seconds"], abs=0.1) and held >= 1.0


def test_summary_says_where_the_time_went(tmp_path):
    def slow_sink(records):
        time.sleep(0.05)  # a sink that is the bottleneck, by construction

    with isthmus.Sandbox(records=300) as src, isthmus.Client(src.url) as client:
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 100})
        pipeline = isthmus.Pipeline(stream, sink=isthmus.CallableSink(slow_sink), state=str(tmp_path / "s.db"))
        run = pipeline.run()
    stages = run.summary()["stage_seconds"]
    assert set(stages) == {"source", "map", "sink", "checkpoint"}
    assert stages["sink"] >= 0.15 and stages["sink"] > stages["map"]
    assert sum(stages.values()) <= run.duration + 0.01
    assert "time per stage" in run._repr_html_()
    assert pipeline.runs().iloc[-1]["sink_s"] == stages["sink"]


def test_cycles_a_mapping_makes_are_collected_at_each_checkpoint(tmp_path):
    import gc
    import weakref

    class Node:
        pass

    freed = []
    freed_when_900_mapped = []

    def mapping(r):
        n = Node()
        n.self = n  # a cycle: only the cyclic collector can free it
        weakref.finalize(n, freed.append, 1)
        if r["id"] == "con_0000000900":
            freed_when_900_mapped.append(len(freed))
        return r

    with isthmus.Sandbox(records=1000) as src, isthmus.Client(src.url) as client:
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 100})
        isthmus.Pipeline(stream, map=mapping, sink=isthmus.CallableSink(list), state=str(tmp_path / "s.db"),
                         checkpoint_every=100).run()
    # A checkpoint after every page collected the page's cycles, so memory stays bounded.
    assert freed_when_900_mapped[0] >= 800
    assert gc.isenabled()


# -- partitions, time slices ------------------------------------------------------------------

YEAR_2024 = dict(start="2024-01-01", end="2025-01-01", start_param="updated_since", end_param="updated_before")


@pytest.mark.parametrize("style", ["cursor", "offset"])
def test_time_slices_deliver_every_record_once(style, dest, tmp_path):
    dst, dclient = dest
    slices = isthmus.TimeSlices(every=datetime.timedelta(days=30), **YEAR_2024)
    assert len(slices) == 13 and slices[0] == {"updated_since": "2024-01-01T00:00:00.000Z",
                                               "updated_before": "2024-01-31T00:00:00.000Z"}
    with isthmus.Sandbox(records=N, pagination=style) as src, isthmus.Client(src.url) as client:
        stream = isthmus.Stream(client, "/v1/contacts", paginator=PAGINATORS[style](),
                                params={"limit": 40} if style == "cursor" else None,
                                partitions=slices, concurrency=4)
        run = isthmus.Pipeline(stream, map=slim, sink=isthmus.HttpSink(dclient, "/v1/contacts/batch"),
                               state=str(tmp_path / "s.db")).run()
    # Overlapping slices would read some records twice; slices the server ignored, far more.
    assert run.counts["read"] == N and run.counts["written"] == N
    assert received(dst) == {"unique": N, "duplicate": 0, "idempotent_replays": 0}


@pytest.mark.parametrize("concurrency", [1, 4])
def test_partitions_are_fetched_concurrently_up_to_the_bound(concurrency, tmp_path):
    # Every page takes 30 ms, so partitions fetched at once need connections of their own.
    faults = {"GET /v1/contacts": {"latency_ms": 30}}
    with isthmus.Sandbox(records=400, faults=faults) as src, isthmus.Client(src.url) as client:
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 25},
                                partitions=isthmus.TimeSlices(every=datetime.timedelta(days=61), **YEAR_2024),
                                concurrency=concurrency)
        out = []
        isthmus.Pipeline(stream, sink=isthmus.CallableSink(out.extend), state=str(tmp_path / "s.db")).run()
        max_open = src.stats()["connections"]["max_open"]
    assert len(out) == 400 and len({r["id"] for r in out}) == 400
    if concurrency == 1:
        assert max_open == 1  # one partition after another, on one kept-alive connection
    else:
        assert 2 <= max_open <= 4


PARTITIONED_CHILD = KILLED_WHILE_MAPPING + textwrap.dedent("""
    slices = isthmus.TimeSlices("2024-01-01", "2025-01-01", every=datetime.timedelta(days=92),
                                start_param="updated_since", end_param="updated_before")
    stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 20},
                            partitions=slices, concurrency=4)
    isthmus.Pipeline(stream, map=mapping, sink=isthmus.HttpSink(dclient, "/v1/contacts/batch", batch_size=20),
                     state=state, checkpoint_every=60).run()
""")


def test_a_killed_partitioned_run_resumes_every_partition_where_it_stopped(dest, tmp_path):
    dst, dclient = dest
    state = str(tmp_path / "s.db")
    # Partitions finish at different times: some pages of a slice come back slowly.
    faults = {"GET /v1/contacts": {"latency_ms": {"min": 0, "max": 40}}}
    with isthmus.Sandbox(records=N, faults=faults) as src:
        child = subprocess.run([sys.executable, "-c", PARTITIONED_CHILD, src.url, dst.url, state, "700"],
                               capture_output=True, timeout=60)
        assert child.returncode == -signal.SIGKILL, child.stderr.decode()
        before = received(dst)
        saved = StateStore(state).load("v1_contacts")["position"]["partitions"]
        # Several partitions were under way at once, each with its own position.
        assert sum(1 for p in saved.values() if "inner" in p) >= 2
        with isthmus.Client(src.url) as client:
            stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(),
                                    params={"limit": 20}, concurrency=4,
                                    partitions=isthmus.TimeSlices(every=datetime.timedelta(days=92), **YEAR_2024))
            run = isthmus.Pipeline(stream, map=lambda r: {"id": r["id"]},
                                   sink=isthmus.HttpSink(dclient, "/v1/contacts/batch", batch_size=20),
                                   state=state).run()
    after = received(dst)
    assert 0 < before["unique"] < N
    assert after["unique"] == N and after["duplicate"] == 0  # nothing skipped, nothing twice
    # Each partition resumed from its checkpoint: read again is only what the sink accepted
    # after the last one (under checkpoint_every plus a page).
    assert 0 <= run.counts["read"] - (N - before["unique"]) < 60 + 20


def test_a_checkpoint_from_one_partition_at_a_time_resumes_in_parallel(tmp_path):
    # The position format before partitions ran in parallel: partition 1 of 3, at a cursor.
    state = str(tmp_path / "s.db")
    slices = isthmus.TimeSlices(every=datetime.timedelta(days=122), **YEAR_2024)
    assert len(slices) == 3
    with isthmus.Sandbox(records=300) as src, isthmus.Client(src.url) as client:
        first = client.get("/v1/contacts", params={"limit": 20, **slices[1]}).json()
        store = StateStore(state)
        store.commit("v1_contacts", 0, {"partition": 1, "inner": {
            "url": None, "params": {"limit": 20, **slices[1], "cursor": first["meta"]["next_cursor"]}}})
        out = []
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 20},
                                partitions=slices)
        run = isthmus.Pipeline(stream, sink=isthmus.CallableSink(out.extend), state=store).run()
    ids = sorted(int(r["id"][4:]) for r in out)
    # Partition 0 was done, partition 1 resumes after its first page, partition 2 is read whole.
    after_first_page = int(first["data"][-1]["id"][4:]) + 1
    assert run.counts["read"] == len(ids)
    assert ids == list(range(after_first_page, 301))


def test_time_slices_and_partitions_validate_their_configuration():
    with pytest.raises(isthmus.ConfigError, match="end"):
        isthmus.TimeSlices("2024-02-01", "2024-01-01", every=60)
    with pytest.raises(isthmus.ConfigError, match="start"):
        isthmus.TimeSlices("last tuesday", "2024-01-01", every=60)
    with pytest.raises(isthmus.ConfigError, match="every"):
        isthmus.TimeSlices("2024-01-01", "2024-01-02", every=0)
    with pytest.raises(isthmus.ConfigError, match="at most 100,000"):
        isthmus.TimeSlices("2000-01-01", "2024-01-01", every=1)
    unix = isthmus.TimeSlices(0, 150, every=60, format="unix", start_param="from", end_param="to")
    assert list(unix) == [{"from": 0, "to": 60}, {"from": 60, "to": 120}, {"from": 120, "to": 150}]
    with pytest.raises(isthmus.ConfigError, match=r"partitions\[1\].*repeats partitions\[0\]"):
        isthmus.Stream(None, "/x", partitions=[{"a": 1}, {"a": 1}])
    with pytest.raises(isthmus.ConfigError, match="updated_since.*incremental"):
        isthmus.Stream(None, "/x", partitions=isthmus.TimeSlices(every=86400 * 31, **YEAR_2024),
                       incremental=isthmus.Incremental("updated_at", "updated_since"))
    with pytest.raises(isthmus.ConfigError, match="concurrency"):
        isthmus.Stream(None, "/x", concurrency=0)


# -- one retry mechanism: the governor's ----------------------------------------------------------

def _gets(sb):
    return sb.stats()["requests"]["by_endpoint"]["GET /v1/contacts"]


def test_run_counters_match_what_the_server_saw(tmp_path):
    faults = {"GET /v1/contacts": {"error_rate": {"429": 0.15, "503": 0.1}}}
    with isthmus.Sandbox(records=N, faults=faults) as src, isthmus.Client(src.url) as client:
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 25})
        run = isthmus.Pipeline(stream, sink=isthmus.CallableSink(lambda r: None), state=str(tmp_path / "s.db")).run()
        seen = _gets(src)
    c = run.counts
    assert c["read"] == N
    assert c["requests"] == sum(seen.values())
    assert c["status_429"] == seen["429"] > 0
    assert c["retries"] == seen["429"] + seen["503"]
    assert c["wait_seconds"] > 0  # backing off between attempts
    assert c["bytes_in"] > N * 100


def test_a_stream_retries_by_the_clients_retry_when_it_has_one(tmp_path):
    faults = {"GET /v1/contacts": {"error_rate": {"503": 1.0}}}
    with isthmus.Sandbox(records=10, faults=faults) as src, \
            isthmus.Client(src.url, retry=isthmus.Retry(attempts=2, base=0.01)) as client:
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), attempts=5)
        pipe = isthmus.Pipeline(stream, sink=isthmus.CallableSink(lambda r: None), state=str(tmp_path / "s.db"))
        with pytest.raises(isthmus.PipelineError, match="503 Service Unavailable after 2 attempts"):
            pipe.run()
        assert sum(_gets(src).values()) == 2
        # A Retry given to the stream wins over the client's.
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(),
                                retry=isthmus.Retry(attempts=3, base=0.01))
        pipe = isthmus.Pipeline(stream, sink=isthmus.CallableSink(lambda r: None), state=str(tmp_path / "t.db"))
        with pytest.raises(isthmus.PipelineError, match="after 3 attempts"):
            pipe.run()
        assert sum(_gets(src).values()) == 5
    last = pipe.runs().iloc[-1]
    assert (last["status"], last["requests"], last["retries"]) == ("failed", 3, 2)


def test_a_replayed_dead_letter_that_fails_further_on_records_its_new_stage(tmp_path):
    broken = {"map": True, "sink": True}
    delivered = []

    def mapping(r):
        if broken["map"] and r["id"].endswith("7"):
            raise RuntimeError("lookup failed")
        return {"id": r["id"], "mapped": True}

    def sink(records):
        if broken["sink"] and any(r["id"].endswith("7") for r in records):
            raise ValueError("the destination refuses it")
        delivered.extend(records)

    with isthmus.Sandbox(records=100) as src, isthmus.Client(src.url) as client:
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 50})
        pipe = isthmus.Pipeline(stream, map=mapping, sink=isthmus.CallableSink(sink), state=str(tmp_path / "s.db"))
        pipe.run()
        assert set(pipe.dead_letters()["stage"]) == {"map"} and len(pipe.dead_letters()) == 10
        broken["map"] = False  # the mapping is fixed; the destination still refuses those records
        assert pipe.replay_dead_letters() == {"replayed": 10, "delivered": 0, "failed": 10, "skipped": 0}
        df = pipe.dead_letters()
        assert len(df) == 10 and set(df["stage"]) == {"sink"}
        row = df[df["record_key"] == "con_0000000007"].iloc[0]
        assert row["record"] == {"id": "con_0000000007", "mapped": True}  # what the sink was given
        assert "refuses it" in row["error"] and "lookup failed" not in (row["traceback"] or "")
        assert row["attempts"] == 2
        broken["sink"] = False
        assert pipe.replay_dead_letters(where="stage = 'sink'")["delivered"] == 10
    assert pipe.dead_letters().empty and len(delivered) == 100


def test_record_identity_is_text_at_the_key_path_or_a_hash_of_the_record(client):
    stream = isthmus.Stream(client, "/v1/contacts", key="ref.id")
    records = [{"ref": {"id": "a"}}, {"ref": {"id": 7}}, {"ref": {"id": None}}, {"ref": 3}, {"other": 1}]
    keys = stream.keys(records)
    assert keys[:2] == ["a", "7"]
    # No identity: a hash of the record's JSON, the same for equal records, different otherwise.
    assert all(k.startswith("sha1:") for k in keys[2:]) and len(set(keys[2:])) == 3
    assert stream.keys([{"other": 1}]) == [keys[4]]


# -- failures that affect every record stop the run ------------------------------------------------

def _posts(sb):
    return sum(n for endpoint, by_status in sb.stats()["requests"]["by_endpoint"].items()
               if endpoint.startswith("POST") for n in by_status.values())


@pytest.mark.parametrize("problem, status, cls", [("key", 401, isthmus.AuthError), ("path", 404, isthmus.ClientError)])
def test_a_sink_refusing_every_batch_stops_the_run_without_moving_the_checkpoint(problem, status, cls, tmp_path):
    state = str(tmp_path / "s.db")
    with isthmus.Sandbox(records=2000) as src, isthmus.Sandbox(auth="api_key", api_key="right-key") as dst, \
            isthmus.Client(src.url) as client:
        def pipeline(key, path):
            stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 100},
                                    incremental=isthmus.Incremental("updated_at", "updated_since"))
            sink_client = isthmus.Client(dst.url, auth=isthmus.ApiKey(key, header="X-API-Key"))
            return isthmus.Pipeline(stream, map=slim, sink=isthmus.HttpSink(sink_client, path), state=state)

        wrong = pipeline("wrong-key", "/v1/contacts/batch") if problem == "key" else \
            pipeline("right-key", "/v1/contactz/batch")
        with pytest.raises(isthmus.PipelineError) as caught:
            wrong.run()
        err = caught.value
        assert isinstance(err, cls) and isinstance(err.__cause__, cls) and err.status_code == status
        assert f"HttpSink: POST {dst.url}/v1/" in str(err) and f"answered {status}" in str(err)
        assert "wrong-key" not in str(err)
        assert _posts(dst) <= 8  # one round of batches, never one POST per record
        assert wrong.dead_letters().empty
        assert wrong.runs()["status"].tolist() == ["failed"]
        assert StateStore(state).load(wrong.name) == {"position": None, "incremental": None}

        run = pipeline("right-key", "/v1/contacts/batch").run()
        assert run.counts["read"] == 2000 and run.counts["written"] == 2000  # resumed from the start
        assert received(dst) == {"unique": 2000, "duplicate": 0, "idempotent_replays": 0}


def test_a_page_refused_with_401_raises_the_auth_error_a_direct_call_would(tmp_path):
    with isthmus.Sandbox(records=50, auth="api_key") as src, \
            isthmus.Client(src.url, auth=isthmus.ApiKey("wrong", header="X-API-Key")) as client:
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator())
        pipe = isthmus.Pipeline(stream, sink=isthmus.CallableSink(list), state=str(tmp_path / "s.db"))
        with pytest.raises(isthmus.AuthError, match="GET .* answered 401") as caught:
            pipe.run()
    assert isinstance(caught.value, isthmus.PipelineError) and isinstance(caught.value, PermissionError)
    assert isinstance(caught.value.__cause__, isthmus.AuthError) and caught.value.status_code == 401


def test_a_run_whose_first_records_all_fail_stops_and_names_the_reason(tmp_path):
    state = str(tmp_path / "s.db")
    broken = {"on": True}

    def mapping(r):
        if broken["on"]:
            return {"id": r["id"], "email": r["email_address"]}  # a field this API does not have
        return slim(r)

    out = []
    with isthmus.Sandbox(records=3000) as src, isthmus.Client(src.url) as client:
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 100})
        pipe = isthmus.Pipeline(stream, map=mapping, sink=isthmus.CallableSink(out.extend), state=state,
                                checkpoint_every=100)
        with pytest.raises(isthmus.PipelineError, match=r"first 1,000 records all failed.*"
                                                        r"\(1,000 of 1,000\): KeyError: 'email_address'"):
            pipe.run()
        assert pipe.runs()["status"].tolist() == ["failed"]
        assert len(pipe.dead_letters()) == 1000 and not out
        broken["on"] = False
        run = pipe.run()  # the checkpoint stayed before them: every record is read again
    assert run.counts["read"] == 3000 and len(out) == 3000


def test_the_all_failed_check_can_be_turned_off(tmp_path):
    def refuse(records):
        raise ValueError("the destination refuses it")

    with isthmus.Sandbox(records=300) as src, isthmus.Client(src.url) as client:
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 100})
        with pytest.raises(isthmus.PipelineError, match=r"first 200 .*\(200 of 200\): ValueError: the destination"):
            isthmus.Pipeline(stream, sink=isthmus.CallableSink(refuse), state=str(tmp_path / "a.db"),
                             stop_after_failures=150).run()
        run = isthmus.Pipeline(stream, sink=isthmus.CallableSink(refuse), state=str(tmp_path / "b.db"),
                               stop_after_failures=0).run()
    assert run.status == "completed" and run.counts["dead_lettered"] == 300
    with pytest.raises(isthmus.ConfigError, match="stop_after_failures"):
        isthmus.Pipeline(stream, sink=isthmus.CallableSink(refuse), state=str(tmp_path / "c.db"),
                         stop_after_failures=-1)


# -- batches across pages, the Sink contract --------------------------------------------------------

def test_http_sink_fills_batches_across_pages(dest, tmp_path):
    dst, dclient = dest
    with isthmus.Sandbox(records=100_000) as src, isthmus.Client(src.url) as client:
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 20})
        # Only full checkpoints, so every flush ends on a whole batch.
        run = isthmus.Pipeline(stream, map=isthmus.FieldMap({"id": "id"}),
                               sink=isthmus.HttpSink(dclient, "/v1/contacts/batch", batch_size=100),
                               state=str(tmp_path / "s.db"), checkpoint_seconds=3600).run()
    assert run.counts["read"] == run.counts["written"] == 100_000
    assert _posts(dst) == 1000  # not one POST per page of 20
    assert received(dst) == {"unique": 100_000, "duplicate": 0, "idempotent_replays": 0}


class KeepingSink(isthmus.Sink):
    """The contract's example: keeps records, settles them in flush, rejects some by key."""

    def __init__(self):
        self.kept, self.stored = [], []

    def write(self, records, keys):
        self.kept.extend(zip(keys, records))
        return []

    def flush(self):
        rejected = [isthmus.Rejection("odd ones are refused", key=k, record=r, http_status=422)
                    for k, r in self.kept if int(k[4:]) % 2]
        self.stored.extend(r for k, r in self.kept if not int(k[4:]) % 2)
        self.kept = []
        return rejected

    @property
    def buffered(self):
        return len(self.kept)


def test_a_custom_sink_may_keep_records_and_reject_them_in_flush(tmp_path):
    sink = KeepingSink()
    with isthmus.Sandbox(records=250) as src, isthmus.Client(src.url) as client:
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 50})
        pipe = isthmus.Pipeline(stream, sink=sink, state=str(tmp_path / "s.db"), checkpoint_every=100)
        run = pipe.run()
    assert (run.counts["written"], run.counts["dead_lettered"]) == (125, 125) and run.summary()["reconciled"]
    df = pipe.dead_letters()
    row = df[df["record_key"] == "con_0000000001"].iloc[0]
    assert row["record"]["id"] == "con_0000000001" and row["http_status"] == 422 and row["stage"] == "sink"


@pytest.mark.parametrize("returned, method, says", [
    ([{"index": 0, "error": "no"}], "write", r"write returned a list holding dict"),
    ("ok", "write", r"write returned str 'ok'"),
    ([isthmus.Rejection("no", index=99)], "write", r"no record at index 99"),
    ([isthmus.Rejection("no", index=0)], "flush", r"flush returned .*Rejection\(error, key=<the record's key>"),
])
def test_a_custom_sink_returning_the_wrong_shape_gets_a_config_error(returned, method, says, tmp_path):
    class Odd(isthmus.Sink):
        def write(self, records, keys):
            return returned if method == "write" else None

        def flush(self):
            return returned if method == "flush" else None

    with isthmus.Sandbox(records=30) as src, isthmus.Client(src.url) as client:
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator())
        pipe = isthmus.Pipeline(stream, sink=Odd(), state=str(tmp_path / "s.db"))
        with pytest.raises(isthmus.ConfigError, match=says) as caught:
            pipe.run()
    assert "expected None or a list of isthmus.Rejection" in str(caught.value)


# -- progress, reprs and help ------------------------------------------------------------------------

class _Handle:
    def __init__(self):
        self.shown = []

    def update(self, content):
        self.shown.append(content)


def _jupyter_bar():
    from isthmus.pipeline import _Progress
    bar = _Progress(False, "contacts")
    bar.mode, bar.handle, bar._HTML = "jupyter", _Handle(), str
    return bar


def test_the_jupyter_bar_ends_full_or_is_indeterminate_without_a_total():
    bar = _jupyter_bar()
    bar.update(390, 400)
    assert "value='0.9750'" in bar.handle.shown[-1]
    bar.update(390, 400, final=True, completed=True)  # the API's total was 10 records too many
    assert "<progress value='1.0000' max='1'" in bar.handle.shown[-1]

    bar = _jupyter_bar()
    bar.update(500, None)
    assert "<progress max='1'" in bar.handle.shown[-1] and "value=" not in bar.handle.shown[-1]
    bar.update(900, None, final=True, completed=True)
    assert "<progress value='1.0000' max='1'" in bar.handle.shown[-1]


def test_reprs_show_the_configuration_and_never_a_secret(tmp_path):
    with isthmus.Client("http://127.0.0.1:9", auth=isthmus.ApiKey("hdr-s3cret", header="X-API-Key")) as client:
        stream = isthmus.Stream(client, "/v1/contacts", records="result.items",
                                paginator=isthmus.OffsetPaginator(limit=50, window=4),
                                params={"limit": 50, "api_key": "q-s3cret", "access_token": "t-s3cret"},
                                partitions=[{"region": "eu"}, {"region": "us"}], key="ref.id")
        r = repr(stream)
        assert r.startswith("Stream('http://127.0.0.1:9/v1/contacts', records='result.items', "
                            "paginator=OffsetPaginator(param='offset', limit_param='limit', limit=50, "
                            "total='meta.total', window=4), params={'limit': 50, 'api_key': '***', "
                            "'access_token': '***'}, key='ref.id', partitions=2)")
        pipe = isthmus.Pipeline(stream, map=slim, sink=isthmus.HttpSink(client, "/import"),
                                state=str(tmp_path / "s.db"), name="contacts")
        p = repr(pipe)
        assert p.startswith("<Pipeline 'contacts': Stream(") and "map=slim -> HttpSink('http://127.0.0.1:9/import'" in p
        assert "s3cret" not in r + p
    assert repr(isthmus.CursorPaginator("next", param="after")) == \
        "CursorPaginator(cursor='next', param='after', has_more=None)"
    assert repr(isthmus.NextUrlPaginator("links.next")) == "NextUrlPaginator(next='links.next')"
    assert repr(isthmus.LinkHeaderPaginator()) == "LinkHeaderPaginator(rel='next')"
    assert repr(isthmus.PageNumberPaginator(size=10)) == ("PageNumberPaginator(param='page', size_param='per_page', "
                                                          "size=10, total_pages='meta.total_pages', start=1, window=8)")


def test_help_shows_signatures_and_docstrings():
    import inspect
    assert list(inspect.signature(isthmus.Pipeline.run).parameters) == ["self", "progress"]
    assert "stop_after_failures" in inspect.signature(isthmus.Pipeline).parameters
    for fn, says in [(isthmus.Stream, "paginator"), (isthmus.Pipeline.run, "AuthError"),
                     (isthmus.Pipeline.dead_letters, "DataFrame"), (isthmus.Pipeline.runs, "DataFrame"),
                     (isthmus.HttpSink, "Idempotency-Key"), (isthmus.Sink, "Rejection")]:
        assert says in (fn.__doc__ or ""), fn


def test_a_run_names_its_counts_once(tmp_path):
    """Run.counts, summary(), runs() and the network counters speak the same names."""
    from isthmus._transport import NETWORK_COUNTS, Counters
    from isthmus.pipeline import COUNT_NAMES

    assert set(NETWORK_COUNTS) <= set(COUNT_NAMES) and len(set(COUNT_NAMES)) == len(COUNT_NAMES)
    assert [k for k in Counters.__slots__ if not k.startswith("_")] == list(NETWORK_COUNTS)
    with isthmus.Sandbox(records=30) as src, isthmus.Client(src.url) as client:
        pipe = isthmus.Pipeline(isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator()),
                                sink=isthmus.CallableSink(lambda records: None), state=str(tmp_path / "s.db"))
        run = pipe.run()
    assert list(run.counts) == list(COUNT_NAMES)
    assert set(COUNT_NAMES) <= set(run.summary())
    history = pipe.runs()
    assert set(COUNT_NAMES) <= set(history.columns)
    assert history.iloc[-1][list(COUNT_NAMES)].tolist() == [run.counts[k] for k in COUNT_NAMES]


@pytest.mark.parametrize("style", list(PAGINATORS))
def test_built_in_paginators_are_read_by_the_core_with_no_python_thread(style, tmp_path):
    threads = set()

    def mapping(r):
        threads.add(threading.active_count())
        return slim(r)

    with isthmus.Sandbox(records=N, pagination=style) as src, isthmus.Client(src.url) as client:
        stream = isthmus.Stream(client, "/v1/contacts", paginator=PAGINATORS[style](), prefetch=2,
                                params={"limit": 100} if style in ("cursor", "next_url", "link") else None)
        out = []
        isthmus.Pipeline(stream, map=mapping, sink=isthmus.CallableSink(out.extend),
                         state=str(tmp_path / "s.db")).run()
    assert len(out) == N and len({r["id"] for r in out}) == N
    assert threads == {threading.active_count()}  # nothing fetches on a Python thread of its own


def test_a_custom_paginator_is_called_once_per_page_on_the_callers_thread(tmp_path):
    calls = []

    class Cursor(isthmus.Paginator):
        def fields(self):
            return ["meta.next_cursor"]

        def next(self, page):
            calls.append(threading.get_ident())
            cursor = page.fields["meta.next_cursor"]
            return {"url": None, "params": {**page.step["params"], "cursor": cursor}} if cursor else None

    with isthmus.Sandbox(records=N) as src, isthmus.Client(src.url) as client:
        stream = isthmus.Stream(client, "/v1/contacts", paginator=Cursor(), params={"limit": 100})
        out = []
        isthmus.Pipeline(stream, sink=isthmus.CallableSink(out.extend), state=str(tmp_path / "s.db")).run()
    assert len(out) == N
    assert calls == [threading.get_ident()] * 10


def test_a_custom_paginator_pages_each_partition_with_its_own_copy_through_the_core(tmp_path):
    seen = []

    class Counting(isthmus.Paginator):
        """Counts the pages it was asked about: each partition's copy keeps its own count."""

        def __init__(self):
            self.pages = 0

        def fields(self):
            return ["meta.next_cursor"]

        def next(self, page):
            self.pages += 1
            seen.append((page.step["params"]["part"], self.pages, page.response.status_code,
                         page.response.headers.get("content-type"), threading.get_ident()))
            cursor = page.fields["meta.next_cursor"]
            return {"url": None, "params": {**page.step["params"], "cursor": cursor}} if cursor else None

    with isthmus.Sandbox(records=300) as src, isthmus.Client(src.url) as client:
        stream = isthmus.Stream(client, "/v1/contacts", paginator=Counting(), params={"limit": 100},
                                partitions=[{"part": i} for i in range(3)], concurrency=3)
        out = []
        run = isthmus.Pipeline(stream, sink=isthmus.CallableSink(out.extend), state=str(tmp_path / "s.db")).run()
    # The sandbox ignores "part": each partition reads all 300 records.
    assert len(out) == 900 and len({r["id"] for r in out}) == 300
    assert run.counts["requests"] == len(seen)
    for part in range(3):
        counts = [n for p, n, *_ in seen if p == part]
        assert len(counts) >= 3 and counts == list(range(1, len(counts) + 1))
    assert {(status, kind.split(";")[0], thread) for *_, status, kind, thread in seen} == \
        {(200, "application/json", threading.get_ident())}
