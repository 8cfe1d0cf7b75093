"""Charts for ROI decisions. matplotlib is imported inside each function, so `isthmus.roi`
works without it; install it with the ``notebook`` extra (`pip install isthmus[notebook]`).

Each function takes a `Portfolio` or a list of `IntegrationCase` (handy for comparing a few
cases side by side), draws on `ax` (a new figure when None) and returns the Axes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Literal, Optional, Union

import pandas as pd

from isthmus.roi.case import ROI_BAR, IntegrationCase
from isthmus.roi.portfolio import _TIER_COLOURS, TIERS, Portfolio

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes

Cases = Union[Portfolio, Iterable[IntegrationCase]]

_NO_TIER = "#57606a"


def _table(cases: Cases) -> tuple[pd.DataFrame, float]:
    if isinstance(cases, Portfolio):
        return cases.frame, cases.roi_bar
    cases = list(cases)
    if not cases or not all(isinstance(c, IntegrationCase) for c in cases):
        raise ValueError("cases: expected a Portfolio or a non-empty list of IntegrationCase")
    frame = pd.DataFrame([c.summary() for c in cases])
    return frame, cases[0].roi_bar if cases else ROI_BAR


def _axes(ax: Optional[Axes], height: float) -> Axes:
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, height))
    return ax


def _colours(frame: pd.DataFrame) -> list[str]:
    if "tier" not in frame:
        return [_NO_TIER] * len(frame)
    return [_TIER_COLOURS[t] for t in frame["tier"]]


def _short_money(x: float) -> str:
    if abs(x) >= 1_000_000:
        return f"${x / 1_000_000:g}M"
    return f"${x / 1_000:g}k" if abs(x) >= 1_000 else f"${x:g}"


def _legend(ax: Axes, frame: pd.DataFrame,
            loc: Literal["best", "lower right", "center right"] = "best") -> None:
    from matplotlib.patches import Patch

    handles: list[Artist] = [ax.get_lines()[0]] if ax.get_lines() else []
    if "tier" in frame:
        handles += [Patch(color=_TIER_COLOURS[t], label=t) for t in TIERS
                    if (frame["tier"] == t).any()]
    if handles:
        ax.legend(handles=handles, loc=loc, fontsize="small", framealpha=0.9)


def roi_chart(cases: Cases, ax: Optional[Axes] = None) -> Axes:
    """ROI multiple of each candidate (log scale) against the ROI bar, best at the top."""
    frame, bar = _table(cases)
    frame = frame.iloc[::-1]  # barh draws bottom-up; keep the best at the top
    ax = _axes(ax, 0.3 * len(frame) + 1.5)
    finite = frame["roi"].replace(math.inf, math.nan)
    ceiling = max(finite.max(skipna=True) if finite.notna().any() else bar, bar) * 2
    # A log axis cannot show 0 or infinity: clip both into view.
    roi = frame["roi"].clip(lower=0.01, upper=ceiling)
    ax.barh(frame["name"], roi, color=_colours(frame))
    ax.axvline(bar, color="#cf222e", linestyle="--", label=f"{bar:g}x ROI bar")
    ax.set_xscale("log")
    ax.set_xlabel("ROI multiple (value ÷ cost, log scale)")
    ax.set_title("ROI per integration")
    _legend(ax, frame, loc="lower right")
    return ax


def pareto_chart(cases: Cases, ax: Optional[Axes] = None) -> Axes:
    """Value per candidate, highest first, with the cumulative share of total value."""
    frame, _ = _table(cases)
    frame = frame.sort_values("value", ascending=False)
    ax = _axes(ax, 4.5)
    positions = range(len(frame))
    ax.bar(positions, frame["value"], color=_colours(frame))
    ax.set_xticks(list(positions))
    ax.set_xticklabels(frame["name"], rotation=60, ha="right", fontsize="small")
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _short_money(v)))
    ax.set_ylabel("value")
    ax.set_title("Where the value is")
    share = ax.twinx()
    cumulative = frame["value"].cumsum() / frame["value"].sum() * 100
    share.plot(list(positions), cumulative.to_numpy(), color="black", marker="o",
               markersize=3, label="cumulative share of value")
    share.set_ylim(0, 105)
    share.set_ylabel("cumulative share of value (%)")
    _legend(share, frame, loc="center right")
    return ax


def contract_share_chart(cases: Cases, ax: Optional[Axes] = None) -> Axes:
    """Cost as a share of one customer's contract value; past 100% one contract cannot pay."""
    frame, _ = _table(cases)
    frame = frame.sort_values("contract_share", ascending=False)  # barh: cheapest on top
    ax = _axes(ax, 0.3 * len(frame) + 1.5)
    ax.barh(frame["name"], frame["contract_share"] * 100, color=_colours(frame))
    ax.axvline(100, color="#cf222e", linestyle="--", label="one whole contract")
    ax.set_xlabel("cost as a share of one contract's value (%)")
    ax.set_title("What the integration eats of a contract")
    _legend(ax, frame)
    return ax
