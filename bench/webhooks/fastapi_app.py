"""The peer for bench/webhooks: a FastAPI receiver written the way a capable engineer would.

The Standard Webhooks signature is verified with the `standardwebhooks` package (which parses
the JSON too), the event is inserted into SQLite in WAL mode with a UNIQUE event id (a duplicate
is answered 200 without a second row), and 200 is answered after the commit. synchronous=FULL,
as isthmus' LocalQueue: a commit that returned is on disk. The body is read on the event loop;
verifying and the blocking commit run on the thread pool (as FastAPI runs a plain `def`
endpoint), so a commit does not stall the loop; each thread keeps its own connection.

    BENCH_SECRET=whsec_... BENCH_DB=/tmp/events.db uvicorn fastapi_app:app --loop uvloop --http httptools
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.concurrency import run_in_threadpool

SECRET = os.environ["BENCH_SECRET"]
DB = os.environ["BENCH_DB"]

app = FastAPI()
_local = threading.local()
_verifier = Webhook(SECRET)


def _db() -> sqlite3.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(DB, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, "
                     "received_at REAL NOT NULL, body TEXT NOT NULL)")
        _local.conn = conn
    return conn


@app.post("/hooks/crm")
async def hook(request: Request) -> JSONResponse:
    body = await request.body()
    headers = dict(request.headers)
    return await run_in_threadpool(_handle, body, headers)


def _handle(body: bytes, headers: dict) -> JSONResponse:
    try:
        _verifier.verify(body, headers)
    except WebhookVerificationError:
        return JSONResponse({"error": "signature"}, status_code=401)
    except json.JSONDecodeError:
        return JSONResponse({"error": "json"}, status_code=400)
    cur = _db().execute("INSERT OR IGNORE INTO events (event_id, received_at, body) VALUES (?, ?, ?)",
                        (headers["webhook-id"], time.time(), body.decode()))
    if cur.rowcount == 0:
        return JSONResponse({"duplicate": True})
    return JSONResponse({"accepted": True})
