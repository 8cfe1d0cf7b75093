"""`make demo`: a short tour of what the engine does today, against the bundled sandbox.

Run with ``python -m isthmus.demo``. Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import time

import isthmus


def _line(text: str = "") -> None:
    print(text, flush=True)


def main(requests: int = 20_000, concurrency: int = 32) -> None:
    with isthmus.Sandbox() as api, isthmus.Client(api.url, max_connections=concurrency) as client:
        _line(f"sandbox serving at {api.url}")

        r = client.get("/json")
        _line(f"GET /json -> {r.status_code} {r.http_version}, {len(r.content)} bytes in "
              f"{r.elapsed.total_seconds() * 1000:.2f} ms")

        started = time.perf_counter()
        responses = client.get_many(["/json"] * requests, concurrency=concurrency)
        took = time.perf_counter() - started
        ok = sum(1 for resp in responses if resp.status_code == 200)
        stats = api.stats()
        _line(f"get_many: {ok:,}/{requests:,} OK in {took:.2f} s = {requests / took:,.0f} requests/s "
              f"over {stats['connections']['accepted']} connections (keep-alive)")

        async def fetch_async() -> int:
            async with isthmus.AsyncClient(api.url, max_connections=concurrency) as ac:
                rs = await ac.get_many([f"/echo?i={i}" for i in range(1000)], concurrency=concurrency)
                return sum(1 for x in rs if x.status_code == 200)

        _line(f"AsyncClient: {asyncio.run(fetch_async()):,}/1,000 OK from asyncio")

        _line("typed errors, each also a builtin:")
        for what, call in [
            ("timeout", lambda: client.get("/delay/2000", timeout=0.2)),
            ("server closes mid-body", lambda: client.get("/truncated")),
            ("invalid JSON", lambda: client.get("/malformed-json").json()),
            ("4xx via raise_for_status", lambda: client.get("/status/429").raise_for_status()),
            ("unsupported scheme", lambda: client.get("ftp://127.0.0.1/x?token=hidden")),
        ]:
            try:
                call()
            except isthmus.IsthmusError as exc:
                builtin = next(c.__name__ for c in type(exc).__mro__ if c.__module__ == "builtins")
                _line(f"  {what:<26} {type(exc).__name__} ({builtin}): {exc}")


if __name__ == "__main__":
    main()
