"""Every exception isthmus raises, grouped by what went wrong.

Each class also subclasses the builtin a Python user would reach for first
(``ValueError``, ``ConnectionError``, ``TimeoutError``), so ``except TimeoutError``
catches an isthmus timeout. The core's error codes are mapped onto these classes in one
place, ``bindings/exceptions.cpp``. Messages name the request (method and URL, with
credentials and secret query values replaced by ``***``) and never carry a secret.

Every error has the same three attributes, ``None`` where they do not apply:
``status_code`` (the HTTP status of the answer, when there was one), ``request`` (the method
and the redacted URL, ``"GET https://api.example.com/v1/contacts?token=***"``) and ``body``
(a short excerpt of the answer with secret-looking values masked; ``""`` without an answer).
"""

from __future__ import annotations

import builtins
import functools
import json
import re
import time
from typing import Any, Iterator, Optional, cast

from isthmus import _core

__all__ = [
    "IsthmusError",
    "ConfigError",
    "RequestError",
    "InvalidURL",
    "UnsupportedScheme",
    "InvalidHeader",
    "TransportError",
    "ConnectError",
    "ResolveError",
    "TLSError",
    "ReadError",
    "ProtocolError",
    "BodyTooLarge",
    "TimeoutError",
    "TooManyRedirects",
    "DecodingError",
    "JSONDecodeError",
    "ClientClosed",
    "Cancelled",
    "HTTPStatusError",
    "ClientError",
    "AuthError",
    "RateLimited",
    "ServerError",
    "PipelineError",
    "StateError",
    "ReconciliationError",
    "TokenError",
    "AccessRefused",
    "TokenStoreError",
    "CryptoError",
    "InternalError",
    "WebhookVerificationError",
    "LimitError",
    "QuotaExhausted",
    "Throttled",
    "CircuitOpen",
    "RetryDeadlineExceeded",
]


class IsthmusError(Exception):
    """Base of every isthmus error."""

    #: The HTTP status of the answer behind the error; None when nothing answered.
    status_code: Optional[int] = None
    #: The method and the redacted URL of the request that failed, or None.
    request: Optional[str] = None
    #: A short, redacted excerpt of the answer's body; "" when there was no answer.
    body: str = ""


def _request_text(method: Optional[str], url: Optional[str]) -> Optional[str]:
    if method and url:
        return f"{method} {url}"
    return url or None


class ConfigError(IsthmusError, ValueError):
    """A configuration value is invalid. The message names the field, the value and what is valid."""


class RequestError(IsthmusError):
    """A request could not be completed. ``method`` and ``url`` (redacted) say which."""

    def __init__(self, message: str, *, method: Optional[str] = None, url: Optional[str] = None):
        super().__init__(message)
        self.method = method
        self.url = url
        self.request = _request_text(method, url)


class InvalidURL(RequestError, ValueError):
    """The URL does not parse."""


class UnsupportedScheme(InvalidURL):
    """The URL's scheme is not http or https."""


class InvalidHeader(RequestError, ValueError):
    """A header name or value cannot be sent (empty name, CR or LF)."""


class TransportError(RequestError, ConnectionError):
    """The connection failed or broke."""


class ConnectError(TransportError):
    """No connection could be made (refused, unreachable)."""


class ResolveError(ConnectError):
    """The host name did not resolve."""


class TLSError(ConnectError):
    """The TLS handshake or the certificate check failed."""


class ReadError(TransportError):
    """The connection broke while the request or the response body was in transit."""


class ProtocolError(TransportError):
    """The server answered with something that is not valid HTTP."""


class BodyTooLarge(TransportError):
    """The response body exceeded the configured maximum."""


class TimeoutError(RequestError, builtins.TimeoutError):  # noqa: A001 - deliberate, like asyncio.TimeoutError
    """A connect or total deadline passed."""


class TooManyRedirects(RequestError):
    """More redirects than the client allows."""


class DecodingError(RequestError, ValueError):
    """The response body could not be decoded (content encoding or charset)."""


class JSONDecodeError(DecodingError, json.JSONDecodeError):
    """The response body is not valid JSON. ``excerpt`` shows where it broke.

    Also a ``json.JSONDecodeError``, so code written around ``json.loads`` catches it:
    ``msg`` is the parser's reason, ``pos`` the character where it stopped (with ``lineno``
    and ``colno``), and ``doc`` the body as text with secret-looking JSON values masked
    character for character, so those positions still point into it.
    """

    def __init__(self, message: str, *, method: Optional[str] = None, url: Optional[str] = None,
                 excerpt: str = "", position: int = -1, msg: Optional[str] = None, doc: str = ""):
        # Not json.JSONDecodeError.__init__: it would replace the message with its own.
        Exception.__init__(self, message)
        self.method = method
        self.url = url
        self.request = _request_text(method, url)
        self.excerpt = excerpt
        self.position = position
        self.msg = message if msg is None else msg
        self.doc = doc
        self.pos = max(position, 0)
        self.lineno = doc.count("\n", 0, self.pos) + 1
        self.colno = self.pos - doc.rfind("\n", 0, self.pos)

    def __reduce__(self) -> Any:
        # json.JSONDecodeError's would call __init__(msg, doc, pos); this one takes the message.
        return (type(self), (self.args[0],), self.__dict__)


class ClientClosed(RequestError, RuntimeError):
    """The client was closed; it sends nothing more."""


class Cancelled(RequestError):
    """The transfer was cancelled before it completed."""


class TokenError(RequestError, PermissionError):
    """No access token could be obtained: the token endpoint refused the credentials, answered
    something unusable, or could not be reached. The message says which (with the OAuth2
    ``error`` code when the server gave one) and never contains a secret. ``status_code`` is
    the token endpoint's refusing status (400 for ``invalid_grant``), None when it gave none."""

    def __init__(self, message: str, *, method: Optional[str] = None, url: Optional[str] = None):
        super().__init__(message, method=method, url=url)
        # The core's one wording for a refusing answer (cpp/src/auth/oauth2.cpp).
        refused = _TOKEN_REFUSED.search(message)
        self.status_code = int(refused.group(1)) if refused else None


_TOKEN_REFUSED = re.compile(r" was refused with HTTP (\d{3})\b")


class AccessRefused(RequestError, PermissionError):
    """A server other than an HTTP API (a message broker) refused the credentials, the virtual
    host or a permission. ``url`` names it with the password masked."""


class TokenStoreError(IsthmusError):
    """The token store could not be used: no key (the message says how to make one), a key of
    the wrong size, a record that fails authentication (wrong key or an altered file), or a
    file that cannot be opened or written."""


class WebhookVerificationError(IsthmusError, ValueError):
    """An incoming webhook did not verify. ``check`` names what failed: ``"secret"``,
    ``"header"`` (missing or malformed), ``"timestamp"`` (outside the replay window) or
    ``"signature"``; ``None`` when the core refused the webhook without naming one."""

    def __init__(self, message: str, *, check: Optional[str] = None):
        super().__init__(message)
        self.check = check


class CryptoError(IsthmusError, ValueError):
    """A cryptographic operation was refused: a key that does not parse or does not fit the
    algorithm, or an algorithm this build does not offer. The message never holds key bytes."""


class InternalError(IsthmusError, RuntimeError):
    """A bug in isthmus: a state the core should never reach. Please report it with the
    message; nothing is swallowed."""


class LimitError(RequestError):
    """The governor did not send the request: a limit, a quota or a breaker stopped it first."""


class QuotaExhausted(LimitError):
    """A quota (say 10,000 a day) is used up. ``resets_at`` is when it refills (Unix seconds)."""

    resets_at: Optional[float] = None

    @property
    def retry_after(self) -> Optional[float]:
        """Seconds until the quota refills, from now."""
        return None if self.resets_at is None else max(0.0, self.resets_at - time.time())


class Throttled(LimitError):
    """A limit would hold the request longer than the limiter's ``max_wait``."""


class CircuitOpen(LimitError, ConnectionError):
    """Too many recent calls to this host failed; the circuit breaker is letting none through."""


class RetryDeadlineExceeded(LimitError, builtins.TimeoutError):
    """The retry deadline would pass before the request could be sent again."""


class HTTPStatusError(IsthmusError):
    """Raised by ``Response.raise_for_status()`` for a 4xx or 5xx answer.

    Carries ``status_code``, ``headers``, ``request`` (method and redacted URL), the
    ``response`` and a short, redacted ``body`` excerpt.
    """

    def __init__(self, message: str, *, response: Any):
        super().__init__(message)
        self.response = response
        self.status_code: int = response.status_code
        self.headers = response.headers
        self.request = _request_text(response.request.method, _core.redact_url(response.url))
        self.body = response._redacted_excerpt()


class ClientError(HTTPStatusError):
    """A 4xx answer."""


class AuthError(ClientError, PermissionError):
    """A 401 or 403 answer: the credentials were missing, wrong, expired or not enough."""


class RateLimited(ClientError):
    """A 429 answer. ``retry_after`` is the server's requested wait in seconds, when it gave one
    (Retry-After as seconds or an HTTP-date, read by the same parser the core's limiter uses)."""

    def __init__(self, message: str, *, response: Any):
        super().__init__(message, response=response)
        value = response.headers.get("retry-after")
        self.retry_after: Optional[float] = (
            None if value is None else _core.parse_retry_after(value, time.time()))


class ServerError(HTTPStatusError):
    """A 5xx answer."""


class PipelineError(IsthmusError, RuntimeError):
    """A pipeline cannot go on: a paginator loops, a page lacks its records, a sink keeps failing.

    Records a sink had accepted stay checkpointed; a rerun resumes after them.
    """


@functools.cache
def _pipeline_class(cause: type) -> type[PipelineError]:
    # The cause's class first: its builtin base (OSError for PermissionError, TimeoutError)
    # has the larger instance layout, so it must come before RuntimeError in the MRO.
    made = type(f"Pipeline{cause.__name__}", (cause, PipelineError),
                {"__module__": __name__, "__doc__": f"A PipelineError caused by a {cause.__name__}."})
    return cast("type[PipelineError]", made)


def pipeline_error(message: str, cause: BaseException) -> PipelineError:
    """The error a run raises for ``cause``: a ``PipelineError`` that is also an instance of the
    cause's class, so ``except AuthError`` catches what a direct call would have raised. It
    carries the cause's attributes (``status_code``, ``response``, ``url`` ...) and the cause as
    ``__cause__``."""
    cls: type[PipelineError]
    if isinstance(cause, PipelineError):
        cls = type(cause)
    elif issubclass(PipelineError, type(cause)):
        cls = PipelineError  # already one (a RuntimeError, an Exception)
    else:
        try:
            cls = _pipeline_class(cast(type, type(cause)))
        except TypeError:  # a class that cannot be combined with PipelineError's bases
            cls = PipelineError
    exc = cls.__new__(cls, message)
    BaseException.__init__(exc, message)
    exc.__dict__.update(getattr(cause, "__dict__", {}))
    exc.__cause__ = cause
    return exc


def in_run(where: str, exc: BaseException) -> BaseException:
    """What a run raises for ``exc``, met at ``where`` (``"Stream /v1/contacts"``, ``"HttpSink"``):
    an isthmus error a direct call would raise (``ConnectError``, ``TokenError``, ``AuthError``
    ...) becomes its ``pipeline_error``; a ``PipelineError`` or any other exception (a user's
    mapping or sink raising ``KeyError``) is returned as it is."""
    if isinstance(exc, IsthmusError) and not isinstance(exc, PipelineError):
        return pipeline_error(f"{where}: {exc}", exc)
    return exc


# Answers about the request, not its records (a wrong key, path or method): every other request
# of the run would get the same.
REFUSED_STATUS = frozenset({401, 403, 404, 405, 407, 410})

# Failures no retry or redelivery can mend: the setup is wrong (a key, a path, a host name, a
# certificate, the credentials, the definition itself).
_SETUP_FAILURES: tuple[type[BaseException], ...] = (ConfigError, InvalidURL, ResolveError, TLSError, AccessRefused)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what caused it, and so on down its ``__cause__`` chain."""
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__


def _token_refused(seen: BaseException) -> bool:
    """A token endpoint answered 4xx: it refuses the credential (not a failure to answer)."""
    status = getattr(seen, "status_code", None)
    return isinstance(seen, TokenError) and isinstance(status, int) and 400 <= status < 500


def affects_every_record(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the request itself is refused, so every other
    request of the run would fail the same way: a refused status (401, 403, 404, 405, 407, 410),
    a token endpoint refusing the credential (a 4xx answer, e.g. ``invalid_client`` or
    ``invalid_grant``), a wrong URL, host or certificate, a bad definition.
    A run meeting one stops instead of filing each page or record as a dead letter."""
    return any(isinstance(seen, _SETUP_FAILURES) or getattr(seen, "status_code", None) in REFUSED_STATUS
               or _token_refused(seen) for seen in _causes(exc))


def refuses_credentials(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the credentials themselves are refused: the API
    answering 401 or 403, or its token endpoint a 4xx such as ``invalid_grant``. Only the
    customer can mend that (a fleet's connection goes ``relink_needed``)."""
    return any(_token_refused(seen) or (isinstance(seen, (AuthError, PipelineError))
                                        and getattr(seen, "status_code", None) in (401, 403))
               for seen in _causes(exc))


class StateError(IsthmusError):
    """A pipeline's state file or a queue file cannot be trusted (empty, damaged, not a file of
    that kind) or used (locked too long, closed). The message names the file."""


class ReconciliationError(PipelineError):
    """A run's counts do not add up: read != written + dead-lettered + dropped + skipped."""
