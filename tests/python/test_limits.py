"""The governor against the sandbox: counted by the sandbox, never by sleeping and hoping.

Every assertion about time uses the arrival times the sandbox recorded, so a slow machine
can only make a test slower, not flaky.
"""

from __future__ import annotations

import asyncio
import calendar
import math
import threading
import time

import pytest

import isthmus
from isthmus import _core


def arrivals(api, endpoint=None):
    # The sandbox records a call when it answers; order by arrival time.
    out = sorted(api.stats()["arrivals"], key=lambda a: a["t"])
    return [a for a in out if endpoint is None or a["endpoint"] == endpoint]


def get_many_together(clients, path, n, concurrency):
    """Each client's get_many of `n` calls to `path`, all clients at once (a thread each); the
    clients are closed after. Returns the status codes, per client."""
    results: list[list[int]] = [[] for _ in clients]

    def run(i):
        results[i] = [r.status_code for r in clients[i].get_many([path] * n, concurrency=concurrency)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    return results


# --- configuration --------------------------------------------------------------------------

@pytest.mark.parametrize("make, field", [
    (lambda: isthmus.RateLimit(0), "rate"),
    (lambda: isthmus.RateLimit(-5), "rate"),
    (lambda: isthmus.RateLimit(float("nan")), "rate"),
    (lambda: isthmus.RateLimit(10, per="fortnight"), "per"),
    (lambda: isthmus.RateLimit(10, per=0), "per"),
    (lambda: isthmus.RateLimit(10, burst=0.5), "burst"),
    (lambda: isthmus.RateLimit(10, scope=["planet"]), "scope"),
    (lambda: isthmus.Quota(0), "n"),
    (lambda: isthmus.Quota(10, per="week"), "per"),
    (lambda: isthmus.Concurrency(0), "n"),
    (lambda: isthmus.Concurrency(2.5), "n"),
    (lambda: isthmus.Adaptive(min=10, max=5), "max"),
    (lambda: isthmus.Adaptive(min=0, max=5), "min"),
    (lambda: isthmus.Adaptive(min=1, max=5, on="speed"), "on"),
    (lambda: isthmus.Retry(attempts=0), "attempts"),
    (lambda: isthmus.Retry(base=-1), "base"),
    (lambda: isthmus.Retry(cap=0.01, base=1), "cap"),
    (lambda: isthmus.Retry(retry_on=[700]), "retry_on"),
    (lambda: isthmus.Retry(circuit_breaker={"ratio": 1}), "circuit_breaker"),
    (lambda: isthmus.Limiter(isthmus.RateLimit(1), costs={"/v1/search": 0}), "costs"),
    (lambda: isthmus.Client("http://127.0.0.1:1", rate_limit="fast"), "rate_limit"),
    (lambda: isthmus.Client("http://127.0.0.1:1", retry="yes"), "retry"),
])
def test_bad_values_name_the_field(make, field):
    with pytest.raises(ValueError, match=field) as info:
        make()
    assert isinstance(info.value, isthmus.ConfigError)


def test_limits_combine_with_and_or_a_list():
    combined = isthmus.RateLimit(10) & isthmus.Quota(10_000, per="day") & isthmus.Concurrency(8)
    assert len(combined) == 3
    assert isthmus.Limiter([isthmus.RateLimit(10), isthmus.Concurrency(8)]).limits.rules == (
        isthmus.RateLimit(10), isthmus.Concurrency(8))
    assert "Quota(10000, per='day')" in repr(combined)
    assert isthmus.RateLimit(5, per="minutes").per == 60


def test_reserve_returns_the_wait_and_never_sleeps():
    limiter = isthmus.Limiter(isthmus.RateLimit(10, burst=2))
    started = time.monotonic()
    waits = [limiter.reserve() for _ in range(5)]
    assert time.monotonic() - started < 0.5  # five reservations, no sleeping
    assert waits[:1] == [0.0]
    assert waits[2:] == sorted(waits[2:]) and waits[-1] > 0.25


def test_reserve_refuses_what_would_wait_too_long():
    limiter = isthmus.Limiter(isthmus.RateLimit(1, per="hour"), max_wait=60)
    assert limiter.reserve() == 0.0
    with pytest.raises(isthmus.Throttled):
        limiter.reserve()


def test_retry_after_parser_is_robust():
    now = 1_700_000_000.0
    assert _core.parse_retry_after("2", now) == 2.0
    assert _core.parse_retry_after("Tue, 14 Nov 2023 22:13:30 GMT", now) == pytest.approx(10.0)
    for bad in ["-1", "soon", "", "1e9", "Tue, 99 Nov 2023 22:13:30 GMT"]:
        assert _core.parse_retry_after(bad, now) is None


def test_absurd_server_waits_are_bounded_and_counted():
    limiter = isthmus.Limiter(isthmus.RateLimit(10), max_server_wait=30)
    key = {"provider": "api.example.com"}
    limiter._core.observe(key, 429, retry_after=5 * 365 * 86400.0)  # years ahead
    snap = limiter.snapshot()["api.example.com///"]
    assert snap["server_waits_clamped"] == 1
    assert 29 < snap["paused_for"] <= 30


# --- acceptance: counted by the sandbox ------------------------------------------------------

def test_pacing_at_the_published_limit_means_zero_429s():
    # The API publishes 100/s and, like real ones, tolerates the jitter of a network (here a
    # burst of 20); the client paces at 100/s with a burst of 10, so a stall of the machine
    # (a late arrival makes the next ones look early) does not turn into a 429.
    with isthmus.Sandbox(rate_limit=100, burst=20, records=100) as api:
        with isthmus.Client(api.url, rate_limit=isthmus.RateLimit(100, burst=10)) as client:
            responses = client.get_many(["/v1/contacts?limit=1"] * 2000, concurrency=32)
        stats = api.stats()
        got = arrivals(api, "GET /v1/contacts")
    assert [r.status_code for r in responses].count(200) == 2000
    assert stats["rate_limited"] == 0
    assert len(got) == 2000
    # Never faster than asked: 2000 calls at 100/s with a burst of 10 need at least 19.9 s.
    assert got[-1]["t"] - got[0]["t"] > 19.8
    snap = client.limits_snapshot()
    (key_stats,) = snap.values()
    assert key_stats["granted"] == 2000 and key_stats["status_429"] == 0 and key_stats["waited"] > 1900


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_after_a_429_nothing_for_that_key_arrives_before_retry_after(form):
    # 0.5/s with a burst of 1: a second call at once is told Retry-After: 2.
    with isthmus.Sandbox(rate_limit=0.5, burst=1, retry_after=form) as api:
        # A pace of its own far above the server's, so only the server's 429 holds it back.
        limiter = isthmus.Limiter(isthmus.RateLimit(1000, burst=10))
        with isthmus.Client(api.url, rate_limit=limiter, retry=isthmus.Retry(attempts=3, base=0.01)) as a, \
                isthmus.Client(api.url, rate_limit=limiter) as b:
            assert a.get("/v1/contacts").status_code == 200
            assert a.get("/v1/contacts").status_code == 200   # after a 429 and a wait
            assert b.get("/v1/companies").status_code in (200, 429)
        got = arrivals(api)
    assert [x["status"] for x in got[:2]] == [200, 429]
    told = 2.0
    first_429 = got[1]["t"]
    # The retry and the other client's call both held back for the whole key.
    assert all(x["t"] >= first_429 + told - 0.002 for x in got[2:]), got
    assert a.limits_snapshot()[f"127.0.0.1:{api.port}///"]["status_429"] >= 1


def test_without_a_pace_of_its_own_remaining_zero_pauses_the_key():
    with isthmus.Sandbox(rate_limit=0.5, burst=1) as api:
        with isthmus.Client(api.url, retry=isthmus.Retry(attempts=3)) as client:
            assert client.get("/v1/contacts").status_code == 200  # says Remaining: 0, Reset: 2
            assert client.get("/v1/contacts").status_code == 200
        got = arrivals(api)
    assert api.stats()["rate_limited"] == 0
    assert got[1]["t"] - got[0]["t"] >= 2.0 - 0.002


def test_three_clients_sharing_one_limiter_never_exceed_it():
    with isthmus.Sandbox(rate_limit=50, burst=5) as api:
        shared = isthmus.Limiter(isthmus.RateLimit(50, burst=5))
        clients = [isthmus.Client(api.url, rate_limit=shared) for _ in range(3)]
        results = get_many_together(clients, "/v1/deals?limit=1", 100, concurrency=8)
        stats = api.stats()
        got = arrivals(api)
    assert sum(r.count(200) for r in results) == 300
    assert stats["rate_limited"] == 0
    assert got[-1]["t"] - got[0]["t"] >= (300 - 5) / 50 - 0.01


def test_a_daily_quota_stops_at_the_quota_and_says_when_it_resets():
    with isthmus.Sandbox(daily_quota=1000) as api:
        with isthmus.Client(api.url, rate_limit=isthmus.Quota(5, per="day")) as client:
            for _ in range(5):
                assert client.get("/v1/contacts").status_code == 200
            with pytest.raises(isthmus.QuotaExhausted) as info:
                client.get("/v1/contacts")
        received = len(arrivals(api))
    err = info.value
    assert received == 5
    midnight = calendar.timegm(time.gmtime()[:3] + (0, 0, 0)) + 86400
    assert err.resets_at == pytest.approx(midnight, abs=1)
    assert 0 < err.retry_after <= 86400
    assert "resets at" in str(err) and "quota" in str(err)


def test_high_priority_goes_ahead_of_waiting_bulk():
    async def main(url):
        async with isthmus.AsyncClient(url, rate_limit=isthmus.RateLimit(10, burst=1)) as client:
            bulk = [asyncio.ensure_future(client.get("/v1/contacts", priority="low")) for _ in range(5)]
            await asyncio.sleep(0)
            urgent = asyncio.ensure_future(client.get("/v1/companies", priority="high"))
            await asyncio.gather(urgent, *bulk)

    with isthmus.Sandbox() as api:
        asyncio.run(main(api.url))
        order = [a["endpoint"] for a in arrivals(api)]
    # The first bulk call went at once; the urgent one overtook the four still waiting.
    assert order[:2] == ["GET /v1/contacts", "GET /v1/companies"]


def test_post_is_retried_only_with_an_idempotency_key():
    faults = {"POST /v1/contacts": {"error_rate": {"503": 1.0}}}
    with isthmus.Sandbox(faults=faults) as api:
        with isthmus.Client(api.url, retry=isthmus.Retry(attempts=3, base=0.001, circuit_breaker=False)) as c:
            unsafe = c.post("/v1/contacts", json={"id": "x"})
            assert (unsafe.status_code, unsafe.attempts) == (503, 1)
            assert len(arrivals(api)) == 1
            keyed = c.post("/v1/contacts", json={"id": "x"}, headers={"Idempotency-Key": "k1"})
            assert (keyed.status_code, keyed.attempts) == (503, 3)  # the answer says what it took
            assert len(arrivals(api)) == 4
            assert c.limits_snapshot()[f"127.0.0.1:{api.port}///"]["retries"] == 2


def test_circuit_opens_after_failures_and_stops_sending():
    faults = {"*": {"error_rate": {"500": 1.0}}}
    breaker = {"min_calls": 5, "failure_ratio": 0.5, "open_for": 60}
    with isthmus.Sandbox(faults=faults) as api:
        with isthmus.Client(api.url, retry=isthmus.Retry(attempts=1, circuit_breaker=breaker)) as c:
            for _ in range(5):
                assert c.get("/v1/contacts").status_code == 500
            with pytest.raises(isthmus.CircuitOpen) as info:
                c.get("/v1/contacts")
        assert len(arrivals(api)) == 5
    assert isinstance(info.value, ConnectionError)


def test_adaptive_limit_backs_off_on_server_errors():
    with isthmus.Sandbox(overload_capacity=50, overload_behavior="errors") as api:
        with isthmus.Client(api.url, rate_limit=isthmus.Adaptive(min=5, max=1000, start=400)) as c:
            c.get_many(["/v1/contacts?limit=1"] * 300, concurrency=16, return_exceptions=True)
            (snap,) = c.limits_snapshot().values()
    assert snap["status_5xx"] > 0
    assert 5 <= snap["adaptive_limit"] < 400


def test_limiter_state_renders_in_notebooks():
    limiter = isthmus.Limiter(isthmus.RateLimit(10) & isthmus.Concurrency(2))
    limiter.reserve(key={"provider": "crm"})
    html = limiter._repr_html_()
    assert "crm///" in html and "<table>" in html
    assert math.isinf(isthmus.Limiter(isthmus.Concurrency(1)).reserve()) is False


# --- the server's headers pace a client that has no limit of its own ------------------------

def test_remaining_zero_with_a_policy_paces_by_the_refill_not_the_reset(tmp_path):
    # 40/s with a burst of 5: once the burst is spent a slot frees every 25 ms. A client told
    # nothing must follow that, not stop for a Reset rounded up to whole seconds.
    with isthmus.Sandbox(rate_limit=40, burst=5, records=200) as api, isthmus.Client(api.url) as client:
        stream = isthmus.Stream(client, "/v1/contacts", paginator=isthmus.CursorPaginator(),
                                params={"limit": 1})
        out: list = []
        run = isthmus.Pipeline(stream, sink=isthmus.CallableSink(out.extend),
                               state=str(tmp_path / "paced.db")).run()
        stats = api.stats()
        got = arrivals(api, "GET /v1/contacts")
    assert len(out) == 200
    assert stats["rate_limited"] == 0 and run.summary()["status_429"] == 0
    # The governor's own account: 200 pages at 40/s after a burst of 5 hold back ~4.9 s in all.
    ideal = (len(got) - 5) / 40
    assert run.summary()["wait_seconds"] < 2 * ideal
    assert got[-1]["t"] - got[0]["t"] < 2 * ideal


def test_concurrent_calls_told_nothing_follow_the_servers_pace():
    with isthmus.Sandbox(rate_limit=40, burst=5) as api:
        with isthmus.Client(api.url, retry=isthmus.Retry(attempts=5)) as client:
            responses = client.get_many(["/v1/contacts?limit=1"] * 200, concurrency=8)
        stats = api.stats()
        got = arrivals(api, "GET /v1/contacts")
    assert [r.status_code for r in responses].count(200) == 200
    # The first calls go before the server has said anything: only that first wave may be refused.
    assert stats["rate_limited"] <= 8
    assert got[-1]["t"] - got[0]["t"] < 2 * (200 - 5) / 40


# --- one RateLimit is one allowance ----------------------------------------------------------

def test_one_rate_limit_given_to_two_clients_is_one_allowance():
    limit = isthmus.RateLimit(20, burst=1)
    with isthmus.Sandbox() as api:
        a, b = isthmus.Client(api.url, rate_limit=limit), isthmus.Client(api.url, rate_limit=limit)
        assert a.limiter is b.limiter
        results: dict[str, list[int]] = {}

        def run(name, client):
            results[name] = [r.status_code for r in client.get_many(["/v1/deals?limit=1"] * 40, concurrency=4)]

        threads = [threading.Thread(target=run, args=(n, c)) for n, c in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        a.close()
        b.close()
        times = [x["t"] for x in arrivals(api, "GET /v1/deals")]
    assert results["a"].count(200) == 40 and results["b"].count(200) == 40
    # No window of one second holds more than the one allowance: 20 + the burst.
    most = max(sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times))
    assert most <= 20 + 1


def test_a_rate_limit_shared_and_combined_anew_is_refused_with_a_way_out():
    limit = isthmus.RateLimit(20)
    with isthmus.Client("http://127.0.0.1:1", rate_limit=limit):
        with pytest.raises(isthmus.ConfigError, match="Limiter"):
            isthmus.Client("http://127.0.0.1:1", rate_limit=limit & isthmus.Concurrency(2))
    # Equal limits built separately stay separate allowances, as written.
    one = isthmus.Client("http://127.0.0.1:1", rate_limit=isthmus.RateLimit(5))
    two = isthmus.Client("http://127.0.0.1:1", rate_limit=isthmus.RateLimit(5))
    assert one.limiter is not two.limiter
    one.close()
    two.close()


# --- the adaptive limit against a real leaky bucket -------------------------------------------


# --- fair share between tenants ----------------------------------------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda: isthmus.Limiter(isthmus.RateLimit(10), shares={"acme": {"weight": 0}}), r"shares\['acme'\]\.weight"),
    (lambda: isthmus.Limiter(isthmus.RateLimit(10), shares={"acme": {"weight": -2}}), r"shares\['acme'\]\.weight"),
    (lambda: isthmus.Limiter(isthmus.RateLimit(10), shares={"acme": {"weight": "2"}}), r"shares\['acme'\]\.weight"),
    (lambda: isthmus.Limiter(isthmus.RateLimit(10), shares={"acme": {"wieght": 2}}), r"shares\['acme'\].*wieght"),
    (lambda: isthmus.Limiter(isthmus.RateLimit(10), shares={"acme": {"limit": isthmus.Quota(5)}}),
     r"shares\['acme'\]\.limit"),
    (lambda: isthmus.Limiter(isthmus.RateLimit(10), shares={"acme": 2}), r"shares\['acme'\]"),
    (lambda: isthmus.Limiter(isthmus.RateLimit(10), shares={"": isthmus.Share()}), "shares"),
    (lambda: isthmus.Limiter(isthmus.RateLimit(10), shares=[("acme", 2)]), "shares"),
    (lambda: isthmus.Limiter(isthmus.RateLimit(10)).set_share("acme", weight=float("nan")),
     r"shares\['acme'\]\.weight"),
    (lambda: isthmus.Limiter(isthmus.RateLimit(10)).set_share("acme", limit=isthmus.Adaptive(1, 5)),
     r"shares\['acme'\]\.limit"),
    (lambda: isthmus.Share(weight=0), "weight"),
    (lambda: isthmus.Share(limit=isthmus.RateLimit(5, scope=["provider"])), "limit"),
])
def test_bad_shares_name_the_tenant_and_the_field(make, message):
    with pytest.raises(isthmus.ConfigError, match=message):
        make()


def test_shares_are_set_changed_and_counted_per_tenant():
    limiter = isthmus.Limiter(isthmus.RateLimit(1000, burst=100),
                              shares={"acme": isthmus.Share(weight=2, limit=isthmus.Concurrency(4))})
    assert repr(isthmus.Share(2, isthmus.RateLimit(10))) == (
        "Share(weight=2, limit=RateLimit(10, per='second', burst=1))")
    for tenant in ("acme", "acme", "big"):
        assert limiter.reserve(key={"tenant": tenant}) == 0.0
    shares = limiter.shares()
    assert shares["acme"] == {"weight": 2.0, "configured": True, "granted": 2, "waited": 0, "wait_seconds": 0.0}
    assert shares["big"]["weight"] == 1.0 and not shares["big"]["configured"] and shares["big"]["granted"] == 1
    limiter.set_share("big", weight=3, limit=isthmus.RateLimit(1, per="hour"))
    assert limiter.reserve(key={"tenant": "big"}) == 0.0
    with pytest.raises(isthmus.Throttled, match="share 'big'"):
        limiter.reserve(key={"tenant": "big"})  # its own 1/hour, far past max_wait
    assert limiter.reserve(key={"tenant": "acme"}) == 0.0  # the others are not held back
    assert limiter.shares()["big"]["weight"] == 3.0
    assert limiter.remove_share("big") and not limiter.remove_share("big")
    assert limiter.reserve(key={"tenant": "big"}) == 0.0
    assert limiter.shares()["big"]["weight"] == 1.0


def test_a_limiter_with_shares_is_one_allowance_across_tenants():
    divided = isthmus.Limiter(isthmus.RateLimit(1, per="hour"), shares={}, max_wait=60)
    assert divided.reserve(key={"tenant": "a"}) == 0.0
    with pytest.raises(isthmus.Throttled):
        divided.reserve(key={"tenant": "b"})
    # Without shares a limit's default scope includes the tenant: one allowance each.
    apart = isthmus.Limiter(isthmus.RateLimit(1, per="hour"), max_wait=60)
    assert apart.reserve(key={"tenant": "a"}) == 0.0 and apart.reserve(key={"tenant": "b"}) == 0.0


def test_tenants_sharing_one_limiter_split_the_allowance_by_weight():
    # Three customers of one app, each with its own API key and tenant key, one app-wide 100/s.
    # The weight-2 customer gets half of what the sandbox counts while all three are busy.
    rate, calls = 100, 200
    with isthmus.Sandbox(tenants=3, auth="api_key", app_rate_limit=rate, app_burst=20, records=10) as api:
        app = isthmus.Limiter(isthmus.RateLimit(rate, burst=5), shares={"t0": isthmus.Share(weight=2)})
        clients = [isthmus.Client(api.url, auth=isthmus.ApiKey(t.api_key), rate_limit=app,
                                  limit_key={"tenant": f"t{t.index}"}) for t in api.tenants]
        results = get_many_together(clients, "/v1/contacts?limit=1", calls, concurrency=12)
        stats = api.stats()
        got = arrivals(api, "GET /v1/contacts")
    assert [r.count(200) for r in results] == [calls] * 3, [sorted(set(r)) for r in results]
    assert stats["rate_limited"] == 0 and stats["app_rate_limited"] == 0, stats["requests"]["by_status"]
    assert [stats["tenants"][i]["requests"]["total"] for i in range(3)] == [calls] * 3, stats["requests"]["by_status"]
    # While all three were busy: up to the weight-2 tenant's last call.
    end = max(a["t"] for a in got if a["tenant"] == 0)
    busy = [a["tenant"] for a in got if a["t"] <= end]
    counts = [busy.count(i) for i in range(3)]
    assert counts[0] == calls
    for i in (1, 2):
        assert 0.4 < counts[i] / counts[0] < 0.6, counts  # 1.0 without weights
    assert app.shares()["t0"]["granted"] == calls
