"""Paginators: how a ``Stream`` gets from one page to the next.

Built-in ones cover cursors, offsets, page numbers, Link headers and next URLs; subclass
``Paginator`` for an odd API. Offset and page-number pages are addressed by a number, so a
window of them is fetched in parallel.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from isthmus import _core, errors

__all__ = ["Paginator", "CursorPaginator", "OffsetPaginator", "PageNumberPaginator",
           "LinkHeaderPaginator", "NextUrlPaginator"]

Step = Dict[str, Any]  # {"url": absolute URL or None (the stream's path), "params": {...}}


def _call_repr(name: str, fields: Dict[str, Any], positional: Sequence[Any] = ()) -> str:
    args = [repr(v) for v in positional] + [f"{k}={v!r}" for k, v in fields.items()]
    return f"{name}({', '.join(args)})"


class Page:
    """What a paginator sees of one page: its records, the fields it asked for, the response."""

    __slots__ = ("records", "fields", "response", "step")

    def __init__(self, records: List[Any], fields: Dict[str, Optional[str]], response: Any, step: Step):
        self.records, self.fields, self.response, self.step = records, fields, response, step


# -- paginators ------------------------------------------------------------------------------

class Paginator:
    """The hook for odd APIs: subclass and override ``next`` (and ``fields`` for what to read).

    ``next(page)`` returns the next step, ``{"url": absolute-or-None, "params": {...}}``, or
    None when the stream is done. Steps are saved as checkpoints, so they must be JSON.
    """

    parallel = False

    def __repr__(self) -> str:
        return _call_repr(type(self).__name__, self._settings())

    def _settings(self) -> Dict[str, Any]:
        """What the repr shows: the settings given to the constructor."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def fields(self) -> List[str]:
        """Dotted paths to read from each page for ``next`` (``page.fields[path]`` is text or None)."""
        return []

    def next(self, page: Page) -> Optional[Step]:
        raise NotImplementedError

    # The methods by which a built-in paginator pages: a subclass overriding any of them pages
    # its own way, and is called once per page instead of being run by the core's reader.
    _core_methods: Tuple[str, ...] = ("next", "fields")

    def _core_spec(self) -> Optional[Dict[str, Any]]:
        """What the core's reader needs to page like this, or None when it cannot."""
        return None

    def _in_core(self, base: type) -> bool:
        return all(getattr(type(self), m) is getattr(base, m) for m in self._core_methods)


class CursorPaginator(Paginator):
    """``param=<value at cursor path>`` until the cursor is null or empty (or ``has_more`` is false)."""

    def __init__(self, cursor: str = "meta.next_cursor", param: str = "cursor", has_more: Optional[str] = None):
        self.cursor, self.param, self.has_more = cursor, param, has_more

    def fields(self) -> List[str]:
        return [self.cursor] + ([self.has_more] if self.has_more else [])

    def next(self, page: Page) -> Optional[Step]:
        value = page.fields.get(self.cursor)
        if not value or (self.has_more and page.fields.get(self.has_more) == "false"):
            return None
        return {"url": page.step["url"], "params": {**page.step["params"], self.param: value}}

    def _core_spec(self) -> Optional[Dict[str, Any]]:
        if not self._in_core(CursorPaginator):
            return None
        return {"kind": "cursor", "cursor": self.cursor, "param": self.param, "has_more": self.has_more}


class NextUrlPaginator(Paginator):
    """Follows the URL at ``next`` in the body until it is null."""

    def __init__(self, next: str = "next"):
        self.path = next

    def _settings(self) -> Dict[str, Any]:
        return {"next": self.path}

    def fields(self) -> List[str]:
        return [self.path]

    def next(self, page: Page) -> Optional[Step]:
        url = page.fields.get(self.path)
        return {"url": url, "params": {}} if url else None

    def _core_spec(self) -> Optional[Dict[str, Any]]:
        return {"kind": "next_url", "next": self.path} if self._in_core(NextUrlPaginator) else None


class LinkHeaderPaginator(Paginator):
    """Follows ``Link: <url>; rel="next"`` (RFC 8288) until there is none.

    The core parses every Link field of the response: quoted parameters, several relation
    types in one ``rel``, several links in a field and several fields; ``rel`` is compared
    case-insensitively.
    """

    def __init__(self, rel: str = "next"):
        self.rel = rel

    def next(self, page: Page) -> Optional[Step]:
        url = _core.find_link(page.response.headers.get_list("link"), self.rel)
        return {"url": url, "params": {}} if url is not None else None

    def _core_spec(self) -> Optional[Dict[str, Any]]:
        return {"kind": "link", "rel": self.rel} if self._in_core(LinkHeaderPaginator) else None


class _RangePaginator(Paginator):
    """Pages addressed by a number, so a window of them can be fetched in parallel."""

    parallel = True
    unit_param = ""
    start = 0
    _core_methods = ("next", "fields", "step", "units_per_page", "end_unit")

    def __init__(self, size: int, size_param: str, total: Optional[str], window: int):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise errors.ConfigError(f"limit: {size!r} is not valid; expected an int >= 1")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise errors.ConfigError(f"window: {window!r} is not valid; expected an int >= 1")
        self.size, self.size_param, self.total, self.window = size, size_param, total, window

    def fields(self) -> List[str]:
        return [self.total] if self.total else []

    def step(self, base: Step, unit: int) -> Step:
        return {"url": base["url"], "params": {**base["params"], self.size_param: self.size, self.unit_param: unit}}

    def units_per_page(self) -> int:
        raise NotImplementedError

    def end_unit(self, total_text: Optional[str]) -> Optional[int]:
        raise NotImplementedError


class OffsetPaginator(_RangePaginator):
    """``offset=`` and ``limit=``; ``total`` (a path to the record count) lets pages go in parallel."""

    def __init__(self, param: str = "offset", limit_param: str = "limit", limit: int = 100,
                 total: Optional[str] = "meta.total", window: int = 8):
        super().__init__(limit, limit_param, total, window)
        self.unit_param = param

    def _settings(self) -> Dict[str, Any]:
        return {"param": self.unit_param, "limit_param": self.size_param, "limit": self.size,
                "total": self.total, "window": self.window}

    def units_per_page(self) -> int:
        return self.size

    def end_unit(self, total_text: Optional[str]) -> Optional[int]:
        return int(float(total_text)) if total_text else None

    def _core_spec(self) -> Optional[Dict[str, Any]]:
        if not self._in_core(OffsetPaginator):
            return None
        return {"kind": "offset", "param": self.unit_param, "size_param": self.size_param, "size": self.size,
                "total": self.total, "window": self.window}


class PageNumberPaginator(_RangePaginator):
    """``page=`` (from ``start``) and a page size; ``total_pages`` lets pages go in parallel."""

    def __init__(self, param: str = "page", size_param: str = "per_page", size: int = 100,
                 total_pages: Optional[str] = "meta.total_pages", start: int = 1, window: int = 8):
        super().__init__(size, size_param, total_pages, window)
        self.unit_param, self.start = param, start

    def _settings(self) -> Dict[str, Any]:
        return {"param": self.unit_param, "size_param": self.size_param, "size": self.size,
                "total_pages": self.total, "start": self.start, "window": self.window}

    def units_per_page(self) -> int:
        return 1

    def end_unit(self, total_text: Optional[str]) -> Optional[int]:
        return self.start + int(float(total_text)) if total_text else None

    def _core_spec(self) -> Optional[Dict[str, Any]]:
        if not self._in_core(PageNumberPaginator):
            return None
        return {"kind": "page_number", "param": self.unit_param, "size_param": self.size_param,
                "size": self.size, "total": self.total, "start": self.start, "window": self.window}
