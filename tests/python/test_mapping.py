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
