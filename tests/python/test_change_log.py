"""The change log against real SQLite files, a real LocalQueue and the sandbox."""

import json
import random

import pytest

import isthmus
from isthmus import errors


def envelope(event_id, type_, data, route="/hooks/crm"):
    return json.dumps({"route": route, "event_id": event_id, "received_at": 0.0, "timestamp": None,
                       "event": {"type": type_, "data": data}})


def test_any_order_of_arrival_ends_in_the_newest_state(tmp_path):
    rng = random.Random(7)
    changes = []
    for n in range(40):
        rid = f"r{n}"
        for v in range(1, rng.randint(2, 6)):
            changes.append({"id": rid, "version": v, "updated_at": 1700000000 + v, "name": f"{rid}-v{v}"})
        if n % 5 == 0:
            changes.append({"id": rid, "version": v + 1, "updated_at": 1700000000 + v + 1, "deleted": True})
    newest = {}
    for c in changes:
        if c["id"] not in newest or c["version"] > newest[c["id"]]["version"]:
            newest[c["id"]] = c
    for trial in range(5):
        rng.shuffle(changes)
        with isthmus.ChangeLog(tmp_path / f"log{trial}.db") as log:
            for i in range(0, len(changes), 7):
                log.apply(changes[i:i + 7], resource="contacts")
            state = log.state("contacts")
            assert {k: v["version"] for k, v in state.items()} == {k: c["version"] for k, c in newest.items()}
            assert {k for k, v in state.items() if v["deleted"]} == {k for k, c in newest.items() if c.get("deleted")}
            for rid, c in newest.items():
                got = log.get("contacts", rid)
                assert got.data == c


def test_an_older_version_never_overwrites_a_newer_one_and_equal_states_are_unchanged(tmp_path):
    with isthmus.ChangeLog(tmp_path / "log.db") as log:
        assert log.apply([{"id": "a", "version": 3, "n": 3}], resource="contacts")["applied"] == 1
        got = log.apply([{"id": "a", "version": 2, "n": 2}, {"n": 3, "version": 3, "id": "a"}], resource="contacts")
        assert got == {"applied": 0, "stale": 1, "unchanged": 1, "duplicates": 0}
        assert log.get("contacts", "a").data == {"id": "a", "version": 3, "n": 3}
        # Without a version, updated_at orders; a deletion wins a tie with a live record.
        log.apply([{"id": "b", "version": None, "updated_at": "2024-05-01T00:00:00Z"}], resource="contacts")
        log.apply([{"id": "b", "updated_at": "2024-04-01T00:00:00+00:00", "x": 1}], resource="contacts")
        assert log.get("contacts", "b").updated_at == "2024-05-01T00:00:00.000Z"
        log.apply([{"id": "b", "updated_at": "2024-05-01T00:00:00Z", "deleted": True}], resource="contacts")
        assert log.get("contacts", "b").deleted
        assert log.stats() == {"entries": 2, "live": 1, "deleted": 1, "last_seq": 3, "events": 0, "rejected": 0}


def test_webhooks_from_the_queue_are_applied_once_and_unreadable_ones_kept_aside(tmp_path):
    q = isthmus.LocalQueue(tmp_path / "events.db")
    q.put([envelope("e1", "contacts.updated", {"id": "c1", "version": 2, "name": "A"}),
           envelope("e1", "contacts.updated", {"id": "c1", "version": 2, "name": "A"}),   # a duplicate delivery
           envelope("e2", "contacts.updated", {"id": "c1", "version": 1, "name": "old"}),  # reordered: older
           envelope("e3", "contacts.deleted", {"id": "c2", "version": 5}),
           envelope("e4", "no-dot", {"id": "c3"}),
           "not json"])
    with isthmus.ChangeLog(tmp_path / "log.db", connection="acme") as log:
        got = log.consume(q, connections={"/hooks/crm": "acme"})
        assert (got["messages"], got["applied"], got["duplicates"], got["stale"], got["rejected"]) == (6, 2, 1, 1, 2)
        assert log.state("contacts") == {"c1": {"version": 2, "updated_at": None, "deleted": False},
                                         "c2": {"version": 5, "updated_at": None, "deleted": True}}
        reasons = [r["reason"] for r in log.rejected()]
        assert "not <resource>.<action>" in reasons[0] and "not a JSON object" in reasons[1]
        assert q.stats() == {"ready": 0, "leased": 0, "delayed": 0, "dead": 0}
        # The same events again (a receiver restarted before its ack): nothing changes.
        q.put([envelope("e1", "contacts.updated", {"id": "c1", "version": 2, "name": "A"}),
               envelope("e4", "no-dot", {"id": "c3"})])
        again = log.consume(q)
        assert (again["applied"], again["duplicates"], again["rejected"]) == (0, 2, 0)
        assert log.stats()["rejected"] == 2


def test_thin_events_are_fetched_through_the_client_once_per_record(tmp_path):
    with isthmus.Sandbox(records=50, auth="api_key") as api:
        q = isthmus.LocalQueue(tmp_path / "events.db")
        ids = [f"con_{i:010d}" for i in range(1, 21)] * 3 + ["con_0000009999"]
        q.put([envelope(f"e{n}", "contacts.updated", {"id": rid}) for n, rid in enumerate(ids)])
        client = isthmus.Client(api.url, auth=isthmus.ApiKey(api.api_key))
        with isthmus.ChangeLog(tmp_path / "log.db") as log:
            got = log.consume(q, client=client, batch=100)
            assert (got["thin"], got["fetched"], got["coalesced"], got["tombstones"]) == (61, 20, 40, 1)
            assert api.stats()["requests"]["by_endpoint"]["GET /v1/contacts/{id}"] == {"200": 20, "404": 1}
            first = log.get("contacts", "con_0000000001")
            assert first.origin == "fetch" and first.data["email"]
            assert log.get("contacts", "con_0000009999").deleted
            assert log.stats()["events"] == 61


def test_a_thin_fetch_refused_for_every_record_stops_and_keeps_the_events(tmp_path):
    with isthmus.Sandbox(records=10, auth="api_key") as api:
        q = isthmus.LocalQueue(tmp_path / "events.db")
        q.put([envelope(f"e{n}", "contacts.updated", {"id": f"con_{n:010d}"}) for n in range(1, 6)])
        client = isthmus.Client(api.url, auth=isthmus.ApiKey("wrong-key"))
        with isthmus.ChangeLog(tmp_path / "log.db") as log:
            with pytest.raises(errors.PipelineError, match="thin webhooks") as info:
                log.consume(q, client=client, retry_delay=0)
            assert errors.refuses_credentials(info.value)
            assert "wrong-key" not in str(info.value)
            assert q.stats()["ready"] + q.stats()["delayed"] == 5
            assert log.stats()["entries"] == 0
            good = isthmus.Client(api.url, auth=isthmus.ApiKey(api.api_key))
            assert log.consume(q, client=good)["fetched"] == 5


def test_a_reconciliation_poll_reads_from_where_the_last_one_ended(tmp_path):
    with isthmus.Sandbox(records=120, pagination="cursor") as api:
        client = isthmus.Client(api.url)

        def stream():
            return isthmus.Stream(client, "/v1/contacts", params={"limit": 50},
                                  paginator=isthmus.CursorPaginator("meta.next_cursor", param="cursor"),
                                  incremental=isthmus.Incremental("updated_at", "updated_since"))

        with isthmus.ChangeLog(tmp_path / "log.db") as log:
            first = log.reconcile(stream(), resource="contacts")
            assert (first["records"], first["applied"]) == (120, 120)
            second = log.reconcile(stream(), resource="contacts")
            assert second["applied"] == 0 and second["records"] < 120
            assert len(log.state("contacts")) == 120


def test_the_log_as_a_source_gives_each_change_once_in_its_latest_state(tmp_path):
    seen = []
    with isthmus.ChangeLog(tmp_path / "log.db") as log:
        log.apply([{"id": f"r{i}", "version": 1} for i in range(30)], resource="contacts")
        log.apply([{"id": "r3", "version": 2}, {"id": "r3", "version": 3}, {"id": "r4", "version": 2}],
                  resource="contacts")

        def pipeline():
            return isthmus.Pipeline(log.source(resource="contacts"), sink=isthmus.CallableSink(seen.extend),
                                    state=str(tmp_path / "state.db"), name="changes")

        run = pipeline().run()
        assert run.status == "completed"
        assert len(seen) == 30 and {r["id"]: r["version"] for r in seen}["r3"] == 3
        seen.clear()
        log.apply([{"id": "r7", "version": 2}, {"id": "r7", "version": 1}], resource="contacts")
        pipeline().run()
        assert seen == [{"id": "r7", "version": 2}]


@pytest.mark.parametrize("kwargs, match", [
    ({"fields": {"idd": "x"}}, "fields: 'idd' is not valid"),
    ({"fields": {"id": ""}}, r"fields\['id'\]"),
    ({"connection": ""}, "connection: '' is not valid"),
])
def test_bad_construction_names_the_field(tmp_path, kwargs, match):
    with pytest.raises(errors.ConfigError, match=match):
        isthmus.ChangeLog(tmp_path / "log.db", **kwargs)


def test_bad_records_and_options_name_what_was_wrong(tmp_path):
    with isthmus.ChangeLog(tmp_path / "log.db") as log:
        with pytest.raises(ValueError, match=r"records\[1\]: record has no id"):
            log.apply([{"id": "a"}, {"name": "no id"}], resource="contacts")
        with pytest.raises(ValueError, match=r'version \("version"\): "v2" is not valid; expected an integer'):
            log.apply([{"id": "a", "version": "v2"}], resource="contacts")
        assert log.stats()["entries"] == 0  # nothing of a refused batch is kept
        q = isthmus.LocalQueue(tmp_path / "q.db")
        with pytest.raises(errors.ConfigError, match="thin: 'sometimes'"):
            log.consume(q, thin="sometimes")
        with pytest.raises(errors.ConfigError, match="fetch: '/v1/contacts' is not valid"):
            log.consume(q, fetch="/v1/contacts")
    with pytest.raises(errors.StateError, match="closed"):
        log.stats()
