"""Credentials: every common way to prove who we are to another product's API.

Pass one to a client: ``isthmus.Client(url, auth=isthmus.OAuth2ClientCredentials(...))``.
The work happens in the C++ core: tokens are cached and refreshed early and single-flight
(however many requests wait across an expiry, one token request is made), a 401 for a token
believed valid refreshes once and re-sends once, and rotated refresh tokens are saved to the
token store before they are used. No secret appears in a repr, a log line or an exception.
"""

from __future__ import annotations

import datetime as _dt
import http.server
import json
import logging
import threading
import time
import webbrowser
from collections.abc import Mapping
from typing import Any, Callable, Optional, Sequence, Union
from urllib.parse import parse_qs, urlsplit

from isthmus import _core, errors
from isthmus.coordination import Coordination
from isthmus.coordination import _core_of as _coordination_core

__all__ = [
    "Auth",
    "ApiKey",
    "BasicAuth",
    "BearerToken",
    "OAuth2ClientCredentials",
    "OAuth2RefreshToken",
    "OAuth2AuthorizationCode",
    "JWTBearer",
    "HmacSigner",
    "AwsSigV4",
    "TokenStore",
    "verify_webhook",
]

log = logging.getLogger("isthmus.auth")

_MASK = "***"
HeadersInput = Union[Mapping[str, str], Sequence[tuple[str, str]], None]


def _text(field: str, value: Any, *, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise errors.ConfigError(f"{field}: expected a non-empty string, got {type(value).__name__}")
    return value


def _key_bytes(field: str, value: Any) -> bytes:
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, (bytes, bytearray)) or not value:
        raise errors.ConfigError(f"{field}: expected non-empty str or bytes")
    return bytes(value)


def _header_list(headers: HeadersInput) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if hasattr(headers, "multi_items"):
        return list(headers.multi_items())
    if isinstance(headers, Mapping):
        return [(str(k), str(v)) for k, v in headers.items()]
    return [(str(k), str(v)) for k, v in headers]


def _body_bytes(body: Union[bytes, str, None]) -> bytes:
    if body is None:
        return b""
    return body.encode() if isinstance(body, str) else bytes(body)


def _unix(timestamp: Union[None, float, int, _dt.datetime]) -> int:
    if timestamp is None:
        return int(time.time())
    if isinstance(timestamp, _dt.datetime):
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=_dt.timezone.utc)
        return int(timestamp.timestamp())
    return int(timestamp)


class Auth:
    """Base of every credential. Subclasses hold a core credential; ``repr`` never shows secrets."""

    _fields: tuple[tuple[str, bool], ...] = ()  # (attribute, is_secret) shown by repr
    _core: Any

    def _credential(self) -> Any:
        return self._core

    def __repr__(self) -> str:
        parts = []
        for name, secret in self._fields:
            value = getattr(self, name, None)
            if value is None:
                continue
            parts.append(f"{name}={_MASK!r}" if secret else f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    # Credentials are not meant to be pickled or copied into logs by accident.
    def __reduce__(self) -> Any:
        raise TypeError(f"{type(self).__name__} holds secrets and cannot be pickled")


class ApiKey(Auth):
    """An API key in a header (default ``X-Api-Key``) or a query parameter.

    ``ApiKey("k")`` sends ``X-Api-Key: k``; ``ApiKey("k", header="Api-Token")`` another header;
    ``ApiKey("k", query="api_key")`` appends ``?api_key=k``. A header key is dropped on a
    redirect to another origin, like ``Authorization``.
    """

    _fields = (("header", False), ("query", False), ("value", True))

    def __init__(self, value: str, *, header: Optional[str] = None, query: Optional[str] = None):
        if header is not None and query is not None:
            raise errors.ConfigError("ApiKey: give header= or query=, not both")
        if header is None and query is None:
            header = "X-Api-Key"
        self.value = _text("value", value)
        self.header = header
        self.query = query
        self._core = _core.ApiKey(self.value, header or "", query or "")


class BasicAuth(Auth):
    """HTTP Basic authentication (RFC 7617): ``Authorization: Basic base64(user:password)``."""

    _fields = (("user", False), ("password", True))

    def __init__(self, user: str, password: str):
        self.user = _text("user", user)
        self.password = _text("password", password, required=False)
        self._core = _core.BasicAuth(self.user, self.password)


class BearerToken(Auth):
    """A fixed bearer token obtained elsewhere: ``Authorization: Bearer <token>``."""

    _fields = (("token", True),)

    def __init__(self, token: str):
        self.token = _text("token", token)
        self._core = _core.BearerToken(self.token)


class TokenStore:
    """Where OAuth2 tokens are kept between requests and across restarts.

    ``TokenStore.memory()`` (the default) lives as long as the process. ``TokenStore.sqlite(path)``
    keeps one row per credential in a SQLite file, each sealed with AES-256-GCM under a 32-byte
    key read from the environment variable ``key_env`` (default ``ISTHMUS_TOKEN_KEY``) or from
    ``key_file``. Make a key with ``TokenStore.generate_key()``.
    """

    def __init__(self, core: _core.TokenStore, description: str,
                 coordination: Optional[Coordination] = None):
        self._core = core
        self._description = description
        self._coordination = coordination  # set for a store in Redis

    @classmethod
    def memory(cls) -> TokenStore:
        return cls(_core.TokenStore.memory(), "TokenStore.memory()")

    @classmethod
    def sqlite(cls, path: str, *, key_env: str = "ISTHMUS_TOKEN_KEY",
               key_file: Optional[str] = None) -> TokenStore:
        path = str(path)
        core = _core.TokenStore.sqlite(path, key_env, str(key_file) if key_file else "")
        shown = f"key_file={str(key_file)!r}" if key_file else f"key_env={key_env!r}"
        return cls(core, f"TokenStore.sqlite({path!r}, {shown})")

    @classmethod
    def redis(cls, coordination: Coordination, *, key_env: str = "ISTHMUS_TOKEN_KEY",
              key_file: Optional[str] = None) -> TokenStore:
        """Records in the Redis of ``coordination``, sealed as in ``sqlite`` (same key rules),
        shared by every process using it. An OAuth2 credential given ``coordination=`` uses
        this store by default and refreshes once for all of them."""
        core = _coordination_core(coordination)
        if core is None:
            raise errors.ConfigError("coordination: expected an isthmus.Coordination, got None")
        store = core.token_store(key_env, str(key_file) if key_file else "")
        shown = f"key_file={str(key_file)!r}" if key_file else f"key_env={key_env!r}"
        return cls(store, f"TokenStore.redis({coordination!r}, {shown})", coordination)

    @staticmethod
    def generate_key() -> str:
        """A fresh random key as 64 hex digits, for ``ISTHMUS_TOKEN_KEY`` or a key file."""
        return _core.generate_token_key()

    def __contains__(self, credential_id: str) -> bool:
        return self._core.contains(credential_id)

    def forget(self, credential_id: str) -> None:
        """Deletes what is stored for one credential (its ``store_id``)."""
        self._core.erase(credential_id)

    def save_secret(self, secret_id: str, values: Mapping[str, str]) -> None:
        """Keeps ``values`` (names to text, such as a customer's API key) under ``secret_id``,
        sealed like a token record (AES-256-GCM in the SQLite and Redis stores)."""
        if not isinstance(values, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                      for k, v in values.items()):
            raise errors.ConfigError(f"{secret_id}: expected a dict of names to text")
        self._core.save_secret(secret_id, json.dumps(dict(values)))

    def load_secret(self, secret_id: str) -> Optional[dict[str, str]]:
        """What ``save_secret`` kept under ``secret_id``; None when nothing is."""
        text = self._core.load_secret(secret_id)
        if text is None:
            return None
        values: dict[str, str] = json.loads(text)
        return values

    def __repr__(self) -> str:
        return self._description


_AUTH_METHODS = ("client_secret_basic", "client_secret_post")


class _OAuth2(Auth):
    """What the OAuth2 credentials share: the core token cache and its logging."""

    _core: Any = None

    def _make_core(self, grant: str, *, token_url: str, client_id: str, client_secret: str,
                   auth_method: str, scopes: Optional[Sequence[str]] = None,
                   audience: Optional[str] = None, refresh_token: str = "", code: str = "",
                   code_verifier: str = "", redirect_uri: str = "", jwt: Any = None,
                   extra_params: Optional[Mapping[str, str]] = None, refresh_before: float = 60.0,
                   default_lifetime: float = 3600.0, timeout: float = 30.0,
                   store: Optional[TokenStore] = None, store_id: Optional[str] = None,
                   on_token: Optional[Callable[[dict[str, Any]], None]] = None,
                   coordination: Optional[Coordination] = None) -> Any:
        if store is not None and not isinstance(store, TokenStore):
            raise errors.ConfigError(f"store: expected an isthmus.TokenStore, got {type(store).__name__}")
        refresh_lock = None
        if coordination is not None:
            # The processes sharing the Redis share the record and take turns refreshing it.
            core = _coordination_core(coordination)
            if store is None:
                store = TokenStore.redis(coordination)
            elif store._coordination is not coordination:
                raise errors.ConfigError(
                    f"store: {store!r} is not in the Redis of coordination=; leave store out "
                    "(or pass TokenStore.redis(coordination, ...)) so that every process shares one record")
            refresh_lock = core.refresh_lock() if core is not None else None
        if isinstance(scopes, str):
            scopes = scopes.split()
        name = type(self).__name__
        user_hook = on_token

        def hook(event: dict[str, Any]) -> None:
            # Runs on an I/O thread after the token is stored and before any request uses it.
            log.info("%s: new access token for %s (grant=%s, expires_in=%.0fs, refresh_token_rotated=%s)",
                     name, client_id or token_url, event["grant"], event["expires_in"], event["rotated"])
            if user_hook is not None:
                user_hook(event)

        return _core.OAuth2(
            grant=grant, token_url=token_url, client_id=client_id, client_secret=client_secret,
            auth_method=auth_method, scopes=list(scopes or []), audience=audience or "",
            refresh_token=refresh_token, code=code, code_verifier=code_verifier,
            redirect_uri=redirect_uri, jwt=jwt,
            extra_params=[(str(k), str(v)) for k, v in (extra_params or {}).items()],
            refresh_before=float(refresh_before), default_lifetime=float(default_lifetime),
            timeout=float(timeout),
            # pybind11 takes None for a class-typed argument: no store means the memory default.
            store=store._core if store is not None else None,  # type: ignore[arg-type]
            store_id=store_id or "", on_token=hook, refresh_lock=refresh_lock)

    def _credential(self) -> Any:
        if self._core is None:
            raise errors.ConfigError(f"{type(self).__name__}: not authorized yet; call authorize() first")
        return self._core

    def fetch_token(self) -> None:
        """Makes sure a valid access token is cached, fetching one now if needed.

        Raises ``TokenError`` when the token endpoint refuses. Useful to fail fast at start-up.
        """
        self._credential().ensure_token()

    @property
    def expires_in(self) -> Optional[float]:
        """Seconds until the cached access token expires, or None when there is none."""
        core = self._core
        return core.expires_in if core is not None and core.has_token else None

    @property
    def token_requests(self) -> int:
        """How many token requests this credential has sent."""
        return self._core.token_requests if self._core is not None else 0

    @property
    def store_id(self) -> str:
        """This credential's row in the token store."""
        store_id: str = self._credential().store_id
        return store_id


class OAuth2ClientCredentials(_OAuth2):
    """OAuth2 client credentials grant (RFC 6749 4.4): the app authenticates as itself.

    ``auth_method`` is ``"client_secret_basic"`` (HTTP Basic, the default) or
    ``"client_secret_post"`` (id and secret in the form body). ``scopes`` and ``audience`` are
    sent when given. Tokens are refreshed ``refresh_before`` seconds before they expire.
    ``coordination``: processes sharing one ``Coordination`` share the token and make one
    token request per expiry between them (see ``OAuth2RefreshToken``).
    """

    _fields = (("token_url", False), ("client_id", False), ("client_secret", True),
               ("scopes", False), ("audience", False))

    def __init__(self, token_url: str, client_id: str, client_secret: str, *,
                 scopes: Optional[Sequence[str]] = None, audience: Optional[str] = None,
                 auth_method: str = "client_secret_basic", refresh_before: float = 60.0,
                 store: Optional[TokenStore] = None, store_id: Optional[str] = None,
                 extra_params: Optional[Mapping[str, str]] = None, timeout: float = 30.0,
                 on_token: Optional[Callable[[dict[str, Any]], None]] = None,
                 coordination: Optional[Coordination] = None):
        if auth_method not in _AUTH_METHODS:
            raise errors.ConfigError(f"auth_method: {auth_method!r} is not one of {', '.join(_AUTH_METHODS)}")
        self.token_url = _text("token_url", token_url)
        self.client_id = _text("client_id", client_id)
        self.client_secret = _text("client_secret", client_secret)
        self.scopes = list(scopes.split() if isinstance(scopes, str) else scopes) if scopes else None
        self.audience = audience
        self.auth_method = auth_method
        self._core = self._make_core(
            "client_credentials", token_url=self.token_url, client_id=self.client_id,
            client_secret=self.client_secret, auth_method=auth_method, scopes=self.scopes,
            audience=audience, refresh_before=refresh_before, store=store, store_id=store_id,
            extra_params=extra_params, timeout=timeout, on_token=on_token, coordination=coordination)


class OAuth2RefreshToken(_OAuth2):
    """OAuth2 refresh token grant (RFC 6749 6) with rotation.

    When the server rotates refresh tokens, the new one is written to ``store`` before the new
    access token is used, so a crash at any point never loses the only valid refresh token. A
    refresh token found in the store (from an earlier run) takes precedence over the one passed
    here. Use ``TokenStore.sqlite(...)`` to survive restarts.

    ``coordination``: several processes share the credential through Redis. The record lives
    there (``TokenStore.redis``, sealed under ``ISTHMUS_TOKEN_KEY``); on expiry a process takes
    a lock with a lease, re-reads the record (another may have refreshed already), refreshes
    only if still needed, saves the rotated refresh token, then lets the others go on.
    """

    _fields = (("token_url", False), ("client_id", False), ("client_secret", True),
               ("refresh_token", True), ("store", False))

    def __init__(self, token_url: str, client_id: str, client_secret: Optional[str] = None,
                 refresh_token: Optional[str] = None, *, store: Optional[TokenStore] = None,
                 auth_method: Optional[str] = None, store_id: Optional[str] = None,
                 refresh_before: float = 60.0, timeout: float = 30.0,
                 on_token: Optional[Callable[[dict[str, Any]], None]] = None,
                 coordination: Optional[Coordination] = None):
        self.token_url = _text("token_url", token_url)
        self.client_id = _text("client_id", client_id)
        self.client_secret = _text("client_secret", client_secret, required=False) or None
        self.refresh_token = _text("refresh_token", refresh_token, required=False) or None
        self.store = store
        if auth_method is None:
            auth_method = "client_secret_basic" if self.client_secret else "none"
        self._core = self._make_core(
            "refresh_token", token_url=self.token_url, client_id=self.client_id,
            client_secret=self.client_secret or "", auth_method=auth_method,
            refresh_token=self.refresh_token or "", refresh_before=refresh_before, store=store,
            store_id=store_id, timeout=timeout, on_token=on_token, coordination=coordination)


class OAuth2AuthorizationCode(_OAuth2):
    """OAuth2 authorization code grant with PKCE (RFC 6749 4.1, RFC 7636 S256), for notebooks.

    ``authorize()`` builds the authorize URL with a random ``state`` and a PKCE challenge, opens
    it in a browser (and prints it), catches the redirect on a local listener at
    ``http://127.0.0.1:<redirect_port><redirect_path>``, checks ``state``, exchanges the code,
    and from then on behaves as ``OAuth2RefreshToken``. With a ``store`` that already holds
    this credential's tokens, no browser is needed: it is authorized at construction.

    ``coordination``: several processes share the grant through Redis, as with
    ``OAuth2RefreshToken``: the one that authorized stores it there, the others find it at
    construction, and they take turns refreshing it (one token request per expiry).
    """

    _fields = (("authorize_url", False), ("token_url", False), ("client_id", False),
               ("client_secret", True), ("scopes", False), ("store", False))

    def __init__(self, authorize_url: str, token_url: str, client_id: str,
                 client_secret: Optional[str] = None, *, scopes: Optional[Sequence[str]] = None,
                 redirect_port: int = 0, redirect_path: str = "/callback",
                 store: Optional[TokenStore] = None, store_id: Optional[str] = None,
                 auth_method: Optional[str] = None, refresh_before: float = 60.0,
                 extra_authorize_params: Optional[Mapping[str, str]] = None,
                 timeout: float = 30.0, on_token: Optional[Callable[[dict[str, Any]], None]] = None,
                 coordination: Optional[Coordination] = None):
        self.authorize_url = _text("authorize_url", authorize_url)
        self.token_url = _text("token_url", token_url)
        self.client_id = _text("client_id", client_id)
        self.client_secret = _text("client_secret", client_secret, required=False) or None
        self.scopes = list(scopes.split() if isinstance(scopes, str) else scopes) if scopes else None
        if coordination is not None and store is None:
            store = TokenStore.redis(coordination)
        self.store = store
        if not isinstance(redirect_port, int) or not 0 <= redirect_port <= 65535:
            raise errors.ConfigError(f"redirect_port: {redirect_port!r} is not a port number")
        if not redirect_path.startswith("/"):
            raise errors.ConfigError(f"redirect_path: {redirect_path!r} must start with '/'")
        self._redirect_port = redirect_port
        self._redirect_path = redirect_path
        self._extra = dict(extra_authorize_params or {})
        self._settings: dict[str, Any] = dict(
            token_url=self.token_url, client_id=self.client_id,
            client_secret=self.client_secret or "",
            auth_method=auth_method or ("client_secret_basic" if self.client_secret else "none"),
            refresh_before=refresh_before, store=store, store_id=store_id, timeout=timeout,
            on_token=on_token, coordination=coordination)
        self._server: Optional[http.server.HTTPServer] = None
        self._state = ""
        self._verifier = ""
        self._redirect_uri = ""
        self._result: dict[str, str] = {}
        self._arrived = threading.Event()
        self._core = None
        sid = store_id or f"oauth2:{self.client_id}@{self.token_url}"
        if store is not None and sid in store:
            # Authorized in an earlier run: resume from the stored (maybe rotated) refresh token.
            self._core = self._make_core("refresh_token", **self._settings)

    @property
    def authorized(self) -> bool:
        return self._core is not None

    @property
    def redirect_uri(self) -> str:
        return self._redirect_uri

    def start(self) -> str:
        """Starts the local listener and returns the URL the user must open."""
        self._close_listener()
        flow = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                parts = urlsplit(self.path)
                if parts.path != flow._redirect_path:
                    self.send_error(404)
                    return
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                ok = "code" in query and _core.constant_time_equal(query.get("state", "").encode(),
                                                                    flow._state.encode())
                if not flow._arrived.is_set():
                    flow._result = query if ok or "error" in query else {"error": "state_mismatch"}
                    flow._arrived.set()
                body = (b"<html><body><p>Authorized. You can close this tab.</p></body></html>" if ok
                        else b"<html><body><p>Authorization failed. See the notebook.</p></body></html>")
                self.send_response(200 if ok else 400)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                # The default logs the request line, which carries the code and state.
                log.debug("authorization redirect received on the local listener")

        self._server = http.server.HTTPServer(("127.0.0.1", self._redirect_port), Handler)
        port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="isthmus-oauth2-redirect",
                         daemon=True).start()
        self._redirect_uri = f"http://127.0.0.1:{port}{self._redirect_path}"
        self._state = _core.random_token(24)
        self._verifier = _core.pkce_verifier(64)
        self._result = {}
        self._arrived.clear()
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self._redirect_uri,
            "state": self._state,
            "code_challenge": _core.pkce_challenge_s256(self._verifier),
            "code_challenge_method": "S256",
        }
        if self.scopes:
            params["scope"] = " ".join(self.scopes)
        params.update(self._extra)
        sep = "&" if urlsplit(self.authorize_url).query else "?"
        log.info("OAuth2AuthorizationCode: waiting for the redirect on %s", self._redirect_uri)
        # The core's query encoder, the one every request goes through (a space is %20).
        return self.authorize_url + sep + _core.encode_query([(k, str(v)) for k, v in params.items()])

    def wait(self, timeout: float = 300.0) -> OAuth2AuthorizationCode:
        """Waits for the redirect, checks it and exchanges the code for tokens."""
        if self._server is None:
            raise errors.ConfigError("OAuth2AuthorizationCode: call start() (or authorize()) first")
        try:
            if not self._arrived.wait(timeout):
                raise errors.TimeoutError(f"no authorization redirect within {timeout:g} s")
        finally:
            self._close_listener()
        result = self._result
        if "error" in result:
            if result["error"] == "state_mismatch":
                raise errors.TokenError("the redirect's state did not match: possible CSRF, not authorized")
            raise errors.TokenError(f"the authorization server refused: {result['error']}")
        core = self._make_core("authorization_code", code=result["code"],
                               code_verifier=self._verifier, redirect_uri=self._redirect_uri,
                               **self._settings)
        core.ensure_token()  # exchange now, so a bad or expired code fails here
        self._core = core
        self._verifier = ""
        return self

    def authorize(self, *, open_browser: bool = True, timeout: float = 300.0) -> OAuth2AuthorizationCode:
        """start(), show the URL (and open a browser), then wait()."""
        url = self.start()
        print(f"Open this URL to authorize isthmus:\n{url}")
        if open_browser:
            try:
                webbrowser.open(url)
            except webbrowser.Error:
                pass
        return self.wait(timeout)

    def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


class JWTBearer(_OAuth2):
    """The JWT bearer grant (RFC 7523 2.1): a signed assertion is exchanged for a token.

    Sign with ``private_key`` (PEM, ``algorithm="RS256"``, the default) or with a shared
    ``secret`` (``algorithm="HS256"``). Each token request carries a fresh assertion with
    ``iss``, ``sub`` (default: the issuer), ``aud`` (default: the token URL), ``iat``, ``nbf``,
    ``exp`` (``lifetime`` seconds later) and a random ``jti``. ``client_id``/``client_secret``,
    when given, authenticate the client with HTTP Basic as well. ``coordination``: processes
    sharing one Redis share the token and make one token request per expiry between them.
    """

    _fields = (("token_url", False), ("issuer", False), ("subject", False), ("audience", False),
               ("algorithm", False), ("private_key", True), ("secret", True), ("client_id", False),
               ("client_secret", True))

    def __init__(self, token_url: str, *, issuer: str, subject: Optional[str] = None,
                 audience: Optional[str] = None, private_key: Union[str, bytes, None] = None,
                 secret: Union[str, bytes, None] = None, algorithm: Optional[str] = None,
                 key_id: Optional[str] = None, scopes: Optional[Sequence[str]] = None,
                 lifetime: float = 300.0, extra_claims: Optional[Mapping[str, Any]] = None,
                 client_id: Optional[str] = None, client_secret: Optional[str] = None,
                 refresh_before: float = 60.0, store: Optional[TokenStore] = None,
                 store_id: Optional[str] = None, timeout: float = 30.0,
                 on_token: Optional[Callable[[dict[str, Any]], None]] = None,
                 coordination: Optional[Coordination] = None):
        if (private_key is None) == (secret is None):
            raise errors.ConfigError("JWTBearer: give private_key= (RS256) or secret= (HS256)")
        algorithm = algorithm or ("RS256" if private_key is not None else "HS256")
        self.token_url = _text("token_url", token_url)
        self.issuer = _text("issuer", issuer)
        self.subject = subject
        self.audience = audience or self.token_url
        self.algorithm = algorithm
        self.private_key = private_key
        self.secret = secret
        self.client_id = client_id
        self.client_secret = client_secret
        key = _key_bytes("private_key" if private_key is not None else "secret",
                         private_key if private_key is not None else secret)
        self._signer = _core.JwtAssertion(
            algorithm=algorithm, key=key, key_id=key_id or "", issuer=self.issuer,
            subject=subject or "", audience=self.audience, lifetime=float(lifetime),
            extra_claims_json=json.dumps(dict(extra_claims or {})))
        self._core = self._make_core(
            "jwt_bearer", token_url=self.token_url, client_id=client_id or "",
            client_secret=client_secret or "",
            auth_method="client_secret_basic" if client_id and client_secret else "none",
            scopes=scopes, jwt=self._signer, refresh_before=refresh_before, store=store,
            store_id=store_id or f"jwt:{self.issuer}@{self.token_url}", timeout=timeout,
            on_token=on_token, coordination=coordination)

    def assertion(self) -> str:
        """A freshly signed assertion, as the next token request would send it."""
        return self._signer.make()


class HmacSigner(Auth):
    """Signs each request with an HMAC over a canonical string (the many home-grown schemes).

    ``canonical`` is a template with ``{method}``, ``{path}``, ``{query}``, ``{path_query}``,
    ``{host}``, ``{url}``, ``{timestamp}``, ``{nonce}``, ``{body}``, ``{body_sha256}`` and
    ``{header:Name}``. The signature (hex or base64, after ``prefix``) goes to ``header``; the
    signing time to ``timestamp_header`` and a random nonce to ``nonce_header`` when set.
    """

    _fields = (("header", False), ("algorithm", False), ("canonical", False), ("key", True))

    def __init__(self, key: Union[str, bytes], *,
                 canonical: str = "{method}\n{path_query}\n{timestamp}\n{body_sha256}",
                 header: str = "X-Signature", prefix: str = "", algorithm: str = "sha256",
                 encoding: str = "hex", timestamp_header: Optional[str] = "X-Timestamp",
                 nonce_header: Optional[str] = None):
        if encoding not in ("hex", "base64"):
            raise errors.ConfigError(f"encoding: {encoding!r} is not one of hex, base64")
        self.key = _key_bytes("key", key)
        self.canonical = canonical
        self.header = header
        self.algorithm = algorithm
        self._core = _core.HmacSigner(
            key=self.key, algorithm=algorithm, canonical=canonical, header=header, prefix=prefix,
            base64=encoding == "base64", timestamp_header=timestamp_header or "",
            nonce_header=nonce_header or "")

    def sign(self, method: str, url: str, headers: HeadersInput = None,
             body: Union[bytes, str, None] = None,
             timestamp: Union[None, float, int, _dt.datetime] = None) -> list[tuple[str, str]]:
        """The headers the request would be sent with (for debugging a scheme)."""
        out: list[tuple[str, str]] = self._core.sign(method.upper(), url, _header_list(headers),
                                                     _body_bytes(body), _unix(timestamp))[0]
        return out


class AwsSigV4(Auth):
    """AWS Signature Version 4: adds ``X-Amz-Date``, ``Authorization`` and, with a
    ``session_token``, ``X-Amz-Security-Token``. For ``service="s3"`` the payload hash is sent
    in ``X-Amz-Content-SHA256`` and the path is not encoded twice, as S3 expects."""

    _fields = (("access_key", False), ("region", False), ("service", False),
               ("secret_key", True), ("session_token", True))

    def __init__(self, access_key: str, secret_key: str, region: str, service: str,
                 session_token: Optional[str] = None):
        self.access_key = _text("access_key", access_key)
        self.secret_key = _text("secret_key", secret_key)
        self.region = _text("region", region)
        self.service = _text("service", service)
        self.session_token = _text("session_token", session_token, required=False) or None
        self._core = _core.AwsSigV4(self.access_key, self.secret_key, self.region, self.service,
                                    self.session_token or "")

    def sign(self, method: str, url: str, headers: HeadersInput = None,
             body: Union[bytes, str, None] = None,
             timestamp: Union[None, float, int, _dt.datetime] = None) -> list[tuple[str, str]]:
        """The headers the request would be sent with, signed at ``timestamp`` (default: now)."""
        out: list[tuple[str, str]] = self._core.sign(method.upper(), url, _header_list(headers),
                                                     _body_bytes(body), _unix(timestamp))[0]
        return out


_SCHEMES = ("standard", "stripe", "github")


def verify_webhook(scheme: str, secret: str, headers: HeadersInput, body: Union[bytes, str], *,
                   tolerance: float = 300.0, now: Optional[float] = None) -> None:
    """Verifies an incoming webhook, or raises ``WebhookVerificationError``.

    ``scheme`` is ``"standard"`` (Standard Webhooks: ``webhook-id``, ``webhook-timestamp``,
    ``webhook-signature``, a ``whsec_`` secret), ``"stripe"`` (``Stripe-Signature: t=...,v1=...``)
    or ``"github"`` (``X-Hub-Signature-256``). Signatures are compared in constant time, and a
    timestamp more than ``tolerance`` seconds from now is refused as a possible replay. The
    error's ``check`` says what failed: ``secret``, ``header``, ``timestamp`` or ``signature``.
    Pass the body exactly as received: re-serialised JSON will not verify.
    """
    if scheme not in _SCHEMES:
        raise errors.ConfigError(f"scheme: {scheme!r} is not one of {', '.join(_SCHEMES)}")
    if not isinstance(secret, str) or not secret:
        raise errors.ConfigError("secret: expected a non-empty string")
    failure = _core.verify_webhook(scheme, secret, _header_list(headers), _body_bytes(body),
                                   float(tolerance), time.time() if now is None else float(now))
    if failure is not None:
        check, message = failure
        raise errors.WebhookVerificationError(f"webhook verification failed ({check}): {message}",
                                              check=check)
