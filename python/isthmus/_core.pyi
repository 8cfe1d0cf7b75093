"""
isthmus core (C++): engine, HTTP client, sandbox. Use the isthmus package instead.
"""
from __future__ import annotations
import collections.abc
import typing
__all__: list[str] = ['AmqpQueue', 'ApiKey', 'AwsSigV4', 'BasicAuth', 'BearerToken', 'ChangeLog', 'CompletionQueue', 'Coordination', 'Credential', 'FieldMapper', 'HmacSigner', 'HttpBatcher', 'HttpClient', 'JsonlWriter', 'JwtAssertion', 'Lease', 'Limiter', 'LocalQueue', 'MappedBatch', 'OAuth2', 'PageReader', 'RefreshLock', 'Response', 'SandboxServer', 'SqliteWriter', 'StateStore', 'TokenStore', 'Watermark', 'WebhookReceiver', 'constant_time_equal', 'encode_query', 'encode_url', 'error_codes', 'find_link', 'generate_token_key', 'hmac', 'json_batch', 'json_dumps', 'json_lines', 'map_page', 'parse_page', 'parse_retry_after', 'parse_server_quota', 'pkce_challenge_s256', 'pkce_verifier', 'python_records_built', 'raise_error_code', 'random_token', 'record_keys', 'record_values', 'redact_url', 'shutdown', 'sign_hmac_webhook', 'sign_jwt', 'sign_webhook', 'verify_webhook']
class JwtAssertion:
    def __init__(self, algorithm: str, key: bytes, key_id: str, issuer: str, subject: str, audience: str, lifetime: typing.SupportsFloat | typing.SupportsIndex, extra_claims_json: str) -> None:
        ...
    def make(self) -> str:
        ...
class Credential:
    """
    Core credential; use the classes in isthmus.auth.
    """
class ApiKey(Credential):
    def __init__(self, value: str, header: str, query: str) -> None:
        ...
class BasicAuth(Credential):
    def __init__(self, user: str, password: str) -> None:
        ...
class BearerToken(Credential):
    def __init__(self, token: str) -> None:
        ...
class HmacSigner(Credential):
    def __init__(self, key: bytes, algorithm: str, canonical: str, header: str, prefix: str, base64: bool, timestamp_header: str, nonce_header: str) -> None:
        ...
    def sign(self, method: str, url: str, headers: collections.abc.Sequence[tuple[str, str]], body: bytes, timestamp: typing.SupportsInt | typing.SupportsIndex) -> tuple:
        ...
class AwsSigV4(Credential):
    def __init__(self, access_key: str, secret_key: str, region: str, service: str, session_token: str) -> None:
        ...
    def sign(self, method: str, url: str, headers: collections.abc.Sequence[tuple[str, str]], body: bytes, timestamp: typing.SupportsInt | typing.SupportsIndex) -> tuple:
        ...
class TokenStore:
    @staticmethod
    def memory() -> TokenStore:
        ...
    @staticmethod
    def sqlite(path: str, key_env: str, key_file: str) -> TokenStore:
        ...
    def contains(self, id: str) -> bool:
        ...
    def erase(self, id: str) -> None:
        ...
    def load_secret(self, id: str) -> str | None:
        ...
    def save_secret(self, id: str, text: str) -> None:
        ...
class RefreshLock:
    """
    Serializes token requests across processes; Coordination.refresh_lock() makes one.
    """
class OAuth2(Credential):
    def __init__(self, grant: str, token_url: str, client_id: str, client_secret: str, auth_method: str, scopes: collections.abc.Sequence[str], audience: str, refresh_token: str, code: str, code_verifier: str, redirect_uri: str, jwt: JwtAssertion, extra_params: collections.abc.Sequence[tuple[str, str]], refresh_before: typing.SupportsFloat | typing.SupportsIndex, default_lifetime: typing.SupportsFloat | typing.SupportsIndex, timeout: typing.SupportsFloat | typing.SupportsIndex, store: TokenStore, store_id: str, on_token: typing.Any, refresh_lock: RefreshLock | None = None) -> None:
        ...
    def ensure_token(self) -> None:
        ...
    @property
    def expires_in(self) -> float:
        ...
    @property
    def has_token(self) -> bool:
        ...
    @property
    def store_id(self) -> str:
        ...
    @property
    def token_requests(self) -> int:
        ...
class Lease:
    """
    A lock with a lease in Redis; isthmus.Claim wraps it.
    """
    def release(self, timeout: typing.SupportsFloat | typing.SupportsIndex) -> bool:
        ...
    def renew(self, timeout: typing.SupportsFloat | typing.SupportsIndex) -> bool:
        ...
    @property
    def held(self) -> bool:
        ...
    @property
    def lease(self) -> float:
        ...
    @property
    def name(self) -> str:
        ...
class Coordination:
    """
    A Redis connection; isthmus.Coordination wraps it.
    """
    def __init__(self, url: str, namespace: str, connect_timeout: typing.SupportsFloat | typing.SupportsIndex, command_timeout: typing.SupportsFloat | typing.SupportsIndex) -> None:
        ...
    def claim(self, name: str, lease: typing.SupportsFloat | typing.SupportsIndex, timeout: typing.SupportsFloat | typing.SupportsIndex) -> Lease:
        ...
    def command(self, argv: collections.abc.Sequence[str], timeout: typing.SupportsFloat | typing.SupportsIndex) -> typing.Any:
        """
        One Redis command (keys named in full, see key()); nil is None, an array a list, a string str. For the worker's heartbeats and the status command.
        """
    def key(self, name: str) -> str:
        ...
    def refresh_lock(self) -> RefreshLock:
        ...
    def stats(self) -> dict:
        ...
    def token_store(self, key_env: str, key_file: str) -> TokenStore:
        ...
    @property
    def namespace(self) -> str:
        ...
    @property
    def redacted_url(self) -> str:
        ...
class Response:
    """
    A raw response from the core; isthmus.Response wraps it.
    """
    def exception(self, method: str, url: str) -> typing.Any:
        ...
    def take_body(self) -> bytes:
        ...
    @property
    def attempts(self) -> int:
        ...
    @property
    def body_size(self) -> int:
        ...
    @property
    def elapsed(self) -> float:
        ...
    @property
    def error_code(self) -> int:
        ...
    @property
    def error_message(self) -> str:
        ...
    @property
    def headers(self) -> list:
        ...
    @property
    def http_version(self) -> str:
        ...
    @property
    def ok(self) -> bool:
        ...
    @property
    def redirects(self) -> int:
        ...
    @property
    def retried_429(self) -> int:
        ...
    @property
    def retried_bytes(self) -> int:
        ...
    @property
    def status(self) -> int:
        ...
    @property
    def url(self) -> str:
        ...
    @property
    def waited(self) -> float:
        ...
class CompletionQueue:
    def __init__(self, notify: typing.Any) -> None:
        ...
    def close(self) -> None:
        ...
    def take(self) -> list:
        ...
class HttpClient:
    def __init__(self, timeout: typing.SupportsFloat | typing.SupportsIndex, connect_timeout: typing.SupportsFloat | typing.SupportsIndex, max_connections_per_host: typing.SupportsInt | typing.SupportsIndex, max_connections: typing.SupportsInt | typing.SupportsIndex, follow_redirects: bool, max_redirects: typing.SupportsInt | typing.SupportsIndex, verify: bool, ca_bundle: str, http2: bool, user_agent: str, max_body_bytes: typing.SupportsInt | typing.SupportsIndex, credential: Credential | None = None, governor: typing.Any = None, retry: typing.Any = None, limit_key: typing.Any = None) -> None:
        ...
    def cancel(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def close(self) -> None:
        ...
    def governed(self, governor: typing.Any, retry: typing.Any, limit_key: typing.Any) -> HttpClient:
        """
        A client on the same connections and credential with its own limits and retries.
        """
    def request(self, method: str, url: str, headers: collections.abc.Sequence[tuple[str, str]], body: typing.Any, timeout: typing.SupportsFloat | typing.SupportsIndex, follow_redirects: typing.SupportsInt | typing.SupportsIndex, sensitive_headers: collections.abc.Sequence[str]) -> Response:
        ...
    def request_many(self, items: list, concurrency: typing.SupportsInt | typing.SupportsIndex) -> list:
        ...
    def send_async(self, queue: CompletionQueue, token: typing.SupportsInt | typing.SupportsIndex, method: str, url: str, headers: collections.abc.Sequence[tuple[str, str]], body: typing.Any, timeout: typing.SupportsFloat | typing.SupportsIndex, follow_redirects: typing.SupportsInt | typing.SupportsIndex, sensitive_headers: collections.abc.Sequence[str]) -> int:
        ...
    @property
    def connections_opened(self) -> int:
        ...
class SandboxServer:
    """
    The sandbox mock API server (use isthmus.Sandbox).
    """
    def __init__(self, host: str = '127.0.0.1', port: typing.SupportsInt | typing.SupportsIndex = 0, threads: typing.SupportsInt | typing.SupportsIndex = 1, config_json: str = '{}') -> None:
        ...
    def port(self) -> int:
        ...
    def reset_stats(self) -> None:
        ...
    def revoke_tokens(self, tenant: typing.SupportsInt | typing.SupportsIndex) -> int:
        ...
    def set_access(self, tenant: typing.SupportsInt | typing.SupportsIndex, allowed: bool) -> int:
        ...
    def start(self) -> None:
        ...
    def stats_json(self) -> str:
        ...
    def stop(self) -> None:
        ...
    def tenants_json(self) -> str:
        ...
    def url(self) -> str:
        ...
class FieldMapper:
    """
    The core of isthmus.FieldMap.
    """
    def __init__(self, rules: list) -> None:
        ...
    def apply(self, records: list) -> tuple:
        ...
class MappedBatch:
    """
    Records as JSON text in the core, for its sink writers; see isthmus.sinks.
    """
    def __len__(self) -> int:
        ...
    def keys(self) -> list:
        """
        Each record's key, None where it has none (see keyless).
        """
    def lines(self) -> bytes:
        """
        The records as JSON Lines.
        """
    def set_key(self, index: typing.SupportsInt | typing.SupportsIndex, key: str) -> None:
        ...
    @property
    def failures(self) -> list:
        """
        [(index among the records read, reason, record JSON, key or None), ...]
        """
    @property
    def keyless(self) -> list:
        """
        [(index, input record JSON), ...] of the records without a key.
        """
    @property
    def read(self) -> int:
        """
        Records read (mapped and failed).
        """
class Watermark:
    """
    The first unit not yet accepted, when units finish out of order.
    """
    def __init__(self, start: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
        ...
    def complete(self, begin: typing.SupportsInt | typing.SupportsIndex, end: typing.SupportsInt | typing.SupportsIndex) -> int:
        ...
    @property
    def pending_ranges(self) -> int:
        ...
    @property
    def pending_units(self) -> int:
        ...
    @property
    def value(self) -> int:
        ...
class PageReader:
    """
    The core's fetch loop of a paginated stream; isthmus.Stream reads through it.
    """
    def __init__(self, client: typing.Any, spec: dict) -> None:
        ...
    def close(self) -> None:
        """
        Cancels what is in flight; next() then returns None.
        """
    def counts(self) -> dict:
        """
        requests, status_429, retries, bytes_in, wait_seconds so far.
        """
    def follow(self, partition: typing.SupportsInt | typing.SupportsIndex, step: typing.Any) -> None:
        """
        A follow paginator's next step for the partition's last page; None when it was the last.
        """
    def next(self, timeout: typing.Any = None, body: bool = False) -> typing.Any:
        """
        The next page as (partition, records, after, units, total, done, fields, response), None at the end, False when timeout seconds passed first; raises the error that stopped the read. records is a list, or the page's bytes with body=True or when the core cannot hold a number in it.
        """
class Limiter:
    """
    A limiter shared by the clients given it; isthmus.Limiter wraps it.
    """
    def __init__(self, rules: list, costs: collections.abc.Sequence[tuple[str, typing.SupportsFloat | typing.SupportsIndex]], max_wait: typing.SupportsFloat | typing.SupportsIndex, max_server_wait: typing.SupportsFloat | typing.SupportsIndex, coordination: Coordination | None = None, name: str = '', shares: collections.abc.Sequence[tuple[str, typing.SupportsFloat | typing.SupportsIndex, list]] = []) -> None:
        ...
    def observe(self, key: typing.Any, status: typing.SupportsInt | typing.SupportsIndex, latency: typing.SupportsFloat | typing.SupportsIndex = 0.0, retry_after: typing.Any = None, timeout: bool = False) -> None:
        ...
    def pause(self, arg0: typing.Any, arg1: typing.SupportsFloat | typing.SupportsIndex) -> None:
        ...
    def release(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def remove_share(self, tenant: str) -> bool:
        ...
    def reserve(self, key: typing.Any, cost: typing.SupportsFloat | typing.SupportsIndex, priority: str) -> tuple[float, bool, bool, int, typing.Any, float, str]:
        """
        (wait seconds, granted, blocked, ticket, error code or None, resets_at, reason)
        """
    def reserve_fast(self, cost: typing.SupportsFloat | typing.SupportsIndex = 1.0) -> float:
        ...
    def set_share(self, tenant: str, weight: typing.SupportsFloat | typing.SupportsIndex, rules: list) -> None:
        ...
    def shares(self) -> dict:
        ...
    def snapshot(self) -> dict:
        ...
    @property
    def waiting(self) -> int:
        ...
class JsonlWriter:
    """
    The core of isthmus.JsonlSink.
    """
    def __init__(self, path: str, fsync: bool) -> None:
        ...
    def close(self) -> None:
        ...
    def flush(self) -> None:
        ...
    def open(self) -> None:
        ...
    def write(self, batch: MappedBatch) -> int:
        """
        Appends the batch's lines; returns the bytes written.
        """
    @property
    def is_open(self) -> bool:
        ...
class SqliteWriter:
    """
    The core of isthmus.SqliteSink.
    """
    def __init__(self, path: str, table: str, key_field: str) -> None:
        ...
    def close(self) -> None:
        ...
    def open(self) -> None:
        ...
    def write(self, batch: MappedBatch, keys_are_final: bool) -> None:
        ...
class HttpBatcher:
    """
    The core of isthmus.HttpSink.
    """
    @staticmethod
    def idempotency_key(keys: collections.abc.Sequence[str]) -> str:
        ...
    def __init__(self, client: typing.Any, url: str, headers: collections.abc.Sequence[tuple[str, str]], batch_size: typing.SupportsInt | typing.SupportsIndex, concurrency: typing.SupportsInt | typing.SupportsIndex, wrap: str, idempotency_key: bool, timeout: typing.SupportsFloat | typing.SupportsIndex, key_function: typing.Any = None) -> None:
        ...
    def clear(self) -> None:
        ...
    def flush(self) -> typing.Any:
        ...
    def write(self, batch: MappedBatch) -> typing.Any:
        """
        (rejected [(key, record JSON, Response)], stopping Response or None, counts)
        """
    @property
    def buffered(self) -> int:
        ...
class LocalQueue:
    """
    A durable queue in one SQLite file (use isthmus.LocalQueue).
    """
    def __init__(self, path: str, max_deliveries: typing.SupportsInt | typing.SupportsIndex = 5) -> None:
        ...
    def ack(self, token: str, ids: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]) -> int:
        """
        Removes the messages still held by the lease; returns how many.
        """
    def close(self) -> None:
        """
        Releases the backend; later calls raise StateError.
        """
    def dead_letters(self, limit: typing.SupportsInt | typing.SupportsIndex = 0) -> list:
        """
        [(id, body, deliveries, enqueued_at, dead_at, reason), ...], oldest first (limit 0: all).
        """
    def lease(self, n: typing.SupportsInt | typing.SupportsIndex, visibility_ms: typing.SupportsInt | typing.SupportsIndex) -> tuple:
        """
        (token, expires_at, [(id, body, deliveries), ...]) of up to n ready messages.
        """
    def nack(self, token: str, ids: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], delay_ms: typing.SupportsInt | typing.SupportsIndex) -> int:
        """
        Returns the messages to ready after the delay (or to the dead letters); returns how many.
        """
    def put(self, items: list) -> int:
        """
        Puts all of items (str or bytes), durably; returns how many.
        """
    def stats(self) -> dict:
        """
        {ready, leased, delayed, dead}
        """
    @property
    def max_deliveries(self) -> int:
        ...
    @property
    def path(self) -> str:
        ...
class AmqpQueue:
    """
    A queue on a RabbitMQ broker (use isthmus.AmqpQueue).
    """
    @staticmethod
    def delay_steps() -> list[float]:
        """
        The delay queues' TTLs in seconds, smallest first.
        """
    def __init__(self, url: str, name: str, max_deliveries: typing.SupportsInt | typing.SupportsIndex = 5, prefetch: typing.SupportsInt | typing.SupportsIndex = 100, connect_timeout_ms: typing.SupportsInt | typing.SupportsIndex = 10000, consume: bool = False) -> None:
        ...
    def ack(self, token: str, ids: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]) -> int:
        """
        Removes the messages still held by the lease; returns how many.
        """
    def close(self) -> None:
        """
        Releases the backend; later calls raise StateError.
        """
    def dead_letters(self, limit: typing.SupportsInt | typing.SupportsIndex = 0) -> list:
        """
        [(id, body, deliveries, enqueued_at, dead_at, reason), ...], oldest first (limit 0: all).
        """
    def lease(self, n: typing.SupportsInt | typing.SupportsIndex, visibility_ms: typing.SupportsInt | typing.SupportsIndex) -> tuple:
        """
        (token, expires_at, [(id, body, deliveries), ...]) of up to n ready messages.
        """
    def lease_within(self, n: typing.SupportsInt | typing.SupportsIndex, visibility_ms: typing.SupportsInt | typing.SupportsIndex, wait_ms: typing.SupportsInt | typing.SupportsIndex) -> tuple:
        """
        As lease, waiting up to wait_ms for a message when none is ready (a consuming queue).
        """
    def nack(self, token: str, ids: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], delay_ms: typing.SupportsInt | typing.SupportsIndex) -> int:
        """
        Returns the messages to ready after the delay (or to the dead letters); returns how many.
        """
    def pause(self) -> int:
        """
        A consuming queue cancels its consumer and returns what it held unleased; returns how many.
        """
    def put(self, items: list) -> int:
        """
        Puts all of items (str or bytes), durably; returns how many.
        """
    def stats(self) -> dict:
        """
        {ready, leased, delayed, dead}
        """
    @property
    def consume(self) -> bool:
        ...
    @property
    def max_deliveries(self) -> int:
        ...
    @property
    def name(self) -> str:
        ...
    @property
    def prefetch(self) -> int:
        ...
    @property
    def url(self) -> str:
        """
        The broker's URL with its password masked.
        """
class StateStore:
    """
    A pipeline state file in the core (use isthmus.store.StateStore).
    """
    dead_letter_columns: typing.ClassVar[list] = ['id', 'record_key', 'stage', 'record', 'error', 'traceback', 'http_status', 'response_excerpt', 'attempts', 'first_seen', 'last_seen', 'run_id', 'resolved_at', 'resolution']
    def __init__(self, path: str, create: bool = True) -> None:
        ...
    def backup(self, dest: str) -> None:
        ...
    def begin_run(self, pipeline: str) -> int:
        ...
    def bump_dead_letter(self, id: typing.SupportsInt | typing.SupportsIndex, error: str, http_status: typing.SupportsInt | typing.SupportsIndex | None, excerpt: str | None, traceback: str | None, stage: str | None, record: str | None) -> None:
        ...
    def claim(self, pipeline: str, identity: str, adopt: bool = False) -> tuple[dict, typing.Any]:
        """
        (the checkpoint as load() returns it, the identity it was filed under before when adopt moved it).
        """
    def close(self) -> None:
        ...
    def commit(self, pipeline: str, run_id: typing.SupportsInt | typing.SupportsIndex, position: str | None, dead_letters: list, set_incremental: bool, incremental: str | None, resolved: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], superseded: collections.abc.Sequence[str], dead_letters_of: str = '') -> None:
        """
        The checkpoint, the dead letters (filed under dead_letters_of when given) (dicts, record as JSON text), the replayed and the superseded ones in one transaction.
        """
    def damaged_message(self, why: str) -> str:
        """
        The text of the StateError for a damaged file: names it, says why and what to do.
        """
    def dead_letters(self, pipeline: str | None | None = None, run_id: typing.SupportsInt | typing.SupportsIndex | None | None = None, include: str = 'open', where: str = '', params: tuple = ()) -> list:
        """
        Dead letters as dicts (record as JSON text), oldest first. include: open, superseded (open ones and those a newer version replaced) or all.
        """
    def finish_run(self, run_id: typing.SupportsInt | typing.SupportsIndex, status: str, counts: str, error: str | None | None = None) -> None:
        ...
    def identity(self, pipeline: str) -> str | None:
        ...
    def load(self, pipeline: str) -> dict:
        """
        {'position': JSON text or None, 'incremental': JSON text or None}.
        """
    def open_dead_letter_keys(self, pipeline: str) -> list[str]:
        ...
    def pipelines(self) -> list[str]:
        ...
    def resolve(self, ids: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]) -> None:
        ...
    def runs(self, pipeline: str | None | None = None) -> list:
        """
        Run rows as dicts, counts as JSON text, oldest first.
        """
    @property
    def path(self) -> str:
        ...
class WebhookReceiver:
    """
    A webhook receiver (use isthmus.WebhookReceiver).
    """
    def __init__(self, host: str, port: typing.SupportsInt | typing.SupportsIndex, threads: typing.SupportsInt | typing.SupportsIndex, routes: list, queue: typing.Any, max_body_bytes: typing.SupportsInt | typing.SupportsIndex, max_depth: typing.SupportsInt | typing.SupportsIndex, dedupe_ids: typing.SupportsInt | typing.SupportsIndex, retry_after: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def start(self) -> None:
        """
        Binds and serves.
        """
    def stats(self) -> dict:
        """
        The counters: requests, accepted, duplicates, ..., puts, depth, routes {path: accepted}.
        """
    def stop(self) -> None:
        """
        Writes and answers what was handed in, then stops.
        """
    @property
    def port(self) -> int:
        ...
    @property
    def url(self) -> str:
        ...
class ChangeLog:
    def __init__(self, path: str) -> None:
        ...
    def apply_records(self, records: list, connection: str, resource: str, origin: str, fields: dict, seen_events: collections.abc.Sequence[str] = []) -> dict:
        ...
    def close(self) -> None:
        ...
    def get(self, connection: str, resource: str, id: str) -> typing.Any:
        ...
    def ingest(self, bodies: list, format: dict, fields: dict, connections: collections.abc.Sequence[tuple[str, str]], default_connection: str) -> tuple[dict, list, list]:
        ...
    def meta(self, key: str) -> str | None:
        ...
    def read(self, after_seq: typing.SupportsInt | typing.SupportsIndex, limit: typing.SupportsInt | typing.SupportsIndex, connection: str = '', resource: str = '') -> tuple[bytes, list]:
        ...
    def rejected(self, limit: typing.SupportsInt | typing.SupportsIndex = 0) -> list:
        ...
    def seen(self, event_ids: collections.abc.Sequence[str]) -> list[bool]:
        ...
    def set_meta(self, key: str, value: str) -> None:
        ...
    def stats(self, connection: str = '', resource: str = '') -> dict:
        ...
    @property
    def path(self) -> str:
        ...
def constant_time_equal(arg0: bytes, arg1: bytes) -> bool:
    ...
def encode_query(params: collections.abc.Sequence[tuple[str, str]]) -> str:
    """
    name=value pairs joined by '&', percent-encoded as the signers expect (a space is %20, escapes in upper-case hex).
    """
def encode_url(url: str) -> str:
    """
    The URL as sent on the wire: non-ASCII and unsafe bytes of the path, query and fragment percent-encoded as UTF-8, existing %XX escapes kept.
    """
def error_codes() -> list[tuple[str, int, str]]:
    """
    Every code of the core's error category as (name, value, message), in value order.
    """
def find_link(values: collections.abc.Sequence[str], rel: str) -> str | None:
    """
    The target of the first link whose rel includes `rel`, across the values of Link header fields in order (RFC 8288); None when there is none.
    """
def generate_token_key() -> str:
    ...
def hmac(algorithm: str, key: bytes, data: bytes) -> bytes:
    ...
def json_batch(records: list, keys: list) -> tuple:
    """
    (MappedBatch of the records as JSON with their keys, [(index, reason), ...] for records left out).
    """
def json_dumps(obj: typing.Any) -> bytes:
    """
    obj as compact UTF-8 JSON bytes; TypeError naming the path of a value it cannot write.
    """
def json_lines(records: list) -> tuple:
    """
    (JSON Lines bytes, [(index, reason), ...] for records left out).
    """
def map_page(body: typing.Any, records_path: str, fields: collections.abc.Sequence[str], key_path: str, mapper: FieldMapper | None = None) -> tuple:
    """
    Parse a page and map its records in the core: (status, MappedBatch, field texts).
    """
def parse_page(body: typing.Any, records_path: str, fields: collections.abc.Sequence[str]) -> tuple:
    """
    Parse a page: (status, records, field texts). See isthmus.pipeline.
    """
def parse_retry_after(value: str, unix_now: typing.SupportsFloat | typing.SupportsIndex) -> float | None:
    ...
def parse_server_quota(headers: collections.abc.Sequence[tuple[str, str]], unix_now: typing.SupportsFloat | typing.SupportsIndex) -> dict:
    ...
def pkce_challenge_s256(verifier: str) -> str:
    ...
def pkce_verifier(length: typing.SupportsInt | typing.SupportsIndex = 64) -> str:
    ...
def python_records_built() -> int:
    """
    Records the core has made into Python objects so far (parsed pages, FieldMap results); for tests.
    """
def raise_error_code(value: typing.SupportsInt | typing.SupportsIndex, message: str) -> None:
    """
    Raises the Python exception the core's code `value` becomes (for the test of the table).
    """
def random_token(nbytes: typing.SupportsInt | typing.SupportsIndex) -> str:
    ...
def record_keys(records: list, path: collections.abc.Sequence[str]) -> list:
    """
    Each record's identity at a path of keys, as text; None where it has none.
    """
def record_values(records: list, path: collections.abc.Sequence[str]) -> list:
    """
    The value at a path of keys (digits index a list) in each record; None where absent.
    """
def redact_url(arg0: str) -> str:
    """
    The URL with a password and secret-looking query values replaced by ***.
    """
def shutdown() -> None:
    """
    Stop the process-wide engine's I/O threads (called at interpreter exit).
    """
def sign_hmac_webhook(secret: str, body: bytes) -> str:
    """
    'sha256=<hex HMAC-SHA256 of body>' for the hmac scheme.
    """
def sign_jwt(algorithm: str, key: bytes, claims_json: str, key_id: str) -> str:
    ...
def sign_webhook(scheme: str, secret: str, id: str, timestamp: typing.SupportsFloat | typing.SupportsIndex, body: bytes) -> list[tuple[str, str]]:
    ...
def verify_webhook(scheme: str, secret: str, headers: collections.abc.Sequence[tuple[str, str]], body: bytes, tolerance: typing.SupportsFloat | typing.SupportsIndex, now: typing.SupportsFloat | typing.SupportsIndex) -> typing.Any:
    ...
