"""Pipeline state in one SQLite file: checkpoints, dead letters and run history.

Python's ``sqlite3`` in WAL mode for this first slice (the core's ``store`` area will take it
over). A checkpoint and the dead letters of the records it moves past are committed in one
transaction, so after a crash either both are there or neither is, and the records are read
again: at-least-once.

Everything read back from the file is checked before it is used: a damaged file (an edited
checkpoint, bad JSON, flipped bytes, a dropped table) raises ``StateError`` naming the file and
what is wrong, never a bare ``sqlite3`` or JSON error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import tempfile
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from isthmus import errors

__all__ = ["StateStore"]

log = logging.getLogger("isthmus.store")

_TABLES = {
    "runs": """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    status TEXT NOT NULL,             -- running, completed, failed, interrupted
    counts TEXT NOT NULL DEFAULT '{}',
    error TEXT
)""",
    "checkpoints": """
CREATE TABLE IF NOT EXISTS checkpoints (
    pipeline TEXT PRIMARY KEY,
    position TEXT,                    -- where the next run resumes; NULL when the stream is done
    incremental TEXT,                 -- the incremental cursor state after the last complete run
    updated_at REAL NOT NULL,
    run_id INTEGER,
    identity TEXT                     -- the source the checkpoint belongs to (Stream.identity)
)""",
    "dead_letters": """
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
    resolved_at REAL,                 -- set when a replay delivered it, or a later run a newer version
    resolution TEXT,                  -- replayed, superseded; NULL while open
    UNIQUE (pipeline, stage, record_key)
)""",
}

_TABLE_COLUMNS = {t: re.findall(r"^\s+([a-z_]+) [A-Z]", ddl, re.M) for t, ddl in _TABLES.items()}

# Columns added after the first schema, with what fills them in an older file.
_ADDED_COLUMNS: Dict[str, List[Tuple[str, str, Optional[str]]]] = {
    "checkpoints": [("identity", "TEXT", None)],
    "dead_letters": [("resolution", "TEXT",
                      "UPDATE dead_letters SET resolution = 'replayed' WHERE resolved_at IS NOT NULL")],
}

DEAD_LETTER_COLUMNS = ["id", "record_key", "stage", "record", "error", "traceback", "http_status",
                       "response_excerpt", "attempts", "first_seen", "last_seen", "run_id",
                       "resolved_at", "resolution"]

_RUN_COLUMNS = ["id", "pipeline", "started_at", "finished_at", "status", "counts", "error"]

# What each column read back must hold; SQLite itself would store anything in any column.
_NUMBER, _TEXT, _INT = (int, float), (str,), (int,)
_OPTIONAL = type(None)
_DEAD_LETTER_TYPES = {
    "id": _INT, "record_key": _TEXT, "stage": _TEXT, "record": _TEXT, "error": _TEXT,
    "traceback": (str, _OPTIONAL), "http_status": (int, _OPTIONAL), "response_excerpt": (str, _OPTIONAL),
    "attempts": _INT, "first_seen": _NUMBER, "last_seen": _NUMBER, "run_id": (int, _OPTIONAL),
    "resolved_at": (int, float, _OPTIONAL), "resolution": (str, _OPTIONAL),
}
_RUN_TYPES = {
    "id": _INT, "pipeline": _TEXT, "started_at": _NUMBER, "finished_at": (int, float, _OPTIONAL),
    "status": _TEXT, "counts": _TEXT, "error": (str, _OPTIONAL),
}

_RESTORE_HINT = ("Move it aside and restore a backup (`isthmus state backup`), or delete it to start "
                 "again from the beginning.")


def _json_kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


class StateStore:
    """One pipeline state file. Safe to read from another process (a notebook) while a run writes.

    ``create=False`` refuses a file that does not exist instead of creating it (for tools that
    only read state).
    """

    def __init__(self, path: str, *, create: bool = True):
        self.path = str(path)
        if self.path == ":memory:":
            pass  # nothing on disk to check or to create
        elif not os.path.exists(self.path):
            if not create:
                raise errors.StateError(f"state file {self.path} does not exist")
            self._create()
        elif os.path.getsize(self.path) == 0:
            # SQLite would take an empty file for a new database and start over from scratch:
            # a truncated state file must stop the run instead of silently forgetting checkpoints.
            raise errors.StateError(
                f"state file {self.path} is empty (truncated?): it holds no checkpoint or dead letter. "
                + _RESTORE_HINT)
        with self._guard("cannot be opened"):
            self._db = self._connect(self.path)
        try:
            with self._guard("cannot be read"):
                self._ensure_schema()
        except BaseException:
            self._db.close()
            raise

    @staticmethod
    def default_path(pipeline: str, folder: str = ".") -> str:
        """Where a pipeline keeps its state when given no ``state=``: ``<pipeline>.isthmus.db``
        in ``folder`` (characters unsafe in a file name become ``_``)."""
        return os.path.join(folder, re.sub(r"[^A-Za-z0-9._-]", "_", pipeline).lstrip(".") + ".isthmus.db")

    @staticmethod
    def _connect(path: str) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit, one per checkpoint.
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (only a power loss can drop the last commit).
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _create(self) -> None:
        """Builds the new file complete beside its place, then links it in: another process or
        thread opening the same new path at the same moment sees no file or a whole one, never
        the empty file SQLite starts with (which would pass for a truncated state file)."""
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            fd, tmp = tempfile.mkstemp(prefix=os.path.basename(self.path) + ".", suffix=".new", dir=folder)
        except OSError as exc:
            raise errors.StateError(f"state file {self.path} cannot be created: {exc}") from exc
        os.close(fd)
        try:
            with self._guard("cannot be created"):
                db = self._connect(tmp)
                try:
                    db.execute("BEGIN IMMEDIATE")
                    for ddl in _TABLES.values():
                        db.execute(ddl)
                    db.execute("COMMIT")
                finally:
                    db.close()
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass  # another opener won; its file is as complete as this one
            except OSError:
                # A file system without hard links: a file moved over the path could replace
                # another opener's, so create it in place (the narrow race returns).
                sqlite3.connect(self.path).close()
        finally:
            for leftover in (tmp, tmp + "-wal", tmp + "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)

    def _columns(self) -> Dict[str, List[str]]:
        names = [r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: [c[1] for c in self._db.execute(f"PRAGMA table_info({t})")] for t in _TABLES if t in names}

    def _ensure_schema(self) -> None:
        """Creates the tables in a file that has none, adds the columns an older file lacks, and
        refuses a file that lost a table or a column."""
        if self._schema_problem(self._columns()) is None:
            return  # the common case, read only: a notebook opening a file a run is writing
        with self._transaction() as db:
            # Looked at again under the write lock: another opener may have migrated it meanwhile.
            have = self._columns()
            if not have:
                for ddl in _TABLES.values():
                    db.execute(ddl)
                have = self._columns()
            problem = self._schema_problem(have, allow_added=True)
            if problem:
                raise errors.StateError(f"state file {self.path}: {problem}: it is damaged or not an "
                                        "isthmus state file. " + _RESTORE_HINT)
            for table, added in _ADDED_COLUMNS.items():
                for column, kind, fill in added:
                    if column not in have[table]:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                        if fill:
                            db.execute(fill)

    @staticmethod
    def _schema_problem(have: Dict[str, List[str]], allow_added: bool = False) -> Optional[str]:
        if not have:
            return "it has no tables"
        for table in _TABLES:
            if table not in have:
                return f"table {table} is missing"
            added = {c for c, _, _ in _ADDED_COLUMNS.get(table, [])} if allow_added else set()
            missing = [c for c in _TABLE_COLUMNS[table] if c not in have[table] and c not in added]
            if missing:
                return f"table {table} has no column {missing[0]}"
        return None

    @contextlib.contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        """Turns SQLite's errors into a StateError naming the file."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise self._unreadable(doing, exc) from exc
            raise errors.StateError(f"state file {self.path} {doing}: another process held it locked "
                                    f"for more than 5 s ({exc})") from exc
        except sqlite3.DatabaseError as exc:
            raise self._unreadable(doing, exc) from exc

    def _unreadable(self, doing: str, exc: BaseException) -> errors.StateError:
        return errors.StateError(f"state file {self.path} {doing} ({exc}): it is damaged or not an isthmus "
                                 "state file. " + _RESTORE_HINT)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (taking the write lock at once), rolled back on any error."""
        db = self._db
        with self._guard("cannot be written"):
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (a damaged page ends the transaction).
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _damaged(self, what: str) -> errors.StateError:
        return errors.StateError(f"state file {self.path}: {what}. " + _RESTORE_HINT)

    def _decode(self, text: Any, where: str, kind: Optional[type] = None) -> Any:
        """One JSON value read back from the file; NULL is None."""
        if text is None or text == "":
            return None
        if not isinstance(text, str):
            raise self._damaged(f"{where} holds {type(text).__name__} data where JSON text belongs")
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise self._damaged(f"{where} is not valid JSON ({exc})") from None
        if kind is not None and value is not None and not isinstance(value, kind):
            raise self._damaged(f"{where} is {_json_kind(value)}, expected an object")
        return value

    def _checked(self, row: Sequence[Any], columns: List[str], types: Dict[str, Tuple[type, ...]],
                 where: str) -> Dict[str, Any]:
        d = dict(zip(columns, row))
        for column, allowed in types.items():
            value = d[column]
            if not isinstance(value, allowed):
                raise self._damaged(f"{where}: column {column} holds {type(value).__name__} {value!r:.40}")
        return d

    def close(self) -> None:
        self._db.close()

    def backup(self, dest: str) -> None:
        """A consistent copy of the whole file at ``dest``, taken with SQLite's backup API; safe
        while a run writes. Copying a WAL database with ``cp`` can miss the commits still in its
        ``-wal`` file or catch one half written. ``dest`` must not exist yet."""
        dest = str(dest)
        if os.path.exists(dest):
            raise errors.StateError(f"backup of {self.path}: {dest} already exists; choose a new name")
        folder = os.path.dirname(os.path.abspath(dest))
        try:
            fd, tmp = tempfile.mkstemp(prefix=os.path.basename(dest) + ".", suffix=".partial", dir=folder)
        except OSError as exc:
            raise errors.StateError(f"backup of {self.path}: {dest} cannot be created: {exc}") from exc
        os.close(fd)
        try:
            with self._guard("cannot be backed up"):
                copy = sqlite3.connect(tmp)
                try:
                    self._db.backup(copy)
                finally:
                    copy.close()
            # Put in place whole, so a crash mid-copy never leaves a truncated backup at dest.
            try:
                os.link(tmp, dest)
            except FileExistsError:
                raise errors.StateError(f"backup of {self.path}: {dest} already exists; choose a new name") from None
            except OSError:
                os.replace(tmp, dest)  # a file system without hard links
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    # -- runs ------------------------------------------------------------------------------
    def begin_run(self, pipeline: str) -> int:
        with self._guard("cannot be written"):
            cur = self._db.execute("INSERT INTO runs (pipeline, started_at, status) VALUES (?, ?, 'running')",
                                   (pipeline, time.time()))
        assert cur.lastrowid is not None  # an INSERT that did not raise always sets it
        return cur.lastrowid

    def finish_run(self, run_id: int, status: str, counts: Dict[str, Any], error: Optional[str] = None) -> None:
        with self._guard("cannot be written"):
            self._db.execute("UPDATE runs SET finished_at = ?, status = ?, counts = ?, error = ? WHERE id = ?",
                             (time.time(), status, json.dumps(counts), error, run_id))

    def runs(self, pipeline: Optional[str] = None) -> List[Dict[str, Any]]:
        sql = f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs"
        args: Tuple[str, ...] = ()
        if pipeline is not None:
            sql += " WHERE pipeline = ?"
            args = (pipeline,)
        out = []
        with self._guard("cannot be read"):
            rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        for row in rows:
            d = self._checked(row, _RUN_COLUMNS, _RUN_TYPES, f"run {row[0]!r:.20}")
            where = f"the counts of run {d['id']}"
            d["counts"] = self._decode(d["counts"] or "{}", where, dict)
            if not isinstance(d["counts"].get("stage_seconds") or {}, dict):
                raise self._damaged(f"{where}: stage_seconds is {_json_kind(d['counts']['stage_seconds'])}, "
                                    "expected an object")
            out.append(d)
        return out

    # -- checkpoints -----------------------------------------------------------------------
    def load(self, pipeline: str) -> Dict[str, Any]:
        with self._guard("cannot be read"):
            row = self._db.execute("SELECT position, incremental FROM checkpoints WHERE pipeline = ?",
                                   (pipeline,)).fetchone()
        if row is None:
            return {"position": None, "incremental": None}
        where = f"the checkpoint of pipeline {pipeline!r}"
        return {"position": self._decode(row[0], where + " (position)", dict),
                "incremental": self._decode(row[1], where + " (incremental)", dict)}

    def claim(self, pipeline: str, identity: str, *, adopt: bool = False) -> Dict[str, Any]:
        """The checkpoint a run of ``pipeline`` reading ``identity`` resumes from, checked.

        A checkpoint saved by another source under the same name raises StateError, unless
        ``adopt`` (the user named the pipeline, so says this is its state): then, as for a
        file from before identities were kept, the checkpoint is filed under ``identity``."""
        with self._transaction() as db:
            row = db.execute("SELECT identity FROM checkpoints WHERE pipeline = ?", (pipeline,)).fetchone()
            if row is None:
                db.execute("INSERT INTO checkpoints (pipeline, updated_at, identity) VALUES (?, ?, ?)",
                           (pipeline, time.time(), identity))
            elif row[0] != identity:
                if row[0] is not None and not adopt:
                    raise errors.StateError(
                        f"state file {self.path}: pipeline {pipeline!r} holds the checkpoint of "
                        f"{row[0]!s:.300}, but this pipeline reads {identity}. Give this pipeline its own "
                        f"name= or state=; or, if it is the same data, pass name={pipeline!r} to "
                        "file the checkpoint under this source.")
                if row[0] is not None:
                    log.warning("state %s: pipeline %r: checkpoint of %s now filed under %s (named explicitly)",
                                self.path, pipeline, row[0], identity)
                db.execute("UPDATE checkpoints SET identity = ? WHERE pipeline = ?", (identity, pipeline))
        return self.load(pipeline)

    @staticmethod
    def token(state: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """The source's token a run resumes from, out of a checkpoint as ``load`` returns it.

        The token is the ``position``. A file from before sources had tokens kept a stream's
        incremental cursor in a column of its own: while that column is set it is folded into
        the token here (under ``incremental``); the next commit, given ``incremental=None``,
        clears it."""
        token = state["position"]
        if state["incremental"] is not None:
            token = {**(token or {}), "incremental": state["incremental"]}
        return token  # type: ignore[no-any-return]

    def damaged_checkpoint(self, pipeline: str, problem: str) -> errors.StateError:
        """The error for a checkpoint its source refuses (``problem`` says why), naming the file."""
        return self._damaged(f"the checkpoint of pipeline {pipeline!r} {problem}")

    def identity(self, pipeline: str) -> Optional[str]:
        """The source the checkpoint of ``pipeline`` was saved by (None before its first run)."""
        with self._guard("cannot be read"):
            row = self._db.execute("SELECT identity FROM checkpoints WHERE pipeline = ?", (pipeline,)).fetchone()
        return None if row is None else row[0]

    def commit(self, pipeline: str, run_id: int, position: Any,
               dead_letters: Iterable[Dict[str, Any]] = (), incremental: Any = ...,
               resolved: Iterable[int] = (), superseded: Iterable[str] = ()) -> None:
        """Moves the checkpoint and records dead letters, atomically. ``superseded``: keys of
        records the run delivered, whose open dead letters a newer version now replaces."""
        now = time.time()
        with self._transaction() as db:
            for d in dead_letters:
                self._put_dead_letter(pipeline, run_id, d, now)
            self._resolve(resolved, now)
            db.executemany("UPDATE dead_letters SET resolved_at = ?, resolution = 'superseded' "
                           "WHERE pipeline = ? AND record_key = ? AND resolved_at IS NULL",
                           [(now, pipeline, k) for k in superseded])
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

    # -- dead letters ----------------------------------------------------------------------
    def _put_dead_letter(self, pipeline: str, run_id: int, d: Dict[str, Any], now: float) -> None:
        # The same record failing again (a rerun after a crash, a failed replay, a newer version
        # failing too) is one open dead letter with more attempts, not a second one.
        self._db.execute(
            "INSERT INTO dead_letters (pipeline, record_key, stage, record, error, traceback, http_status, "
            "response_excerpt, attempts, first_seen, last_seen, run_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (pipeline, stage, record_key) DO UPDATE SET record = excluded.record, "
            "error = excluded.error, traceback = excluded.traceback, http_status = excluded.http_status, "
            "response_excerpt = excluded.response_excerpt, "
            "attempts = dead_letters.attempts + excluded.attempts, last_seen = excluded.last_seen, "
            "run_id = excluded.run_id, resolved_at = NULL, resolution = NULL",
            (pipeline, str(d["record_key"]), d["stage"], json.dumps(d["record"], default=str),
             d["error"], d.get("traceback"), d.get("http_status"), d.get("response_excerpt"),
             int(d.get("attempts", 1)), now, now, run_id))

    def _resolve(self, ids: Iterable[int], now: float) -> None:
        self._db.executemany("UPDATE dead_letters SET resolved_at = ?, resolution = 'replayed' WHERE id = ?",
                             [(now, i) for i in ids])

    def resolve(self, ids: Iterable[int]) -> None:
        """Marks dead letters delivered by a replay; the checkpoint is left as it is."""
        with self._transaction():
            self._resolve(ids, time.time())

    def open_dead_letter_keys(self, pipeline: str) -> Set[str]:
        """The record keys of ``pipeline``'s open dead letters."""
        with self._guard("cannot be read"):
            rows = self._db.execute("SELECT DISTINCT record_key FROM dead_letters "
                                    "WHERE pipeline = ? AND resolved_at IS NULL", (pipeline,)).fetchall()
        return {str(r[0]) for r in rows}

    def dead_letters(self, pipeline: Optional[str] = None, run_id: Optional[int] = None,
                     where: Optional[str] = None, include_resolved: bool = False,
                     params: Tuple[Any, ...] = (), include_superseded: bool = False) -> List[Dict[str, Any]]:
        """Dead letters as dicts (``record`` decoded). ``where`` is an SQL condition on the columns.
        Open ones only, unless ``include_resolved`` (all) or ``include_superseded`` (open ones and
        those a later run delivered a newer version of)."""
        clauses: List[str] = []
        args: List[Any] = []
        if pipeline is not None:
            clauses.append("pipeline = ?")
            args.append(pipeline)
        if run_id is not None:
            clauses.append("run_id = ?")
            args.append(run_id)
        if not include_resolved:
            clauses.append("(resolved_at IS NULL OR resolution = 'superseded')" if include_superseded
                           else "resolved_at IS NULL")
        if where:
            clauses.append(f"({where})")
            args.extend(params)
        sql = f"SELECT {', '.join(DEAD_LETTER_COLUMNS)} FROM dead_letters"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        if where:
            try:  # prepared alone first, so a bad condition is not taken for a damaged file
                self._db.execute(f"SELECT 1 FROM dead_letters WHERE ({where}) LIMIT 0", tuple(params))
            except sqlite3.OperationalError as exc:
                raise errors.ConfigError(f"where: {where!r} is not a valid condition on the dead-letter "
                                         f"columns ({exc}); columns: {', '.join(DEAD_LETTER_COLUMNS)}") from None
        out = []
        with self._guard("cannot be read"):
            rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        for row in rows:
            d = self._checked(row, DEAD_LETTER_COLUMNS, _DEAD_LETTER_TYPES, f"dead letter {row[0]!r:.20}")
            d["record"] = self._decode(d["record"], f"the record of dead letter {d['id']}")
            out.append(d)
        return out

    def bump_dead_letter(self, dl_id: int, error: str, http_status: Optional[int],
                         excerpt: Optional[str], traceback: Optional[str] = None, *,
                         stage: Optional[str] = None, record: Any = None) -> None:
        """One more failed attempt of a dead letter. With ``stage`` (and the ``record`` as that
        stage saw it), the stage it fails at now; an older dead letter of the same record at
        that stage is superseded by this one."""
        with self._transaction() as db:
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

    def pipelines(self) -> List[str]:
        with self._guard("cannot be read"):
            rows = self._db.execute("SELECT pipeline FROM runs UNION SELECT pipeline FROM checkpoints "
                                    "UNION SELECT pipeline FROM dead_letters ORDER BY 1").fetchall()
        return [str(r[0]) for r in rows]
