"""Reliability: faults in every form, SIGKILL at random points, damaged state files.

The destination sandbox's own counters are the ground truth: unique records received,
duplicates (the same identity delivered again under another Idempotency-Key) and idempotent
replays (the same key and body again, which an idempotent API absorbs).
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
import traceback

import pytest

import fault_matrix
import isthmus
from conftest import authorization_code_refresh_token, wait_until
from fault_matrix import map_with_bad_records, received
from fault_proxy import FaultProxy
from isthmus.store import StateStore

HERE = os.path.dirname(os.path.abspath(__file__))

FAULT_RECORDS = 50_000  # bench/reliability/run.py runs the same matrix with 1,000,000


def test_fault_matrix(tmp_path):
    """5% of calls fail in each way at both ends, the transport between them is bounced, cut
    mid-body, black-holed and throttled mid-run; the run reconciles exactly, nothing duplicated.

    A failed run (a page whose every attempt failed) is simply run again: at-least-once resume
    from the checkpoint is part of the guarantee under test. How many runs it took is printed.
    """
    result = fault_matrix.run_matrix(FAULT_RECORDS, str(tmp_path / "fault.db"))
    print(f"\nfault matrix: {FAULT_RECORDS:,} records in {result['seconds']} s, {result['runs']} run(s); "
          f"destination {result['destination']}; {result['dead_letters']} dead letters; "
          f"{result['requests']} requests, {result['retries']} retries; "
          f"sandbox faults {result['sandbox_faults']}; tokens {result['tokens']}; proxies {result['proxies']}")
    for e in result["episodes"]:
        print("  episode:", e)
    for f in result["failed_runs"]:
        print("  failed run:", f)
    assert fault_matrix.problems(result) == []


def test_a_malformed_page_is_fetched_again_within_the_run(tmp_path):
    faults = {"GET /v1/contacts": {"malformed": 0.2}}
    with isthmus.Sandbox(records=2000, pagination="offset", faults=faults) as src, \
            isthmus.Client(src.url, timeout=5) as sc:
        stream = isthmus.Stream(sc, "/v1/contacts",
                                paginator=isthmus.OffsetPaginator(limit=100, total="meta.total", window=4))
        out = []
        run = isthmus.Pipeline(stream, sink=isthmus.CallableSink(out.extend),
                               state=str(tmp_path / "s.db")).run()
        assert src.stats()["faults"].get("malformed", 0) > 0
    assert run.status == "completed" and len({r["id"] for r in out}) == 2000


# -- crash and resume --------------------------------------------------------------------------

def arrivals(dst) -> int:
    """Records the destination has taken, first deliveries and idempotent replays alike, from
    one snapshot of its counters."""
    got = received(dst)
    return got["unique"] + got["idempotent_replays"]


CRASH_RECORDS = 120_000  # room for every planned kill even on a fast, quiet machine
CRASH_SEED = 20261128
CRASH_PAGE = 100  # crash_child.PAGE
TOKEN_KEY = bytes(range(32)).hex()


def test_crash_resume(tmp_path):
    """SIGKILL at >= 10 seeded points: at random moments, inside checkpoint transactions, and
    inside and after the encrypted token store's write of a rotated refresh token. Each restart
    resumes from its checkpoint; at the end every record is at the destination exactly once.

    The source rotates refresh tokens (each is single use). A kill inside the store's write,
    before the commit record is complete, leaves the previous refresh token in the store, and
    the server has already spent it: the next run is refused (invalid_grant) and the user must
    authorize again. That is the one way to lose a rotated grant, and it is asserted, not hidden.
    """
    rng = random.Random(CRASH_SEED)
    plan = (["checkpoint:1", "checkpoint:2", "checkpoint:3", "token:2:saved", "token:2:unsynced",
             "token:3:torn"] + ["time"] * 6)
    rng.shuffle(plan)
    state, tokens = str(tmp_path / "crash.db"), str(tmp_path / "tokens.db")
    env = dict(os.environ, ISTHMUS_TOKEN_KEY=TOKEN_KEY)
    src_opts = dict(records=CRASH_RECORDS, pagination="offset", auth="oauth2", token_lifetime=0.5,
                    rotate_refresh_tokens=True, client_id="crash-client", client_secret="crash-secret",
                    faults={"GET /v1/contacts": {"latency_ms": {"min": 5, "max": 25}}})
    restarts = []
    with isthmus.Sandbox(**src_opts) as src, isthmus.Sandbox() as dst:
        grant, reauthorize = authorization_code_refresh_token(src), False
        todo = list(plan)
        while len(restarts) < 30:
            # After a torn token write the next run is refused: it does not take a planned kill.
            torn_before = bool(restarts) and restarts[-1]["mode"].endswith(":torn")
            mode = "run" if torn_before or not todo else todo.pop(0)
            before, refreshed = received(dst), src.stats()["tokens"]["refreshed"]
            position = StateStore(state).load("v1_contacts")["position"] if os.path.exists(state) else None
            p = subprocess.Popen([sys.executable, os.path.join(HERE, "crash_child.py"), src.url, dst.url, state,
                                  tokens, grant, "run" if mode == "time" else mode]
                                 + (["reauthorize"] if reauthorize else []),
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if mode == "time":
                # Let it deliver something first, then kill it at a seeded random moment.
                delivered = before["unique"] + before["idempotent_replays"]
                wait_until(lambda p=p, delivered=delivered: arrivals(dst) > delivered or p.poll() is not None,
                           timeout=30)
                time.sleep(rng.uniform(0.0, 0.5))
                p.send_signal(signal.SIGKILL)
            try:
                out, err = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
                pytest.fail(f"child {len(restarts)} ({mode}) hung")
            after = received(dst)
            start = ((position or {"partitions": {}})["partitions"].get("{}", {}).get("inner") or {}).get("unit", 0)
            refused = p.returncode == 1 and b"invalid_grant" in err
            restarts.append({"run": len(restarts), "mode": mode, "rc": p.returncode, "resumed_at": start,
                             "reauthorized": reauthorize, "refused": refused,
                             "refreshes": src.stats()["tokens"]["refreshed"] - refreshed,
                             "new": after["unique"] - before["unique"],
                             # Records already at the destination at or past the checkpoint: a run
                             # that gets going sends every one of them again.
                             "behind_checkpoint": before["unique"] - start,
                             # What it did send again, as the destination counted it: each resent
                             # page is one idempotent replay of its batch.
                             "resent_records": CRASH_PAGE * (
                                 (after["duplicate"] - before["duplicate"])
                                 + (after["idempotent_replays"] - before["idempotent_replays"]))})
            reauthorize = False
            if p.returncode == 0:
                break
            if refused:
                # The store held a spent refresh token: authorize again (a new grant), resume. A
                # random kill inside a token write can leave one too; then the kill this run was
                # planned to take never happened, so it goes back to the front of the plan.
                if mode != "run":
                    todo.insert(0, mode)
                grant, reauthorize = authorization_code_refresh_token(src), True
                continue
            assert p.returncode == -signal.SIGKILL, err.decode()[-2000:]
        final = received(dst)
        token_stats = src.stats()["tokens"]

    print(f"\ncrash-resume: {CRASH_RECORDS:,} records, tokens {token_stats}")
    for r in restarts:
        print("  ", r)
    kills = [r for r in restarts if r["rc"] == -signal.SIGKILL]
    assert len(kills) >= 10, restarts
    assert {r["mode"] for r in kills} >= set(plan)  # every planned kill point was reached
    assert restarts[-1]["rc"] == 0
    assert final["unique"] == CRASH_RECORDS
    assert final["duplicate"] == 0  # resends are idempotent replays, never a second delivery
    # Exactly what was behind the checkpoint is sent again, nothing more (a refused run stops
    # when its stored access token runs out, maybe before it got through all of it).
    for r in restarts:
        if r["refused"]:
            assert r["resent_records"] <= r["behind_checkpoint"], r
        else:
            assert r["resent_records"] == r["behind_checkpoint"], r
    # The token store never hands out a damaged record: after a kill anywhere in its write,
    # the next run reads either the new refresh token or the previous one, and only a write
    # torn before its commit record (or a random kill landing in the same window) loses the
    # rotated grant. A saved or fully written (unsynced) one always carries on.
    for killed, nxt in zip(restarts, restarts[1:]):
        if killed["rc"] != -signal.SIGKILL:
            continue
        if killed["mode"].startswith("token:"):
            # The server had rotated the K-th token when the process died in its write.
            assert killed["refreshes"] >= int(killed["mode"].split(":")[1]), killed
        if killed["mode"].endswith(":torn"):
            assert nxt["refused"], (killed, nxt)
        if killed["mode"].endswith((":saved", ":unsynced")):
            assert not nxt["refused"], (killed, nxt)
    for r in restarts:
        if r["refused"]:
            assert r["refreshes"] == 0  # the spent token was refused, nothing was issued
    print(f"  re-sent per restart: {[r['resent_records'] for r in restarts[1:]]}, "
          f"total {sum(r['resent_records'] for r in restarts)} of {CRASH_RECORDS:,}")
    runs = StateStore(state).runs("v1_contacts")
    assert [r["status"] for r in runs][-1] == "completed"
    # Every killed run left its row running; a refused one recorded its failure.
    assert [r["status"] for r in runs[:-1]] == ["failed" if r["refused"] else "running" for r in restarts[:-1]]


# -- damaged state ------------------------------------------------------------------------------

def _finished_state(tmp_path, records=3000):
    """A state file after a completed run with some dead letters and an incremental cursor."""
    state = str(tmp_path / "damaged.db")
    with isthmus.Sandbox(records=records) as src, isthmus.Client(src.url) as sc:
        stream = isthmus.Stream(sc, "/v1/contacts", paginator=isthmus.CursorPaginator(), params={"limit": 100},
                                incremental=isthmus.Incremental("updated_at", "updated_since"))
        p = isthmus.Pipeline(stream, map=map_with_bad_records, sink=isthmus.CallableSink(lambda r: None),
                             state=state)
        p.run()
        assert len(p.dead_letters()) == 3
        p.store.close()
    return state


def _open_and_read(state):
    store = StateStore(state)
    try:
        return store.load("v1_contacts"), store.dead_letters("v1_contacts")
    finally:
        store.close()


@pytest.mark.parametrize("damage", ["garbage_header", "zero_length",
                                    "half_length", "garbage_middle"])
def test_damaged_state_is_never_silently_lost(tmp_path, damage):
    """Whatever happened to the file, opening it either fails loudly or gives back everything."""
    state = _finished_state(tmp_path)
    good = _open_and_read(state)
    size = os.path.getsize(state)
    with open(state, "r+b") as f:
        if damage == "garbage_header":
            f.write(os.urandom(100))
        elif damage == "zero_length":
            f.truncate(0)
        elif damage == "half_length":
            f.truncate(size // 2)
        else:
            f.seek(size // 2)
            f.write(b"\xa5" * 4096)
    try:
        got = _open_and_read(state)
    except isthmus.StateError as exc:
        assert str(state) in str(exc)
        return
    except sqlite3.DatabaseError as exc:  # damage SQLite only notices on a later read
        assert str(exc)
        return
    assert got == good, "the damaged state file opened and silently returned different state"


def test_a_corrupted_state_file_gives_a_typed_error_naming_it(tmp_path):
    state = _finished_state(tmp_path)
    with open(state, "r+b") as f:
        f.write(b"\x00" * 100)
    with isthmus.Sandbox(records=10) as src, isthmus.Client(src.url) as sc:
        stream = isthmus.Stream(sc, "/v1/contacts", paginator=isthmus.CursorPaginator())
        with pytest.raises(isthmus.IsthmusError, match="damaged.db"):
            isthmus.Pipeline(stream, sink=isthmus.CallableSink(lambda r: None), state=state).run()


# -- no secret anywhere --------------------------------------------------------------------------

SECRETS = {"client_secret": "cs-9f2c41d7e5b8", "api_key": "ak-51b7e0c3d9aa", "hmac_key": "hk-c0ffee77a1d4",
           "wrong_client_secret": "cs-WRONG-3b1f0e", "wrong_api_key": "ak-WRONG-8e2d4c",
           "wrong_hmac_key": "hk-WRONG-6a4e9b"}
# Every access and refresh token the sandbox issues: a prefix and 32 hex digits.
SANDBOX_TOKEN = re.compile(r"\b(?:at|rt)_[0-9a-f]{32}\b")


class _Capture(logging.Handler):
    """Every record of the isthmus loggers, formatted as a log file would show it."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        self.lines: list = []

    def emit(self, record):
        self.lines.append(self.format(record))


def test_no_secret_in_logs_reprs_errors_or_state(tmp_path, monkeypatch, closed_port):
    """A faulted run with OAuth2 rotating refresh tokens (encrypted token store), HMAC request
    signing and API keys in a header and in the query, plus every kind of wrong credential.
    Everything a user, a log or a support person could see is collected, and no client secret,
    key, access token or refresh token may appear in any of it."""
    monkeypatch.setenv("ISTHMUS_TOKEN_KEY", TOKEN_KEY)
    log = logging.getLogger("isthmus")
    capture, old_level = _Capture(), log.level
    log.addHandler(capture)
    log.setLevel(logging.DEBUG)
    seen: list = []  # (where, text)
    errors: list = []

    def look(where, *objects):
        for o in objects:
            seen.append((where, o if isinstance(o, str) else repr(o)))
            html = getattr(o, "_repr_html_", None)
            if callable(html):
                seen.append((where + " html", html()))

    def failing(where, call):
        try:
            call()
        except Exception as exc:  # every error, whatever its type
            errors.append(exc)
            seen.append((where, "".join(traceback.format_exception(exc)) + repr(exc)))
            return exc
        pytest.fail(f"{where}: expected an error")

    def run_until_done(where, pipeline, runs=10):
        for _ in range(runs):
            try:
                return pipeline.run()
            except isthmus.IsthmusError as exc:
                errors.append(exc)
                seen.append((where + " failed run", "".join(traceback.format_exception(exc)) + repr(exc)))
        pytest.fail(f"{where}: never completed")

    def files(where, *paths):
        for path in paths:
            for p in (path, path + "-wal"):
                if os.path.exists(p):
                    with open(p, "rb") as f:
                        seen.append((f"{where} {os.path.basename(p)}", f.read().decode("latin-1")))

    faults = fault_matrix.each_way(0.05)
    state, tokens = str(tmp_path / "state.db"), str(tmp_path / "tokens.db")
    signing = dict(canonical="{timestamp}.{method}.{path_query}.{body}", header="X-Signature",
                   prefix="sha256=", timestamp_header="X-Signature-Timestamp")
    try:
        with isthmus.Sandbox(records=5000, pagination="offset", max_page_size=250, auth="oauth2",
                             rotate_refresh_tokens=True, token_lifetime=1, client_secret=SECRETS["client_secret"],
                             faults={"GET /v1/contacts": faults}) as src, \
                isthmus.Sandbox(signing_secret=SECRETS["hmac_key"],
                                faults={"POST /v1/contacts/batch": faults}) as dst, \
                isthmus.Sandbox(records=300, auth="api_key", api_key_in="query", api_key=SECRETS["api_key"],
                                pagination="offset", faults={"GET /v1/contacts": faults}) as query_api, \
                isthmus.Sandbox(auth="api_key", api_key=SECRETS["api_key"]) as header_api:
            grants = [authorization_code_refresh_token(src)]
            store = isthmus.TokenStore.sqlite(tokens)
            oauth = isthmus.OAuth2RefreshToken(src.token_url, src.client_id, SECRETS["client_secret"], grants[0],
                                               store=store, refresh_before=0.2)
            signer = isthmus.HmacSigner(SECRETS["hmac_key"], **signing)
            with isthmus.Client(src.url, auth=oauth, timeout=0.5) as sc, \
                    isthmus.Client(dst.url, auth=signer, timeout=0.5) as dc:
                stream = isthmus.Stream(sc, "/v1/contacts", attempts=8,
                                        paginator=isthmus.OffsetPaginator(limit=250, total="meta.total", window=4))
                sink = isthmus.HttpSink(dc, "/v1/contacts/batch", batch_size=250, attempts=8)
                main = isthmus.Pipeline(stream, map=map_with_bad_records, sink=sink, state=state)
                run = run_until_done("oauth2 -> hmac", main)
                r = sc.get("/v1/contacts", params={"limit": 2})
                look("oauth2 -> hmac", sc, dc, oauth, signer, store, stream, sink, main, run, run.summary(),
                     r, r.request, r.headers, r.request.headers, src, dst)

                # A wrong HMAC key at the sink: the run stops on the 401 (its error is scanned).
                api_src = isthmus.Client(query_api.url, auth=isthmus.ApiKey(SECRETS["api_key"], query="api_key"),
                                         timeout=0.5)
                bad_signer = isthmus.HmacSigner(SECRETS["wrong_hmac_key"], **signing)
                with api_src, isthmus.Client(dst.url, auth=bad_signer, timeout=0.5) as bad_dc:
                    rejected = isthmus.Pipeline(
                        isthmus.Stream(api_src, "/v1/contacts", attempts=8, name="rejected",
                                       paginator=isthmus.OffsetPaginator(limit=100, total="meta.total")),
                        # A key in the sink's query string too (some ingest APIs take one there).
                        sink=isthmus.HttpSink(bad_dc, "/v1/contacts/batch?api_key=" + SECRETS["api_key"],
                                              batch_size=100, attempts=8),
                        state=state)
                    for _ in range(10):  # a fault at the source may stop a run before the sink does
                        refused = failing("api key in query -> wrong hmac", rejected.run)
                        if isinstance(refused, isthmus.AuthError):
                            break
                    look("api key in query -> wrong hmac", api_src, bad_dc, bad_signer, rejected,
                         rejected.runs().to_csv())
                    sink_dead = rejected.dead_letters()
                    seen.append(("rejected dead letters", sink_dead.to_csv()))

            # Wrong credentials of every kind, and a spent refresh token.
            with isthmus.Client(query_api.url, auth=isthmus.ApiKey(SECRETS["wrong_api_key"], query="api_key"),
                                timeout=2) as c:
                look("wrong query key", c, c.get("/v1/contacts"))
                failing("wrong query key in a pipeline", isthmus.Pipeline(
                    isthmus.Stream(c, "/v1/contacts", name="refused", attempts=2,
                                   paginator=isthmus.OffsetPaginator(limit=100, total="meta.total")),
                    sink=isthmus.CallableSink(lambda rs: None), state=state).run)
            # A key passed as a plain query parameter rather than through ApiKey.
            with isthmus.Client(query_api.url, timeout=2) as c:
                failing("wrong key as a stream parameter", isthmus.Pipeline(
                    isthmus.Stream(c, "/v1/contacts", name="by-param", attempts=2,
                                   params={"api_key": SECRETS["wrong_api_key"]},
                                   paginator=isthmus.OffsetPaginator(limit=100, total="meta.total")),
                    sink=isthmus.CallableSink(lambda rs: None), state=state).run)
            for key in (SECRETS["api_key"], SECRETS["wrong_api_key"]):
                with isthmus.Client(header_api.url, auth=isthmus.ApiKey(key), timeout=2) as c:
                    r = c.get("/v1/contacts")
                    look("api key in a header", c, r, r.request, r.request.headers)
                    if r.status_code != 200:
                        failing("api key in a header", r.raise_for_status)
            # Transport failures with a query key on the URL: refused, and black-holed.
            with FaultProxy(header_api.port) as px:
                px.black_hole = True
                for where, url in (("black hole", px.url), ("refused", f"http://127.0.0.1:{closed_port}")):
                    with isthmus.Client(url, auth=isthmus.ApiKey(SECRETS["api_key"], query="api_key"),
                                        timeout=0.3) as c:
                        failing(where, lambda: c.get("/v1/contacts", params={"token": SECRETS["wrong_api_key"]}))
            bad_secret = isthmus.OAuth2ClientCredentials(src.token_url, src.client_id, SECRETS["wrong_client_secret"])
            look("wrong client secret", bad_secret)
            failing("wrong client secret", bad_secret.fetch_token)
            with isthmus.Client(src.url, auth=bad_secret, timeout=2) as c:
                failing("wrong client secret, client", lambda: c.get("/v1/contacts"))
            spent = isthmus.OAuth2RefreshToken(src.token_url, src.client_id, SECRETS["client_secret"], grants[0])
            look("spent refresh token", spent)
            failing("spent refresh token", spent.fetch_token)

            src_stats, dst_stats = src.stats(), dst.stats()
            history = main.runs()
            seen.append(("run history", history.to_csv()))
            seen.append(("dead letters", main.dead_letters(include_resolved=True).to_csv()))
            store_repr = repr(store)
        main.store.close()
        files("state file", state)
        files("token store", tokens)  # encrypted at rest: no token in its bytes
    finally:
        log.removeHandler(capture)
        log.setLevel(old_level)
    seen += [("log", line) for line in capture.lines]

    # The scan had something to look at: rotations logged, faults injected, errors and dead
    # letters of each kind collected.
    assert sum("new access token" in line and "refresh_token_rotated=True" in line for line in capture.lines) >= 3
    assert src_stats["tokens"]["refreshed"] >= 3 and src_stats["faults"] and dst_stats["faults"]
    assert run.status == "completed" and sink_dead.empty
    assert isinstance(refused, isthmus.AuthError) and isinstance(refused, isthmus.PipelineError)
    assert refused.status_code == 401 and refused.body
    assert {type(e).__name__ for e in errors} >= {"TokenError", "AuthError", "TimeoutError", "ConnectError"}, errors
    assert len(history) >= 1 and store_repr.startswith("TokenStore.sqlite(")
    assert any(where.startswith("token store") and len(text) > 4096 for where, text in seen)

    secrets = dict(SECRETS, **{f"refresh token {i}": g for i, g in enumerate(grants)})
    leaks = [(where, name) for where, text in seen for name, secret in secrets.items() if secret in text]
    leaks += [(where, m.group(0)[:6] + "...") for where, text in seen for m in SANDBOX_TOKEN.finditer(text)]
    assert not leaks, f"secrets found in {len(leaks)} places: {leaks[:20]}"
