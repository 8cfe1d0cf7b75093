"""isthmus: an integration engine for B2B product teams."""

from __future__ import annotations

import atexit as _atexit

from isthmus import _core
from isthmus.sandbox import Sandbox

__version__ = "0.1.0"

__all__ = ["__version__", "Sandbox"]

_atexit.register(_core.shutdown)
