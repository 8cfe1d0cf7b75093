"""isthmus: an integration engine for B2B product teams.

A C++ core does the fast, careful parts of talking to other products' APIs; this package is
its Python face. Start with ``isthmus.Client`` and ``isthmus.Sandbox``.

The public surface is each area module's ``__all__``, re-exported here in one place.
"""

import atexit as _atexit

from isthmus import _core
from isthmus import auth as _auth
from isthmus import change_log as _change_log
from isthmus import coordination as _coordination
from isthmus import errors as _errors
from isthmus import fleet as _fleet
from isthmus import http as _http
from isthmus import incremental as _incremental
from isthmus import limits as _limits
from isthmus import mapping as _mapping
from isthmus import paginators as _paginators
from isthmus import pipeline as _pipeline
from isthmus import queue as _queue
from isthmus import sinks as _sinks
from isthmus import source as _source
from isthmus import stream as _stream
from isthmus import worker as _worker
from isthmus.auth import *  # noqa: F401,F403
from isthmus.change_log import *  # noqa: F401,F403
from isthmus.coordination import *  # noqa: F401,F403
from isthmus.errors import *  # noqa: F401,F403
from isthmus.fleet import *  # noqa: F401,F403
from isthmus.http import *  # noqa: F401,F403
from isthmus.incremental import *  # noqa: F401,F403
from isthmus.limits import *  # noqa: F401,F403
from isthmus.mapping import *  # noqa: F401,F403
from isthmus.paginators import *  # noqa: F401,F403
from isthmus.pipeline import *  # noqa: F401,F403
from isthmus.queue import *  # noqa: F401,F403
from isthmus.sandbox import Sandbox
from isthmus.sinks import *  # noqa: F401,F403
from isthmus.source import *  # noqa: F401,F403
from isthmus.stream import *  # noqa: F401,F403
from isthmus.webhooks import WebhookReceiver
from isthmus.worker import *  # noqa: F401,F403

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Sandbox",
    "WebhookReceiver",
    *_http.__all__,
    *_source.__all__,
    *_stream.__all__,
    *_paginators.__all__,
    *_incremental.__all__,
    *_pipeline.__all__,
    *_worker.__all__,
    *_fleet.__all__,
    *_mapping.__all__,
    *_sinks.__all__,
    *_queue.__all__,
    *_change_log.__all__,
    *_auth.__all__,
    *_limits.__all__,
    *_coordination.__all__,
    *_errors.__all__,
]

_atexit.register(_core.shutdown)
