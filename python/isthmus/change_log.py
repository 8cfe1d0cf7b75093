"""The change log: each record's latest known state, fed by webhooks and by polling.

Webhooks are fresh but get lost, duplicated and reordered; polling is complete but late. A
``ChangeLog`` takes both and keeps one entry per (connection, resource, record id)::

    log = isthmus.ChangeLog("changes.db")
    log.reconcile(stream, resource="contacts")     # a poll: an incremental Stream
    log.consume(queue, client=client)              # webhooks a WebhookReceiver queued
    pipeline = isthmus.Pipeline(log.source(), sink) # each change once, in its latest state

A change replaces an entry only when it is newer: by the record's ``version``, then its
``updated_at``, then a deletion over a live record, then (same version and time, other
contents) the larger canonical JSON, so any order of arrival ends in the same state. Deletes
are kept as tombstones. A webhook event is applied once however often it is delivered. A thin
event (``{"id": ...}`` alone) makes ``consume`` fetch the record through the client, so its
limits and retries apply; thin events for one record in one batch share one fetch.

Each applied change takes the next sequence number; ``source()`` reads the log from the last
number a pipeline checkpointed, so its sink sees a record once per change, in its latest state.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Type, Union

from isthmus import _core, errors
from isthmus.source import Batch, record_keys

__all__ = ["ChangeLog", "Change"]

_THIN = ("auto", "always", "never")


def _iso(ms: Optional[int]) -> Optional[str]:
    if ms is None:
        return None
    t = _dt.datetime.fromtimestamp(ms / 1000.0, _dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class Change:
    """One entry of the log: a record's latest known state."""

    connection: str
    resource: str
    id: str
    version: Optional[int]
    updated_at: Optional[str]  # RFC 3339, UTC, ms
    deleted: bool
    data: Any  # the record (a tombstone's is what the deletion said of it)
    origin: str  # "webhook", "fetch" or "poll"
    seq: int
    changed_at: float  # when the log applied it (Unix seconds)


def _changes(raw: Tuple[bytes, List[Tuple[Any, ...]]]) -> List[Change]:
    data, meta = raw
    status, records, _ = _core.parse_page(data, "", [])
    if status != "ok":  # the log writes the array itself: only a damaged file gets here
        raise errors.StateError(f"change log: an entry's data cannot be read ({status})")
    return [Change(c, r, i, v, _iso(u), d, rec, o, s, at)
            for (c, r, i, v, u, d, o, s, at), rec in zip(meta, records)]


def _status_error(response: Any) -> BaseException:
    """The error ``raise_for_status`` raises for an error answer (``AuthError`` for a 401 ...)."""
    try:
        response.raise_for_status()
    except errors.IsthmusError as exc:
        return exc
    return errors.PipelineError(f"the answer {response.status_code} is not a record")


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise errors.ConfigError(f"{name}: {value!r} is not valid; expected a non-empty str")
    return value


class ChangeLog:
    """A change log in a SQLite file (created when missing).

    - ``connection``: the connection entries are filed under when a call names none (webhook
      webhook events are filed under ``connections[route]`` when ``consume`` is given one).
    - ``fields``: where records keep ``id``, ``version``, ``updated_at`` and ``deleted``
      (dotted paths; ``""`` for one they lack).
    """

    def __init__(self, path: Union[str, os.PathLike[str]], *, connection: str = "default",
                 fields: Optional[Mapping[str, str]] = None):
        self.connection = _text("connection", connection)
        self.fields = {"id": "id", "version": "version", "updated_at": "updated_at", "deleted": "deleted"}
        for k, v in (fields or {}).items():
            if k not in self.fields:
                raise errors.ConfigError(f"fields: {k!r} is not valid; expected some of {sorted(self.fields)}")
            if not isinstance(v, str) or (k == "id" and not v):
                raise errors.ConfigError(f"fields[{k!r}]: {v!r} is not valid; expected a dotted path")
            self.fields[k] = v
        self.path = os.fspath(path)
        self._log: Any = _core.ChangeLog(self.path)

    def __repr__(self) -> str:
        return f"<ChangeLog {self.path!r}>"

    def __enter__(self) -> ChangeLog:
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Any) -> None:
        self.close()

    def close(self) -> None:
        self._log.close()

    # -- writing -----------------------------------------------------------------------------

    def apply(self, records: Sequence[Any], *, resource: str, connection: Optional[str] = None,
              origin: str = "poll") -> Dict[str, int]:
        """Applies records (dicts, or JSON text) read from the other API; returns how many were
        ``applied``, ``stale`` (older than the entry), ``unchanged`` and ``duplicates``."""
        return dict(self._log.apply_records(list(records), connection or self.connection, _text("resource", resource),
                                            origin, self.fields))

    def reconcile(self, stream: Any, *, resource: str, connection: Optional[str] = None,
                  batch: int = 1000) -> Dict[str, int]:
        """A reconciliation poll: reads ``stream`` (an incremental ``Stream``) from where the last
        poll of this (connection, resource) ended and applies what it reads, so a webhook that
        was lost is repaired. The stream's checkpoint is kept in the log; a poll that fails
        keeps the last one, so the next poll reads again from there."""
        connection = connection or self.connection
        identity = getattr(stream, "identity", type(stream).__qualname__)
        key = f"poll:{connection}:{_text('resource', resource)}:{identity}"
        saved = self._log.meta(key)
        stream.open(json.loads(saved) if saved else None)
        total = {"records": 0, "applied": 0, "stale": 0, "unchanged": 0, "duplicates": 0}
        token: Any = None
        try:
            while True:
                b = stream.read_batch(batch, 60.0)
                if b is None:
                    break
                got = self.apply(b.records, resource=resource, connection=connection, origin="poll")
                total["records"] += len(b.records)
                for k, v in got.items():
                    total[k] += v
                token = b.token
                b.records = []
                stream.ack(b)
        finally:
            close = getattr(stream, "close", None)
            if callable(close):
                close()
        if token is not None:
            self._log.set_meta(key, json.dumps(token))
        return total

    def consume(self, queue: Any, *, client: Any = None, fetch: str = "/v1/{resource}/{id}",
                params: Optional[Mapping[str, Any]] = None, record: str = "",
                connections: Optional[Mapping[str, str]] = None, thin: str = "auto",
                type_field: str = "type", data_field: str = "data",
                delete_actions: Sequence[str] = ("deleted", "removed", "archived"),
                batch: int = 500, visibility: float = 60.0, retry_delay: float = 5.0,
                max_messages: Optional[int] = None, idle: float = 0.0) -> Dict[str, int]:
        """Applies the webhook events a ``WebhookReceiver`` queued, then acknowledges them.

        - ``client``: fetches the record of a thin event (``fetch`` with ``{resource}`` and
          ``{id}``, plus ``params``; ``record``: the dotted path of the record in the answer,
          ``""`` for the whole body). A 404 is a deletion. Without a client, thin events stay
          in the queue.
        - ``connections``: route -> connection; ``thin``: ``"auto"`` (data holding only the id),
          ``"always"`` or ``"never"``; ``type_field`` / ``data_field``: where the event keeps
          ``"<resource>.<action>"`` and the record; ``delete_actions``: actions that delete.
        - Stops when the queue is empty for ``idle`` seconds, or after ``max_messages``.

        An event that cannot be read is kept in ``rejected()`` and acknowledged. A fetch that
        fails for that record alone returns its events to the queue after ``retry_delay``
        (the queue dead-letters them after its delivery limit); one that would fail for every
        record (refused credentials, a wrong path) returns them and raises.
        """
        if thin not in _THIN:
            raise errors.ConfigError(f"thin: {thin!r} is not valid; expected one of {list(_THIN)}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise errors.ConfigError(f"batch: {batch!r} is not valid; expected an int >= 1")
        if "{id}" not in fetch:
            raise errors.ConfigError(f"fetch: {fetch!r} is not valid; expected a path with {{id}}")
        fmt = {"type": type_field, "data": data_field, "thin": thin, "delete_actions": list(delete_actions)}
        routes = sorted((connections or {}).items())
        report = {"messages": 0, "applied": 0, "stale": 0, "unchanged": 0, "duplicates": 0, "thin": 0,
                  "fetched": 0, "coalesced": 0, "tombstones": 0, "rejected": 0, "retried": 0}
        quiet_since = time.monotonic()
        while max_messages is None or report["messages"] < max_messages:
            n = batch if max_messages is None else min(batch, max_messages - report["messages"])
            lease = queue.lease(n, visibility=visibility)
            if not lease:
                if time.monotonic() - quiet_since >= idle:
                    break
                time.sleep(min(0.05, idle))
                continue
            quiet_since = time.monotonic()
            messages = list(lease)
            report["messages"] += len(messages)
            counts, thin_events, rejected = self._log.ingest([m.body for m in messages], fmt, self.fields, routes,
                                                               self.connection)
            report["rejected"] += len(rejected)
            for k, v in counts.items():
                report[k] += v
            failed: List[int] = []
            fatal: Optional[BaseException] = None
            if thin_events:
                failed, fatal = self._fetch_thin(thin_events, client, fetch, params, record, report)
            if fatal is not None:  # the other API refuses every fetch: nothing more is taken
                queue.nack(messages, delay=retry_delay)
                raise errors.PipelineError(f"fetching the records of thin webhooks failed: {fatal}") from fatal
            retry = set(failed)
            if retry:
                queue.nack([messages[i] for i in sorted(retry)], delay=retry_delay)
                report["retried"] += len(retry)
            ok = [m for i, m in enumerate(messages) if i not in retry]
            if ok:
                queue.ack(ok)
        return report

    def _fetch_thin(self, events: List[Tuple[Any, ...]], client: Any, fetch: str,
                    params: Optional[Mapping[str, Any]], record: str,
                    report: Dict[str, int]) -> Tuple[List[int], Optional[BaseException]]:
        """Fetches the records of thin events (one fetch per record) and applies them; returns the
        indexes of the messages to retry, and the error when a fetch would fail for every record."""
        report["thin"] += len(events)
        if client is None:
            return [e[0] for e in events], None
        groups: Dict[Tuple[str, str, str], List[Tuple[Any, ...]]] = {}
        for e in events:
            groups.setdefault((e[1], e[2], e[3]), []).append(e)
        report["coalesced"] += len(events) - len(groups)
        keys = list(groups)
        query = ("?" + urllib.parse.urlencode(dict(params))) if params else ""
        paths = [fetch.format(resource=urllib.parse.quote(r, safe=""), id=urllib.parse.quote(i, safe="")) + query
                 for _, r, i in keys]
        answers = client.get_many(paths, return_exceptions=True)
        retry: List[int] = []
        fatal: Optional[BaseException] = None
        for key, answer in zip(keys, answers):
            connection, resource, rid = key
            group = groups[key]
            ids = [e[4] for e in group if e[4]]
            status = getattr(answer, "status_code", None)
            if status == 404:
                self._log.apply_records([{self.fields["id"]: rid, "deleted": True}], connection, resource, "fetch",
                                        {**self.fields, "deleted": "deleted"}, ids)
                report["tombstones"] += 1
                continue
            if isinstance(answer, BaseException) or status is None or status >= 400:
                exc = answer if isinstance(answer, BaseException) else _status_error(answer)
                if errors.affects_every_record(exc) and fatal is None:
                    fatal = exc
                retry.extend(e[0] for e in group)
                continue
            body: Any = answer.content
            if record:
                body = answer.json()
                for step in record.split("."):
                    body = body.get(step) if isinstance(body, dict) else None
                if not isinstance(body, dict):
                    retry.extend(e[0] for e in group)
                    continue
            got = self._log.apply_records([body], connection, resource, "fetch", self.fields, ids)
            report["fetched"] += 1
            for k in ("applied", "stale", "unchanged"):
                report[k] += got[k]
        return retry, fatal

    # -- reading -----------------------------------------------------------------------------

    def get(self, resource: str, id: str, *, connection: Optional[str] = None) -> Optional[Change]:
        """The entry of one record, or None."""
        got = self._log.get(connection or self.connection, resource, str(id))
        if got is None:
            return None
        return _changes((got[0], [got[1]]))[0]

    def changes(self, *, after: int = 0, limit: int = 1000, resource: Optional[str] = None,
                connection: Optional[str] = None) -> List[Change]:
        """Entries changed after sequence number ``after``, oldest change first."""
        return _changes(self._log.read(after, limit, connection or "", resource or ""))

    def __iter__(self) -> Iterator[Change]:
        after = 0
        while True:
            page = self.changes(after=after, limit=1000)
            if not page:
                return
            yield from page
            after = page[-1].seq

    def state(self, resource: str, *, connection: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
        """``id -> {"version", "updated_at", "deleted"}`` for every entry of a resource: the
        shape the sandbox's ``truth()`` has, to compare the two."""
        out: Dict[str, Dict[str, Any]] = {}
        after = 0
        while True:
            page = self.changes(after=after, limit=5000, resource=resource, connection=connection or self.connection)
            if not page:
                return out
            for c in page:
                out[c.id] = {"version": c.version, "updated_at": c.updated_at, "deleted": c.deleted}
            after = page[-1].seq

    def rejected(self, limit: int = 0) -> List[Dict[str, Any]]:
        """Events that could not be read: ``event_id``, ``route``, ``reason``, ``envelope``, ``at``."""
        return [{"event_id": e, "route": r, "reason": why, "envelope": env, "at": at}
                for e, r, why, env, at in self._log.rejected(limit)]

    def stats(self, *, resource: Optional[str] = None, connection: Optional[str] = None) -> Dict[str, int]:
        """``entries``, ``live``, ``deleted``, ``last_seq``, ``events`` (webhook ids applied) and
        ``rejected``."""
        return dict(self._log.stats(connection or "", resource or ""))

    def source(self, *, resource: Optional[str] = None, connection: Optional[str] = None,
               follow: bool = False, name: str = "changes") -> ChangeSource:
        """The log as a pipeline ``Source``: every entry changed since the checkpoint, in change
        order, as its latest record (tombstones included). With ``follow`` it waits for more
        instead of ending once caught up."""
        return ChangeSource(self, resource=resource, connection=connection, follow=follow, name=name)


class ChangeSource:
    """``ChangeLog.source()``: reads the log in sequence order; the token is the last number read."""

    def __init__(self, log: ChangeLog, *, resource: Optional[str], connection: Optional[str], follow: bool,
                 name: str):
        self.log, self.resource, self.connection, self.follow, self.name = log, resource, connection, follow, name
        self.identity = f"changelog:{os.path.abspath(log.path)}:{connection or '*'}:{resource or '*'}"
        self._after = 0

    def __repr__(self) -> str:
        return f"<ChangeSource {self.log.path!r} resource={self.resource!r} connection={self.connection!r}>"

    def open(self, state: Optional[Dict[str, Any]]) -> None:
        self._after = int(state["seq"]) if state and "seq" in state else 0

    def read_batch(self, max_records: int, timeout: float) -> Optional[Batch]:
        deadline = time.monotonic() + timeout
        while True:
            page = self.log.changes(after=self._after, limit=max_records, resource=self.resource,
                                    connection=self.connection)
            if page:
                self._after = page[-1].seq
                keys = [c.id if self.resource else f"{c.resource}/{c.id}" for c in page]
                return Batch([c.data for c in page], keys, {"seq": self._after})
            if not self.follow:
                return None
            if time.monotonic() >= deadline:
                return Batch([], [], {"seq": self._after})
            time.sleep(0.05)

    def keys(self, records: List[Any]) -> List[str]:
        return record_keys(records, self.log.fields["id"].split("."))

    def ack(self, batch: Batch) -> None:
        pass
