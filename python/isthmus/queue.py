"""Durable queues with one interface and two backends in the C++ core: ``LocalQueue``, one
SQLite file (WAL), the embedded default; ``AmqpQueue``, a quorum queue on a RabbitMQ broker.
``open_queue`` picks one from a path or an ``amqp://`` URL.

::

    with ist.LocalQueue("work.db", max_deliveries=5) as q:
        q.put(["page 1", "page 2"])           # durable when put() returns
        lease = q.lease(10, visibility=30)   # held for 30 s, then back to ready
        for m in lease:
            handle(m.body)                   # m.deliveries: 1 on the first delivery
        q.ack(lease)                         # or q.nack(lease, delay=60)

A message leased ``max_deliveries`` times without an ack goes to the dead letters
(``dead_letters()``) instead of coming back again. Several threads and processes may share one
file: a message is never held by two live leases at once. Delivery is at-least-once: a lease
that expires (a worker crashed or was too slow) hands its messages to the next lessee, and an
ack under the expired lease then removes nothing. ``AmqpQueue`` keeps the same contract on a
broker; docs/queue.md says where a broker's behaviour shows through (a lost connection).
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Type, TypeVar, Union

from isthmus import _core, errors

__all__ = ["LocalQueue", "AmqpQueue", "open_queue", "Lease", "QueueMessage", "QueueDeadLetter"]

Body = Union[str, bytes]

# About 30 years: far beyond any lease or delay, and well inside the core's millisecond counts.
_MAX_SECONDS = 1e9


@dataclass(frozen=True)
class QueueMessage:
    """One leased message: ``body`` as it was put (str or bytes) and how many times it has been
    delivered, this delivery included."""

    id: int
    body: Body
    deliveries: int
    lease: str = field(repr=False, compare=False, default="")


@dataclass(frozen=True)
class QueueDeadLetter:
    """A message delivered ``deliveries`` times without an ack, set aside."""

    id: int
    body: Body
    deliveries: int
    enqueued_at: float
    dead_at: float
    reason: str


class Lease:
    """The messages one ``lease()`` call took, held until ``expires_at`` (Unix seconds)."""

    def __init__(self, token: str, expires_at: float, messages: Sequence[QueueMessage]):
        self.token = token
        self.expires_at = expires_at
        self.messages: Tuple[QueueMessage, ...] = tuple(messages)

    def __iter__(self) -> Iterator[QueueMessage]:
        return iter(self.messages)

    def __len__(self) -> int:
        return len(self.messages)

    def __bool__(self) -> bool:
        return bool(self.messages)

    def __repr__(self) -> str:
        return f"<Lease of {len(self.messages)} message(s), expires at {self.expires_at:.3f}>"


def _seconds(name: str, value: Any, *, allow_zero: bool) -> int:
    """Seconds as whole milliseconds for the core; a bad value names the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise errors.ConfigError(f"{name}: {value!r} is not valid; expected a finite number of seconds")
    seconds = float(value)
    if seconds < 0 or (seconds == 0 and not allow_zero) or seconds > _MAX_SECONDS:
        raise errors.ConfigError(f"{name}: {value!r} is not valid; expected a number of seconds "
                                 f"{'>= 0' if allow_zero else '> 0'} and at most {_MAX_SECONDS:g}")
    ms = math.ceil(seconds * 1000)
    return ms if allow_zero else max(1, ms)


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise errors.ConfigError(f"{name}: {value!r} is not valid; expected an integer >= 1")
    return int(value)


Acked = Union[Lease, QueueMessage, Iterable[QueueMessage]]
_Self = TypeVar("_Self", bound="_Queue")
_CoreQueue = Union[_core.LocalQueue, _core.AmqpQueue]


class _Queue:
    """The methods of the queue interface, the same on every backend."""

    _q: Optional[_CoreQueue] = None
    max_deliveries: int

    def _closed_message(self) -> str:
        raise NotImplementedError

    def _open(self) -> _CoreQueue:
        if self._q is None:
            raise errors.StateError(self._closed_message())
        return self._q

    def put(self, items: Union[Body, Iterable[Body]]) -> int:
        """Puts one item or many (str or bytes): when it returns they are durable (LocalQueue: on
        disk, all in one transaction; AmqpQueue: confirmed by the broker, each). Returns how many
        were put."""
        batch: List[Body] = [items] if isinstance(items, (str, bytes)) else list(items)
        for i, item in enumerate(batch):
            if not isinstance(item, (str, bytes)):
                raise errors.ConfigError(f"items[{i}]: a {type(item).__name__} is not valid; "
                                         "expected str or bytes")
        return self._open().put(batch)

    def lease(self, n: int = 1, *, visibility: float = 30.0) -> Lease:
        """Up to ``n`` ready messages, held for ``visibility`` seconds; an empty lease when none is
        ready (it does not wait for messages to arrive)."""
        token, expires_at, rows = self._open().lease(_count("n", n), _seconds("visibility", visibility,
                                                                               allow_zero=False))
        return Lease(token, expires_at, [QueueMessage(i, body, d, token) for i, body, d in rows])

    def ack(self, messages: Acked) -> int:
        """Removes the messages (a lease, one message, or several) from the queue. Returns how many
        were removed: fewer when a lease expired and another lessee took some of them."""
        return sum(self._open().ack(token, ids) for token, ids in self._by_lease(messages))

    def nack(self, messages: Acked, *, delay: float = 0.0) -> int:
        """Returns the messages to ready after ``delay`` seconds; a message already delivered
        ``max_deliveries`` times goes to the dead letters instead. Returns how many moved."""
        ms = _seconds("delay", delay, allow_zero=True)
        return sum(self._open().nack(token, ids, ms) for token, ids in self._by_lease(messages))

    @staticmethod
    def _by_lease(messages: Acked) -> List[Tuple[str, List[int]]]:
        if isinstance(messages, Lease):
            return [(messages.token, [m.id for m in messages.messages])]
        many = [messages] if isinstance(messages, QueueMessage) else list(messages)
        groups: Dict[str, List[int]] = {}
        for i, m in enumerate(many):
            if not isinstance(m, QueueMessage):
                raise errors.ConfigError(f"messages[{i}]: a {type(m).__name__} is not valid; expected a "
                                         "Lease or the QueueMessage objects of one")
            groups.setdefault(m.lease, []).append(m.id)
        return list(groups.items())

    def dead_letters(self, limit: int = 0) -> List[QueueDeadLetter]:
        """The dead letters, oldest first (``limit`` 0: all)."""
        if isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 0:
            raise errors.ConfigError(f"limit: {limit!r} is not valid; expected an integer >= 0")
        return [QueueDeadLetter(*row) for row in self._open().dead_letters(int(limit))]

    def stats(self) -> Dict[str, int]:
        """How many messages are ``ready``, ``leased``, ``delayed`` (nacked with a delay) and
        ``dead``."""
        return dict(self._open().stats())

    def close(self) -> None:
        """Closes the file or the connection; later calls raise ``StateError``. Closing twice is
        harmless."""
        if self._q is not None:
            self._q.close()
            self._q = None

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close()


class LocalQueue(_Queue):
    """A durable queue in the SQLite file at ``path`` (created whole when missing).

    A damaged file, or one that is not a queue, raises ``StateError`` naming it; bad arguments
    raise ``ConfigError`` naming the argument.
    """

    def __init__(self, path: Union[str, os.PathLike[str]], max_deliveries: int = 5):
        if not isinstance(path, (str, os.PathLike)):
            raise errors.ConfigError(f"path: {path!r} is not valid; expected a file path")
        self.path = os.fspath(path)
        self.max_deliveries = _count("max_deliveries", max_deliveries)
        self._q = _core.LocalQueue(self.path, self.max_deliveries)

    def _closed_message(self) -> str:
        return f"queue file {self.path} is closed"

    def __repr__(self) -> str:
        state = "closed" if self._q is None else "open"
        return f"<LocalQueue {self.path!r} max_deliveries={self.max_deliveries} ({state})>"


class AmqpQueue(_Queue):
    """A durable queue named ``name`` on the RabbitMQ broker at ``url`` (``amqp://`` or
    ``amqps://user:password@host[:port]/[vhost]``), with LocalQueue's methods.

    The constructor connects and declares the quorum queue ``name`` (``x-delivery-limit`` =
    ``max_deliveries``), its dead letters ``name.dead`` and its delay queues; ``prefetch`` caps
    the messages this client holds in live leases at once. With ``consume`` the broker pushes
    messages to this client (a consumer whose window is ``prefetch``) instead of each lease
    asking for them, so a lease takes what already arrived without a round trip, and
    ``lease(wait=)`` blocks until a message arrives; what the consumer holds unleased is no
    one else's until this connection closes, so a consuming queue suits one lessee taking a
    task at a time with a small ``prefetch``. A wrong URL raises ``InvalidURL``, an
    unreachable broker ``ConnectError`` or ``TimeoutError`` (within ``connect_timeout``
    seconds), refused credentials ``AccessRefused``, a queue declared before with other
    arguments ``ConfigError``: each names the URL with the password masked.
    """

    def __init__(self, url: str, name: str, *, max_deliveries: int = 5, prefetch: int = 100,
                 connect_timeout: float = 10.0, consume: bool = False):
        if not isinstance(url, str):
            raise errors.ConfigError(f"url: a {type(url).__name__} is not valid; expected an amqp:// URL")
        if not isinstance(name, str):
            raise errors.ConfigError(f"name: {name!r} is not valid; expected the queue's name")
        self.max_deliveries = _count("max_deliveries", max_deliveries)
        self.prefetch = _count("prefetch", prefetch)
        if not isinstance(consume, bool):
            raise errors.ConfigError(f"consume: {consume!r} is not valid; expected True or False")
        self.consume = consume
        timeout_ms = _seconds("connect_timeout", connect_timeout, allow_zero=False)
        self.name = name
        self.url = _core.redact_url(url)  # the password masked: the raw URL stays in the core
        self._q = _core.AmqpQueue(url, name, self.max_deliveries, self.prefetch, timeout_ms, consume)
        self._amqp = self._q

    def lease(self, n: int = 1, *, visibility: float = 30.0, wait: float = 0.0) -> Lease:
        """Up to ``n`` ready messages, held for ``visibility`` seconds. A consuming queue waits
        up to ``wait`` seconds for one when none is ready (another call on this queue ends the
        wait early); others answer at once."""
        wait_ms = _seconds("wait", wait, allow_zero=True)
        self._open()
        token, expires_at, rows = self._amqp.lease_within(
            _count("n", n), _seconds("visibility", visibility, allow_zero=False), wait_ms)
        return Lease(token, expires_at, [QueueMessage(i, body, d, token) for i, body, d in rows])

    def pause(self) -> int:
        """A consuming queue stops taking the broker's pushes: what it holds unleased goes
        back to the queue, its delivery count unchanged, for other clients to lease. The next
        ``lease`` subscribes again. Returns how many went back (0 when not consuming)."""
        self._open()
        return int(self._amqp.pause())

    def _closed_message(self) -> str:
        return f"{self.url}: queue {self.name} is closed"

    def __repr__(self) -> str:
        state = "closed" if self._q is None else "open"
        return (f"<AmqpQueue {self.name!r} on {self.url} max_deliveries={self.max_deliveries} "
                f"prefetch={self.prefetch}{' consume' if self.consume else ''} ({state})>")


def open_queue(url_or_path: Union[str, os.PathLike[str]], name: Optional[str] = None,
               **kw: Any) -> Union[LocalQueue, AmqpQueue]:
    """An ``AmqpQueue`` for an ``amqp://`` or ``amqps://`` URL (``name`` is then required), a
    ``LocalQueue`` for a file path (one file is one queue: no ``name``). ``kw`` goes to the
    constructor."""
    if isinstance(url_or_path, str) and url_or_path.startswith(("amqp://", "amqps://")):
        if name is None:
            raise errors.ConfigError("name: required for a broker URL; expected the queue's name")
        return AmqpQueue(url_or_path, name, **kw)
    if name is not None:
        raise errors.ConfigError(f"name: {name!r} is not valid for a queue file (one file is one "
                                 "queue); pass only the path, or an amqp:// URL")
    return LocalQueue(url_or_path, **kw)
