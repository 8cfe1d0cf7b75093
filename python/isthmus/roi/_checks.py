"""Validation shared by the roi modules: every bad value names its field."""

from __future__ import annotations

import math
import numbers


def number(field: str, value: object, *, minimum: float = 0.0, positive: bool = False,
           maximum: float | None = None) -> float:
    """Return `value` as a float, or raise ValueError naming `field`, the value and the rule."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{field}: expected a number, got {value!r}")
    x = float(value)
    if math.isnan(x) or math.isinf(x):
        raise ValueError(f"{field}: expected a finite number, got {value!r}")
    if positive and x <= 0:
        raise ValueError(f"{field}: must be greater than 0, got {value!r}")
    if x < minimum:
        raise ValueError(f"{field}: must be at least {minimum:g}, got {value!r}")
    if maximum is not None and x > maximum:
        raise ValueError(f"{field}: must be at most {maximum:g}, got {value!r}")
    return x


def money(x: float) -> str:
    """$7,200 / $96,000 / $1.2M: short enough for a table cell."""
    if math.isinf(x):
        return "∞"
    if abs(x) >= 10_000_000:
        return f"${x / 1_000_000:,.1f}M"
    return f"${x:,.0f}"


def multiple(x: float) -> str:
    return "∞" if math.isinf(x) else f"{x:,.1f}x"


def months(x: float) -> str:
    return "never" if math.isinf(x) else f"{x:,.1f} months"
