"""A portfolio of candidate integrations, ranked by value and tiered by how to deliver each.

Tiers, from the essay's advice on where a product team spends its depth:

- ``ecosystem-imperative``: the top 20% of candidates by value. Build deep, own them, learn
  the other product well, support them jointly with the partner.
- ``category-template``: the rest that clear the ROI bar. Build them from the category's
  template (the flows any CRM, any help desk, ... supports), filling in the blanks.
- ``partner-built``: the long tail below the bar. Enable the other product's team to build
  and own it: docs, a sandbox, a supportive review. Where no partner has offered yet, the
  action says to recruit one.

Each row becomes an `IntegrationCase`: the candidate's ACV is the contract value, the
customers asking for it are the customers reached (their deals depend on it),
``deals_influenced`` gain ``win_rate_lift`` of win probability, and ``effort_weeks``
person-weeks are built at ``loaded_weekly_cost``; yearly maintenance is
``maintenance_share`` of the build cost unless the row gives ``maintenance_per_year``.
"""

from __future__ import annotations

import html
import math
import numbers
import os
from typing import TYPE_CHECKING, Any, Iterator, Optional

import pandas as pd

from isthmus.roi._checks import money, multiple, number
from isthmus.roi.case import HORIZON_YEARS, LOADED_WEEKLY_COST, ROI_BAR, IntegrationCase

if TYPE_CHECKING:
    from matplotlib.axes import Axes

#: Share of candidates, ranked by value, that get the deep, ecosystem-imperative treatment.
TOP_SHARE = 0.2

#: Win probability an integration adds to each deal it influences (absolute: 0.1 = 10 points).
WIN_RATE_LIFT = 0.1

#: Yearly maintenance as a share of the build cost (API changes, bugs, upgrades).
MAINTENANCE_SHARE = 0.2

ECOSYSTEM_IMPERATIVE = "ecosystem-imperative"
CATEGORY_TEMPLATE = "category-template"
PARTNER_BUILT = "partner-built"
#: The tiers, deepest investment first.
TIERS = (ECOSYSTEM_IMPERATIVE, CATEGORY_TEMPLATE, PARTNER_BUILT)

#: Columns a candidates table must have.
REQUIRED_COLUMNS = ("name", "category", "customers_asking", "acv", "deals_influenced",
                    "effort_weeks", "partner_willing")

#: Columns a candidates table may add; each overrides the portfolio-wide assumption per row.
OPTIONAL_COLUMNS = ("win_rate_lift", "maintenance_per_year", "support_per_year",
                    "api_cost_per_year", "existing_customers", "churn_reduction", "expansion")

_NUMERIC = ("customers_asking", "acv", "deals_influenced", "effort_weeks")
_YES = {"true", "yes", "y", "1"}
_NO = {"false", "no", "n", "0"}
_TIER_COLOURS = {ECOSYSTEM_IMPERATIVE: "#0550ae", CATEGORY_TEMPLATE: "#1a7f37",
                 PARTNER_BUILT: "#9a6700"}


def _flag(column: str, row: str, value: object) -> bool:
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    if isinstance(value, numbers.Real) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _YES:
        return True
    if text in _NO:
        return False
    raise ValueError(f"{column}: row {row!r}: expected yes/no or true/false, got {value!r}")


class Portfolio:
    """Candidate integrations, ranked by value (highest first) and tiered.

    Build it with `from_frame` or `from_csv`. `frame` is the ranked table; `cases` the
    `IntegrationCase` of each candidate, by name.
    """

    def __init__(self, cases: list[IntegrationCase], partner_willing: dict[str, bool], *,
                 top_share: float = TOP_SHARE) -> None:
        if not cases:
            raise ValueError("candidates: the portfolio is empty")
        self.top_share = number("top_share", top_share, positive=True, maximum=1.0)
        names = [c.name for c in cases]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"name: duplicate candidate(s) {', '.join(dupes)}")
        ranked = sorted(cases, key=lambda c: (-c.value, c.name))
        self.cases = {c.name: c for c in ranked}
        self._frame = self._rank(ranked, partner_willing)

    @classmethod
    def from_frame(cls, df: pd.DataFrame, *, loaded_weekly_cost: float = LOADED_WEEKLY_COST,
                   win_rate_lift: float = WIN_RATE_LIFT,
                   maintenance_share: float = MAINTENANCE_SHARE, roi_bar: float = ROI_BAR,
                   top_share: float = TOP_SHARE, years: float = HORIZON_YEARS) -> Portfolio:
        """Candidates from a DataFrame with the `REQUIRED_COLUMNS` (and any `OPTIONAL_COLUMNS`).

        ``effort_weeks`` is person-weeks; ``acv`` the yearly contract value of a typical
        customer; ``partner_willing`` yes/no. A bad cell raises ValueError naming the
        column and the candidate.
        """
        if not isinstance(df, pd.DataFrame):
            raise ValueError(f"candidates: expected a pandas DataFrame, got {type(df).__name__}")
        missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"candidates: missing column(s) {', '.join(missing)}; "
                             f"required: {', '.join(REQUIRED_COLUMNS)}")
        if df.empty:
            raise ValueError("candidates: the table has no rows")
        maintenance_share = number("maintenance_share", maintenance_share)
        cases, willing = [], {}
        for i, row in enumerate(df.to_dict("records")):
            name = row["name"]
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"name: row {i}: expected a non-empty name, got {name!r}")
            values = {}
            for column in _NUMERIC + tuple(c for c in OPTIONAL_COLUMNS if c in df.columns):
                cell = row[column]
                if column in OPTIONAL_COLUMNS and pd.isna(cell):
                    continue  # blank optional cell: the portfolio-wide assumption applies
                try:
                    values[column] = number(column, pd.to_numeric(cell), positive=column == "acv")
                except (ValueError, TypeError):
                    rule = "greater than 0" if column == "acv" else "a number, at least 0"
                    raise ValueError(f"{column}: row {name!r}: expected {rule}, "
                                     f"got {cell!r}") from None
            build = values["effort_weeks"] * loaded_weekly_cost
            try:
                case = IntegrationCase(
                    name=name, category=str(row["category"]),
                    contract_value=values["acv"], people=1, weeks=values["effort_weeks"],
                    loaded_weekly_cost=loaded_weekly_cost,
                    maintenance_per_year=values.get("maintenance_per_year",
                                                    maintenance_share * build),
                    support_per_year=values.get("support_per_year", 0.0),
                    api_cost_per_year=values.get("api_cost_per_year", 0.0),
                    customers=values["customers_asking"],
                    deals_influenced=values["deals_influenced"],
                    win_rate_lift=values.get("win_rate_lift", win_rate_lift),
                    existing_customers=values.get("existing_customers", 0.0),
                    churn_reduction=values.get("churn_reduction", 0.0),
                    expansion=values.get("expansion", 0.0),
                    years=years, roi_bar=roi_bar)
            except ValueError as exc:
                raise ValueError(f"{exc} (candidate {name!r})") from None
            cases.append(case)
            willing[name] = _flag("partner_willing", name, row["partner_willing"])
        return cls(cases, willing, top_share=top_share)

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str], **assumptions: Any) -> Portfolio:
        """Candidates from a CSV file; keyword arguments as for `from_frame`."""
        return cls.from_frame(pd.read_csv(path), **assumptions)

    def _rank(self, ranked: list[IntegrationCase], willing: dict[str, bool]) -> pd.DataFrame:
        top = max(1, math.floor(self.top_share * len(ranked) + 1e-9))
        rows = []
        for rank, case in enumerate(ranked, start=1):
            if rank <= top:
                tier, action = ECOSYSTEM_IMPERATIVE, "build deep: own it, learn the other product, support it jointly"
            elif case.meets_bar:
                tier, action = CATEGORY_TEMPLATE, f"build from the {case.category} template"
            elif willing[case.name]:
                tier, action = PARTNER_BUILT, "enable the partner: docs, sandbox, review"
            else:
                tier, action = PARTNER_BUILT, "recruit a partner: docs, sandbox"
            rows.append({"rank": rank, "name": case.name, "category": case.category,
                         "tier": tier, "action": action,
                         "customers_asking": case.customers,
                         "deals_influenced": case.deals_influenced, "acv": case.acv,
                         "effort_weeks": case.weeks, "partner_willing": willing[case.name],
                         **{k: v for k, v in case.summary().items()
                            if k not in ("name", "acv")}})
        frame: pd.DataFrame = pd.DataFrame(rows).set_index("rank")
        frame["value_share_cumulative"] = frame["value"].cumsum() / frame["value"].sum()
        return frame

    # -- reading it -------------------------------------------------------------------------

    @property
    def frame(self) -> pd.DataFrame:
        """The ranked candidates (a copy): inputs, cost, value, roi, tier and action."""
        copied: pd.DataFrame = self._frame.copy()
        return copied

    @property
    def roi_bar(self) -> float:
        return next(iter(self.cases.values())).roi_bar

    def tier(self, name: str) -> str:
        rows = self._frame[self._frame["name"] == name]
        if rows.empty:
            raise KeyError(name)
        return str(rows["tier"].iloc[0])

    def tier_counts(self) -> pd.Series:
        """Candidates per tier, deepest tier first (every tier listed, even when empty)."""
        return self._frame["tier"].value_counts().reindex(TIERS, fill_value=0)

    def by_tier(self) -> pd.DataFrame:
        """Count, cost and value per tier."""
        grouped = self._frame.groupby("tier").agg(
            candidates=("name", "size"), cost=("cost", "sum"), value=("value", "sum"))
        by_tier: pd.DataFrame = grouped.reindex(TIERS, fill_value=0)
        return by_tier

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Iterator[IntegrationCase]:
        return iter(self.cases.values())

    def __getitem__(self, name: str) -> IntegrationCase:
        return self.cases[name]

    # -- plots (matplotlib is imported only when one is drawn) --------------------------------

    def plot_roi(self, ax: Optional[Axes] = None) -> Axes:
        """ROI multiple per candidate against the ROI bar. Returns the Axes."""
        from isthmus.roi.plots import roi_chart
        return roi_chart(self, ax=ax)

    def plot_pareto(self, ax: Optional[Axes] = None) -> Axes:
        """Value per candidate, highest first, with the cumulative share. Returns the Axes."""
        from isthmus.roi.plots import pareto_chart
        return pareto_chart(self, ax=ax)

    def plot_contract_share(self, ax: Optional[Axes] = None) -> Axes:
        """Cost as a share of one contract's value, per candidate. Returns the Axes."""
        from isthmus.roi.plots import contract_share_chart
        return contract_share_chart(self, ax=ax)

    # -- Jupyter ----------------------------------------------------------------------------

    def _repr_html_(self, max_rows: Optional[int] = 30) -> str:
        f = self._frame
        counts = self.tier_counts()
        head = ", ".join(f"{n} {t}" for t, n in counts.items())
        cells = []
        shown = len(f) if max_rows is None else max_rows
        for rank, r in f.head(shown).iterrows():
            colour = _TIER_COLOURS[r["tier"]]
            roi_colour = "#1a7f37" if r["meets_bar"] else "#cf222e"
            cells.append(
                f"<tr><td>{rank}</td><td>{html.escape(str(r['name']))}</td>"
                f"<td>{html.escape(str(r['category']))}</td>"
                f"<td style='color:{colour}'>{r['tier']}</td>"
                f"<td style='text-align:right'>{money(r['cost'])}</td>"
                f"<td style='text-align:right'>{money(r['value'])}</td>"
                f"<td style='text-align:right;color:{roi_colour}'>{multiple(r['roi'])}</td>"
                f"<td style='text-align:right'>{r['contract_share']:.0%}</td>"
                f"<td>{html.escape(r['action'])}</td></tr>")
        more = "" if len(f) <= shown else f"<p>… {len(f) - shown} more</p>"
        header = "".join(f"<th>{h}</th>" for h in
                         ("#", "name", "category", "tier", "cost", "value", "ROI",
                          "cost / contract", "action"))
        return (f"<div><b>Portfolio: {len(f)} candidates</b> ({head}; ROI bar "
                f"{self.roi_bar:g}x)<table><thead><tr>{header}</tr></thead>"
                f"<tbody>{''.join(cells)}</tbody></table>{more}</div>")

    def __repr__(self) -> str:
        counts = ", ".join(f"{t}={n}" for t, n in self.tier_counts().items())
        return f"<Portfolio {len(self)} candidates: {counts}>"
