"""The sandbox: a mock SaaS API served by the C++ core on 127.0.0.1.

For learning in notebooks, the demo, tests and benchmarks::

    with isthmus.Sandbox(records=10_000, auth="oauth2", rate_limit=50) as api:
        requests.post(api.token_url, data={"grant_type": "client_credentials",
                                           "client_id": api.client_id,
                                           "client_secret": api.client_secret})
        api.stats()["requests"]["by_endpoint"]

With ``tenants=N`` it serves N customers, each with its own credentials and records, under an
app-wide limit (``app_rate_limit``)::

    with isthmus.Sandbox(tenants=3, auth="api_key", rate_limit=10, app_rate_limit=25) as api:
        key = api.tenants[1].api_key
        api.stats()["tenants"][1]["requests"]["total"]
        api.tenants[1].revoke_access()   # the customer disconnects the app

Every option is described in docs/sandbox.md.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Dict, Optional, Tuple

from isthmus import _core
from isthmus.errors import ConfigError

__all__ = ["Sandbox", "SandboxTenant", "SANDBOX_OPTIONS"]

PAGINATION_STYLES = ("cursor", "offset", "page", "link", "next_url")
AUTH_MODES = ("none", "api_key", "basic", "bearer", "oauth2")
FAULT_KINDS = ("error_rate", "latency_ms", "reset", "truncate", "malformed")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(float(v)))


def _int_range(lo: int, hi: int) -> Tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and lo <= v <= hi, f"an integer from {lo} to {hi}")


def _number_range(lo: float, hi: float) -> Tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_number(v) and lo <= v <= hi, f"a number from {lo} to {hi}")


def _one_of(*choices: str) -> Tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices, "one of " + ", ".join(repr(c) for c in choices))


def _text() -> Tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, str) and 0 < len(v) <= 256 and v.isprintable(),
            "a non-empty printable string of at most 256 characters")


def _boolean() -> Tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, bool), "True or False")


MAX_TENANTS = 10_000


def _optional(check: Tuple[Callable[[Any], bool], str]) -> Tuple[Callable[[Any], bool], str]:
    ok, valid = check
    return (lambda v: v is None or ok(v), valid + " (or None)")


def _tenant_records() -> Tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        counts = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        return counts is not None and all(_is_int(n) and 0 <= n <= 100_000_000 for n in counts)
    return (ok, "a list of record counts, one per tenant, or a dict of tenant index -> count "
                "(counts from 0 to 100000000)")


def _faults() -> Tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, dict), 'a dict such as {"/v1/contacts": {"error_rate": {"503": 0.1}}}')


# name -> (default, check, what is valid). The C++ side validates again (the CLI and other
# callers pass JSON straight through), with the same wording.
SANDBOX_OPTIONS: Dict[str, Tuple[Any, Callable[[Any], bool], str]] = {
    "tenants": (None, *_optional(_int_range(1, MAX_TENANTS))),
    "tenant_records": (None, *_optional(_tenant_records())),
    "records": (1000, *_int_range(0, 100_000_000)),
    "seed": (42, *_int_range(0, 2**63 - 1)),
    "updates_per_second": (0.0, *_number_range(0, 1_000_000)),
    "pagination": ("cursor", *_one_of(*PAGINATION_STYLES)),
    "default_page_size": (20, *_int_range(1, 10_000)),
    "max_page_size": (100, *_int_range(1, 10_000)),
    "auth": ("none", *_one_of(*AUTH_MODES)),
    "api_key_in": ("header", *_one_of("header", "query")),
    "client_id": ("sandbox-client", *_text()),
    "client_secret": ("sandbox-secret", *_text()),
    "api_key": ("sandbox-api-key", *_text()),
    "username": ("sandbox-user", *_text()),
    "password": ("sandbox-password", *_text()),
    "bearer_token": ("sandbox-static-token", *_text()),
    "token_lifetime": (3600.0, *_number_range(0.001, 10 * 365 * 86400)),
    "rotate_refresh_tokens": (False, *_boolean()),
    "signing_secret": ("", (lambda v: isinstance(v, str) and len(v) <= 256), "a string (empty = no HMAC check)"),
    "rate_limit": (0.0, *_number_range(0, 10_000_000)),
    "burst": (1, *_int_range(1, 10_000_000)),
    "daily_quota": (0, *_int_range(0, 10**12)),
    "retry_after": ("seconds", *_one_of("seconds", "http-date")),
    "app_rate_limit": (0.0, *_number_range(0, 10_000_000)),
    "app_burst": (1, *_int_range(1, 10_000_000)),
    "overload_capacity": (0.0, *_number_range(0, 10_000_000)),
    "overload_behavior": ("errors", *_one_of("errors", "stall", "mixed")),
    "faults": ({}, *_faults()),
    "webhook_max_attempts": (5, *_int_range(1, 100)),
    "webhook_backoff": (0.5, *_number_range(0.001, 3600)),
    "max_body_bytes": (16 * 1024 * 1024, *_int_range(1024, 2**32)),
    "max_arrivals": (100_000, *_int_range(0, 100_000_000)),
}


# Options whose values are credentials: an error names the option but never shows the value.
_SECRET_OPTIONS = frozenset({"client_secret", "api_key", "password", "bearer_token", "signing_secret"})
# What identifies one customer: with tenants, every tenant has its own.
_TENANT_CREDENTIALS = ("client_id", "client_secret", "api_key", "username", "password", "bearer_token")


def _shown(field: str, value: Any) -> str:
    return f"{field}=***" if field in _SECRET_OPTIONS else f"{field}={value!r}"


def _check(field: str, value: Any, ok: Callable[[Any], bool], valid: str) -> None:
    if not ok(value):
        raise ConfigError(f"sandbox option {_shown(field, value)} is invalid: expected {valid}")


def validate_options(options: Dict[str, Any]) -> Dict[str, Any]:
    """Returns the options with defaults filled in; raises ValueError naming a bad field."""
    config: Dict[str, Any] = {}
    for field, value in options.items():
        if field not in SANDBOX_OPTIONS:
            # The value is left out: a misspelt credential option would otherwise show it.
            raise ConfigError(f"sandbox option {field!r} is not known: expected one of "
                             + ", ".join(sorted(SANDBOX_OPTIONS)))
        _default, ok, valid = SANDBOX_OPTIONS[field]
        _check(field, value, ok, valid)
        config[field] = value
    for field, (default, _ok, _valid) in SANDBOX_OPTIONS.items():
        config.setdefault(field, default)
    if "default_page_size" not in options:
        config["default_page_size"] = min(config["default_page_size"], config["max_page_size"])
    if config["default_page_size"] > config["max_page_size"]:
        raise ConfigError(f"sandbox option default_page_size={config['default_page_size']!r} is invalid: "
                         f"expected at most max_page_size={config['max_page_size']}")
    _check_tenants(options, config)
    return config


def _check_tenants(options: Dict[str, Any], config: Dict[str, Any]) -> None:
    """The rules between `tenants` and the other options; drops the single customer's credentials."""
    n = config["tenants"]
    records = config["tenant_records"]
    if n is None:
        if records is not None:
            raise ConfigError("sandbox option tenant_records is invalid: expected no tenant_records without tenants")
        return
    if config["auth"] == "none":
        raise ConfigError(f"sandbox option tenants={n!r} is invalid: expected a sandbox with auth set to "
                          "api_key, basic, bearer or oauth2 (a request finds its tenant by its credential)")
    for field in _TENANT_CREDENTIALS:
        if field in options:
            raise ConfigError(f"sandbox option {field} cannot be set with tenants: every tenant has its own "
                              "(sandbox.tenants[i])")
        del config[field]
    if isinstance(records, list) and len(records) != n:
        raise ConfigError(f"sandbox option tenant_records is invalid: expected a list of {n} counts, one per tenant")
    if isinstance(records, dict):
        for key in records:
            if not (_is_int(key) or (isinstance(key, str) and key.isdigit())) or not 0 <= int(key) < n:
                raise ConfigError(f"sandbox option tenant_records is invalid: expected tenant indexes from 0 to "
                                  f"{n - 1} as keys, not {key!r}")


class SandboxTenant:
    """One customer of a sandbox with `tenants`: its credentials, its records, its access.

    Its credentials read only its own records; the repr shows no secret."""

    __slots__ = ("_sandbox", "index", "client_id", "client_secret", "api_key", "username", "password",
                 "bearer_token", "records")

    def __init__(self, sandbox: Sandbox, fields: Dict[str, Any]) -> None:
        self._sandbox = sandbox
        self.index: int = int(fields["tenant"])
        self.client_id: str = str(fields["client_id"])
        self.client_secret: str = str(fields["client_secret"])
        self.api_key: str = str(fields["api_key"])
        self.username: str = str(fields["username"])
        self.password: str = str(fields["password"])
        self.bearer_token: str = str(fields["bearer_token"])
        self.records: int = int(fields["records"])

    def stats(self) -> Dict[str, Any]:
        """This tenant's part of the sandbox's stats()."""
        part: Dict[str, Any] = self._sandbox.stats()["tenants"][self.index]
        return part

    def revoke_tokens(self) -> int:
        """Revokes every access and refresh token issued to this tenant; returns how many were live."""
        return self._sandbox.revoke_tokens(self.index)

    def revoke_access(self) -> int:
        """The customer disconnects the app: see Sandbox.revoke_access."""
        return self._sandbox.revoke_access(self.index)

    def restore_access(self) -> None:
        self._sandbox.restore_access(self.index)

    def __repr__(self) -> str:
        return f"<isthmus.SandboxTenant {self.index} client_id={self.client_id!r} records={self.records}>"


class Sandbox:
    """A mock SaaS API on 127.0.0.1 (a free port unless `port` is given); a context manager."""

    def __init__(self, *, port: int = 0, threads: int = 1, host: str = "127.0.0.1",
                 **options: Any) -> None:
        _check("port", port, *_int_range(0, 65535))
        _check("threads", threads, *_int_range(1, 256))
        _check("host", host, lambda v: isinstance(v, str) and bool(v), "an IP address such as 127.0.0.1")
        self.options = validate_options(options)
        config = {k: v for k, v in self.options.items() if v is not None}
        self._server = _core.SandboxServer(host, port, threads, json.dumps(config))
        self._running = False
        # Derived by the core from (seed, index), so they are known before start().
        self.tenants: Tuple[SandboxTenant, ...] = tuple(
            SandboxTenant(self, fields) for fields in json.loads(self._server.tenants_json()))

    def start(self) -> Sandbox:
        if not self._running:
            self._server.start()
            self._running = True
        return self

    def stop(self) -> None:
        self._server.stop()
        self._running = False

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self._server.port())

    @property
    def url(self) -> str:
        return str(self._server.url())

    @property
    def token_url(self) -> str:
        return self.url + "/oauth/token"

    @property
    def authorize_url(self) -> str:
        return self.url + "/oauth/authorize"

    @property
    def revoke_url(self) -> str:
        return self.url + "/oauth/revoke"

    def _credential(self, name: str) -> str:
        if self.tenants:
            raise AttributeError(f"a sandbox with tenants has no single {name}: "
                                 f"every tenant has its own (sandbox.tenants[i].{name})")
        return str(self.options[name])

    @property
    def client_id(self) -> str:
        return self._credential("client_id")

    @property
    def client_secret(self) -> str:
        return self._credential("client_secret")

    @property
    def api_key(self) -> str:
        return self._credential("api_key")

    @property
    def username(self) -> str:
        return self._credential("username")

    @property
    def password(self) -> str:
        return self._credential("password")

    @property
    def bearer_token(self) -> str:
        return self._credential("bearer_token")

    def _tenant_index(self, tenant: Optional[int]) -> int:
        if not self._running:
            raise RuntimeError("the sandbox is not running: start() it first")
        count = max(1, len(self.tenants))
        if tenant is None and not self.tenants:
            return 0
        if tenant is None or not _is_int(tenant) or not 0 <= tenant < count:
            raise ConfigError(f"sandbox tenant={tenant!r} is invalid: expected a tenant index from 0 to {count - 1}")
        return tenant

    def revoke_tokens(self, tenant: Optional[int] = None) -> int:
        """Revokes every access and refresh token issued to `tenant` (the only customer when the
        sandbox has no tenants); returns how many were live. New tokens can still be had."""
        return int(self._server.revoke_tokens(self._tenant_index(tenant)))

    def revoke_access(self, tenant: Optional[int] = None) -> int:
        """Withdraws a tenant's access, as when the customer disconnects the app: its tokens are
        revoked, its credentials get 401 and its token requests invalid_grant, until
        restore_access() or an authorization code the tenant exchanges (it linked the app again).
        Returns how many tokens were revoked."""
        return int(self._server.set_access(self._tenant_index(tenant), False))

    def restore_access(self, tenant: Optional[int] = None) -> None:
        self._server.set_access(self._tenant_index(tenant), True)

    def stats(self) -> Dict[str, Any]:
        """The server's ground truth: requests by endpoint and status, 429s, tokens, records."""
        result: Dict[str, Any] = json.loads(self._server.stats_json())
        return result

    def reset_stats(self) -> None:
        self._server.reset_stats()

    def __repr__(self) -> str:
        state = self.url if self._running else "stopped"
        tenants = f" tenants={len(self.tenants)}" if self.tenants else ""
        return f"<isthmus.Sandbox {state} auth={self.options['auth']!r} records={self.options['records']}{tenants}>"


