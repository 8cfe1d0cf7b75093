"""isthmus.Sandbox driven by a peer client (requests); every check reads stats() as ground truth."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.parse

import pytest
import requests

import isthmus
from isthmus import Sandbox


def endpoint_count(stats: dict, endpoint: str, status: int) -> int:
    return int(stats["requests"]["by_endpoint"].get(endpoint, {}).get(str(status), 0))


@pytest.fixture()
def api():
    with Sandbox(records=250, seed=7) as sandbox:
        yield sandbox


def test_sandbox_is_exported():
    assert "Sandbox" in isthmus.__all__
    assert isthmus.Sandbox is Sandbox


def test_test_endpoints_and_stats(api):
    s = requests.Session()
    assert s.get(api.url + "/json").json()["ok"] is True
    assert s.get(api.url + "/status/503").status_code == 503
    assert len(s.get(api.url + "/bytes/1000").content) == 1000
    echo = s.post(api.url + "/echo?x=1", data="payload", headers={"X-Test": "yes"}).json()
    assert echo["body"] == "payload" and echo["query"] == {"x": "1"} and echo["headers"]["x-test"] == "yes"
    assert s.get(api.url + "/gzip").json()["gzipped"] is True  # requests decodes Content-Encoding
    assert s.get(api.url + "/deflate").json()["deflated"] is True
    r = s.get(api.url + "/redirect/2")
    assert r.status_code == 200 and len(r.history) == 2
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        s.get(api.url + "/truncated")
    with pytest.raises(ValueError):
        requests.get(api.url + "/malformed-json").json()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(api.url + "/reset")
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(api.url + "/stall", timeout=0.3)
    st = api.stats()
    assert endpoint_count(st, "GET /json", 200) == 1
    assert endpoint_count(st, "GET /status/{code}", 503) == 1
    assert endpoint_count(st, "GET /redirect/{n}", 302) == 2
    assert endpoint_count(st, "POST /echo", 200) == 1
    assert st["connections"]["accepted"] >= 4
    api.reset_stats()
    assert api.stats()["requests"]["total"] == 0


def test_delay_waits(api):
    t0 = time.monotonic()
    assert requests.get(api.url + "/delay/200").status_code == 200
    assert time.monotonic() - t0 >= 0.2


def collect(api, first_url, style, params=None, headers=None):
    """Walks every page with the given pagination style; returns ids in order."""
    ids, url, params = [], first_url, dict(params or {})
    page = 1
    for _ in range(1000):
        r = requests.get(url, params=params, headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        ids += [rec["id"] for rec in body["data"]]
        if style == "cursor":
            if not body["meta"]["has_more"]:
                return ids
            params["cursor"] = body["meta"]["next_cursor"]
        elif style == "next_url":
            if body["next"] is None:
                return ids
            url, params = body["next"], {}
        elif style == "link":
            if "next" not in r.links:
                return ids
            url, params = r.links["next"]["url"], {}
        elif style == "offset":
            params["offset"] = body["meta"]["offset"] + len(body["data"])
            if params["offset"] >= body["meta"]["total"]:
                return ids
        elif style == "page":
            if page >= body["meta"]["total_pages"]:
                return ids
            page += 1
            params["page"] = page
    raise AssertionError("pagination did not end")


@pytest.mark.parametrize("style", ["cursor", "offset", "page", "link", "next_url"])
def test_every_pagination_style_reads_every_record_once(style):
    with Sandbox(records=95, pagination=style, max_page_size=10) as api:
        ids = collect(api, api.url + "/v1/contacts", style, {"limit": 50})
        assert len(ids) == 95 and len(set(ids)) == 95 and ids == sorted(ids)
        st = api.stats()
        assert st["records_served"]["contacts"] == 95
        assert endpoint_count(st, "GET /v1/contacts", 200) == 10  # limit 50 clamped to 10


def test_records_are_deterministic_nested_and_unicode():
    with Sandbox(records=1_000_000, seed=3) as a, Sandbox(records=1_000_000, seed=3) as b:
        ra = requests.get(a.url + "/v1/contacts?limit=5").json()["data"]
        rb = requests.get(b.url + "/v1/contacts?limit=5").json()["data"]
        assert ra == rb
        rec = ra[0]
        assert rec["id"] == "con_0000000001"
        assert isinstance(rec["address"], dict) and rec["updated_at"].endswith("Z")
        one = requests.get(a.url + "/v1/deals/deal_0000999999").json()
        assert one["id"] == "deal_0000999999" and "amount" in one
        text = json.dumps(requests.get(a.url + "/v1/contacts?limit=100").json(), ensure_ascii=False)
        assert any(ord(ch) > 127 for ch in text)
    with Sandbox(records=10, seed=4) as c:
        assert requests.get(c.url + "/v1/contacts?limit=5").json()["data"] != ra


def test_updated_since_and_changes_over_time():
    with Sandbox(records=1000, updates_per_second=50, pagination="cursor", max_page_size=100) as api:
        started = time.time()
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started - 1)) + "Z"
        deadline = time.time() + 10
        changed = []
        while time.time() < deadline and not changed:
            changed = collect(api, api.url + "/v1/contacts", "cursor", {"updated_since": since, "limit": 100})
            if not changed:
                time.sleep(0.2)
        assert changed, "no record changed within 10 s"
        recs = [requests.get(api.url + "/v1/contacts/" + i).json() for i in changed[:5]]
        assert all(r["version"] >= 2 for r in recs)
        # All of 2024 is before `since`: the base records are filtered out.
        assert len(changed) < 1000
        everything = collect(api, api.url + "/v1/contacts", "cursor", {"updated_since": "2024-07-01T00:00:00Z"})
        assert 400 < len(everything) <= 1000


def test_writes_count_unique_duplicates_and_honour_idempotency(api):
    url = api.url + "/v1/contacts"
    assert requests.post(url, json={"id": "a", "name": "Ann"}).status_code == 201
    assert requests.post(url, json={"id": "a", "name": "Ann"}).status_code == 200  # a duplicate delivery
    r1 = requests.post(url, json={"id": "b"}, headers={"Idempotency-Key": "k1"})
    r2 = requests.post(url, json={"id": "b"}, headers={"Idempotency-Key": "k1"})
    assert r1.json() == r2.json() and r2.headers["Idempotent-Replayed"] == "true"
    assert requests.post(url, json={"id": "c"}, headers={"Idempotency-Key": "k1"}).status_code == 422
    batch = requests.post(url + "/batch", json={"records": [{"id": "c"}, {"id": "d"}, {"id": "a"}]}).json()
    assert batch == {"received": 3, "created": 2, "duplicates": 1, "ids": ["c", "d", "a"]}
    assert requests.post(api.url + "/v1/deals/batch", json=[{"external_id": 9}]).status_code == 200
    assert requests.post(url, data="not json").status_code == 400
    st = api.stats()
    assert st["records_received"]["contacts"] == {"unique": 4, "duplicate": 2, "idempotent_replays": 1}
    assert st["records_received"]["deals"]["unique"] == 1


def test_a_record_without_an_id_is_named_by_its_content_whatever_the_key_order(api):
    url = api.url + "/v1/companies/batch"
    first = requests.post(url, json={"data": [{"name": "Acme", "size": 12}, {"name": "Beta"}]}).json()
    again = requests.post(url, data='[{"size": 12, "name": "Acme"}]',
                          headers={"Content-Type": "application/json"}).json()
    assert first["created"] == 2 and first["ids"][0].startswith("sha256:")
    assert again == {"received": 1, "created": 0, "duplicates": 1, "ids": first["ids"][:1]}
    assert requests.post(url, json={"records": [1]}).status_code == 422  # each record an object
    assert requests.post(url, json={"records": {"id": 1}}).status_code == 422


@pytest.mark.parametrize("mode", ["api_key_header", "api_key_query", "basic", "bearer"])
def test_static_auth_modes(mode):
    opts = {"auth": mode.split("_header")[0].split("_query")[0]}
    if mode == "api_key_query":
        opts["api_key_in"] = "query"
    with Sandbox(**opts) as api:
        url = api.url + "/v1/companies"
        r = requests.get(url)
        assert r.status_code == 401 and "WWW-Authenticate" in r.headers
        good = {
            "api_key_header": dict(headers={"X-API-Key": api.api_key}),
            "api_key_query": dict(params={"api_key": api.api_key}),
            "basic": dict(auth=(api.username, api.password)),
            "bearer": dict(headers={"Authorization": "Bearer " + api.bearer_token}),
        }[mode]
        bad = {
            "api_key_header": dict(headers={"X-API-Key": "nope"}),
            "api_key_query": dict(params={"api_key": "nope"}),
            "basic": dict(auth=(api.username, "nope")),
            "bearer": dict(headers={"Authorization": "Bearer nope"}),
        }[mode]
        assert requests.get(url, **good).status_code == 200
        assert requests.get(url, **bad).status_code == 401
        st = api.stats()
        assert endpoint_count(st, "GET /v1/companies", 401) == 2
        assert endpoint_count(st, "GET /v1/companies", 200) == 1


def test_oauth2_client_credentials_expiry_and_revocation():
    with Sandbox(auth="oauth2", token_lifetime=0.5) as api:
        bad = requests.post(api.token_url, data={"grant_type": "client_credentials",
                                                 "client_id": api.client_id, "client_secret": "x"})
        assert bad.status_code == 401
        tok = requests.post(api.token_url, data={"grant_type": "client_credentials"},
                            auth=(api.client_id, api.client_secret)).json()
        assert tok["token_type"] == "Bearer"
        h = {"Authorization": "Bearer " + tok["access_token"]}
        assert requests.get(api.url + "/v1/deals", headers=h).status_code == 200
        time.sleep(0.6)
        expired = requests.get(api.url + "/v1/deals", headers=h)
        assert expired.status_code == 401 and "expired" in expired.headers["WWW-Authenticate"]
        tok2 = requests.post(api.token_url, data={"grant_type": "client_credentials", "client_id": api.client_id,
                                                  "client_secret": api.client_secret}).json()
        h2 = {"Authorization": "Bearer " + tok2["access_token"]}
        assert requests.post(api.revoke_url, data={"token": tok2["access_token"]}).status_code == 200
        assert requests.get(api.url + "/v1/deals", headers=h2).status_code == 401
        st = api.stats()
        assert st["tokens"]["issued"] == 2 and st["tokens"]["revoked"] == 1
        assert endpoint_count(st, "GET /v1/deals", 401) == 2


def test_oauth2_authorization_code_with_pkce_and_rotating_refresh():
    with Sandbox(auth="oauth2", rotate_refresh_tokens=True) as api:
        verifier = "v" * 50
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        redirect = "http://127.0.0.1:1/callback"
        r = requests.get(api.authorize_url, allow_redirects=False, params={
            "response_type": "code", "client_id": api.client_id, "redirect_uri": redirect, "state": "xyz",
            "code_challenge": challenge, "code_challenge_method": "S256"})
        assert r.status_code == 302
        q = urllib.parse.parse_qs(urllib.parse.urlparse(r.headers["Location"]).query)
        assert q["state"] == ["xyz"]
        code = q["code"][0]
        wrong = requests.post(api.token_url, data={"grant_type": "authorization_code", "code": code,
                                                   "redirect_uri": redirect, "client_id": api.client_id,
                                                   "code_verifier": "w" * 50})
        assert wrong.status_code == 400  # and the code is now spent
        r = requests.get(api.authorize_url, allow_redirects=False, params={
            "response_type": "code", "client_id": api.client_id, "redirect_uri": redirect,
            "code_challenge": challenge, "code_challenge_method": "S256"})
        code = urllib.parse.parse_qs(urllib.parse.urlparse(r.headers["Location"]).query)["code"][0]
        tok = requests.post(api.token_url, data={"grant_type": "authorization_code", "code": code,
                                                 "redirect_uri": redirect, "client_id": api.client_id,
                                                 "code_verifier": verifier}).json()
        rt1 = tok["refresh_token"]
        new = requests.post(api.token_url, data={"grant_type": "refresh_token", "refresh_token": rt1,
                                                 "client_id": api.client_id}).json()
        assert new["refresh_token"] != rt1
        reuse = requests.post(api.token_url, data={"grant_type": "refresh_token", "refresh_token": rt1})
        assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
        h = {"Authorization": "Bearer " + new["access_token"]}
        assert requests.get(api.url + "/v1/contacts", headers=h).status_code == 200
        st = api.stats()
        assert st["tokens"]["refreshed"] == 1
        assert st["tokens"]["by_grant"] == {"authorization_code": 1, "refresh_token": 1}


def test_hmac_signed_requests():
    with Sandbox(signing_secret="s3cret") as api:
        target = "/v1/contacts?limit=2"
        assert requests.get(api.url + target).status_code == 401
        ts = str(int(time.time()))
        sig = hmac.new(b"s3cret", f"{ts}.GET.{target}.".encode(), hashlib.sha256).hexdigest()
        ok = requests.get(api.url + target, headers={"X-Signature-Timestamp": ts, "X-Signature": "sha256=" + sig})
        assert ok.status_code == 200
        assert endpoint_count(api.stats(), "GET /v1/contacts", 200) == 1


@pytest.mark.parametrize("retry_after", ["seconds", "http-date"])
def test_rate_limit_gcra_and_429_headers(retry_after):
    with Sandbox(rate_limit=5, burst=3, retry_after=retry_after) as api:
        s = requests.Session()
        codes = [s.get(api.url + "/v1/contacts?limit=1") for _ in range(5)]
        assert [r.status_code for r in codes] == [200, 200, 200, 429, 429]
        assert [r.headers["X-RateLimit-Remaining"] for r in codes[:3]] == ["2", "1", "0"]
        limited = codes[3]
        assert limited.headers["X-RateLimit-Limit"] == "3"
        assert "RateLimit" in limited.headers and "RateLimit-Policy" in limited.headers
        # Exact: the next slot frees one emission interval (0.2 s) after the last accepted call,
        # not at a whole second; the policy's q/w is the rate (5/s).
        assert 0.15 < float(codes[2].headers["X-RateLimit-Reset"]) <= 0.2
        assert float(limited.headers["X-RateLimit-Reset"]) <= 0.2
        assert limited.headers["RateLimit-Policy"] == '"burst";q=5;w=1'
        ra = limited.headers["Retry-After"]
        if retry_after == "seconds":
            assert ra == "1"
        else:
            assert ra.endswith("GMT")
        time.sleep(0.25)  # one emission interval (0.2 s) frees one request
        assert s.get(api.url + "/v1/contacts?limit=1").status_code == 200
        st = api.stats()
        assert st["rate_limited"] == 2
        assert endpoint_count(st, "GET /v1/contacts", 429) == 2
        arrivals = [a for a in st["arrivals"] if a["endpoint"] == "GET /v1/contacts"]
        assert arrivals[-1]["t"] - arrivals[3]["t"] >= 0.2


def test_daily_quota():
    with Sandbox(daily_quota=2, auth="api_key") as api:
        h = {"X-API-Key": api.api_key}
        codes = [requests.get(api.url + "/v1/deals", headers=h).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        assert api.stats()["rate_limited"] == 1


def test_silent_overload_answers_misleading_errors():
    with Sandbox(overload_capacity=3, overload_behavior="errors") as api:
        s = requests.Session()
        codes = [s.get(api.url + "/v1/contacts?limit=1").status_code for _ in range(10)]
        assert codes[:3] == [200, 200, 200] or codes.count(200) >= 3
        assert all(c in (200, 500, 502, 503) for c in codes) and 429 not in codes
        st = api.stats()
        assert st["rate_limited"] == 0
        assert sum(v for k, v in st["faults"].items() if k.startswith("overload_")) == codes.count(500) + \
            codes.count(502) + codes.count(503) > 0


def test_faults_are_deterministic_by_seed():
    faults = {"/v1/contacts": {"error_rate": {"503": 0.3, "500": 0.1}}}

    def run():
        with Sandbox(seed=11, faults=faults) as api:
            s = requests.Session()
            codes = [s.get(api.url + "/v1/contacts?limit=1").status_code for _ in range(40)]
            return codes, api.stats()

    a, st = run()
    b, _ = run()
    assert a == b
    assert 503 in a and 200 in a
    assert endpoint_count(st, "GET /v1/contacts", 503) == a.count(503)
    assert st["faults"].get("status_503", 0) == a.count(503)


def test_fault_kinds_reset_truncate_malformed_latency():
    with Sandbox(faults={"/v1/deals": {"reset": 1.0}, "/v1/companies": {"truncate": 1.0},
                         "/v1/contacts": {"malformed": 1.0, "latency_ms": 150}}) as api:
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(api.url + "/v1/deals")
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            requests.get(api.url + "/v1/companies")
        t0 = time.monotonic()
        r = requests.get(api.url + "/v1/contacts")
        assert time.monotonic() - t0 >= 0.15
        with pytest.raises(ValueError):
            r.json()
        assert api.stats()["faults"] == {"reset": 1, "truncate": 1, "malformed": 1, "latency": 1}


@pytest.mark.parametrize("field,value,valid", [
    ("records", -1, "integer from 0"),
    ("pagination", "bogus", "one of"),
    ("auth", "kerberos", "one of"),
    ("rate_limit", "fast", "number"),
    ("port", 70000, "integer from 0 to 65535"),
])
def test_bad_options_name_the_field_value_and_what_is_valid(field, value, valid):
    with pytest.raises(ValueError) as err:
        Sandbox(**{field: value})
    assert field in str(err.value) and repr(value) in str(err.value) and valid in str(err.value)


@pytest.mark.parametrize("options", [
    {"client_secret": "s3cr3t-" + "x" * 300},   # too long: a bad credential
    {"signing_secret": 12345678},                # wrong type
    {"client_secert": "s3cr3t-typo"},            # a misspelt credential option
])
def test_bad_options_never_show_a_credential(options):
    field, value = next(iter(options.items()))
    with pytest.raises(isthmus.ConfigError) as err:
        Sandbox(**options)
    assert field in str(err.value) and str(value)[:10] not in str(err.value)


def test_cxx_validates_too():
    with pytest.raises(ValueError, match="faults"):
        isthmus._core.SandboxServer("127.0.0.1", 0, 1, json.dumps({"faults": {"/x": {"reset": 2}}})).start()
    with pytest.raises(ValueError, match="threads"):
        isthmus._core.SandboxServer("127.0.0.1", 0, 0, "{}").start()


def test_malformed_http_gets_400(api):
    import socket
    with socket.create_connection(("127.0.0.1", api.port)) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        data = sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 400") and b"malformed" in data
    assert endpoint_count(api.stats(), "(malformed request)", 400) == 1


def test_webhooks_are_signed_and_retried_with_backoff():
    import http.server
    import threading

    received = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((dict((k.lower(), v) for k, v in self.headers.items()), body, time.time()))
            self.send_response(500 if len(received) <= 2 else 204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        with Sandbox(webhook_backoff=0.1, webhook_max_attempts=5) as api:
            reg = requests.post(api.url + "/v1/webhooks",
                                json={"url": f"http://127.0.0.1:{receiver.server_address[1]}/hook"})
            assert reg.status_code == 201
            secret = base64.b64decode(reg.json()["secret"][len("whsec_"):])
            assert requests.post(api.url + "/v1/contacts", json={"id": "w1", "name": "Zoë"}).status_code == 201
            deadline = time.time() + 10
            while time.time() < deadline and api.stats()["webhooks"].get("delivered", 0) < 1:
                time.sleep(0.05)
            st = api.stats()["webhooks"]
            assert st == {"delivered": 1, "failed_attempts": 2}
            assert len(received) == 3
            headers, body, _ = received[-1]
            signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
            expected = base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()
            assert headers["webhook-signature"] == "v1," + expected
            event = json.loads(body)
            assert event["type"] == "contacts.created" and event["data"]["name"] == "Zoë"
            assert received[0][0]["webhook-id"] == received[2][0]["webhook-id"]
            # Backoff: 0.1 s then 0.2 s between attempts.
            assert received[1][2] - received[0][2] >= 0.09 and received[2][2] - received[1][2] >= 0.19
    finally:
        receiver.shutdown()
        receiver.server_close()


@pytest.mark.parametrize("behavior", ["stall", "mixed"])
def test_silent_overload_stalls(behavior):
    with Sandbox(overload_capacity=2, overload_behavior=behavior, seed=1) as api:
        outcomes = []
        for _ in range(12):
            try:
                outcomes.append(requests.get(api.url + "/v1/deals?limit=1", timeout=0.3).status_code)
            except requests.exceptions.ReadTimeout:
                outcomes.append("stall")
        assert 429 not in outcomes
        faults = api.stats()["faults"]
        assert faults.get("overload_stall", 0) == outcomes.count("stall") > 0
        assert outcomes[:2] == [200, 200]  # within capacity
        allowed = {200, "stall"} if behavior == "stall" else {200, "stall", 500, 502, 503}
        assert set(outcomes) <= allowed


@pytest.mark.parametrize("latency,low,high", [
    ({"min": 50, "max": 120}, 0.05, 1.0),
    ({"median": 60, "p99": 200}, 0.0, 3.0),
])
def test_latency_distributions(latency, low, high):
    with Sandbox(faults={"GET /v1/companies": {"latency_ms": latency}}) as api:
        s = requests.Session()
        t0 = time.monotonic()
        for _ in range(5):
            assert s.get(api.url + "/v1/companies?limit=1").status_code == 200
        elapsed = time.monotonic() - t0
        assert 5 * low <= elapsed <= 5 * high
        assert api.stats()["faults"]["latency"] == 5


def test_server_options_credentials_and_limits():
    with Sandbox(threads=2, auth="oauth2", client_id="my-app", client_secret="hunter2", default_page_size=7,
                 max_body_bytes=2048, max_arrivals=3) as api:
        assert api.client_id == "my-app"
        tok = requests.post(api.token_url, data={"grant_type": "client_credentials"}, auth=("my-app", "hunter2"))
        assert tok.status_code == 200
        h = {"Authorization": "Bearer " + tok.json()["access_token"]}
        assert len(requests.get(api.url + "/v1/contacts", headers=h).json()["data"]) == 7
        big = requests.post(api.url + "/echo", data="x" * 5000)
        assert big.status_code == 413
        st = api.stats()
        assert len(st["arrivals"]) == 3 and st["arrivals_dropped"] == 0
        requests.get(api.url + "/json")
        assert api.stats()["arrivals_dropped"] == 1
    with socket_port() as port:
        with Sandbox(port=port) as fixed:
            assert fixed.url == f"http://127.0.0.1:{port}"


class socket_port:
    """A port that was free a moment ago."""

    def __enter__(self):
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc):
        return False


# --- tenants: many customers in one sandbox ---------------------------------------------------

def key_of(tenant):
    return {"X-API-Key": tenant.api_key}


def client_token(api, tenant):
    r = requests.post(api.token_url, data={"grant_type": "client_credentials"},
                      auth=(tenant.client_id, tenant.client_secret))
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def test_without_tenants_the_sandbox_has_one_customer():
    with Sandbox(auth="api_key") as api:
        assert api.tenants == ()
        assert api.api_key == "sandbox-api-key"
        assert requests.get(api.url + "/v1/contacts", headers={"X-API-Key": api.api_key}).status_code == 200
        st = api.stats()
        assert "tenants" not in st and "without_tenant" not in st["requests"]


def test_tenants_have_their_own_credentials_and_records():
    with Sandbox(tenants=3, auth="api_key", records=30, seed=5) as api:
        assert [t.index for t in api.tenants] == [0, 1, 2]
        for field in ("client_id", "client_secret", "api_key", "username", "password", "bearer_token"):
            assert len({getattr(t, field) for t in api.tenants}) == 3, field
        with pytest.raises(AttributeError, match="tenants"):
            api.api_key  # noqa: B018 - one key for all would let any tenant read any other
        pages = [requests.get(api.url + "/v1/contacts?limit=5", headers=key_of(t)).json()["data"] for t in api.tenants]
        assert [rec["id"] for rec in pages[0]] == [rec["id"] for rec in pages[1]]  # same ids, other records
        assert pages[0] != pages[1] and pages[1] != pages[2] and pages[0] != pages[2]
        one = requests.get(api.url + "/v1/contacts/con_0000000002", headers=key_of(api.tenants[2])).json()
        assert one == pages[2][1]
        assert requests.get(api.url + "/v1/contacts", headers={"X-API-Key": "nope"}).status_code == 401
        st = api.stats()
        assert [t["records_served"]["contacts"] for t in st["tenants"]] == [5, 5, 6]
        assert st["records_served"]["contacts"] == 16


def test_a_token_reads_the_data_of_the_tenant_it_was_issued_to():
    with Sandbox(tenants=2, auth="oauth2", seed=9) as api, \
            Sandbox(tenants=2, auth="api_key", seed=9) as same_seed:
        a, b = api.tenants
        # Tenant 0's client id with tenant 1's secret is nobody.
        wrong = requests.post(api.token_url, data={"grant_type": "client_credentials"},
                              auth=(a.client_id, b.client_secret))
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
        for i, tenant in enumerate(api.tenants):
            h = {"Authorization": "Bearer " + client_token(api, tenant)}
            got = requests.get(api.url + "/v1/deals?limit=3", headers=h).json()["data"]
            # Records come from (seed, tenant): the same tenant of another sandbox serves the same.
            expected = requests.get(same_seed.url + "/v1/deals?limit=3",
                                    headers=key_of(same_seed.tenants[i])).json()["data"]
            assert got == expected
        st = api.stats()["tenants"]
        assert [t["tokens"]["issued"] for t in st] == [1, 1]
        assert [t["records_served"]["deals"] for t in st] == [3, 3]


def test_tenant_records_sizes_each_tenant():
    with Sandbox(tenants=3, auth="api_key", records=10, pagination="offset", tenant_records={0: 120}) as api:
        totals = [requests.get(api.url + "/v1/companies", headers=key_of(t)).json()["meta"]["total"]
                  for t in api.tenants]
        assert totals == [120, 10, 10] and [t.records for t in api.tenants] == [120, 10, 10]
        assert requests.get(api.url + "/v1/companies/com_0000000100", headers=key_of(api.tenants[1])).status_code == 404
    with Sandbox(tenants=2, auth="basic", tenant_records=[0, 4]) as api:
        counts = [len(requests.get(api.url + "/v1/deals", auth=(t.username, t.password)).json()["data"])
                  for t in api.tenants]
        assert counts == [0, 4]


def test_imports_are_kept_per_tenant():
    with Sandbox(tenants=2, auth="bearer") as api:
        a, b = ({"Authorization": "Bearer " + t.bearer_token} for t in api.tenants)
        url = api.url + "/v1/contacts"
        assert requests.post(url, json={"id": "x"}, headers=a).status_code == 201
        assert requests.post(url, json={"id": "x"}, headers=b).status_code == 201  # another customer's record
        assert requests.post(url, json={"id": "x"}, headers=a).status_code == 200  # a duplicate for tenant 0
        # The same Idempotency-Key means nothing across tenants.
        r1 = requests.post(url, json={"id": "y"}, headers={**a, "Idempotency-Key": "k"})
        r2 = requests.post(url, json={"id": "z"}, headers={**b, "Idempotency-Key": "k"})
        r3 = requests.post(url, json={"id": "y"}, headers={**a, "Idempotency-Key": "k"})
        assert r1.status_code == r2.status_code == 201 and r3.headers["Idempotent-Replayed"] == "true"
        st = api.stats()
        first, second = (t["records_received"]["contacts"] for t in st["tenants"])
        assert first == {"unique": 2, "duplicate": 1, "idempotent_replays": 1}
        assert second == {"unique": 2, "duplicate": 0, "idempotent_replays": 0}
        assert st["records_received"]["contacts"] == {"unique": 4, "duplicate": 1, "idempotent_replays": 1}


def test_per_tenant_and_app_wide_limits():
    # Rates so low that nothing refills during the test: the counts follow from the bursts alone.
    with Sandbox(tenants=3, auth="api_key", rate_limit=0.01, burst=2, app_rate_limit=0.01, app_burst=4) as api:
        s = requests.Session()

        def get(tenant):
            return s.get(api.url + "/v1/contacts?limit=1", headers=key_of(api.tenants[tenant]))

        t0 = [get(0) for _ in range(3)]
        assert [r.status_code for r in t0] == [200, 200, 429]
        assert t0[2].json()["error"] == "rate_limited"  # tenant 0's own burst; the app's is untouched
        assert '"app";q=' in t0[0].headers["RateLimit-Policy"] and '"burst";q=' in t0[0].headers["RateLimit-Policy"]
        t1 = [get(1) for _ in range(2)]
        assert [r.status_code for r in t1] == [200, 200]  # the app's burst of 4 is now spent
        refused = get(2)
        assert refused.status_code == 429 and refused.json()["error"] == "app_rate_limited"
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.headers["X-RateLimit-Remaining"] == "0" and refused.headers["X-RateLimit-Limit"] == "4"
        assert get(2).json()["error"] == "app_rate_limited"  # tenant 2's own burst is whole, the app's spent
        assert get(1).json()["error"] == "rate_limited"  # tenant 1 spent its own first
        st = api.stats()
        per = st["tenants"]
        assert [t["rate_limited"] for t in per] == [1, 1, 2]
        assert [t["app_rate_limited"] for t in per] == [0, 0, 2]
        assert st["rate_limited"] == 4 and st["app_rate_limited"] == 2
        assert [t["requests"]["by_status"].get("429", 0) for t in per] == [1, 1, 2]
        assert [t["requests"]["by_status"].get("200", 0) for t in per] == [2, 2, 0]


def test_app_limit_alone_and_without_tenants():
    with Sandbox(app_rate_limit=0.01, app_burst=2) as api:
        codes = [requests.get(api.url + "/v1/deals").status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        st = api.stats()
        assert st["rate_limited"] == 1 and st["app_rate_limited"] == 1


def test_per_tenant_stats_sum_to_the_totals():
    with Sandbox(tenants=3, auth="oauth2", rate_limit=0.01, burst=4) as api:
        s = requests.Session()
        for i, tenant in enumerate(api.tenants):
            h = {"Authorization": "Bearer " + client_token(api, tenant)}
            s.post(api.url + "/v1/deals/batch", json=[{"id": "d1"}, {"id": f"d{i}"}], headers=h)
            for _ in range(2 + i):
                s.get(api.url + "/v1/contacts?limit=2", headers=h)
        s.get(api.url + "/json")  # nobody's
        s.get(api.url + "/v1/contacts", headers={"Authorization": "Bearer nope"})  # nobody's
        s.post(api.token_url, data={"grant_type": "client_credentials"}, auth=("who", "knows"))  # nobody's
        st = api.stats()
        per = st["tenants"]
        assert sum(t["requests"]["total"] for t in per) + st["requests"]["without_tenant"] == st["requests"]["total"]
        assert st["requests"]["without_tenant"] == 3
        assert [t["requests"]["total"] for t in per] == [4, 5, 6]  # token, reads, batch
        for key in ("rate_limited", "app_rate_limited"):
            assert sum(t[key] for t in per) == st[key]
        assert [t["rate_limited"] for t in per] == [0, 0, 1]  # burst 4: the third tenant's 5th call
        assert sum(t["records_served"]["contacts"] for t in per) == st["records_served"]["contacts"] == 16
        assert sum(t["tokens"]["issued"] for t in per) == st["tokens"]["issued"] == 3
        for field in ("unique", "duplicate"):
            assert sum(t["records_received"]["deals"][field] for t in per) == st["records_received"]["deals"][field]
        assert [t["records_received"]["deals"]["unique"] for t in per] == [2, 1, 2]
        statuses = {}
        for t in per:
            for status, n in t["requests"]["by_status"].items():
                statuses[status] = statuses.get(status, 0) + n
        assert statuses["200"] == st["requests"]["by_status"]["200"] - 1  # /json
        assert {a.get("tenant") for a in st["arrivals"]} == {0, 1, 2, None}


def test_revoking_one_tenant_leaves_the_others_alone():
    with Sandbox(tenants=2, auth="oauth2") as api:
        a, b = api.tenants
        ha = {"Authorization": "Bearer " + client_token(api, a)}
        hb = {"Authorization": "Bearer " + client_token(api, b)}
        url = api.url + "/v1/contacts?limit=1"
        assert a.revoke_tokens() == 1
        refused = requests.get(url, headers=ha)
        assert refused.status_code == 401 and "revoked" in refused.headers["WWW-Authenticate"]
        assert requests.get(url, headers=hb).status_code == 200
        ha = {"Authorization": "Bearer " + client_token(api, a)}  # a client can ask again
        assert requests.get(url, headers=ha).status_code == 200

        assert a.revoke_access() == 1  # the customer disconnects the app
        assert requests.get(url, headers=ha).status_code == 401
        again = requests.post(api.token_url, data={"grant_type": "client_credentials"},
                              auth=(a.client_id, a.client_secret))
        assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
        assert requests.get(url, headers=hb).status_code == 200
        a.restore_access()
        assert requests.get(url, headers={"Authorization": "Bearer " + client_token(api, a)}).status_code == 200
        st = api.stats()["tenants"]
        assert [t["tokens"]["revoked"] for t in st] == [2, 0]
        assert [t["tokens"]["issued"] for t in st] == [3, 1]


def test_a_refresh_token_of_a_disconnected_tenant_fails_until_it_links_again():
    with Sandbox(tenants=2, auth="oauth2") as api:
        redirect = "http://127.0.0.1:1/callback"

        def link(tenant):
            r = requests.get(api.authorize_url, allow_redirects=False, params={
                "response_type": "code", "client_id": tenant.client_id, "redirect_uri": redirect})
            code = urllib.parse.parse_qs(urllib.parse.urlparse(r.headers["Location"]).query)["code"][0]
            tok = requests.post(api.token_url, data={"grant_type": "authorization_code", "code": code,
                                                     "redirect_uri": redirect},
                                auth=(tenant.client_id, tenant.client_secret))
            assert tok.status_code == 200, tok.text
            return tok.json()

        def refresh(tenant, token):
            return requests.post(api.token_url, data={"grant_type": "refresh_token", "refresh_token": token},
                                 auth=(tenant.client_id, tenant.client_secret))

        a, b = api.tenants
        ta, tb = link(a), link(b)
        # A code of tenant 0 cannot be exchanged by tenant 1.
        r = requests.get(api.authorize_url, allow_redirects=False, params={
            "response_type": "code", "client_id": a.client_id, "redirect_uri": redirect})
        code = urllib.parse.parse_qs(urllib.parse.urlparse(r.headers["Location"]).query)["code"][0]
        stolen = requests.post(api.token_url, data={"grant_type": "authorization_code", "code": code,
                                                    "redirect_uri": redirect}, auth=(b.client_id, b.client_secret))
        assert stolen.status_code == 401
        assert api.revoke_access(0) == 2  # its access and refresh tokens
        assert refresh(a, ta["refresh_token"]).json()["error"] == "invalid_grant"
        assert refresh(b, tb["refresh_token"]).status_code == 200
        fresh = link(a)  # linking again gives the access back
        assert refresh(a, fresh["refresh_token"]).status_code == 200


def test_no_tenant_secret_shows_in_another_tenants_answers_reprs_or_stats():
    with Sandbox(tenants=2, auth="oauth2") as api:
        a, b = api.tenants
        secrets = [a.client_secret, a.api_key, a.password, a.bearer_token]
        token_a = client_token(api, a)
        answers = [requests.post(api.token_url, data={"grant_type": "client_credentials"},
                                 auth=(b.client_id, b.client_secret)).text]
        hb = {"Authorization": "Bearer " + json.loads(answers[0])["access_token"]}
        answers.append(requests.get(api.url + "/v1/contacts?limit=50", headers=hb).text)
        answers.append(requests.get(api.url + "/v1/contacts/con_9999999999", headers=hb).text)
        answers.append(requests.post(api.token_url, data={"grant_type": "client_credentials"},
                                     auth=(b.client_id, a.client_secret)).text)
        answers.append(requests.post(api.url + "/v1/contacts", data="{", headers=hb).text)
        for text in answers + [repr(api), repr(a), repr(b), json.dumps(api.stats())]:
            for secret in secrets + [token_a]:
                assert secret not in text
        assert b.client_secret not in repr(b) and b.api_key not in repr(api.tenants)


@pytest.mark.parametrize("options,field", [
    ({"tenants": 0, "auth": "api_key"}, "tenants"),
    ({"tenants": -2, "auth": "api_key"}, "tenants"),
    ({"tenants": 2.5, "auth": "api_key"}, "tenants"),
    ({"tenants": 2}, "tenants"),  # auth none: no credential to find the tenant by
    ({"tenants": 2, "auth": "api_key", "rate_limit": -1}, "rate_limit"),
    ({"tenants": 2, "auth": "api_key", "app_rate_limit": -5}, "app_rate_limit"),
    ({"tenants": 2, "auth": "api_key", "app_burst": 0}, "app_burst"),
    ({"tenants": 2, "auth": "api_key", "tenant_records": [1, 2, 3]}, "tenant_records"),
    ({"tenants": 2, "auth": "api_key", "tenant_records": {"7": 1}}, "tenant_records"),
    ({"tenants": 2, "auth": "api_key", "tenant_records": [1, -1]}, "tenant_records"),
    ({"auth": "api_key", "tenant_records": [1]}, "tenant_records"),
    ({"tenants": 2, "auth": "oauth2", "client_secret": "s3cr3t-shared"}, "client_secret"),
])
def test_bad_tenant_options_name_the_field(options, field):
    with pytest.raises(isthmus.ConfigError) as err:
        Sandbox(**options)
    assert field in str(err.value)
    assert "s3cr3t" not in str(err.value)


@pytest.mark.parametrize("config,field", [
    ({"tenants": 0, "auth": "api_key"}, "tenants"),
    ({"tenants": 2, "auth": "api_key", "app_rate_limit": -1}, "app_rate_limit"),
    ({"tenants": 2, "auth": "api_key", "api_key": "s3cr3t-shared"}, "api_key"),
    ({"tenants": 2, "auth": "api_key", "tenant_records": {"2": 5}}, "tenant_records"),
])
def test_cxx_validates_tenant_options_too(config, field):
    server = isthmus._core.SandboxServer("127.0.0.1", 0, 1, json.dumps(config))
    with pytest.raises(isthmus.ConfigError) as err:
        server.start()
    assert field in str(err.value) and "s3cr3t" not in str(err.value)


def test_revoking_names_a_bad_tenant():
    api = Sandbox(tenants=2, auth="api_key")
    with pytest.raises(RuntimeError, match="not running"):
        api.revoke_tokens(0)
    with api:
        for bad in (2, -1, None, "0", True):
            with pytest.raises(isthmus.ConfigError, match="tenant="):
                api.revoke_access(bad)
        with pytest.raises(isthmus.ConfigError, match="tenant=5"):
            api._server.revoke_tokens(5)  # the core checks too
    with Sandbox(auth="api_key") as single:
        assert single.revoke_tokens() == 0
        single.revoke_access()
        assert requests.get(single.url + "/v1/deals", headers={"X-API-Key": single.api_key}).status_code == 401


def test_webhooks_are_per_tenant():
    import http.server
    import threading

    received = {0: [], 1: []}

    def receiver(tenant):
        class Hook(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                received[tenant].append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    servers = [receiver(0), receiver(1)]
    try:
        with Sandbox(tenants=2, auth="api_key") as api:
            for tenant, server in zip(api.tenants, servers):
                url = f"http://127.0.0.1:{server.server_address[1]}/hook"
                registered = requests.post(api.url + "/v1/webhooks", json={"url": url}, headers=key_of(tenant))
                assert registered.status_code == 201
            listed = requests.get(api.url + "/v1/webhooks", headers=key_of(api.tenants[1])).json()["data"]
            assert len(listed) == 1 and str(servers[1].server_address[1]) in listed[0]["url"]
            assert requests.post(api.url + "/v1/contacts", json={"id": "only-0"},
                                 headers=key_of(api.tenants[0])).status_code == 201
            deadline = time.time() + 10
            while time.time() < deadline and api.stats()["webhooks"].get("delivered", 0) < 1:
                time.sleep(0.05)
            assert [e["data"]["id"] for e in received[0]] == ["only-0"]
            assert received[1] == [] and api.stats()["webhooks"] == {"delivered": 1}
            # Tenant 1 cannot delete tenant 0's webhook.
            hook0 = requests.get(api.url + "/v1/webhooks", headers=key_of(api.tenants[0])).json()["data"][0]["id"]
            gone = requests.delete(api.url + "/v1/webhooks/" + hook0, headers=key_of(api.tenants[1]))
            assert gone.status_code == 404
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
