"""Coordination between processes on Redis: shared limits, claims, one token refresh.

One ``Coordination`` is one Redis connection owned by the core (its own thread; reconnects
with back-off; AUTH from the URL). Hand it to what should be shared::

    coord = ist.Coordination("redis://:secret@10.0.0.5:6379/0")
    limiter = ist.Limiter(ist.RateLimit(100, per="second"), coordination=coord)   # one allowance
    auth = ist.OAuth2RefreshToken(token_url, cid, secret, rt, coordination=coord)  # one refresh
    with coord.claim("contacts/partition-3", lease=30) as claim:
        if claim:
            ...  # only this process works on partition 3; claim.renew() to keep it

The password never appears in a repr, a log line or an error. See docs/scaleout.md.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional

from isthmus import _core, errors

__all__ = ["Coordination", "Claim"]


def _seconds(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise errors.ConfigError(f"{field}: {value!r} is not valid; expected a number of seconds > 0")
    return float(value)


class Coordination:
    """A Redis server shared by the processes that work together.

    Connects at once and raises ``ConnectError`` (refused, wrong password), ``TimeoutError``
    (no answer within ``connect_timeout``) or ``InvalidURL``, each naming the URL with its
    password masked. Keys start with ``namespace + ":"``, so several deployments may share
    one Redis. ``command_timeout``: how long one command may take before the connection is
    made again.
    """

    def __init__(self, url: str, *, namespace: str = "isthmus", connect_timeout: float = 5.0,
                 command_timeout: float = 5.0):
        if not isinstance(url, str) or not url:
            raise errors.ConfigError(f"url: {type(url).__name__} is not valid; expected 'redis://host:port/db'")
        if not isinstance(namespace, str) or not namespace or ":" in namespace:
            raise errors.ConfigError(f"namespace: {namespace!r} is not valid; expected a non-empty name without ':'")
        self.namespace = namespace
        self.connect_timeout = _seconds("connect_timeout", connect_timeout)
        self.command_timeout = _seconds("command_timeout", command_timeout)
        self._core = _core.Coordination(url, namespace, self.connect_timeout, self.command_timeout)
        self.url: str = self._core.redacted_url  # masked: safe to show

    def claim(self, name: str, *, lease: float = 30.0) -> Claim:
        """Tries once to claim ``name`` for ``lease`` seconds.

        The ``Claim`` is truthy when this process holds it and falsy when another does. A
        claim whose holder dies lapses after its lease; ``renew()`` extends a live one.
        """
        if not isinstance(name, str) or not name:
            raise errors.ConfigError(f"name: {name!r} is not valid; expected a non-empty str")
        lease_s = _seconds("lease", lease)
        return Claim(self._core.claim(name, lease_s, self._timeout()), self)

    def stats(self) -> dict[str, Any]:
        """Commands run, connections made, scripts reloaded after a Redis restart, failures."""
        result: dict[str, Any] = self._core.stats()
        return result

    def _command(self, argv: list[str]) -> Any:
        """One Redis command with the key names in full (``self._core.key(name)``): for the
        workers' heartbeats and ``isthmus status``."""
        return self._core.command(argv, self._timeout())

    def _timeout(self) -> float:
        return self.connect_timeout + self.command_timeout

    def __repr__(self) -> str:
        return f"<isthmus.Coordination {self.url} namespace={self.namespace!r}>"


class Claim:
    """A claim on a name (a partition, a job) with a lease. Truthy while held.

    As a context manager it releases on exit. ``renew()`` returns False once the claim was
    lost (it lapsed and another process took it): stop working on the partition then.
    """

    def __init__(self, core: _core.Lease, coordination: Coordination):
        self._core = core
        self._coordination = coordination

    @property
    def name(self) -> str:
        name: str = self._core.name
        return name

    @property
    def lease(self) -> float:
        lease: float = self._core.lease
        return lease

    @property
    def held(self) -> bool:
        """Whether this process held the claim when last asked (acquire, renew or release)."""
        held: bool = self._core.held
        return held

    def __bool__(self) -> bool:
        return self.held

    def renew(self) -> bool:
        """Extends the lease by ``lease`` seconds from now; False if the claim is no longer ours."""
        renewed: bool = self._core.renew(self._coordination._timeout())
        return renewed

    def release(self) -> bool:
        """Gives the claim back; True when it was still ours. Idempotent."""
        released: bool = self._core.release(self._coordination._timeout())
        return released

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "held" if self.held else "not held"
        return f"<isthmus.Claim {self.name!r} {state} lease={self.lease:g}s>"


def _core_of(coordination: Optional[Coordination], field: str = "coordination") -> Optional[_core.Coordination]:
    if coordination is None:
        return None
    if not isinstance(coordination, Coordination):
        raise errors.ConfigError(f"{field}: expected an isthmus.Coordination, got {type(coordination).__name__}")
    return coordination._core
