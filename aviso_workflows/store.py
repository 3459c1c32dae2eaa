"""The notification store: Aviso's key layout in etcd, written and read the way pyaviso 1.x does.

A notify writes, in one transaction per base and per 128 operations, the data keys (value: the
location, or the literal ``None``), the status key ``base/`` (JSON with ``date_time``, ``prev_rev`` and
``last_prev_day_rev``, the chain pyaviso's ``--from/--to`` replay walks) and the admin key if the event
has one. The status key is compared in the transaction so that concurrent notifiers keep one chain.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .config import StoreConfig, resolve_config
from .errors import NotForwarded, PermissionDenied, StoreError
from .etcd import EtcdGateway, KeyValue, b64, range_op
from .request import Request, check_fields, check_location, check_timeout, check_ttl, split_event
from .schema import EventSchema, SchemaRegistry

log = logging.getLogger(__name__)
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
NO_PAYLOAD = "None"
STATUS_RETRIES = 50


@dataclass(frozen=True)
class Notification:
    """One "data available" notification as read from the store."""

    event: str
    request: dict[str, str]
    location: str | None
    key: str
    revision: int
    #: How many times the key was written (1: first post); not part of the notification's identity.
    version: int = field(default=1, compare=False)

    @property
    def value(self) -> str:
        """The stored value: the location, or the literal ``None``."""
        return self.location if self.location is not None else NO_PAYLOAD

    def to_dict(self) -> dict[str, Any]:
        """pyaviso's notification dict (``event``, ``request``, ``location`` if any) plus key and revision."""
        data: dict[str, Any] = {"event": self.event, "request": dict(self.request)}
        if self.location is not None:
            data["location"] = self.location
        data.update(key=self.key, revision=self.revision)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Notification:
        """Inverse of :meth:`to_dict`."""
        return cls(event=str(data["event"]), request=dict(data["request"]), location=data.get("location"),
                   key=str(data["key"]), revision=int(data["revision"]))

    @property
    def order(self) -> tuple[int, str]:
        """Position in the store's history: revision, then key within one transaction."""
        return self.revision, self.key


_REPORTED_LAYOUTS: set[str] = set()


def notification_from_kv(request: Request, kv: KeyValue) -> Notification | None:
    """The notification held by ``kv`` if it is a data key that ``request`` matches."""
    fields = request.schema.parse_key(kv.key)
    if fields is None:
        _report_foreign_key(request.event, kv.key)
        return None
    if not request.matches(fields):
        return None
    location = None if kv.value == NO_PAYLOAD else kv.value
    return Notification(request.event, fields, location, kv.key, kv.mod_revision, kv.version or 1)


def _report_foreign_key(event: str, key: str) -> None:
    """Log once per event that keys of another layout are skipped (status keys end with '/' and are expected)."""
    if key.endswith("/") or event in _REPORTED_LAYOUTS:
        return
    _REPORTED_LAYOUTS.add(event)
    log.warning("skipping keys that do not follow the layout of event %r, such as %s", event, key)


@dataclass(frozen=True)
class NotifyResult:
    """What a notify wrote: the data keys and the revision of each transaction."""

    keys: list[str]
    revisions: list[int] = field(default_factory=list)


@dataclass
class _Batch:
    status_key: str
    puts: list[tuple[str, str]] = field(default_factory=list)
    admin_keys: list[str] = field(default_factory=list)


class Store:
    """An Aviso-compatible notification store in etcd.

    ``Store()`` uses ``AVISO_WORKFLOWS_ENDPOINTS``, the config file, or the embedded server's address;
    ``Store(["http://10.0.0.1:2379", ...], username=..., password=...)`` names them.
    """

    def __init__(self, endpoints: Sequence[str] | str | None = None, *, config: StoreConfig | None = None,
                 schemas: SchemaRegistry | None = None, **settings: Any) -> None:
        self.config = config or resolve_config(endpoints, **settings)
        self.schemas = schemas or SchemaRegistry()
        for path in self.config.schema_files:
            self.schemas.add_file(path)
        self.gateway = EtcdGateway(self.config)
        self._reads_in_txn = True
        #: The status each status key got from this store's last notify: the next notify compares against it
        #: instead of reading it first (one round trip); if another writer moved it, the failed transaction
        #: returns the current one.
        self._last_status: dict[str, KeyValue | None] = {}

    def __repr__(self) -> str:
        return f"Store({self.config!r})"

    # -- requests --------------------------------------------------------------------------------
    def request(self, event: str | Request | Mapping[str, Any], raw: Mapping[str, Any] | None = None) -> Request:
        """A validated request: ``request("mars", {...})``, ``request({"event": "mars", ...})`` or a Request."""
        if isinstance(event, Request):
            return event
        if isinstance(event, Mapping):
            name, fields = split_event(event)
        else:
            name, fields = split_event(raw or {}, event)
        return Request.build(name, fields, self.schemas)

    def schema(self, event: str) -> EventSchema:
        """The schema of a known event."""
        return self.schemas[event]

    # -- notify ----------------------------------------------------------------------------------
    def notify(self, event: str | Request | Mapping[str, Any], raw: Mapping[str, Any] | None = None, *,
               location: str | None = None, ttl: int | str | None = None,
               message: str | None = None) -> NotifyResult:
        """Post every key of a complete request: one transaction per base and per ``max_txn_ops`` operations.

        ``location`` (or a ``location`` entry in the request) is stored as the value; ``ttl`` makes the
        keys expire. Bad input raises ValidationError before anything is written.
        """
        raw_fields = dict(check_fields(raw or {})) if not isinstance(event, Mapping) else dict(event)
        location = check_location(location if location is not None else raw_fields.pop("location", None))
        ttl = check_ttl(ttl if ttl is not None else raw_fields.pop("ttl", None))
        request = event if isinstance(event, Request) else self.request(
            raw_fields if isinstance(event, Mapping) else event, None if isinstance(event, Mapping) else raw_fields)
        request.require_complete("notify")
        value = location if location is not None else NO_PAYLOAD
        batches = self._batches(request, value)
        lease = self.gateway.grant_lease(ttl) if ttl else None
        result = NotifyResult(keys=[])
        for batch in batches:
            result.revisions.append(self._commit(batch, lease, message))
            result.keys.extend(key for key, _ in batch.puts)
        return result

    def _batches(self, request: Request, value: str) -> list[_Batch]:
        limit = self.config.max_txn_ops - 1  # one operation is the status key
        schema = request.schema
        batches: list[_Batch] = []
        open_batch: dict[str, _Batch] = {}
        for values in request.concrete():
            status_key = schema.status_key(values)
            admin = schema.admin_key(values)
            batch = open_batch.get(status_key)
            extra_admin = 1 if admin and batch is not None and admin not in batch.admin_keys else 0
            if batch is None or len(batch.puts) + len(batch.admin_keys) + 1 + extra_admin > limit:
                batch = open_batch[status_key] = _Batch(status_key)
                batches.append(batch)
            batch.puts.append((schema.format_key(values), value))
            if admin and admin not in batch.admin_keys:
                batch.admin_keys.append(admin)
        return batches

    def _commit(self, batch: _Batch, lease: str | None, message: str | None) -> int:
        keys = [key for key, _ in batch.puts]
        text = message or (f"notification to key {keys[0]}" if len(keys) == 1
                           else f"notification to {len(keys)} keys from {keys[0]}")
        try:
            return self._commit_status_chain(batch, lease, text)
        except PermissionDenied as error:
            user = f" as user {self.config.username!r}" if self.config.username else ""
            raise type(error)(f"{error}; {text}{user} was not written") from None

    def _commit_status_chain(self, batch: _Batch, lease: str | None, text: str) -> int:
        if batch.status_key in self._last_status:
            previous = self._last_status[batch.status_key]
        else:
            _, previous = self.gateway.get(batch.status_key)
        for _ in range(STATUS_RETRIES):
            status = json.dumps(self._status(previous, text))
            puts = [*batch.puts, (batch.status_key, status), *((k, NO_PAYLOAD) for k in batch.admin_keys)]
            answer = self.gateway.txn([_unchanged(batch.status_key, previous)], [_put(k, v, lease) for k, v in puts],
                                      [{"request_range": range_op(batch.status_key)}])
            if answer.get("succeeded"):
                revision = int(answer["header"]["revision"])
                self._last_status[batch.status_key] = KeyValue(batch.status_key, status, revision)
                return revision
            previous = _status_in(answer)
        raise StoreError(f"status key {batch.status_key} kept changing; gave up after {STATUS_RETRIES} attempts")

    def _status(self, previous: KeyValue | None, message: str) -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        status: dict[str, Any] = {
            "etcd_user": self.config.username,
            "message": message,
            "unix_user": _unix_user(),
            "aviso_version": f"aviso-workflows {__version__}",
            "engine": "ETCD_REST",
            "hostname": os.uname().nodename,
            "date_time": now.strftime(DATE_FORMAT),
        }
        if previous is None:
            return status
        status["prev_rev"] = previous.mod_revision
        try:
            old = json.loads(previous.value)
            old_day = dt.datetime.strptime(old["date_time"], DATE_FORMAT).date()
        except (ValueError, KeyError, TypeError):
            return status
        if old_day == now.date():
            if "last_prev_day_rev" in old:
                status["last_prev_day_rev"] = old["last_prev_day_rev"]
        else:
            status["last_prev_day_rev"] = previous.mod_revision
        return status

    # -- reads -----------------------------------------------------------------------------------
    def read(self, request: Request, *, min_revision: int = 0) -> tuple[int, list[Notification]]:
        """Notifications that exist now for ``request`` (modified at or after ``min_revision``).

        Returns the revision the read saw (the earliest, when it took several transactions) and the
        notifications in store order (revision, then key). Ranges are read 128 per transaction.
        """
        return self.read_many([request], min_revision=min_revision)[0]

    def read_many(self, requests: Sequence[Request], *,
                  min_revision: int = 0) -> list[tuple[int, list[Notification]]]:
        """:meth:`read` of several requests at once: their ranges share transactions (for many waiters)."""
        prefixes = list(dict.fromkeys(p for request in requests for p in request.read_prefixes()))
        kvs: dict[str, KeyValue] = {}
        first_revision = 0
        step = self.config.max_txn_ops
        for start in range(0, len(prefixes), step):
            revision, chunk = self._read_ranges(prefixes[start:start + step], min_revision)
            first_revision = first_revision or revision
            kvs.update((kv.key, kv) for kv in chunk)
        return [(first_revision, _matching_notifications(request, kvs)) for request in requests]

    def _read_ranges(self, prefixes: list[str], min_revision: int) -> tuple[int, list[KeyValue]]:
        if len(prefixes) == 1 or not self._reads_in_txn:
            return self._read_each(prefixes, min_revision)
        ops = [{"request_range": range_op(p, prefix_of=p, min_mod_revision=min_revision)} for p in prefixes]
        try:
            answer = self.gateway.txn([], ops)
        except NotForwarded:  # a proxy that forwards only kv/range
            self._reads_in_txn = False
            return self._read_each(prefixes, min_revision)
        revision = int(answer["header"]["revision"])
        kvs: list[KeyValue] = []
        for prefix, response in zip(prefixes, answer.get("responses", [])):
            body = response.get("response_range", {})
            if body.get("more"):
                kvs.extend(self.gateway.range_all(prefix, revision=revision, min_mod_revision=min_revision)[1])
            else:
                kvs.extend(KeyValue.from_json(kv) for kv in body.get("kvs", []))
        return revision, kvs

    def _read_each(self, prefixes: list[str], min_revision: int) -> tuple[int, list[KeyValue]]:
        """One range per prefix; returns the earliest revision read."""
        first_revision, kvs = 0, list[KeyValue]()
        for prefix in prefixes:
            revision, found = self.gateway.range_all(prefix, min_mod_revision=min_revision)
            first_revision = min(first_revision or revision, revision)
            kvs.extend(found)
        return first_revision, kvs

    def get(self, event: str | Request | Mapping[str, Any], raw: Mapping[str, Any] | None = None) -> list[Notification]:
        """Notifications that exist now for a request (wildcards allowed except the base fields)."""
        return self.read(self.request(event, raw))[1]

    def value(self, event: str | Request | Mapping[str, Any],
              raw: Mapping[str, Any] | None = None) -> dict[str, str | None]:
        """The stored value of every key of a complete request (None where the key does not exist)."""
        request = self.request(event, raw)
        request.require_complete("value")
        existing = {n.key: n for n in self.read(request)[1]}
        return {key: existing[key].value if key in existing else None for key in request.keys()}

    def current_revision(self) -> int:
        """The store's revision now."""
        return self.gateway.current_revision()

    # -- waiting and listening (see listen.py) ---------------------------------------------------
    def wait(self, event: str | Request | Mapping[str, Any], raw: Mapping[str, Any] | None = None, *,
             mode: str = "all", timeout: float | None = None,
             on_progress: Callable[[int, int, Notification], None] | None = None) -> list[Notification]:
        """Block until every key of the request exists (``mode="any"``: one matching key); see listen.wait."""
        from .listen import wait

        return wait(self, self.request(event, raw), mode=mode, timeout=check_timeout(timeout),
                    on_progress=on_progress)

    def listen(self, requests: Request | Iterable[Request], **options: Any) -> Iterator[Notification]:
        """Notifications as they are written, in store order; see listen.listen."""
        from .listen import listen

        return listen(self, [requests] if isinstance(requests, Request) else list(requests), **options)


def _matching_notifications(request: Request, kvs: Mapping[str, KeyValue]) -> list[Notification]:
    """The notifications among ``kvs`` that ``request`` matches, in store order."""
    if request.is_complete and request.count < len(kvs):  # look its few keys up rather than test every key
        candidates = [kvs[key] for key in request.keys() if key in kvs]
    else:
        candidates = list(kvs.values())
    found = (notification_from_kv(request, kv) for kv in candidates)
    return sorted((n for n in found if n is not None), key=lambda n: n.order)


def _status_in(failed_txn: dict[str, Any]) -> KeyValue | None:
    """The status key as read by the failure branch of a notify transaction (None if it does not exist)."""
    responses = failed_txn.get("responses") or [{}]
    kvs = responses[0].get("response_range", {}).get("kvs", [])
    return KeyValue.from_json(kvs[0]) if kvs else None


def _unix_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _put(key: str, value: str, lease: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        body["lease"] = lease
    return {"request_put": body}


def _unchanged(key: str, previous: KeyValue | None) -> dict[str, Any]:
    if previous is None:
        return {"key": b64(key), "target": "VERSION", "result": "EQUAL", "version": 0}
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": previous.mod_revision}
