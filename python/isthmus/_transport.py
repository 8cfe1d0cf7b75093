"""The transport seam: the one way streams and sinks send requests and read answers.

``Stream`` (pages) and ``HttpSink`` (batches) go through here, never through a client's or a
response's private parts; what this needs of them ``isthmus.http`` gives as a small internal
interface. Internal: not public API.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Optional, Tuple

from isthmus import errors
from isthmus import http as _http
from isthmus.http import Response, redact_url
from isthmus.limits import Retry, as_retry

# What the network counters hold, under the names a run reports them by (they are part of
# isthmus.pipeline.COUNT_NAMES, and the limiter's snapshot uses the same words).
NETWORK_COUNTS = ("requests", "status_429", "retries", "bytes_in", "bytes_out", "wait_seconds")


class Counters:
    """What a run reports about the network: requests, 429s, retries, bytes, time held back.

    A sink and the core's reader count into it from different threads, so under a lock.
    """

    __slots__ = (*NETWORK_COUNTS, "_lock")

    def __init__(self) -> None:
        self.requests = self.status_429 = self.retries = self.bytes_in = self.bytes_out = 0
        self.wait_seconds = 0.0  # held back by the limiter and backing off between attempts
        self._lock = threading.Lock()

    def add(self, counts: Any) -> None:
        """Adds what a sink writer of the core counted for its requests (a dict of these names)."""
        with self._lock:
            self.requests += counts["requests"]
            self.retries += counts["retries"]
            self.status_429 += counts["status_429"]
            self.bytes_in += counts["bytes_in"]
            self.bytes_out += counts["bytes_out"]
            self.wait_seconds += counts["wait_seconds"]

    def absorb(self, counts: Dict[str, Any], before: Dict[str, Any]) -> Dict[str, Any]:
        """Adds what a reader in the core counted since ``before`` (its previous ``counts``);
        returns ``counts``, to pass as ``before`` next time."""
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value - before.get(name, 0))
        return counts


def governed(client: Any, retry: Optional[Retry], attempts: int) -> Tuple[Any, Retry]:
    """The client a stream or sink sends through, and the ``Retry`` it retries by.

    One retry mechanism, the governor's: ``retry`` when given, else the client's own, else
    ``Retry(attempts=attempts)`` without a circuit breaker (a run stops on failures that
    outlast the attempts, and its rerun resumes from the checkpoint).
    """
    if retry is not None:
        return _http._retrying_view(client, retry), retry
    if getattr(client, "retry", None) is not None:
        return client, client.retry
    default = Retry(attempts=attempts, circuit_breaker=False)
    return _http._retrying_view(client, default), default


def core_client(client: Any) -> Any:
    """The core's client behind an open ``Client``: the core's page reader and sink writers
    send through its governed transport stack (auth, limits, retries) without a Python call per
    request."""
    return _http._core_client(client)


def response_of(raw: Any) -> Response:
    """A response the core's reader fetched (an ``isthmus._core.Response``), as the public
    ``Response`` a custom paginator reads."""
    return Response(raw, _http.Request("GET", raw.url))


def as_stage_retry(retry: Any) -> Optional[Retry]:
    """``retry=`` of a Stream or HttpSink: None (the client's, or a default), a Retry, or attempts."""
    if retry is None:
        return None
    if isinstance(retry, bool):
        raise errors.ConfigError(f"retry: {retry!r} is not valid; expected a Retry(...), an int number "
                                 "of attempts, or None for the client's retry")
    return as_retry(retry)


def status_error(resp: Any) -> errors.HTTPStatusError:
    """The error ``resp.raise_for_status()`` raises (``AuthError`` for a 401 ...), for an answer
    that is not a 2xx."""
    try:
        resp.raise_for_status()
    except errors.HTTPStatusError as exc:
        return exc
    return errors.HTTPStatusError(f"{resp.status_code} {resp.reason_phrase} for {resp.request.method} "
                                  f"{redact_url(resp.request.url)}", response=resp)


def excerpt(response: Response, limit: int = 500) -> str:
    """The start of a response's body with secret-looking values masked; "" when unreadable."""
    try:
        return _http._redacted_excerpt(response, limit)
    except Exception:
        return ""

