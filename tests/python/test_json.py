"""The core's JSON writer (isthmus._core.json_dumps / json_lines), which sinks and request
bodies use, checked against the standard library's reader, and the core's page reader against
json.loads on pages a real server sends."""

from __future__ import annotations

import datetime
import decimal
import http.server
import json
import random
import threading
import uuid

import pytest

import isthmus
from isthmus import _core


def _random_value(rng: random.Random, depth: int = 0):
    kinds = ["str", "int", "float", "bool", "none", "big"] + (["list", "dict"] if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "str":
        alphabet = "aZ09 \"\\/\n\r\t\b\f\x00\x1f\x7fé€😀\u2028"
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
    if kind == "int":
        return rng.randrange(-2**63, 2**63)
    if kind == "big":
        return rng.randrange(-10**40, 10**40)
    if kind == "float":
        return rng.choice([0.0, -0.0, 1e300, 5e-324, 0.1, rng.uniform(-1e6, 1e6)])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {f"k{rng.randrange(50)}é": _random_value(rng, depth + 1) for _ in range(rng.randrange(6))}


def test_random_documents_read_back_equal_and_match_the_standard_text():
    rng = random.Random(7)
    docs = [_random_value(rng) for _ in range(3000)]
    for doc in docs:
        text = _core.json_dumps(doc)
        assert json.loads(text) == doc
        # Byte for byte what json.dumps writes in its compact, non-ASCII form.
        assert text == json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def test_lines_leave_out_and_name_what_cannot_be_written():
    text, left_out = _core.json_lines([{"id": 1}, {"id": 2, "x": {"y": [1, float("nan")]}},
                                       {"id": 3, "when": {object()}}, {"id": 4}])
    assert [json.loads(line) for line in text.splitlines()] == [{"id": 1}, {"id": 4}]
    assert [i for i, _ in left_out] == [1, 2]
    assert "at .x.y[1]" in left_out[0][1] and "NaN" in left_out[0][1]
    assert "at .when" in left_out[1][1] and "set" in left_out[1][1]


def test_values_records_commonly_carry_are_written_as_text():
    when = datetime.datetime(2026, 11, 28, 9, 30, tzinfo=datetime.timezone.utc)
    doc = {"when": when, "day": datetime.date(2026, 1, 2), "amount": decimal.Decimal("12.50"),
           "ref": uuid.UUID(int=1), "pair": (1, 2), 7: "int key"}
    assert json.loads(_core.json_dumps(doc)) == {
        "when": "2026-11-28T09:30:00+00:00", "day": "2026-01-02", "amount": 12.5,
        "ref": "00000000-0000-0000-0000-000000000001", "pair": [1, 2], "7": "int key"}


@pytest.mark.parametrize("bad, where", [
    ({"a": float("inf")}, "at .a"),
    ({"a": decimal.Decimal("NaN")}, "at .a"),
    ({("tuple", "key"): 1}, "key of type tuple"),
    ({"s": "\ud800"}, "surrogate"),
])
def test_what_json_cannot_hold_is_a_type_error_naming_it(bad, where):
    with pytest.raises(TypeError, match="not JSON-serializable") as info:
        _core.json_dumps(bad)
    assert where in str(info.value)


def test_deep_nesting_is_refused_not_a_crash():
    doc: list = []
    for _ in range(10_000):
        doc = [doc]
    with pytest.raises(TypeError, match="nested more than"):
        _core.json_dumps(doc)


def test_request_bodies_are_written_by_the_core(sandbox, client):
    body = {"name": "Zoë", "when": datetime.date(2026, 1, 2), "n": 10**20}
    echoed = client.post("/echo", json=body).json()
    assert json.loads(echoed["body"]) == {"name": "Zoë", "when": "2026-01-02", "n": 10**20}


class _Pages(http.server.BaseHTTPRequestHandler):
    """Serves one fixed page body, whatever the path."""

    body = b""

    def do_GET(self):  # noqa: N802 (the standard library's name)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def page_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_page_with_an_integer_wider_than_64_bits_is_still_read(page_server, tmp_path):
    _Pages.body = json.dumps({"data": [{"id": "a", "n": 10**30}, {"id": "b", "n": -1}]}).encode()
    out = []
    with isthmus.Client(f"http://127.0.0.1:{page_server.server_port}") as client:
        stream = isthmus.Stream(client, "/v1/things", records="data")
        isthmus.Pipeline(stream, sink=isthmus.CallableSink(out.extend), state=str(tmp_path / "s.db")).run()
    assert out == [{"id": "a", "n": 10**30}, {"id": "b", "n": -1}]


def test_a_malformed_page_names_the_line_and_column(page_server, tmp_path):
    _Pages.body = b'{"data": [{"id": "a"},\n {"id": "b",}]}'
    with isthmus.Client(f"http://127.0.0.1:{page_server.server_port}") as client:
        stream = isthmus.Stream(client, "/v1/things", records="data", attempts=2)
        with pytest.raises(isthmus.PipelineError, match="malformed JSON.*line 2 column"):
            isthmus.Pipeline(stream, sink=isthmus.CallableSink(list), state=str(tmp_path / "s.db")).run()
