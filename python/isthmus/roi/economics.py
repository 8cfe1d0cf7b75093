"""What a real run costs: the bridge from pipeline runs to the ROI model.

`RunEconomics` turns the totals of one finished run into rates a product manager can plan
with: dollars, API calls and 429s per 1,000 records, the share of the API quota used and the
share of the run spent waiting on rate limits.

A finished `isthmus.Pipeline` run feeds it: `RunEconomics.from_run(run, cost_per_request=...)`;
a fleet's connections each get one: `RunEconomics.from_fleet(fleet)`.
It can also be built from plain numbers, or from any dict with the summary keys below
(`from_summary`). An `IntegrationCase` takes it (with `records_per_year`) to price its running
cost from measurements instead of guesses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from isthmus.roi._checks import number

#: Keys `from_summary` requires in a run summary.
SUMMARY_KEYS = ("records_written", "requests", "responses_429", "wait_seconds",
                "duration_seconds")

_PER = 1_000  # records per unit of the per-record rates


@dataclass(frozen=True)
class RunEconomics:
    """The totals of one finished run, and the per-1,000-record rates derived from them.

    Parameters
    ----------
    records_written:
        Records the sink accepted. Must be greater than 0: every rate divides by it.
    requests:
        HTTP requests sent to the other product's API, retries included.
    responses_429:
        Responses that said "slow down" (HTTP 429).
    wait_seconds:
        Time the run spent waiting on rate limits (limiter reservations and Retry-After).
    duration_seconds:
        Wall-clock length of the run.
    cost_per_request:
        Dollars the other API charges per call (0 for APIs that do not bill per call).
    cost_per_hour:
        Dollars per hour of the machines that ran it (compute, queue, storage).
    quota:
        Requests the API allows in the period the run used, if it has such a quota; then
        `quota_used` is the share of it this run consumed.

    Assumptions: the run's cost is `requests * cost_per_request + hours * cost_per_hour`;
    people's time is not in it (that is the `IntegrationCase` maintenance and support).
    """

    records_written: float
    requests: float
    responses_429: float = 0.0
    wait_seconds: float = 0.0
    duration_seconds: float = 0.0
    cost_per_request: float = 0.0
    cost_per_hour: float = 0.0
    quota: Optional[float] = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise in place once
        set_(self, "records_written", number("records_written", self.records_written, positive=True))
        for field in ("requests", "responses_429", "wait_seconds", "duration_seconds",
                      "cost_per_request", "cost_per_hour"):
            set_(self, field, number(field, getattr(self, field)))
        if self.responses_429 > self.requests:
            raise ValueError(f"responses_429: cannot exceed requests ({self.requests:g}), "
                             f"got {self.responses_429:g}")
        if self.wait_seconds > self.duration_seconds:
            raise ValueError(f"wait_seconds: cannot exceed duration_seconds "
                             f"({self.duration_seconds:g}), got {self.wait_seconds:g}")
        if self.quota is not None:
            set_(self, "quota", number("quota", self.quota, positive=True))

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any], *, cost_per_request: float = 0.0,
                     cost_per_hour: float = 0.0) -> RunEconomics:
        """Build from a run summary dict.

        Required keys: ``records_written``, ``requests``, ``responses_429``,
        ``wait_seconds``, ``duration_seconds``. Optional: ``quota``. Other keys (a
        pipeline summary carries more) are ignored. Prices are not part of a run, so they
        come as keyword arguments.
        """
        if not isinstance(summary, Mapping):
            raise ValueError(f"summary: expected a dict, got {type(summary).__name__}")
        missing = [k for k in SUMMARY_KEYS if k not in summary]
        if missing:
            raise ValueError(f"summary: missing key(s) {', '.join(missing)}; "
                             f"expected {', '.join(SUMMARY_KEYS)}")
        return cls(**{k: summary[k] for k in SUMMARY_KEYS}, quota=summary.get("quota"),
                   cost_per_request=cost_per_request, cost_per_hour=cost_per_hour)

    @classmethod
    def from_run(cls, run: Any, *, cost_per_request: float = 0.0, cost_per_hour: float = 0.0,
                 quota: Optional[float] = None,
                 wait_seconds: Optional[float] = None) -> RunEconomics:
        """Build from a finished `isthmus.Run` (what `pipeline.run()` returns).

        Reads `run.summary()`: ``written`` -> records_written, ``requests`` (every HTTP
        request the run sent, source pages and sink batches, retries included) -> requests,
        ``status_429`` -> responses_429, ``duration_s`` -> duration_seconds, ``wait_seconds``
        (time calls were held back by the clients' rate limiters or backing off to retry,
        at most the run's duration) -> wait_seconds; pass ``wait_seconds`` to override it.
        ``quota``: requests the API allows in the period the run used, for `quota_used`.

        A run that wrote nothing has no per-record rates: ValueError.
        """
        summary_of = getattr(run, "summary", None)
        if not callable(summary_of):
            raise ValueError(f"run: expected a finished isthmus.Run, got {type(run).__name__}")
        s = summary_of()
        if s.get("status") not in (None, "completed"):
            raise ValueError(f"run: status is {s.get('status')!r}; expected a completed run")
        if s.get("written", 0) <= 0:
            raise ValueError(f"run: wrote no records (read {s.get('read', 0)}); "
                             "per-record rates need records_written > 0")
        duration = float(s.get("duration_s") or 0.0)
        wait = s.get("wait_seconds", 0.0) if wait_seconds is None else wait_seconds
        # A run's wait_seconds sums every call's time held back; with calls in parallel that can
        # exceed the wall-clock duration, and the run cannot have waited longer than it lasted.
        wait = min(wait, duration)
        return cls(records_written=s["written"], requests=s.get("requests", 0),
                   responses_429=s.get("status_429", 0), wait_seconds=wait,
                   duration_seconds=duration, cost_per_request=cost_per_request,
                   cost_per_hour=cost_per_hour, quota=quota)

    @classmethod
    def from_fleet(cls, fleet: Any, *, cost_per_request: float = 0.0, cost_per_hour: float = 0.0,
                   quota: Optional[float] = None) -> dict[str, RunEconomics]:
        """One `RunEconomics` per connection of an `isthmus.Fleet`, keyed by connection id,
        from the totals of all its runs (`fleet.status()`): ``written``, ``requests``,
        ``status_429``, ``wait_seconds`` (at most its ``duration_s``) and ``duration_s``.

        Connections that have written nothing yet have no per-record rates and are left out.
        Each connection's machine time is its own runs' wall-clock time, so with connections
        running side by side ``cost_per_hour`` counts the shared machine once per connection:
        price it per connection (the machine's cost divided by the connections it serves).
        ``quota``: the requests the API allows one connection in the period covered.
        """
        status_of = getattr(fleet, "status", None)
        if not callable(status_of):
            raise ValueError(f"fleet: expected an isthmus.Fleet, got {type(fleet).__name__}")
        out: dict[str, RunEconomics] = {}
        for row in status_of().to_dict("records"):
            if row["written"] <= 0:
                continue
            duration = float(row["duration_s"])
            out[row["connection_id"]] = cls(
                records_written=row["written"], requests=row["requests"], responses_429=row["status_429"],
                wait_seconds=min(float(row["wait_seconds"]), duration), duration_seconds=duration,
                cost_per_request=cost_per_request, cost_per_hour=cost_per_hour, quota=quota)
        return out

    @property
    def cost(self) -> float:
        """Dollars the run cost: API fees plus machine time."""
        return self.requests * self.cost_per_request + self.duration_seconds / 3600 * self.cost_per_hour

    @property
    def cost_per_1000_records(self) -> float:
        return self.cost / self.records_written * _PER

    @property
    def requests_per_1000_records(self) -> float:
        return self.requests / self.records_written * _PER

    @property
    def responses_429_per_1000_records(self) -> float:
        return self.responses_429 / self.records_written * _PER

    @property
    def quota_used(self) -> float:
        """Share of the API quota the run used; NaN when the API has no quota."""
        return math.nan if self.quota is None else self.requests / self.quota

    @property
    def waiting_share(self) -> float:
        """Share of the run's wall-clock time spent waiting on rate limits."""
        return self.wait_seconds / self.duration_seconds if self.duration_seconds else 0.0

    def yearly_cost(self, records_per_year: float) -> float:
        """Running cost of moving `records_per_year` at this run's cost per record."""
        records = number("records_per_year", records_per_year)
        return self.cost_per_1000_records * records / _PER

    def to_dict(self) -> dict[str, Any]:
        return {
            "records_written": self.records_written,
            "cost": self.cost,
            "cost_per_1000_records": self.cost_per_1000_records,
            "requests_per_1000_records": self.requests_per_1000_records,
            "responses_429_per_1000_records": self.responses_429_per_1000_records,
            "quota_used": self.quota_used,
            "waiting_share": self.waiting_share,
        }
