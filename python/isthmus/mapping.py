"""Declarative field mapping: ``target <- source path`` with casts, run in the core.

::

    to_ours = isthmus.FieldMap({
        "id": "id",                                        # copy
        "email": {"from": "email", "required": True},      # a record without one dead-letters
        "city": "address.city",                            # dotted source paths
        "employees": ("size", "int"),                      # (path, cast)
        "seen_at": {"from": "updated_at", "cast": "datetime"},
        "owner.name": "owner_name",                        # dotted targets nest
        "source": {"value": "crm"},                        # a constant
    })
    isthmus.Pipeline(stream, map=to_ours, sink=...)

Casts: ``str``, ``int`` ("42" and 42.0 are ints; 42.5 and "4x" are not), ``float``, ``bool``
(true/false, yes/no, on/off, 1/0), ``datetime`` (ISO 8601 with any offset, or epoch seconds,
to UTC ``YYYY-MM-DDTHH:MM:SS.sssZ``). A missing or null source gives ``default`` (None unless
set), or dead-letters the record when the field is ``required``; a value that does not cast
dead-letters it too, the error naming the field, the source path and the value. No Python
code runs per record, so a FieldMap costs a fraction of a Python ``map`` function. With a
``JsonlSink``, ``SqliteSink`` or ``HttpSink`` and a ``Stream``, the core maps each page as it
parses it and hands the JSON text to the sink's writer: no record becomes a Python object.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from isthmus import _core, errors

__all__ = ["FieldMap"]

CASTS = ("str", "int", "float", "bool", "datetime")
_KEYS = {"from", "cast", "required", "default", "value"}


def _path(text: Any, where: str) -> List[str]:
    if not isinstance(text, str) or not text or any(not step for step in text.split(".")):
        raise errors.ConfigError(f"{where}: {text!r} is not valid; expected a dotted path like 'address.city'")
    return text.split(".")


class FieldMap:
    """A mapping declared as data (see the module doc); pass it as ``Pipeline(map=...)``."""

    def __init__(self, fields: Dict[str, Any]):
        if not isinstance(fields, dict) or not fields:
            raise errors.ConfigError(f"FieldMap: {fields!r} is not valid; expected a non-empty dict of "
                                     "target -> source path (or {'from': ..., 'cast': ...})")
        rules: List[Tuple[List[str], Any, str, bool, Any]] = []
        targets: Dict[Tuple[str, ...], str] = {}
        for target, spec in fields.items():
            where = f"FieldMap field {target!r}"
            steps = _path(target, where)
            for n in range(1, len(steps) + 1):
                prefix = tuple(steps[:n])
                other = targets.get(prefix)
                if other == "leaf" or (other is not None and n == len(steps)):
                    clash = f"field {'.'.join(prefix)!r}" if other == "leaf" else f"the fields under {target!r}"
                    raise errors.ConfigError(f"{where}: clashes with {clash}; a target cannot be both a value "
                                             "and an object")
                targets.setdefault(prefix, "leaf" if n == len(steps) else "object")
            if isinstance(spec, str):
                spec = {"from": spec}
            elif isinstance(spec, (tuple, list)) and len(spec) == 2:
                spec = {"from": spec[0], "cast": spec[1]}
            if not isinstance(spec, dict):
                raise errors.ConfigError(f"{where}: {spec!r} is not valid; expected a source path, (path, cast) "
                                         "or a dict with from/cast/required/default/value")
            unknown = set(spec) - _KEYS
            if unknown:
                raise errors.ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                                         f"expected {', '.join(sorted(_KEYS))}")
            if ("value" in spec) == ("from" in spec):
                raise errors.ConfigError(f"{where}: give either 'from' (a source path) or 'value' (a constant)")
            cast = spec.get("cast", "none")
            if cast != "none" and cast not in CASTS:
                raise errors.ConfigError(f"{where}: cast {cast!r} is not valid; expected one of {', '.join(CASTS)}")
            required = spec.get("required", False)
            if not isinstance(required, bool):
                raise errors.ConfigError(f"{where}: required {required!r} is not valid; expected true or false")
            source = _path(spec["from"], f"{where} from") if "from" in spec else None
            fallback = spec["value"] if "value" in spec else spec.get("default")
            try:
                _core.json_dumps(fallback)
            except TypeError as exc:
                raise errors.ConfigError(f"{where}: the default or value must be JSON data: {exc}") from None
            rules.append((steps, source, cast, required, fallback))
        self.fields = dict(fields)
        self._core = _core.FieldMapper(rules)

    def apply(self, records: List[Any]) -> Tuple[List[Dict[str, Any]], List[Tuple[int, str]]]:
        """(mapped records, [(index, reason), ...] of the records that failed a field)."""
        return self._core.apply(records)

    def __call__(self, record: Any) -> Dict[str, Any]:
        """One record, for trying a mapping out; raises ValueError when it fails."""
        mapped, failed = self.apply([record])
        if failed:
            raise ValueError(failed[0][1])
        return mapped[0]

    def __repr__(self) -> str:
        names = ", ".join(list(self.fields)[:8]) + (", ..." if len(self.fields) > 8 else "")
        return f"FieldMap({len(self.fields)} fields: {names})"
