"""The transport seam: the one way streams and sinks send requests and read answers.

``Stream`` (pages) and ``HttpSink`` (batches) go through here, never through a client's or a
response's private parts; what this needs of them ``isthmus.http`` gives as a small internal
interface. Internal: not public API.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from isthmus import errors
from isthmus import http as _http
from isthmus.http import Response, redact_url
from isthmus.limits import Retry, as_retry


class Counters:
    """What a run reports about the network: requests, 429s, retries, bytes, time held back.

    A sink and the core's reader count into it from different threads, so under a lock.
    """

    __slots__ = ("requests", "status_429", "retries", "bytes_in", "bytes_out", "wait_seconds", "_lock")

    def __init__(self) -> None:
        self.requests = self.status_429 = self.retries = self.bytes_in = self.bytes_out = 0
        self.wait_seconds = 0.0  # held back by the limiter and backing off between attempts
        self._lock = threading.Lock()

    def count(self, raw: Any, request: Any) -> None:
        """Counts every attempt behind one answer of the core (a raw response)."""
        # Counted without taking the body out of the core, which may parse it in place.
        with self._lock:
            self.requests += raw.attempts
            self.retries += max(0, raw.attempts - 1)
            self.status_429 += raw.retried_429 + (raw.status == 429)
            self.bytes_in += raw.retried_bytes + raw.body_size
            if request.content:
                self.bytes_out += len(request.content) * raw.attempts
            self.wait_seconds += raw.waited

    def count_response(self, response: Response) -> None:
        """Counts every attempt behind a ``Response`` (one from ``Client.iter_many``)."""
        self.count(_http._raw_answer(response), response.request)

    def add_retries(self, n: int) -> None:
        with self._lock:
            self.retries += n

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
    """The core's client a reader in the core sends through, with the client's auth, limits
    and retries; ``client`` must be open."""
    return _http._core_client(client)


def as_stage_retry(retry: Any) -> Optional[Retry]:
    """``retry=`` of a Stream or HttpSink: None (the client's, or a default), a Retry, or attempts."""
    if retry is None:
        return None
    if isinstance(retry, bool):
        raise errors.ConfigError(f"retry: {retry!r} is not valid; expected a Retry(...), an int number "
                                 "of attempts, or None for the client's retry")
    return as_retry(retry)


def send(client: Any, requests: Sequence[Any], counters: Counters,
         concurrency: int) -> List[Union[Response, Exception]]:
    """Sends requests in parallel through the client (its governor retries 429s, 5xx and
    transport errors); counts every attempt. One Response, or the error of a request that
    never got an answer, per request, in order."""
    raws = _http._exchange(client, list(requests), concurrency)
    out: List[Union[Response, Exception]] = []
    for raw, req in zip(raws, requests):
        counters.count(raw, req)
        out.append(Response(raw, req) if raw.ok else raw.exception(req.method, redact_url(req.url)))
    return out


def answered(answers: List[Union[Response, Exception]]) -> List[Response]:
    """The responses of ``send``; raises the first request's error instead when one never got
    an answer (the governor has already retried it)."""
    responses: List[Response] = []
    for resp in answers:
        if isinstance(resp, Exception):
            raise resp
        responses.append(resp)
    return responses


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


def unread_body(response: Response) -> Any:
    """The core's answer holding the body, for parsing it in place, while Python has not read
    it; None once it has (parse ``response.content`` then)."""
    return _http._raw_answer(response) if _http._body_unread(response) else None
