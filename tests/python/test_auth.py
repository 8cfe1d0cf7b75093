"""Credentials end to end: against the sandbox's OAuth2 provider, botocore's SigV4 signer,
PyJWT, RFC vectors, the encrypted token store, webhook verification and redaction."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

import isthmus
from conftest import authorization_code_refresh_token, wait_until
from fault_proxy import FaultProxy
from isthmus import _core

KEY = bytes(range(32)).hex()


@pytest.fixture
def token_key(monkeypatch):
    monkeypatch.setenv("ISTHMUS_TOKEN_KEY", KEY)
    return KEY


def oauth_sandbox(**options):
    return isthmus.Sandbox(auth="oauth2", records=50, **options)


# ---- static credentials ---------------------------------------------------------------------

@pytest.mark.parametrize("where", ["header", "query"])
def test_api_key_against_the_sandbox(where):
    with isthmus.Sandbox(auth="api_key", api_key_in=where) as api:
        good = isthmus.ApiKey(api.api_key) if where == "header" else isthmus.ApiKey(api.api_key, query="api_key")
        with isthmus.Client(api.url, auth=good) as c:
            assert c.get("/v1/contacts").status_code == 200
        with isthmus.Client(api.url, auth=isthmus.ApiKey("wrong", query="api_key") if where == "query"
                            else isthmus.ApiKey("wrong")) as c:
            assert c.get("/v1/contacts").status_code == 401


def test_basic_and_bearer_against_the_sandbox():
    with isthmus.Sandbox(auth="basic") as api:
        with isthmus.Client(api.url, auth=isthmus.BasicAuth(api.username, api.password)) as c:
            assert c.get("/v1/contacts").status_code == 200
        with isthmus.Client(api.url, auth=isthmus.BasicAuth(api.username, "nope")) as c:
            assert c.get("/v1/contacts").status_code == 401
    with isthmus.Sandbox(auth="bearer") as api:
        with isthmus.Client(api.url, auth=isthmus.BearerToken(api.bearer_token)) as c:
            assert c.get("/v1/contacts").status_code == 200


def test_reprs_redact_secrets():
    cases = [
        isthmus.ApiKey("key-SECRET"),
        isthmus.BasicAuth("user", "pw-SECRET"),
        isthmus.BearerToken("tok-SECRET"),
        isthmus.OAuth2ClientCredentials("https://x/token", "abc", "cs-SECRET"),
        isthmus.OAuth2RefreshToken("https://x/token", "abc", "cs-SECRET", "rt-SECRET"),
        isthmus.HmacSigner("hk-SECRET"),
        isthmus.AwsSigV4("AKID", "sk-SECRET", "us-east-1", "execute-api", session_token="st-SECRET"),
        isthmus.JWTBearer("https://x/token", issuer="me", secret="js-SECRET"),
    ]
    for c in cases:
        assert "SECRET" not in repr(c), repr(c)
        assert "***" in repr(c)
    assert repr(cases[3]) == ("OAuth2ClientCredentials(token_url='https://x/token', client_id='abc', "
                              "client_secret='***')")
    with pytest.raises(TypeError):
        import pickle
        pickle.dumps(cases[0])


def test_client_rejects_what_is_not_a_credential():
    with pytest.raises(isthmus.ConfigError, match="auth"):
        isthmus.Client("http://127.0.0.1:1", auth=("user", "pw"))


# ---- OAuth2 against the sandbox --------------------------------------------------------------

@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_client_credentials(method):
    with oauth_sandbox() as api:
        auth = isthmus.OAuth2ClientCredentials(api.token_url, api.client_id, api.client_secret,
                                               auth_method=method)
        with isthmus.Client(api.url, auth=auth) as c:
            for _ in range(5):
                assert c.get("/v1/contacts").status_code == 200
        assert api.stats()["tokens"]["issued"] == 1
        assert auth.token_requests == 1
        assert 3000 < auth.expires_in <= 3600


def test_wrong_client_secret_raises_token_error_naming_the_oauth_error():
    with oauth_sandbox() as api:
        auth = isthmus.OAuth2ClientCredentials(api.token_url, api.client_id, "wrong-SECRET")
        with isthmus.Client(api.url, auth=auth) as c:
            with pytest.raises(isthmus.TokenError) as e:
                c.get("/v1/contacts")
        assert isinstance(e.value, PermissionError)
        assert "invalid_client" in str(e.value) and "401" in str(e.value)
        assert "SECRET" not in str(e.value)
        assert e.value.method == "GET"


class _ResetsFirst(FaultProxy):
    """Resets the first `n` connections as the answer comes back, then lets everything through."""

    def __init__(self, upstream_port: int, n: int):
        self.n = n
        super().__init__(upstream_port)

    @property
    def reset_after(self):
        return 0 if self.stats()["resets"] < self.n else None

    @reset_after.setter
    def reset_after(self, _value):
        pass


def test_a_token_request_lost_on_the_wire_is_retried_like_any_idempotent_call():
    with oauth_sandbox() as api, _ResetsFirst(api.port, 3) as proxy:
        token_url = proxy.url + urlsplit(api.token_url).path
        auth = isthmus.OAuth2ClientCredentials(token_url, api.client_id, api.client_secret)
        with isthmus.Client(api.url, auth=auth, retry=isthmus.Retry(attempts=5, base=0.01)) as c:
            r = c.post("/v1/contacts/batch", json=[{"id": 1}])  # not idempotent: it was never sent
            (stats,) = c.limits_snapshot().values()
    assert r.status_code < 300
    assert proxy.stats()["resets"] == 3
    assert auth.token_requests == 4
    assert stats["retries"] == 3 and r.attempts == 4


def test_a_refused_token_request_fails_at_once_even_with_retries():
    with oauth_sandbox() as api:
        auth = isthmus.OAuth2ClientCredentials(api.token_url, api.client_id, "wrong-SECRET")
        with isthmus.Client(api.url, auth=auth, retry=isthmus.Retry(attempts=5, base=0.01)) as c:
            with pytest.raises(isthmus.TokenError, match="401"):
                c.get("/v1/contacts")
            (stats,) = c.limits_snapshot().values()
    assert auth.token_requests == 1 and stats["retries"] == 0


def test_200_concurrent_requests_across_an_expiry_make_exactly_one_refresh():
    with oauth_sandbox(token_lifetime=3.0, rotate_refresh_tokens=True) as api:
        store = isthmus.TokenStore.memory()
        auth = isthmus.OAuth2RefreshToken(api.token_url, api.client_id, api.client_secret,
                                          authorization_code_refresh_token(api), store=store,
                                          refresh_before=0.5)
        with isthmus.Client(api.url, auth=auth, max_connections=64) as c:
            assert c.get("/v1/contacts").status_code == 200
            assert api.stats()["tokens"]["refreshed"] == 1
            # The cached token is now past its expiry on our clock (and so on the server's).
            wait_until(lambda: auth.expires_in is not None and auth.expires_in < 0, timeout=10)
            responses = c.get_many(["/v1/contacts?limit=1"] * 200, concurrency=200)
        assert [r.status_code for r in responses] == [200] * 200
        stats = api.stats()
        assert stats["tokens"]["refreshed"] == 2  # the first token, then exactly one more
        assert auth.token_requests == 2


def test_concurrent_async_requests_share_one_token_request():
    import asyncio

    async def main(api, auth):
        async with isthmus.AsyncClient(api.url, auth=auth) as c:
            rs = await asyncio.gather(*[c.get("/v1/contacts?limit=1") for _ in range(100)])
        return [r.status_code for r in rs]

    with oauth_sandbox() as api:
        auth = isthmus.OAuth2ClientCredentials(api.token_url, api.client_id, api.client_secret)
        assert asyncio.run(main(api, auth)) == [200] * 100
        assert api.stats()["tokens"]["issued"] == 1


def test_authorize_url_is_encoded_by_the_core_query_encoder():
    flow = isthmus.OAuth2AuthorizationCode("https://idp.example/authorize?tenant=7", "https://idp.example/token",
                                           "my client", scopes=["contacts:read", "deals:write"],
                                           extra_authorize_params={"prompt": "a&b=c+d"})
    try:
        url = flow.start()
    finally:
        flow._close_listener()
    base, query = url.split("?", 1)[0], url.split("?", 1)[1]
    assert base == "https://idp.example/authorize"
    assert query.startswith("tenant=7&")
    assert "scope=contacts%3Aread%20deals%3Awrite" in query  # %20, never '+', as in every request
    assert "client_id=my%20client" in query and "prompt=a%26b%3Dc%2Bd" in query
    q = parse_qs(query)
    assert q["prompt"] == ["a&b=c+d"] and q["scope"] == ["contacts:read deals:write"]


def test_authorization_code_with_pkce_and_the_local_listener(token_key, tmp_path):
    with oauth_sandbox(rotate_refresh_tokens=True) as api:
        store = isthmus.TokenStore.sqlite(tmp_path / "tokens.db")
        flow = isthmus.OAuth2AuthorizationCode(api.authorize_url, api.token_url, api.client_id,
                                               scopes=["contacts:read"], store=store)
        assert not flow.authorized
        url = flow.start()
        q = parse_qs(urlsplit(url).query)
        assert q["code_challenge_method"] == ["S256"] and q["response_type"] == ["code"]
        assert len(q["state"][0]) >= 32
        assert q["redirect_uri"][0].startswith("http://127.0.0.1:")
        # The "browser": the sandbox approves at once and redirects to our listener.
        page = requests.get(url)
        assert page.status_code == 200 and "Authorized" in page.text
        flow.wait(timeout=10)
        assert flow.authorized
        with isthmus.Client(api.url, auth=flow) as c:
            assert c.get("/v1/contacts").status_code == 200
        assert api.stats()["tokens"]["by_grant"]["authorization_code"] == 1

        # A later run finds the grant in the store: no browser needed.
        again = isthmus.OAuth2AuthorizationCode(api.authorize_url, api.token_url, api.client_id,
                                                store=isthmus.TokenStore.sqlite(tmp_path / "tokens.db"))
        assert again.authorized


def test_authorization_code_refuses_a_wrong_state():
    with oauth_sandbox() as api:
        flow = isthmus.OAuth2AuthorizationCode(api.authorize_url, api.token_url, api.client_id)
        flow.start()
        r = requests.get(flow.redirect_uri, params={"code": "code_x", "state": "forged"})
        assert r.status_code == 400
        with pytest.raises(isthmus.TokenError, match="state"):
            flow.wait(timeout=5)
        assert not flow.authorized


KILL_CHILD = textwrap.dedent("""
    import sys, time, isthmus
    url, token_url, client_id, client_secret, refresh_token, db, mode = sys.argv[1:]

    def hook(event):
        if mode == "pause" and event["grant"] == "refresh_token":
            # The rotated token is stored and nothing has used it yet: tell the parent, then
            # wait to be killed.
            print("stored", flush=True)
            sys.stdin.readline()

    auth = isthmus.OAuth2RefreshToken(token_url, client_id, client_secret, refresh_token,
                                      store=isthmus.TokenStore.sqlite(db), on_token=hook)
    if mode == "run":
        # The access token the killed run stored is short-lived: once it has expired, the next
        # request must refresh with the rotated refresh token from the store.
        deadline = time.monotonic() + 30
        while auth.expires_in is not None and auth.expires_in >= 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    with isthmus.Client(url, auth=auth) as c:
        print("status", c.get("/v1/contacts").status_code, flush=True)
""")


def test_rotation_survives_a_kill_between_receiving_and_using_a_new_refresh_token(token_key, tmp_path):
    db = str(tmp_path / "tokens.db")
    script = tmp_path / "child.py"
    script.write_text(KILL_CHILD)
    env = dict(os.environ, ISTHMUS_TOKEN_KEY=token_key)
    with oauth_sandbox(rotate_refresh_tokens=True, token_lifetime=1.0) as api:
        rt0 = authorization_code_refresh_token(api)
        args = [api.url, api.token_url, api.client_id, api.client_secret, rt0, db]
        with subprocess.Popen([sys.executable, str(script), *args, "pause"], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
            try:
                assert child.stdout.readline().strip() == "stored"
            finally:
                child.send_signal(signal.SIGKILL)
                child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL
        assert api.stats()["tokens"]["refreshed"] == 1  # rt0 is spent (single use)

        # The refresh token on the command line is the spent rt0; the store's rotated one wins.
        resumed = subprocess.run([sys.executable, str(script), *args, "run"], env=env,
                                 capture_output=True, text=True, timeout=60)
        assert resumed.stdout.strip() == "status 200", resumed.stderr
        assert api.stats()["tokens"]["refreshed"] == 2

        # Without the store, rt0 alone is refused: the store really was what saved us.
        lost = isthmus.OAuth2RefreshToken(api.token_url, api.client_id, api.client_secret, rt0)
        with pytest.raises(isthmus.TokenError, match="invalid_grant"):
            lost.fetch_token()


def test_jwt_bearer_assertions_verify_with_pyjwt():
    jwt = pytest.importorskip("jwt")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    rs = isthmus.JWTBearer("https://auth.example.com/token", issuer="svc@example.com",
                           subject="user-1", private_key=pem, key_id="k1",
                           extra_claims={"tenant": 42})
    token = rs.assertion()
    claims = jwt.decode(token, key.public_key(), algorithms=["RS256"],
                        audience="https://auth.example.com/token", issuer="svc@example.com")
    assert claims["sub"] == "user-1" and claims["tenant"] == 42
    assert claims["exp"] - claims["iat"] == 300 and abs(claims["iat"] - time.time()) < 60
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "typ": "JWT", "kid": "k1"}
    assert rs.assertion() != token  # a fresh jti each time

    hs = isthmus.JWTBearer("https://auth.example.com/token", issuer="me",
                           secret="a-shared-secret-of-at-least-32-bytes!")
    claims = jwt.decode(hs.assertion(), "a-shared-secret-of-at-least-32-bytes!", algorithms=["HS256"],
                        audience="https://auth.example.com/token")
    assert claims["iss"] == claims["sub"] == "me"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(hs.assertion(), "another-secret-of-at-least-32-bytes!!", algorithms=["HS256"],
                   audience="https://auth.example.com/token")


def test_jwt_bearer_sends_the_rfc7523_grant():
    # The sandbox has no JWT grant: its refusal shows what we sent, and how it surfaces.
    with oauth_sandbox() as api:
        auth = isthmus.JWTBearer(api.token_url, issuer="me", secret="k")
        with pytest.raises(isthmus.TokenError, match="unsupported_grant_type"):
            auth.fetch_token()


# ---- signing ---------------------------------------------------------------------------------

def sigv4_cases():
    long_body = json.dumps({"items": list(range(500))}).encode()
    return [
        ("GET", "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08", {}, b"", None, "iam", "us-east-1"),
        ("GET", "https://example.amazonaws.com/", {}, b"", None, "service", "us-east-1"),
        ("GET", "https://example.amazonaws.com/a/b/c", {}, b"", None, "execute-api", "eu-west-1"),
        ("GET", "https://example.amazonaws.com/caf%C3%A9/na%C3%AFve", {}, b"", None, "execute-api", "eu-west-1"),
        ("GET", "https://example.amazonaws.com/\u65e5\u672c/\u00e9t\u00e9", {}, b"", None, "execute-api",
         "ap-northeast-1"),
        ("GET", "https://example.amazonaws.com/a/./b/../c//d/", {}, b"", None, "service", "us-west-2"),
        ("GET", "https://example.amazonaws.com/?b=2&a=1&a=0", {}, b"", None, "service", "us-east-1"),
        ("GET", "https://example.amazonaws.com/?key=va%20lue&x=%2F%3D%26", {}, b"", None, "service", "us-east-1"),
        ("GET", "https://example.amazonaws.com/?flag&empty=", {}, b"", None, "service", "us-east-1"),
        ("GET", "https://example.amazonaws.com/?uni=%E2%9C%93&tilde=~", {}, b"", None, "service", "us-east-1"),
        ("POST", "https://sts.amazonaws.com/", {"Content-Type": "application/x-www-form-urlencoded"},
         b"Action=GetCallerIdentity&Version=2011-06-15", None, "sts", "us-east-1"),
        ("POST", "https://example.amazonaws.com/items", {"Content-Type": "application/json"},
         b'{"name":"caf\xc3\xa9"}', None, "execute-api", "eu-central-1"),
        ("PUT", "https://example.amazonaws.com/items/1", {"Content-Type": "application/octet-stream"},
         bytes(range(256)), None, "execute-api", "eu-central-1"),
        ("PATCH", "https://example.amazonaws.com/items/1", {}, long_body, None, "execute-api", "sa-east-1"),
        ("DELETE", "https://example.amazonaws.com/items/1?force=true", {}, b"", None, "execute-api", "us-east-2"),
        ("HEAD", "https://example.amazonaws.com/items", {}, b"", None, "execute-api", "us-east-2"),
        ("GET", "https://example.amazonaws.com/", {}, b"", "session-token-/+=", "service", "us-east-1"),
        ("POST", "https://dynamodb.us-east-1.amazonaws.com/",
         {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "DynamoDB_20120810.ListTables"},
         b"{}", "FwoGZXIvYXdzEJr//////////wEaDAbc", "dynamodb", "us-east-1"),
        ("GET", "https://example.amazonaws.com/", {"X-Custom": "  spaced   out  value "}, b"", None,
         "service", "us-east-1"),
        ("GET", "https://example.amazonaws.com/", {"My-Header1": "a", "my-header2": "\"quoted\""}, b"", None,
         "service", "us-east-1"),
        ("GET", "https://example.amazonaws.com:8443/port", {}, b"", None, "service", "us-east-1"),
        ("GET", "http://localhost:4566/local/path", {}, b"", None, "sqs", "us-east-1"),
        ("GET", "https://example.amazonaws.com/", {"User-Agent": "not-signed/1.0"}, b"", None, "service", "us-east-1"),
        ("POST", "https://example.amazonaws.com/%20space/~tilde", {"Content-Type": "text/plain"},
         "\u2713 unicode body".encode(), "tok", "lambda", "us-gov-west-1"),
    ]


@pytest.mark.parametrize("case", sigv4_cases(), ids=lambda c: f"{c[0]}-{c[5]}-{c[1][8:40]}")
def test_sigv4_matches_botocore(case):
    pytest.importorskip("botocore")
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    method, url, headers, body, token, service, region = case
    when = datetime.datetime(2024, 2, 29, 23, 59, 58)
    # botocore signs a URL as given; give it the URL as isthmus sends it (UTF-8 escapes for
    # raw non-ASCII), encoded independently by requests.
    from requests.utils import requote_uri
    req = AWSRequest(method=method, url=requote_uri(url), headers=dict(headers), data=body)
    with mock.patch("botocore.auth.get_current_datetime", return_value=when):
        SigV4Auth(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token),
                  service, region).add_auth(req)
    ours = isthmus.Headers(isthmus.AwsSigV4("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                                            region, service, session_token=token)
                           .sign(method, url, headers, body, timestamp=when))
    assert ours["Authorization"] == req.headers["Authorization"]
    assert ours["X-Amz-Date"] == req.headers["X-Amz-Date"] == "20240229T235958Z"
    if token:
        assert ours["X-Amz-Security-Token"] == token


def test_hmac_signer_matches_an_independent_computation():
    signer = isthmus.HmacSigner(b"k3y", canonical="{method}\n{path_query}\n{timestamp}\n{body_sha256}",
                                header="X-Sig", prefix="sha256=", timestamp_header="X-Ts")
    out = isthmus.Headers(signer.sign("post", "https://api.example.com/v1/x?a=1", {}, b'{"a":1}',
                                      timestamp=1700000000))
    canonical = "POST\n/v1/x?a=1\n1700000000\n" + hashlib.sha256(b'{"a":1}').hexdigest()
    assert out["X-Sig"] == "sha256=" + hmac.new(b"k3y", canonical.encode(), hashlib.sha256).hexdigest()
    assert out["X-Ts"] == "1700000000"
    b64 = isthmus.HmacSigner("k", canonical="{method}", algorithm="sha512", encoding="base64",
                             timestamp_header=None)
    out = isthmus.Headers(b64.sign("GET", "https://h/"))
    assert out["X-Signature"] == base64.b64encode(hmac.new(b"k", b"GET", hashlib.sha512).digest()).decode()
    with pytest.raises(isthmus.ConfigError, match="bogus"):
        isthmus.HmacSigner("k", canonical="{bogus}")


def test_rfc_vectors_through_the_core():
    # RFC 7636 Appendix B.
    assert _core.pkce_challenge_s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == \
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    # RFC 4231 test case 2.
    assert _core.hmac("sha256", b"Jefe", b"what do ya want for nothing?").hex() == \
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"


# ---- token store -----------------------------------------------------------------------------

def test_sqlite_store_needs_a_key_and_says_how_to_make_one(monkeypatch, tmp_path):
    monkeypatch.delenv("ISTHMUS_TOKEN_KEY", raising=False)
    with pytest.raises(isthmus.TokenStoreError, match="ISTHMUS_TOKEN_KEY.*generate_key"):
        isthmus.TokenStore.sqlite(tmp_path / "t.db")
    monkeypatch.setenv("ISTHMUS_TOKEN_KEY", "too-short")
    with pytest.raises(isthmus.TokenStoreError, match="32 bytes"):
        isthmus.TokenStore.sqlite(tmp_path / "t.db")
    key_file = tmp_path / "key"
    key_file.write_text(isthmus.TokenStore.generate_key())
    store = isthmus.TokenStore.sqlite(tmp_path / "t.db", key_file=key_file)
    assert "key_file" in repr(store)


def test_sqlite_store_keeps_tokens_encrypted_and_detects_a_wrong_key(token_key, tmp_path, monkeypatch):
    db = tmp_path / "t.db"
    with oauth_sandbox() as api:
        store = isthmus.TokenStore.sqlite(db)
        auth = isthmus.OAuth2RefreshToken(api.token_url, api.client_id, api.client_secret,
                                          authorization_code_refresh_token(api), store=store)
        auth.fetch_token()
        assert auth.store_id in store
        raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("t.db"))
        assert b"rt_" not in raw and b"at_" not in raw and api.client_secret.encode() not in raw
        monkeypatch.setenv("ISTHMUS_TOKEN_KEY", isthmus.TokenStore.generate_key())
        with pytest.raises(isthmus.TokenStoreError, match="wrong key|altered"):
            isthmus.OAuth2RefreshToken(api.token_url, api.client_id, api.client_secret, "rt",
                                       store=isthmus.TokenStore.sqlite(db))


# ---- webhooks --------------------------------------------------------------------------------

NOW = 1_700_000_000
BODY = b'{"type":"contact.created","id":"c_1"}'


def standard_headers(secret: str, ts: int = NOW, body: bytes = BODY):
    key = base64.b64decode(secret.removeprefix("whsec_"))
    sig = base64.b64encode(hmac.new(key, b"msg_1." + str(ts).encode() + b"." + body, hashlib.sha256).digest())
    return {"webhook-id": "msg_1", "webhook-timestamp": str(ts), "webhook-signature": "v1," + sig.decode()}


def stripe_headers(secret: str, ts: int = NOW, body: bytes = BODY):
    sig = hmac.new(secret.encode(), str(ts).encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={ts},v1={sig}"}


def github_headers(secret: str, ts: int = NOW, body: bytes = BODY):
    return {"X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}


SCHEMES = [("standard", "whsec_" + base64.b64encode(b"standard-secret").decode(), standard_headers),
           ("stripe", "whsec_stripe_secret", stripe_headers),
           ("github", "gh-secret", github_headers)]


@pytest.mark.parametrize("scheme,secret,make", SCHEMES, ids=[s[0] for s in SCHEMES])
def test_verify_webhook(scheme, secret, make):
    isthmus.verify_webhook(scheme, secret, make(secret), BODY, now=NOW + 5)
    with pytest.raises(isthmus.WebhookVerificationError) as e:
        isthmus.verify_webhook(scheme, secret, make(secret), BODY + b" ", now=NOW)
    assert e.value.check == "signature" and isinstance(e.value, ValueError)
    with pytest.raises(isthmus.WebhookVerificationError) as e:
        isthmus.verify_webhook(scheme, secret, {}, BODY, now=NOW)
    assert e.value.check == "header"
    if scheme != "github":
        with pytest.raises(isthmus.WebhookVerificationError) as e:
            isthmus.verify_webhook(scheme, secret, make(secret, ts=NOW - 301), BODY, now=NOW)
        assert e.value.check == "timestamp"
        isthmus.verify_webhook(scheme, secret, make(secret, ts=NOW - 301), BODY, now=NOW, tolerance=600)
    assert secret not in str(e.value)


def test_verify_webhook_rejects_bad_arguments():
    with pytest.raises(isthmus.ConfigError):
        isthmus.verify_webhook("paypal", "s", {}, b"")
    with pytest.raises(isthmus.WebhookVerificationError) as e:
        isthmus.verify_webhook("standard", "whsec_!!!", {}, b"")
    assert e.value.check == "secret"


# ---- redaction -------------------------------------------------------------------------------

def test_no_secret_in_any_log_line_repr_or_exception(caplog, token_key, tmp_path):
    caplog.set_level(logging.DEBUG)  # every logger, every level
    seen: list[str] = []
    with oauth_sandbox(rotate_refresh_tokens=True, token_lifetime=2.0,
                       client_secret="cs-TOPSECRET-1") as api:
        rt0 = authorization_code_refresh_token(api)
        secrets = {api.client_secret, rt0}
        store = isthmus.TokenStore.sqlite(tmp_path / "t.db")
        auth = isthmus.OAuth2RefreshToken(api.token_url, api.client_id, api.client_secret, rt0,
                                          store=store, refresh_before=0.5)
        with isthmus.Client(api.url, auth=auth) as c:
            seen += [repr(c), repr(auth), repr(store)]
            r = c.get("/v1/contacts")
            seen += [repr(r), repr(r.request), repr(r.request.headers)]
            wait_until(lambda: auth.expires_in is not None and auth.expires_in < 0)
            c.get("/v1/contacts")  # a rotation
        bad = isthmus.OAuth2ClientCredentials(api.token_url, api.client_id, "cs-WRONG-SECRET-2")
        secrets.add("cs-WRONG-SECRET-2")
        with isthmus.Client(api.url, auth=bad) as c:
            try:
                c.get("/v1/contacts")
            except isthmus.TokenError as e:
                seen += [str(e), repr(e)]
            else:
                pytest.fail("expected a TokenError")
    assert any("new access token" in rec.getMessage() for rec in caplog.records)
    text = "\n".join([rec.getMessage() for rec in caplog.records] + [caplog.text] + seen)
    for secret in secrets:
        assert secret not in text
    # No sandbox access or refresh token either.
    assert not re.search(r"\b(at|rt)_[A-Za-z0-9_-]{6,}", text)


def test_verify_webhooks_the_sandbox_delivers():
    """End to end: register a webhook through an OAuth2 client, write a record, and verify
    the signed delivery the sandbox makes (Standard Webhooks)."""
    import http.server
    import threading

    got: dict = {}
    arrived = threading.Event()

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if not arrived.is_set():
                got.update(headers=list(self.headers.items()), body=body)
                arrived.set()
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with oauth_sandbox() as api:
            auth = isthmus.OAuth2ClientCredentials(api.token_url, api.client_id, api.client_secret)
            with isthmus.Client(api.url, auth=auth) as c:
                hook = c.post("/v1/webhooks", json={"url": f"http://127.0.0.1:{server.server_port}/hook"})
                assert hook.status_code == 201
                secret = hook.json()["secret"]
                assert c.post("/v1/contacts", json={"name": "Ada"}).status_code in (200, 201)
                assert arrived.wait(10), "no webhook delivery"
        isthmus.verify_webhook("standard", secret, got["headers"], got["body"])
        with pytest.raises(isthmus.WebhookVerificationError) as e:
            isthmus.verify_webhook("standard", secret, got["headers"], got["body"].replace(b"Ada", b"Eve"))
        assert e.value.check == "signature"
    finally:
        server.shutdown()
        server.server_close()


def test_an_api_key_header_never_follows_a_redirect_to_another_host():
    with isthmus.Sandbox() as here, isthmus.Sandbox(host="127.0.0.2") as elsewhere:
        with isthmus.Client(here.url, auth=isthmus.ApiKey("k-SECRET", header="X-Custom-Key")) as c:
            assert c.get("/echo").json()["headers"]["x-custom-key"] == "k-SECRET"
            seen = c.get("/redirect-to", params={"url": elsewhere.url + "/echo"}).json()["headers"]
    assert "x-custom-key" not in seen


# ---- credentials shared through Redis --------------------------------------------------------

@pytest.fixture
def redis_server(tmp_path):
    from servers import Redis, have_redis

    if not have_redis:
        pytest.skip("redis-server missing")
    with Redis(tmp_path) as r:
        yield r


def test_an_authorization_code_grant_is_shared_by_processes_through_redis(token_key, redis_server):
    """The process that authorized stores the grant in Redis; another finds it at construction,
    with no browser, and the two take turns refreshing a rotating refresh token."""
    with oauth_sandbox(rotate_refresh_tokens=True, token_lifetime=0.3) as api:
        first = isthmus.OAuth2AuthorizationCode(api.authorize_url, api.token_url, api.client_id,
                                                coordination=isthmus.Coordination(redis_server.url))
        assert not first.authorized
        requests.get(first.start())  # the "browser" approves at once
        first.wait(timeout=10)
        second = isthmus.OAuth2AuthorizationCode(api.authorize_url, api.token_url, api.client_id,
                                                 coordination=isthmus.Coordination(redis_server.url))
        assert second.authorized  # the grant came from Redis
        with isthmus.Client(api.url, auth=first) as a, isthmus.Client(api.url, auth=second) as b:
            for _ in range(3):
                assert a.get("/v1/contacts").status_code == 200
                assert b.get("/v1/contacts").status_code == 200
                expiry = time.time() + 0.35
                wait_until(lambda e=expiry: time.time() > e, timeout=5)
        stats = api.stats()
    # One token request per expiry between them, and never a refresh token used twice.
    assert stats["tokens"]["by_grant"]["authorization_code"] == 1
    assert stats["requests"]["by_endpoint"]["POST /oauth/token"] == {"200": stats["tokens"]["issued"]}
    assert 2 <= stats["tokens"]["refreshed"] <= 3


def test_a_jwt_bearer_token_is_shared_by_processes_through_redis(redis_server):
    import http.server
    import threading

    from servers import free_port

    asked, used = [], []

    class TokenEndpoint(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
            asked.append(form["grant_type"][0])
            body = json.dumps({"access_token": f"at-{len(asked)}", "token_type": "Bearer",
                               "expires_in": 3600}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            used.append(self.headers["Authorization"])
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), TokenEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/token"
    key = isthmus.TokenStore.generate_key()
    try:
        with mock.patch.dict(os.environ, {"ISTHMUS_TOKEN_KEY": key}):
            creds = [isthmus.JWTBearer(url, issuer="svc", secret="jwt-SECRET",
                                       coordination=isthmus.Coordination(redis_server.url)) for _ in range(3)]
            for c in creds:
                with isthmus.Client(url, auth=c) as client:
                    assert client.get("/data").status_code == 200
    finally:
        server.shutdown()
        server.server_close()
    assert asked == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]  # one request for all three
    assert used == ["Bearer at-1"] * 3


def test_a_stored_secret_is_sealed_and_never_read_as_a_token_record(token_key, tmp_path):
    db = tmp_path / "tokens.db"
    store = isthmus.TokenStore.sqlite(db)
    store.save_secret("connection:acme", {"api_key": "acme-secret-value-1"})
    assert isthmus.TokenStore.sqlite(db).load_secret("connection:acme") == {"api_key": "acme-secret-value-1"}
    assert store.load_secret("connection:other") is None
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"acme-secret-value-1" not in raw
    with pytest.raises(isthmus.ConfigError, match="connection:acme"):
        store.save_secret("connection:acme", {"api_key": 17})
    with oauth_sandbox() as api:
        isthmus.OAuth2ClientCredentials(api.token_url, api.client_id, api.client_secret, store=store,
                                        store_id="crm").fetch_token()
    with pytest.raises(isthmus.TokenStoreError, match="holds tokens"):
        store.load_secret("crm")
