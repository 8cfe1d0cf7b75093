"""Pipelines from YAML (or JSON): the same Stream -> map -> sink, declared as data.

::

    name: contacts
    state: contacts.db
    source:
      base_url: http://127.0.0.1:8080
      path: /v1/contacts
      records: data
      params: {limit: 100}
      paginator: {type: cursor, cursor: meta.next_cursor, param: cursor}
      incremental: {cursor_field: updated_at, param: updated_since, lookback: 60}
      # partitions: a list of params, or time slices read `concurrency` at a time:
      # partitions: {time_slices: {start: "2024-01-01", end: "2025-01-01", every: 604800}}
      # retry: {attempts: 6, base: 0.2}     # else the client's Retry, else `attempts` tries
    map: mapping:to_ours          # module:function (the file's folder is importable), or {fields: {...}}
    sink: {type: http, base_url: http://127.0.0.1:9090, path: /v1/contacts/batch, batch_size: 100}

``${NAME}`` in a string is replaced by the environment variable NAME (secrets stay out of the
file). A bad value raises ConfigError naming the field.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Dict

from isthmus import errors
from isthmus.http import Client
from isthmus.limits import Retry
from isthmus.pipeline import (CursorPaginator, Incremental, LinkHeaderPaginator, NextUrlPaginator,
                              OffsetPaginator, PageNumberPaginator, Pipeline, Stream, TimeSlices)
from isthmus.mapping import FieldMap
from isthmus.sinks import CallableSink, HttpSink, JsonlSink, SqliteSink
from isthmus.store import StateStore

__all__ = ["load_pipeline", "pipeline_from_dict"]

PAGINATORS: Dict[str, Callable[..., Any]] = {
    "cursor": CursorPaginator, "offset": OffsetPaginator, "page": PageNumberPaginator,
    "link": LinkHeaderPaginator, "next_url": NextUrlPaginator,
}
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(value: Any, where: str) -> Any:
    if isinstance(value, str):
        def sub(m: "re.Match[str]") -> str:
            if m.group(1) not in os.environ:
                raise errors.ConfigError(f"{where}: environment variable {m.group(1)} is not set")
            return os.environ[m.group(1)]
        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _section(doc: Dict[str, Any], key: str, where: str, required: bool = True) -> Dict[str, Any]:
    value = doc.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise errors.ConfigError(f"{where}{key}: {value!r} is not valid; expected a mapping")
    return dict(value)


def _build(factory: Callable[..., Any], kwargs: Dict[str, Any], where: str) -> Any:
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise errors.ConfigError(f"{where}: {exc}") from None


def _client(spec: Dict[str, Any], where: str) -> Client:
    base = spec.pop("base_url", None)
    if not base:
        raise errors.ConfigError(f"{where}.base_url: missing; expected the API's http(s) URL")
    return _build(Client, {"base_url": base, **spec.pop("client", {})}, where + ".client")


def _retry(spec: Dict[str, Any], where: str) -> None:
    """``retry:`` as a mapping of Retry's fields becomes a Retry (an int stays a number of attempts)."""
    if isinstance(spec.get("retry"), dict):
        spec["retry"] = _build(Retry, spec["retry"], where + ".retry")


def _import(ref: str, where: str, base: Path) -> Callable[..., Any]:
    if not isinstance(ref, str) or ":" not in ref:
        raise errors.ConfigError(f"{where}: {ref!r} is not valid; expected 'module:function'")
    module, _, attr = ref.partition(":")
    if str(base) not in sys.path:
        sys.path.insert(0, str(base))
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise errors.ConfigError(f"{where}: cannot import {ref!r}: {exc}") from None
    if not callable(fn):
        raise errors.ConfigError(f"{where}: {ref!r} is not callable")
    return fn


def pipeline_from_dict(doc: Dict[str, Any], base: Path = Path(".")) -> Pipeline:
    if not isinstance(doc, dict):
        raise errors.ConfigError(f"pipeline: expected a mapping at the top, got {type(doc).__name__}")
    doc = _expand(doc, "pipeline")
    src = _section(doc, "source", "")
    client = _client(src, "source")
    path = src.pop("path", None)
    if not isinstance(path, str):
        raise errors.ConfigError(f"source.path: {path!r} is not valid; expected the endpoint path")
    pag = src.pop("paginator", None)
    if pag is not None:
        pag = dict(pag) if isinstance(pag, dict) else {"type": pag}
        kind = pag.pop("type", None)
        if kind not in PAGINATORS:
            raise errors.ConfigError(f"source.paginator.type: {kind!r} is not valid; expected one of "
                                     + ", ".join(sorted(PAGINATORS)))
        pag = _build(PAGINATORS[kind], pag, "source.paginator")
    inc = src.pop("incremental", None)
    if inc is not None:
        inc = _build(Incremental, _section({"incremental": inc}, "incremental", "source."), "source.incremental")
    parts = src.get("partitions")
    if isinstance(parts, dict):
        if set(parts) != {"time_slices"}:
            raise errors.ConfigError(f"source.partitions: {parts!r} is not valid; expected a list of params "
                                     "or {time_slices: {start, end, every, start_param, end_param}}")
        src["partitions"] = _build(TimeSlices, _section(parts, "time_slices", "source.partitions."),
                                   "source.partitions.time_slices")
    _retry(src, "source")
    stream = _build(Stream, {"client": client, "path": path, "paginator": pag, "incremental": inc, **src}, "source")
    sink_spec = _section(doc, "sink", "")
    kind = sink_spec.pop("type", None)
    if kind == "http":
        sink_client = _client(sink_spec, "sink")
        _retry(sink_spec, "sink")
        sink = _build(HttpSink, {"client": sink_client, **sink_spec}, "sink")
    elif kind == "jsonl":
        sink = _build(JsonlSink, {**sink_spec, "path": str(base / sink_spec.get("path", ""))}, "sink")
    elif kind == "sqlite":
        sink = _build(SqliteSink, {**sink_spec, "path": str(base / sink_spec.get("path", ""))}, "sink")
    elif kind == "callable":
        sink = CallableSink(_import(sink_spec.get("function"), "sink.function", base))
    else:
        raise errors.ConfigError(f"sink.type: {kind!r} is not valid; expected one of callable, http, jsonl, sqlite")
    spec = doc.get("map")
    if isinstance(spec, dict):
        # map: {fields: {target: source, ...}} is a FieldMap, run in the core.
        if set(spec) != {"fields"}:
            raise errors.ConfigError(f"map: {spec!r} is not valid; expected module:function or {{fields: {{...}}}}")
        fn: Any = FieldMap(spec["fields"])
    else:
        fn = _import(spec, "map", base) if spec else None
    extra = {k: doc[k] for k in ("name", "checkpoint_every", "batch") if k in doc}
    unknown = set(doc) - {"source", "sink", "map", "state", "name", "checkpoint_every", "batch"}
    if unknown:
        raise errors.ConfigError(f"pipeline: unknown field(s) {', '.join(sorted(unknown))}")
    state = doc.get("state") or StateStore.default_path(str(doc.get("name") or stream.name))
    return Pipeline(stream, map=fn, sink=sink, state=str(base / state), **extra)


def load_pipeline(path: str) -> Pipeline:
    """Reads a pipeline file (YAML or JSON); relative paths in it are relative to the file."""
    import yaml

    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise errors.ConfigError(f"pipeline file {path!r}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise errors.ConfigError(f"pipeline file {path!r} is not valid YAML: {exc}") from None
    return pipeline_from_dict(doc, p.resolve().parent)
