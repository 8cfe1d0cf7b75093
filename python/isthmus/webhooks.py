"""Receiving webhooks: a server in the C++ core that checks each delivery, dedupes it by event
id, writes it durably to a queue, and only then answers 200.

::

    rx = ist.WebhookReceiver(
        routes={"/hooks/crm": {"scheme": "standard", "secret": "whsec_..."}},
        queue=ist.LocalQueue("events.db"), port=0)
    with rx:
        rx.url        # "http://127.0.0.1:PORT": give the sender rx.url + "/hooks/crm"
        rx.stats()    # accepted, duplicates, bad_signature, ... and per-route accepted counts

Each queued message is one JSON text: ``{"route", "event_id", "received_at", "timestamp",
"event"}`` (``event`` is the body as the sender wrote it). docs/webhooks.md lists the schemes,
the status of every rejection and the counters; ``isthmus webhooks serve file.yaml`` serves
the same from a YAML file (``load_receiver``).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import numbers
import os
from pathlib import Path
from types import TracebackType
from typing import Any, Dict, Mapping, Optional, Type, Union

from isthmus import _core, errors
from isthmus.queue import AmqpQueue, LocalQueue, open_queue

__all__ = ["WebhookReceiver", "load_receiver", "webhooks_schema", "validate_webhooks"]

log = logging.getLogger("isthmus")

SCHEMES = ("standard", "stripe", "github", "hmac")
_ROUTE_KEYS = ("scheme", "secret", "tolerance", "id_header", "timestamp_header", "signature_header")
_HEADER_KEYS = ("id_header", "timestamp_header", "signature_header")
SCHEMA_PATH = Path(__file__).parent / "schema" / "webhooks.schema.json"


def _integer(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= int(value) <= high:
        raise errors.ConfigError(f"{name}: {value!r} is not valid; expected an integer from {low} to {high}")
    return int(value)


def _route(path: Any, spec: Any) -> Dict[str, Any]:
    where = f"routes[{path!r}]"
    if not isinstance(path, str) or not path.startswith("/"):
        raise errors.ConfigError(f"{where}: the path is not valid; expected a str starting with '/'")
    if not isinstance(spec, Mapping):
        raise errors.ConfigError(f"{where}: a {type(spec).__name__} is not valid; expected a dict with "
                                 "scheme and secret")
    for key in spec:
        if key not in _ROUTE_KEYS:
            raise errors.ConfigError(f"{where}.{key}: unknown key; expected one of {', '.join(_ROUTE_KEYS)}")
    scheme = spec.get("scheme", "standard")
    if scheme not in SCHEMES:
        raise errors.ConfigError(f"{where}.scheme: {scheme!r} is not valid; expected one of {', '.join(SCHEMES)}")
    secret = spec.get("secret")
    if not isinstance(secret, str) or not secret:
        raise errors.ConfigError(f"{where}.secret: missing or empty (not shown: a secret); expected the "
                                 "signing secret as a non-empty str")
    tolerance = spec.get("tolerance", 300)
    if (isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not math.isfinite(tolerance)
            or tolerance < 0):
        raise errors.ConfigError(f"{where}.tolerance: {tolerance!r} is not valid; expected seconds >= 0 "
                                 "(0: timestamps are not checked)")
    out: Dict[str, Any] = {"path": path, "scheme": scheme, "secret": secret, "tolerance": float(tolerance)}
    for key in _HEADER_KEYS:
        value = spec.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise errors.ConfigError(f"{where}.{key}: {value!r} is not valid; expected a header name")
        out[key] = value
    return out


class WebhookReceiver:
    """An HTTP server that receives signed webhooks into a durable queue.

    ``routes`` maps a path to ``{"scheme", "secret"}`` and optionally ``"tolerance"`` (the
    replay window in seconds, default 300, 0 to skip) and, for the ``hmac`` scheme,
    ``"id_header"`` (default ``X-Webhook-Id``), ``"timestamp_header"`` (default none) and
    ``"signature_header"`` (default ``X-Webhook-Signature``). Schemes: ``standard`` (Standard
    Webhooks), ``stripe``, ``github``, ``hmac``.

    ``queue`` is a ``LocalQueue`` or ``AmqpQueue`` (left open by ``stop()``), or a file path or
    an ``amqp://`` URL with ``queue_name``, which the receiver opens and closes itself. When the
    queue holds ``max_depth`` ready messages, new events get 503 with Retry-After until a
    consumer drains it. ``dedupe_ids`` bounds the accepted ids remembered per route (none are
    kept longer than the route's tolerance). Bad arguments raise ``ConfigError`` naming them.
    """

    def __init__(self, *, routes: Mapping[str, Mapping[str, Any]],
                 queue: Union[LocalQueue, AmqpQueue, str, os.PathLike[str]],
                 port: int = 0, host: str = "127.0.0.1", queue_name: Optional[str] = None,
                 max_body_bytes: int = 1_048_576, max_depth: int = 100_000, dedupe_ids: int = 100_000,
                 threads: int = 1, retry_after: int = 1):
        if not isinstance(routes, Mapping) or not routes:
            raise errors.ConfigError(f"routes: {type(routes).__name__} is not valid; expected a dict of "
                                     "path -> {scheme, secret, ...} with at least one route")
        specs = [_route(path, spec) for path, spec in routes.items()]
        if not isinstance(host, str):
            raise errors.ConfigError(f"host: {host!r} is not valid; expected an IP address such as 127.0.0.1")
        port = _integer("port", port, 0, 65535)
        threads = _integer("threads", threads, 1, 64)
        max_body_bytes = _integer("max_body_bytes", max_body_bytes, 1, 1 << 30)
        max_depth = _integer("max_depth", max_depth, 1, 1 << 62)
        dedupe_ids = _integer("dedupe_ids", dedupe_ids, 1, 1 << 32)
        retry_after = _integer("retry_after", retry_after, 0, 86400)
        self._owned = False
        if isinstance(queue, (LocalQueue, AmqpQueue)):
            if queue_name is not None:
                raise errors.ConfigError("queue_name: only with a queue URL; this queue is open already")
            self.queue = queue
        elif isinstance(queue, (str, os.PathLike)):
            self.queue = open_queue(queue, queue_name)
            self._owned = True
        else:
            raise errors.ConfigError(f"queue: a {type(queue).__name__} is not valid; expected a LocalQueue, "
                                     "an AmqpQueue, a file path or an amqp:// URL")
        core_queue = self.queue._q
        if core_queue is None:
            raise errors.StateError("queue: the queue is closed")
        try:
            self._rx = _core.WebhookReceiver(host, port, threads, specs, core_queue, max_body_bytes, max_depth,
                                             dedupe_ids, retry_after)
        except BaseException:
            self._close_queue()
            raise
        self.routes = tuple(s["path"] for s in specs)
        self._schemes = {s["path"]: s["scheme"] for s in specs}
        self.host = host
        self._started = False
        self._stopped = False

    @property
    def port(self) -> int:
        """The bound port, once started."""
        return int(self._rx.port)

    @property
    def url(self) -> str:
        """``http://HOST:PORT``, once started; a route's URL is this plus its path."""
        return str(self._rx.url)

    def start(self) -> WebhookReceiver:
        """Binds and serves on the server's own threads; returns self."""
        if self._stopped:
            raise errors.StateError("the webhook receiver was stopped; make a new one")
        if not self._started:
            self._rx.start()
            self._started = True
            log.info("webhook receiver listening url=%s routes=%s", self.url,
                     ",".join(f"{p}({self._schemes[p]})" for p in self.routes))
        return self

    def stop(self) -> None:
        """Writes and answers the events already handed to the queue writer, then stops (and
        closes a queue it opened). Stopping twice is harmless."""
        if self._started and not self._stopped:
            self._rx.stop()
            log.info("webhook receiver stopped url=%s accepted=%d", self.url, self._rx.stats()["accepted"])
        self._stopped = True
        self._close_queue()

    def _close_queue(self) -> None:
        if self._owned:
            self.queue.close()
            self._owned = False

    def stats(self) -> Dict[str, Any]:
        """``requests, accepted, duplicates, bad_signature, stale, unknown_route,
        method_not_allowed, too_large, bad_json, bad_headers, queue_full, queue_errors``, plus
        ``puts`` (queue writes, each of one or more events), ``depth`` (the estimate of ready
        messages) and ``routes`` ({path: accepted})."""
        return dict(self._rx.stats())

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else (self.url if self._started else "not started")
        return f"<WebhookReceiver routes={list(self.routes)} ({state})>"


# -- YAML --------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _schema_text() -> str:
    return SCHEMA_PATH.read_text(encoding="utf-8")


def webhooks_schema() -> Dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``isthmus webhooks serve``'s file, as a dict."""
    result: Dict[str, Any] = json.loads(_schema_text())
    return result


def validate_webhooks(doc: Any) -> None:
    """Checks a receiver document (as loaded from YAML) against the schema; raises
    ``ConfigError`` naming the first problem's path. ``${VAR}`` strings are not expanded."""
    import jsonschema

    from isthmus.config import _first, _message

    errs = list(jsonschema.Draft202012Validator(webhooks_schema()).iter_errors(doc))
    if errs:
        raise errors.ConfigError(_message(_first(errs)))


def receiver_from_dict(doc: Any, base: Path = Path(".")) -> WebhookReceiver:
    """A receiver from a document shaped like the YAML file; ``${VAR}`` strings are replaced by
    the environment variable; a relative queue path is relative to ``base``."""
    from isthmus.config import _expand

    validate_webhooks(doc)
    doc = _expand(doc, "")
    q = doc["queue"]
    if not q.startswith(("amqp://", "amqps://")):
        q = str((base / q).resolve()) if not os.path.isabs(q) else q
    kw = {k: doc[k] for k in ("port", "host", "queue_name", "max_body_bytes", "max_depth", "dedupe_ids",
                              "threads", "retry_after") if k in doc}
    return WebhookReceiver(routes=doc["routes"], queue=q, **kw)


def load_receiver(path: Union[str, os.PathLike[str]]) -> WebhookReceiver:
    """A receiver (not started) from a YAML or JSON file; bad files raise ``ConfigError`` naming
    the field."""
    from isthmus.config import _read

    doc, base = _read(os.fspath(path), what="webhooks file")
    return receiver_from_dict(doc, base)
