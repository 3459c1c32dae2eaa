"""A small etcd v3 client over the HTTP/JSON gateway, built on etcd3gw's session handling.

It adds what the store needs and etcd3gw leaves out: response headers (revisions) for every read,
paginated ranges, transactions with compares, a watch stream that reports compaction, etcd's own
authentication tokens, and failover across several endpoints.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
import requests.adapters
from etcd3gw.client import Etcd3Client
from urllib3.exceptions import ReadTimeoutError

from .config import StoreConfig
from .errors import HistoryCompacted, NotForwarded, PermissionDenied, StoreError, StoreUnavailable, TlsRefused

log = logging.getLogger(__name__)
#: An event of a watch answer, as its transport gives it.
E = TypeVar("E")
PAGE_SIZE = 10_000
#: Events of one watch answer handed on together, at most (whole revisions: a revision is never split). etcd
#: answers a watch far behind with up to 1 000 revisions at once, 128 000 events of a busy store: handed on
#: whole, its first notification waited for all of them to be decoded (over a second), and all were held at once.
WATCH_CHUNK = 2_000
#: Pauses before asking again when etcd cannot serve a request now (leader election, overload).
BUSY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.5)
#: A bound on the attempts of one request, besides its time budget.
MAX_ATTEMPTS = 1000
#: Words of etcd's answers (HTTP 500) that mean "not now" rather than "never".
BUSY_MARKERS = ("leader changed", "no leader", "request timed out", "too many requests", "deadline exceeded",
                "server stopped", "not capable")


def b64(text: str | bytes) -> str:
    """Base64 of a key or value, as the gateway wants it."""
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def unb64(text: str | None) -> str:
    """Decode a base64 key or value from the gateway."""
    return base64.b64decode(text or "").decode("utf-8", errors="replace")


def _range_end_b64(prefix: str) -> str:
    data = bytearray(prefix.encode())
    for index in range(len(data) - 1, -1, -1):
        if data[index] < 0xFF:
            data[index] += 1
            return base64.b64encode(bytes(data[: index + 1])).decode()
    return base64.b64encode(b"\0").decode()


@dataclass(frozen=True)
class KeyValue:
    """One key as etcd holds it."""

    key: str
    value: str
    mod_revision: int
    create_revision: int = 0
    version: int = 0
    lease: int = 0

    @classmethod
    def from_json(cls, kv: dict[str, Any]) -> KeyValue:
        """From the gateway's JSON."""
        return cls(key=unb64(kv.get("key")), value=unb64(kv.get("value")), mod_revision=int(kv.get("mod_revision", 0)),
                   create_revision=int(kv.get("create_revision", 0)), version=int(kv.get("version", 0)),
                   lease=int(kv.get("lease", 0)))


@dataclass(frozen=True)
class WatchBatch:
    """Events of one watch response: puts (deletes are left out) and the revision it reports.

    ``kind`` is ``created`` (etcd confirmed the watch), ``events``, or ``progress``: etcd says every
    event up to ``revision`` was sent (progress notifications), so a quiet watch can move its start.
    """

    puts: list[KeyValue]
    revision: int
    kind: str = "events"
    #: Keys deleted (or expired with their lease) in this response, each with the revision of its deletion, for
    #: readers of records that come and go (a key may be put and deleted, or deleted and put, in one response).
    deleted: tuple[tuple[str, int], ...] = ()

    @property
    def is_progress(self) -> bool:
        """Everything up to ``revision`` has been delivered."""
        return self.kind == "progress"


def revision_parts(events: Sequence[E], revision_of: Callable[[E], int]) -> Iterator[Sequence[E]]:
    """``events`` (in history order) in parts of about :data:`WATCH_CHUNK`, each ending where a revision ends."""
    size, start, total = WATCH_CHUNK, 0, len(events)
    if total <= size:  # nearly every answer: one part, as it came
        yield events
        return
    while start < total:
        end = min(start + size, total)
        if end < total:
            last = revision_of(events[end - 1])
            while end < total and revision_of(events[end]) == last:
                end += 1
        yield events[start:end]
        start = end


def range_op(key: str, *, prefix_of: str | None = None, limit: int = 0, revision: int = 0,
             min_mod_revision: int = 0, max_mod_revision: int = 0, sort: str | None = None) -> dict[str, Any]:
    """A RangeRequest body (also usable inside a transaction); ``prefix_of`` makes it end with that prefix."""
    body: dict[str, Any] = {"key": b64(key)}
    if prefix_of is not None:
        body["range_end"] = _range_end_b64(prefix_of)
    for name, value in (("limit", limit), ("revision", revision), ("min_mod_revision", min_mod_revision),
                        ("max_mod_revision", max_mod_revision)):
        if value:
            body[name] = value
    if sort:
        body["sort_target"], body["sort_order"] = sort.split(":") if ":" in sort else (sort, "ASCEND")
    return body


class PutOp(dict[str, Any]):
    """A put of a transaction in the gateway's JSON shape that keeps its key and value as bytes, so the gRPC
    transport builds its request without decoding the base64 again."""

    raw: tuple[bytes, bytes, int]


def put_op(key: str, value: str, lease: str | None = None) -> dict[str, Any]:
    """A put operation of a transaction; with ``lease``, the key expires with that lease."""
    key_bytes, value_bytes = key.encode(), value.encode()
    body: dict[str, Any] = {"key": base64.b64encode(key_bytes).decode(),
                            "value": base64.b64encode(value_bytes).decode()}
    if lease:
        body["lease"] = lease
    op = PutOp(request_put=body)
    op.raw = (key_bytes, value_bytes, int(lease or 0))
    return op


def delete_op(key: str, *, prefix_of: str | None = None) -> dict[str, Any]:
    """A delete of a transaction: ``key``, or with ``prefix_of`` every key from ``key`` under that prefix."""
    body: dict[str, Any] = {"key": b64(key)}
    if prefix_of is not None:
        body["range_end"] = _range_end_b64(prefix_of)
    return {"request_delete_range": body}


def unchanged_since(key: str, previous: KeyValue | None) -> dict[str, Any]:
    """A transaction compare: ``key`` was not modified since ``previous`` (None: the key does not exist)."""
    if previous is None:
        return {"key": b64(key), "target": "VERSION", "result": "EQUAL", "version": 0}
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": previous.mod_revision}


def first_kv_of_failure(answer: dict[str, Any]) -> KeyValue | None:
    """The first key read by the range that opens the failure branch of a failed transaction's ``answer``
    (None if the range found nothing)."""
    responses = answer.get("responses") or [{}]
    kvs = responses[0].get("response_range", {}).get("kvs", [])
    return KeyValue.from_json(kvs[0]) if kvs else None


#: Connections to etcd that one store identity keeps for its requests, shared by all threads of the
#: process: a thread finding them all busy waits for one (requests are short) instead of opening another,
#: so a thousand threads waiting on one store hold eight connections, not a thousand.
POOL_SIZE = 8
#: The shared session of each store identity in this process (by pid: a forked child opens its own,
#: it must never write to its parent's sockets).
_SHARED: dict[tuple[Any, ...], requests.Session] = {}
_SHARED_LOCK = threading.Lock()
#: Per thread, one HTTP session per store identity for watch streams: a stream holds its connection for
#: as long as it runs, so streams must never take connections from the shared pool.
_STREAMS = threading.local()


def _thread_sessions() -> dict[tuple[Any, ...], requests.Session]:
    sessions: dict[tuple[Any, ...], requests.Session] | None = getattr(_STREAMS, "by_identity", None)
    if sessions is None:
        sessions = _STREAMS.by_identity = {}
    return sessions


def _shared_session(config: StoreConfig) -> requests.Session:
    key = (os.getpid(), config.identity)
    session = _SHARED.get(key)
    if session is None:
        with _SHARED_LOCK:
            session = _SHARED.get(key)
            if session is None:
                session = _SHARED[key] = _new_session(config, POOL_SIZE, block=True)
    return session


def _new_session(config: StoreConfig, pool_size: int, *, block: bool) -> requests.Session:
    session = _Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=max(4, len(config.endpoints)), pool_maxsize=pool_size,
                                            pool_block=block)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update(config.headers)
    session.headers.update(config.auth_headers)
    if config.ca_cert:
        session.verify = config.ca_cert
    if config.client_cert:
        session.cert = (config.client_cert, config.client_key) if config.client_key else config.client_cert
    return session


class _SignInBusy(Exception):
    """etcd could not sign the user in now (its answer says it is busy or unavailable)."""

    def __init__(self, response: requests.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


#: The environment variables that decide a request's proxies and CA bundle (requests reads them on each request).
_ENVIRONMENT_VARIABLES = tuple(name for base in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
                               for name in (base, base.upper())) + ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
#: Distinct (endpoint, environment) answers a session keeps; past it, they are worked out afresh.
_ENVIRONMENT_CACHE_SIZE = 64


class _Session(requests.Session):
    """A session whose own CA file wins over ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` in the environment
    (requests lets those replace a session's ``verify``, so a private CA would be ignored).

    requests works out proxies and CA bundle by scanning the whole environment on every request, about a
    third of the cost of a small request; the answer is kept per endpoint while those variables stay the same.
    """

    def __init__(self) -> None:
        super().__init__()
        self._environment_settings: dict[tuple[Any, ...], dict[str, Any]] = {}

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        plain = not proxies and verify is None and cert is None
        key = (str(url).split("/v3/", 1)[0], stream, tuple(os.environ.get(n) for n in _ENVIRONMENT_VARIABLES))
        cached = self._environment_settings.get(key) if plain else None
        if cached is not None:
            return {**cached, "proxies": dict(cached.get("proxies") or {})}
        settings: dict[str, Any] = dict(super().merge_environment_settings(url, proxies, stream, verify, cert))
        if verify is None and isinstance(self.verify, str):
            settings["verify"] = self.verify
        if plain:
            if len(self._environment_settings) >= _ENVIRONMENT_CACHE_SIZE:
                self._environment_settings.clear()
            self._environment_settings[key] = {**settings, "proxies": dict(settings.get("proxies") or {})}
        return settings


class EtcdGateway:
    """Talks to one etcd cluster through any of its endpoints; thread safe (a bounded pool of connections shared
    by all threads, and a connection of its own for each watch stream).

    :func:`~aviso_workflows.etcd_transport.open_gateway` gives this client or its gRPC subclass
    (:class:`~aviso_workflows.etcd_grpc.GrpcGateway`: the same methods over etcd's native API), as the config asks.
    """

    #: ``gateway`` (HTTP/JSON) or ``grpc``.
    transport = "gateway"

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._local = threading.local()
        self._current = 0
        self._endpoint_lock = threading.Lock()
        self._token: str | None = None
        self._token_lock = threading.Lock()

    # -- transport -------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """The endpoint in use."""
        return self.config.endpoints[self._current % len(self.config.endpoints)]

    def _session(self, stream: bool = False) -> requests.Session:
        """The session of the store identity shared by all threads; a watch stream gets its thread's own."""
        if not stream:
            return _shared_session(self.config)
        sessions = _thread_sessions()
        session = sessions.get(self.config.identity)
        if session is None:
            # not blocking: a thread replacing its stream never waits for the old one's connection
            session = sessions[self.config.identity] = _new_session(self.config, 1, block=False)
        return session

    def _client(self, endpoint: str) -> Etcd3Client:
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        if endpoint not in clients:
            scheme, rest = endpoint.split("://", 1)
            host, port = rest.rsplit(":", 1)
            clients[endpoint] = Etcd3Client(host=host.strip("[]"), port=int(port), protocol=scheme,
                                            timeout=self.config.timeout, api_path="/v3/", session=self._session())
        return clients[endpoint]

    def url(self, path: str, endpoint: str | None = None) -> str:
        """Full URL of a gateway path on an endpoint."""
        return self._client(endpoint or self.endpoint).get_url(path)

    def _auth_headers(self, endpoint: str) -> dict[str, str]:
        if not self.config.username:
            return {}
        with self._token_lock:
            if self._token is None:
                self._token = self._authenticate(endpoint)
            return {"Authorization": self._token}

    def forget_token(self) -> None:
        """Sign in again on the next request (a token the server no longer knows is refused)."""
        with self._token_lock:
            self._token = None

    def _authenticate(self, endpoint: str) -> str:
        body = {"name": self.config.username, "password": self.config.password or ""}
        response = self._session().post(self.url("auth/authenticate", endpoint), json=body, timeout=self.config.timeout)
        if _is_busy(response):
            raise _SignInBusy(response)
        if response.status_code != 200:
            raise PermissionDenied(f"etcd at {endpoint} refused user {self.config.username!r}: "
                                   f"{_error_message(response)}")
        return str(response.json()["token"])

    def post(self, path: str, body: dict[str, Any], *, stream: bool = False,
             timeout: float | tuple[float, float | None] | None = None,
             signed_in_again: bool = False) -> requests.Response:
        """POST to the first endpoint that answers, failing over in order; raises StoreUnavailable if none does.

        An answer that etcd cannot serve the request now (a leader election: "leader changed", "no
        leader"; "request timed out"; "too many requests") is retried after a brief pause on the next
        endpoint, within the request's time budget (``config.timeout``). An expired etcd token is
        replaced once per call (signing in again), not in a loop.
        """
        errors: list[str] = []
        deadline = time.monotonic() + self.config.timeout
        unreachable = 0  # endpoints in a row that could not be reached
        refused_tls = 0  # of them, those whose TLS handshake failed
        for attempt in range(MAX_ATTEMPTS):
            endpoint = self.endpoint
            try:
                response = self._session(stream).post(self.url(path, endpoint), json=body, stream=stream,
                                                headers=self._auth_headers(endpoint),
                                                timeout=timeout or self.config.timeout)
            except _SignInBusy as busy:  # retried as any answer of a busy etcd
                response = busy.response
            except (requests.ConnectionError, requests.Timeout) as error:
                errors.append(f"{endpoint}: {_short(error)}")
                self._fail_over(endpoint)
                unreachable += 1
                refused_tls = refused_tls + 1 if isinstance(error, requests.exceptions.SSLError) else 0
                if unreachable >= len(self.config.endpoints):
                    break
                continue
            unreachable = refused_tls = 0
            if response.status_code in (401,) or _is_token_error(response):
                with self._token_lock:
                    self._token = None
                if self.config.username and not signed_in_again:
                    return self.post(path, body, stream=stream, timeout=timeout, signed_in_again=True)
            if not _is_busy(response):
                return _checked(response, endpoint)
            reason = _error_message(response)
            errors.append(f"{endpoint}: {reason}")
            response.close()
            pause = min(BUSY_DELAYS[min(attempt, len(BUSY_DELAYS) - 1)], deadline - time.monotonic())
            if pause <= 0:
                raise StoreUnavailable(f"etcd could not serve {path} within {self.config.timeout:g} s: "
                                       + "; ".join(errors[-len(self.config.endpoints):]))
            log.debug("etcd at %s is busy (%s); trying again in %.2f s", endpoint, reason, pause)
            time.sleep(pause)
            self._fail_over(endpoint)
        failure = TlsRefused if refused_tls >= len(self.config.endpoints) else StoreUnavailable
        raise failure("cannot reach etcd at " + "; ".join(errors[-len(self.config.endpoints):]))

    def _fail_over(self, endpoint: str) -> None:
        """Move on from ``endpoint`` unless another thread did already (threads share the choice)."""
        with self._endpoint_lock:
            if self.endpoint == endpoint:
                self._current += 1

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST and decode the JSON answer."""
        return dict(self.post(path, body).json())

    # -- key-value -------------------------------------------------------------------------------
    def range(self, body: dict[str, Any]) -> dict[str, Any]:
        """One RangeRequest; raises HistoryCompacted for a compacted revision."""
        return self.call("kv/range", body)

    def ranges_in_txn(self, prefixes: Sequence[str], *, revision: int = 0,
                      min_mod_revision: int = 0) -> tuple[int, list[tuple[list[KeyValue], bool]]]:
        """Every prefix read by a range of one transaction (at ``revision`` if given): the revision read and,
        per prefix, its keys and whether etcd held some back (``more``: read that prefix in pages instead)."""
        ops = [{"request_range": range_op(p, prefix_of=p, min_mod_revision=min_mod_revision, revision=revision)}
               for p in prefixes]
        answer = self.txn([], ops)
        pages = []
        for response in answer.get("responses", []):
            body = response.get("response_range", {})
            pages.append(([KeyValue.from_json(kv) for kv in body.get("kvs", [])], bool(body.get("more"))))
        return int(answer["header"]["revision"]), pages

    def range_all(self, key: str, *, prefix: bool = True, revision: int = 0, min_mod_revision: int = 0,
                  max_mod_revision: int = 0) -> tuple[int, list[KeyValue]]:
        """Every key of a range, read in pages at one revision; returns (revision read, keys)."""
        found: list[KeyValue] = []
        start = key
        while True:
            body = range_op(start, prefix_of=key if prefix else None, limit=PAGE_SIZE, revision=revision,
                            min_mod_revision=min_mod_revision, max_mod_revision=max_mod_revision)
            answer = self.range(body)
            revision = revision or int(answer["header"]["revision"])
            page = [KeyValue.from_json(kv) for kv in answer.get("kvs", [])]
            found.extend(page)
            if not answer.get("more") or not page or not prefix:
                return revision, found
            start = page[-1].key + "\0"

    def get(self, key: str, revision: int = 0) -> tuple[int, KeyValue | None]:
        """One key (at a past revision if given); returns (revision read, key or None)."""
        answer = self.range(range_op(key, revision=revision))
        kvs = answer.get("kvs", [])
        return int(answer["header"]["revision"]), KeyValue.from_json(kvs[0]) if kvs else None

    def current_revision(self) -> int:
        """The store's revision now.

        etcd users may read only their prefixes, so with a username the revision comes from the
        maintenance status, which any signed-in user may ask; proxies forward only ranges, so without
        one it comes from an empty range.
        """
        if self.config.username:
            return int(self.call("maintenance/status", {})["header"]["revision"])
        body = {"key": b64("\0"), "count_only": True}
        return int(self.range(body)["header"]["revision"])

    def txn(self, compare: Sequence[dict[str, Any]], success: Sequence[dict[str, Any]],
            failure: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        """One transaction."""
        return self.call("kv/txn", {"compare": list(compare), "success": list(success), "failure": list(failure)})

    def put_if_unchanged(self, key: str, previous: KeyValue | None, puts: Sequence[tuple[str, str]],
                         lease: str | None = None) -> tuple[bool, int, KeyValue | None]:
        """One transaction: if ``key`` is unchanged since ``previous`` (None: it does not exist), put ``puts``
        (with ``lease``, if given); else read ``key``. Returns (written, revision, ``key`` as it is now when not
        written). A notify's step on its status chain: compare the status key, write, or learn what moved it."""
        answer = self.txn([unchanged_since(key, previous)], [put_op(k, v, lease) for k, v in puts],
                          [{"request_range": range_op(key)}])
        revision = int(answer["header"]["revision"])
        if answer.get("succeeded"):
            return True, revision, None
        return False, revision, first_kv_of_failure(answer)

    def grant_lease(self, ttl: int) -> str:
        """A lease that expires after ``ttl`` seconds; returns its id."""
        return str(self.call("lease/grant", {"TTL": ttl, "ID": 0})["ID"])

    def keep_lease_alive(self, lease: str) -> int:
        """Renew a lease once; returns its new TTL in seconds (0: the lease has expired or was revoked)."""
        answer = self.call("lease/keepalive", {"ID": lease})
        return int(answer.get("result", answer).get("TTL", 0))

    def revoke_lease(self, lease: str) -> None:
        """End a lease now: the keys put with it are deleted (a lease already gone is no error)."""
        try:
            self.call("kv/lease/revoke", {"ID": lease})
        except StoreError as error:
            if "not found" not in str(error):
                raise

    def delete(self, key: str) -> int:
        """Delete one key; returns the store's revision after it."""
        return int(self.call("kv/deleterange", {"key": b64(key)})["header"]["revision"])

    def compact(self, revision: int, physical: bool = True) -> None:
        """Compact history up to ``revision``."""
        self.call("kv/compaction", {"revision": revision, "physical": physical})

    # -- watch -----------------------------------------------------------------------------------
    def watch(self, prefix: str, start_revision: int, *, idle_timeout: float = 30.0) -> WatchStream:
        """A watch on a prefix from ``start_revision``; read it by iterating, stop it with ``close()``."""
        body = {"create_request": {"key": b64(prefix), "range_end": _range_end_b64(prefix),
                                   "start_revision": start_revision, "progress_notify": True}}
        response = self.post("watch", body, stream=True, timeout=(self.config.timeout, idle_timeout))
        return WatchStream(response, start_revision, idle_timeout)


class WatchIdle(StoreUnavailable):
    """A watch stream sent nothing for its idle timeout: reconnecting is routine, not an outage."""


class WatchStream:
    """The responses of one etcd watch; each iteration yields a WatchBatch (the first, with no puts,
    when etcd confirms the watch). A lost stream raises StoreUnavailable, a silent one WatchIdle.
    """

    def __init__(self, response: requests.Response, start_revision: int, idle_timeout: float | None = None) -> None:
        self._response = response
        self.start_revision = start_revision
        self.idle_timeout = idle_timeout
        self._closed = False
        #: etcd confirmed the watch (with the credentials in use).
        self.created = False

    def close(self) -> None:
        """Stop the watch from any thread."""
        self._closed = True
        try:
            self._response.raw._fp.fp.raw._sock.shutdown(2)  # type: ignore[union-attr]  # wake a blocked reader
        except Exception:  # noqa: BLE001 - best effort: the socket may be gone already
            pass
        self._response.close()

    @property
    def endpoint(self) -> str:
        """The endpoint serving this watch."""
        return str(self._response.url).split("/v3/", 1)[0]

    def __iter__(self) -> Iterator[WatchBatch]:
        try:
            for line in self._lines():
                message = json.loads(line)
                batch = self._batch(message)
                if batch is not None:
                    yield batch
                    continue
                for part in revision_parts(message["result"]["events"], _mod_revision):
                    yield self._events(part)
        except requests.RequestException as error:
            if not self._closed:
                raise self._lost(error) from None
        if not self._closed:
            raise StoreUnavailable(f"etcd at {self.endpoint} ended the watch stream")

    def _lines(self) -> Iterator[bytes]:
        """The stream's lines (one answer each). A watch far behind gets answers of up to 1 000 revisions,
        tens of megabytes: only the new piece is searched for the line's end, never the whole line again."""
        pieces: list[bytes] = []
        for chunk in self._response.iter_content(chunk_size=None):
            end = chunk.find(b"\n")
            while end >= 0:
                line = b"".join([*pieces, chunk[:end]])
                pieces, chunk = [], chunk[end + 1:]
                if line.strip():
                    yield line
                end = chunk.find(b"\n")
            pieces.append(chunk)

    def _lost(self, error: requests.RequestException) -> StoreUnavailable:
        if isinstance(error, requests.Timeout) or any(isinstance(a, ReadTimeoutError) for a in error.args):
            return WatchIdle(f"etcd at {self.endpoint} sent nothing on the watch for {self.idle_timeout} s")
        reason = "connection broken" if isinstance(error, requests.exceptions.ChunkedEncodingError) else _short(error)
        return StoreUnavailable(f"lost the watch stream from etcd at {self.endpoint} ({reason})")

    def _batch(self, message: dict[str, Any]) -> WatchBatch | None:
        """The batch of an answer without events (created, progress); None for one with events (see _events)."""
        if "error" in message:
            raise StoreError(f"etcd watch failed: {message['error'].get('message', message['error'])}")
        result = message.get("result", {})
        revision = int(result.get("header", {}).get("revision", 0))
        if result.get("canceled"):
            compact = int(result.get("compact_revision", 0))
            if compact:
                raise HistoryCompacted(self.start_revision, compact)
            reason = result.get("cancel_reason", "canceled by the server")
            if "permission denied" in reason:
                raise PermissionDenied(f"etcd at {self.endpoint} refused the watch: {reason}")
            raise StoreError(f"etcd at {self.endpoint} canceled the watch: {reason}")
        if result.get("created"):
            self.created = True
            return WatchBatch([], revision, "created")
        return None if result.get("events") else WatchBatch([], revision, "progress")

    @staticmethod
    def _events(events: Sequence[dict[str, Any]]) -> WatchBatch:
        puts = [KeyValue.from_json(e["kv"]) for e in events if e.get("type", "PUT") == "PUT"]
        deleted = tuple((unb64(e["kv"].get("key")), _mod_revision(e)) for e in events if e.get("type") == "DELETE")
        return WatchBatch(puts, max(_mod_revision(e) for e in events), deleted=deleted)


def _mod_revision(event: dict[str, Any]) -> int:
    return int(event["kv"].get("mod_revision", 0))


def _short(error: Exception) -> str:
    if isinstance(error, requests.exceptions.SSLError):
        return _tls_reason(error)
    text = str(error)
    for marker in ("Connection refused", "timed out", "Name or service not known", "No route to host"):
        if marker.lower() in text.lower():
            return marker.lower()
    return text.splitlines()[0][:200] if text else type(error).__name__


_TLS_HINTS = {
    "certificate verify failed": " (is ca_cert the CA that signed etcd's certificate?)",
    "alert bad certificate": " (etcd refused the client certificate, or none was given: client_cert, client_key)",
    "alert certificate required": " (etcd wants a client certificate: client_cert, client_key)",
    "alert unknown ca": " (etcd does not trust the CA of the client certificate)",
}


def _tls_reason(error: requests.exceptions.SSLError) -> str:
    """One line for a failed TLS handshake: the OpenSSL reason without the layers of wrapping, and a hint."""
    text = str(error)
    for marker in ("certificate verify failed", "alert", "wrong version number", "record layer failure"):
        start = text.find(marker)
        if start >= 0:
            reason = text[start:].split("(_ssl.c")[0].split("')")[0].strip(" :")
            hint = next((h for m, h in _TLS_HINTS.items() if reason.lower().startswith(m)), "")
            return f"TLS handshake failed: {reason}{hint}"
    return "TLS handshake failed: " + (text.splitlines()[0][-200:] if text else type(error).__name__)


def _error_message(response: requests.Response) -> str:
    try:
        body = response.json()
        return str(body.get("message") or body.get("error") or body)
    except ValueError:
        return response.text.strip()[:200] or response.reason


def _is_token_error(response: requests.Response) -> bool:
    """etcd no longer accepts the token: expired, or signed before a change of users or roles."""
    return response.status_code != 200 and any(text in response.text for text in (
        "invalid auth token", "revision of auth store is old"))


def _is_etcd_error(response: requests.Response) -> bool:
    """The gateway's own errors are JSON with a gRPC ``code``; a proxy's refusal is not."""
    try:
        return isinstance(response.json().get("code"), int)
    except (ValueError, AttributeError):
        return False


def _is_busy(response: requests.Response) -> bool:
    """etcd (or a proxy) cannot serve the request now but may in a moment: unavailable, overloaded, electing."""
    if response.status_code in (408, 429, 502, 503, 504):  # 408: a member shutting down cancelled the request
        return True
    return response.status_code == 500 and any(m in _error_message(response).lower() for m in BUSY_MARKERS)


def _refused_keys(response: requests.Response) -> str:
    """`` on KEY`` (or `` on the keys under PREFIX``) of a refused request: its first key, for the message."""
    try:
        body = json.loads(response.request.body or b"{}")
        operations = [body, *(next(iter(op.values()), {}) for op in body.get("success", []))]
        first = next(op for op in operations if isinstance(op, dict) and "key" in op)
    except (ValueError, TypeError, AttributeError, StopIteration):
        return ""
    return f" on the keys under {unb64(first['key'])}" if "range_end" in first else f" on {unb64(first['key'])}"


def _checked(response: requests.Response, endpoint: str) -> requests.Response:
    if response.status_code == 200:
        return response
    message = _error_message(response)
    if "compacted" in message:
        raise HistoryCompacted(0, 0)
    if response.status_code in (403, 404, 405) and not _is_etcd_error(response):
        raise NotForwarded(f"{response.url}: permission denied (HTTP {response.status_code} {response.reason}: "
                           f"{message}); is a proxy that forwards only some requests in front of etcd?")
    if "permission denied" in message or "user name is empty" in message or response.status_code == 403:
        raise PermissionDenied(f"etcd at {endpoint}: permission denied{_refused_keys(response)} ({message})")
    if response.status_code == 401:
        raise PermissionDenied(f"{endpoint} refused the credentials in use (HTTP 401: {message})")
    raise StoreError(f"etcd at {endpoint} answered {response.status_code}: {message}")

