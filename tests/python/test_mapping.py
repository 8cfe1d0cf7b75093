"""isthmus.FieldMap: declared fields mapped in the core, end to end through a pipeline."""

from __future__ import annotations

import json

import pytest

import isthmus
from isthmus.config import pipeline_from_dict

FIELDS = {
    "id": "id",
    "email": {"from": "email", "required": True},
    "name": "first_name",
    "city": "address.city",
    "street.number": ("address.number", "str"),
    "first_tag": "tags.0",
    "changed": {"from": "updated_at", "cast": "datetime"},
    "version": ("version", "int"),
    "source": {"value": "crm"},
    "fax": {"from": "fax", "default": "none on file"},
}


def by_hand(r):
    """The same mapping, written as a Python function."""
    return {"id": r["id"], "email": r["email"], "name": r["first_name"], "city": r["address"]["city"],
            "street": {"number": str(r["address"]["number"])}, "first_tag": (r["tags"] or [None])[0],
            "changed": r["updated_at"], "version": r["version"], "source": "crm", "fax": "none on file"}


def test_a_field_map_gives_what_the_same_python_function_gives(tmp_path):
    with isthmus.Sandbox(records=700) as src, isthmus.Client(src.url) as client:
        got = {}
        for name, fn in (("core", isthmus.FieldMap(FIELDS)), ("python", by_hand)):
            out = []
            stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 100})
            run = isthmus.Pipeline(stream, map=fn, sink=isthmus.CallableSink(out.extend),
                                   state=str(tmp_path / f"{name}.db")).run()
            assert run.counts["written"] == 700
            got[name] = out
    assert got["core"] == got["python"]
    assert got["core"][0]["changed"].endswith("Z") and got["core"][0]["street"]["number"].isdigit()


def test_records_that_fail_a_field_are_dead_letters_naming_field_and_value(tmp_path):
    with isthmus.Sandbox(records=300) as src, isthmus.Client(src.url) as client:
        # Every contact has a string id like "con_0000000001": as an int it fails, on every record.
        strict = isthmus.FieldMap({"id": "id", "n": ("id", "int"), "missing": {"from": "nope", "required": True}})
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 100})
        pipeline = isthmus.Pipeline(stream, map=strict, sink=isthmus.CallableSink(list), state=str(tmp_path / "s.db"))
        run = pipeline.run()
    assert run.counts["read"] == 300 and run.counts["dead_lettered"] == 300 and run.counts["written"] == 0
    dead = pipeline.dead_letters()
    assert set(dead["stage"]) == {"map"}
    first = dead.sort_values("record_key").iloc[0]
    assert first["record_key"] == "con_0000000001"
    assert first["error"] == "field 'n' (from 'id'): 'con_0000000001' is not an integer"
    assert first["record"]["id"] == "con_0000000001"  # the source record, for replay


def test_apply_maps_a_batch_and_reports_only_the_records_that_fail():
    fm = isthmus.FieldMap({"id": "id", "score": ("score", "float")})
    mapped, failed = fm.apply([{"id": "a", "score": "1.5"}, {"id": "b", "score": "high"}, {"id": "c"}])
    assert mapped == [{"id": "a", "score": 1.5}, {"id": "c", "score": None}]
    assert failed == [(1, "field 'score' (from 'score'): 'high' is not a number")]
    assert fm({"id": "x", "score": 2}) == {"id": "x", "score": 2.0}
    with pytest.raises(ValueError, match="'high' is not a number"):
        fm({"id": "x", "score": "high"})


@pytest.mark.parametrize("fields, says", [
    ({}, "non-empty dict"),
    ({"a": ("x", "integer")}, "cast 'integer' is not valid"),
    ({"a": {"from": "x", "value": 1}}, "either 'from'"),
    ({"a": {"form": "x"}}, "unknown key(s) form"),
    ({"a": "x", "a.b": "y"}, "clashes with field 'a'"),
    ({"a..b": "x"}, "expected a dotted path"),
    ({"a": {"from": "x", "required": "yes"}}, "required 'yes' is not valid"),
    ({"a": {"value": {1, 2}}}, "must be JSON data"),
])
def test_a_bad_field_map_names_the_field_and_the_reason(fields, says):
    with pytest.raises(isthmus.ConfigError, match="FieldMap") as info:
        isthmus.FieldMap(fields)
    assert says in str(info.value)


def test_yaml_pipelines_declare_fields(tmp_path):
    with isthmus.Sandbox(records=150) as src:
        doc = {"source": {"base_url": src.url, "path": "/v1/contacts", "records": "data",
                          "params": {"limit": 100}, "paginator": {"type": "cursor"}},
               "map": {"fields": {"id": "id", "mail": "email", "v": ["version", "str"]}},
               "sink": {"type": "jsonl", "path": "out.jsonl"}, "state": "s.db"}
        run = pipeline_from_dict(doc, base=tmp_path).run()
    assert run.counts["written"] == 150
    first = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    assert set(first) == {"id", "mail", "v"} and first["v"] == "1"


# Values that differ most easily between two JSON writers: float forms, escapes, non-ASCII,
# integers wider than 64 bits' signed range, nested targets, casts of every kind.
TRICKY = [
    {"id": 1, "email": "a@x", "first_name": "Zoë \"Z\"\t\u0001", "address": {"city": "Tromsø", "number": 7},
     "tags": ["a", "b"], "updated_at": "2024-01-10T03:00:00+01:00", "version": "42", "fax": None},
    {"id": "x2", "email": "b@x", "first_name": None, "address": {"city": None, "number": 1e16},
     "tags": [], "updated_at": 0, "version": 3.0, "fax": 1e-5},
    {"id": 18446744073709551615, "email": "c@x", "first_name": "😀", "address": {"number": -0.0},
     "tags": [{"k": [1.5, True, None]}], "updated_at": 1.5, "version": 7, "fax": 1000000000000000.0},
    {"id": 4, "email": None, "first_name": "no email"},               # required and null
    {"id": 5, "email": "e@x", "version": "4x"},                        # does not cast
    {"id": 6, "email": "f@x", "version": {"a": 1}},                    # a dict does not cast
    7,                                                                  # not an object
    {"email": "g@x", "version": 1},                                     # no key: derived from the record
]


def test_a_field_map_over_a_page_writes_what_the_python_path_writes():
    fm = isthmus.FieldMap(FIELDS)
    body = json.dumps({"data": TRICKY}).encode()
    status, records, _ = isthmus._core.parse_page(body, "data", [])
    assert status == "ok"
    mapped, failed = fm.apply(records)
    want_text, _ = isthmus._core.json_lines(mapped)
    ok_keys = [k for i, k in enumerate(isthmus._core.record_keys(records, ["id"])) if i not in {i for i, _ in failed}]

    status, batch, fields = isthmus._core.map_page(body, "data", ["meta.x"], "id", fm._core)
    assert status == "ok" and fields == [None]
    assert batch.lines() == want_text
    assert len(batch) == len(mapped) and batch.read == len(TRICKY)
    assert [(i, why) for i, why, _, _ in batch.failures] == failed
    assert [json.loads(text) for _, _, text, _ in batch.failures] == [records[i] for i, _ in failed]
    assert batch.keys() == ok_keys
    # Keys only on demand: a record without one is handed back with its source to derive it.
    assert [i for i, _ in batch.keyless] == [len(mapped) - 1]
    assert json.loads(batch.keyless[0][1]) == TRICKY[-1]


def test_without_a_mapping_records_are_copied_as_the_python_writer_would_write_them():
    body = json.dumps({"data": TRICKY}).encode()
    _, records, _ = isthmus._core.parse_page(body, "data", [])
    want, _ = isthmus._core.json_lines(records)
    status, batch, _ = isthmus._core.map_page(body, "data", [], "id", None)
    assert status == "ok" and batch.lines() == want and batch.failures == []
    assert isthmus._core.map_page(body, "items", [], "id", None)[0] == "missing"
    assert isthmus._core.map_page(b"{", "data", [], "id", None)[0].startswith("invalid:")


def test_a_fused_run_of_50k_records_makes_no_python_object_per_record(tmp_path):
    # FieldMap + JsonlSink: every page is mapped in the core and written by the core. The
    # counter is the core's own count of records it turned into Python objects.
    with isthmus.Sandbox(records=50_000, pagination="offset", max_page_size=500) as src, \
            isthmus.Client(src.url) as client:
        stream = isthmus.Stream(client, "/v1/contacts",
                                paginator=isthmus.OffsetPaginator(limit=500, total="meta.total"))
        before = isthmus._core.python_records_built()
        run = isthmus.Pipeline(stream, map=isthmus.FieldMap({"id": "id", "email": "email"}),
                               sink=isthmus.JsonlSink(tmp_path / "out.jsonl"), state=str(tmp_path / "s.db")).run()
        built = isthmus._core.python_records_built() - before
    assert run.counts["written"] == 50_000 and built == 0
    lines = (tmp_path / "out.jsonl").read_bytes().splitlines()
    assert len(lines) == 50_000 and json.loads(lines[0]).keys() == {"id", "email"}
