"""The error hierarchy: users catch by meaning or by the builtin they already know."""

import builtins
import email.utils
import http.server
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest

import isthmus
from isthmus import _core, errors

# Every code of the core's error category, the class it becomes in Python and the builtin
# that class also is (None: no builtin fits; catch it by its isthmus class). A code added to
# the core without a row here fails test_every_core_code_has_a_row.
CODE_TABLE = {
    "ok": (errors.InternalError, RuntimeError),  # never raised: reaching the table with it is a bug
    "invalid_url": (errors.InvalidURL, ValueError),
    "unsupported_scheme": (errors.UnsupportedScheme, ValueError),
    "resolve_failed": (errors.ResolveError, ConnectionError),
    "connect_failed": (errors.ConnectError, ConnectionError),
    "tls_error": (errors.TLSError, ConnectionError),
    "timeout": (errors.TimeoutError, builtins.TimeoutError),
    "transport_error": (errors.ReadError, ConnectionError),
    "protocol_error": (errors.ProtocolError, ConnectionError),
    "decoding_error": (errors.DecodingError, ValueError),
    "too_many_redirects": (errors.TooManyRedirects, None),
    "invalid_header": (errors.InvalidHeader, ValueError),
    "body_too_large": (errors.BodyTooLarge, ConnectionError),
    "cancelled": (errors.Cancelled, None),
    "shutting_down": (errors.ClientClosed, RuntimeError),
    "invalid_argument": (errors.ConfigError, ValueError),
    "token_request_failed": (errors.TokenError, PermissionError),
    "token_request_lost": (errors.TokenError, PermissionError),
    "token_store_error": (errors.TokenStoreError, None),
    "token_store_tampered": (errors.TokenStoreError, None),
    "webhook_invalid": (errors.WebhookVerificationError, ValueError),
    "crypto_error": (errors.CryptoError, ValueError),
    "quota_exhausted": (errors.QuotaExhausted, None),
    "rate_limited": (errors.Throttled, None),
    "circuit_open": (errors.CircuitOpen, ConnectionError),
    "retry_deadline": (errors.RetryDeadlineExceeded, builtins.TimeoutError),
    "access_refused": (errors.AccessRefused, PermissionError),
    "state_error": (errors.StateError, None),
    "internal": (errors.InternalError, RuntimeError),
}


def test_every_core_code_has_a_row():
    codes = _core.error_codes()
    assert [value for _, value, _ in codes] == list(range(len(codes)))
    names = [name for name, _, _ in codes]
    assert all(names) and len(set(names)) == len(names)
    assert set(names) == set(CODE_TABLE), "a core error code without a Python class, or a stale row"
    assert all(message and message != "unknown isthmus error" for _, _, message in codes)


@pytest.mark.parametrize("name,value", [(n, v) for n, v, _ in _core.error_codes()])
def test_every_core_code_becomes_its_class(name, value):
    cls, builtin = CODE_TABLE[name]
    # Thrown in C++ as the core throws, so it crosses the one translator of bindings/exceptions.cpp.
    with pytest.raises(errors.IsthmusError) as caught:
        _core.raise_error_code(value, f"failed: {name}")
    assert type(caught.value) is cls
    assert str(caught.value) == f"failed: {name}"
    if builtin is not None:
        assert isinstance(caught.value, builtin)
    assert caught.value.status_code is None and caught.value.body == ""


def test_a_value_that_is_no_code_is_refused():
    with pytest.raises(errors.ConfigError, match="no error code"):
        _core.raise_error_code(len(_core.error_codes()), "x")


@pytest.mark.parametrize("cls,builtin", [
    (errors.ConfigError, ValueError),
    (errors.InvalidURL, ValueError),
    (errors.UnsupportedScheme, ValueError),
    (errors.InvalidHeader, ValueError),
    (errors.ConnectError, ConnectionError),
    (errors.ResolveError, ConnectionError),
    (errors.ReadError, ConnectionError),
    (errors.TimeoutError, builtins.TimeoutError),
    (errors.JSONDecodeError, ValueError),
    (errors.ClientClosed, RuntimeError),
])
def test_classes_subclass_builtins(cls, builtin):
    assert issubclass(cls, builtin)
    assert issubclass(cls, errors.IsthmusError)


def test_request_errors_carry_method_and_url():
    e = errors.ConnectError("refused", method="GET", url="http://127.0.0.1:1/")
    assert (e.method, e.url, str(e)) == ("GET", "http://127.0.0.1:1/", "refused")


def test_json_decode_error_is_also_the_stdlib_one():
    import json
    import pickle

    assert issubclass(errors.JSONDecodeError, json.JSONDecodeError)
    assert issubclass(errors.JSONDecodeError, errors.DecodingError)
    doc = '{"a": 1,\n  "b": ]'
    with pytest.raises(json.JSONDecodeError) as stdlib:
        json.loads(doc)
    e = errors.JSONDecodeError("invalid JSON in the response to GET http://h/x", method="GET",
                               url="http://h/x", excerpt=doc, position=stdlib.value.pos,
                               msg="Expecting value", doc=doc)
    assert (e.msg, e.doc, e.pos, e.lineno, e.colno) == \
        (stdlib.value.msg, doc, stdlib.value.pos, stdlib.value.lineno, stdlib.value.colno)
    assert str(e) == "invalid JSON in the response to GET http://h/x"
    copy = pickle.loads(pickle.dumps(e))
    assert type(copy) is errors.JSONDecodeError
    assert (str(copy), copy.method, copy.url, copy.msg, copy.pos, copy.lineno, copy.colno) == \
        (str(e), "GET", "http://h/x", e.msg, e.pos, e.lineno, e.colno)


def test_request_errors_name_the_redacted_request(closed_port):
    with isthmus.Client(retry=None) as c, pytest.raises(errors.ConnectError) as caught:
        c.get(f"http://127.0.0.1:{closed_port}/v1/contacts?api_key=hunter2&page=2")
    e = caught.value
    assert e.request == f"GET http://127.0.0.1:{closed_port}/v1/contacts?api_key=***&page=2"
    assert (e.status_code, e.body) == (None, "")
    assert "hunter2" not in str(e) and "hunter2" not in repr(e.__dict__)


def test_status_errors_carry_status_request_and_a_redacted_body():
    with isthmus.Sandbox(auth="oauth2") as api, isthmus.Client(api.url, retry=None) as c:
        r = c.post(api.token_url + "?client_secret=hunter2",
                   data={"grant_type": "client_credentials", "client_id": api.client_id,
                         "client_secret": "wrong"})
        with pytest.raises(errors.AuthError) as caught:
            r.raise_for_status()
    e = caught.value
    assert e.status_code == 401 and isinstance(e, PermissionError)
    assert e.request == f"POST {api.token_url}?client_secret=***"
    assert "invalid_client" in e.body and "hunter2" not in e.body + e.request + str(e)


class _RetryAfter(http.server.BaseHTTPRequestHandler):
    """429 with the Retry-After value given in the query, as it is."""

    def do_GET(self):
        value = parse_qs(urlsplit(self.path).query)["v"][0]
        self.send_response(429)
        self.send_header("Retry-After", value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def retry_after_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RetryAfter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _InAnHour:
    """An HTTP-date an hour (or `hours`) from when the test runs, not from when it was collected."""

    def __init__(self, hours: float):
        self.hours = hours

    def __str__(self) -> str:
        return email.utils.formatdate(time.time() + 3600 * self.hours, usegmt=True)


@pytest.mark.parametrize("value,expected", [
    ("120", 120.0),
    ("0", 0.0),
    (" 7 ", 7.0),
    (_InAnHour(1), 3600.0),
    (_InAnHour(-1), 0.0),              # a date in the past: go now
    ("Sunday, 06-Nov-94 08:49:47 GMT", 0.0),
    ("soon", None),
    ("-5", None),
    ("1e3", None),
    ("Wed, 32 Oct 2015 07:28:00 GMT", None),
], ids=["seconds", "zero", "spaces", "date", "past-date", "rfc850", "word", "negative",
        "exponent", "bad-day"])
def test_rate_limited_reads_retry_after_as_the_core_does(retry_after_server, value, expected):
    """RateLimited.retry_after (Python) and the limiter's parser (the core) are one parser."""
    with isthmus.Client(retry=None) as c:
        r = c.get(retry_after_server + "/x", params={"v": str(value)})
    with pytest.raises(errors.RateLimited) as caught:
        r.raise_for_status()
    core = _core.parse_retry_after(r.headers["retry-after"], time.time())
    got = caught.value.retry_after
    if expected is None:
        assert got is None and core is None
    else:
        # An HTTP-date is read against the clock twice, a moment apart.
        assert got == pytest.approx(expected, abs=5) and core == pytest.approx(got, abs=5)


def test_errors_module_parses_no_dates_of_its_own():
    import inspect
    source = inspect.getsource(errors)
    assert "email.utils" not in source and "parsedate" not in source


# --- Inside a run: the class a direct call would raise, as a PipelineError with __cause__ ---

_FAST = isthmus.Retry(attempts=2, base=0.01, cap=0.05, circuit_breaker=False)
_ALWAYS = {"429": {"error_rate": {"429": 1.0}}, "503": {"error_rate": {"503": 1.0}}}


def _stream(client):
    return isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(), retry=_FAST)


def _assert_run_raises(pipe, cls, *, status=None, secret="hunter2"):
    with pytest.raises(cls) as caught:
        pipe.run()
    err = caught.value
    assert isinstance(err, errors.PipelineError), type(err).__mro__
    assert isinstance(err.__cause__, cls) and not isinstance(err.__cause__, errors.PipelineError)
    assert err.status_code == status and err.status_code == err.__cause__.status_code
    assert err.request and err.request == err.__cause__.request
    assert secret not in str(err) + repr(err.__dict__)
    assert pipe.runs()["status"].tolist() == ["failed"]
    return err


@pytest.mark.parametrize("fault,cls,status", [
    ("429", errors.RateLimited, 429),
    ("503", errors.ServerError, 503),
])
def test_a_source_that_keeps_failing_raises_the_status_class(tmp_path, fault, cls, status):
    with isthmus.Sandbox(records=50, faults={"GET /v1/contacts": _ALWAYS[fault]}) as src, \
            isthmus.Client(src.url) as client:
        pipe = isthmus.Pipeline(_stream(client), sink=isthmus.CallableSink(list), state=str(tmp_path / "s.db"))
        err = _assert_run_raises(pipe, cls, status=status)
    assert err.request.startswith(f"GET {src.url}/v1/contacts")


def test_a_source_answering_401_raises_auth_error(tmp_path):
    with isthmus.Sandbox(records=50, auth="api_key") as src, \
            isthmus.Client(src.url, auth=isthmus.ApiKey("hunter2", header="X-API-Key")) as client:
        pipe = isthmus.Pipeline(_stream(client), sink=isthmus.CallableSink(list), state=str(tmp_path / "s.db"))
        _assert_run_raises(pipe, errors.AuthError, status=401)


def test_a_refused_source_raises_connect_error(tmp_path, closed_port):
    with isthmus.Client(f"http://127.0.0.1:{closed_port}") as client:
        pipe = isthmus.Pipeline(_stream(client), sink=isthmus.CallableSink(list), state=str(tmp_path / "s.db"))
        err = _assert_run_raises(pipe, errors.ConnectError)
    assert isinstance(err, ConnectionError) and f"127.0.0.1:{closed_port}/v1/contacts" in err.request


def test_a_token_endpoint_refusing_raises_token_error(tmp_path):
    with isthmus.Sandbox(records=50, auth="oauth2") as src:
        auth = isthmus.OAuth2ClientCredentials(src.token_url, src.client_id, "hunter2")
        with isthmus.Client(src.url, auth=auth) as client:
            pipe = isthmus.Pipeline(_stream(client), sink=isthmus.CallableSink(list),
                                    state=str(tmp_path / "s.db"))
            err = _assert_run_raises(pipe, errors.TokenError, status=401)
    assert isinstance(err, PermissionError)


def _sink_pipeline(src, sink_client, tmp_path):
    return isthmus.Pipeline(isthmus.Stream(isthmus.Client(src.url), "/v1/contacts",
                                           paginator=isthmus.CursorPaginator()),
                            sink=isthmus.HttpSink(sink_client, "/v1/contacts/batch", retry=_FAST),
                            state=str(tmp_path / "s.db"))


def test_a_refused_sink_raises_connect_error(tmp_path, closed_port):
    with isthmus.Sandbox(records=50) as src, isthmus.Client(f"http://127.0.0.1:{closed_port}") as dst:
        err = _assert_run_raises(_sink_pipeline(src, dst, tmp_path), errors.ConnectError)
    assert err.request == f"POST http://127.0.0.1:{closed_port}/v1/contacts/batch"


@pytest.mark.parametrize("fault,cls,status", [
    ("429", errors.RateLimited, 429),
    ("503", errors.ServerError, 503),
])
def test_a_sink_that_keeps_failing_raises_the_status_class(tmp_path, fault, cls, status):
    with isthmus.Sandbox(records=50) as src, \
            isthmus.Sandbox(faults={"POST /v1/contacts/batch": _ALWAYS[fault]}) as dst, \
            isthmus.Client(dst.url) as client:
        err = _assert_run_raises(_sink_pipeline(src, client, tmp_path), cls, status=status)
    assert err.request == f"POST {dst.url}/v1/contacts/batch"


@pytest.mark.parametrize("status,every", [(401, True), (403, True), (404, True), (410, True), (422, False),
                                          (429, False), (503, False)])
def test_which_answers_affect_every_record(status, every):
    """A refused request (a wrong key, path or method) would be refused for every page; a
    record's 422 or a transient answer would not. The rule sees through a run's wrapping."""
    with isthmus.Sandbox(records=5, faults={"GET /v1/contacts": {"error_rate": {str(status): 1.0}}}) as api, \
            isthmus.Client(api.url) as client:
        with pytest.raises(errors.HTTPStatusError) as caught:
            client.get("/v1/contacts").raise_for_status()
    assert errors.affects_every_record(caught.value) is every
    wrapped = errors.pipeline_error("Stream /v1/contacts: refused", caught.value)
    assert errors.affects_every_record(wrapped) is every


def test_setup_failures_affect_every_record_and_transport_failures_do_not(closed_port):
    assert errors.affects_every_record(errors.ConfigError("sink.path: wrong"))
    with isthmus.Client(f"http://127.0.0.1:{closed_port}") as client:
        with pytest.raises(errors.ConnectError) as refused:
            client.get("/")
    assert not errors.affects_every_record(refused.value)  # a server restarting comes back
    with isthmus.Client() as client:
        with pytest.raises(errors.InvalidURL) as bad:
            client.get("http://exa mple.com/")
    assert errors.affects_every_record(bad.value)


def test_a_token_error_carries_the_refusing_status_and_affects_every_record():
    refused = errors.TokenError("token request to http://h/oauth/token was refused with HTTP 400 "
                                "(invalid_grant: revoked)")
    assert refused.status_code == 400 and errors.affects_every_record(refused)
    lost = errors.TokenError("token request to http://h/oauth/token failed: Timeout was reached")
    assert lost.status_code is None and not errors.affects_every_record(lost)
    server = errors.TokenError("token request to http://h/oauth/token was refused with HTTP 503")
    assert server.status_code == 503 and not errors.affects_every_record(server)
