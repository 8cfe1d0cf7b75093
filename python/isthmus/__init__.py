"""isthmus: an integration engine for B2B product teams.

A C++ core does the fast, careful parts of talking to other products' APIs; this package is
its Python face. Start with ``isthmus.Client`` and ``isthmus.Sandbox``.
"""

import atexit as _atexit

from isthmus import _core
from isthmus.auth import (
    ApiKey,
    Auth,
    AwsSigV4,
    BasicAuth,
    BearerToken,
    HmacSigner,
    JWTBearer,
    OAuth2AuthorizationCode,
    OAuth2ClientCredentials,
    OAuth2RefreshToken,
    TokenStore,
    verify_webhook,
)
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
    PipelineError,
    ReconciliationError,
    RetryDeadlineExceeded,
    ServerError,
    Throttled,
    TimeoutError,
    TLSError,
    TokenError,
    TokenStoreError,
    TooManyRedirects,
    TransportError,
    UnsupportedScheme,
    WebhookVerificationError,
)
from isthmus.http import AsyncClient, Client, Headers, Request, Response
from isthmus.pipeline import (
    CursorPaginator,
    Incremental,
    LinkHeaderPaginator,
    NextUrlPaginator,
    OffsetPaginator,
    PageNumberPaginator,
    Paginator,
    Pipeline,
    Run,
    Stream,
)
from isthmus.limits import Adaptive, Concurrency, Limiter, Limits, Quota, RateLimit, Retry
from isthmus.sandbox import Sandbox
from isthmus.sinks import CallableSink, HttpSink, JsonlSink, Sink, SqliteSink

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # HTTP
    "Client",
    "AsyncClient",
    "Request",
    "Response",
    "Headers",
    # sandbox
    "Sandbox",
    # pipeline
    "Stream",
    "Paginator",
    "CursorPaginator",
    "OffsetPaginator",
    "PageNumberPaginator",
    "LinkHeaderPaginator",
    "NextUrlPaginator",
    "Incremental",
    "Pipeline",
    "Run",
    "Sink",
    "HttpSink",
    "JsonlSink",
    "SqliteSink",
    "CallableSink",
    # auth
    "Auth",
    "ApiKey",
    "BasicAuth",
    "BearerToken",
    "OAuth2ClientCredentials",
    "OAuth2RefreshToken",
    "OAuth2AuthorizationCode",
    "JWTBearer",
    "HmacSigner",
    "AwsSigV4",
    "TokenStore",
    "verify_webhook",
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
    "PipelineError",
    "ReconciliationError",
    "TokenError",
    "TokenStoreError",
    "WebhookVerificationError",
    "LimitError",
    "QuotaExhausted",
    "Throttled",
    "CircuitOpen",
    "RetryDeadlineExceeded",
]

_atexit.register(_core.shutdown)
