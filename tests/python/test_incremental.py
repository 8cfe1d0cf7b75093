"""The incremental cursor reads its field with the core's dotted-path walk, as keys and pages do."""

from isthmus import _core
from isthmus.incremental import Incremental, _IncrementalTracker


def test_the_core_walk_reads_dict_keys_and_list_indexes():
    records = [{"meta": {"times": ["2024-01-01T00:00:00Z", {"at": 5}]}}, {"meta": 1}, "text", {},
               {"meta": {"times": []}}]
    assert _core.record_values(records, ["meta", "times", "1", "at"]) == [5, None, None, None, None]
    assert _core.record_values(records, ["meta", "times", "0"])[0] == "2024-01-01T00:00:00Z"
    assert _core.record_values(records, []) == records  # the empty path is the record itself
    nested = {"a": [1]}
    assert _core.record_values([nested], ["a"])[0] is nested["a"]  # the object itself, no copy


def test_tracker_follows_a_nested_cursor_field_and_skips_unchanged_boundary_records():
    inc = Incremental("meta.changed.0", "since")
    first = _IncrementalTracker(inc, None)
    records = [{"id": "a", "meta": {"changed": ["2024-01-01T00:00:00Z"]}},
               {"id": "b", "meta": {"changed": ["2024-01-02T00:00:00Z"]}},
               {"id": "c", "meta": {}}]
    assert first.skipped(records, ["a", "b", "c"]) == [False, False, False]
    first.observe(records, ["a", "b", "c"])
    state = first.state()
    assert state["max"] == "2024-01-02T00:00:00Z" and dict(state["boundary"]) == {"b": "2024-01-02T00:00:00Z"}

    again = _IncrementalTracker(inc, state)
    back = [{"id": "b", "meta": {"changed": ["2024-01-02T00:00:00Z"]}},   # unchanged: skipped
            {"id": "b2", "meta": {"changed": ["2024-01-02T00:00:00Z"]}},  # new at the boundary
            {"id": "b", "meta": {"changed": ["2024-01-03T00:00:00Z"]}}]   # changed since
    assert again.skipped(back, ["b", "b2", "b"]) == [True, False, False]
