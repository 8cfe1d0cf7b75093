"""Rate limits, quotas, in-flight caps, adaptive limits and retries.

Limits are plain values you combine with ``&``::

    limits = ist.RateLimit(10, per="second") & ist.Quota(10_000, per="day") & ist.Concurrency(8)
    client = ist.Client(url, rate_limit=limits, retry=ist.Retry(attempts=5, deadline=60))

A limit is one allowance, however many clients it is given to: clients handed the same
``RateLimit`` (or the same combination) share one ``Limiter``, made by the first of them. To
share explicitly, or to set ``costs`` and ``max_wait``, build the ``Limiter`` yourself and hand
the same object to each.

The limiter lives in the C++ core and never sleeps: it answers how long a call must wait,
and the core arms a timer. Calls wait in a queue per key, ``priority="high"`` first.

Tenants share an allowance by weight: ``Limiter(RateLimit(100), shares={"acme": Share(weight=2)})``
gives a tenant (the ``tenant`` part of a client's ``limit_key``) twice the grants of a tenant
without a share while both wait, and a share's ``limit`` nests inside the app's (docs/limits.md).

Processes share an allowance through Redis: ``Limiter(limits, coordination=coord)`` counts its
rates and quotas there, so every process with the same limits (and ``name``) draws from one
allowance (see docs/scaleout.md).
"""

from __future__ import annotations

import html
import math
import numbers
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Optional, Union, cast

from isthmus import _core, errors
from isthmus.coordination import Coordination
from isthmus.coordination import _core_of as _coordination_core

__all__ = ["RateLimit", "Quota", "Concurrency", "Adaptive", "Limits", "Share", "Limiter", "Retry"]

_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_SCOPES = ("provider", "credential", "tenant", "endpoint")


def _bad(field: str, value: Any, valid: str) -> errors.ConfigError:
    return errors.ConfigError(f"{field}: {value!r} is not valid; expected {valid}")


def _number(field: str, value: Any, *, minimum: float = 0.0, inclusive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise _bad(field, value, "a finite number")
    # The numbers.Real stub declares no comparison with float, though every Real has one.
    real = cast(float, value)
    ok = real >= minimum if inclusive else real > minimum
    if not ok:
        raise _bad(field, value, f"a number {'>=' if inclusive else '>'} {minimum:g}")
    return float(value)


def _per(field: str, per: Any) -> float:
    """'second' | 'minute' | 'hour' | 'day' (plurals accepted) or a number of seconds."""
    if isinstance(per, str):
        unit = per.strip().lower()
        unit = unit[:-1] if unit.endswith("s") and unit[:-1] in _UNITS else unit
        if unit not in _UNITS:
            raise _bad(field, per, "'second', 'minute', 'hour', 'day' or a number of seconds")
        return _UNITS[unit]
    return _number(field, per)


def _count(field: str, value: Any) -> int:
    # Takes Any, not int: mypy holds that no int is an Integral, so a check on an int-typed
    # argument would make the code after it unreachable, and unchecked.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise _bad(field, value, "an int >= 1")
    return int(value)


def _scope(scope: Optional[Iterable[str]]) -> Optional[list[str]]:
    if scope is None:
        return None
    parts = [scope] if isinstance(scope, str) else list(scope)
    for part in parts:
        if part not in _SCOPES:
            raise _bad("scope", part, "some of " + ", ".join(_SCOPES))
    return parts


class _Rule:
    """One limit. Combine with ``&`` (or pass a list) to apply several at once."""

    # Set by as_limiter on the rules of the Limiter it makes; absent until then.
    _limiter: weakref.ref[Limiter]

    def _spec(self) -> dict[str, Any]:
        raise NotImplementedError

    def __and__(self, other: Any) -> Limits:
        combined: Limits = Limits([self]) & other
        return combined

    def __rand__(self, other: Any) -> Limits:
        return Limits(_rules_of(other)) & self

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._spec() == other._spec()

    def __hash__(self) -> int:
        return hash(repr(self))


class RateLimit(_Rule):
    """``rate`` calls (or cost units) per ``per``, with at most ``burst`` at once (GCRA).

    ``burst`` defaults to about 2% of a second's worth, at least 1.
    """

    def __init__(self, rate: float, per: Union[str, float] = "second", *, burst: Optional[float] = None,
                 scope: Optional[Iterable[str]] = None):
        self.rate = _number("rate", rate)
        self.per = _per("per", per)
        if burst is None:
            burst = max(1.0, math.floor(self.rate / self.per / 50.0))
        self.burst = _number("burst", burst, minimum=1.0, inclusive=True)
        self.scope = _scope(scope)

    def _spec(self) -> dict[str, Any]:
        return {"kind": "rate", "rate": self.rate, "per": self.per, "burst": self.burst, "scope": self.scope}

    def __repr__(self) -> str:
        return f"RateLimit({self.rate:g}, per={_unit_name(self.per)!r}, burst={self.burst:g})"


class Quota(_Rule):
    """At most ``n`` calls (or cost units) per calendar ``per`` window (UTC; a day ends at midnight UTC).

    When a long window is used up, calls fail at once with ``QuotaExhausted`` (with
    ``resets_at``) rather than wait; short windows (up to the limiter's ``max_wait``) wait.
    """

    def __init__(self, n: float, per: Union[str, float] = "day", *, scope: Optional[Iterable[str]] = None):
        self.n = _number("n", n)
        self.per = _per("per", per)
        self.scope = _scope(scope)

    def _spec(self) -> dict[str, Any]:
        return {"kind": "quota", "n": self.n, "per": self.per, "scope": self.scope}

    def __repr__(self) -> str:
        return f"Quota({self.n:g}, per={_unit_name(self.per)!r})"


class Concurrency(_Rule):
    """At most ``n`` calls in flight at once."""

    def __init__(self, n: int, *, scope: Optional[Iterable[str]] = None):
        self.n = _count("n", n)
        self.scope = _scope(scope)

    def _spec(self) -> dict[str, Any]:
        return {"kind": "concurrency", "n": self.n, "scope": self.scope}

    def __repr__(self) -> str:
        return f"Concurrency({self.n})"


class Adaptive(_Rule):
    """A limit the governor finds by itself (AIMD), between ``min`` and ``max``.

    ``on="rate"`` (calls per second) or ``on="concurrency"`` (calls in flight). It grows while
    calls succeed and the limit is what holds them back, and shrinks on 429s, 5xx answers,
    timeouts and (with ``latency_factor``) latency rising above that multiple of the best seen.
    """

    def __init__(self, min: float, max: float, *, on: str = "rate", start: Optional[float] = None,  # noqa: A002
                 decrease: float = 0.85, latency_factor: float = 0.0,
                 scope: Optional[Iterable[str]] = None):
        if on not in ("rate", "concurrency"):
            raise _bad("on", on, "'rate' or 'concurrency'")
        self.min = _number("min", min)
        self.max = _number("max", max)
        if self.max < self.min:
            raise _bad("max", max, f"a number >= min ({self.min:g})")
        self.on = on
        self.start = 0.0 if start is None else _number("start", start)
        if start is not None and not (self.min <= self.start <= self.max):
            raise _bad("start", start, f"a number between min and max ({self.min:g}..{self.max:g})")
        self.decrease = _number("decrease", decrease)
        if self.decrease >= 1:
            raise _bad("decrease", decrease, "a factor between 0 and 1")
        self.latency_factor = _number("latency_factor", latency_factor, inclusive=True)
        if 0 < self.latency_factor <= 1:
            raise _bad("latency_factor", latency_factor, "0 (off) or a number > 1")
        self.scope = _scope(scope)

    def _spec(self) -> dict[str, Any]:
        return {"kind": "adaptive", "on": self.on, "min": self.min, "max": self.max, "start": self.start,
                "decrease": self.decrease, "latency_factor": self.latency_factor, "scope": self.scope}

    def __repr__(self) -> str:
        return f"Adaptive(min={self.min:g}, max={self.max:g}, on={self.on!r})"


def _unit_name(seconds: float) -> Union[str, float]:
    for name, length in _UNITS.items():
        if length == seconds:
            return name
    return seconds


def _rules_of(value: Any) -> list[_Rule]:
    if isinstance(value, _Rule):
        return [value]
    if isinstance(value, Limits):
        return list(value.rules)
    if isinstance(value, (list, tuple)):
        out: list[_Rule] = []
        for item in value:
            out.extend(_rules_of(item))
        return out
    raise errors.ConfigError(
        f"rate_limit: {value!r} is not valid; expected RateLimit, Quota, Concurrency, Adaptive, "
        "a combination of them with &, a list of them, or a Limiter")


class Limits:
    """Several limits that all apply: ``RateLimit(10) & Quota(10_000, per="day")``."""

    def __init__(self, rules: Iterable[_Rule] = ()):
        self.rules: tuple[_Rule, ...] = tuple(_rules_of(list(rules)))

    def __and__(self, other: Any) -> Limits:
        return Limits(list(self.rules) + _rules_of(other))

    __rand__ = __and__

    def __iter__(self) -> Iterator[_Rule]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def __repr__(self) -> str:
        return " & ".join(repr(r) for r in self.rules) or "Limits()"


class Share:
    """A tenant's part of a shared allowance: its ``weight`` against the other tenants waiting
    for the same limits (a tenant without a share weighs 1), and an optional ``limit`` of its
    own, nested inside the app's: a ``RateLimit``, a ``Concurrency`` or both (``&``). A call then
    needs a slot of both; it takes from neither unless it gets both."""

    def __init__(self, weight: float = 1.0, limit: Any = None):
        self.weight = _number("weight", weight)
        rules = [] if limit is None else _rules_of(limit)
        for rule in rules:
            if not isinstance(rule, (RateLimit, Concurrency)):
                raise _bad("limit", rule, "RateLimit, Concurrency or both (a share counts per tenant)")
            if rule.scope is not None:
                raise _bad("limit", rule, "a limit without scope (a share counts per tenant)")
        self.limit: Optional[Limits] = Limits(rules) if rules else None

    def _specs(self) -> list[dict[str, Any]]:
        return [r._spec() for r in self.limit] if self.limit is not None else []

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Share) and (self.weight, self._specs()) == (other.weight, other._specs())

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        limit = f", limit={self.limit!r}" if self.limit is not None else ""
        return f"Share(weight={self.weight:g}{limit})"


def _share(tenant: Any, share: Any) -> Share:
    """``share`` for ``tenant``: a Share, or a dict of its fields. A ConfigError names the
    tenant and the field."""
    if not isinstance(tenant, str) or not tenant:
        raise _bad("shares", tenant, "a non-empty str naming a tenant (the tenant of a limit_key)")
    if isinstance(share, Share):
        return share
    if isinstance(share, Mapping):
        unknown = sorted(set(share) - {"weight", "limit"}, key=str)
        if unknown:
            raise _bad(f"shares[{tenant!r}]", unknown[0], "a Share field: weight, limit")
        return _share_of(tenant, share.get("weight", 1.0), share.get("limit"))
    raise _bad(f"shares[{tenant!r}]", share, "an isthmus.Share(weight=..., limit=...) or a dict of its fields")


def _share_of(tenant: str, weight: Any, limit: Any) -> Share:
    try:
        return Share(weight, limit)
    except errors.ConfigError as exc:
        raise errors.ConfigError(f"shares[{tenant!r}].{exc}") from None


class Limiter:
    """A governed allowance, shareable: every client (or stream) given this object counts
    against the same limits.

    ``costs`` maps endpoints to their cost in units: ``{"/v1/search": 5, "POST /v1/import": 10}``
    (the longest matching path prefix wins; unmatched calls cost 1). ``max_wait``: a call that
    would wait longer fails at once (``QuotaExhausted`` or ``Throttled``). ``max_server_wait``:
    a ``Retry-After`` or reset beyond this is treated as this (counted in the snapshot).

    ``coordination``: count the ``RateLimit`` and ``Quota`` rules in Redis, shared with every
    process whose Limiter has the same rules and ``name``; ``Concurrency`` and ``Adaptive``
    stay per process. While Redis cannot be reached no call goes out uncounted: calls wait
    (the connection is re-made with back-off) and go on by themselves once it is back, or fail
    with ``ConnectError`` after ``max_wait``.

    ``shares``: tenant -> ``Share`` (or a dict of its fields). A Limiter given ``shares`` (even
    ``{}``) is divided between tenants: its limits without a ``scope`` count per provider and
    credential, across tenants, and the tenants waiting for them are let go by weighted fair
    queuing (``divided`` is then True). Change them at run time with ``set_share`` and
    ``remove_share``; ``shares()`` gives each tenant's figures.
    """

    def __init__(self, limits: Any = (), *, costs: Optional[Mapping[str, float]] = None,
                 max_wait: float = 600.0, max_server_wait: float = 900.0,
                 coordination: Optional[Coordination] = None, name: str = "limits",
                 shares: Optional[Mapping[str, Union[Share, Mapping[str, Any]]]] = None):
        self.limits = Limits(_rules_of(limits) if not isinstance(limits, Limits) else limits.rules)
        if shares is not None and not isinstance(shares, Mapping):
            raise _bad("shares", shares, "a dict of tenant -> isthmus.Share")
        self._shares = {tenant: _share(tenant, share) for tenant, share in (shares or {}).items()}
        self.divided = shares is not None
        cost_items: list[tuple[str, float]] = []
        for pattern, cost in (costs or {}).items():
            if not isinstance(pattern, str) or not pattern.strip():
                raise _bad("costs", pattern, "an endpoint such as '/v1/search' or 'POST /v1/import'")
            cost_items.append((pattern.strip(), _number(f"costs[{pattern!r}]", cost)))
        self.costs = dict(cost_items)
        self.max_wait = _number("max_wait", max_wait)
        self.max_server_wait = _number("max_server_wait", max_server_wait)
        if not isinstance(name, str) or not name.strip():
            raise _bad("name", name, "a non-empty str naming the shared allowance")
        self.name = name
        self.coordination = coordination
        shared = _coordination_core(coordination)
        try:
            self._core = _core.Limiter([self._rule_spec(r) for r in self.limits], cost_items, self.max_wait,
                                       self.max_server_wait, shared, name,
                                       [(t, s.weight, s._specs()) for t, s in self._shares.items()])
        except ValueError as exc:  # the core names the field too; keep one error class
            raise errors.ConfigError(str(exc)) from None

    def _rule_spec(self, rule: _Rule) -> dict[str, Any]:
        spec = rule._spec()
        if self.divided and spec["scope"] is None:
            spec["scope"] = ["provider", "credential"]  # one allowance for all the tenants
        return spec

    def set_share(self, tenant: str, weight: float = 1.0, limit: Any = None) -> None:
        """Gives ``tenant`` a weight (and a ``limit`` of its own) from now on. Calls already
        waiting are let go by the new weight; a changed limit starts with fresh buckets. (On a
        Limiter built without ``shares`` every tenant has buckets of its own, so a weight
        changes nothing there; the share's limit still applies.)"""
        if not isinstance(tenant, str) or not tenant:
            raise _bad("tenant", tenant, "a non-empty str naming a tenant")
        share = _share_of(tenant, weight, limit)
        try:
            self._core.set_share(tenant, share.weight, share._specs())
        except ValueError as exc:
            raise errors.ConfigError(str(exc)) from None
        self._shares[tenant] = share

    def remove_share(self, tenant: str) -> bool:
        """Back to weight 1 and no limit of its own; False if ``tenant`` had no share."""
        self._shares.pop(tenant, None)
        return bool(self._core.remove_share(tenant))

    def shares(self) -> dict[str, dict[str, Any]]:
        """Per tenant (configured or seen in a key): ``weight``, ``granted``, ``waited``,
        ``wait_seconds`` (summed over its keys) and ``configured`` (it has a Share)."""
        result: dict[str, dict[str, Any]] = self._core.shares()
        return result

    def reserve(self, cost: float = 1.0, *, key: Optional[Mapping[str, str]] = None,
                priority: str = "normal") -> float:
        """Take a slot and return the seconds to wait before using it (0.0: go now).

        For callers that send by other means. Raises ``QuotaExhausted`` or ``Throttled`` when
        the wait would exceed ``max_wait``. A call blocked by ``Concurrency`` returns ``math.inf``.
        """
        wait, granted, blocked, ticket, error, resets_at, reason = self._core.reserve(
            dict(key) if key else None, float(cost), priority)
        if error is not None:
            if resets_at and "quota" in reason:
                exc = errors.QuotaExhausted(f"quota exhausted ({reason}); resets at "
                                            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(resets_at))}")
                exc.resets_at = resets_at
                raise exc
            if cost <= 0:
                raise _bad("cost", cost, "a number > 0")
            raise errors.Throttled(f"{reason} would hold the call for {wait:.0f} s, longer than max_wait")
        if blocked:
            return math.inf
        if ticket:
            self._core.release(ticket)  # the caller tracks its own in-flight calls
        return wait

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per key ("provider/credential/tenant/endpoint"): grants, waits, 429s, 5xx, retries,
        in-flight calls, the current adaptive limit and any server-imposed pause."""
        return self._core.snapshot()

    def __repr__(self) -> str:
        shared = f" shared as {self.name!r} in {self.coordination.url}" if self.coordination else ""
        shares = f" shares={self._shares!r}" if self.divided else ""
        return f"<Limiter {self.limits!r}{shared}{shares}>"

    def _repr_html_(self) -> str:
        cols = ["granted", "waited", "wait_seconds", "status_429", "status_5xx", "retries", "in_flight",
                "paused_for", "adaptive_limit"]
        rows = []
        for key, s in sorted(self.snapshot().items()):
            cells = "".join(
                f"<td>{'' if s[c] is None else (f'{s[c]:.3g}' if isinstance(s[c], float) else s[c])}</td>"
                for c in cols)
            rows.append(f"<tr><td>{html.escape(key)}</td>{cells}</tr>")
        head = "".join(f"<th>{c}</th>" for c in ["key", *cols])
        return (f"<div><b>Limiter</b> {html.escape(repr(self.limits))}"
                f"<table><tr>{head}</tr>{''.join(rows)}</table></div>")


_RETRY_STATUSES = (429, 500, 502, 503, 504)


class Retry:
    """Retry failed calls with exponential backoff and full jitter.

    ``attempts`` in all (the first included); the n-th backoff is uniform in
    ``[0, min(cap, base * 2**(n-1))]`` seconds, and never shorter than the server's
    ``Retry-After``. ``deadline`` bounds all attempts and waits together (seconds).
    ``retry_on``: HTTP statuses plus ``"timeout"`` and ``"connection"``. A POST or PATCH is
    retried only with an ``Idempotency-Key`` header, after a 429, or when the request
    provably never left (connection refused). ``circuit_breaker``: True (defaults), False, or a
    dict of ``failure_ratio``, ``min_calls``, ``window``, ``open_for``, ``probes``.
    """

    def __init__(self, attempts: int = 3, *, base: float = 0.1, cap: float = 30.0,
                 deadline: Optional[float] = None,
                 retry_on: Iterable[Union[int, str]] = (*_RETRY_STATUSES, "timeout", "connection"),
                 circuit_breaker: Union[bool, Mapping[str, Any]] = True,
                 max_server_wait: float = 900.0):
        self.attempts = _count("attempts", attempts)
        self.base = _number("base", base)
        self.cap = _number("cap", cap)
        if self.cap < self.base:
            raise _bad("cap", cap, f"a number >= base ({self.base:g})")
        self.deadline = None if deadline is None else _number("deadline", deadline)
        statuses: list[int] = []
        self.on_timeout = self.on_connection = False
        # Any, as in _count: typed int | str, mypy would skip the Integral branch as unreachable.
        items: list[Any] = [retry_on] if isinstance(retry_on, (int, str)) else list(retry_on)
        for item in items:
            if item == "timeout":
                self.on_timeout = True
            elif item == "connection":
                self.on_connection = True
            elif isinstance(item, numbers.Integral) and not isinstance(item, bool) and 100 <= int(item) <= 599:
                statuses.append(int(item))
            else:
                raise _bad("retry_on", item, "HTTP statuses (100-599), 'timeout' or 'connection'")
        self.statuses = tuple(statuses)
        self.max_server_wait = _number("max_server_wait", max_server_wait, inclusive=True)
        defaults = {"failure_ratio": 0.5, "min_calls": 20, "window": 10.0, "open_for": 5.0, "probes": 1}
        if circuit_breaker is True:
            self.circuit_breaker: Optional[dict[str, Any]] = dict(defaults)
        elif circuit_breaker is False or circuit_breaker is None:
            self.circuit_breaker = None
        elif isinstance(circuit_breaker, Mapping):
            unknown = set(circuit_breaker) - set(defaults)
            if unknown:
                raise _bad("circuit_breaker", sorted(unknown)[0], "keys among " + ", ".join(defaults))
            self.circuit_breaker = {**defaults, **circuit_breaker}
        else:
            raise _bad("circuit_breaker", circuit_breaker, "True, False or a dict")

    def _spec(self) -> dict[str, Any]:
        return {"attempts": self.attempts, "base": self.base, "cap": self.cap,
                "deadline": self.deadline or 0.0, "statuses": list(self.statuses),
                "timeout": self.on_timeout, "connection": self.on_connection,
                "max_server_wait": self.max_server_wait, "breaker": self.circuit_breaker}

    def __repr__(self) -> str:
        return (f"Retry(attempts={self.attempts}, base={self.base:g}, cap={self.cap:g}, "
                f"deadline={self.deadline!r})")


def as_limiter(rate_limit: Any) -> Optional[Limiter]:
    """What a client's ``rate_limit=`` becomes: None, the Limiter given, or the one Limiter its
    limits belong to (made on first use), so one limit never becomes several allowances."""
    if rate_limit is None:
        return None
    if isinstance(rate_limit, Limiter):
        return rate_limit
    rules = _rules_of(rate_limit)
    owners = {id(owner): owner for owner in (_owner_of(r) for r in rules) if owner is not None}
    if not owners:
        limiter = Limiter(rules)
        for rule in rules:
            rule._limiter = weakref.ref(limiter)
        return limiter
    if len(owners) == 1:
        owner = next(iter(owners.values()))
        if {id(r) for r in owner.limits.rules} == {id(r) for r in rules}:
            return owner
    raise errors.ConfigError(
        f"rate_limit: {Limits(rules)!r} mixes limits already given to another client with others, "
        "so they cannot be one allowance; build one isthmus.Limiter(...) with all of them and give "
        "that to every client")


def _owner_of(rule: _Rule) -> Optional[Limiter]:
    ref = getattr(rule, "_limiter", None)
    return ref() if ref is not None else None


def as_retry(retry: Any) -> Optional[Retry]:
    if retry is None or retry is False:
        return None
    if retry is True:
        return Retry()
    if isinstance(retry, Retry):
        return retry
    if isinstance(retry, numbers.Integral) and not isinstance(retry, bool):
        return Retry(attempts=int(retry))
    raise _bad("retry", retry, "a Retry(...), an int number of attempts, True or None")
