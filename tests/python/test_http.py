"""The HTTP client against the sandbox: a real server on loopback."""

from __future__ import annotations

import asyncio
import builtins
import datetime
import http.server
import inspect
import json
import threading
from unittest import mock

import pytest

import isthmus
from conftest import wait_until


def connections(sb):
    return sb.stats()["connections"]


# --- basics -------------------------------------------------------------------------------

def test_get_json(client):
    r = client.get("/json")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.headers["content-type"] == r.headers["CONTENT-TYPE"]
    assert isinstance(r.json(), dict)
    assert r.url.endswith("/json")
    assert r.elapsed.total_seconds() > 0
    assert r.http_version in ("HTTP/1.1", "HTTP/2")


def test_post_json_params_and_headers(sandbox):
    with isthmus.Client(sandbox.url, headers={"X-Team": "core"}, params={"tenant": 42}) as c:
        r = c.post("/echo", params={"page": 2, "tags": ["a", "b"], "flag": True},
                   json={"name": "Zoë", "n": 1}, headers={"X-Request": "one"})
    body = r.json()
    assert body["method"] == "POST"
    assert body["query"]["tenant"] in ("42", ["42"])
    assert body["query"]["page"] in ("2", ["2"])
    assert body["query"]["flag"] in ("true", ["true"])
    assert body["headers"]["x-team"] == "core"
    assert body["headers"]["x-request"] == "one"
    assert body["headers"]["content-type"] == "application/json"
    assert body["body"] == '{"name":"Zoë","n":1}'


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_other_methods(client, method):
    r = getattr(client, method)("/echo", data=b"payload")
    assert r.json()["method"] == method.upper()


def test_form_data(client):
    r = client.post("/echo", data={"a": "1", "b": "x y"})
    body = r.json()
    assert body["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert body["body"] == "a=1&b=x+y"


def test_status_codes_do_not_raise_until_asked(client):
    r = client.get("/status/404")
    assert r.status_code == 404 and r.is_error
    with pytest.raises(isthmus.ClientError) as info:
        r.raise_for_status()
    assert info.value.status_code == 404
    assert client.get("/status/204").raise_for_status().status_code == 204


@pytest.mark.parametrize("status,cls,builtin", [
    (401, isthmus.AuthError, PermissionError),
    (403, isthmus.AuthError, PermissionError),
    (429, isthmus.RateLimited, isthmus.ClientError),
    (500, isthmus.ServerError, isthmus.HTTPStatusError),
    (503, isthmus.ServerError, isthmus.HTTPStatusError),
])
def test_raise_for_status_classes(client, status, cls, builtin):
    r = client.get(f"/status/{status}")
    with pytest.raises(cls) as info:
        r.raise_for_status()
    assert isinstance(info.value, builtin)
    assert str(status) in str(info.value)


# --- connections ----------------------------------------------------------------------------

def test_keep_alive_reuses_connections(fresh_sandbox):
    with isthmus.Client(fresh_sandbox.url) as c:
        for _ in range(200):
            assert c.get("/json").status_code == 200
        opened = c._core.connections_opened
    assert connections(fresh_sandbox)["accepted"] <= 2
    assert opened <= 2


def test_get_many_reuses_connections(fresh_sandbox):
    with isthmus.Client(fresh_sandbox.url, max_connections=8) as c:
        rs = c.get_many(["/json"] * 2000, concurrency=8)
    assert all(r.status_code == 200 for r in rs)
    assert connections(fresh_sandbox)["accepted"] <= 8


def test_per_host_connection_cap(fresh_sandbox):
    with isthmus.Client(fresh_sandbox.url, max_connections=2) as c:
        rs = c.get_many(["/delay/30"] * 20, concurrency=20)
    assert [r.status_code for r in rs] == [200] * 20
    stats = connections(fresh_sandbox)
    assert stats["max_open"] <= 2
    assert stats["accepted"] <= 2


# --- get_many -------------------------------------------------------------------------------

def test_get_many_keeps_order(client):
    rs = client.get_many([f"/echo?i={i}" for i in range(500)], concurrency=32)
    seen = [r.json()["query"]["i"] for r in rs]
    assert [s if isinstance(s, str) else s[0] for s in seen] == [str(i) for i in range(500)]


def test_iter_many_streams_in_order(client):
    paths = (f"/echo?i={i}" for i in range(300))  # a lazy input
    seen = [r.json()["query"]["i"] for r in client.iter_many(paths, concurrency=8, chunk_size=50)]
    assert seen == [str(i) for i in range(300)]


def test_get_many_accepts_requests(client):
    reqs = [client.build_request("POST", "/echo", json={"i": i}) for i in range(20)]
    rs = client.get_many(reqs, concurrency=4)
    assert [r.json()["body"] for r in rs] == [f'{{"i":{i}}}' for i in range(20)]


def test_get_many_errors(client, closed_port):
    items = ["/json", f"http://127.0.0.1:{closed_port}/x", "/json"]
    with pytest.raises(isthmus.ConnectError):
        client.get_many(items)
    out = client.get_many(items, return_exceptions=True)
    assert out[0].status_code == 200 and out[2].status_code == 200
    assert isinstance(out[1], isthmus.ConnectError)


def test_get_many_rejects_bad_concurrency(client):
    with pytest.raises(ValueError, match="concurrency"):
        client.get_many(["/json"], concurrency=0)


# --- redirects ------------------------------------------------------------------------------

def test_follows_redirects(client):
    r = client.get("/redirect/3")
    assert r.status_code == 200
    assert r.redirects == 3
    assert r.url.endswith("/redirect/0")


def test_too_many_redirects(sandbox):
    with isthmus.Client(sandbox.url, max_redirects=2) as c:
        with pytest.raises(isthmus.TooManyRedirects):
            c.get("/redirect/3")


def test_redirects_can_be_off(sandbox):
    with isthmus.Client(sandbox.url, follow_redirects=False) as c:
        r = c.get("/redirect/1")
    assert r.status_code == 302
    assert "location" in r.headers


def test_303_becomes_get_and_307_keeps_method(client):
    r = client.post("/redirect-to", params={"url": "/echo", "status": 303}, data=b"x")
    assert r.json()["method"] == "GET"
    r = client.post("/redirect-to", params={"url": "/echo", "status": 307}, data=b"keep")
    assert r.json()["method"] == "POST" and r.json()["body"] == "keep"


def test_credentials_stay_on_the_same_host(client):
    r = client.get("/redirect-to", params={"url": "/echo"}, headers={"Authorization": "Bearer s3cret"})
    assert r.json()["headers"]["authorization"] == "Bearer s3cret"


def test_credentials_never_follow_to_another_host(client):
    # A second server on another loopback address is "another host" for the redirect.
    with isthmus.Sandbox(host="127.0.0.2") as elsewhere:
        r = client.get("/redirect-to", params={"url": elsewhere.url + "/echo"},
                       headers={"Authorization": "Bearer s3cret", "Cookie": "sid=1", "X-Other": "kept"})
        seen = r.json()["headers"]
    assert r.url.startswith("http://127.0.0.2")
    assert "authorization" not in seen and "cookie" not in seen
    assert seen["x-other"] == "kept"


# --- bodies -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path,encoding", [("/gzip", "gzip"), ("/deflate", "deflate")])
def test_compressed_bodies_are_decoded(client, path, encoding):
    r = client.get(path)
    assert r.headers["content-encoding"] == encoding
    assert isinstance(r.json(), dict)


def test_large_body(client):
    size = 100 * 1024 * 1024 + 7
    r = client.get(f"/bytes/{size}", timeout=60)
    assert len(r.content) == size
    assert r.content[:1000] == client.get("/bytes/1000").content


def test_large_upload(client):
    payload = bytes(range(256)) * (8 * 1024 * 4)  # 8 MiB
    r = client.post("/echo", data=payload, timeout=60)
    assert r.json()["body_length"] == len(payload)


# --- failures ---------------------------------------------------------------------------------

def test_refused_connection(closed_port):
    with isthmus.Client() as c:
        with pytest.raises(isthmus.ConnectError) as info:
            c.get(f"http://127.0.0.1:{closed_port}/")
    assert isinstance(info.value, ConnectionError)
    assert f"127.0.0.1:{closed_port}" in str(info.value.url)


def test_unresolvable_host():
    with isthmus.Client(timeout=10) as c:
        with pytest.raises(isthmus.ResolveError):
            c.get("http://no-such-host.invalid/")


def test_timeout(client):
    with pytest.raises(isthmus.TimeoutError) as info:
        client.get("/delay/5000", timeout=0.2)
    assert isinstance(info.value, builtins.TimeoutError)


def test_stalled_server_times_out(client):
    with pytest.raises(TimeoutError):
        client.get("/stall", timeout=0.3)


def test_server_closing_mid_body(client):
    with pytest.raises(isthmus.ReadError) as info:
        client.get("/truncated")
    assert isinstance(info.value, ConnectionError)


def test_connection_reset(client):
    with pytest.raises(isthmus.TransportError):
        client.get("/reset")


def test_invalid_json(client):
    r = client.get("/malformed-json")
    with pytest.raises(isthmus.JSONDecodeError) as info:
        r.json()
    assert isinstance(info.value, ValueError)
    assert "/malformed-json" in str(info.value)


@pytest.mark.parametrize("url", ["http://exa mple.com/", "http://[::1/", "http://:80/", "not a url",
                                 "http://h/a\r\nX-Injected: 1", "http://h/?q=\x00"])
def test_malformed_url(url):
    with isthmus.Client() as c:
        with pytest.raises(isthmus.InvalidURL) as info:
            c.get(url)
    assert isinstance(info.value, ValueError)


def test_unknown_scheme():
    with isthmus.Client() as c:
        with pytest.raises(isthmus.UnsupportedScheme):
            c.get("ftp://127.0.0.1/file")
    with pytest.raises(isthmus.UnsupportedScheme):
        isthmus.Client("gopher://example.com")


def test_header_injection_is_refused(client):
    with pytest.raises(isthmus.InvalidHeader):
        client.get("/echo", headers={"X-A": "a\r\nInjected: 1"})


@pytest.mark.parametrize("kwargs,field", [
    ({"timeout": 0}, "timeout"), ({"timeout": -1}, "timeout"), ({"max_connections": 0}, "max_connections"),
    ({"connect_timeout": "fast"}, "connect_timeout"), ({"verify": 3}, "verify"),
])
def test_bad_configuration_names_the_field(kwargs, field):
    with pytest.raises(isthmus.ConfigError, match=field):
        isthmus.Client("http://127.0.0.1", **kwargs)


def test_secrets_are_redacted_from_errors(closed_port):
    url = f"http://user:hunter2@127.0.0.1:{closed_port}/x?api_key=SECRETKEY&page=2"
    with isthmus.Client() as c:
        with pytest.raises(isthmus.ConnectError) as info:
            c.get(url, headers={"Authorization": "Bearer TOPSECRET"})
    text = str(info.value) + repr(info.value) + str(info.value.url)
    for secret in ("hunter2", "SECRETKEY", "TOPSECRET"):
        assert secret not in text
    assert "page=2" in info.value.url


def test_response_repr_redacts(client):
    r = client.get("/echo", params={"access_token": "abc123"})
    assert "abc123" not in repr(r)
    assert "abc123" not in repr(r.request)


def test_closed_client_refuses(sandbox):
    c = isthmus.Client(sandbox.url)
    c.close()
    c.close()
    with pytest.raises(isthmus.ClientClosed):
        c.get("/json")


# --- threads and asyncio ----------------------------------------------------------------------

def test_many_threads_share_one_client(client):
    results: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            results[t] = [client.get("/echo", params={"t": t, "i": i}).json()["query"]["i"] for i in range(50)]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert all(results[t] == [str(i) for i in range(50)] for t in range(8))


def test_async_client(sandbox):
    async def main():
        async with isthmus.AsyncClient(sandbox.url) as c:
            rs = await asyncio.gather(*(c.get("/echo", params={"i": i}) for i in range(200)))
            return [r.json()["query"]["i"] for r in rs]

    assert asyncio.run(main()) == [str(i) for i in range(200)]


def test_async_get_many_and_errors(sandbox, closed_port):
    async def main():
        async with isthmus.AsyncClient(sandbox.url) as c:
            rs = await c.get_many(["/json"] * 50, concurrency=8)
            assert all(r.status_code == 200 for r in rs)
            with pytest.raises(isthmus.ConnectError):
                await c.get(f"http://127.0.0.1:{closed_port}/")
            with pytest.raises(isthmus.TimeoutError):
                await c.get("/delay/3000", timeout=0.2)

    asyncio.run(main())


def test_async_cancel_cancels_the_transfer(fresh_sandbox):
    async def main():
        async with isthmus.AsyncClient(fresh_sandbox.url, timeout=30) as c:
            task = asyncio.create_task(c.get("/stall"))
            await asyncio.to_thread(wait_until, lambda: connections(fresh_sandbox)["open"] == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The core dropped the transfer, so the server sees its connection close.
            await asyncio.to_thread(wait_until, lambda: connections(fresh_sandbox)["open"] == 0)
            # The client still works afterwards.
            assert (await c.get("/json")).status_code == 200

    asyncio.run(main())


def test_async_client_survives_a_second_event_loop(sandbox):
    c = isthmus.AsyncClient(sandbox.url)

    async def one():
        return (await c.get("/json")).status_code

    assert asyncio.run(one()) == 200
    assert asyncio.run(one()) == 200
    c.close()


class _Held(http.server.BaseHTTPRequestHandler):
    """/hold answers only once the test lets it (or a 10 s safety valve passes); the rest at once."""

    release = threading.Event()

    def do_GET(self):  # noqa: N802 (the standard library's name)
        if self.path.startswith("/hold") and not _Held.release.wait(10):
            _Held.release.set()  # the valve opened: a test checking the event sees it
        body = self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def held_server():
    _Held.release = threading.Event()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Held)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    _Held.release.set()
    server.shutdown()
    server.server_close()


def test_iter_many_yields_each_response_without_waiting_for_slower_ones(held_server):
    with isthmus.Client(held_server) as c:
        stream = c.iter_many(["/a", "/hold", "/c"], concurrency=4)
        first = next(stream)
        # /a came back while /hold was still held: nothing waited for the slow request.
        assert first.text == "/a" and not _Held.release.is_set()
        _Held.release.set()
        assert [r.text for r in stream] == ["/hold", "/c"]


def test_stopping_iter_many_early_cancels_what_is_in_flight(held_server):
    # Two connections in all: while both held requests ran, nothing else could be sent.
    with isthmus.Client(held_server, max_connections=2) as c:
        stream = c.iter_many(["/a", "/hold/1", "/hold/2"], concurrency=3)
        assert next(stream).text == "/a"
        stream.close()
        # The held transfers were cancelled, which freed both connections for this request.
        assert c.get("/b").text == "/b" and not _Held.release.is_set()


# --- what arrives on the wire -------------------------------------------------------------

def _lines(echo, name):
    return [v for k, v in echo["header_lines"] if k == name.lower()]


@pytest.mark.parametrize("given", [
    [("X-Dup", "a"), ("X-Dup", "b")],
    isthmus.Headers([("X-Dup", "a"), ("x-dup", "b")]),
])
def test_repeated_request_headers_arrive_as_separate_lines(sandbox, given):
    with isthmus.Client(sandbox.url, headers={"X-Dup": "default", "X-Keep": "kept"}) as c:
        echo = c.get("/echo", headers=given).json()
    assert _lines(echo, "X-Dup") == ["a", "b"]
    assert _lines(echo, "X-Keep") == ["kept"]


def test_a_request_header_replaces_every_default_line_of_its_name(sandbox):
    defaults = isthmus.Headers([("X-Dup", "d1"), ("X-Dup", "d2"), ("X-Other", "o")])
    with isthmus.Client(sandbox.url, headers=defaults) as c:
        replaced = c.get("/echo", headers={"x-dup": "mine"}).json()
        untouched = c.get("/echo").json()
    assert _lines(replaced, "X-Dup") == ["mine"]
    assert _lines(replaced, "X-Other") == ["o"]
    assert _lines(untouched, "X-Dup") == ["d1", "d2"]


def test_async_client_sends_repeated_headers(sandbox):
    async def main():
        async with isthmus.AsyncClient(sandbox.url) as c:
            return (await c.get("/echo", headers=[("X-Dup", "a"), ("X-Dup", "b")])).json()

    assert _lines(asyncio.run(main()), "X-Dup") == ["a", "b"]


@pytest.mark.parametrize("url,target,path,query", [
    ("/echo/café?x=é", "/echo/caf%C3%A9?x=%C3%A9", "/echo/café", {"x": "é"}),
    ("/echo/caf\u00e9/日本", "/echo/caf%C3%A9/%E6%97%A5%E6%9C%AC", "/echo/café/日本", {}),
    ("/echo?x=a b&y=<\"{|}>", "/echo?x=a%20b&y=%3C%22%7B%7C%7D%3E", "/echo", {"x": "a b", "y": "<\"{|}>"}),
    # Escapes already there stay as written (case too); a '%' that starts none is encoded.
    ("/echo/caf%C3%A9?x=%c3%a9&y=100%&z=%2", "/echo/caf%C3%A9?x=%c3%a9&y=100%25&z=%252",
     "/echo/café", {"x": "é", "y": "100%", "z": "%2"}),
])
def test_urls_are_percent_encoded_as_utf8(client, url, target, path, query):
    echo = client.get(url).json()
    assert echo["target"] == target
    assert echo["path"] == path
    assert echo["query"] == query


def test_params_encode_spaces_and_delimiters_once_in_upper_case(client):
    values = {"q": "a b", "plus": "1+1", "amp": "x&y", "eq": "k=v", "pct": "100%", "e": "é", "s": "/:?"}
    echo = client.get("/echo", params=values).json()
    assert echo["target"] == ("/echo?q=a%20b&plus=1%2B1&amp=x%26y&eq=k%3Dv&pct=100%25&e=%C3%A9"
                              "&s=%2F%3A%3F")
    assert echo["query"] == values


def test_build_request_shows_the_url_as_sent(sandbox):
    with isthmus.Client(sandbox.url, params={"t": "x y"}) as c:
        r = c.build_request("GET", "/echo/é", params={"q": "é"})
    assert r.url == sandbox.url + "/echo/%C3%A9?t=x%20y&q=%C3%A9"


def test_hmac_signed_text_and_wire_text_agree():
    signer = isthmus.HmacSigner("s3cret", canonical="{timestamp}.{method}.{path_query}.{body}",
                                header="X-Signature", prefix="sha256=",
                                timestamp_header="X-Signature-Timestamp")
    with isthmus.Sandbox(signing_secret="s3cret") as api, isthmus.Client(api.url, auth=signer) as c:
        typed = c.get("/v1/contacts?limit=1&note=a bé")
        built = c.get("/v1/contacts", params={"limit": 1, "note": "a b+c&d=é%"})
        posted = c.post("/v1/contacts?tag=é", content="{}", headers={"Content-Type": "application/json"})
    assert typed.status_code == 200, typed.text
    assert built.status_code == 200, built.text
    assert posted.status_code != 401, posted.text


def test_sigv4_signs_the_query_as_it_is_sent():
    pytest.importorskip("botocore")
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    when = datetime.datetime(2024, 2, 29, 23, 59, 58, tzinfo=datetime.timezone.utc)
    signer = isthmus.AwsSigV4("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "us-east-1", "execute-api")
    with isthmus.Client("https://api.example.com") as c:
        sent = c.build_request("GET", "/v1/caf\u00e9", params={"q": "a b", "p": "1+1", "e": "é&=%"}).url
    assert sent == "https://api.example.com/v1/caf%C3%A9?q=a%20b&p=1%2B1&e=%C3%A9%26%3D%25"
    # botocore signs the query exactly as given, so it agrees only when the wire text is canonical.
    reference = AWSRequest(method="GET", url=sent, headers={})
    with mock.patch("botocore.auth.get_current_datetime", return_value=when.replace(tzinfo=None)):
        SigV4Auth(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
                  "execute-api", "us-east-1").add_auth(reference)
    for url in (sent, "https://api.example.com/v1/café?q=a b&p=1%2B1&e=é%26%3D%25"):
        ours = isthmus.Headers(signer.sign("GET", url, {}, b"", timestamp=when))
        assert ours["Authorization"] == reference.headers["Authorization"], url


# --- bodies --------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["post", "put", "patch", "delete", "get", "options"])
@pytest.mark.parametrize("content,expected", [(b"\x00raw bytes", "\x00raw bytes"), ("héllo", "héllo")])
def test_content_is_sent_as_given(client, method, content, expected):
    echo = getattr(client, method)("/echo", content=content).json()
    assert echo["method"] == method.upper()
    assert echo["body"] == expected
    assert echo["body_length"] == len(content.encode() if isinstance(content, str) else content)
    assert "content-type" not in echo["headers"]


def test_async_client_sends_content(sandbox):
    async def main():
        async with isthmus.AsyncClient(sandbox.url) as c:
            return (await c.put("/echo", content="é")).json()

    assert asyncio.run(main())["body"] == "é"


@pytest.mark.parametrize("bodies,named", [
    ({"content": b"x", "json": {"a": 1}}, "content and json"),
    ({"content": "x", "data": {"a": "1"}}, "content and data"),
    ({"data": b"x", "json": [1]}, "data and json"),
])
def test_two_body_kinds_are_refused_naming_both(client, bodies, named):
    with pytest.raises(isthmus.ConfigError, match=named):
        client.post("/echo", **bodies)


def test_content_of_another_type_is_refused(client):
    with pytest.raises(isthmus.ConfigError, match="content: expected bytes or str, got dict"):
        client.post("/echo", content={"a": 1})


def test_invalid_json_is_also_a_stdlib_json_decode_error(client):
    with pytest.raises(json.JSONDecodeError) as info:
        client.get("/malformed-json").json()
    err = info.value
    assert isinstance(err, isthmus.JSONDecodeError) and isinstance(err, isthmus.DecodingError)
    text = client.get("/malformed-json").text
    with pytest.raises(json.JSONDecodeError) as stdlib:
        json.loads(text)
    assert (err.msg, err.pos, err.lineno, err.colno, err.doc) == \
        (stdlib.value.msg, stdlib.value.pos, stdlib.value.lineno, stdlib.value.colno, text)
    assert "/malformed-json" in str(err)


def test_json_decode_error_doc_masks_secrets_in_place(client):
    body = '{"access_token": "tok-SECRET",\n "n": }'
    response = client.post("/echo", content=body)
    # The echo wraps the body in valid JSON; give the Response the broken body itself.
    response._content = response.json()["body"].encode()
    with pytest.raises(isthmus.JSONDecodeError) as info:
        response.json()
    err = info.value
    assert "tok-SECRET" not in err.doc + err.excerpt + str(err) + repr(err)
    with pytest.raises(json.JSONDecodeError) as stdlib:
        json.loads(body)
    assert len(err.doc) == len(body) and err.doc[err.pos] == "}"
    assert (err.pos, err.lineno, err.colno) == (stdlib.value.pos, stdlib.value.lineno, stdlib.value.colno)


# --- signatures and docstrings ---------------------------------------------------------------

_PUBLIC_METHODS = ["get", "post", "put", "patch", "delete", "head", "options", "request", "send",
                   "build_request", "get_many"]


@pytest.mark.parametrize("cls,name", [(isthmus.Client, n) for n in _PUBLIC_METHODS + ["iter_many"]]
                         + [(isthmus.AsyncClient, n) for n in _PUBLIC_METHODS])
def test_public_methods_have_named_parameters_and_docstrings(cls, name):
    method = getattr(cls, name)
    params = inspect.signature(method).parameters
    kinds = {p.kind for p in params.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds and inspect.Parameter.VAR_POSITIONAL not in kinds
    assert list(params)[0] == "self" and len(params) > 1
    assert method.__doc__ and method.__doc__.strip()
    if name in ("get", "post", "put", "patch", "delete", "head", "options", "request"):
        for keyword in ("url", "params", "headers", "content", "data", "json", "timeout", "priority"):
            assert keyword in params, keyword
        assert method.__name__ == name and method.__qualname__ == f"{cls.__name__}.{name}"
    if cls is isthmus.AsyncClient and name != "build_request":
        assert inspect.iscoroutinefunction(method)


@pytest.mark.parametrize("name", ["status_code", "reason_phrase", "http_version", "headers", "url",
                                  "redirects", "attempts", "elapsed", "content", "encoding", "text",
                                  "json", "is_success", "is_error", "raise_for_status"])
def test_response_attributes_have_docstrings(name):
    assert (getattr(isthmus.Response, name).__doc__ or "").strip(), name


def test_help_shows_the_parameters():
    import pydoc
    text = pydoc.render_doc(isthmus.Client.get, renderer=pydoc.plaintext)
    assert "params" in text and "content" in text and "**kwargs" not in text
