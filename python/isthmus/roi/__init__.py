"""isthmus.roi: the unit economics of integrations, for deciding which ones to build.

- `IntegrationCase`: one integration's cost, value, ROI multiple, payback and the share of a
  contract it consumes, against the 10x ROI bar.
- `Portfolio`: candidate integrations ranked by value and tiered: ecosystem-imperative
  (build deep), category-template (build from a template), partner-built (enable the partner).
- `RunEconomics`: what a finished run cost per 1,000 records; an input of `IntegrationCase`.
- `isthmus.roi.plots`: charts (needs matplotlib: ``pip install isthmus[notebook]``).

The defaults are named constants here, so an analysis can state the assumptions it used.
"""


from isthmus.roi.case import HORIZON_YEARS, LOADED_WEEKLY_COST, ROI_BAR, IntegrationCase
from isthmus.roi.economics import RunEconomics
from isthmus.roi.portfolio import (
    CATEGORY_TEMPLATE,
    ECOSYSTEM_IMPERATIVE,
    MAINTENANCE_SHARE,
    OPTIONAL_COLUMNS,
    PARTNER_BUILT,
    REQUIRED_COLUMNS,
    TIERS,
    TOP_SHARE,
    WIN_RATE_LIFT,
    Portfolio,
)

__all__ = [
    "CATEGORY_TEMPLATE",
    "ECOSYSTEM_IMPERATIVE",
    "HORIZON_YEARS",
    "LOADED_WEEKLY_COST",
    "MAINTENANCE_SHARE",
    "OPTIONAL_COLUMNS",
    "PARTNER_BUILT",
    "REQUIRED_COLUMNS",
    "ROI_BAR",
    "TIERS",
    "TOP_SHARE",
    "WIN_RATE_LIFT",
    "IntegrationCase",
    "Portfolio",
    "RunEconomics",
]
