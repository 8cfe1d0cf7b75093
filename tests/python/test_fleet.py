"""Connections and the fleet, against a real multi-tenant sandbox and a real state file."""

from __future__ import annotations

import datetime as dt
import json
import logging
import signal
import subprocess
import sys
import threading
import time

import pytest

import isthmus
from isthmus import errors
from isthmus.fleet import Schedule, fleet_limiter
from isthmus.roi import RunEconomics

DEFINITION = """\
name: contacts
checkpoint_every: 100
source:
  base_url: "${config.base_url}"
  auth: {type: api_key, value: "${credentials.api_key}", header: X-API-Key}
  path: /v1/contacts
  params: {limit: 100}
  paginator: {type: cursor, cursor: meta.next_cursor, param: cursor}
  retry: {attempts: 2, base: 0.05}
sink:
  type: http
  base_url: "${config.base_url}"
  auth: {type: api_key, value: "${credentials.api_key}", header: X-API-Key}
  path: /v1/contacts/batch
  batch_size: 100
"""


@pytest.fixture
def key(monkeypatch):
    value = isthmus.TokenStore.generate_key()
    monkeypatch.setenv("ISTHMUS_TOKEN_KEY", value)
    return value


@pytest.fixture
def definition(tmp_path):
    path = tmp_path / "contacts.yaml"
    path.write_text(DEFINITION)
    return str(path)


def received(api, i):
    return api.stats()["tenants"][i]["records_received"].get("contacts", {"unique": 0, "duplicate": 0,
                                                                          "idempotent_replays": 0})


def connect(fleet, api, definition, sizes, **options):
    crm = isthmus.Integration(definition, version="1")
    for i in range(len(sizes)):
        fleet.add(isthmus.Connection(f"c{i}", crm, credentials={"api_key": api.tenants[i].api_key},
                                     config={"base_url": api.url}, tags={"end_user_id": f"u{i}"}, **options))


def wait_until(check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


def test_a_small_fleet_completes_with_counts_matching_the_sandbox_per_tenant(tmp_path, key, definition):
    sizes = [2500, 300, 250, 200, 150, 100]
    with isthmus.Sandbox(tenants=len(sizes), auth="api_key", tenant_records=sizes, max_page_size=100) as api:
        fleet = isthmus.Fleet(str(tmp_path / "fleet.db"), app_limit=isthmus.RateLimit(400))
        connect(fleet, api, definition, sizes, schedule="every 1h")
        result = fleet.run()
        assert result.failed == []
        status = fleet.status().set_index("connection_id")
        tenants = api.stats()["tenants"]
        for i, n in enumerate(sizes):
            row = status.loc[f"c{i}"]
            assert row["status"] == "active" and row["runs"] == 1
            assert received(api, i) == {"unique": n, "duplicate": 0, "idempotent_replays": 0}
            assert row["read"] == row["written"] == n
            # Every request a connection sent, pages and batches, as the sandbox counted them.
            assert row["requests"] == tenants[i]["requests"]["total"]
            assert row["status_429"] == tenants[i]["rate_limited"] == 0
        totals = fleet.totals()
        for k in ("requests", "written", "read", "status_429", "retries", "bytes_in", "bytes_out"):
            assert status[k].sum() == totals[k]
        assert totals["requests"] == api.stats()["requests"]["total"]
        # Each connection is its own pipeline in the one state file, and its own tenant key.
        assert sorted(fleet.store.pipelines()) == [f"contacts/c{i}" for i in range(len(sizes))]
        assert set(fleet.limits_snapshot()) == {f"c{i}" for i in range(len(sizes))}
        runs = fleet.runs()
        assert list(runs["status"]) == ["completed"] * len(sizes)
        economics = RunEconomics.from_fleet(fleet, cost_per_request=0.001)
        assert economics["c0"].requests == status.loc["c0", "requests"]
        assert economics["c0"].cost == pytest.approx(status.loc["c0", "requests"] * 0.001)
        # Scheduled every hour: nothing is due again yet.
        assert fleet.run().outcomes == {}
        assert fleet.due() == []


def test_a_revoked_tenant_needs_relinking_while_the_others_complete(tmp_path, key, definition, capsys):
    from isthmus.cli import main

    sizes = [200, 3000, 200, 200]
    with isthmus.Sandbox(tenants=len(sizes), auth="api_key", tenant_records=sizes, max_page_size=100) as api:
        # A slow app allowance, so that the big connection is still reading when it is revoked.
        fleet = isthmus.Fleet(str(tmp_path / "fleet.db"), app_limit=isthmus.RateLimit(40, burst=1))
        connect(fleet, api, definition, sizes)
        done = []
        runner = threading.Thread(target=lambda: done.append(fleet.run()))
        runner.start()
        wait_until(lambda: api.stats()["tenants"][1]["records_served"].get("contacts", 0) >= 100)
        api.tenants[1].revoke_access()
        runner.join(60)
        outcomes = done[0].outcomes
        assert outcomes["c1"]["connection_status"] == "relink_needed"
        c1 = fleet.get("c1")
        assert c1.status == "relink_needed" and "401" in c1.reason
        for i in (0, 2, 3):
            assert outcomes[f"c{i}"]["status"] == "completed"
            assert received(api, i)["unique"] == sizes[i]
        assert received(api, 1)["unique"] < sizes[1]
        # Not run again, not even when asked to run everything, until relinked.
        assert "c1" not in fleet.run(due_only=False).outcomes
        with pytest.raises(errors.ConfigError, match="relink"):
            fleet.resume("c1")
        # `isthmus fleet list` shows it with its reason beside the connections that have none.
        capsys.readouterr()
        assert main(["fleet", "list", "--state", fleet.path]) == 0
        listed = capsys.readouterr().out
        assert "relink_needed" in listed and "PipelineAuthError" in listed and "4 connection(s)" in listed
        assert main(["fleet", "list", "--state", fleet.path, "--json"]) == 0
        rows = {r["connection_id"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
        assert rows["c0"]["reason"] is None and "401" in rows["c1"]["reason"]
        api.tenants[1].restore_access()
        fleet.relink("c1", credentials={"api_key": api.tenants[1].api_key})
        assert fleet.run(["c1"]).outcomes["c1"]["status"] == "completed"
        got = received(api, 1)
        assert got["unique"] == sizes[1] and got["duplicate"] == 0


OAUTH2 = """\
name: contacts
source:
  base_url: "${config.base_url}"
  auth: {type: oauth2_client_credentials, token_url: "${config.base_url}/oauth/token",
         client_id: "${credentials.client_id}", client_secret: "${credentials.client_secret}"}
  path: /v1/contacts
  params: {limit: 100}
  paginator: {type: cursor, cursor: meta.next_cursor, param: cursor}
sink: {type: jsonl, path: "${config.out}"}
"""


def test_a_token_endpoint_refusing_the_grant_needs_relinking(tmp_path, key, caplog):
    caplog.set_level(logging.DEBUG, logger="isthmus")
    (tmp_path / "crm.yaml").write_text(OAUTH2)
    with isthmus.Sandbox(tenants=2, auth="oauth2", tenant_records=[150, 150], max_page_size=100) as api:
        fleet = isthmus.Fleet(str(tmp_path / "fleet.db"))
        crm = isthmus.Integration(str(tmp_path / "crm.yaml"))
        for t in api.tenants:
            fleet.add(isthmus.Connection(f"c{t.index}", crm, config={"base_url": api.url,
                                                                     "out": str(tmp_path / f"{t.index}.jsonl")},
                                         credentials={"client_id": t.client_id, "client_secret": t.client_secret}))
        api.tenants[1].revoke_access()
        outcomes = fleet.run().outcomes
        assert outcomes["c0"]["status"] == "completed"
        assert len((tmp_path / "0.jsonl").read_text().splitlines()) == 150
        c1 = fleet.get("c1")
        assert c1.status == "relink_needed" and "invalid_grant" in c1.reason
        shown = caplog.text + c1.reason + fleet.status().to_string()
        assert all(t.client_secret not in shown for t in api.tenants)


def test_a_connection_whose_api_fails_backs_off_and_the_others_complete(tmp_path, key, definition, closed_port):
    with isthmus.Sandbox(tenants=2, auth="api_key", tenant_records=[300, 300], max_page_size=100) as api:
        fleet = isthmus.Fleet(str(tmp_path / "fleet.db"), failure_backoff=600)
        crm = isthmus.Integration(definition)
        fleet.add(isthmus.Connection("up", crm, credentials={"api_key": api.tenants[0].api_key},
                                     config={"base_url": api.url}))
        fleet.add(isthmus.Connection("down", crm, credentials={"api_key": api.tenants[1].api_key},
                                     config={"base_url": f"http://127.0.0.1:{closed_port}"}))
        before = time.time()
        outcomes = fleet.run().outcomes
        assert outcomes["up"]["status"] == "completed" and received(api, 0)["unique"] == 300
        down = fleet.get("down")
        assert down.status == "failing" and "ConnectError" in down.reason and down.failures == 1
        assert down.next_due >= before + 600
        assert "down" not in fleet.run().outcomes
        fleet.resume("down")
        assert fleet.get("down").status == "active"


def test_a_fleet_runner_killed_mid_run_resumes_every_connection(tmp_path, key, definition):
    sizes = [2000, 1000, 600, 500, 300, 200]
    state = str(tmp_path / "fleet.db")
    with isthmus.Sandbox(tenants=len(sizes), auth="api_key", tenant_records=sizes, max_page_size=100) as api:
        fleet = isthmus.Fleet(state)
        connect(fleet, api, definition, sizes, schedule="every 1h")  # one completed is not due again
        fleet.close()
        command = [sys.executable, "-m", "isthmus.cli", "fleet", "run", "--state", state, "--app-limit", "40"]

        def total():
            return sum(received(api, i)["unique"] for i in range(len(sizes)))
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_until(lambda: total() >= 1500 or child.poll() is not None)
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL
        assert total() < sum(sizes)  # killed mid-run
        again = subprocess.run(command, capture_output=True, timeout=120)
        assert again.returncode == 0, again.stderr.decode()
        for i, n in enumerate(sizes):
            got = received(api, i)
            assert got["unique"] == n and got["duplicate"] == 0, (i, got)
        # Each connection completed once, the ones killed resuming from their checkpoints.
        runs = isthmus.Fleet(state).runs()
        completed = runs[runs["status"] == "completed"]
        assert sorted(completed["connection_id"]) == [f"c{i}" for i in range(len(sizes))]
        read = completed.set_index("connection_id")["read"]
        assert all(read[f"c{i}"] <= n for i, n in enumerate(sizes)) and read.sum() < sum(sizes)


def test_credentials_never_appear_in_state_rows_reprs_errors_or_logs(tmp_path, key, definition, caplog):
    caplog.set_level(logging.DEBUG, logger="isthmus")
    state = tmp_path / "fleet.db"
    with isthmus.Sandbox(tenants=3, auth="api_key", tenant_records=[300, 300, 300], max_page_size=100) as api:
        keys = [t.api_key for t in api.tenants]
        fleet = isthmus.Fleet(str(state))
        connect(fleet, api, definition, [300, 300, 300])
        api.tenants[2].revoke_access()
        fleet.run()
        assert fleet.get("c2").status == "relink_needed"
        shown = [repr(fleet), *map(repr, fleet.connections()), fleet.status().to_string(), fleet.runs().to_string(),
                 caplog.text, fleet.get("c2").reason]
        for k in keys:
            assert all(k not in text for text in shown)
        assert fleet.get("c0").credentials == {"api_key": keys[0]}  # kept, sealed, and read back
        fleet.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("fleet.db"))
    for k in keys:
        assert k.encode() not in raw


def test_bad_input_names_the_connection_and_the_field(tmp_path, key, definition):
    fleet = isthmus.Fleet(str(tmp_path / "fleet.db"))
    crm = isthmus.Integration(definition)
    good = dict(credentials={"api_key": "k-123"}, config={"base_url": "http://127.0.0.1:9"})
    fleet.add(isthmus.Connection("acme", crm, **good))
    with pytest.raises(errors.ConfigError, match=r"connection 'acme': connection_id: already in the fleet"):
        fleet.add(isthmus.Connection("acme", crm, **good))
    with pytest.raises(errors.ConfigError, match=r"connection 'beta': config\.subdomain: .*does not declare it"):
        fleet.add(isthmus.Connection("beta", crm, credentials=good["credentials"],
                                     config={**good["config"], "subdomain": "beta"}))
    with pytest.raises(errors.ConfigError, match=r"connection 'beta': config\.base_url: missing"):
        fleet.add(isthmus.Connection("beta", crm, credentials=good["credentials"]))
    with pytest.raises(errors.ConfigError, match=r"connection 'beta': schedule: 'every fortnight' is not valid"):
        isthmus.Connection("beta", crm, schedule="every fortnight", **good)
    with pytest.raises(errors.ConfigError, match=r"connection 'beta': weight: 0 is not valid; expected a number > 0"):
        isthmus.Connection("beta", crm, weight=0, **good)
    with pytest.raises(errors.ConfigError, match=r"connection 'x/y': connection_id"):
        isthmus.Connection("x/y", crm, **good)
    with pytest.raises(errors.ConfigError, match=r"connection 'beta': credentials\.api_key: a int is not valid"):
        isthmus.Connection("beta", crm, credentials={"api_key": 123})
    assert [c.connection_id for c in fleet.connections()] == ["acme"]


def test_schedules():
    t = dt.datetime(2026, 3, 1, 13, 20, tzinfo=dt.timezone.utc).timestamp()
    assert Schedule("every 15m").next_after(t) == t + 900
    assert Schedule("every 2 hours").next_after(t) == t + 7200
    at = Schedule("hourly").next_after(t)
    assert dt.datetime.fromtimestamp(at, dt.timezone.utc) == dt.datetime(2026, 3, 1, 14, 0, tzinfo=dt.timezone.utc)
    at = Schedule("daily at 02:00").next_after(t)
    assert dt.datetime.fromtimestamp(at, dt.timezone.utc) == dt.datetime(2026, 3, 2, 2, 0, tzinfo=dt.timezone.utc)
    at = Schedule("daily at 14:00").next_after(t)
    assert dt.datetime.fromtimestamp(at, dt.timezone.utc) == dt.datetime(2026, 3, 1, 14, 0, tzinfo=dt.timezone.utc)
    for bad in ("every 0m", "daily at 25:00", "weekly", "every 5 parsecs"):
        with pytest.raises(errors.ConfigError, match="schedule"):
            Schedule(bad, connection="x")


priorities = []


def contacts(connection):
    """An integration as a function: it builds with the connection's client and pipeline."""
    client = connection.client(connection.config["base_url"],
                               auth=isthmus.ApiKey(connection.credentials["api_key"], header="X-API-Key"))
    priorities.append(client.headers.get("Isthmus-Priority"))
    stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator("meta.next_cursor",
                                                                                      param="cursor"),
                            params={"limit": 100})
    return connection.pipeline(stream, sink=isthmus.HttpSink(client, "/v1/contacts/batch"))


def test_an_integration_function_shares_the_fleet_allowance_and_a_first_sync_goes_first(tmp_path, key):
    crm = isthmus.Integration(contacts, version="2", config=["base_url"], credentials=["api_key"])
    with isthmus.Sandbox(tenants=1, auth="api_key", tenant_records=[250], max_page_size=100) as api:
        fleet = isthmus.Fleet(str(tmp_path / "fleet.db"), app_limit=isthmus.RateLimit(200))
        fleet.add(isthmus.Connection("acme", crm, credentials={"api_key": api.tenants[0].api_key},
                                     config={"base_url": api.url}))
        priorities.clear()
        assert fleet.run().outcomes["acme"]["status"] == "completed"
        assert fleet.run(due_only=False).outcomes["acme"]["status"] == "completed"
        assert priorities == ["high", "normal"]
        assert received(api, 0)["unique"] == 250
        assert fleet.status().loc[0, "version"] == "2"
        assert fleet.replay("acme") == {"replayed": 0, "delivered": 0, "failed": 0, "skipped": 0}
        assert fleet.dead_letters("acme").empty
        with pytest.raises(errors.ConfigError, match="only for the integration function"):
            fleet.get("acme").client(api.url)


def test_pause_resume_remove(tmp_path, key, definition):
    fleet = isthmus.Fleet(str(tmp_path / "fleet.db"))
    fleet.add(isthmus.Connection("acme", isthmus.Integration(definition), credentials={"api_key": "k-1"},
                                 config={"base_url": "http://127.0.0.1:9"}))
    fleet.pause("acme", reason="customer asked")
    assert fleet.get("acme").status == "paused" and fleet.run().outcomes == {}
    fleet.resume("acme")
    assert fleet.get("acme").status == "active" and [c.connection_id for c in fleet.due()] == ["acme"]
    fleet.remove("acme")
    assert fleet.connections() == [] and "connection:acme" not in fleet.tokens
    with pytest.raises(errors.ConfigError, match="not in the fleet"):
        fleet.get("acme")


def test_weights_and_limits_go_to_the_limiter_as_shares(definition):
    crm = isthmus.Integration(definition)
    conns = [isthmus.Connection("a", crm, weight=2), isthmus.Connection("b", crm, limit=isthmus.RateLimit(10))]
    limiter = fleet_limiter(isthmus.RateLimit(100), conns)
    assert limiter.limits.rules[0].scope == ["provider"]  # counted across every tenant
    shares = limiter.shares()
    assert shares["a"]["weight"] == 2 and shares["a"]["configured"] and shares["b"]["configured"]
    again = fleet_limiter(None, conns[:1], limiter, previous=["a", "b"])
    assert again is limiter and not limiter.shares().get("b", {}).get("configured")


def test_cli_add_list_pause_resume_remove(tmp_path, key, definition, monkeypatch, capsys):
    from isthmus.cli import main

    state = str(tmp_path / "fleet.db")
    monkeypatch.setenv("ACME_KEY", "secret-acme-key")
    assert main(["fleet", "add", "acme", "--state", state, "--integration", definition,
                 "--config", "base_url=http://127.0.0.1:9", "--credential", "api_key=ACME_KEY",
                 "--tag", "organization_id=o1", "--schedule", "every 15m"]) == 0
    assert main(["fleet", "pause", "acme", "--state", state, "--reason", "trial ended"]) == 0
    assert main(["fleet", "list", "--state", state]) == 0
    out = capsys.readouterr().out
    assert "acme" in out and "paused" in out and "trial ended" in out and "secret-acme-key" not in out
    assert main(["fleet", "add", "acme", "--state", state, "--integration", definition,
                 "--config", "base_url=x", "--credential", "api_key=ACME_KEY"]) == 2
    assert "connection 'acme': connection_id: already in the fleet" in capsys.readouterr().err
    assert main(["fleet", "resume", "acme", "--state", state]) == 0
    assert main(["fleet", "remove", "acme", "--state", state]) == 0
    assert isthmus.Fleet(state).connections() == []


def test_serve_runs_schedules_until_sigterm(tmp_path, key, definition):
    state = str(tmp_path / "fleet.db")
    sizes = [200, 20_000]
    with isthmus.Sandbox(tenants=2, auth="api_key", tenant_records=sizes, max_page_size=100) as api:
        fleet = isthmus.Fleet(state)
        connect(fleet, api, definition, sizes, schedule="every 1h")
        fleet.close()
        child = subprocess.Popen([sys.executable, "-m", "isthmus.cli", "fleet", "serve", "--state", state,
                                  "--app-limit", "30", "--poll", "0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_until(lambda: received(api, 1)["unique"] >= 300)
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err.decode()
        assert b"stopped" in err
        runs = isthmus.Fleet(state).runs().set_index("connection_id")
        # Stopped mid-sync: what the sink took is checkpointed, and the next run resumes there.
        assert runs.loc["c1", "status"] == "interrupted"
        for i in (0, 1):
            assert runs.loc[f"c{i}", "written"] == received(api, i)["unique"]
        assert received(api, 1)["unique"] < sizes[1]
