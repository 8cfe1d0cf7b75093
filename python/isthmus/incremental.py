"""Reading only what changed (``Incremental``) and cutting a time range into partitions
(``TimeSlices``).

The incremental cursor belongs to the stream that reads it: its state travels in the stream's
checkpoint token and moves only when a run has read everything.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from isthmus import errors
from isthmus.paginators import _call_repr

__all__ = ["Incremental", "TimeSlices"]


def _get_path(record: Any, path: Sequence[str]) -> Any:
    for step in path:
        if not isinstance(record, dict):
            return None
        record = record.get(step)
    return record


# -- incremental -----------------------------------------------------------------------------

def _parse_time(v: Any) -> Optional[float]:
    if v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return _dt.datetime.fromisoformat(str(v).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Incremental:
    """Read only what changed: ``param=<last max of cursor_field - lookback>`` on the next run.

    Records at the boundary (within ``lookback`` of the last maximum) that come back unchanged
    are skipped, so an inclusive filter or a lookback does not deliver them twice.
    """

    def __init__(self, cursor_field: str = "updated_at", param: str = "updated_since",
                 lookback: float = 0.0, initial: Any = None):
        if not isinstance(lookback, (int, float)) or lookback < 0:
            raise errors.ConfigError(f"lookback: {lookback!r} is not valid; expected seconds >= 0")
        self.cursor_field, self.param, self.lookback, self.initial = cursor_field, param, float(lookback), initial
        self._path = cursor_field.split(".")

    def __repr__(self) -> str:
        return _call_repr("Incremental", {"cursor_field": self.cursor_field, "param": self.param,
                                          "lookback": self.lookback, "initial": self.initial})

    def start_value(self, state: Optional[Dict[str, Any]]) -> Any:
        if not state or state.get("max") is None:
            return self.initial
        t = _parse_time(state["max"])
        if t is None:
            return state["max"]
        t -= self.lookback
        return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class _IncrementalTracker:
    def __init__(self, inc: Incremental, state: Optional[Dict[str, Any]]):
        self.inc = inc
        self.previous = {k: v for k, v in (state or {}).get("boundary", [])}
        self.max_value: Any = (state or {}).get("max")
        self.max_t = _parse_time(self.max_value)
        self.boundary: Dict[str, Any] = {}

    def skip(self, record: Any, key: str) -> bool:
        value = _get_path(record, self.inc._path)
        return key in self.previous and self.previous[key] == value

    def observe(self, records: List[Any], keys: List[str]) -> None:
        path, lookback = self.inc._path, self.inc.lookback
        for r, k in zip(records, keys):
            v = _get_path(r, path)
            t = _parse_time(v)
            if t is None:
                continue
            if self.max_t is None or t > self.max_t:
                self.max_t, self.max_value = t, v
                if self.boundary:
                    self.boundary = {bk: bv for bk, bv in self.boundary.items()
                                     if (_parse_time(bv) or 0) >= t - lookback}
            if t >= self.max_t - lookback:
                self.boundary[k] = v

    def state(self) -> Dict[str, Any]:
        merged = {k: v for k, v in self.previous.items()
                  if self.max_t is None or (_parse_time(v) or 0) >= self.max_t - self.inc.lookback}
        merged.update(self.boundary)
        return {"max": self.max_value, "boundary": sorted(merged.items())}


# -- time slices -----------------------------------------------------------------------------

def _instant(field: str, value: Any) -> _dt.datetime:
    """An aware UTC datetime from a datetime, a date, ISO 8601 text or Unix seconds (UTC when
    no offset is given)."""
    when: Optional[_dt.datetime] = None
    if isinstance(value, _dt.datetime):
        when = value
    elif isinstance(value, _dt.date):
        when = _dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        when = _dt.datetime.fromtimestamp(value, _dt.timezone.utc)
    elif isinstance(value, str):
        try:
            when = _dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            when = None
    if when is None:
        raise errors.ConfigError(f"{field}: {value!r} is not valid; expected a datetime, a date, "
                                 "ISO 8601 text ('2024-01-01T00:00:00Z') or Unix seconds")
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when.astimezone(_dt.timezone.utc)


# The builtin generic, not typing.List: the class's bases stay exactly (list,).
class TimeSlices(list[Dict[str, Any]]):
    """Partitions for an API that filters by time: ``[start, end)`` cut into slices of ``every``,
    each ``{start_param: slice start, end_param: slice end}``. Give them to ``Stream(partitions=)``
    and ``concurrency`` slices are read at once::

        isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(),
                       partitions=isthmus.TimeSlices("2024-01-01", "2025-01-01", every=timedelta(days=30),
                                                     start_param="updated_since", end_param="updated_before"),
                       concurrency=4)

    With an inclusive start and an exclusive end at the API, every record is in exactly one
    slice; with both ends inclusive, a record exactly on a boundary comes twice (an idempotent
    sink absorbs it) — never zero times. ``end=None`` is now: the last slice then differs from
    run to run, so a resume reads it again from its start. ``format``: ``"iso"`` (UTC with
    milliseconds, ``2024-01-01T00:00:00.000Z``), ``"unix"`` (seconds) or a function of an aware
    datetime returning the param's value.
    """

    MAX_SLICES = 100_000

    def __init__(self, start: Any, end: Any = None, *, every: Union[float, _dt.timedelta],
                 start_param: str = "updated_since", end_param: str = "updated_before",
                 format: Union[str, Callable[[_dt.datetime], Any]] = "iso"):  # noqa: A002
        begin = _instant("start", start)
        finish = _dt.datetime.now(_dt.timezone.utc) if end is None else _instant("end", end)
        if finish <= begin:
            raise errors.ConfigError(f"end: {end!r} is not valid; expected a time after start ({begin.isoformat()})")
        if isinstance(every, _dt.timedelta):
            step = every
        elif isinstance(every, (int, float)) and not isinstance(every, bool) and every > 0:
            step = _dt.timedelta(seconds=every)
        else:
            raise errors.ConfigError(f"every: {every!r} is not valid; expected seconds > 0 or a timedelta")
        if step <= _dt.timedelta(0):
            raise errors.ConfigError(f"every: {every!r} is not valid; expected a positive duration")
        count = -(-(finish - begin) // step)
        if count > self.MAX_SLICES:
            raise errors.ConfigError(f"every: {every!r} cuts {begin.isoformat()} .. {finish.isoformat()} into "
                                     f"{count:,} slices; at most {self.MAX_SLICES:,} are allowed")
        for field, name in (("start_param", start_param), ("end_param", end_param)):
            if not isinstance(name, str) or not name:
                raise errors.ConfigError(f"{field}: {name!r} is not valid; expected a query parameter name")
        if start_param == end_param:
            raise errors.ConfigError(f"end_param: {end_param!r} is not valid; it must differ from start_param")
        render: Callable[[_dt.datetime], Any]
        if format == "iso":
            def render(t: _dt.datetime) -> Any:
                return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
        elif format == "unix":
            def render(t: _dt.datetime) -> Any:
                stamp = t.timestamp()
                return int(stamp) if stamp == int(stamp) else stamp
        elif callable(format):
            render = format
        else:
            raise errors.ConfigError(f"format: {format!r} is not valid; expected 'iso', 'unix' or a function")
        super().__init__()
        lo = begin
        while lo < finish:
            hi = min(lo + step, finish)
            self.append({start_param: render(lo), end_param: render(hi)})
            lo = hi
        self.start, self.end, self.every = begin, finish, step
        self.start_param, self.end_param = start_param, end_param

    def __repr__(self) -> str:
        return (f"TimeSlices({self.start.isoformat()} .. {self.end.isoformat()}, every={self.every}, "
                f"{len(self)} slices of {self.start_param}/{self.end_param})")
