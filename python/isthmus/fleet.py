"""Many customers, one integration: connections, and the fleet that runs them.

::

    fleet = isthmus.Fleet(state="fleet.db", app_limit=isthmus.RateLimit(100))
    crm = isthmus.Integration("crm.yaml", version="3")
    fleet.add(isthmus.Connection("acme", crm, credentials={"api_key": key},
                                 config={"subdomain": "acme"}, schedule="every 15m"))
    fleet.run()            # every due connection's sync, all at once, in this process
    fleet.status()         # one row per connection: status, counts and costs

A connection is one customer's use of an integration: its credentials (sealed in the
encrypted token store inside the fleet's state file), its values for the definition, its
schedule and its status. Each connection runs as its own ``Pipeline`` named
``<integration>/<connection_id>`` in the fleet's state file (its own checkpoint, dead letters
and run history), and every client it builds shares the fleet's one ``Limiter`` under the
limit key ``{"tenant": connection_id}``. A connection whose credentials are refused goes to
``relink_needed`` and waits for ``relink()``; one whose API keeps failing goes ``failing`` and
is tried again after a back-off; the others carry on. See docs/fleet.md.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import logging
import math
import numbers
import re
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

from isthmus import errors
from isthmus.auth import TokenStore
from isthmus.http import _PRIORITY_HEADER, Client
from isthmus.limits import Limiter, RateLimit, Share, _rules_of
from isthmus.pipeline import Pipeline
from isthmus.store import StateStore

__all__ = ["Connection", "Fleet", "Integration"]

log = logging.getLogger("isthmus.fleet")

STATUSES = ("active", "paused", "failing", "relink_needed")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_REF = re.compile(r"\$\{(config|credentials)\.([A-Za-z_][A-Za-z0-9_]*)\}")
_FILE_SUFFIXES = (".yaml", ".yml", ".json")
# What a connection's row sums from its runs, and the fleet's totals.
SUMMED = ("read", "written", "dead_lettered", "dropped", "skipped", "requests", "status_429", "retries",
          "bytes_in", "bytes_out", "wait_seconds", "duration_s")


def _bad(connection: str, field: str, shown: str, valid: str) -> errors.ConfigError:
    return errors.ConfigError(f"connection {connection!r}: {field}: {shown} is not valid; expected {valid}")


def _scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret value in it replaced by ``***``."""
    for value in sorted(secrets, key=len, reverse=True):
        if len(value) >= 3:
            text = text.replace(value, "***")
    return text


# -- schedules -------------------------------------------------------------------------------

_UNITS = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "mins": 60,
          "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
          "d": 86400, "day": 86400, "days": 86400}
_EVERY = re.compile(r"every\s+(\d+(?:\.\d+)?)\s*([a-z]+)")
_DAILY = re.compile(r"daily(?:\s+at\s+(\d{1,2}):(\d{2}))?")


class Schedule:
    """When a connection's sync is due: ``"every 15m"`` (also ``s``, ``h``, ``d`` and the
    words), ``"hourly"`` (on the hour), ``"daily"`` or ``"daily at 02:00"`` (UTC)."""

    def __init__(self, text: str, *, connection: str = "?"):
        if not isinstance(text, str):
            raise _bad(connection, "schedule", repr(text), "text such as 'every 15m', 'hourly' or 'daily at 02:00'")
        self.text = text
        spec = " ".join(text.strip().lower().split())
        self.interval: Optional[float] = None
        self.at: Optional[Tuple[int, int]] = None
        every, daily = _EVERY.fullmatch(spec), _DAILY.fullmatch(spec)
        if every and every.group(2) in _UNITS and float(every.group(1)) > 0:
            self.interval = float(every.group(1)) * _UNITS[every.group(2)]
        elif spec == "hourly":
            self.interval = 3600.0
            self.at = (-1, 0)  # on the hour
        elif daily and (daily.group(1) is None or (int(daily.group(1)) < 24 and int(daily.group(2)) < 60)):
            self.at = (int(daily.group(1) or 0), int(daily.group(2) or 0))
        else:
            raise _bad(connection, "schedule", repr(text), "'every N' with a unit (s, m, h, d: 'every 15m'), "
                       "'hourly', 'daily' or 'daily at HH:MM' (UTC)")

    def next_after(self, t: float) -> float:
        """The first time this schedule is due after ``t`` (Unix seconds)."""
        if self.at is None:
            assert self.interval is not None
            return t + self.interval
        now = _dt.datetime.fromtimestamp(t, _dt.timezone.utc)
        if self.at[0] < 0:
            top = now.replace(minute=0, second=0, microsecond=0) + _dt.timedelta(hours=1)
            return top.timestamp()
        due = now.replace(hour=self.at[0], minute=self.at[1], second=0, microsecond=0)
        if due <= now:
            due += _dt.timedelta(days=1)
        return due.timestamp()

    def __repr__(self) -> str:
        return f"Schedule({self.text!r})"


# -- the integration ---------------------------------------------------------------------------

def _refs(value: Any, found: Dict[str, Set[str]]) -> None:
    if isinstance(value, str):
        for kind, name in _REF.findall(value):
            found[kind].add(name)
    elif isinstance(value, dict):
        for v in value.values():
            _refs(v, found)
    elif isinstance(value, list):
        for v in value:
            _refs(v, found)


def _substitute(value: Any, values: Dict[str, Mapping[str, Any]]) -> Any:
    """``value`` with ``${config.X}`` and ``${credentials.X}`` replaced; a string that is only
    one reference takes the value as it is (a number stays a number)."""
    if isinstance(value, str):
        whole = _REF.fullmatch(value)
        if whole:
            return values[whole.group(1)][whole.group(2)]
        return _REF.sub(lambda m: str(values[m.group(1)][m.group(2)]), value)
    if isinstance(value, dict):
        return {k: _substitute(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, values) for v in value]
    return value


class Integration:
    """One integration definition that many connections run, with its ``version``.

    ``definition``: a pipeline file (YAML or JSON, see docs/pipeline.md) whose strings may hold
    ``${config.NAME}`` and ``${credentials.NAME}``; or a function ``(connection) -> Pipeline``
    (or its ``"module:function"``) that builds the pipeline with ``connection.client(...)`` and
    ``connection.pipeline(...)``. A file declares the config and credential names it uses by
    using them; a function declares them with ``config=`` and ``credentials=``. ``name``
    (default: the file's ``name:``, else its file name; the function's name) names each
    connection's pipeline ``<name>/<connection_id>``.
    """

    def __init__(self, definition: Union[str, Callable[[Connection], Pipeline]], *, version: str = "1",
                 name: Optional[str] = None, config: Sequence[str] = (), credentials: Sequence[str] = ()):
        self._doc: Any = None
        self._base = Path(".")
        self._function: Optional[Callable[[Connection], Pipeline]] = None
        declared: Dict[str, Set[str]] = {"config": set(config), "credentials": set(credentials)}
        if callable(definition):
            self._function = definition
            self.definition = f"{definition.__module__}:{getattr(definition, '__qualname__', '?')}"
            default_name = getattr(definition, "__name__", "integration")
        elif isinstance(definition, str) and definition.endswith(_FILE_SUFFIXES):
            from isthmus.config import _read, validate_pipeline

            path = Path(definition).resolve()
            self.definition = str(path)
            self._doc, self._base = _read(str(path))
            if not isinstance(self._doc, dict):
                validate_pipeline(self._doc)  # names what the file holds instead of a mapping
            _refs(self._doc, declared)
            default_name = self._doc.get("name") or path.stem
        elif isinstance(definition, str) and ":" in definition:
            from isthmus.config import _import

            self._function = _import(definition, "integration", Path("."))
            self.definition = definition
            default_name = definition.rsplit(":", 1)[1].rsplit(".", 1)[-1]
        else:
            raise errors.ConfigError(f"integration: {definition!r} is not valid; expected a pipeline file "
                                     "(.yaml, .yml, .json), a function (connection) -> Pipeline, or 'module:function'")
        if not isinstance(version, str) or not version.strip():
            raise errors.ConfigError(f"integration version: {version!r} is not valid; expected non-empty text")
        self.version = version
        self.name = name if name is not None else str(default_name)
        if not isinstance(self.name, str) or not _ID.fullmatch(self.name):
            raise errors.ConfigError(f"integration name: {self.name!r} is not valid; expected letters, digits, "
                                     "'.', '_' or '-' (it names each connection's pipeline)")
        self.declared = {k: frozenset(v) for k, v in declared.items()}

    def check(self, connection: Connection, credentials: Optional[Mapping[str, str]] = None) -> None:
        """Raises ConfigError naming the connection and the field when its values do not fit
        what this definition declares (a value it does not declare, one a file uses and the
        connection lacks)."""
        cid = connection.connection_id
        given = {"config": set(connection.config),
                 "credentials": set(connection.credentials if credentials is None else credentials)}
        for kind in ("config", "credentials"):
            extra = sorted(given[kind] - self.declared[kind])
            if extra:
                known = ", ".join(sorted(self.declared[kind])) or "none"
                raise errors.ConfigError(
                    f"connection {cid!r}: {kind}.{extra[0]}: the integration {self.name} (version {self.version}) "
                    f"does not declare it; it declares {known}")
            if self._doc is not None:
                missing = sorted(self.declared[kind] - given[kind])
                if missing:
                    raise errors.ConfigError(
                        f"connection {cid!r}: {kind}.{missing[0]}: missing; the integration {self.name} uses "
                        f"${{{kind}.{missing[0]}}}")

    def _build(self, connection: Connection, context: _RunContext) -> Pipeline:
        cid = connection.connection_id
        if self._function is not None:
            connection._context = context
            try:
                built = self._function(connection)
            finally:
                connection._context = None
            if not isinstance(built, Pipeline):
                raise errors.ConfigError(f"connection {cid!r}: integration: {self.definition} returned "
                                         f"{type(built).__name__}, expected an isthmus.Pipeline")
            if built.name != context.name or built.store is not context.store:
                raise errors.ConfigError(f"connection {cid!r}: integration: {self.definition} built its pipeline "
                                         "without connection.pipeline(...); the fleet keeps its state and name")
            client = getattr(built.source, "client", None)
            if client is not None and getattr(client, "limiter", None) is not context.limiter:
                raise errors.ConfigError(f"connection {cid!r}: integration: the source's client was not made with "
                                         "connection.client(...), so it would not share the fleet's allowance")
            return built
        from isthmus.config import connection_pipeline

        doc = _substitute(copy.deepcopy(self._doc), {"config": connection.config,
                                                     "credentials": context.credentials})
        return connection_pipeline(doc, self._base, name=context.name, state=context.store,
                                   client_options=context.client_options())

    def __repr__(self) -> str:
        return f"Integration({self.definition!r}, version={self.version!r}, name={self.name!r})"


# -- the connection ----------------------------------------------------------------------------

class _RunContext:
    """What one run of one connection builds its clients and pipeline with."""

    def __init__(self, name: str, store: StateStore, limiter: Limiter, connection_id: str,
                 credentials: Dict[str, str], priority: str):
        self.name, self.store, self.limiter = name, store, limiter
        self.limit_key = {"tenant": connection_id}
        self.credentials, self.priority = credentials, priority

    def client_options(self) -> Dict[str, Any]:
        return {"rate_limit": self.limiter, "limit_key": dict(self.limit_key),
                "headers": {_PRIORITY_HEADER: self.priority}}


def _text_values(cid: str, field: str, values: Any, secret: bool) -> Dict[str, Any]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise _bad(cid, field, type(values).__name__, "a dict")
    out: Dict[str, Any] = {}
    for k, v in values.items():
        if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise _bad(cid, field, repr(k), "names of letters, digits and '_'")
        ok = isinstance(v, str) if secret else (isinstance(v, (str, int, float, bool)))
        if not ok:
            shown = f"{field}.{k}"
            raise _bad(cid, shown, "a " + type(v).__name__ if secret else repr(v),
                       "text" if secret else "text, a number or true/false")
        out[k] = v
    return out


class Connection:
    """One customer's connection to an integration.

    ``credentials`` (names to text) are kept sealed in the fleet's token store, never in the
    state file's plain rows, a repr, a log line or an error. ``config`` holds the customer's
    values for the definition's ``${config.NAME}``. ``tags`` label it (``end_user_id`` ...).
    ``weight`` (> 0) is its share of the app's allowance when connections compete, ``limit``
    (a ``RateLimit``) an optional cap of its own. ``schedule``: see ``Schedule``; None runs it
    on every ``fleet.run()``. ``status`` is one of ``active``, ``paused``, ``failing``,
    ``relink_needed``, and ``reason`` says why when it is not active.
    """

    def __init__(self, connection_id: str, integration: Union[Integration, str, Callable[..., Pipeline]], *,
                 credentials: Optional[Mapping[str, str]] = None, config: Optional[Mapping[str, Any]] = None,
                 tags: Optional[Mapping[str, str]] = None, weight: float = 1.0,
                 limit: Optional[RateLimit] = None, schedule: Optional[str] = None):
        if not isinstance(connection_id, str) or not _ID.fullmatch(connection_id):
            raise errors.ConfigError(f"connection {connection_id!r}: connection_id: not valid; expected 1 to 128 "
                                     "letters, digits, '.', '_' or '-', starting with a letter or digit")
        cid = self.connection_id = connection_id
        self.integration = integration if isinstance(integration, Integration) else Integration(integration)
        self._credentials: Optional[Dict[str, str]] = _text_values(cid, "credentials", credentials, True)
        self._load_credentials: Optional[Callable[[], Dict[str, str]]] = None
        self.config = _text_values(cid, "config", config, False)
        self.tags = {str(k): str(v) for k, v in _text_values(cid, "tags", tags, False).items()}
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight) \
                or not weight > 0:
            raise _bad(cid, "weight", repr(weight), "a number > 0")
        self.weight: float = float(weight)
        if limit is not None and not isinstance(limit, RateLimit):
            raise _bad(cid, "limit", repr(limit), "an isthmus.RateLimit (its share of the app's allowance) or None")
        self.limit: Optional[RateLimit] = limit
        self.schedule: Optional[Schedule] = None if schedule is None else Schedule(schedule, connection=cid)
        self.status: str = "active"
        self.reason: Optional[str] = None
        self.next_due: Optional[float] = None
        self.last_run_at: Optional[float] = None
        self.failures: int = 0
        self.synced: bool = False  # a sync completed once: later ones run at normal priority
        self._context: Optional[_RunContext] = None

    @property
    def credentials(self) -> Dict[str, str]:
        """A copy of the credentials (read from the fleet's token store for a stored connection)."""
        if self._credentials is None:
            assert self._load_credentials is not None
            self._credentials = self._load_credentials()
        return dict(self._credentials)

    @property
    def pipeline_name(self) -> str:
        return f"{self.integration.name}/{self.connection_id}"

    def _secrets(self) -> List[str]:
        return list((self._credentials or {}).values())

    # -- for an integration function --------------------------------------------------------
    def _run_context(self, what: str) -> _RunContext:
        if self._context is None:
            raise errors.ConfigError(f"connection {self.connection_id!r}: {what} is only for the integration "
                                     "function, while the fleet builds the connection's pipeline")
        return self._context

    def client(self, base_url: str, **options: Any) -> Client:
        """A Client for this connection's run: the fleet's shared Limiter, the limit key
        ``{"tenant": connection_id}`` and the run's priority are set; ``options`` go to Client."""
        context = self._run_context("client()")
        for fixed in ("rate_limit", "limit_key"):
            if fixed in options:
                raise errors.ConfigError(f"connection {self.connection_id!r}: {fixed}: set by the fleet "
                                         "(its app_limit and the connection's weight and limit)")
        made = context.client_options()
        made["headers"] = {**dict(options.pop("headers", None) or {}), **made["headers"]}
        return Client(base_url, **options, **made)

    def pipeline(self, source: Any, **options: Any) -> Pipeline:
        """The Pipeline of this connection's run, named and kept in the fleet's state file;
        ``options`` (``sink``, ``map`` ...) go to Pipeline."""
        context = self._run_context("pipeline()")
        for fixed in ("name", "state"):
            if fixed in options:
                raise errors.ConfigError(f"connection {self.connection_id!r}: {fixed}: set by the fleet "
                                         f"({context.name} in {context.store.path})")
        return Pipeline(source, name=context.name, state=context.store, **options)

    def __repr__(self) -> str:
        schedule = f" schedule={self.schedule.text!r}" if self.schedule else ""
        reason = f" ({self.reason})" if self.reason else ""
        tags = f" tags={self.tags!r}" if self.tags else ""
        return (f"<Connection {self.connection_id!r} {self.integration.name} v{self.integration.version} "
                f"{self.status}{reason} weight={self.weight:g}{schedule}{tags}>")


# -- the fleet's allowance -----------------------------------------------------------------------

def _app_wide(rule: Any) -> Any:
    """The rule counted across every connection: a rule without a scope of its own counts per
    provider (the API's host), not per tenant."""
    if getattr(rule, "scope", None) is not None:
        return rule
    made = copy.copy(rule)
    vars(made).pop("_limiter", None)
    made.scope = ["provider"]
    return made


def fleet_limiter(app_limit: Any, connections: Iterable[Connection], limiter: Optional[Limiter] = None,
                  previous: Iterable[str] = ()) -> Limiter:
    """The fleet's one Limiter, the only place weights and limits go through: ``app_limit``
    across every connection, and each connection's ``weight`` and ``limit`` as the ``Share`` of
    its tenant key (weighted fair queuing in the core's governor; a limit nested in the app's).
    Made when ``limiter`` is None, else brought up to date (the shares of ``previous`` tenants
    no longer among ``connections`` are removed)."""
    connections = list(connections)
    if limiter is None:
        rules = [] if app_limit is None else [_app_wide(r) for r in _rules_of(app_limit)]
        return Limiter(rules, name="fleet",
                       shares={c.connection_id: Share(weight=c.weight, limit=c.limit) for c in connections})
    current = set()
    for c in connections:
        current.add(c.connection_id)
        limiter.set_share(c.connection_id, weight=c.weight, limit=c.limit)
    for gone in set(previous) - current:
        limiter.remove_share(gone)
    return limiter


# -- the registry ------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fleet_connections (
    connection_id TEXT PRIMARY KEY,
    definition TEXT NOT NULL,          -- the pipeline file's path, or module:function
    integration TEXT NOT NULL,         -- its name (pipelines are <integration>/<connection_id>)
    version TEXT NOT NULL,
    declared TEXT NOT NULL,            -- JSON: the config and credential names a function declares
    config TEXT NOT NULL,              -- JSON; credentials are in isthmus_tokens, sealed
    tags TEXT NOT NULL,
    weight REAL NOT NULL,
    rate_limit TEXT,                   -- JSON {rate, per, burst} or NULL
    schedule TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    failures INTEGER NOT NULL DEFAULT 0,
    next_due REAL,
    last_run_at REAL,
    synced INTEGER NOT NULL DEFAULT 0, -- 1 once a sync completed (a first sync runs at priority high)
    created_at REAL NOT NULL
)"""
_COLUMNS = ("connection_id", "definition", "integration", "version", "declared", "config", "tags", "weight",
            "rate_limit", "schedule", "status", "reason", "failures", "next_due", "last_run_at", "synced")


class _Stopped(KeyboardInterrupt):
    """Raised in a connection's run when the fleet is told to stop: the pipeline checkpoints
    what the sink accepted and the run ends ``interrupted``."""


class FleetRun:
    """What one ``fleet.run()`` did, per connection: ``outcomes[id]`` holds ``status`` (the
    run's: completed, failed, interrupted), ``connection_status`` after it, ``run_id`` and
    ``error``."""

    def __init__(self) -> None:
        self.outcomes: Dict[str, Dict[str, Any]] = {}

    @property
    def failed(self) -> List[str]:
        return sorted(k for k, v in self.outcomes.items() if v["status"] != "completed")

    def __repr__(self) -> str:
        done = sum(v["status"] == "completed" for v in self.outcomes.values())
        return f"<FleetRun {len(self.outcomes)} connection(s): {done} completed, failed {self.failed}>"


class Fleet:
    """Connections to one or more integrations, run from one state file.

    ``state``: the SQLite file of every connection's checkpoints, dead letters and runs, of the
    connections themselves, and (sealed, in the token store's table) of their credentials,
    under the 32-byte key in the environment variable ``token_key_env`` (or ``token_key_file``;
    make one with ``TokenStore.generate_key()``). ``app_limit``: the provider's allowance for
    the whole app (``RateLimit(100)``), shared by every connection. ``max_in_flight``: pages
    in flight per connection (its partitions read at once). ``failure_backoff``: seconds
    before a failing connection is tried again, doubling per failure up to ``max_backoff``.
    """

    def __init__(self, state: str = "fleet.db", *, app_limit: Any = None,
                 token_key_env: str = "ISTHMUS_TOKEN_KEY", token_key_file: Optional[str] = None,
                 max_in_flight: int = 2, failure_backoff: float = 60.0, max_backoff: float = 3600.0):
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise errors.ConfigError(f"max_in_flight: {max_in_flight!r} is not valid; expected an int >= 1")
        for field, value in (("failure_backoff", failure_backoff), ("max_backoff", max_backoff)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise errors.ConfigError(f"{field}: {value!r} is not valid; expected seconds > 0")
        if app_limit is not None:
            _rules_of(app_limit)  # a ConfigError now names what is wrong
        self.app_limit = app_limit
        self.max_in_flight, self.failure_backoff, self.max_backoff = max_in_flight, failure_backoff, max_backoff
        self.path = str(state)
        self.store = StateStore(self.path)
        self._token_key = (token_key_env, token_key_file)
        self._tokens: Optional[TokenStore] = None
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = 30000")
        self._db.execute(_SCHEMA)
        self._integrations: Dict[str, Integration] = {}
        self._limiter: Optional[Limiter] = None
        self._shared: Set[str] = set()
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return f"<Fleet {self.path!r}: {len(self.connections())} connection(s), app_limit={self.app_limit!r}>"

    # -- the token store, opened when credentials are first needed ----------------------------
    @property
    def tokens(self) -> TokenStore:
        if self._tokens is None:
            env, key_file = self._token_key
            self._tokens = TokenStore.sqlite(self.path, key_env=env, key_file=key_file)
        return self._tokens

    @staticmethod
    def _secret_id(connection_id: str) -> str:
        return f"connection:{connection_id}"

    def _credentials_of(self, connection_id: str) -> Dict[str, str]:
        return self.tokens.load_secret(self._secret_id(connection_id)) or {}

    # -- rows ----------------------------------------------------------------------------------
    def _query(self, sql: str, params: Sequence[Any] = ()) -> List[Tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, tuple(params)).fetchall())

    def _update(self, connection_id: str, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE fleet_connections SET {sets} WHERE connection_id = ?",
                             (*fields.values(), connection_id))

    def _integration(self, definition: str, version: str, name: str, declared: Dict[str, List[str]]) -> Integration:
        key = json.dumps([definition, version, name])
        found = self._integrations.get(key)
        if found is None:
            found = Integration(definition, version=version, name=name, config=declared.get("config", ()),
                                credentials=declared.get("credentials", ()))
            self._integrations[key] = found
        return found

    def _connection(self, row: Tuple[Any, ...]) -> Connection:
        r = dict(zip(_COLUMNS, row))
        integration = self._integration(r["definition"], r["version"], r["integration"], json.loads(r["declared"]))
        spec = json.loads(r["rate_limit"]) if r["rate_limit"] else None
        limit = RateLimit(spec["rate"], spec["per"], burst=spec["burst"]) if spec else None
        c = Connection(r["connection_id"], integration, config=json.loads(r["config"]), tags=json.loads(r["tags"]),
                       weight=r["weight"], limit=limit, schedule=r["schedule"])
        c._credentials = None
        cid = c.connection_id
        c._load_credentials = lambda: self._credentials_of(cid)
        c.status, c.reason, c.failures = r["status"], r["reason"], r["failures"]
        c.next_due, c.last_run_at = r["next_due"], r["last_run_at"]
        c.synced = bool(r["synced"])
        return c

    # -- managing connections ------------------------------------------------------------------
    def add(self, connection: Connection) -> Connection:
        """Adds a connection (due at once: its first sync runs at the next ``run()``). A
        connection_id already in the fleet, or values the definition does not declare, raise
        ConfigError naming the connection and the field."""
        if not isinstance(connection, Connection):
            raise errors.ConfigError(f"connection: {type(connection).__name__} is not an isthmus.Connection")
        cid = connection.connection_id
        if self._query("SELECT 1 FROM fleet_connections WHERE connection_id = ?", (cid,)):
            raise errors.ConfigError(f"connection {cid!r}: connection_id: already in the fleet {self.path}; "
                                     "remove it first or choose another id")
        integration = connection.integration
        integration.check(connection)
        self._integrations.setdefault(json.dumps([integration.definition, integration.version, integration.name]),
                                      integration)
        self.tokens.save_secret(self._secret_id(cid), connection.credentials)
        limit = connection.limit
        declared = {k: sorted(v) for k, v in integration.declared.items()} if integration._doc is None else {}
        now = time.time()
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO fleet_connections (connection_id, definition, integration, version, declared, config,"
                    " tags, weight, rate_limit, schedule, status, reason, failures, next_due, synced, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', NULL, 0, ?, 0, ?)",
                    (cid, integration.definition, integration.name, integration.version, json.dumps(declared),
                     json.dumps(connection.config), json.dumps(connection.tags), connection.weight,
                     json.dumps({"rate": limit.rate, "per": limit.per, "burst": limit.burst}) if limit else None,
                     connection.schedule.text if connection.schedule else None, now, now))
        except sqlite3.IntegrityError:
            raise errors.ConfigError(f"connection {cid!r}: connection_id: already in the fleet {self.path}") from None
        log.info("fleet %s: connection %s added (%s v%s)", self.path, cid, integration.name, integration.version)
        return self.get(cid)

    def get(self, connection_id: str) -> Connection:
        rows = self._query(f"SELECT {', '.join(_COLUMNS)} FROM fleet_connections WHERE connection_id = ?",
                           (connection_id,))
        if not rows:
            raise errors.ConfigError(f"connection {connection_id!r}: not in the fleet {self.path}")
        return self._connection(rows[0])

    def connections(self) -> List[Connection]:
        return [self._connection(r) for r in
                self._query(f"SELECT {', '.join(_COLUMNS)} FROM fleet_connections ORDER BY connection_id")]

    def pause(self, connection_id: str, reason: Optional[str] = None) -> None:
        """Stops scheduling the connection until ``resume``; a run in progress finishes."""
        self.get(connection_id)
        self._update(connection_id, status="paused", reason=reason or "paused")

    def resume(self, connection_id: str) -> None:
        """A paused or failing connection becomes active and due now. One whose credentials
        were refused needs ``relink`` instead."""
        c = self.get(connection_id)
        if c.status == "relink_needed":
            raise errors.ConfigError(f"connection {connection_id!r}: status: relink_needed ({c.reason}); "
                                     "fleet.relink(id, credentials=...) with credentials the customer granted again")
        self._update(connection_id, status="active", reason=None, failures=0, next_due=time.time())

    def relink(self, connection_id: str, credentials: Mapping[str, str]) -> None:
        """New credentials for the connection (the customer linked the app again): it becomes
        active and due now."""
        c = self.get(connection_id)
        checked = _text_values(connection_id, "credentials", credentials, True)
        c.integration.check(c, credentials=checked)
        self.tokens.save_secret(self._secret_id(connection_id), checked)
        self._update(connection_id, status="active", reason=None, failures=0, next_due=time.time())
        log.info("fleet %s: connection %s relinked", self.path, connection_id)

    def remove(self, connection_id: str) -> None:
        """Removes the connection and its credentials; its pipeline's state (checkpoint, dead
        letters, runs) stays in the state file for support to read."""
        self.get(connection_id)
        with self._lock:
            self._db.execute("DELETE FROM fleet_connections WHERE connection_id = ?", (connection_id,))
        self.tokens.forget(self._secret_id(connection_id))
        if self._limiter is not None:
            self._limiter = fleet_limiter(self.app_limit, self.connections(), self._limiter, self._shared)
            self._shared = {c.connection_id for c in self.connections()}

    # -- running -------------------------------------------------------------------------------
    @property
    def limiter(self) -> Limiter:
        """The fleet's one Limiter, its shares brought up to date with the connections."""
        current = self.connections()
        self._limiter = fleet_limiter(self.app_limit, current, self._limiter, self._shared)
        self._shared = {c.connection_id for c in current}
        return self._limiter

    def due(self, now: Optional[float] = None) -> List[Connection]:
        """The connections a ``run()`` would run now: active or failing, and due."""
        now = time.time() if now is None else now
        return [c for c in self.connections()
                if c.status in ("active", "failing") and (c.next_due is None or c.next_due <= now)]

    def stop(self) -> None:
        """Asks runs in progress to stop after the pages they hold (from any thread or a signal
        handler); ``run()`` and ``serve()`` then return."""
        self._stop.set()

    def run(self, connections: Optional[Iterable[str]] = None, due_only: bool = True) -> FleetRun:
        """Runs the sync of every due connection (or of ``connections``, by id), all at once,
        each as its own pipeline; returns when all have finished. A paused or relink_needed
        connection is never run; with ``due_only=False`` the others run even when not due.
        One connection's failure never stops the others."""
        chosen = self._choose(connections, due_only)
        limiter = self.limiter
        result = FleetRun()
        threads = [self._start(c, limiter, result) for c in chosen]
        interrupted = False
        for t in threads:
            while t.is_alive():
                try:
                    t.join()
                except KeyboardInterrupt:
                    # Ctrl-C: every run stops after the pages it holds, checkpointed.
                    interrupted = True
                    self._stop.set()
        self._stop.clear()  # a stop ends the runs it found; the fleet can run again
        if interrupted:
            raise KeyboardInterrupt
        return result

    def serve(self, poll: float = 1.0) -> None:
        """Runs each connection when its schedule says, until ``stop()`` (a connection without
        a schedule is not run by ``serve``). Runs in progress then finish the pages they hold."""
        running: Dict[str, threading.Thread] = {}
        result = FleetRun()
        while not self._stop.is_set():
            for cid in [k for k, t in running.items() if not t.is_alive()]:
                del running[cid]
            limiter = self.limiter
            for c in self.due():
                if c.connection_id not in running and c.schedule is not None:
                    running[c.connection_id] = self._start(c, limiter, result)
            self._stop.wait(poll)
        for t in running.values():
            t.join()
        self._stop.clear()

    def _choose(self, ids: Optional[Iterable[str]], due_only: bool) -> List[Connection]:
        if ids is None:
            pool = self.connections()
        else:
            pool = [self.get(i) for i in ids]
        now = time.time()
        chosen = []
        for c in pool:
            if c.status in ("paused", "relink_needed"):
                log.info("fleet %s: connection %s not run: %s (%s)", self.path, c.connection_id, c.status, c.reason)
            elif not due_only or c.next_due is None or c.next_due <= now:
                chosen.append(c)
        return chosen

    def _start(self, c: Connection, limiter: Limiter, result: FleetRun) -> threading.Thread:
        t = threading.Thread(target=self._run_one, args=(c, limiter, result),
                             name=f"isthmus-fleet-{c.connection_id}", daemon=True)
        t.start()
        return t

    def _run_one(self, c: Connection, limiter: Limiter, result: FleetRun) -> None:
        """One connection's sync, on its own thread; whatever happens is recorded on its row."""
        cid = c.connection_id
        started = time.time()
        outcome: Dict[str, Any] = {"status": "failed", "connection_status": c.status, "run_id": None, "error": None}
        secrets: List[str] = []
        try:
            credentials = c.credentials
            secrets = list(credentials.values())
            # A first sync is what a customer waits for after connecting: it goes first.
            pipeline = self._pipeline(c, limiter, credentials, "normal" if c.synced else "high")
            self._cap(pipeline)
            self._watch_stop(pipeline)
            self._update(cid, last_run_at=started)
            run = pipeline.run()
            outcome.update(status="completed", run_id=run.id)
            nxt = c.schedule.next_after(started) if c.schedule else None
            self._update(cid, status="active", reason=None, failures=0, synced=1, next_due=nxt)
            outcome["connection_status"] = "active"
            log.info("fleet %s: connection %s: run %d completed: read %d, written %d, dead-lettered %d",
                     self.path, cid, run.id, run.counts["read"], run.counts["written"], run.counts["dead_lettered"])
        except _Stopped:
            outcome["status"] = "interrupted"
            log.info("fleet %s: connection %s stopped; it resumes from its checkpoint", self.path, cid)
        except Exception as exc:
            reason = _scrub(f"{type(exc).__name__}: {exc}", secrets)
            outcome["error"] = reason
            if errors.refuses_credentials(exc):
                self._update(cid, status="relink_needed", reason=reason, next_due=None)
                outcome["connection_status"] = "relink_needed"
                log.warning("fleet %s: connection %s needs relinking: %s", self.path, cid, reason)
            else:
                failures = c.failures + 1
                wait = min(self.max_backoff, self.failure_backoff * 2 ** (failures - 1))
                self._update(cid, status="failing", reason=reason, failures=failures, next_due=time.time() + wait)
                outcome["connection_status"] = "failing"
                log.warning("fleet %s: connection %s failing (%d in a row, next try in %.0f s): %s",
                            self.path, cid, failures, wait, reason)
        result.outcomes[cid] = outcome

    def _pipeline(self, c: Connection, limiter: Limiter, credentials: Dict[str, str], priority: str) -> Pipeline:
        context = _RunContext(c.pipeline_name, self.store, limiter, c.connection_id, credentials, priority)
        try:
            c.integration.check(c, credentials=credentials)  # the token store may have lost them
            return c.integration._build(c, context)
        except errors.ConfigError as exc:
            # A credential substituted into a field that is not marked secret may be in the message.
            raise errors.ConfigError(_scrub(str(exc), credentials.values())) from None

    def replay(self, connection_id: str, where: Union[str, Callable[[Dict[str, Any]], bool], None] = None,
               force: bool = False) -> Dict[str, int]:
        """Sends the connection's dead letters through its map and sink again, at priority high
        (a support person is waiting); see ``Pipeline.replay_dead_letters``."""
        c = self.get(connection_id)
        pipeline = self._pipeline(c, self.limiter, c.credentials, "high")
        return pipeline.replay_dead_letters(where=where, force=force)

    def dead_letters(self, connection_id: str, include_resolved: bool = False) -> Any:
        """The connection's dead letters as a DataFrame (``Pipeline.dead_letters``)."""
        c = self.get(connection_id)
        return Pipeline._frame(self.store.dead_letters(c.pipeline_name, include_resolved=include_resolved))

    def _cap(self, pipeline: Pipeline) -> None:
        """At most ``max_in_flight`` of the connection's partitions read at once."""
        source = pipeline.source
        if isinstance(getattr(source, "concurrency", None), int):
            source.concurrency = min(source.concurrency, self.max_in_flight)

    def _watch_stop(self, pipeline: Pipeline) -> None:
        """Makes the pipeline's source end the run (``interrupted``, after checkpointing what
        the sink accepted) at its next batch once the fleet is told to stop."""
        source = pipeline.source
        read = source.read_batch
        stop = self._stop

        def read_batch(max_records: int, timeout: float) -> Any:
            if stop.is_set():
                raise _Stopped()
            return read(max_records, timeout)
        source.read_batch = read_batch

    # -- reading what happened -----------------------------------------------------------------
    def _runs(self) -> List[Tuple[Connection, Dict[str, Any]]]:
        by_name = {c.pipeline_name: c for c in self.connections()}
        out = []
        for name, c in by_name.items():
            for r in self.store.runs(name):
                out.append((c, r))
        return out

    @staticmethod
    def _count(r: Dict[str, Any], key: str) -> float:
        return float(r["counts"].get(key) or 0)

    def runs(self) -> Any:
        """Every run of every connection as a DataFrame: the connection, the run's status and
        times (UTC), and its counts."""
        import pandas as pd

        rows = [{"connection_id": c.connection_id, "integration": c.integration.name, "run_id": r["id"],
                 "status": r["status"], "started_at": r["started_at"], "finished_at": r["finished_at"],
                 "error": r["error"], **{k: self._count(r, k) for k in SUMMED}}
                for c, r in self._runs()]
        df = pd.DataFrame(rows, columns=["connection_id", "integration", "run_id", "status", "started_at",
                                         "finished_at", "error", *SUMMED])
        for col in ("started_at", "finished_at"):
            df[col] = pd.to_datetime(df[col], unit="s", utc=True)
        return df.sort_values(["started_at", "connection_id"], ignore_index=True)

    def status(self) -> Any:
        """One row per connection: its status and reason, schedule, when it runs next, and the
        counts and costs of all its runs (requests, 429s, retries, bytes, seconds held back,
        records read, written and dead-lettered), which sum to ``totals()``."""
        import pandas as pd

        sums: Dict[str, Dict[str, float]] = {}
        runs: Dict[str, int] = {}
        for c, r in self._runs():
            s = sums.setdefault(c.connection_id, {k: 0.0 for k in SUMMED})
            for k in SUMMED:
                s[k] += self._count(r, k)
            runs[c.connection_id] = runs.get(c.connection_id, 0) + 1
        rows = []
        for c in self.connections():
            rows.append({"connection_id": c.connection_id, "integration": c.integration.name,
                         "version": c.integration.version, "status": c.status, "reason": c.reason,
                         "weight": c.weight, "schedule": c.schedule.text if c.schedule else None,
                         "next_due": c.next_due, "last_run_at": c.last_run_at, "runs": runs.get(c.connection_id, 0),
                         "open_dead_letters": len(self.store.open_dead_letter_keys(c.pipeline_name)),
                         **sums.get(c.connection_id, {k: 0.0 for k in SUMMED}), "tags": c.tags})
        df = pd.DataFrame(rows, columns=["connection_id", "integration", "version", "status", "reason", "weight",
                                         "schedule", "next_due", "last_run_at", "runs", "open_dead_letters",
                                         *SUMMED, "tags"])
        for col in ("next_due", "last_run_at"):
            df[col] = pd.to_datetime(df[col], unit="s", utc=True)
        return df

    def totals(self) -> Dict[str, float]:
        """The fleet's totals over every run of every connection."""
        out = {k: 0.0 for k in SUMMED}
        for _, r in self._runs():
            for k in SUMMED:
                out[k] += self._count(r, k)
        return out

    def limits_snapshot(self) -> Dict[str, Dict[str, float]]:
        """The fleet limiter's counters summed per tenant (connection): granted, waited,
        wait_seconds, status_429, status_5xx, retries."""
        out: Dict[str, Dict[str, float]] = {}
        if self._limiter is None:
            return out
        for key, s in self._limiter.snapshot().items():
            parts = key.split("/")
            tenant = parts[2] if len(parts) > 2 else ""
            t = out.setdefault(tenant, {})
            for name in ("granted", "waited", "wait_seconds", "status_429", "status_5xx", "retries"):
                t[name] = t.get(name, 0.0) + float(s.get(name) or 0)
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self.store.close()

