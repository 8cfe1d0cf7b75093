"""Pipeline state in one SQLite file: checkpoints, dead letters and run history.

Python's ``sqlite3`` in WAL mode for this first slice (the core's ``store`` area will take it
over). A checkpoint and the dead letters of the records it moves past are committed in one
transaction, so after a crash either both are there or neither is, and the records are read
again: at-least-once.
"""

from __future__ import annotations

import json
import os
import sqlite3

from isthmus import errors
import time
from typing import Any, Dict, Iterable, List, Optional

__all__ = ["StateStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    status TEXT NOT NULL,             -- running, completed, failed, interrupted
    counts TEXT NOT NULL DEFAULT '{}',
    error TEXT
);
CREATE TABLE IF NOT EXISTS checkpoints (
    pipeline TEXT PRIMARY KEY,
    position TEXT,                    -- where the next run resumes; NULL when the stream is done
    incremental TEXT,                 -- the incremental cursor state after the last complete run
    updated_at REAL NOT NULL,
    run_id INTEGER
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline TEXT NOT NULL,
    record_key TEXT NOT NULL,
    stage TEXT NOT NULL,              -- map, sink
    record TEXT NOT NULL,             -- JSON: the source record (map) or the mapped one (sink)
    error TEXT NOT NULL,
    traceback TEXT,
    http_status INTEGER,
    response_excerpt TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    run_id INTEGER,
    resolved_at REAL,                 -- set when a replay delivered it
    UNIQUE (pipeline, stage, record_key)
);
"""

DEAD_LETTER_COLUMNS = ["id", "record_key", "stage", "record", "error", "traceback", "http_status",
                       "response_excerpt", "attempts", "first_seen", "last_seen", "run_id",
                       "resolved_at"]


class StateStore:
    """One pipeline state file. Safe to read from another process (a notebook) while a run writes."""

    def __init__(self, path: str):
        self.path = str(path)
        # SQLite would take an empty file for a new database and start over from scratch:
        # a truncated state file must stop the run instead of silently forgetting checkpoints.
        if os.path.exists(self.path) and os.path.getsize(self.path) == 0:
            raise errors.StateError(
                f"state file {self.path} is empty (truncated?): it holds no checkpoint or dead letter. "
                "Restore it from a copy, or delete it to start again from the beginning.")
        try:
            # isolation_level=None: transactions are explicit, one per checkpoint.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash (only a power loss can drop the last commit).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise errors.StateError(
                f"state file {self.path} cannot be read ({exc}): it is damaged or not an isthmus "
                "state file. Move it aside and restore a copy, or delete it to start again.") from None

    def close(self) -> None:
        self._db.close()

    # -- runs ------------------------------------------------------------------------------
    def begin_run(self, pipeline: str) -> int:
        cur = self._db.execute("INSERT INTO runs (pipeline, started_at, status) VALUES (?, ?, 'running')",
                               (pipeline, time.time()))
        return int(cur.lastrowid)

    def finish_run(self, run_id: int, status: str, counts: Dict[str, Any], error: Optional[str] = None) -> None:
        self._db.execute("UPDATE runs SET finished_at = ?, status = ?, counts = ?, error = ? WHERE id = ?",
                         (time.time(), status, json.dumps(counts), error, run_id))

    def runs(self, pipeline: Optional[str] = None) -> List[Dict[str, Any]]:
        sql = "SELECT id, pipeline, started_at, finished_at, status, counts, error FROM runs"
        args: tuple = ()
        if pipeline is not None:
            sql += " WHERE pipeline = ?"
            args = (pipeline,)
        out = []
        for row in self._db.execute(sql + " ORDER BY id", args):
            d = dict(zip(["id", "pipeline", "started_at", "finished_at", "status", "counts", "error"], row))
            d["counts"] = json.loads(d["counts"] or "{}")
            out.append(d)
        return out

    # -- checkpoints -----------------------------------------------------------------------
    def load(self, pipeline: str) -> Dict[str, Any]:
        row = self._db.execute("SELECT position, incremental FROM checkpoints WHERE pipeline = ?",
                               (pipeline,)).fetchone()
        if row is None:
            return {"position": None, "incremental": None}
        return {"position": json.loads(row[0]) if row[0] else None,
                "incremental": json.loads(row[1]) if row[1] else None}

    def commit(self, pipeline: str, run_id: int, position: Any,
               dead_letters: Iterable[Dict[str, Any]] = (), incremental: Any = ...,
               resolved: Iterable[int] = ()) -> None:
        """Moves the checkpoint and records dead letters, atomically."""
        now = time.time()
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for d in dead_letters:
                self._put_dead_letter(pipeline, run_id, d, now)
            for dl_id in resolved:
                db.execute("UPDATE dead_letters SET resolved_at = ? WHERE id = ?", (now, dl_id))
            pos = None if position is None else json.dumps(position)
            if incremental is ...:
                db.execute(
                    "INSERT INTO checkpoints (pipeline, position, updated_at, run_id) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (pipeline) DO UPDATE SET position = excluded.position, "
                    "updated_at = excluded.updated_at, run_id = excluded.run_id",
                    (pipeline, pos, now, run_id))
            else:
                inc = None if incremental is None else json.dumps(incremental)
                db.execute(
                    "INSERT INTO checkpoints (pipeline, position, incremental, updated_at, run_id) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (pipeline) DO UPDATE SET "
                    "position = excluded.position, incremental = excluded.incremental, "
                    "updated_at = excluded.updated_at, run_id = excluded.run_id",
                    (pipeline, pos, inc, now, run_id))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- dead letters ----------------------------------------------------------------------
    def _put_dead_letter(self, pipeline: str, run_id: int, d: Dict[str, Any], now: float) -> None:
        # The same record failing again (a rerun after a crash, a failed replay) is one dead
        # letter with more attempts, not a second one.
        self._db.execute(
            "INSERT INTO dead_letters (pipeline, record_key, stage, record, error, traceback, http_status, "
            "response_excerpt, attempts, first_seen, last_seen, run_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (pipeline, stage, record_key) DO UPDATE SET record = excluded.record, "
            "error = excluded.error, traceback = excluded.traceback, http_status = excluded.http_status, "
            "response_excerpt = excluded.response_excerpt, "
            "attempts = dead_letters.attempts + excluded.attempts, last_seen = excluded.last_seen, "
            "run_id = excluded.run_id, resolved_at = NULL",
            (pipeline, str(d["record_key"]), d["stage"], json.dumps(d["record"], default=str),
             d["error"], d.get("traceback"), d.get("http_status"), d.get("response_excerpt"),
             int(d.get("attempts", 1)), now, now, run_id))

    def dead_letters(self, pipeline: Optional[str] = None, run_id: Optional[int] = None,
                     where: Optional[str] = None, include_resolved: bool = False,
                     params: tuple = ()) -> List[Dict[str, Any]]:
        """Dead letters as dicts (``record`` decoded). ``where`` is an SQL condition on the columns."""
        clauses, args = [], []
        if pipeline is not None:
            clauses.append("pipeline = ?")
            args.append(pipeline)
        if run_id is not None:
            clauses.append("run_id = ?")
            args.append(run_id)
        if not include_resolved:
            clauses.append("resolved_at IS NULL")
        if where:
            clauses.append(f"({where})")
            args.extend(params)
        sql = f"SELECT {', '.join(DEAD_LETTER_COLUMNS)} FROM dead_letters"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        out = []
        for row in self._db.execute(sql + " ORDER BY id", args):
            d = dict(zip(DEAD_LETTER_COLUMNS, row))
            d["record"] = json.loads(d["record"])
            out.append(d)
        return out

    def bump_dead_letter(self, dl_id: int, error: str, http_status: Optional[int],
                         excerpt: Optional[str], traceback: Optional[str] = None, *,
                         stage: Optional[str] = None, record: Any = None) -> None:
        """One more failed attempt of a dead letter. With ``stage`` (and the ``record`` as that
        stage saw it), the stage it fails at now; an older dead letter of the same record at
        that stage is superseded by this one."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT pipeline, record_key, stage FROM dead_letters WHERE id = ?",
                             (dl_id,)).fetchone()
            if row is not None and stage is not None and stage != row[2]:
                db.execute("DELETE FROM dead_letters WHERE pipeline = ? AND record_key = ? AND stage = ?",
                           (row[0], row[1], stage))
                db.execute("UPDATE dead_letters SET stage = ?, record = ? WHERE id = ?",
                           (stage, json.dumps(record, default=str), dl_id))
            # At another stage now, the old stage's traceback no longer applies.
            keep_tb = stage is None or row is None or stage == row[2]
            db.execute(
                "UPDATE dead_letters SET attempts = attempts + 1, last_seen = ?, error = ?, http_status = ?, "
                "response_excerpt = ?, traceback = " + ("COALESCE(?, traceback)" if keep_tb else "?") +
                " WHERE id = ?",
                (time.time(), error, http_status, excerpt, traceback, dl_id))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def pipelines(self) -> List[str]:
        rows = self._db.execute("SELECT pipeline FROM runs UNION SELECT pipeline FROM checkpoints "
                                "UNION SELECT pipeline FROM dead_letters ORDER BY 1")
        return [r[0] for r in rows]
