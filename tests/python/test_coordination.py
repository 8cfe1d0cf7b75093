"""Coordination on a real Redis (a child of the test): shared limits across processes, quotas,
NOSCRIPT after a restart, failing closed while Redis is down, claims and their leases, the
single-flight token refresh across processes, and the errors a bad URL gets.

The sandbox's own counts are the ground truth: a limit is kept when the sandbox, which
enforces it, answered no 429; "nothing went out" is a request count that did not move.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import isthmus
from conftest import authorization_code_refresh_token, wait_until
from servers import Redis, have_redis

redis_py = pytest.importorskip("redis")
pytestmark = pytest.mark.skipif(not have_redis, reason="redis-server is not installed")

CHILD = str(Path(__file__).with_name("coord_child.py"))
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


@pytest.fixture
def redis(tmp_path):
    with Redis(tmp_path) as server:
        yield server


def observer(server: Redis):
    return redis_py.Redis(host="127.0.0.1", port=server.port, password=server.password)


def stop(procs):
    for p in procs:
        p.kill()
        p.wait()
        p.stdin.close()
        p.stdout.close()


def children(args_list, env=ENV):
    procs = [subprocess.Popen([sys.executable, CHILD, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env) for args in args_list]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    return procs


def run_limited(redis, api, *, rate, burst, n, mode=()):
    procs = children([["limit", redis.url, api.url, str(rate), str(burst), str(n), "8", *mode]] * 4)
    try:
        for p in procs:  # all four start together
            p.stdin.write("go\n")
            p.stdin.flush()
        counts = [json.loads(p.stdout.readline()) for p in procs]
    finally:
        stop(procs)
    return counts


# --- limits ---------------------------------------------------------------------------------

def test_a_limit_shared_by_four_processes_is_kept_by_the_sandbox_count(redis):
    # The sandbox enforces 200/s with a little tolerance for arrival jitter; the four processes
    # share one RateLimit(200) through Redis and each alone would send at the full rate.
    with isthmus.Sandbox(rate_limit=200, burst=20, records=10) as api:
        counts = run_limited(redis, api, rate=200, burst=4, n=100)
        stats = api.stats()
    assert sum(c.get("200", 0) for c in counts) == 400, counts
    assert stats["rate_limited"] == 0
    keys = observer(redis).keys("isthmus:limit:*")
    assert len(keys) == 1, keys  # one bucket for all four


def test_the_same_processes_without_coordination_overrun_the_limit(redis):
    # The control: the test above can fail. Four private allowances are four times the limit.
    with isthmus.Sandbox(rate_limit=200, burst=20, records=10) as api:
        counts = run_limited(redis, api, rate=200, burst=4, n=100, mode=("local",))
        stats = api.stats()
    assert stats["rate_limited"] > 0
    assert sum(c.get("429", 0) for c in counts) == stats["rate_limited"]


def test_a_quota_is_one_count_for_every_limiter_sharing_it(redis):
    coord = isthmus.Coordination(redis.url)
    a = isthmus.Limiter(isthmus.Quota(10, per="hour"), coordination=coord, max_wait=1)
    b = isthmus.Limiter(isthmus.Quota(10, per="hour"), coordination=isthmus.Coordination(redis.url), max_wait=1)
    for i in range(10):
        assert (a if i % 2 else b).reserve() == 0.0
    with pytest.raises(isthmus.QuotaExhausted) as e:
        a.reserve()
    assert e.value.resets_at == pytest.approx((time.time() // 3600 + 1) * 3600, abs=2)
    # A limiter with other terms (or another name) is another allowance.
    assert isthmus.Limiter(isthmus.Quota(10, per="hour"), coordination=coord, name="other").reserve() == 0.0


def test_a_tenants_share_is_one_count_for_every_limiter_sharing_it(redis):
    def limiter():
        return isthmus.Limiter(isthmus.RateLimit(1000, burst=50), coordination=isthmus.Coordination(redis.url),
                               shares={"acme": isthmus.Share(limit=isthmus.RateLimit(1, per="hour"))}, max_wait=5)

    a, b = limiter(), limiter()
    assert a.reserve(key={"tenant": "acme"}) == 0.0
    with pytest.raises(isthmus.Throttled, match="share 'acme'"):
        b.reserve(key={"tenant": "acme"})  # the other process's call counted against acme's 1/hour
    assert b.reserve(key={"tenant": "other"}) == 0.0  # the app's allowance has room
    assert any(b"share 'acme'" in k for k in observer(redis).keys("*"))


def test_shared_waits_follow_the_rate(redis):
    coord = isthmus.Coordination(redis.url)
    limiter = isthmus.Limiter(isthmus.RateLimit(10, per="second", burst=1), coordination=coord)
    waits = [limiter.reserve() for _ in range(5)]
    # Reservations commit: each is one interval (0.1 s) after the one before, on Redis' clock.
    assert waits[0] == 0.0
    for earlier, later in zip(waits, waits[1:]):
        assert later - earlier == pytest.approx(0.1, abs=0.02)


def test_calls_at_a_busy_limit_take_their_slots_from_batches_reserved_ahead(redis):
    # Eight calls in flight at 1,000/s: most slots come from a batch one script call committed,
    # so Redis sees fewer commands than calls, and the sandbox, enforcing the same limit, still
    # answers every call with 200.
    with isthmus.Sandbox(rate_limit=1000, burst=40, records=10) as api:
        coord = isthmus.Coordination(redis.url)
        limiter = isthmus.Limiter(isthmus.RateLimit(1000, per="second", burst=20), coordination=coord)
        with isthmus.Client(api.url, rate_limit=limiter, retry=None, max_connections=8) as c:
            results = c.get_many(["/v1/contacts?limit=1"] * 600, concurrency=8)
        stats = api.stats()
    assert [r.status_code for r in results] == [200] * 600
    assert stats["rate_limited"] == 0 and stats["requests"]["total"] == 600
    assert coord.stats()["commands"] < 600


def test_a_limit_with_little_burst_holds_no_slot_ahead(redis):
    # One call at 10/s with burst 1 commits one interval in Redis, not a spare slot besides:
    # a spare would make every other process wait an interval more.
    coord = isthmus.Coordination(redis.url)
    limiter = isthmus.Limiter(isthmus.RateLimit(10, per="second", burst=1), coordination=coord)
    assert limiter.reserve() == 0.0
    r = observer(redis)
    (key,) = r.keys("isthmus:limit:*")
    seconds, micros = r.time()
    assert float(r.get(key)) - (seconds + micros / 1e6) <= 0.1


def test_noscript_after_a_restart_loads_the_script_again(redis):
    coord = isthmus.Coordination(redis.url)
    limiter = isthmus.Limiter(isthmus.RateLimit(1000, per="second"), coordination=coord)
    limiter.reserve()
    assert coord.stats()["scripts_loaded"] == 1  # the first EVALSHA met a fresh server
    redis.restart()  # no persistence: the script cache and the buckets are gone
    assert observer(redis).script_exists(_sha(redis))[0] is False
    limiter.reserve()
    stats = coord.stats()
    assert stats["scripts_loaded"] == 2 and stats["connects"] == 2 and stats["failed"] == 0
    assert observer(redis).script_exists(_sha(redis))[0] is True


def _sha(redis):
    # The script's text is the core's (the first Lua block of scripts.cpp); EVALSHA names it by its SHA-1.
    src = Path(__file__).resolve().parents[2] / "cpp" / "src" / "coord" / "scripts.cpp"
    text = src.read_text()
    start = text.index('R"lua(') + len('R"lua(')
    return hashlib.sha1(text[start:text.index(')lua"', start)].encode()).hexdigest()


def test_while_redis_is_down_nothing_goes_out_and_work_resumes_by_itself(redis):
    with isthmus.Sandbox(rate_limit=100, burst=10, records=10) as api:
        coord = isthmus.Coordination(redis.url)
        limiter = isthmus.Limiter(isthmus.RateLimit(100, per="second", burst=2), coordination=coord)
        results = []
        with isthmus.Client(api.url, rate_limit=limiter, retry=None) as c:
            worker = threading.Thread(target=lambda: results.extend(
                c.get_many(["/v1/contacts?limit=1"] * 400, concurrency=8)))
            worker.start()
            wait_until(lambda: api.stats()["requests"]["total"] >= 50)
            redis.kill()
            # Slots counted before the outage may still go (each at most 8 / 100 s ahead).
            time.sleep(0.3)
            sent_while_down = api.stats()["requests"]["total"]
            time.sleep(2.0)
            assert api.stats()["requests"]["total"] == sent_while_down
            redis.start()
            worker.join(timeout=60)
        assert not worker.is_alive()
        assert [r.status_code for r in results] == [200] * 400
        assert api.stats()["rate_limited"] == 0
        assert sent_while_down < 400
        assert coord.stats()["connects"] >= 2


# --- claims ---------------------------------------------------------------------------------

def test_a_claim_is_held_by_one_holder_renewed_and_released(redis):
    a, b = isthmus.Coordination(redis.url), isthmus.Coordination(redis.url)
    with a.claim("contacts/p1", lease=30) as first:
        assert first and first.held
        second = b.claim("contacts/p1", lease=30)
        assert not second
        assert second.renew() is False and second.release() is False
        assert first.renew() is True
        assert 29_000 < observer(redis).pttl("isthmus:claim:contacts/p1") <= 30_000
    assert not first.held
    assert first.release() is False  # idempotent
    assert b.claim("contacts/p1", lease=30)


def test_a_lapsed_claim_cannot_be_renewed_or_released_by_its_old_holder(redis):
    a, b = isthmus.Coordination(redis.url), isthmus.Coordination(redis.url)
    old = a.claim("p2", lease=0.2)
    assert old
    wait_until(lambda: observer(redis).exists("isthmus:claim:p2") == 0)
    new = b.claim("p2", lease=30)
    assert new
    assert old.renew() is False
    assert old.release() is False
    assert observer(redis).exists("isthmus:claim:p2") == 1  # the new holder's claim stands


def test_the_claim_of_a_killed_holder_lapses(redis):
    coord = isthmus.Coordination(redis.url)
    with subprocess.Popen([sys.executable, CHILD, "claim", redis.url, "p3", "1.0"], stdout=subprocess.PIPE,
                          text=True, env=ENV) as holder:
        try:
            assert holder.stdout.readline().strip() == "claimed"
            assert not coord.claim("p3", lease=5)
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=30)
    wait_until(lambda: bool(coord.claim("p3", lease=5)), timeout=10)


# --- token refresh --------------------------------------------------------------------------

def test_four_processes_share_one_token_refresh_per_expiry(redis):
    key = isthmus.TokenStore.generate_key()
    env = dict(ENV, ISTHMUS_TOKEN_KEY=key)
    with isthmus.Sandbox(auth="oauth2", token_lifetime=0.4, rotate_refresh_tokens=True, records=10) as api:
        rt = authorization_code_refresh_token(api)
        api.reset_stats()
        procs = children([["token", redis.url, api.url, api.token_url, api.client_id, api.client_secret, rt]] * 4,
                         env=env)
        try:
            for _ in range(20):
                for p in procs:  # every process finds the token expired at the same moment
                    p.stdin.write("go\n")
                    p.stdin.flush()
                rounds = [json.loads(p.stdout.readline()) for p in procs]
                assert all(r["statuses"] == [200] * 8 for r in rounds), rounds
                expiry = max(r["expires_at"] for r in rounds)
                wait_until(lambda e=expiry: time.time() > e + 0.01, timeout=5)
            token_requests = sum(r["token_requests"] for r in rounds)
        finally:
            stop(procs)
        stats = api.stats()
    assert stats["tokens"]["refreshed"] == 20
    assert token_requests == 20  # the processes' own counts agree: nobody asked twice
    token_statuses = stats["requests"]["by_endpoint"]["POST /oauth/token"]
    assert token_statuses == {"200": 20}, token_statuses  # no invalid_grant
    record = observer(redis).get(f"isthmus:token:oauth2:{api.client_id}@{api.token_url}")
    assert record is not None and rt.encode() not in record  # sealed, not plain text


# --- bad input ------------------------------------------------------------------------------

def test_a_bad_url_is_a_typed_error():
    with pytest.raises(isthmus.InvalidURL, match="scheme must be redis://"):
        isthmus.Coordination("http://127.0.0.1:6379")
    with pytest.raises(isthmus.InvalidURL) as e:
        isthmus.Coordination("redis://:hunter2@127.0.0.1:notaport/0")
    assert "hunter2" not in str(e.value) and "redis://:***@127.0.0.1:notaport/0" in str(e.value)
    with pytest.raises(isthmus.ConfigError, match="connect_timeout"):
        isthmus.Coordination("redis://127.0.0.1:1/0", connect_timeout=0)


def test_a_closed_port_is_a_connect_error_naming_the_url(closed_port):
    url = f"redis://:hunter2@127.0.0.1:{closed_port}/0"
    started = time.monotonic()
    with pytest.raises(isthmus.ConnectError) as e:
        isthmus.Coordination(url, connect_timeout=2)
    assert time.monotonic() - started < 2
    assert isinstance(e.value, ConnectionError)
    assert f"redis://:***@127.0.0.1:{closed_port}/0" in str(e.value) and "hunter2" not in str(e.value)


def test_a_wrong_password_is_access_refused_without_the_password(tmp_path):
    with Redis(tmp_path, password="right-one") as server:
        good = isthmus.Coordination(server.url)
        assert "right-one" not in repr(good) and "***" in repr(good)
        bad = f"redis://:wrong-one@127.0.0.1:{server.port}/0"
        with pytest.raises(isthmus.AccessRefused) as e:
            isthmus.Coordination(bad, connect_timeout=2)
        assert "wrong-one" not in str(e.value) and f"redis://:***@127.0.0.1:{server.port}/0" in str(e.value)
        assert "credentials" in str(e.value)
        with pytest.raises(isthmus.AccessRefused, match="NOAUTH"):
            isthmus.Coordination(f"redis://127.0.0.1:{server.port}/0", connect_timeout=2)


def test_a_shared_limit_and_token_from_yaml(redis, tmp_path, monkeypatch):
    """`coordination:` in a pipeline file's limiter and OAuth2 credential connects to that Redis;
    a wrong password fails the load with AccessRefused naming the URL, password masked."""
    from isthmus.config import pipeline_from_dict

    monkeypatch.setenv("ISTHMUS_TOKEN_KEY", isthmus.TokenStore.generate_key())
    with isthmus.Sandbox(records=50, auth="oauth2") as api, isthmus.Sandbox() as dst:
        def doc(url):
            return {"name": "shared", "state": "state.db",
                    "source": {"base_url": api.url, "path": "/v1/contacts", "params": {"limit": 10},
                               "paginator": "cursor",
                               "auth": {"type": "oauth2_client_credentials", "token_url": api.token_url,
                                        "client_id": api.client_id, "client_secret": api.client_secret,
                                        "coordination": url},
                               "rate_limit": {"type": "limiter", "name": "crm", "coordination": url,
                                              "limits": [{"rate": 100, "per": "second"}]}},
                    "sink": {"type": "http", "base_url": dst.url, "path": "/v1/contacts/batch"}}

        pipe = pipeline_from_dict(doc(redis.url), tmp_path)
        limiter = pipe.source.client.limiter
        assert isinstance(limiter.coordination, isthmus.Coordination) and limiter.name == "crm"
        # One connection per Redis URL in the file: the credential and the limiter share it.
        obs = observer(redis)
        assert len(obs.client_list()) == 2  # the file's one connection and this observer
        assert pipe.run().counts["written"] == 50
        assert observer(redis).keys("isthmus:*crm*")  # the allowance was counted in Redis
        with pytest.raises(isthmus.AccessRefused) as e:
            pipeline_from_dict(doc(f"redis://:wrong@127.0.0.1:{redis.port}/0"), tmp_path)
        assert "wrong" not in str(e.value) and f"127.0.0.1:{redis.port}" in str(e.value)
