"""isthmus: an integration engine for B2B product teams.

A C++ core does the fast, careful parts of talking to other products' APIs; this package is
its Python face. Start with ``isthmus.Client`` and ``isthmus.Sandbox``.
"""

import atexit as _atexit

from isthmus import _core
from isthmus.errors import (
    AuthError,
    BodyTooLarge,
    CircuitOpen,
    Cancelled,
    ClientClosed,
    ClientError,
    ConfigError,
    ConnectError,
    DecodingError,
    HTTPStatusError,
    InvalidHeader,
    InvalidURL,
    IsthmusError,
    JSONDecodeError,
    LimitError,
    ProtocolError,
    QuotaExhausted,
    RateLimited,
    ReadError,
    RequestError,
    ResolveError,
    RetryDeadlineExceeded,
    ServerError,
    Throttled,
    TimeoutError,
    TLSError,
    TooManyRedirects,
    TransportError,
    UnsupportedScheme,
)
from isthmus.http import AsyncClient, Client, Headers, Request, Response
from isthmus.limits import Adaptive, Concurrency, Limiter, Limits, Quota, RateLimit, Retry
from isthmus.sandbox import Sandbox

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # HTTP
    "Client",
    "AsyncClient",
    "Request",
    "Response",
    "Headers",
    # the mock API
    "Sandbox",
    # limits and retries
    "RateLimit",
    "Quota",
    "Concurrency",
    "Adaptive",
    "Limits",
    "Limiter",
    "Retry",
    # errors
    "IsthmusError",
    "ConfigError",
    "RequestError",
    "InvalidURL",
    "UnsupportedScheme",
    "InvalidHeader",
    "TransportError",
    "ConnectError",
    "ResolveError",
    "TLSError",
    "ReadError",
    "ProtocolError",
    "BodyTooLarge",
    "TimeoutError",
    "TooManyRedirects",
    "DecodingError",
    "JSONDecodeError",
    "ClientClosed",
    "Cancelled",
    "HTTPStatusError",
    "ClientError",
    "AuthError",
    "RateLimited",
    "ServerError",
    "LimitError",
    "QuotaExhausted",
    "Throttled",
    "CircuitOpen",
    "RetryDeadlineExceeded",
]

_atexit.register(_core.shutdown)
