"""etcd's native gRPC API behind the methods of :class:`~aviso_workflows.etcd.EtcdGateway`.

The stubs are the ones generated from etcd's ``rpc.proto`` that the ``aetcd`` package ships (they
load beside the protobuf that Airflow installs, unlike ``etcd3``'s); only the stubs are used, with
grpcio's blocking channels, so the store keeps one client for threads and asyncio alike.

Requests and answers keep the gateway's JSON shapes where callers build or read them (``range``,
``txn``, ``call``: the gateway's JSON is protobuf's JSON mapping, so they convert both ways), and
skip JSON on the hot paths (``get``, ``range_all``, ``watch``). One channel (one HTTP/2 connection)
per endpoint and store identity is shared by every thread and watch of a process.
"""

from __future__ import annotations

import base64
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

# grpc's C core logs failed handshakes to stderr on its own; the store reports them as errors (a
# user may still ask for its logs with GRPC_VERBOSITY)
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc  # noqa: E402
from aetcd.rpc import kv_pb2, rpc_pb2, rpc_pb2_grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402

from .config import StoreConfig
from .errors import HistoryCompacted, PermissionDenied, StoreError, StoreUnavailable, TlsRefused
from .etcd import (
    BUSY_DELAYS,
    BUSY_MARKERS,
    MAX_ATTEMPTS,
    PAGE_SIZE,
    EtcdGateway,
    KeyValue,
    WatchBatch,
    WatchIdle,
    WatchStream,
    revision_parts,
)

#: A child of the HTTP client's logger: one name for the etcd client whichever transport it speaks.
log = logging.getLogger("aviso_workflows.etcd.grpc")
T = TypeVar("T")
P = ParamSpec("P")
#: Store identities whose endpoints answered HTTP/1 (a proxy in front of the gateway): with ``transport:
#: auto`` they use the HTTP gateway from then on in this process.
GATEWAY_ONLY: set[tuple[Any, ...]] = set()
#: What grpc says when the other end speaks HTTP/1 only.
_HTTP1_MARKERS = ("failed parsing http/2", "http1.x", "expected settings frame")


class _UseGateway(Exception):
    """The endpoint speaks HTTP/1 only and the transport is ``auto``: ask again over the HTTP gateway."""


def _or_gateway(method: Callable[Concatenate[GrpcGateway, P], T]) -> Callable[Concatenate[GrpcGateway, P], T]:
    """Run ``method`` over gRPC; where the endpoint turned out to speak HTTP/1 only, over the gateway."""

    def run(self: GrpcGateway, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(self, *args, **kwargs)
        except _UseGateway:
            answer: T = getattr(EtcdGateway, method.__name__)(self, *args, **kwargs)
            return answer

    run.__name__, run.__doc__ = method.__name__, method.__doc__
    return run

#: Unlimited answers (a watch far behind gets tens of megabytes at once); reconnect quickly after an
#: outage (grpc's default backoff grows to two minutes); ping a quiet connection (etcd allows one per 5 s).
CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", -1),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.enable_retries", 0),
    ("grpc.http2.lookahead_bytes", 8 << 20),
)
_CHANNELS: dict[tuple[Any, ...], grpc.Channel] = {}
_CHANNELS_LOCK = threading.Lock()


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as file:
        return file.read()


def _channel(config: StoreConfig, endpoint: str) -> grpc.Channel:
    """The process's channel to ``endpoint`` for this store identity (a forked child opens its own)."""
    key = (os.getpid(), config.identity, endpoint)
    channel = _CHANNELS.get(key)
    if channel is None:
        with _CHANNELS_LOCK:
            channel = _CHANNELS.get(key)
            if channel is None:
                channel = _CHANNELS[key] = _open_channel(config, endpoint)
    return channel


def _open_channel(config: StoreConfig, endpoint: str) -> grpc.Channel:
    scheme, target = endpoint.split("://", 1)
    if scheme != "https":
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    certificate = _read(config.client_cert)
    # a client certificate file without client_key holds its key as well
    key = _read(config.client_key) if config.client_key else certificate
    credentials = grpc.ssl_channel_credentials(root_certificates=_read(config.ca_cert),
                                               private_key=key if certificate else None,
                                               certificate_chain=certificate)
    return grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)


class _Stubs:
    """The services of etcd on one channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.kv = rpc_pb2_grpc.KVStub(channel)
        self.lease = rpc_pb2_grpc.LeaseStub(channel)
        self.maintenance = rpc_pb2_grpc.MaintenanceStub(channel)
        self.auth = rpc_pb2_grpc.AuthStub(channel)
        self.watch = rpc_pb2_grpc.WatchStub(channel)


_STUBS: dict[int, _Stubs] = {}


def _stubs(channel: grpc.Channel) -> _Stubs:
    stubs = _STUBS.get(id(channel))
    if stubs is None:
        stubs = _STUBS[id(channel)] = _Stubs(channel)
    return stubs


def _kv(kv: kv_pb2.KeyValue) -> KeyValue:
    return KeyValue(key=kv.key.decode("utf-8", errors="replace"), value=kv.value.decode("utf-8", errors="replace"),
                    mod_revision=kv.mod_revision, create_revision=kv.create_revision, version=kv.version,
                    lease=kv.lease)


def _range_end(prefix: bytes) -> bytes:
    data = bytearray(prefix)
    for index in range(len(data) - 1, -1, -1):
        if data[index] < 0xFF:
            data[index] += 1
            return bytes(data[: index + 1])
    return b"\0"


def _as_dict(message: Any) -> dict[str, Any]:
    """An answer in the gateway's JSON shape (base64 bytes, 64-bit numbers as strings, defaults left out)."""
    return dict(json_format.MessageToDict(message, preserving_proto_field_name=True))


def _parsed(body: dict[str, Any], message: T) -> T:
    """A request from the gateway's JSON shape."""
    json_format.ParseDict(body, message)
    return message


#: Gateway paths that callers may ``call``: (service, method, request type).
_PATHS: dict[str, tuple[str, str, Any]] = {
    "kv/range": ("kv", "Range", rpc_pb2.RangeRequest),
    "kv/put": ("kv", "Put", rpc_pb2.PutRequest),
    "kv/deleterange": ("kv", "DeleteRange", rpc_pb2.DeleteRangeRequest),
    "kv/txn": ("kv", "Txn", rpc_pb2.TxnRequest),
    "kv/compaction": ("kv", "Compact", rpc_pb2.CompactionRequest),
    "lease/grant": ("lease", "LeaseGrant", rpc_pb2.LeaseGrantRequest),
    "kv/lease/revoke": ("lease", "LeaseRevoke", rpc_pb2.LeaseRevokeRequest),
    "lease/revoke": ("lease", "LeaseRevoke", rpc_pb2.LeaseRevokeRequest),
    "kv/lease/timetolive": ("lease", "LeaseTimeToLive", rpc_pb2.LeaseTimeToLiveRequest),
    "maintenance/status": ("maintenance", "Status", rpc_pb2.StatusRequest),
}


class GrpcGateway(EtcdGateway):
    """Talks to one etcd cluster over gRPC through any of its endpoints; thread safe."""

    transport = "grpc"
    _stubs_cache: dict[str, tuple[int, _Stubs]]

    def post(self, path: str, body: dict[str, Any], **_: Any) -> Any:
        """Raw gateway requests have no gRPC form: use :meth:`call`."""
        raise StoreError(f"the gRPC transport cannot post {path} to the HTTP gateway; use transport: gateway")

    def _stubs(self, endpoint: str) -> _Stubs:
        """This process's stubs on ``endpoint`` (kept by the client: working out the channel's key costs more
        than a small request's own work)."""
        cache: dict[str, tuple[int, _Stubs]] | None = getattr(self, "_stubs_cache", None)
        if cache is None:
            cache = {}
            self._stubs_cache = cache
        found = cache.get(endpoint)
        if found is None or found[0] != os.getpid():
            found = cache[endpoint] = (os.getpid(), _stubs(_channel(self.config, endpoint)))
        return found[1]

    def not_grpc(self, endpoint: str) -> Exception:
        """``endpoint`` answered HTTP/1: with ``transport: auto`` this client speaks to the gateway from now on
        (the returned exception says: ask again); with ``transport: grpc`` it is a setting to change."""
        if self.config.transport != "auto":
            return StoreUnavailable(f"etcd at {endpoint} does not speak gRPC (it answered HTTP/1: a proxy in front "
                                    "of the HTTP gateway?); set transport: gateway (or auto)")
        log.info("etcd at %s answers HTTP/1 only (a proxy in front of its gateway?): using the HTTP gateway", endpoint)
        GATEWAY_ONLY.add(self.config.identity)
        self.__class__ = EtcdGateway  # type: ignore[assignment]
        return _UseGateway()

    # -- authentication ----------------------------------------------------------------------------
    def _metadata(self, endpoint: str) -> tuple[tuple[str, str], ...] | None:
        if not self.config.username:
            return None
        with self._token_lock:
            if self._token is None:
                self._token = self._authenticate(endpoint)
            return (("token", self._token),)

    def _authenticate(self, endpoint: str) -> str:
        log.debug("signing in to etcd at %s as %r", endpoint, self.config.username)
        request = rpc_pb2.AuthenticateRequest(name=self.config.username or "", password=self.config.password or "")
        try:
            answer = self._stubs(endpoint).auth.Authenticate(request, timeout=self.config.timeout)
        except grpc.RpcError as error:
            if _is_busy(error) or _is_unreachable(error):
                raise
            raise PermissionDenied(f"etcd at {endpoint} refused user {self.config.username!r}: "
                                   f"{_details(error)}") from None
        return str(answer.token)

    # -- one request, with failover ------------------------------------------------------------------
    def _unary(self, what: str, invoke: Callable[[_Stubs, Any], T], keys: Callable[[], str] = str) -> T:
        """Run ``invoke(stubs, metadata)`` on the first endpoint that answers, as :meth:`EtcdGateway.post`
        does over HTTP: busy answers are asked again after a pause within ``config.timeout``, an
        unreachable endpoint is left for the next, an expired token is replaced once.
        """
        errors: list[str] = []
        deadline = time.monotonic() + self.config.timeout
        unreachable = refused_tls = 0
        signed_in_again = False
        for attempt in range(MAX_ATTEMPTS):
            endpoint = self.endpoint
            try:
                return invoke(self._stubs(endpoint), self._metadata(endpoint))
            except grpc.RpcError as error:
                if _speaks_http1(error):
                    raise self.not_grpc(endpoint) from None
                if _is_unreachable(error):
                    errors.append(f"{endpoint}: {_short(error)}")
                    self._fail_over(endpoint)
                    unreachable += 1
                    refused_tls = refused_tls + 1 if _is_tls(error) else 0
                    if unreachable >= len(self.config.endpoints):
                        break
                    continue
                unreachable = refused_tls = 0
                if _is_token_error(error) and self.config.username and not signed_in_again:
                    self.forget_token()
                    signed_in_again = True
                    continue
                if not _is_busy(error):
                    raise _refusal(error, endpoint, keys()) from None
                errors.append(f"{endpoint}: {_details(error)}")
                pause = min(BUSY_DELAYS[min(attempt, len(BUSY_DELAYS) - 1)], deadline - time.monotonic())
                if pause <= 0:
                    raise StoreUnavailable(f"etcd could not serve {what} within {self.config.timeout:g} s: "
                                           + "; ".join(errors[-len(self.config.endpoints):])) from None
                log.debug("etcd at %s is busy (%s); trying again in %.2f s", endpoint, _details(error), pause)
                time.sleep(pause)
                self._fail_over(endpoint)
        failure = TlsRefused if refused_tls >= len(self.config.endpoints) else StoreUnavailable
        raise failure("cannot reach etcd at " + "; ".join(errors[-len(self.config.endpoints):]))

    def _rpc(self, service: str, method: str, request: Any, keys: Callable[[], str] = str) -> Any:
        timeout = self.config.timeout
        return self._unary(method, lambda stubs, metadata: getattr(getattr(stubs, service), method)(
            request, timeout=timeout, metadata=metadata), keys)

    @_or_gateway
    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One gateway-shaped request (``kv/range``, ``kv/txn``, ``lease/grant``, ...) over gRPC."""
        if path not in _PATHS:
            raise StoreError(f"the gRPC transport has no request {path}; valid: {', '.join(sorted(_PATHS))}")
        service, method, request_type = _PATHS[path]
        request = _parsed(body, request_type())
        return _as_dict(self._rpc(service, method, request, lambda: _keys_of(body)))

    # -- key-value -------------------------------------------------------------------------------
    @_or_gateway
    def range(self, body: dict[str, Any]) -> dict[str, Any]:
        """One RangeRequest in the gateway's shape; raises HistoryCompacted for a compacted revision."""
        return self.call("kv/range", body)

    def _range(self, request: rpc_pb2.RangeRequest) -> rpc_pb2.RangeResponse:
        return self._rpc("kv", "Range", request,
                         lambda: _keys(request.key.decode(errors="replace"), bool(request.range_end)))

    @_or_gateway
    def ranges_in_txn(self, prefixes: Sequence[str], *, revision: int = 0,
                      min_mod_revision: int = 0) -> tuple[int, list[tuple[list[KeyValue], bool]]]:
        """As over the gateway, its keys decoded straight from etcd's answer (no JSON, no base64: a year of
        keys read for a catch-up, or the first reads of thousands of waits starting together)."""
        request = rpc_pb2.TxnRequest()
        for prefix in prefixes:
            key = prefix.encode()
            asked = request.success.add().request_range
            asked.key, asked.range_end = key, _range_end(key)
            asked.revision, asked.min_mod_revision = revision, min_mod_revision
        answer = self._rpc("kv", "Txn", request, lambda: _keys(prefixes[0], True) if prefixes else "")
        return answer.header.revision, [([_kv(kv) for kv in r.response_range.kvs], r.response_range.more)
                                        for r in answer.responses]

    @_or_gateway
    def range_all(self, key: str, *, prefix: bool = True, revision: int = 0, min_mod_revision: int = 0,
                  max_mod_revision: int = 0) -> tuple[int, list[KeyValue]]:
        """Every key of a range, read in pages at one revision; returns (revision read, keys)."""
        found: list[KeyValue] = []
        start = key.encode()
        range_end = _range_end(key.encode()) if prefix else b""
        while True:
            answer = self._range(rpc_pb2.RangeRequest(key=start, range_end=range_end, limit=PAGE_SIZE,
                                                      revision=revision, min_mod_revision=min_mod_revision,
                                                      max_mod_revision=max_mod_revision))
            revision = revision or answer.header.revision
            page = [_kv(kv) for kv in answer.kvs]
            found.extend(page)
            if not answer.more or not page or not prefix:
                return revision, found
            start = answer.kvs[-1].key + b"\0"

    @_or_gateway
    def get(self, key: str, revision: int = 0) -> tuple[int, KeyValue | None]:
        """One key (at a past revision if given); returns (revision read, key or None)."""
        answer = self._range(rpc_pb2.RangeRequest(key=key.encode(), revision=revision))
        return answer.header.revision, _kv(answer.kvs[0]) if answer.kvs else None

    @_or_gateway
    def current_revision(self) -> int:
        """The store's revision now (from the maintenance status when signed in, as over the gateway)."""
        if self.config.username:
            return int(self._rpc("maintenance", "Status", rpc_pb2.StatusRequest()).header.revision)
        return int(self._range(rpc_pb2.RangeRequest(key=b"\0", count_only=True)).header.revision)

    @_or_gateway
    def txn(self, compare: Sequence[dict[str, Any]], success: Sequence[dict[str, Any]],
            failure: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        """One transaction of gateway-shaped operations; the answer in the gateway's shape."""
        request = rpc_pb2.TxnRequest(compare=[_parsed(c, rpc_pb2.Compare()) for c in compare],
                                     success=[_request_op(op) for op in success],
                                     failure=[_request_op(op) for op in failure])
        answer = self._rpc("kv", "Txn", request,
                           lambda: _keys_of(next((next(iter(op.values()), {}) for op in success), {})))
        return _txn_answer(answer, all("request_put" in op for op in success))

    @_or_gateway
    def put_if_unchanged(self, key: str, previous: KeyValue | None, puts: Sequence[tuple[str, str]],
                         lease: str | None = None) -> tuple[bool, int, KeyValue | None]:
        """As over the gateway, with the request built directly from the keys' bytes (no JSON, no base64:
        a notify's hot path)."""
        key_bytes = key.encode()
        request = rpc_pb2.TxnRequest(compare=[_unchanged_since(key_bytes, previous)],
                                     failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key_bytes))])
        lease_id = int(lease or 0)
        add = request.success.add
        value, encoded = None, b""
        for put_key, text in puts:  # fields set in place: a third of the time of building each message apart
            if text is not value:  # a notify's keys share one value: encoded once
                value, encoded = text, text.encode()
            put = add().request_put
            put.key, put.value = put_key.encode(), encoded
            if lease_id:
                put.lease = lease_id
        answer = self._rpc("kv", "Txn", request, lambda: _keys(puts[0][0] if puts else key, False))
        if answer.succeeded:
            return True, answer.header.revision, None
        kvs = answer.responses[0].response_range.kvs if answer.responses else ()
        return False, answer.header.revision, _kv(kvs[0]) if kvs else None

    @_or_gateway
    def grant_lease(self, ttl: int) -> str:
        """A lease that expires after ``ttl`` seconds; returns its id."""
        return str(self._rpc("lease", "LeaseGrant", rpc_pb2.LeaseGrantRequest(TTL=ttl, ID=0)).ID)

    @_or_gateway
    def keep_lease_alive(self, lease: str) -> int:
        """Renew a lease once; returns its new TTL in seconds (0: the lease has expired or was revoked)."""
        timeout = self.config.timeout

        def renew(stubs: _Stubs, metadata: Any) -> int:
            answers = stubs.lease.LeaseKeepAlive(iter([rpc_pb2.LeaseKeepAliveRequest(ID=int(lease))]),
                                                 timeout=timeout, metadata=metadata)
            try:
                return int(next(answers).TTL)
            finally:
                answers.cancel()
        return self._unary("LeaseKeepAlive", renew)

    @_or_gateway
    def revoke_lease(self, lease: str) -> None:
        """End a lease now: the keys put with it are deleted (a lease already gone is no error)."""
        try:
            self._rpc("lease", "LeaseRevoke", rpc_pb2.LeaseRevokeRequest(ID=int(lease)))
        except StoreError as error:
            if "not found" not in str(error):
                raise

    @_or_gateway
    def delete(self, key: str) -> int:
        """Delete one key; returns the store's revision after it."""
        return int(self._rpc("kv", "DeleteRange", rpc_pb2.DeleteRangeRequest(key=key.encode()),
                             lambda: _keys(key, False)).header.revision)

    @_or_gateway
    def compact(self, revision: int, physical: bool = True) -> None:
        """Compact history up to ``revision``."""
        self._rpc("kv", "Compact", rpc_pb2.CompactionRequest(revision=revision, physical=physical))

    # -- watch -----------------------------------------------------------------------------------
    @_or_gateway
    def watch(self, prefix: str, start_revision: int, *, idle_timeout: float = 30.0) -> GrpcWatchStream:
        """A watch on a prefix from ``start_revision``; read it by iterating, stop it with ``close()``."""
        endpoint = self.endpoint
        create = rpc_pb2.WatchCreateRequest(key=prefix.encode(), range_end=_range_end(prefix.encode()),
                                            start_revision=start_revision, progress_notify=True)
        try:
            metadata = self._metadata(endpoint)
        except grpc.RpcError as error:
            if _speaks_http1(error):
                raise self.not_grpc(endpoint) from None
            self._fail_over(endpoint)
            raise _lost(error, endpoint) from None
        return GrpcWatchStream(self, endpoint, rpc_pb2.WatchRequest(create_request=create), metadata,
                               start_revision, idle_timeout)


_PUT_FIELDS = frozenset({"key", "value", "lease"})


def _unchanged_since(key: bytes, previous: KeyValue | None) -> rpc_pb2.Compare:
    """etcd.unchanged_since as a message: the key's mod revision is the previous one's, or it does not exist."""
    if previous is None:
        return rpc_pb2.Compare(key=key, target=rpc_pb2.Compare.VERSION, result=rpc_pb2.Compare.EQUAL, version=0)
    return rpc_pb2.Compare(key=key, target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.EQUAL,
                           mod_revision=previous.mod_revision)


def _request_op(op: dict[str, Any]) -> rpc_pb2.RequestOp:
    raw = getattr(op, "raw", None)
    if raw is not None:  # etcd.put_op's, with its bytes at hand
        return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=raw[0], value=raw[1], lease=raw[2]))
    put = op.get("request_put")
    if put is not None and put.keys() <= _PUT_FIELDS:  # the common case, without protobuf's JSON parser (slow)
        return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(
            key=base64.b64decode(put["key"]), value=base64.b64decode(put.get("value") or ""),
            lease=int(put.get("lease") or 0)))
    if put is not None:
        return rpc_pb2.RequestOp(request_put=_parsed(put, rpc_pb2.PutRequest()))
    delete = op.get("request_delete_range")
    if delete is not None and delete.keys() == {"key"}:  # a waiter's entry leaving: thousands at once
        return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=base64.b64decode(delete["key"])))
    if "request_range" in op:
        return rpc_pb2.RequestOp(request_range=_parsed(op["request_range"], rpc_pb2.RangeRequest()))
    return _parsed(op, rpc_pb2.RequestOp())


def _txn_answer(answer: rpc_pb2.TxnResponse, only_puts: bool) -> dict[str, Any]:
    """The gateway's shape of a transaction's answer. The puts' answers say nothing but the revision: a
    transaction of puts that succeeded shares one of them for all (a notify's has 128)."""
    revision = str(answer.header.revision)
    result: dict[str, Any] = {"header": {"revision": revision}}
    if answer.succeeded:
        result["succeeded"] = True
    count = len(answer.responses)
    if answer.succeeded and only_puts:
        responses = [{"response_put": {"header": {"revision": revision}}}] * count
    else:
        responses = []
        for response in answer.responses:
            kind = response.WhichOneof("response")
            responses.append({kind: _as_dict(getattr(response, kind))} if kind == "response_range"
                             else {kind: {"header": {"revision": revision}}} if kind else {})
    if responses:
        result["responses"] = responses
    return result


# -- errors ------------------------------------------------------------------------------------------
def _details(error: grpc.RpcError) -> str:
    details = getattr(error, "details", None)
    text = details() if callable(details) else str(error)
    return str(text or getattr(error, "code", lambda: "error")()).replace("etcdserver: ", "")


def _code(error: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(error, "code", None)
    return code() if callable(code) else None


def _is_busy(error: grpc.RpcError) -> bool:
    """etcd cannot serve the request now but may in a moment (electing, overloaded, stopping)."""
    if _code(error) == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return True
    # A member without a leader lets a linearizable read run into its own deadline and answers UNKNOWN
    # "context deadline exceeded" (the gateway's HTTP 500 with the same words): not now, rather than never.
    busy_codes = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN)
    return _code(error) in busy_codes and any(m in _details(error).lower() for m in BUSY_MARKERS)


def _speaks_http1(error: grpc.RpcError) -> bool:
    """The other end answered in HTTP/1 (an HTTP proxy or server, not etcd's gRPC)."""
    return _code(error) == grpc.StatusCode.UNAVAILABLE and any(m in _details(error).lower() for m in _HTTP1_MARKERS)


def _is_unreachable(error: grpc.RpcError) -> bool:
    """The endpoint could not be reached (refused, timed out, TLS failed), as opposed to an answer."""
    code = _code(error)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and "request timed out" not in _details(error):
        return True
    return code == grpc.StatusCode.UNAVAILABLE and not _is_busy(error)


def _is_tls(error: grpc.RpcError) -> bool:
    text = _details(error).lower()
    return "ssl" in text or "handshake" in text or "tls" in text or "certificate" in text


def _is_token_error(error: grpc.RpcError) -> bool:
    """etcd no longer accepts the token: expired, or signed before a change of users or roles."""
    text = _details(error)
    return _code(error) == grpc.StatusCode.UNAUTHENTICATED or "invalid auth token" in text \
        or "revision of auth store is old" in text


_TLS_HINTS = {
    "certificate_verify_failed": "certificate verify failed (is ca_cert the CA that signed etcd's certificate?)",
    "certificate_required": "alert certificate required (etcd wants a client certificate: client_cert, client_key)",
    "bad_certificate": "alert bad certificate (etcd refused the client certificate, or none was given: "
                       "client_cert, client_key)",
    "unknown_ca": "alert unknown ca (etcd does not trust the CA of the client certificate)",
    "wrong_version_number": "wrong version number (does etcd speak TLS on this port?)",
}


def _short(error: grpc.RpcError) -> str:
    text = _details(error)
    if _is_tls(error):
        lowered = text.lower()
        reason = next((hint for marker, hint in _TLS_HINTS.items() if marker in lowered), text.splitlines()[0][-200:])
        return f"TLS handshake failed: {reason}"
    if _code(error) == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "timed out"
    for marker in ("Connection refused", "timed out", "Name or service not known", "No route to host",
                   "Socket closed", "Connection reset"):
        if marker.lower() in text.lower():
            return marker.lower()
    return text.splitlines()[0][:200] if text else "unavailable"


def _keys(key: str, is_prefix: bool) -> str:
    return f" on the keys under {key}" if is_prefix else f" on {key}"


def _keys_of(body: dict[str, Any]) -> str:
    """`` on KEY`` of a gateway-shaped request, for a refusal's message."""
    from .etcd import unb64

    if not isinstance(body, dict) or "key" not in body:
        return ""
    return _keys(unb64(body["key"]), "range_end" in body)


def _refusal(error: grpc.RpcError, endpoint: str, keys: str) -> StoreError:
    """The store's error for an answer of etcd that asking again will not change."""
    message = _details(error)
    if "compacted" in message:
        return HistoryCompacted(0, 0)
    if _code(error) == grpc.StatusCode.PERMISSION_DENIED or "permission denied" in message \
            or "user name is empty" in message:
        return PermissionDenied(f"etcd at {endpoint}: permission denied{keys} ({message})")
    if _code(error) == grpc.StatusCode.UNAUTHENTICATED or "authentication failed" in message:
        return PermissionDenied(f"{endpoint} refused the credentials in use ({message})")
    code = _code(error)
    return StoreError(f"etcd at {endpoint} answered {code.name if code else 'an error'}: {message}")


def _lost(error: grpc.RpcError, endpoint: str) -> StoreError:
    if _is_tls(error):
        return TlsRefused(f"cannot reach etcd at {endpoint}: {_short(error)}")
    if _is_unreachable(error) or _is_busy(error):
        return StoreUnavailable(f"lost the watch stream from etcd at {endpoint} ({_short(error)})")
    if _is_token_error(error):
        return PermissionDenied(f"etcd at {endpoint} refused the watch: {_details(error)}")
    return _refusal(error, endpoint, "")


# -- watch -------------------------------------------------------------------------------------------
class _Watchdog:
    """One thread for the process that ends watch streams silent for longer than their idle timeout."""

    def __init__(self) -> None:
        self._streams: set[GrpcWatchStream] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, stream: GrpcWatchStream) -> None:
        with self._lock:
            self._streams.add(stream)
            if self._thread is None or not self._thread.is_alive() or self._thread.ident is None:
                self._thread = threading.Thread(target=self._run, name="aviso-grpc-watchdog", daemon=True)
                self._thread.start()

    def remove(self, stream: GrpcWatchStream) -> None:
        with self._lock:
            self._streams.discard(stream)

    def _run(self) -> None:
        while True:
            time.sleep(0.5)
            now = time.monotonic()
            with self._lock:
                silent = [s for s in self._streams if s.idle_timeout and now - s.last_heard > s.idle_timeout]
                if not self._streams:
                    self._thread = None
                    return
            for stream in silent:
                stream.end_idle()


_WATCHDOG = _Watchdog()


class GrpcWatchStream(WatchStream):
    """The responses of one etcd watch over gRPC, as :class:`~aviso_workflows.etcd.WatchStream` yields them."""

    def __init__(self, gateway: GrpcGateway, endpoint: str, create: rpc_pb2.WatchRequest,
                 metadata: Any, start_revision: int, idle_timeout: float | None) -> None:
        self._gateway = gateway
        self._endpoint = endpoint
        self._prefix = create.create_request.key.decode("utf-8", errors="replace")
        self._inner: WatchStream | None = None
        self.start_revision = start_revision
        self.idle_timeout = idle_timeout
        self.created = False
        self._closed = False
        self._idle = False
        self.last_heard = time.monotonic()
        self._requests: queue.SimpleQueue[rpc_pb2.WatchRequest | None] = queue.SimpleQueue()
        self._requests.put(create)
        self._call = _stubs(_channel(gateway.config, endpoint)).watch.Watch(
            iter(self._requests.get, None), metadata=metadata)
        _WATCHDOG.add(self)

    @property
    def endpoint(self) -> str:
        """The endpoint serving this watch."""
        return self._endpoint

    def close(self) -> None:
        """Stop the watch from any thread."""
        self._closed = True
        _WATCHDOG.remove(self)
        self._requests.put(None)
        self._call.cancel()
        if self._inner is not None:
            self._inner.close()

    def end_idle(self) -> None:
        """The stream sent nothing for its idle timeout: end it (its reader gets WatchIdle)."""
        self._idle = True
        _WATCHDOG.remove(self)
        self._call.cancel()

    def __iter__(self) -> Iterator[WatchBatch]:
        try:
            for response in self._call:
                self.last_heard = time.monotonic()
                batch = self._batch(response)
                if batch is not None:
                    yield batch
                    continue
                for part in revision_parts(response.events, _event_revision):
                    yield _events(part)
                    self.last_heard = time.monotonic()  # a slow reader of a long answer is no silent stream
        except grpc.RpcError as error:
            if self._idle and not self._closed:
                raise WatchIdle(f"etcd at {self.endpoint} sent nothing on the watch for {self.idle_timeout} s") \
                    from None
            if not self._closed and _speaks_http1(error):
                yield from self._over_gateway(self._gateway.not_grpc(self.endpoint), error)
                return
            if not self._closed:
                if _is_unreachable(error) and not self.created:
                    self._gateway._fail_over(self.endpoint)
                raise _lost(error, self.endpoint) from None
        finally:
            _WATCHDOG.remove(self)
        if not self._closed:
            raise StoreUnavailable(f"etcd at {self.endpoint} ended the watch stream")

    def _over_gateway(self, switched: Exception, error: grpc.RpcError) -> Iterator[WatchBatch]:
        """The endpoint speaks HTTP/1 only: the same watch over the HTTP gateway (``transport: auto``)."""
        if not isinstance(switched, _UseGateway):
            raise switched from None
        self._inner = EtcdGateway.watch(self._gateway, self._prefix, self.start_revision,
                                        idle_timeout=self.idle_timeout or 30.0)
        if self._closed:
            self._inner.close()
        yield from self._inner

    def _batch(self, response: rpc_pb2.WatchResponse) -> WatchBatch | None:
        """The batch of an answer without events (created, progress); None for one with events (see _events)."""
        revision = response.header.revision
        if response.canceled:
            if response.compact_revision:
                raise HistoryCompacted(self.start_revision, response.compact_revision)
            reason = response.cancel_reason.replace("etcdserver: ", "") or "canceled by the server"
            if "permission denied" in reason or "invalid auth token" in reason or "auth store is old" in reason:
                raise PermissionDenied(f"etcd at {self._endpoint} refused the watch: {reason}")
            raise StoreError(f"etcd at {self._endpoint} canceled the watch: {reason}")
        if response.created:
            self.created = True
            return WatchBatch([], revision, "created")
        return None if response.events else WatchBatch([], revision, "progress")


def _events(events: Sequence[kv_pb2.Event]) -> WatchBatch:
    puts: list[KeyValue] = []
    deleted: list[tuple[str, int]] = []
    revision = 0
    for event in events:  # one pass: each ``event.kv`` is a message made for Python anew
        kv = event.kv
        revision = max(revision, kv.mod_revision)
        if event.type == kv_pb2.Event.PUT:
            puts.append(_kv(kv))
        elif event.type == kv_pb2.Event.DELETE:
            deleted.append((kv.key.decode("utf-8", errors="replace"), kv.mod_revision))
    return WatchBatch(puts, revision, deleted=tuple(deleted))


def _event_revision(event: kv_pb2.Event) -> int:
    return int(event.kv.mod_revision)

