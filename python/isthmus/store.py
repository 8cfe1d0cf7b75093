"""Pipeline state in one SQLite file: checkpoints, dead letters and run history.

The store is the core's (``cpp/include/isthmus/store/state_store.hpp``, over its one SQLite
helper, in WAL mode); this module is its typed face, and the place JSON columns are encoded and
decoded. A checkpoint and the dead letters of the records it moves past are committed in one
transaction, so after a crash either both are there or neither is, and the records are read
again: at-least-once.

Everything read back from the file is checked before it is used: a damaged file (an edited
checkpoint, bad JSON, flipped bytes, a dropped table) raises ``StateError`` naming the file and
what is wrong, never a bare SQLite or JSON error.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from isthmus import _core, errors

__all__ = ["StateStore"]

log = logging.getLogger("isthmus.store")

DEAD_LETTER_COLUMNS: List[str] = list(_core.StateStore.dead_letter_columns)


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
        # The core creates a missing file whole (so openers racing to create it all get the
        # complete schema), refuses an empty one (a truncated file must not silently start
        # over) and migrates an older layout.
        self._core = _core.StateStore(self.path, create=create)

    @staticmethod
    def default_path(pipeline: str, folder: str = ".") -> str:
        """Where a pipeline keeps its state when given no ``state=``: ``<pipeline>.isthmus.db``
        in ``folder`` (characters unsafe in a file name become ``_``)."""
        return os.path.join(folder, re.sub(r"[^A-Za-z0-9._-]", "_", pipeline).lstrip(".") + ".isthmus.db")

    def _damaged(self, what: str) -> errors.StateError:
        return errors.StateError(self._core.damaged_message(what))

    def _decode(self, text: Optional[str], where: str, kind: Optional[type] = None) -> Any:
        """One JSON value read back from the file (the core checked it is text); NULL is None."""
        if text is None or text == "":
            return None
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise self._damaged(f"{where} is not valid JSON ({exc})") from None
        if kind is not None and value is not None and not isinstance(value, kind):
            raise self._damaged(f"{where} is {_json_kind(value)}, expected an object")
        return value

    def _checkpoint(self, pipeline: str, row: Dict[str, Optional[str]]) -> Dict[str, Any]:
        where = f"the checkpoint of pipeline {pipeline!r}"
        return {"position": self._decode(row["position"], where + " (position)", dict),
                "incremental": self._decode(row["incremental"], where + " (incremental)", dict)}

    def close(self) -> None:
        self._core.close()

    def backup(self, dest: str) -> None:
        """A consistent copy of the whole file at ``dest``, taken with SQLite's backup API in the
        core and put in place whole; safe while a run writes. Copying a WAL database with ``cp``
        can miss the commits still in its ``-wal`` file or catch one half written. ``dest`` must
        not exist yet."""
        self._core.backup(str(dest))

    # -- runs ------------------------------------------------------------------------------
    def begin_run(self, pipeline: str) -> int:
        return self._core.begin_run(pipeline)

    def finish_run(self, run_id: int, status: str, counts: Dict[str, Any], error: Optional[str] = None) -> None:
        self._core.finish_run(run_id, status, json.dumps(counts), error)

    def runs(self, pipeline: Optional[str] = None) -> List[Dict[str, Any]]:
        out = []
        for d in self._core.runs(pipeline):
            where = f"the counts of run {d['id']}"
            d["counts"] = self._decode(d["counts"] or "{}", where, dict)
            if not isinstance(d["counts"].get("stage_seconds") or {}, dict):
                raise self._damaged(f"{where}: stage_seconds is {_json_kind(d['counts']['stage_seconds'])}, "
                                    "expected an object")
            out.append(d)
        return out

    # -- checkpoints -----------------------------------------------------------------------
    def load(self, pipeline: str) -> Dict[str, Any]:
        return self._checkpoint(pipeline, self._core.load(pipeline))

    def claim(self, pipeline: str, identity: str, *, adopt: bool = False) -> Dict[str, Any]:
        """The checkpoint a run of ``pipeline`` reading ``identity`` resumes from, checked.

        A checkpoint saved by another source under the same name raises StateError, unless
        ``adopt`` (the user named the pipeline, so says this is its state): then, as for a
        file from before identities were kept, the checkpoint is filed under ``identity``."""
        row, moved_from = self._core.claim(pipeline, identity, adopt)
        if moved_from is not None:
            log.warning("state %s: pipeline %r: checkpoint of %s now filed under %s (named explicitly)",
                        self.path, pipeline, moved_from, identity)
        return self._checkpoint(pipeline, row)

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
        return self._core.identity(pipeline)

    def commit(self, pipeline: str, run_id: int, position: Any,
               dead_letters: Iterable[Dict[str, Any]] = (), incremental: Any = ...,
               resolved: Iterable[int] = (), superseded: Iterable[str] = (),
               dead_letters_of: str = "") -> None:
        """Moves the checkpoint and records dead letters, atomically. ``superseded``: keys of
        records the run delivered, whose open dead letters a newer version now replaces.
        ``dead_letters_of``: the pipeline the dead letters belong to when ``pipeline`` names a
        part of it (a partition's chain on workers)."""
        # Records may hold what JSON cannot (dates, decimals): written as their text.
        dead = [{**d, "record": json.dumps(d["record"], default=str)} for d in dead_letters]
        keep = incremental is ...
        self._core.commit(pipeline, run_id, None if position is None else json.dumps(position), dead,
                          not keep, None if keep or incremental is None else json.dumps(incremental),
                          list(resolved), list(superseded), dead_letters_of)

    # -- dead letters ----------------------------------------------------------------------
    def resolve(self, ids: Iterable[int]) -> None:
        """Marks dead letters delivered by a replay; the checkpoint is left as it is."""
        self._core.resolve(list(ids))

    def open_dead_letter_keys(self, pipeline: str) -> Set[str]:
        """The record keys of ``pipeline``'s open dead letters."""
        return set(self._core.open_dead_letter_keys(pipeline))

    def dead_letters(self, pipeline: Optional[str] = None, run_id: Optional[int] = None,
                     where: Optional[str] = None, include_resolved: bool = False,
                     params: Tuple[Any, ...] = (), include_superseded: bool = False) -> List[Dict[str, Any]]:
        """Dead letters as dicts (``record`` decoded). ``where`` is an SQL condition on the columns.
        Open ones only, unless ``include_resolved`` (all) or ``include_superseded`` (open ones and
        those a later run delivered a newer version of)."""
        include = "all" if include_resolved else "superseded" if include_superseded else "open"
        rows = self._core.dead_letters(pipeline, run_id, include, where or "", tuple(params) if where else ())
        for d in rows:
            d["record"] = self._decode(d["record"], f"the record of dead letter {d['id']}")
        return rows

    def bump_dead_letter(self, dl_id: int, error: str, http_status: Optional[int],
                         excerpt: Optional[str], traceback: Optional[str] = None, *,
                         stage: Optional[str] = None, record: Any = None) -> None:
        """One more failed attempt of a dead letter. With ``stage`` (and the ``record`` as that
        stage saw it), the stage it fails at now; an older dead letter of the same record at
        that stage is superseded by this one."""
        self._core.bump_dead_letter(dl_id, error, http_status, excerpt, traceback, stage,
                                    None if stage is None else json.dumps(record, default=str))

    def pipelines(self) -> List[str]:
        return self._core.pipelines()
