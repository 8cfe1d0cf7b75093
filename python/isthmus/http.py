"""The HTTP client: ``Client`` (blocking), ``AsyncClient`` (asyncio) and ``Response``.

Both clients hand every request to the C++ core, which drives libcurl from its own I/O
thread; Python waits with the GIL released. ``Client.get_many`` sends a whole list of
requests in one call, so fetching at volume costs no Python per request beyond building it.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import http as _stdlib_http
import itertools
import json as _json
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any, Optional, Sequence, Union, cast
from urllib.parse import urlencode, urlsplit

from isthmus import _core, errors
from isthmus import limits as _limits

__all__ = ["Client", "AsyncClient", "Response", "Request", "Headers"]

HeaderInput = Union[Mapping[str, str], Sequence[tuple[str, str]], None]
ParamsInput = Union[Mapping[str, Any], Sequence[tuple[str, Any]], None]

_PRIORITY_HEADER = "Isthmus-Priority"
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
# Values of these JSON keys are blanked out of body excerpts shown in errors and reprs.
_SECRET_JSON = re.compile(
    r'("(?:[^"]*(?:token|secret|password|passwd|api_?key|authorization|credential)[^"]*)"\s*:\s*)"[^"]*"',
    re.IGNORECASE,
)


def _mask_value(match: re.Match[str]) -> str:
    """A secret JSON value masked with as many '*' as it has characters, so offsets hold."""
    key, quoted = match.group(1), match.group(0)[len(match.group(1)):]
    return key + '"' + "*" * (len(quoted) - 2) + '"'


def redact_url(url: str) -> str:
    """The URL with its password and secret-looking query values replaced by ``***``."""
    return _core.redact_url(url)


class Headers(MutableMapping[str, str]):
    """Case-insensitive HTTP headers that keep order and repeated names.

    ``headers["content-type"]`` gives the first value; ``get_list(name)`` gives every value.
    """

    __slots__ = ("_items",)

    def __init__(self, items: HeaderInput = None):
        self._items: list[tuple[str, str]] = []
        if items is None:
            return
        if isinstance(items, Headers):  # a Mapping too, whose items() would drop repeats
            pairs: Iterable[tuple[str, str]] = items.multi_items()
        else:
            pairs = items.items() if isinstance(items, Mapping) else items
        for name, value in pairs:
            if not isinstance(name, str) or not isinstance(value, str):
                raise errors.ConfigError(
                    f"headers: name and value must be str, got {type(name).__name__}: {type(value).__name__}"
                )
            self._items.append((name, value))

    def __getitem__(self, name: str) -> str:
        key = name.lower()
        for k, v in self._items:
            if k.lower() == key:
                return v
        raise KeyError(name)

    def __setitem__(self, name: str, value: str) -> None:
        self.__delitem__(name) if name in self else None
        self._items.append((name, value))

    def __delitem__(self, name: str) -> None:
        key = name.lower()
        kept = [(k, v) for k, v in self._items if k.lower() != key]
        if len(kept) == len(self._items):
            raise KeyError(name)
        self._items = kept

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.lower()
        return any(k.lower() == key for k, _ in self._items)

    def __iter__(self) -> Iterator[str]:
        seen = set()
        for k, _ in self._items:
            if k.lower() not in seen:
                seen.add(k.lower())
                yield k

    def __len__(self) -> int:
        return len({k.lower() for k, _ in self._items})

    def get_list(self, name: str) -> list[str]:
        key = name.lower()
        return [v for k, v in self._items if k.lower() == key]

    def multi_items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return {k.lower(): v for k, v in self.items()} == {k.lower(): v for k, v in other.items()}
        return NotImplemented

    def __repr__(self) -> str:
        shown = [(k, "***" if k.lower() in _SENSITIVE_HEADERS else v) for k, v in self._items]
        return f"Headers({shown!r})"


_SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"}
)


def _merge_url(base_url: Optional[str], url: str) -> str:
    if "://" in url or not base_url:
        return url
    if not url:
        return base_url
    return base_url.rstrip("/") + "/" + url.lstrip("/")


def _flatten_params(params: ParamsInput) -> list[tuple[str, str]]:
    """(name, value) pairs: a list value repeats its name, None is left out, bools are lower case."""
    if not params:
        return []
    pairs = params.items() if isinstance(params, Mapping) else params
    flat: list[tuple[str, str]] = []
    for key, value in pairs:
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if v is None:
                continue
            if isinstance(v, bool):
                v = "true" if v else "false"
            flat.append((str(key), str(v)))
    return flat


def _encode_params(params: ParamsInput) -> str:
    # The core's encoding, which the signers use too: what is signed is what is sent.
    return _core.encode_query(_flatten_params(params)) if params else ""


def _merge_headers(defaults: Headers, given: HeaderInput) -> Headers:
    """The client's headers with the request's: a name given per request replaces every line
    of that name among the defaults, and keeps all of its own lines (as httpx does)."""
    own = Headers(given)
    replaced = {name.lower() for name, _ in own.multi_items()}
    return Headers([(k, v) for k, v in defaults.multi_items() if k.lower() not in replaced]
                   + own.multi_items())


def _body(content: Union[bytes, str, None], data: Union[bytes, str, Mapping[str, Any], None],
          json: Any) -> tuple[Optional[bytes], Optional[str]]:
    """The body bytes and the Content-Type they imply, from at most one of the three kinds."""
    given = [name for name, value in (("content", content), ("data", data), ("json", json))
             if value is not None]
    if len(given) > 1:
        raise errors.ConfigError(f"{' and '.join(given)}: give one body, not several")
    if json is not None:
        return _core.json_dumps(json), "application/json"
    if isinstance(data, Mapping):
        # A form body keeps the form encoding browsers and httpx send (a space is '+').
        return urlencode(_flatten_params(data)).encode(), "application/x-www-form-urlencoded"
    raw, field = (content, "content") if content is not None else (data, "data")
    if raw is None:
        return None, None
    if isinstance(raw, str):
        return raw.encode("utf-8"), None
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return bytes(raw), None
    hint = "; use json= for JSON" if field == "content" else ""
    raise errors.ConfigError(f"{field}: expected bytes or str, got {type(raw).__name__}{hint}")


class Request:
    """A request ready to send: method, absolute URL, headers and body bytes."""

    __slots__ = ("method", "url", "headers", "content", "timeout")

    def __init__(self, method: str, url: str, *, headers: HeaderInput = None,
                 content: Optional[bytes] = None, timeout: Optional[float] = None):
        method = method.upper() if isinstance(method, str) else method
        if method not in _METHODS:
            raise errors.ConfigError(f"method: {method!r} is not one of {', '.join(sorted(_METHODS))}")
        self.method = method
        self.url = url
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.content = content
        self.timeout = timeout

    @classmethod
    def _get(cls, url: str, headers: Headers) -> Request:
        # The fast path of get_many: nothing to validate that build_request has not already.
        r = cls.__new__(cls)
        r.method, r.url, r.headers, r.content, r.timeout = "GET", url, headers, None, None
        return r

    def __repr__(self) -> str:
        return f"<Request {self.method} {redact_url(self.url)}>"


class Response:
    """An HTTP response. A 4xx or 5xx status raises only through ``raise_for_status()``."""

    __slots__ = ("_raw", "request", "_content", "_headers")

    def __init__(self, raw: Any, request: Request):
        self._raw: _core.Response = raw
        self.request = request
        self._content: Optional[bytes] = None
        self._headers: Optional[Headers] = None

    @property
    def status_code(self) -> int:
        """The HTTP status, e.g. 200."""
        return self._raw.status

    @property
    def reason_phrase(self) -> str:
        """The standard phrase of the status (``"Not Found"``); empty for an unknown code."""
        try:
            return _stdlib_http.HTTPStatus(self.status_code).phrase
        except ValueError:
            return ""

    @property
    def http_version(self) -> str:
        """The protocol the answer came over: ``"HTTP/1.1"`` or ``"HTTP/2"``."""
        return "HTTP/" + self._raw.http_version

    @property
    def headers(self) -> Headers:
        """The response headers, case-insensitive; ``get_list`` gives a repeated name's values."""
        if self._headers is None:
            self._headers = Headers(self._raw.headers)
        return self._headers

    @property
    def url(self) -> str:
        """The final URL, after redirects."""
        return self._raw.url

    @property
    def redirects(self) -> int:
        """How many redirects were followed to get here."""
        return self._raw.redirects

    @property
    def attempts(self) -> int:
        """Requests sent to get this answer: 1, or more when the client's ``Retry`` retried."""
        return self._raw.attempts

    @property
    def elapsed(self) -> datetime.timedelta:
        """Time from sending the request to the end of the response."""
        return datetime.timedelta(seconds=self._raw.elapsed)

    @property
    def content(self) -> bytes:
        """The body as bytes, decoded from gzip, deflate or br."""
        if self._content is None:
            self._content = self._raw.take_body()
        return self._content

    @property
    def encoding(self) -> str:
        """The charset of the Content-Type header, or ``"utf-8"`` when it names none."""
        ctype = self.headers.get("content-type", "")
        match = re.search(r"charset=\"?([\w.:-]+)", ctype, re.IGNORECASE)
        return match.group(1) if match else "utf-8"

    @property
    def text(self) -> str:
        """The body as text in ``encoding``; undecodable bytes become U+FFFD."""
        try:
            return self.content.decode(self.encoding, errors="replace")
        except LookupError:
            return self.content.decode("utf-8", errors="replace")

    def json(self, **kwargs: Any) -> Any:
        """The body parsed as JSON (``kwargs`` go to ``json.loads``). A body that is not JSON
        raises ``isthmus.JSONDecodeError``, which is also a ``json.JSONDecodeError`` and a
        ``ValueError``."""
        raw = self.content
        doc = ""
        try:
            # As json.loads does for bytes: UTF-8, -16 or -32, a BOM skipped.
            doc = raw.decode(_json.detect_encoding(raw))
            return _json.loads(doc, **kwargs)
        except ValueError as exc:
            where = redact_url(self.url)
            pos = exc.pos if isinstance(exc, _json.JSONDecodeError) else -1
            masked = _SECRET_JSON.sub(_mask_value, doc)
            raise errors.JSONDecodeError(
                f"invalid JSON in the response to {self.request.method} {where}: {exc}",
                method=self.request.method, url=where, position=pos,
                excerpt=masked[max(0, pos - 40): pos + 40] if pos >= 0 else "",
                msg=getattr(exc, "msg", str(exc)), doc=masked,
            ) from None

    @property
    def is_success(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status_code < 300

    @property
    def is_error(self) -> bool:
        """True for a 4xx or 5xx status."""
        return self.status_code >= 400

    def raise_for_status(self) -> Response:
        """Return the response if its status is below 400; raise the matching HTTPStatusError."""
        status = self.status_code
        if status < 400:
            return self
        if status == 429:
            cls: type[errors.HTTPStatusError] = errors.RateLimited
        elif status in (401, 403):
            cls = errors.AuthError
        elif status < 500:
            cls = errors.ClientError
        else:
            cls = errors.ServerError
        raise cls(f"{status} {self.reason_phrase} for {self.request.method} {redact_url(self.url)}",
                  response=self)

    def _redacted_excerpt(self, limit: int = 500) -> str:
        return _SECRET_JSON.sub(r'\1"***"', self.text[:limit])

    def __repr__(self) -> str:
        return f"<Response [{self.status_code} {self.reason_phrase}] {self.request.method} {redact_url(self.url)}>"

    def _repr_html_(self) -> str:
        import html
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape('***' if k.lower() in _SENSITIVE_HEADERS else v)}</td></tr>"
            for k, v in self.headers.multi_items()
        )
        return (
            f"<div><b>{self.status_code} {html.escape(self.reason_phrase)}</b> "
            f"{html.escape(self.request.method)} {html.escape(redact_url(self.url))} "
            f"({self._raw.elapsed * 1000:.1f} ms, {len(self.content):,} bytes)"
            f"<table>{rows}</table><pre>{html.escape(self._redacted_excerpt(2000))}</pre></div>"
        )


def _check_positive(field: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise errors.ConfigError(f"{field}: {value!r} is not valid; expected a number greater than 0")


class _ClientBase:
    """What Client and AsyncClient share: configuration, URL and request building."""

    def __init__(
        self,
        base_url: Optional[str] = None,
        *,
        headers: HeaderInput = None,
        params: ParamsInput = None,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        max_connections: int = 32,
        follow_redirects: bool = True,
        max_redirects: int = 10,
        verify: Union[bool, str] = True,
        http2: bool = True,
        user_agent: Optional[str] = None,
        max_body_bytes: Optional[int] = None,
        auth: Optional[Any] = None,
        rate_limit: Any = None,
        retry: Any = None,
        limit_key: Optional[Mapping[str, str]] = None,
    ):
        if base_url is not None:
            if not isinstance(base_url, str):
                raise errors.ConfigError(f"base_url: {base_url!r} is not a string")
            if urlsplit(base_url).scheme not in ("http", "https"):
                raise errors.UnsupportedScheme(
                    f"base_url: {redact_url(base_url)!r} must start with http:// or https://",
                    url=redact_url(base_url))
        _check_positive("timeout", timeout)
        _check_positive("connect_timeout", connect_timeout)
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise errors.ConfigError(f"max_connections: {max_connections!r} is not valid; expected an int >= 1")
        if isinstance(max_redirects, bool) or not isinstance(max_redirects, int) or max_redirects < 0:
            raise errors.ConfigError(f"max_redirects: {max_redirects!r} is not valid; expected an int >= 0")
        if not isinstance(verify, (bool, str)):
            raise errors.ConfigError(f"verify: {verify!r} is not valid; expected True, False or a CA bundle path")
        _check_positive("max_body_bytes", max_body_bytes, allow_none=True)
        self.base_url = base_url
        self.headers = Headers(headers)
        self.params = params
        self.timeout = float(timeout)
        self.max_connections = max_connections
        self._closed = False
        if auth is not None and not hasattr(auth, "_credential"):
            raise errors.ConfigError(
                f"auth: {type(auth).__name__} is not an isthmus credential (isthmus.ApiKey, "
                "BasicAuth, BearerToken, OAuth2..., JWTBearer, HmacSigner, AwsSigV4)")
        self.auth = auth
        # Limits and retries: the core wraps the transport in a GovernedTransport.
        self.limiter = _limits.as_limiter(rate_limit)
        self.retry = _limits.as_retry(retry)
        if self.retry and self.limiter is None:
            self.limiter = _limits.Limiter()  # no limits, but retries and 429s are still counted per key
        if limit_key is not None:
            unknown = set(limit_key) - {"provider", "credential", "tenant"}
            if unknown:
                raise errors.ConfigError(
                    f"limit_key: {sorted(unknown)[0]!r} is not valid; expected keys provider, credential, tenant")
        self._limit_key = dict(limit_key) if limit_key else None
        self._core = _core.HttpClient(
            timeout=float(timeout),
            connect_timeout=float(connect_timeout),
            max_connections_per_host=max_connections,
            max_connections=0,
            follow_redirects=bool(follow_redirects),
            max_redirects=max_redirects,
            verify=verify is not False,
            ca_bundle=verify if isinstance(verify, str) else "",
            http2=bool(http2),
            user_agent=user_agent or "isthmus/0.1",
            max_body_bytes=int(max_body_bytes or 0),
            credential=auth._credential() if auth is not None else None,
            governor=self.limiter._core if self.limiter else None,
            retry=self.retry._spec() if self.retry else None,
            limit_key=self._limit_key,
        )

    def _with_retry(self, retry: _limits.Retry) -> Any:
        """This client retrying by ``retry`` instead: the same connections, credential and
        limiter (one is made when the client has none, so waits are still counted). The copy
        is for internal callers and is never closed: closing it would close this client."""
        view = copy.copy(self)
        view.retry = retry
        if view.limiter is None:
            view.limiter = _limits.Limiter()
        view._core = self._core.governed(view.limiter._core, retry._spec(), self._limit_key)
        return view

    def limits_snapshot(self) -> dict[str, dict[str, Any]]:
        """Per-key counters of this client's limiter (shared with other clients given the same
        ``Limiter``): waits, 429s, 5xx, retries, the current adaptive limit. Empty without one."""
        return self.limiter.snapshot() if self.limiter else {}

    def build_request(
        self,
        method: str,
        url: str,
        *,
        params: ParamsInput = None,
        headers: HeaderInput = None,
        content: Union[bytes, str, None] = None,
        data: Union[bytes, str, Mapping[str, Any], None] = None,
        json: Any = None,
        timeout: Optional[float] = None,
        priority: Optional[str] = None,
    ) -> Request:
        """The Request that ``request()`` would send, with the client's defaults merged in.

        ``url`` is a path joined to ``base_url``, or an absolute URL; non-ASCII and unsafe
        characters in it are percent-encoded as UTF-8 (existing ``%XX`` escapes are kept).
        ``params`` (a mapping or pairs; a list value repeats the name) are added to the
        query after the client's, a space as ``%20``. ``headers`` (a mapping, pairs, or
        ``Headers``; repeated names are all sent) replace the client's headers of the same
        names. One body at most: ``content`` (bytes, or str sent as UTF-8), ``data`` (a
        mapping sent as a form) or ``json``. ``timeout`` overrides the client's for this
        request; ``priority`` (``"high"``, ``"normal"``, ``"low"``) orders it in the limiter.
        """
        if not isinstance(url, str):
            raise errors.InvalidURL(f"url: {url!r} is not a string")
        full = _merge_url(self.base_url, url)
        query = "&".join(q for q in (_encode_params(self.params), _encode_params(params)) if q)
        if query:
            full += ("&" if "?" in full else "?") + query
        merged = _merge_headers(self.headers, headers)
        body, content_type = _body(content, data, json)
        if content_type and "content-type" not in merged:
            merged["Content-Type"] = content_type
        if timeout is not None:
            _check_positive("timeout", timeout)
        if priority is not None:
            if priority not in ("high", "normal", "low"):
                raise errors.ConfigError(f"priority: {priority!r} is not valid; expected 'high', 'normal' or 'low'")
            # Read and removed by the governor before the request leaves.
            merged[_PRIORITY_HEADER] = priority
        return Request(method, _core.encode_url(full), headers=merged, content=body, timeout=timeout)

    def _coerce_all(self, items: Iterable[Union[str, Request]]) -> list[Request]:
        """Requests for get_many: a path becomes a GET built once from the client's defaults."""
        query = _encode_params(self.params) if self.params else ""
        headers = Headers(self.headers.multi_items())
        out: list[Request] = []
        append = out.append
        for item in items:
            if isinstance(item, Request):
                append(item)
            elif isinstance(item, str):
                url = _merge_url(self.base_url, item)
                if query:
                    url += ("&" if "?" in url else "?") + query
                append(Request._get(url, headers))  # headers shared: never mutated after build
            else:
                raise errors.InvalidURL(f"url: {item!r} is neither a path string nor a Request")
        return out

    def _check_open(self) -> None:
        if self._closed:
            raise errors.ClientClosed("the client is closed")

    def __repr__(self) -> str:
        base = redact_url(self.base_url) if self.base_url else None
        return f"<{type(self).__name__} base_url={base!r} max_connections={self.max_connections}>"


_VERB_DOC = """Send a {method} request{awaited} and return its Response.

``url`` is a path joined to ``base_url``, or an absolute URL. ``params`` are added to the
query; ``headers`` replace the client's of the same names; the body is one of ``content``
(bytes, or str sent as UTF-8), ``data`` (a mapping sent as a form) or ``json``; ``timeout``
is in seconds; ``priority`` is ``"high"``, ``"normal"`` or ``"low"``. See ``build_request``.
A 4xx or 5xx raises only through ``raise_for_status()``.
"""


def _verb(method: str, awaitable: bool = False) -> Any:
    """The ``get``/``post``/... method of a client: ``request`` with ``method`` filled in,
    its parameters spelled out so that ``help()`` and ``inspect.signature`` show them."""

    if awaitable:
        async def call(self: Any, url: str, *, params: ParamsInput = None,
                       headers: HeaderInput = None, content: Union[bytes, str, None] = None,
                       data: Union[bytes, str, Mapping[str, Any], None] = None, json: Any = None,
                       timeout: Optional[float] = None, priority: Optional[str] = None) -> Response:
            return cast(Response, await self.request(
                method, url, params=params, headers=headers, content=content, data=data, json=json,
                timeout=timeout, priority=priority))
    else:
        # mypy wants both variants of a conditional def to share one signature; one is async by design
        def call(self: Any, url: str, *, params: ParamsInput = None,  # type: ignore[misc]
                 headers: HeaderInput = None, content: Union[bytes, str, None] = None,
                 data: Union[bytes, str, Mapping[str, Any], None] = None, json: Any = None,
                 timeout: Optional[float] = None, priority: Optional[str] = None) -> Response:
            return cast(Response, self.request(
                method, url, params=params, headers=headers, content=content, data=data, json=json,
                timeout=timeout, priority=priority))

    call.__name__ = method.lower()
    call.__qualname__ = f"{'AsyncClient' if awaitable else 'Client'}.{method.lower()}"
    call.__doc__ = _VERB_DOC.format(method=method, awaited=", awaited," if awaitable else "")
    return call


def _unwrap(raw: Any, request: Request) -> Response:
    if not raw.ok:
        raise raw.exception(request.method, redact_url(request.url))
    return Response(raw, request)


class Client(_ClientBase):
    """A blocking HTTP client, safe to share between Python threads.

    >>> with isthmus.Client("https://api.example.com", headers={"Accept": "application/json"}) as c:
    ...     c.get("/v1/contacts", params={"limit": 100}).raise_for_status().json()
    """

    def request(
        self,
        method: str,
        url: str,
        *,
        params: ParamsInput = None,
        headers: HeaderInput = None,
        content: Union[bytes, str, None] = None,
        data: Union[bytes, str, Mapping[str, Any], None] = None,
        json: Any = None,
        timeout: Optional[float] = None,
        priority: Optional[str] = None,
    ) -> Response:
        """Send a ``method`` request and return its Response; the parameters are those of
        ``build_request``. A 4xx or 5xx raises only through ``raise_for_status()``; a request
        that gets no answer raises a ``RequestError`` (``ConnectError``, ``TimeoutError``...)."""
        return self.send(self.build_request(
            method, url, params=params, headers=headers, content=content, data=data, json=json,
            timeout=timeout, priority=priority))

    def send(self, request: Request) -> Response:
        """Send a Request as built (by ``build_request`` or by hand) and return its Response."""
        self._check_open()
        raw = self._core.request(
            request.method, request.url, request.headers.multi_items(), request.content,
            request.timeout or 0.0, -1, [],
        )
        return _unwrap(raw, request)

    get = _verb("GET")
    post = _verb("POST")
    put = _verb("PUT")
    patch = _verb("PATCH")
    delete = _verb("DELETE")
    head = _verb("HEAD")
    options = _verb("OPTIONS")

    def get_many(
        self,
        paths_or_requests: Iterable[Union[str, Request]],
        *,
        concurrency: Optional[int] = None,
        return_exceptions: bool = False,
    ) -> list[Union[Response, Exception]]:
        """Send many requests in one call; responses come back in the order given.

        Strings are GET paths (or absolute URLs); ``Request`` objects go as built. At most
        ``concurrency`` (default ``max_connections``) are in flight. A request that fails
        raises its error once all are done, or, with ``return_exceptions=True``, stands in
        the list as the exception.
        """
        self._check_open()
        concurrency = self.max_connections if concurrency is None else concurrency
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise errors.ConfigError(f"concurrency: {concurrency!r} is not valid; expected an int >= 1")
        requests = self._coerce_all(paths_or_requests)
        raws = self._exchange_many(requests, concurrency)
        out: list[Union[Response, Exception]] = []
        first_error: Optional[Exception] = None
        for raw, request in zip(raws, requests):
            if raw.ok:
                out.append(Response(raw, request))
            else:
                exc = raw.exception(request.method, redact_url(request.url))
                if first_error is None:
                    first_error = exc
                out.append(exc)
        if first_error is not None and not return_exceptions:
            raise first_error
        return out

    def _exchange_many(self, requests: list[Request], concurrency: int) -> list[Any]:
        """The core's raw answers, in order; a failed request's answer carries its error."""
        shared: dict[int, list[tuple[str, str]]] = {}
        items = []
        for r in requests:
            hdrs = shared.get(id(r.headers))
            if hdrs is None:
                hdrs = shared[id(r.headers)] = r.headers.multi_items()
            items.append((r.method, r.url, hdrs, r.content, r.timeout or 0.0))
        return self._core.request_many(items, concurrency)

    def iter_many(
        self,
        paths_or_requests: Iterable[Union[str, Request]],
        *,
        concurrency: Optional[int] = None,
        chunk_size: Optional[int] = None,
        return_exceptions: bool = False,
    ) -> Iterator[Union[Response, Exception]]:
        """Like ``get_many``, but yields responses in order as they are ready.

        ``concurrency`` requests stay in flight all the time (a finished one is replaced at
        once, while the caller works on what it was given), and at most ``chunk_size``
        (default 16 x concurrency) are sent ahead of the one the caller is waiting for, so
        memory stays flat however long the input, which may itself be a lazy iterator.
        Stopping early cancels what is still in flight. A failed request raises its error
        when its turn comes, or is yielded as the exception with ``return_exceptions=True``.
        """
        self._check_open()
        concurrency = self.max_connections if concurrency is None else concurrency
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise errors.ConfigError(f"concurrency: {concurrency!r} is not valid; expected an int >= 1")
        chunk_size = 16 * concurrency if chunk_size is None else chunk_size
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise errors.ConfigError(f"chunk_size: {chunk_size!r} is not valid; expected an int >= 1")
        return self._rolling(iter(paths_or_requests), concurrency, max(chunk_size, concurrency), return_exceptions)

    def _rolling(self, items: Iterator[Union[str, Request]], concurrency: int, ahead: int,
                 return_exceptions: bool) -> Iterator[Union[Response, Exception]]:
        ready = threading.Event()
        # The core pushes finished transfers to the queue; its notifier thread sets `ready`.
        queue = _core.CompletionQueue(ready.set)
        requests: dict[int, Request] = {}      # index -> request, while in flight
        transfers: dict[int, int] = {}         # index -> the core's transfer id, while in flight
        done: dict[int, Union[Response, Exception]] = {}
        sent = turn = 0
        exhausted = False
        try:
            while True:
                while not exhausted and len(transfers) < concurrency and sent - turn < ahead:
                    item = next(items, None)
                    if item is None:
                        exhausted = True
                        break
                    request = self._coerce_all([item])[0]
                    requests[sent] = request
                    transfers[sent] = self._core.send_async(
                        queue, sent, request.method, request.url, request.headers.multi_items(),
                        request.content, request.timeout or 0.0, -1, [])
                    sent += 1
                if turn in done:
                    result = done.pop(turn)
                    turn += 1
                    if isinstance(result, Exception) and not return_exceptions:
                        raise result
                    yield result
                    continue
                if exhausted and not transfers:
                    return
                ready.wait()
                ready.clear()
                for index, raw in queue.take():
                    transfers.pop(index, None)
                    request = requests.pop(index)
                    done[index] = (Response(raw, request) if raw.ok
                                   else raw.exception(request.method, redact_url(request.url)))
        finally:
            for transfer in transfers.values():
                self._core.cancel(transfer)
            queue.close()

    def close(self) -> None:
        """Cancel what is in flight and release connections. Idempotent."""
        if not self._closed:
            self._closed = True
            self._core.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncClient(_ClientBase):
    """The same API as ``Client``, with awaitables; for asyncio and Jupyter.

    Cancelling the task that awaits a request cancels the transfer in the core.
    """

    def __init__(self, base_url: Optional[str] = None, **kwargs: Any):
        super().__init__(base_url, **kwargs)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._queue: Any = None
        self._futures: dict[int, tuple[asyncio.Future[Response], Request]] = {}
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return loop
        if self._loop is not None and not self._loop.is_closed() and self._futures:
            raise errors.ConfigError("AsyncClient: in use by another event loop; create one client per loop")
        if self._queue is not None:
            self._queue.close()
        self._loop = loop

        def notify(loop: asyncio.AbstractEventLoop = loop) -> None:
            try:
                loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop closed; nobody is waiting any more
                pass

        self._queue = _core.CompletionQueue(notify)
        return loop

    def _drain(self) -> None:
        for token, raw in self._queue.take():
            entry = self._futures.pop(token, None)
            if entry is None:
                continue
            future, request = entry
            if future.done():
                continue
            if raw.ok:
                future.set_result(Response(raw, request))
            else:
                future.set_exception(raw.exception(request.method, redact_url(request.url)))

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: ParamsInput = None,
        headers: HeaderInput = None,
        content: Union[bytes, str, None] = None,
        data: Union[bytes, str, Mapping[str, Any], None] = None,
        json: Any = None,
        timeout: Optional[float] = None,
        priority: Optional[str] = None,
    ) -> Response:
        """Send a ``method`` request and return its Response, awaited; the parameters are
        those of ``build_request``. A 4xx or 5xx raises only through ``raise_for_status()``."""
        return await self.send(self.build_request(
            method, url, params=params, headers=headers, content=content, data=data, json=json,
            timeout=timeout, priority=priority))

    async def send(self, request: Request) -> Response:
        """Send a Request as built and return its Response, awaited. Cancelling the awaiting
        task cancels the transfer."""
        self._check_open()
        loop = self._bind_loop()
        token = next(self._tokens)
        future: asyncio.Future[Response] = loop.create_future()
        self._futures[token] = (future, request)
        transfer = self._core.send_async(
            self._queue, token, request.method, request.url, request.headers.multi_items(),
            request.content, request.timeout or 0.0, -1, [],
        )
        try:
            return await future
        except asyncio.CancelledError:
            self._futures.pop(token, None)
            self._core.cancel(transfer)
            raise

    get = _verb("GET", awaitable=True)
    post = _verb("POST", awaitable=True)
    put = _verb("PUT", awaitable=True)
    patch = _verb("PATCH", awaitable=True)
    delete = _verb("DELETE", awaitable=True)
    head = _verb("HEAD", awaitable=True)
    options = _verb("OPTIONS", awaitable=True)

    async def get_many(
        self,
        paths_or_requests: Iterable[Union[str, Request]],
        *,
        concurrency: Optional[int] = None,
        return_exceptions: bool = False,
    ) -> list[Union[Response, BaseException]]:
        """Like ``Client.get_many``, awaited: at most ``concurrency`` in flight, results in order."""
        concurrency = self.max_connections if concurrency is None else concurrency
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise errors.ConfigError(f"concurrency: {concurrency!r} is not valid; expected an int >= 1")
        requests = self._coerce_all(paths_or_requests)
        gate = asyncio.Semaphore(concurrency)

        async def one(req: Request) -> Response:
            async with gate:
                return await self.send(req)

        return await asyncio.gather(*(one(r) for r in requests), return_exceptions=return_exceptions)

    async def aclose(self) -> None:
        """Cancel what is in flight and release connections. Idempotent."""
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._core.close()
        if self._queue is not None:
            self._queue.close()
        for future, _ in self._futures.values():
            if not future.done():
                future.cancel()
        self._futures.clear()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


# -- the transport seam's view ---------------------------------------------------------------
# Internal: what ``isthmus._transport`` (the one seam streams and sinks send through) needs of a
# client and a response, so that nothing outside this module reaches into their private parts.
# Not public API; other modules call ``isthmus._transport``, never these.

def _retrying_view(client: Any, retry: _limits.Retry) -> Any:
    """Internal: ``client`` retrying by ``retry`` (see ``_ClientBase._with_retry``)."""
    return client._with_retry(retry)


def _core_client(client: Any) -> Any:
    """Internal: the core's HttpClient an open ``Client`` sends through."""
    client._check_open()
    return client._core


def _redacted_excerpt(response: Response, limit: int) -> str:
    """Internal: the start of the body as text, secret-looking JSON values masked."""
    return response._redacted_excerpt(limit)
