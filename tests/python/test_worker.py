"""Page tasks on workers: the same pipeline definition run on a real RabbitMQ broker and a real
Redis (children of the test, tests/python/servers.py), into the sandbox's idempotent import
endpoint. Worker processes are the `isthmus worker` command, killed with SIGKILL by PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

import isthmus
from conftest import wait_until
from servers import RabbitMQ, Redis, free_port, have_rabbitmq, have_redis

pytestmark = pytest.mark.skipif(not (have_rabbitmq and have_redis), reason="rabbitmq-server or redis-server missing")

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with RabbitMQ(tmp_path_factory.mktemp("broker")) as b:
        yield b


@pytest.fixture
def redis(tmp_path):
    with Redis(tmp_path) as r:
        yield r


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "isthmus.cli", *args], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def received(api):
    return api.stats()["records_received"].get("contacts", {"unique": 0, "duplicate": 0, "idempotent_replays": 0})


def pipeline_doc(source_url, sink_url, broker, redis, state, *, name, slices, limit, max_deliveries=5,
                 attempts=6):
    return {
        "name": name, "state": str(state), "queue": broker.url, "coordination": redis.url,
        "max_deliveries": max_deliveries,
        "source": {"base_url": source_url, "path": "/v1/contacts", "params": {"limit": limit},
                   "paginator": {"type": "cursor", "cursor": "meta.next_cursor", "param": "cursor"},
                   "retry": {"attempts": attempts, "base": 0.01, "cap": 0.05},
                   "partitions": {"time_slices": {"start": "2024-01-01", "end": "2025-01-01",
                                                  "every": 366 * 86400 / slices}}},
        "sink": {"type": "http", "base_url": sink_url, "path": "/v1/contacts/batch", "batch_size": limit},
    }


def write_yaml(tmp_path, doc, file="pipeline.yaml"):
    path = tmp_path / file
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def queue_of(broker, name, max_deliveries=5):
    return isthmus.AmqpQueue(broker.url, f"isthmus.{name}", max_deliveries=max_deliveries)


# --- in one process -------------------------------------------------------------------------

def test_a_run_with_a_queue_works_as_page_tasks_and_reconciles(broker, redis, tmp_path, capsys):
    from isthmus.config import load_pipeline

    with isthmus.Sandbox(records=3000, max_page_size=100, threads=2) as api:
        path = write_yaml(tmp_path, pipeline_doc(api.url, api.url, broker, redis, tmp_path / "s.db",
                                                 name="inproc", slices=4, limit=100))
        pipeline = load_pipeline(path)
        run = pipeline.run(progress=True)  # submits, then works here until the run settles
        assert run.status == "completed"
        assert "3,000 records" in capsys.readouterr().err  # the bar's last line
        assert run.counts["read"] == run.counts["written"] == 3000
        assert received(api)["unique"] == 3000
        assert received(api)["duplicate"] == 0
        # One task per page: 30 pages, plus an empty last page per partition at most.
        assert 30 <= pipeline.progress(run.id)["pages"] <= 34
        runs = pipeline.runs()
        assert list(runs["status"]) == ["completed"]
        assert int(runs["read"].iloc[0]) == 3000 and int(runs["written"].iloc[0]) == 3000
        with queue_of(broker, "inproc") as q:
            assert q.stats() == {"ready": 0, "leased": 0, "delayed": 0, "dead": 0}
        shown = cli("status", path)
        assert shown.returncode == 0, shown.stderr
        assert "ready 0  leased 0  delayed 0  dead 0" in shown.stdout
        assert f"run {run.id} completed: partitions 4/4 done" in shown.stdout
        assert "guest:guest" not in shown.stdout  # the broker's password is masked

        # A duplicate of a task a crash left behind is dropped: its partition is past it.
        from isthmus.worker import first_tasks

        with queue_of(broker, "inproc") as q:
            q.put(first_tasks(pipeline, run.id)[:1])
        before = api.stats()["requests"]["total"]
        stats = isthmus.Worker(pipeline).run(until_idle=0.5)
        assert stats["stale"] == 1 and stats["pages"] == 0
        assert api.stats()["requests"]["total"] == before  # nothing fetched, nothing sent
        assert pipeline.progress(run.id)["stale_tasks"] == 1


def test_a_kill_between_a_commit_and_the_next_publish_is_repaired_by_the_redelivery(broker, redis, tmp_path):
    """The next page's task is published after the commit: a worker killed in between leaves a
    committed page, no next task and its own task unacked. The broker hands that task out again;
    it is dropped as stale and publishes the next task from the checkpoint, so the chain goes on
    and nothing is sent twice."""
    from isthmus.config import load_pipeline

    with isthmus.Sandbox(records=500, max_page_size=100) as api:
        pipeline = load_pipeline(write_yaml(tmp_path, pipeline_doc(api.url, api.url, broker, redis,
                                                                   tmp_path / "s.db", name="repair", slices=1,
                                                                   limit=100)))
        worker = isthmus.Worker(pipeline)
        killed = {}
        put, ack = worker._put, worker._ack

        def lost_publish(body):
            if json.loads(body)["seq"] == 2 and "put" not in killed:
                killed["put"] = body  # the kill: this publish never reached the broker
                return
            put(body)

        def no_ack(message):
            if json.loads(message.body)["seq"] == 1 and "ack" not in killed:
                killed["ack"] = True  # ... nor this ack: the broker hands the task out again
                worker._queue().nack(message)
                return
            ack(message)

        worker._put, worker._ack = lost_publish, no_ack
        run_id = pipeline.submit()
        done = []
        thread = threading.Thread(target=lambda: done.append(worker.run(run_id=run_id)), daemon=True)
        thread.start()
        thread.join(timeout=60)
        settled = not thread.is_alive()
        if not settled:
            worker.stop()
            thread.join(timeout=30)
        assert settled and done, "the chain stopped at the lost publish"
        assert set(killed) == {"put", "ack"}
        assert done[0]["stale"] == 1
        assert pipeline.runs()["status"].iloc[-1] == "completed"
        assert received(api) == {"unique": 500, "duplicate": 0, "idempotent_replays": 0}
        progress = pipeline.progress(run_id)
        assert progress["counts"]["read"] == progress["counts"]["written"] == 500 and progress["stale_tasks"] == 1


def test_a_worker_reads_one_page_per_task_through_the_core_reader(broker, redis, tmp_path):
    with isthmus.Sandbox(records=500, max_page_size=100) as api:
        client = isthmus.Client(api.url)
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 100})
        records, after, counts = stream._read_page(0, None, None)
        assert len(records) == 100 and after["params"]["cursor"]
        assert counts["requests"] == 1  # the budget of one page: the next is not fetched ahead
        class Cursor(isthmus.Paginator):
            """A paginator of the user's own: asked once for the page's next step."""

            def fields(self):
                return ["meta.next_cursor"]

            def next(self, page):
                cursor = page.fields["meta.next_cursor"]
                return {"url": None, "params": {**page.step["params"], "cursor": cursor}} if cursor else None

        custom = isthmus.Stream(client, "/v1/contacts", paginator=Cursor(), params={"limit": 100},
                                partitions=[{"updated_since": "2024-01-01T00:00:00Z"},
                                            {"updated_since": "2024-07-01T00:00:00Z"}])
        records, after, counts = custom._read_page(1, None, None)
        assert len(records) == 100 and counts["requests"] == 1
        assert after["params"]["updated_since"] == "2024-07-01T00:00:00Z" and after["params"]["cursor"]
        more, _, _ = custom._read_page(1, after, None)
        assert more[0]["id"] > records[-1]["id"]
    with isthmus.Sandbox(records=500, max_page_size=100, pagination="offset") as api:
        offset = isthmus.Stream(isthmus.Client(api.url), "/v1/contacts", paginator=isthmus.OffsetPaginator(limit=100))
        records, after, counts = offset._read_page(0, {"unit": 300}, None)
        assert records[0]["id"] == "con_0000000301" and after == {"unit": 400} and counts["requests"] == 1
        records, after, counts = offset._read_page(0, {"unit": 400}, None)
        assert len(records) == 100 and after is None  # the total says it was the last page


def test_an_incremental_stream_on_workers_moves_its_cursor_when_the_run_is_done(broker, redis, tmp_path):
    with isthmus.Sandbox(records=1000, max_page_size=100) as api, isthmus.Sandbox() as dest:
        stream = isthmus.Stream(isthmus.Client(api.url), "/v1/contacts", paginator=isthmus.CursorPaginator(),
                                params={"limit": 100}, incremental=isthmus.Incremental("updated_at", "updated_since"))
        pipeline = isthmus.Pipeline(stream, sink=isthmus.HttpSink(isthmus.Client(dest.url), "/v1/contacts/batch"),
                                    state=str(tmp_path / "s.db"), name="inc", queue=broker.url,
                                    coordination=redis.url)
        first = pipeline.run()
        assert first.counts["read"] == first.counts["written"] == 1000
        newest = max(r["updated_at"] for r in isthmus.Client(api.url).get(
            "/v1/contacts", params={"limit": 100, "updated_since": "2024-12-01T00:00:00Z"}).json()["data"])
        cursor = pipeline.store.token(pipeline.store.load("inc"))["incremental"]
        assert cursor["max"] == newest
        # The next run asks only from there, and leaves out the record it already delivered.
        second = pipeline.run()
        assert second.counts["written"] == 0 and second.counts["skipped"] == 1 and second.counts["read"] == 1
        assert received(dest)["unique"] == 1000


# --- many processes, disruptions ------------------------------------------------------------

def start_worker(path, log):
    # Output to a file: a pipe nobody reads would fill up and stall the worker's logging.
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "isthmus.cli", "worker", path, "--concurrency", "1",
                                 "--lease", "3"], env=ENV, stdout=out, stderr=subprocess.STDOUT)


def test_four_workers_lose_nothing_through_a_kill_a_broker_restart_and_a_redis_restart(tmp_path):
    from isthmus.config import load_pipeline

    with RabbitMQ(tmp_path / "b") as broker, Redis(tmp_path) as redis, \
            isthmus.Sandbox(records=200_000, max_page_size=1000, threads=2) as api:
        doc = pipeline_doc(api.url, api.url, broker, redis, tmp_path / "state.db", name="contacts", slices=20,
                           limit=1000)
        path = write_yaml(tmp_path, doc)
        logs = [tmp_path / f"worker-{i}.log" for i in range(4)]
        workers = [start_worker(path, log) for log in logs]
        try:
            out = cli("submit", path)
            assert out.returncode == 0, out.stderr
            run_id = int(out.stdout.strip())

            wait_until(lambda: received(api)["unique"] >= 30_000, timeout=120, interval=0.02)
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait()
            workers[0] = start_worker(path, logs[0])
            # Connected (its banner is in the log) before the broker goes away: a worker that
            # cannot reach the broker as it starts stops with ConnectError, as for a wrong URL.
            wait_until(lambda: logs[0].read_text().count("isthmus.Worker") == 2, timeout=60, interval=0.05)
            wait_until(lambda: received(api)["unique"] >= 70_000, timeout=120, interval=0.02)
            broker.restart()
            wait_until(lambda: received(api)["unique"] >= 110_000, timeout=120, interval=0.02)
            redis.restart()

            pipeline = load_pipeline(path)
            wait_until(lambda: pipeline.progress(run_id)["going"] == 0, timeout=240, interval=0.2)
            # Duplicate tasks a disruption left behind are drained, dropped as stale.
            with queue_of(broker, "contacts") as q:
                wait_until(lambda: q.stats() == {"ready": 0, "leased": 0, "delayed": 0, "dead": 0},
                           timeout=60, interval=0.2)

            def status_report():
                status = cli("status", path, "--json")
                assert status.returncode == 0, status.stderr
                return json.loads(status.stdout)

            # A worker's heartbeat is written every third of its lease: the restarted Redis has
            # all four again within one such period.
            wait_until(lambda: len(status_report()["workers"]) == 4, timeout=30, interval=0.5)
            report = status_report()
            assert report["queue"]["ready"] == 0 and report["queue"]["dead"] == 0
            assert report["runs"][0]["run_id"] == run_id and report["runs"][0]["done"] == 20
        finally:
            for w in workers:
                w.send_signal(signal.SIGTERM)
            for w in workers:
                try:
                    w.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    w.kill()
                    w.wait()
        got = received(api)
        progress = pipeline.progress(run_id)
        row = [r for r in pipeline.store.runs("contacts") if r["id"] == run_id][0]
        resent = got["idempotent_replays"] + got["duplicate"]
        print(f"\nre-sent pages: {got['idempotent_replays']} idempotent replays, {got['duplicate']} duplicate "
              f"records; stale tasks dropped: {progress['stale_tasks']}; pages: {progress['pages']}")
        assert got["unique"] == 200_000
        assert got["duplicate"] == 0  # every re-send carried its batch's idempotency key
        assert row["status"] == "completed"
        c = row["counts"]
        assert c["read"] == c["written"] == 200_000 and c["reconciled"]
        # Each disruption re-runs at most the page each worker had in flight.
        assert resent <= 3


# --- a page that always fails ---------------------------------------------------------------

class _Front:
    """An HTTP front for the sandbox that forwards every request, except: while ``failing``, a
    GET whose query holds ``marker`` (the first page of one partition) is answered 503; while
    ``post_status`` is set, every POST is answered with it (and a JSON error)."""

    def __init__(self, upstream: str, marker: str = "", post_status: int = 0):
        self.upstream, self.marker, self.failing = upstream, marker, bool(marker)
        self.post_status, self.refused = post_status, 0
        front = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if front.failing and front.marker in self.path:
                    self.answer(503, b"")
                    return
                self.forward(None)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if front.post_status:
                    front.refused += 1
                    self.answer(front.post_status, b'{"error": "refused by the test"}')
                    return
                self.forward(body)

            def forward(self, body):
                kept = ("content-type", "idempotency-key")
                headers = {k: v for k, v in self.headers.items() if k.lower() in kept}
                req = urllib.request.Request(front.upstream + self.path, data=body, headers=headers,
                                             method=self.command)
                try:
                    with urllib.request.urlopen(req) as r:
                        out, status = r.read(), r.status
                except urllib.error.HTTPError as e:
                    out, status = e.read(), e.code
                self.answer(status, out)

            def answer(self, status, out):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_page_that_always_fails_is_dead_lettered_and_replayed(broker, redis, tmp_path):
    from isthmus.config import load_pipeline

    with isthmus.Sandbox(records=2000, max_page_size=100, threads=2) as api:
        slices = isthmus.TimeSlices("2024-01-01", "2025-01-01", every=366 * 86400 / 4)
        front = _Front(api.url, "updated_since=" + urllib.parse.quote(slices[2]["updated_since"], safe=""))
        try:
            path = write_yaml(tmp_path, pipeline_doc(front.url, api.url, broker, redis, tmp_path / "s.db",
                                                     name="faulty", slices=4, limit=100, max_deliveries=2,
                                                     attempts=1))
            pipeline = load_pipeline(path)
            run_id = pipeline.submit()
            stats = isthmus.Worker(pipeline, concurrency=2).run(run_id=run_id)
            assert stats["dead_lettered"] == 1
            progress = pipeline.progress(run_id)
            assert progress["done"] == 3 and progress["dead"] == 1
            # The other partitions finished: a quarter of the year less is all there.
            others = received(api)["unique"]
            assert 1000 < others < 2000 and progress["counts"]["read"] == others
            run = [r for r in pipeline.store.runs("faulty") if r["id"] == run_id][0]
            assert run["status"] == "failed" and "dead-lettered" in run["error"]

            listed = cli("dlq", "list", path)
            assert listed.returncode == 0 and "1 dead letter(s)" in listed.stdout
            assert "source" in listed.stdout and "503" in listed.stdout

            front.failing = False
            replay = cli("dlq", "replay", path)
            assert replay.returncode == 0, replay.stderr
            assert json.loads(replay.stdout.strip().splitlines()[-1])["delivered"] == 1
        finally:
            front.close()
        assert received(api)["unique"] == 2000
        progress = pipeline.progress(run_id)
        assert progress["done"] == 4 and progress["counts"]["read"] == 2000
        run = [r for r in pipeline.store.runs("faulty") if r["id"] == run_id][0]
        assert run["status"] == "completed" and run["counts"]["reconciled"]
        assert cli("dlq", "list", path).stdout.strip().endswith("0 dead letter(s)")
        with queue_of(broker, "faulty", max_deliveries=2) as q:
            assert q.stats() == {"ready": 0, "leased": 0, "delayed": 0, "dead": 0}


# --- failures that affect every record -------------------------------------------------------

def test_a_sink_refusing_every_request_halts_every_worker_until_the_run_is_resumed(broker, redis, tmp_path):
    """A 401 from the destination stops the run on every worker process: no dead letters, no
    checkpoint past a page the sink did not take, the tasks left in the queue; `isthmus submit`
    resumes the same run once the cause is fixed."""
    from isthmus.config import load_pipeline

    with isthmus.Sandbox(records=2000, max_page_size=100, threads=2) as api:
        front = _Front(api.url, post_status=401)
        logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
        try:
            doc = pipeline_doc(api.url, front.url, broker, redis, tmp_path / "s.db", name="refused", slices=4,
                               limit=100)
            # Batches that do not line up with pages: a refused page's records kept by the sink
            # would go out in other batches (other keys) once the run resumes, and be counted twice.
            doc["sink"]["batch_size"] = 60
            path = write_yaml(tmp_path, doc)
            workers = [start_worker(path, log) for log in logs]
            out = cli("submit", path)
            assert out.returncode == 0, out.stderr
            run_id = int(out.stdout.strip())
            pipeline = load_pipeline(path)
            wait_until(lambda: pipeline.store.runs("refused")[-1]["status"] == "failed", timeout=60, interval=0.05)
            run = pipeline.store.runs("refused")[-1]
            assert run["id"] == run_id and "halted: " in run["error"] and "401" in run["error"]
            # Every partition's task waits in the queue, none is dead, none was checkpointed.
            with queue_of(broker, "refused") as q:
                wait_until(lambda: q.stats()["ready"] == 4, timeout=30, interval=0.05)
                refused = front.refused
                shown = cli("status", path)
                assert shown.returncode == 0, shown.stderr
                assert f"HALTED     run {run_id} at partition" in shown.stdout and "401" in shown.stdout
                assert q.stats() == {"ready": 4, "leased": 0, "delayed": 0, "dead": 0}
            assert front.refused == refused  # the halted workers send nothing more
            assert pipeline.progress(run_id)["pages"] == 0
            assert pipeline.store.dead_letters("refused") == []
            assert all(w.poll() is None for w in workers)  # halted, waiting, not gone
            assert received(api)["unique"] == 0

            front.post_status = 0  # the key is fixed
            again = cli("submit", path)
            assert again.returncode == 0, again.stderr
            assert int(again.stdout.strip()) == run_id and "resumed after its halt" in again.stderr
            wait_until(lambda: pipeline.store.runs("refused")[-1]["status"] == "completed", timeout=120,
                       interval=0.05)
            with queue_of(broker, "refused") as q:
                wait_until(lambda: q.stats() == {"ready": 0, "leased": 0, "delayed": 0, "dead": 0}, timeout=60,
                           interval=0.1)
        finally:
            for w in workers:
                w.send_signal(signal.SIGTERM)
            for w in workers:
                w.wait(timeout=30)
            front.close()
        got = received(api)
        assert got["unique"] == 2000 and got["duplicate"] == 0
        row = pipeline.store.runs("refused")[-1]
        assert row["id"] == run_id and row["counts"]["read"] == row["counts"]["written"] == 2000
        assert row["counts"]["reconciled"]
        assert "halting pipeline refused" in "".join(log.read_text() for log in logs)


def test_a_wrong_source_path_halts_the_run_with_the_class_a_direct_call_raises(broker, redis, tmp_path):
    from isthmus.config import load_pipeline

    with isthmus.Sandbox(records=500, max_page_size=100) as api:
        doc = pipeline_doc(api.url, api.url, broker, redis, tmp_path / "s.db", name="wrongpath", slices=3, limit=100)
        doc["source"]["path"] = "/v1/contactz"
        pipeline = load_pipeline(write_yaml(tmp_path, doc))
        with pytest.raises(isthmus.ClientError) as caught:
            pipeline.run()
        assert isinstance(caught.value, isthmus.PipelineError) and caught.value.status_code == 404
        assert "/v1/contactz" in str(caught.value) and "stopped on the workers" in str(caught.value)
        # One request per partition at most: no page was tried again, nothing became a dead letter.
        assert api.stats()["requests"]["total"] <= 3
        assert pipeline.store.dead_letters("wrongpath") == []
        with queue_of(broker, "wrongpath") as q:
            assert q.stats()["ready"] == 3 and q.stats()["dead"] == 0


def test_a_source_that_cannot_be_reached_halts_the_run_on_the_last_delivery(broker, redis, tmp_path):
    from isthmus.config import load_pipeline

    closed = f"http://127.0.0.1:{free_port()}"
    with isthmus.Sandbox(records=10) as dest:
        doc = pipeline_doc(closed, dest.url, broker, redis, tmp_path / "s.db", name="unreachable", slices=2,
                           limit=100, max_deliveries=2, attempts=1)
        pipeline = load_pipeline(write_yaml(tmp_path, doc))
        with pytest.raises(isthmus.ConnectError) as caught:
            pipeline.run()
    assert isinstance(caught.value, isthmus.PipelineError) and "stopped on the workers" in str(caught.value)
    # Not one dead letter per partition: the run halted, its tasks wait for the API to come back.
    assert pipeline.store.dead_letters("unreachable") == []
    with queue_of(broker, "unreachable", max_deliveries=2) as q:
        assert q.stats()["dead"] == 0 and q.stats()["ready"] + q.stats()["delayed"] == 2


def test_records_all_failing_at_the_sink_halt_the_run_and_the_resumed_run_supersedes_them(broker, redis, tmp_path):
    """Every record rejected (422) and none written: after stop_after_failures the run halts with
    the embedded run's error instead of dead-lettering the whole source. Pages are checkpointed
    one by one on workers: the resumed run re-reads the page that tripped the check (its dead
    letters are superseded), and the pages before it are replayed from their dead letters."""
    from isthmus.config import load_pipeline

    with isthmus.Sandbox(records=1000, max_page_size=100, threads=2) as api:
        front = _Front(api.url, post_status=422)
        try:
            doc = pipeline_doc(api.url, front.url, broker, redis, tmp_path / "s.db", name="rejected", slices=2,
                               limit=100)
            doc["stop_after_failures"] = 150
            pipeline = load_pipeline(write_yaml(tmp_path, doc))
            run_id = pipeline.submit()
            with pytest.raises(isthmus.PipelineError, match="records all failed and none was written") as caught:
                isthmus.Worker(pipeline, concurrency=1).run(run_id=run_id)
            assert "422" in str(caught.value) and f"run {run_id} stopped on the workers" in str(caught.value)
            dead = pipeline.store.dead_letters("rejected")
            # Two pages of 100 reached the sink before the second one tripped the check.
            assert len(dead) == 200 and {d["stage"] for d in dead} == {"sink"}
            # The first page was checkpointed (its records are dead letters); the second was not.
            assert pipeline.progress(run_id)["pages"] == 1
            assert front.refused > 0 and received(api)["unique"] == 0

            front.post_status = 0
            run = pipeline.run()  # resumes the halted run, then works it here
            assert run.id == run_id and run.status == "completed"
            # The page that tripped the check was read again and delivered: superseded.
            assert len(pipeline.store.dead_letters("rejected")) == 100
            assert len(pipeline.store.dead_letters("rejected", include_superseded=True)) == 200
            assert received(api)["unique"] == 900
            replayed = pipeline.replay_dead_letters()
            assert replayed == {"replayed": 100, "delivered": 100, "failed": 0, "skipped": 100}
        finally:
            front.close()
        assert received(api)["unique"] == 1000 and received(api)["duplicate"] == 0
        assert pipeline.store.dead_letters("rejected") == []
        # The resume published each chain's task again: the two the halt left in the queue are
        # dropped as stale (during the run, or by this worker draining the queue).
        drained = isthmus.Worker(pipeline).run(until_idle=0.5)
        assert drained["pages"] == 0 and pipeline.progress(run_id)["stale_tasks"] == 2
        with queue_of(broker, "rejected") as q:
            assert q.stats() == {"ready": 0, "leased": 0, "delayed": 0, "dead": 0}


# --- long waits and idle workers ------------------------------------------------------------

def test_a_long_retry_after_parks_the_task_instead_of_holding_a_worker(broker, redis, tmp_path):
    with isthmus.Sandbox(records=300, max_page_size=100, rate_limit=0.01, burst=1) as api, \
            isthmus.Sandbox() as dest:
        # A server's pause longer than a second fails the call instead of holding it: the
        # worker then parks the task for as long as the 429 asks.
        client = isthmus.Client(api.url, rate_limit=isthmus.Limiter(max_wait=1, max_server_wait=1))
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 100},
                                retry=isthmus.Retry(attempts=1))
        pipeline = isthmus.Pipeline(stream, sink=isthmus.HttpSink(isthmus.Client(dest.url), "/v1/contacts/batch"),
                                    state=str(tmp_path / "s.db"), name="parked", queue=broker.url,
                                    coordination=redis.url)
        pipeline.submit()
        worker = isthmus.Worker(pipeline)
        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            # The second page gets a 429 asking for 100 s: the task waits in a delay queue.
            wait_until(lambda: worker.stats["parked"] == 1, timeout=30)
            with queue_of(broker, "parked") as q:
                wait_until(lambda: q.stats()["delayed"] == 1, timeout=10)
            assert worker.stats["pages"] == 1 and not worker._in_flight
        finally:
            worker.stop()
            thread.join()
        assert received(dest)["unique"] == 100


def test_an_idle_worker_backs_off_instead_of_spinning(broker, redis, tmp_path):
    p = isthmus.Pipeline(isthmus.Stream(isthmus.Client("http://127.0.0.1:9"), "/v1/contacts"),
                         sink=isthmus.JsonlSink(str(tmp_path / "o")), state=str(tmp_path / "s.db"), name="idle",
                         queue=broker.url, coordination=redis.url)
    stats = isthmus.Worker(p, idle_wait=0.5).run(until_idle=2.0)
    # Looks 10 ms apart, doubling up to 0.5 s: about a dozen in 2 s, where a spinning loop
    # would make thousands.
    assert stats["tasks"] == 0 and stats["empty_looks"] <= 20


# --- bad input ------------------------------------------------------------------------------

def _pipeline(queue, coordination, tmp_path):
    client = isthmus.Client("http://127.0.0.1:9")
    return isthmus.Pipeline(isthmus.Stream(client, "/v1/contacts"), sink=isthmus.JsonlSink(str(tmp_path / "o")),
                            state=str(tmp_path / "s.db"), queue=queue, coordination=coordination)


def test_a_wrong_broker_or_redis_url_is_a_typed_error_naming_it_without_the_password(redis, tmp_path):
    port = free_port()
    p = _pipeline(f"amqp://guest:hunter2@127.0.0.1:{port}/", redis.url, tmp_path)
    with pytest.raises(isthmus.ConnectError) as e:
        p.submit()
    assert f"127.0.0.1:{port}" in str(e.value) and "hunter2" not in str(e.value)
    p = _pipeline("amqp://guest:guest@127.0.0.1:9/", f"redis://:hunter2@127.0.0.1:{port}/0", tmp_path)
    with pytest.raises(isthmus.ConnectError) as e:
        p.submit()
    assert f"127.0.0.1:{port}" in str(e.value) and "hunter2" not in str(e.value)
    with pytest.raises(isthmus.ConfigError, match="queue"):
        _pipeline("http://broker/", redis.url, tmp_path)
    with pytest.raises(isthmus.ConfigError, match="coordination: required"):
        _pipeline("amqp://guest:guest@127.0.0.1/", None, tmp_path)


def test_wrong_broker_credentials_are_access_refused(broker, redis, tmp_path):
    url = broker.url.replace("guest:guest", "guest:hunter2")
    with pytest.raises(isthmus.AccessRefused) as e:
        _pipeline(url, redis.url, tmp_path).submit()
    assert "hunter2" not in str(e.value) and "***" in str(e.value)
