"""The unit economics of one integration: what it costs against the contract value it brings.

The model, over a horizon of `years` (1 by default: one yearly contract term):

    build cost   = people * weeks * loaded_weekly_cost                       (once)
    yearly cost  = maintenance + support + API/running cost                   (each year)
    cost         = build cost + years * yearly cost

    ACV          = contract_value, or contract_value * 12 when per="month"
    yearly value = ACV * ( customers                                          deals it wins outright
                         + deals_influenced * win_rate_lift                   extra wins in the pipeline
                         + existing_customers * (churn_reduction + expansion))  kept and grown revenue
    value        = years * yearly value

    ROI multiple   = value / cost          (gross: 1.0 is break-even, the bar is 10x)
    payback months = build cost / (monthly value - monthly running cost)
    contract share = cost / (ACV * years)  (what share of one customer's contract the work eats)

Assumptions, kept simple on purpose so a reader can redo the sums by hand: no discounting,
no ramp-up (value starts the month the integration ships), churn reduction and expansion
are absolute yearly rates applied to the existing customers who use the integration, and a
customer won because of the integration counts with its whole contract value — the
essay's case of a deal sold "contingent on building" the integration.

The essay's worked example: a $800/month contract ($9,600 a year) sold on the condition of
a simple integration that takes two people two or three weeks. At 2 people x 2.5 weeks and
a loaded cost of $1,440 per person-week the build costs $7,200: 75% of the contract, an ROI
of 1.3x. The same work for an $8,000/month ($96,000) customer is 7.5% of the contract, 13.3x:
above the 10x bar.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from isthmus.roi._checks import money, months, multiple, number
from isthmus.roi.economics import RunEconomics

#: The ROI multiple an integration should clear before you build it (the essay's 10x rule).
ROI_BAR = 10.0

#: Loaded cost of one person for one week, in dollars. It is the figure implied by the
#: essay's example (2 people x 2.5 weeks = 75% of $9,600, so $7,200 / 5 person-weeks);
#: salary, benefits, tools and overhead of a real engineer are often two or three times it,
#: so pass your own.
LOADED_WEEKLY_COST = 1_440.0

#: Years of value and running cost counted: one contract term.
HORIZON_YEARS = 1.0

_PERIODS = {"year": 1, "month": 12}


@dataclass(frozen=True)
class IntegrationCase:
    """One integration's cost, value and ROI. All money in dollars.

    Cost: ``people`` x ``weeks`` x ``loaded_weekly_cost`` to build, then per year
    ``maintenance_per_year`` + ``support_per_year`` + ``api_cost_per_year``, plus, when a
    measured ``run`` (`RunEconomics`) and ``records_per_year`` are given, what moving those
    records costs at that run's cost per record.

    Value: ``contract_value`` per ``per`` ("year" or "month") is one customer's contract.
    ``customers`` is the number of customers reached whose deals the integration wins or
    secures outright; ``deals_influenced`` open deals gain ``win_rate_lift`` (absolute, 0.1 =
    ten points) of win probability; ``existing_customers`` who use it churn
    ``churn_reduction`` less and expand by ``expansion`` of their contract each year.

    The module docstring has the formulas and assumptions.
    """

    name: str
    contract_value: float
    people: float
    weeks: float
    per: str = "year"
    loaded_weekly_cost: float = LOADED_WEEKLY_COST
    maintenance_per_year: float = 0.0
    support_per_year: float = 0.0
    api_cost_per_year: float = 0.0
    run: Optional[RunEconomics] = None
    records_per_year: float = 0.0
    customers: float = 1.0
    deals_influenced: float = 0.0
    win_rate_lift: float = 0.0
    existing_customers: float = 0.0
    churn_reduction: float = 0.0
    expansion: float = 0.0
    years: float = HORIZON_YEARS
    roi_bar: float = ROI_BAR
    category: Optional[str] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"name: expected a non-empty string, got {self.name!r}")
        if self.per not in _PERIODS:
            raise ValueError(f"per: expected 'year' or 'month', got {self.per!r}")
        set_ = object.__setattr__  # frozen: normalise in place once
        set_(self, "contract_value", number("contract_value", self.contract_value, positive=True))
        for name in ("people", "weeks", "loaded_weekly_cost", "maintenance_per_year",
                     "support_per_year", "api_cost_per_year", "records_per_year", "customers",
                     "deals_influenced", "existing_customers", "expansion"):
            set_(self, name, number(name, getattr(self, name)))
        for name in ("win_rate_lift", "churn_reduction"):
            set_(self, name, number(name, getattr(self, name), maximum=1.0))
        set_(self, "years", number("years", self.years, positive=True))
        set_(self, "roi_bar", number("roi_bar", self.roi_bar, positive=True))
        if self.run is not None and not isinstance(self.run, RunEconomics):
            raise ValueError(f"run: expected a RunEconomics, got {type(self.run).__name__}")
        if self.run is not None and self.records_per_year == 0:
            raise ValueError("records_per_year: required (> 0) when a run prices the running cost")

    # -- cost -------------------------------------------------------------------------------

    @property
    def acv(self) -> float:
        """Annual contract value of one customer."""
        return self.contract_value * _PERIODS[self.per]

    @property
    def build_cost(self) -> float:
        return self.people * self.weeks * self.loaded_weekly_cost

    @property
    def running_cost_per_year(self) -> float:
        """API fees and infrastructure: the fixed figure plus the measured run, if any."""
        measured = self.run.yearly_cost(self.records_per_year) if self.run is not None else 0.0
        return self.api_cost_per_year + measured

    @property
    def yearly_cost(self) -> float:
        return self.maintenance_per_year + self.support_per_year + self.running_cost_per_year

    @property
    def cost(self) -> float:
        """Total cost over the horizon: build once, then `years` of yearly cost."""
        return self.build_cost + self.years * self.yearly_cost

    # -- value ------------------------------------------------------------------------------

    @property
    def yearly_value(self) -> float:
        won = self.customers + self.deals_influenced * self.win_rate_lift
        kept = self.existing_customers * (self.churn_reduction + self.expansion)
        return self.acv * (won + kept)

    @property
    def value(self) -> float:
        return self.years * self.yearly_value

    # -- verdict ----------------------------------------------------------------------------

    @property
    def roi(self) -> float:
        """Value divided by cost (a multiple; infinite when the integration costs nothing)."""
        return self.value / self.cost if self.cost else math.inf

    @property
    def payback_months(self) -> float:
        """Months until the value earned covers the build; infinite if it never does."""
        net_monthly = (self.yearly_value - self.yearly_cost) / 12
        if self.build_cost == 0:
            return 0.0
        return self.build_cost / net_monthly if net_monthly > 0 else math.inf

    @property
    def contract_share(self) -> float:
        """Cost as a share of one customer's contract value over the horizon (0.75 = 75%)."""
        return self.cost / (self.acv * self.years)

    @property
    def meets_bar(self) -> bool:
        return self.roi >= self.roi_bar

    def summary(self) -> dict[str, Any]:
        """The figures a decision needs, as a plain dict (one row of a DataFrame)."""
        return {
            "name": self.name,
            "acv": self.acv,
            "build_cost": self.build_cost,
            "yearly_cost": self.yearly_cost,
            "cost": self.cost,
            "value": self.value,
            "roi": self.roi,
            "payback_months": self.payback_months,
            "contract_share": self.contract_share,
            "meets_bar": self.meets_bar,
        }

    def __str__(self) -> str:
        verdict = "meets" if self.meets_bar else "misses"
        return (f"{self.name}: cost {money(self.cost)}, value {money(self.value)}, "
                f"ROI {multiple(self.roi)} ({verdict} the {self.roi_bar:g}x bar), "
                f"payback {months(self.payback_months)}, "
                f"{self.contract_share:.1%} of a {money(self.acv * self.years)} contract")

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.meets_bar else "#cf222e"
        verdict = "meets" if self.meets_bar else "misses"
        rows = [
            ("Contract value", f"{money(self.acv)} / year"),
            ("Build", f"{self.people:g} people × {self.weeks:g} weeks × "
                      f"{money(self.loaded_weekly_cost)} = {money(self.build_cost)}"),
            ("Yearly cost", money(self.yearly_cost)),
            (f"Cost over {self.years:g} year(s)", money(self.cost)),
            (f"Value over {self.years:g} year(s)", money(self.value)),
            ("ROI", f"<b style='color:{colour}'>{multiple(self.roi)}</b> "
                    f"({verdict} the {self.roi_bar:g}x bar)"),
            ("Payback", months(self.payback_months)),
            ("Share of contract value", f"{self.contract_share:.1%}"),
        ]
        body = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>"
                       for k, v in rows)
        return (f"<div><b>IntegrationCase: {html.escape(self.name)}</b>"
                f"<table>{body}</table></div>")

    def with_(self, **changes: Any) -> IntegrationCase:
        """A copy with some inputs changed: `case.with_(contract_value=96_000)`."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"{', '.join(sorted(unknown))}: not an IntegrationCase field")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return IntegrationCase(**values)
