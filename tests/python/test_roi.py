"""isthmus.roi: every expected figure below is worked out by hand in the comment beside it."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import isthmus.roi as roi
from isthmus.roi import IntegrationCase, Portfolio, RunEconomics

SAMPLE = Path(__file__).resolve().parents[2] / "notebooks" / "data" / "candidates.csv"


# -- IntegrationCase: the essay's worked example ----------------------------------------------

def small_deal() -> IntegrationCase:
    # $800/month, two people for two and a half weeks, at the default loaded cost.
    return IntegrationCase("CRM sync", contract_value=800, per="month", people=2, weeks=2.5)


def test_worked_example_small_contract_eats_three_quarters():
    case = small_deal()
    assert case.acv == 9_600                      # 800 * 12
    assert case.build_cost == 7_200               # 2 * 2.5 * 1,440
    assert case.cost == 7_200                     # no maintenance, support or API cost given
    assert case.value == 9_600                    # one customer, one year
    assert case.contract_share == pytest.approx(0.75)     # 7,200 / 9,600
    assert case.roi == pytest.approx(4 / 3)               # 9,600 / 7,200
    assert case.payback_months == pytest.approx(9.0)      # 7,200 / 800 a month
    assert not case.meets_bar


def test_worked_example_large_contract_is_worth_it():
    case = small_deal().with_(contract_value=8_000)       # $96,000 a year
    assert case.acv == 96_000
    assert case.cost == 7_200
    assert case.contract_share == pytest.approx(0.075)    # 7,200 / 96,000
    assert case.roi == pytest.approx(40 / 3)              # 96,000 / 7,200 = 13.3x
    assert case.payback_months == pytest.approx(0.9)      # 7,200 / 8,000 a month
    assert case.meets_bar


def test_three_weeks_is_more_than_three_quarters():
    # "two people two or three weeks ... 75% or more": three weeks is 8,640 = 90%.
    case = small_deal().with_(weeks=3)
    assert case.build_cost == 8_640
    assert case.contract_share == pytest.approx(0.9)


def test_yearly_contract_value_is_the_default_period():
    assert IntegrationCase("x", 9_600, people=2, weeks=2.5).acv == 9_600


# -- IntegrationCase: every term of the model ---------------------------------------------

def full_case(**changes) -> IntegrationCase:
    inputs = dict(
        name="Full", contract_value=1_000, per="month", people=3, weeks=4,
        loaded_weekly_cost=2_000, maintenance_per_year=6_000, support_per_year=3_000,
        api_cost_per_year=1_000, customers=2, deals_influenced=10, win_rate_lift=0.2,
        existing_customers=20, churn_reduction=0.05, expansion=0.1, years=2)
    inputs.update(changes)
    return IntegrationCase(**inputs)


def test_every_cost_term():
    case = full_case()
    assert case.build_cost == 24_000              # 3 * 4 * 2,000
    assert case.yearly_cost == 10_000             # 6,000 + 3,000 + 1,000
    assert case.cost == 44_000                    # 24,000 + 2 years * 10,000


def test_every_value_term():
    case = full_case()
    # 12,000 ACV * (2 won + 10 * 0.2 extra wins + 20 * (0.05 kept + 0.1 expanded)) = 12,000 * 7
    assert case.yearly_value == pytest.approx(84_000)
    assert case.value == pytest.approx(168_000)   # two years


def test_verdict_figures():
    case = full_case()
    assert case.roi == pytest.approx(168_000 / 44_000)            # 3.818x
    assert case.payback_months == pytest.approx(24_000 * 12 / 74_000)  # build / (84k - 10k)/12
    assert case.contract_share == pytest.approx(44_000 / 24_000)  # cost / (12,000 * 2 years)
    assert not case.meets_bar
    assert full_case(roi_bar=3.5).meets_bar


def test_payback_never_when_running_costs_exceed_value():
    case = IntegrationCase("loss", 1_000, people=1, weeks=1, maintenance_per_year=2_000)
    assert case.payback_months == math.inf


def test_free_integration_has_infinite_roi():
    case = IntegrationCase("free", 1_000, people=0, weeks=0)
    assert case.roi == math.inf
    assert case.payback_months == 0
    assert case.meets_bar


def test_summary_is_one_flat_row():
    row = small_deal().summary()
    assert row["name"] == "CRM sync"
    assert row["cost"] == 7_200 and row["value"] == 9_600
    assert pd.DataFrame([row]).shape == (1, len(row))


def test_str_states_the_verdict():
    text = str(small_deal())
    assert "$7,200" in text and "1.3x" in text and "misses the 10x bar" in text
    assert "75.0%" in text


def test_case_html_repr():
    page = small_deal().with_(name="<CRM & co>")._repr_html_()
    assert "&lt;CRM &amp; co&gt;" in page       # names are escaped
    assert "$7,200" in page and "1.3x" in page and "75.0%" in page


# -- IntegrationCase: bad input names the field ---------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("contract_value", 0),
    ("contract_value", -5),
    ("people", -1),
    ("weeks", -0.5),
    ("loaded_weekly_cost", -1),
    ("maintenance_per_year", -100),
    ("support_per_year", -1),
    ("api_cost_per_year", -1),
    ("customers", -1),
    ("win_rate_lift", 1.5),
    ("churn_reduction", -0.1),
    ("years", 0),
    ("roi_bar", 0),
    ("weeks", float("nan")),
    ("people", "two"),
])
def test_bad_case_input_names_the_field(field, value):
    inputs = dict(name="x", contract_value=9_600, people=2, weeks=2.5)
    inputs[field] = value
    with pytest.raises(ValueError, match=f"^{field}:"):
        IntegrationCase(**inputs)


def test_bad_period_and_name():
    with pytest.raises(ValueError, match="^per:"):
        IntegrationCase("x", 800, people=1, weeks=1, per="week")
    with pytest.raises(ValueError, match="^name:"):
        IntegrationCase("", 800, people=1, weeks=1)
    with pytest.raises(ValueError, match="colour"):
        small_deal().with_(colour="red")


# -- RunEconomics ---------------------------------------------------------------------------

SUMMARY = {"records_written": 50_000, "requests": 600, "responses_429": 30,
           "wait_seconds": 120, "duration_seconds": 600, "quota": 1_000,
           "dead_lettered": 3}  # extra keys a pipeline summary carries are ignored


def measured_run() -> RunEconomics:
    return RunEconomics.from_summary(SUMMARY, cost_per_request=0.002, cost_per_hour=1.8)


def test_run_economics_rates():
    run = measured_run()
    assert run.cost == pytest.approx(1.5)                     # 600 * 0.002 + 1/6 h * 1.8
    assert run.cost_per_1000_records == pytest.approx(0.03)   # 1.5 / 50,000 * 1,000
    assert run.requests_per_1000_records == pytest.approx(12)  # 600 / 50
    assert run.responses_429_per_1000_records == pytest.approx(0.6)  # 30 / 50
    assert run.quota_used == pytest.approx(0.6)               # 600 / 1,000
    assert run.waiting_share == pytest.approx(0.2)            # 120 / 600
    assert run.yearly_cost(10_000_000) == pytest.approx(300)  # 0.03 * 10,000


def test_run_without_quota_or_prices():
    run = RunEconomics(records_written=1_000, requests=10)
    assert math.isnan(run.quota_used)
    assert run.cost == 0 and run.waiting_share == 0


def test_run_feeds_the_running_cost_of_a_case():
    case = small_deal().with_(run=measured_run(), records_per_year=10_000_000,
                              api_cost_per_year=200)
    assert case.running_cost_per_year == pytest.approx(500)   # 200 fixed + 300 measured
    assert case.cost == pytest.approx(7_700)


def test_run_requires_records_per_year():
    with pytest.raises(ValueError, match="^records_per_year:"):
        small_deal().with_(run=measured_run())


@pytest.mark.parametrize("key", ["records_written", "requests", "responses_429",
                                 "wait_seconds", "duration_seconds"])
def test_summary_missing_key_is_named(key):
    summary = {k: v for k, v in SUMMARY.items() if k != key}
    with pytest.raises(ValueError, match=key):
        RunEconomics.from_summary(summary)


@pytest.mark.parametrize("changes, field", [
    ({"records_written": 0}, "records_written"),
    ({"requests": -1}, "requests"),
    ({"responses_429": 700}, "responses_429"),
    ({"wait_seconds": 601}, "wait_seconds"),
    ({"quota": 0}, "quota"),
])
def test_bad_run_names_the_field(changes, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        RunEconomics.from_summary({**SUMMARY, **changes})


# -- Portfolio ------------------------------------------------------------------------------

def candidates() -> pd.DataFrame:
    # At $1,000 a person-week, 10% win-rate lift, maintenance 20% of build a year:
    #   E: value 50,000 * (3 + 10 * 0.1) = 200,000  cost 20,000 * 1.2 = 24,000  roi  8.33
    #   A: value 10,000 * (10 + 20 * 0.1) = 120,000  cost 10,000 * 1.2 = 12,000  roi 10.00
    #   B: value 20,000 * 5              = 100,000  cost  5,000 * 1.2 =  6,000  roi 16.67
    #   D: value  9,600 * 2              =  19,200  cost  4,000 * 1.2 =  4,800  roi  4.00
    #   C: value  9,600 * 1              =   9,600  cost  5,000 * 1.2 =  6,000  roi  1.60
    return pd.DataFrame({
        "name": ["A", "B", "C", "D", "E"],
        "category": ["CRM", "CRM", "help desk", "billing", "ERP"],
        "customers_asking": [10, 5, 1, 2, 3],
        "acv": [10_000, 20_000, 9_600, 9_600, 50_000],
        "deals_influenced": [20, 0, 0, 0, 10],
        "effort_weeks": [10, 5, 5, 4, 20],
        "partner_willing": ["no", "yes", "yes", "no", False],
    })


def portfolio(df: pd.DataFrame | None = None, **assumptions) -> Portfolio:
    return Portfolio.from_frame(candidates() if df is None else df,
                                loaded_weekly_cost=1_000, **assumptions)


def test_portfolio_ranks_by_value():
    f = portfolio().frame
    assert list(f["name"]) == ["E", "A", "B", "D", "C"]
    assert list(f.index) == [1, 2, 3, 4, 5]
    assert list(f["value"]) == pytest.approx([200_000, 120_000, 100_000, 19_200, 9_600])
    assert list(f["cost"]) == pytest.approx([24_000, 12_000, 6_000, 4_800, 6_000])
    assert list(f["roi"]) == pytest.approx([200 / 24, 10, 100 / 6, 4, 1.6])
    assert f["value_share_cumulative"].iloc[0] == pytest.approx(200_000 / 448_800)
    assert f["value_share_cumulative"].iloc[-1] == pytest.approx(1.0)


def test_portfolio_tiers():
    p = portfolio()
    tiers = dict(zip(p.frame["name"], p.frame["tier"]))
    assert tiers == {
        "E": roi.ECOSYSTEM_IMPERATIVE,   # top 20% of 5 by value, even below the bar
        "A": roi.CATEGORY_TEMPLATE,      # exactly 10x clears the bar
        "B": roi.CATEGORY_TEMPLATE,
        "D": roi.PARTNER_BUILT,          # 4x, no partner yet
        "C": roi.PARTNER_BUILT,          # 1.6x, partner willing
    }
    actions = dict(zip(p.frame["name"], p.frame["action"]))
    assert actions["A"] == "build from the CRM template"
    assert actions["D"].startswith("recruit a partner")
    assert actions["C"].startswith("enable the partner")
    assert p.tier("E") == roi.ECOSYSTEM_IMPERATIVE
    assert list(p.tier_counts()) == [1, 2, 2]
    by_tier = p.by_tier()
    assert by_tier.loc[roi.PARTNER_BUILT, "value"] == pytest.approx(28_800)


def test_portfolio_assumptions_are_parameters():
    p = portfolio(roi_bar=20, top_share=0.4, win_rate_lift=0)
    tiers = dict(zip(p.frame["name"], p.frame["tier"]))
    # Without win-rate lift, E is 150,000 and A 100,000 (A before B by name); top 2 deep.
    assert list(p.frame["name"][:3]) == ["E", "A", "B"]
    assert tiers["E"] == tiers["A"] == roi.ECOSYSTEM_IMPERATIVE
    assert tiers["B"] == roi.PARTNER_BUILT                    # 16.7x misses a 20x bar


def test_optional_columns_override_per_row():
    df = candidates().assign(maintenance_per_year=[0, None, None, None, None])
    assert portfolio(df)["A"].cost == 10_000                  # no maintenance for A
    assert portfolio(df)["B"].cost == 6_000                   # blank: 20% of build


def test_portfolio_access():
    p = portfolio()
    assert len(p) == 5
    assert [c.name for c in p] == ["E", "A", "B", "D", "C"]
    assert isinstance(p["A"], IntegrationCase) and p["A"].category == "CRM"
    with pytest.raises(KeyError):
        p.tier("nope")
    assert repr(p) == ("<Portfolio 5 candidates: ecosystem-imperative=1, "
                       "category-template=2, partner-built=2>")


def test_portfolio_html_repr():
    page = portfolio()._repr_html_()
    assert "5 candidates" in page and "ecosystem-imperative" in page
    assert "$200,000" in page and "10.0x" in page


def test_from_csv(tmp_path):
    path = tmp_path / "c.csv"
    candidates().to_csv(path, index=False)
    p = Portfolio.from_csv(path, loaded_weekly_cost=1_000)
    assert list(p.frame["name"]) == ["E", "A", "B", "D", "C"]


def test_sample_candidates_cover_every_tier():
    p = Portfolio.from_csv(SAMPLE)
    assert len(p) >= 20
    counts = p.tier_counts()
    assert counts[roi.ECOSYSTEM_IMPERATIVE] == int(len(p) * roi.TOP_SHARE)
    assert (counts > 0).all()


# -- Portfolio: bad input names the column --------------------------------------------------

@pytest.mark.parametrize("column", roi.REQUIRED_COLUMNS)
def test_missing_column_is_named(column):
    with pytest.raises(ValueError, match=f"missing column\\(s\\) {column}"):
        portfolio(candidates().drop(columns=[column]))


@pytest.mark.parametrize("column, value", [
    ("acv", 0),
    ("acv", -9_600),
    ("acv", "lots"),
    ("effort_weeks", -2),
    ("customers_asking", -1),
    ("deals_influenced", None),
    ("partner_willing", "maybe"),
])
def test_bad_cell_names_column_and_candidate(column, value):
    df = candidates().astype({column: object})
    df.loc[1, column] = value
    with pytest.raises(ValueError, match=f"^{column}: row 'B'"):
        portfolio(df)


def test_bad_optional_cell_names_the_column():
    df = candidates().assign(support_per_year=[0, -1, 0, 0, 0])
    with pytest.raises(ValueError, match="^support_per_year: row 'B'"):
        portfolio(df)


def test_duplicate_and_empty_portfolios():
    df = candidates()
    df.loc[1, "name"] = "A"
    with pytest.raises(ValueError, match="^name: duplicate candidate\\(s\\) A"):
        portfolio(df)
    with pytest.raises(ValueError, match="no rows"):
        portfolio(candidates().iloc[0:0])
    with pytest.raises(ValueError, match="DataFrame"):
        Portfolio.from_frame([{"name": "A"}])


# -- plots ----------------------------------------------------------------------------------

@pytest.fixture
def pyplot():
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def test_roi_chart_draws_the_bar(pyplot):
    ax = portfolio().plot_roi()
    assert len(ax.patches) == 5
    bar_line = ax.get_lines()[0]
    assert list(bar_line.get_xdata()) == [10, 10]
    assert ax.get_xscale() == "log"


def test_pareto_and_contract_share_charts(pyplot):
    p = portfolio()
    ax = p.plot_pareto()
    assert [round(b.get_height()) for b in ax.patches] == [200_000, 120_000, 100_000,
                                                            19_200, 9_600]
    ax = p.plot_contract_share()
    widths = sorted(round(b.get_width(), 1) for b in ax.patches)
    assert widths == sorted(round(c.contract_share * 100, 1) for c in p)


def test_charts_take_a_list_of_cases(pyplot):
    from isthmus.roi import plots

    ax = plots.contract_share_chart([small_deal(), small_deal().with_(name="big",
                                                                      contract_value=8_000)])
    assert sorted(round(b.get_width(), 1) for b in ax.patches) == [7.5, 75.0]
    with pytest.raises(ValueError, match="cases"):
        plots.roi_chart([])


# -- the module's surface -------------------------------------------------------------------

def test_exported_members():
    public = {name for name in vars(roi) if not name.startswith("_")}
    submodules = {"case", "economics", "portfolio", "plots"}
    assert set(roi.__all__) == public - submodules
    assert len(roi.__all__) == len(set(roi.__all__))


def test_import_does_not_load_matplotlib():
    code = "import sys, isthmus.roi; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- RunEconomics.from_run: a real pipeline run, checked against the sandboxes' own counts ----

def test_from_run_matches_what_the_sandboxes_saw(tmp_path):
    import isthmus

    # A source that allows 5 requests a second, one at a time, and a client that paces itself
    # at 50 a second (so it does not wait on the source's X-RateLimit-Remaining: 0): the run
    # meets some 429s.
    with isthmus.Sandbox(records=300, rate_limit=5, burst=1) as src, isthmus.Sandbox() as dst, \
            isthmus.Client(src.url, rate_limit=isthmus.RateLimit(50, burst=1)) as crm, \
            isthmus.Client(dst.url) as ours:
        stream = isthmus.Stream(crm, "/v1/contacts", paginator=isthmus.CursorPaginator(),
                                params={"limit": 100})
        pipeline = isthmus.Pipeline(stream, map=lambda r: {"id": r["id"], "email": r["email"]},
                                    sink=isthmus.HttpSink(ours, "/v1/contacts/batch", batch_size=100),
                                    state=str(tmp_path / "state.db"))
        run = pipeline.run()
        sent = src.stats()["requests"]["total"] + dst.stats()["requests"]["total"]
        refused = src.stats()["rate_limited"] + dst.stats()["rate_limited"]
        landed = dst.stats()["records_received"]["contacts"]["unique"]

    econ = RunEconomics.from_run(run, cost_per_request=0.002, cost_per_hour=3.6, quota=10_000)
    summary = run.summary()
    assert econ.records_written == landed == 300
    assert econ.requests == sent                      # source pages + sink batches, retries included
    assert econ.responses_429 == refused
    assert refused >= 1                               # burst 1 at 5/s: the second page is refused
    assert econ.duration_seconds == pytest.approx(summary["duration_s"])
    assert econ.requests_per_1000_records == pytest.approx(sent / 300 * 1000)
    assert econ.responses_429_per_1000_records == pytest.approx(refused / 300 * 1000)
    assert econ.quota_used == pytest.approx(sent / 10_000)
    # $0.002 a call, $3.60 an hour = $0.001 a second
    expected = sent * 0.002 + summary["duration_s"] * 0.001
    assert econ.cost == pytest.approx(expected)
    assert econ.cost_per_1000_records == pytest.approx(expected / 300 * 1000)
    # Each 429 carried Retry-After: 1, and the run waited at least that long before retrying.
    assert summary["wait_seconds"] >= refused * 1.0
    assert econ.wait_seconds == pytest.approx(min(summary["wait_seconds"], summary["duration_s"]))
    assert RunEconomics.from_run(run, wait_seconds=0.5).waiting_share == pytest.approx(
        0.5 / summary["duration_s"])

    case = IntegrationCase("CRM sync", contract_value=96_000, people=2, weeks=2.5,
                           run=econ, records_per_year=1_000_000)
    assert case.running_cost_per_year == pytest.approx(econ.cost_per_1000_records * 1_000)


def test_from_run_refuses_what_is_not_a_run():
    with pytest.raises(ValueError, match="run: expected a finished isthmus.Run"):
        RunEconomics.from_run({"written": 10})
