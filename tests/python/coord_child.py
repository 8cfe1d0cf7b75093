"""A worker process of test_coordination.py: one of several sharing a Redis.

    python coord_child.py limit REDIS_URL API_URL RATE BURST N CONCURRENCY [local]
        N requests to API_URL through a limiter of RATE/s shared in Redis (or, with ``local``,
        a limiter of this process alone); prints the statuses as JSON.
    python coord_child.py claim REDIS_URL NAME LEASE
        claims NAME, prints "claimed", then waits to be killed.
    ISTHMUS_TOKEN_KEY=... python coord_child.py token REDIS_URL API_URL TOKEN_URL CLIENT_ID SECRET REFRESH_TOKEN
        one process sharing an OAuth2 credential: for each line "go" on stdin, sends 8
        requests at once and prints a JSON line (statuses, its token requests, the token's
        expiry on the Unix clock); exits on "quit".
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter

import isthmus


def limit(redis_url: str, api_url: str, rate: str, burst: str, n: str, concurrency: str, *mode: str) -> None:
    rule = isthmus.RateLimit(float(rate), per="second", burst=float(burst))
    coord = None if mode == ("local",) else isthmus.Coordination(redis_url)
    limiter = isthmus.Limiter(rule, coordination=coord)
    # No retries: every 429 the server sends reaches this count.
    with isthmus.Client(api_url, rate_limit=limiter, retry=None, max_connections=int(concurrency)) as c:
        print("ready", flush=True)
        sys.stdin.readline()  # all processes start together
        responses = c.get_many(["/v1/contacts?limit=1"] * int(n), concurrency=int(concurrency))
    print(json.dumps(dict(Counter(str(r.status_code) for r in responses))), flush=True)


def claim(redis_url: str, name: str, lease: str) -> None:
    coord = isthmus.Coordination(redis_url)
    c = coord.claim(name, lease=float(lease))
    print("claimed" if c else "taken", flush=True)
    time.sleep(600)


def token(redis_url: str, api_url: str, token_url: str, client_id: str, secret: str, rt: str) -> None:
    coord = isthmus.Coordination(redis_url)
    auth = isthmus.OAuth2RefreshToken(token_url, client_id, secret, rt, coordination=coord, refresh_before=0)
    with isthmus.Client(api_url, auth=auth, retry=None, max_connections=8) as c:
        print("ready", flush=True)
        for line in sys.stdin:
            if line.strip() != "go":
                break
            responses = c.get_many(["/v1/contacts?limit=1"] * 8, concurrency=8)
            expires_in = auth.expires_in if auth.expires_in is not None else 0.0
            print(json.dumps({"statuses": [r.status_code for r in responses],
                              "token_requests": auth.token_requests,
                              "expires_at": time.time() + expires_in}), flush=True)


if __name__ == "__main__":
    {"limit": limit, "claim": claim, "token": token}[sys.argv[1]](*sys.argv[2:])
