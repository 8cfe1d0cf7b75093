"""Pipelines from YAML (or JSON): the same Stream -> map -> sink, declared as data.

::

    name: contacts
    state: contacts.db
    source:
      base_url: https://crm.example.com
      auth: {type: oauth2_client_credentials, token_url: https://crm.example.com/oauth/token,
             client_id: "${CRM_CLIENT_ID}", client_secret: "${CRM_CLIENT_SECRET}"}
      rate_limit: {rate: 100, per: second, burst: 10}
      retry: {attempts: 6, base: 0.2}
      client: {timeout: 20, headers: {Accept: application/json}}
      path: /v1/contacts
      params: {limit: 100}
      paginator: {type: cursor, cursor: meta.next_cursor, param: cursor}
      incremental: {cursor_field: updated_at, param: updated_since, lookback: 60}
    map: mapping:to_ours          # module:function (the file's folder is importable), or {fields: {...}}
    sink: {type: http, base_url: "${DEST_URL}", path: /v1/contacts/batch, batch_size: 100}

The file is checked against the JSON Schema ``schema/pipeline.schema.json`` (printed by
``isthmus schema pipeline``) before anything is built: an unknown key, a wrong type or a
missing key raises ``ConfigError`` naming its full path (``source.pagintor: unknown key; did
you mean paginator?``). Then ``${NAME}`` in a string is replaced by the environment variable
NAME (secrets stay out of the file and out of every message), and each schema object becomes
the Python object in ``FACTORIES``.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Tuple

from isthmus import errors
from isthmus.auth import (
    ApiKey,
    AwsSigV4,
    BasicAuth,
    BearerToken,
    HmacSigner,
    JWTBearer,
    OAuth2AuthorizationCode,
    OAuth2ClientCredentials,
    OAuth2RefreshToken,
    TokenStore,
)
from isthmus.coordination import Coordination
from isthmus.http import Client
from isthmus.incremental import Incremental, TimeSlices
from isthmus.limits import Adaptive, Concurrency, Limiter, Limits, Quota, RateLimit, Retry, Share
from isthmus.mapping import FieldMap
from isthmus.paginators import (
    CursorPaginator,
    LinkHeaderPaginator,
    NextUrlPaginator,
    OffsetPaginator,
    PageNumberPaginator,
)
from isthmus.pipeline import Pipeline
from isthmus.sinks import CallableSink, HttpSink, JsonlSink, SqliteSink
from isthmus.store import StateStore
from isthmus.stream import Stream

if TYPE_CHECKING:
    import jsonschema

__all__ = ["load_pipeline", "pipeline_from_dict", "pipeline_schema", "validate_pipeline", "connection_pipeline"]

SCHEMA_PATH = Path(__file__).parent / "schema" / "pipeline.schema.json"

# What each object of the schema's $defs becomes. The loader passes an object's keys to its
# factory as keyword arguments; tests/python/test_config.py checks that every factory
# parameter is a schema key (or listed below) and every schema key a parameter.
FACTORIES: Dict[str, Callable[..., Any]] = {
    "pipeline": Pipeline, "source": Stream, "client": Client,
    "paginator_cursor": CursorPaginator, "paginator_offset": OffsetPaginator,
    "paginator_page": PageNumberPaginator, "paginator_link": LinkHeaderPaginator,
    "paginator_next_url": NextUrlPaginator,
    "incremental": Incremental, "time_slices": TimeSlices, "retry": Retry,
    "limit_rate": RateLimit, "limit_quota": Quota, "limit_concurrency": Concurrency,
    "limit_adaptive": Adaptive, "limiter": Limiter,
    "auth_api_key": ApiKey, "auth_basic": BasicAuth, "auth_bearer": BearerToken,
    "auth_oauth2_client_credentials": OAuth2ClientCredentials,
    "auth_oauth2_refresh_token": OAuth2RefreshToken,
    "auth_oauth2_authorization_code": OAuth2AuthorizationCode,
    "auth_jwt_bearer": JWTBearer, "auth_hmac": HmacSigner, "auth_aws_sigv4": AwsSigV4,
    "token_store_memory": TokenStore.memory, "token_store_sqlite": TokenStore.sqlite,
    "sink_http": HttpSink, "sink_jsonl": JsonlSink, "sink_sqlite": SqliteSink,
    "sink_callable": CallableSink,
}
# Schema keys that build the section's client instead of going to the section's factory.
CLIENT_KEYS = frozenset({"base_url", "auth", "rate_limit", "client"})
# A rate's `shares` make the rate_limit it belongs to a Limiter divided between tenants.
ROUTED: Dict[str, FrozenSet[str]] = {"source": CLIENT_KEYS, "sink_http": CLIENT_KEYS,
                                     "limit_rate": frozenset({"shares"})}
# Factory parameters the schema has no key for: built by the loader from other keys, or
# only meaningful from Python (functions). A section's `retry` goes to its stream or sink,
# which retries every call the pipeline makes through that client.
NOT_IN_SCHEMA: Dict[str, FrozenSet[str]] = {
    "source": frozenset({"client"}),
    "sink_http": frozenset({"client"}),
    "client": frozenset({"base_url", "auth", "rate_limit", "retry"}),
    "auth_oauth2_client_credentials": frozenset({"on_token"}),
    "auth_oauth2_refresh_token": frozenset({"on_token"}),
    "auth_oauth2_authorization_code": frozenset({"on_token"}),
    "auth_jwt_bearer": frozenset({"on_token"}),
}
# Schema keys spelled differently from the factory's parameter.
RENAMED: Dict[str, Dict[str, str]] = {"sink_callable": {"function": "fn"}}

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@functools.lru_cache(maxsize=1)
def _schema_text() -> str:
    return SCHEMA_PATH.read_text(encoding="utf-8")


def pipeline_schema() -> Dict[str, Any]:
    """The pipeline file's JSON Schema (draft 2020-12), as a dict."""
    result: Dict[str, Any] = json.loads(_schema_text())
    return result


@functools.lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    import jsonschema

    return jsonschema.Draft202012Validator(pipeline_schema())


# -- schema errors as one line naming the path ----------------------------------------------

_TYPE_NAMES = {"integer": "an integer", "number": "a number", "string": "a string",
               "boolean": "true or false", "object": "a mapping", "array": "a list", "null": "null"}
# A typo is the likeliest cause of a missing key next to it, so it is reported first.
_RANK = {"additionalProperties": 0, "required": 1, "enum": 2, "const": 2, "type": 3}


def _dotted(path: Iterable[Any]) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _shown(error: Any) -> str:
    """The offending value, unless the schema marks the field as a secret."""
    if isinstance(error.schema, dict) and error.schema.get("writeOnly"):
        return f"{_TYPE_NAMES.get(_json_type(error.instance), 'a value')} (not shown: a secret)"
    return repr(error.instance)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", dict: "object", list: "array", type(None): "null"}.get(type(value), "value")


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), sorted(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _expected_types(value: Any) -> str:
    names = [value] if isinstance(value, str) else list(value)
    return " or ".join(_TYPE_NAMES.get(n, n) for n in names)


def _message(error: Any) -> str:
    where = _dotted(error.absolute_path)
    kind = error.validator
    if kind == "additionalProperties":
        known = set(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - known)[0]
        hint = _suggest(extra, known) or "; expected one of " + ", ".join(sorted(known))
        return f"{_join(where, extra)}: unknown key{hint}"
    if kind == "required":
        missing = next(k for k in error.validator_value if k not in error.instance)
        about = error.schema.get("properties", {}).get(missing, {}).get("description")
        return f"{_join(where, missing)}: missing" + (f" ({about})" if about else "")
    if kind in ("anyOf", "oneOf"):
        return _alternatives(error, where)
    if kind == "type":
        return f"{where or 'pipeline'}: expected {_expected_types(error.validator_value)}, got {_shown(error)}"
    if kind == "enum":
        options = [str(v) for v in error.validator_value]
        return (f"{where}: {_shown(error)} is not valid; expected one of {', '.join(options)}"
                + _suggest(error.instance, options))
    if kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        sign = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[kind]
        return f"{where}: expected a number {sign} {error.validator_value}, got {_shown(error)}"
    if kind == "pattern":
        return f"{where}: {_shown(error)} is not valid; expected 'module:function'"
    return f"{where or 'pipeline'}: {error.message}"


def _alternatives(error: Any, where: str) -> str:
    """For a value that may take several shapes: the error inside the one its type matches."""
    by_branch: Dict[int, List[Any]] = {}
    for sub in error.context:
        by_branch.setdefault(sub.relative_schema_path[0], []).append(sub)
    wrong_type = {i for i, subs in by_branch.items()
                  if any(s.validator in ("type", "enum") and not s.relative_path for s in subs)}
    fitting = [subs for i, subs in sorted(by_branch.items()) if i not in wrong_type]
    if fitting:
        return _message(_first(fitting[0]))
    shapes, names = [], []
    for branch in error.validator_value:
        branch = _resolve(branch)
        if "enum" in branch:
            names += [str(v) for v in branch["enum"]]
            shapes.append("one of " + ", ".join(str(v) for v in branch["enum"]))
        elif "type" in branch:
            shapes.append(_expected_types(branch["type"]))
    hint = _suggest(error.instance, names) if isinstance(error.instance, str) else ""
    return f"{where or 'pipeline'}: expected {' or '.join(shapes)}, got {_shown(error)}{hint}"


def _resolve(branch: Dict[str, Any]) -> Dict[str, Any]:
    ref = branch.get("$ref", "")
    if ref.startswith("#/$defs/"):
        result: Dict[str, Any] = pipeline_schema()["$defs"][ref[len("#/$defs/"):]]
        return result
    return branch


def _first(errs: Iterable[Any]) -> Any:
    return min(errs, key=lambda e: (_RANK.get(e.validator, 4), [str(p) for p in e.absolute_path]))


def validate_pipeline(doc: Any) -> None:
    """Checks a pipeline document (as loaded from YAML) against the schema; raises
    ``ConfigError`` naming the first problem's path. ``${VAR}`` strings are not expanded."""
    errs = list(_validator().iter_errors(doc))
    if errs:
        extra = len(errs) - 1
        more = f" ({extra} more problem{'s' if extra > 1 else ''} in the file)" if extra else ""
        raise errors.ConfigError(_message(_first(errs)) + more)


# -- building ----------------------------------------------------------------------------------

def _expand(value: Any, where: str) -> Any:
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in os.environ:
                raise errors.ConfigError(f"{where}: environment variable {m.group(1)} is not set")
            return os.environ[m.group(1)]
        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand(v, _join(where, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _make(defname: str, spec: Dict[str, Any], where: str, built_where: Optional[str] = None,
          **built: Any) -> Any:
    """Calls the factory of ``defname`` with the object's keys and what the loader built
    (which a message places at ``built_where``)."""
    renamed = RENAMED.get(defname, {})
    skip = ROUTED.get(defname, frozenset()) | {"type"}
    kwargs = {renamed.get(k, k): v for k, v in spec.items() if k not in skip}
    kwargs.update(built)
    try:
        return FACTORIES[defname](**kwargs)
    except (errors.ConfigError, errors.InvalidURL) as exc:
        text = str(exc)
        field = text.split(":", 1)[0]
        if field in built and built_where is not None:
            text = _join(built_where, text)
        elif field in spec or field in kwargs:
            text = _join(where, text)
        elif where:
            text = f"{where}: {text}"
        raise errors.ConfigError(text) from None
    except ValueError as exc:  # a check in the core; its message names the field
        raise errors.ConfigError(f"{where}: {exc}" if where else str(exc)) from None


def _tag(spec: Any, prefix: str, default: Optional[str] = None) -> Tuple[str, Dict[str, Any]]:
    """(the $defs name, the mapping) of a tagged object, or of its shorthand (just the type)."""
    if isinstance(spec, str):
        spec = {"type": spec}
    return f"{prefix}_{spec.get('type', default)}", dict(spec)


def _store(spec: Any, where: str, base: Path) -> TokenStore:
    defname, spec = _tag(spec, "token_store")
    for key in ("path", "key_file"):
        if key in spec:
            spec[key] = str(base / spec[key])
    result: TokenStore = _make(defname, spec, where)
    return result


def _coordination(spec: Dict[str, Any], shared: Dict[str, Coordination]) -> None:
    """A ``coordination:`` Redis URL in ``spec`` becomes the Coordination it names, connected
    now: a wrong URL or password fails the load with an error naming the URL (password masked).
    Every key of one file naming the same URL shares one connection (``shared``, per load)."""
    if "coordination" in spec:
        url = spec["coordination"]
        if url not in shared:
            shared[url] = Coordination(url)
        spec["coordination"] = shared[url]


def _auth(spec: Dict[str, Any], where: str, base: Path, shared: Dict[str, Coordination]) -> Any:
    defname, spec = _tag(spec, "auth")
    if "store" in spec:
        spec["store"] = _store(spec["store"], where + ".store", base)
    _coordination(spec, shared)
    return _make(defname, spec, where)


def _shares(spec: Dict[str, Any], where: str) -> Dict[str, Share]:
    """``shares: {tenant: {weight, rate, per, burst, concurrency}}`` as Share objects."""
    out: Dict[str, Share] = {}
    for tenant, fields in spec.items():
        at = _join(where, tenant)
        try:
            limit: List[Any] = []
            if "rate" in fields:
                limit.append(RateLimit(fields["rate"], fields.get("per", "second"), burst=fields.get("burst")))
            if "concurrency" in fields:
                limit.append(Concurrency(fields["concurrency"]))
            out[tenant] = Share(fields.get("weight", 1.0), limit or None)
        except errors.ConfigError as exc:  # the schema checked the types; this is a value
            raise errors.ConfigError(f"{at}: {exc}") from None
    return out


def _limit(spec: Dict[str, Any], where: str, shared: Dict[str, Coordination],
           shares: List[Dict[str, Share]]) -> Any:
    """One limit; the ``shares`` of a rate are added to ``shares`` for the rate_limit's Limiter."""
    defname, spec = _tag(spec, "limit", "rate")
    if defname == "limit_limiter":
        own: List[Dict[str, Share]] = []
        limits = [_limit(item, f"{where}.limits[{i}]", shared, own)
                  for i, item in enumerate(spec.pop("limits", []))]
        if "shares" in spec:
            own.append(_shares(spec.pop("shares"), where + ".shares"))
        _coordination(spec, shared)
        return _make("limiter", spec, where, limits=Limits(limits), shares=_merged(own, where))
    if defname == "limit_rate" and "shares" in spec:
        shares.append(_shares(spec.pop("shares"), where + ".shares"))
    return _make(defname, spec, where)


def _merged(shares: List[Dict[str, Share]], where: str) -> Optional[Dict[str, Share]]:
    if not shares:
        return None
    out: Dict[str, Share] = {}
    for part in shares:
        for tenant, share in part.items():
            if tenant in out:
                raise errors.ConfigError(f"{where}: shares[{tenant!r}] is given twice; give each tenant one share")
            out[tenant] = share
    return out


def _rate_limit(spec: Any, where: str, shared: Dict[str, Coordination]) -> Any:
    shares: List[Dict[str, Share]] = []
    if isinstance(spec, list):
        limit: Any = Limits([_limit(item, f"{where}[{i}]", shared, shares) for i, item in enumerate(spec)])
    else:
        limit = _limit(spec, where, shared, shares)
    divided = _merged(shares, where)
    return limit if divided is None else Limiter(limit, shares=divided)


def _retry(spec: Any, where: str) -> Any:
    return _make("retry", spec, where) if isinstance(spec, dict) else spec


def _client(spec: Dict[str, Any], where: str, base: Path, shared: Dict[str, Coordination],
            fixed: Optional[Dict[str, Any]] = None) -> Client:
    options = dict(spec.get("client", {}))
    if "auth" in spec:
        options["auth"] = _auth(spec["auth"], where + ".auth", base, shared)
    if "rate_limit" in spec:
        options["rate_limit"] = _rate_limit(spec["rate_limit"], where + ".rate_limit", shared)
    if fixed:
        # A fleet's connection: its allowance, limit key and priority replace the file's.
        headers = {**(options.get("headers") or {}), **fixed.get("headers", {})}
        options.update(fixed)
        options["headers"] = headers
    result: Client = _make("client", options, where + ".client", built_where=where,
                           base_url=spec["base_url"])
    return result


def _source(spec: Dict[str, Any], base: Path, shared: Dict[str, Coordination],
            fixed: Optional[Dict[str, Any]] = None) -> Stream:
    spec = dict(spec)
    if "paginator" in spec:
        defname, pag = _tag(spec["paginator"], "paginator")
        spec["paginator"] = _make(defname, pag, "source.paginator")
    if "incremental" in spec:
        spec["incremental"] = _make("incremental", spec["incremental"], "source.incremental")
    if isinstance(spec.get("partitions"), dict):
        spec["partitions"] = _make("time_slices", spec["partitions"]["time_slices"],
                                   "source.partitions.time_slices")
    if "retry" in spec:
        spec["retry"] = _retry(spec["retry"], "source.retry")
    result: Stream = _make("source", spec, "source", client=_client(spec, "source", base, shared, fixed))
    return result


def _sink(spec: Dict[str, Any], base: Path, shared: Dict[str, Coordination],
          fixed: Optional[Dict[str, Any]] = None) -> Any:
    defname, spec = _tag(spec, "sink")
    if defname == "sink_http":
        if "retry" in spec:
            spec["retry"] = _retry(spec["retry"], "sink.retry")
        return _make(defname, spec, "sink", client=_client(spec, "sink", base, shared, fixed))
    if defname == "sink_callable":
        spec["function"] = _import(spec["function"], "sink.function", base)
    else:
        spec["path"] = str(base / spec["path"])
    return _make(defname, spec, "sink")


def _import(ref: str, where: str, base: Path) -> Callable[..., Any]:
    module, _, attr = ref.partition(":")
    if str(base) not in sys.path:
        sys.path.insert(0, str(base))
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise errors.ConfigError(f"{where}: cannot import {ref!r}: {exc}") from None
    if not callable(fn):
        raise errors.ConfigError(f"{where}: {ref!r} is not callable")
    result: Callable[..., Any] = fn
    return result


def _map(spec: Any, base: Path) -> Any:
    if spec is None:
        return None
    if isinstance(spec, dict):
        try:
            return FieldMap(spec["fields"])
        except errors.ConfigError as exc:
            raise errors.ConfigError(f"map.fields: {exc}") from None
    return _import(spec, "map", base)


def pipeline_from_dict(doc: Any, base: Path = Path(".")) -> Pipeline:
    """Builds a Pipeline from a document shaped like the YAML file; relative paths in it are
    relative to ``base``."""
    return _build(doc, base)


def connection_pipeline(doc: Any, base: Path, *, name: str, state: StateStore,
                        client_options: Dict[str, Any]) -> Pipeline:
    """The pipeline of one connection of a fleet, from its definition ``doc`` (the connection's
    values already in it): named ``name``, its state in ``state``, and every client built with
    ``client_options`` (the fleet's limiter, the connection's limit key and priority) in place
    of the file's ``rate_limit``."""
    return _build(doc, base, name=name, state=state, fixed=client_options)


def _build(doc: Any, base: Path, *, name: Optional[str] = None, state: Optional[StateStore] = None,
           fixed: Optional[Dict[str, Any]] = None) -> Pipeline:
    validate_pipeline(doc)
    doc = _expand(doc, "")
    if name is not None:
        doc["name"] = name
    options = {k: v for k, v in doc.items() if k not in ("source", "sink", "map", "state")}
    shared: Dict[str, Coordination] = {}  # one connection per Redis URL in the file
    source = _source(doc["source"], base, shared, fixed)
    pipeline: Pipeline = _make("pipeline", options, "", source=source,
                               sink=_sink(doc["sink"], base, shared, fixed), map=_map(doc.get("map"), base),
                               state=state if state is not None else
                               _state_path(doc.get("state"), base, doc.get("name") or source.name))
    return pipeline


def _read(path: str, what: str = "pipeline file") -> Tuple[Any, Path]:
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise errors.ConfigError(f"{what} {path}: {exc.strerror or exc}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise errors.ConfigError(f"{what} {path} is not valid YAML{at}: {problem}") from None
    return doc, p.resolve().parent


def load_pipeline(path: str) -> Pipeline:
    """Reads a pipeline file (YAML or JSON); relative paths in it are relative to the file."""
    doc, base = _read(path)
    return pipeline_from_dict(doc, base)


def pipeline_state(path: str) -> Tuple[str, str]:
    """(the pipeline's name, its state file) from a pipeline file, resolving only the keys
    they depend on: reading dead letters needs no credentials of the source or the sink."""
    doc, base = _read(path)
    validate_pipeline(doc)
    src = doc["source"]
    name = _expand(doc.get("name"), "name") or _expand(src.get("name"), "source.name")
    if not name:
        # The stream's own rule names it from its path; no client is needed for that.
        name = Stream(None, _expand(src["path"], "source.path")).name
    return name, _state_path(_expand(doc.get("state"), "state"), base, name)


def _state_path(state: Optional[str], base: Path, name: str) -> str:
    """``state:`` relative to the file; without it ``<name>.isthmus.db`` beside the file."""
    if state:
        return str(base / state)
    return StateStore.default_path(str(name), str(base))


def factory_parameters(defname: str) -> List[str]:
    """The keyword parameters of a schema object's factory (for the schema/loader check)."""
    return [p.name for p in inspect.signature(FACTORIES[defname]).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
