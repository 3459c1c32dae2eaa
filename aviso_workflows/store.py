"""The notification store: Aviso's key layout in etcd, written and read the way pyaviso 1.x does.

A notify writes, in one transaction per base and per 128 operations, the data keys (value: the
location, or the literal ``None``), the status key ``base/`` (JSON with ``date_time``, ``prev_rev`` and
``last_prev_day_rev``, the chain pyaviso's ``--from/--to`` replay walks) and the admin key if the event
has one. The status key is compared in the transaction so that concurrent notifiers keep one chain.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import aviso2
from .config import StoreConfig, resolve_config
from .errors import HistoryCompacted, NotForwarded, PermissionDenied, StoreError, ValidationError
from .etcd import EtcdGateway, KeyValue, first_kv_of_failure, put_op, range_op, unchanged_since
from .listen import listen
from .notification import NO_PAYLOAD, Notification, in_order, notification_from_kv
from .position import Position, key_order
from .request import Request, check_location, check_timeout, check_ttl, split_event
from .schema import EventSchema, SchemaRegistry
from .status_chain import STATUS_TIME_FORMAT, StatusChainTooLong, new_status, status_after, status_record
from .wait import wait

log = logging.getLogger(__name__)
#: The layout of ``date_time`` in a status record (kept here for code that imports it from the store).
DATE_FORMAT = STATUS_TIME_FORMAT
STATUS_RETRIES = 50
#: Statuses read at most, walking a status chain back to learn whether a notify whose answer was lost committed.
STATUS_WALK_LIMIT = 10_000
#: Status keys for which a possible repeated notify was reported (the warning is given once per key).
_UNVERIFIED_STATUS_KEYS: set[str] = set()
#: Tries of a pinned read whose revision was compacted away while it was read.
PINNED_READ_ATTEMPTS = 3


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
        #: The aviso-server's client when the endpoints are ``aviso+http(s)://`` (then etcd is not used).
        self.aviso = aviso2.AvisoClient(self.config) if self.config.is_aviso else None
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

        ``event`` is a Request, an event name with its fields in ``raw``, or fields with an ``event``
        entry. ``location`` (or a ``location`` entry among the fields) is stored as the value; ``ttl``
        makes the keys expire. Bad input raises ValidationError before anything is written.
        """
        request, location, ttl = self._posting(event, raw, location, ttl)
        request.require_complete("notify")
        if self.aviso is not None:
            return self._notify_aviso(self.aviso, request, location, ttl)
        value = location if location is not None else NO_PAYLOAD
        batches = self._batches(request, value)
        lease = self.gateway.grant_lease(ttl) if ttl else None
        result = NotifyResult(keys=[])
        for batch in batches:
            result.revisions.append(self._commit(batch, lease, message))
            result.keys.extend(key for key, _ in batch.puts)
        return result

    @staticmethod
    def _notify_aviso(client: aviso2.AvisoClient, request: Request, location: str | None,
                      ttl: int | None) -> NotifyResult:
        """One POST per key (the server takes one identifier at a time): not atomic across keys."""
        if ttl:
            raise ValidationError("ttl", ttl, "an aviso-server keeps notifications for its own retention; "
                                  "leave ttl out")
        result = NotifyResult(keys=[])
        # In the order readers give the keys of one etcd transaction, so both stores deliver alike.
        for values in sorted(request.concrete(), key=lambda values: key_order(request.schema.format_key(values))):
            answer = client.notify(request.event, values, location)
            result.keys.append(request.schema.format_key(values))
            if isinstance(answer.get("sequence"), int):
                result.revisions.append(answer["sequence"])
        return result

    def _posting(self, event: str | Request | Mapping[str, Any], raw: Mapping[str, Any] | None,
                 location: Any, ttl: Any) -> tuple[Request, str | None, int | None]:
        """The request to post, its location and its ttl: the one place that takes them out of the fields."""
        fields: dict[str, Any] = {}
        if not isinstance(event, Request):
            name, fields = split_event(event) if isinstance(event, Mapping) else split_event(raw or {}, event)
        location = check_location(location if location is not None else fields.pop("location", None))
        ttl = check_ttl(ttl if ttl is not None else fields.pop("ttl", None))
        request = event if isinstance(event, Request) else Request.build(name, fields, self.schemas)
        return request, location, ttl

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
        # One id for every attempt of this batch: it tells our own status from another writer's on the chain.
        notify_id = uuid.uuid4().hex
        for _ in range(STATUS_RETRIES):
            status = json.dumps({**new_status(previous, text, self.config.username), "notify_id": notify_id})
            puts = [*batch.puts, (batch.status_key, status), *((k, NO_PAYLOAD) for k in batch.admin_keys)]
            answer = self.gateway.txn([unchanged_since(batch.status_key, previous)],
                                      [put_op(k, v, lease) for k, v in puts],
                                      [{"request_range": range_op(batch.status_key)}])
            if answer.get("succeeded"):
                revision = int(answer["header"]["revision"])
                self._last_status[batch.status_key] = KeyValue(batch.status_key, status, revision)
                return revision
            current = first_kv_of_failure(answer)
            # The gateway re-sends a transaction whose answer was lost: the status may have moved by our own commit.
            committed = self._committed_revision(batch.status_key, previous, current, notify_id)
            if committed is not None:
                self._last_status[batch.status_key] = current
                return committed
            previous = current
        raise StoreError(f"status key {batch.status_key} kept changing; gave up after {STATUS_RETRIES} attempts")

    def _committed_revision(self, key: str, previous: KeyValue | None, current: KeyValue | None,
                            notify_id: str) -> int | None:
        """The revision of our status if it is the one written right after ``previous`` (None: not ours)."""
        try:
            after = status_after(self.gateway, key, previous, current, limit=STATUS_WALK_LIMIT)
        except HistoryCompacted:
            self._warn_possible_repeat(key, "the history of the status key is compacted")
            return None
        except StatusChainTooLong as too_long:
            self._warn_possible_repeat(key, str(too_long))
            return None
        if after is None or status_record(after).get("notify_id") != notify_id:
            return None
        log.info("a transaction on %s committed at revision %d before its answer was lost; not written again",
                 key, after.mod_revision)
        return after.mod_revision

    @staticmethod
    def _warn_possible_repeat(key: str, reason: str) -> None:
        """Say once per status key that a notify may be written twice: whether it had committed is unknown."""
        if key in _UNVERIFIED_STATUS_KEYS:
            return
        _UNVERIFIED_STATUS_KEYS.add(key)
        log.warning("a notify on %s may be written twice (a repeat cannot be ruled out): the answer of a "
                    "transaction was lost and %s, so whether it committed cannot be checked", key, reason)

    # -- reads -----------------------------------------------------------------------------------
    def read(self, request: Request, *, min_revision: int = 0) -> tuple[int, list[Notification]]:
        """Notifications that exist now for ``request`` (modified at or after ``min_revision``).

        Returns the revision read and the notifications in store order. Ranges are read 128 per
        transaction, every one pinned to the revision of the first: one consistent snapshot.
        """
        if self.aviso is not None:
            start = Position(max(min_revision - 1, 0)) if min_revision else \
                aviso2.wait_start(request, self.config.replay_lookback_hours)
            last, kvs = aviso2.replay(self.aviso, request, start)
            return last, aviso2.latest(request, kvs)
        return self.read_many([request], min_revision=min_revision)[0]

    def read_many(self, requests: Sequence[Request], *,
                  min_revision: int = 0) -> list[tuple[int, list[Notification]]]:
        """:meth:`read` of several requests at once: their ranges share transactions (for many waiters)."""
        if self.aviso is not None:
            return [self.read(request, min_revision=min_revision) for request in requests]
        prefixes = list(dict.fromkeys(p for request in requests for p in request.read_prefixes()))
        revision, kvs = self.read_prefixes(prefixes, min_revision=min_revision)
        by_key = {kv.key: kv for kv in kvs}
        return [(revision, _matching_notifications(request, by_key)) for request in requests]

    def read_prefixes(self, prefixes: Sequence[str], *, min_revision: int = 0,
                      revision: int = 0) -> tuple[int, list[KeyValue]]:
        """Every key under ``prefixes`` as the store held them at one revision (``revision``, else now).

        A read of many prefixes takes several transactions; all are pinned to the revision of the
        first, so a post landing between two of them is in none (it comes through the watch after).
        """
        for attempt in range(PINNED_READ_ATTEMPTS):
            try:
                return self._read_pinned(list(prefixes), min_revision, revision)
            except HistoryCompacted:
                if revision or attempt == PINNED_READ_ATTEMPTS - 1:  # a revision asked for is gone for good
                    raise
        raise AssertionError("unreachable")

    def _read_pinned(self, prefixes: list[str], min_revision: int, revision: int) -> tuple[int, list[KeyValue]]:
        found: list[KeyValue] = []
        step = self.config.max_txn_ops
        for start in range(0, len(prefixes), step):
            revision, chunk = self._read_ranges(prefixes[start:start + step], min_revision, revision)
            found.extend(chunk)
        return revision or self.current_revision(), found

    def _read_ranges(self, prefixes: list[str], min_revision: int, revision: int) -> tuple[int, list[KeyValue]]:
        if len(prefixes) == 1 or not self._reads_in_txn:
            return self._read_each(prefixes, min_revision, revision)
        ops = [{"request_range": range_op(p, prefix_of=p, min_mod_revision=min_revision, revision=revision)}
               for p in prefixes]
        try:
            answer = self.gateway.txn([], ops)
        except NotForwarded:  # a proxy that forwards only kv/range
            self._reads_in_txn = False
            return self._read_each(prefixes, min_revision, revision)
        revision = revision or int(answer["header"]["revision"])
        kvs: list[KeyValue] = []
        for prefix, response in zip(prefixes, answer.get("responses", [])):
            body = response.get("response_range", {})
            if body.get("more"):
                kvs.extend(self.gateway.range_all(prefix, revision=revision, min_mod_revision=min_revision)[1])
            else:
                kvs.extend(KeyValue.from_json(kv) for kv in body.get("kvs", []))
        return revision, kvs

    def _read_each(self, prefixes: list[str], min_revision: int, revision: int) -> tuple[int, list[KeyValue]]:
        """One range per prefix, each at the revision of the first."""
        kvs: list[KeyValue] = []
        for prefix in prefixes:
            revision, found = self.gateway.range_all(prefix, revision=revision, min_mod_revision=min_revision)
            kvs.extend(found)
        return revision, kvs

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
        """The store's revision now (an aviso-server has none: see :meth:`now`)."""
        if self.aviso is not None:
            raise StoreError("an aviso-server has no store revision to ask for; positions there are sequences "
                             "of notifications, and a listener starting now starts at the current time")
        return self.gateway.current_revision()

    def now(self) -> Position:
        """The position of now: a listener starting here gets every post after this call (on an
        aviso-server, every post from the current second on)."""
        if self.aviso is not None:
            return aviso2.now_position()
        return Position(self.gateway.current_revision())

    # -- waiting and listening (see listen.py) ---------------------------------------------------
    def wait(self, event: str | Request | Mapping[str, Any], raw: Mapping[str, Any] | None = None, *,
             mode: str = "all", timeout: float | None = None,
             on_progress: Callable[[int, int, Notification], None] | None = None) -> list[Notification]:
        """Block until every key of the request exists (``mode="any"``: one matching key); see listen.wait."""
        return wait(self, self.request(event, raw), mode=mode, timeout=check_timeout(timeout),
                    on_progress=on_progress)

    def listen(self, requests: Request | Iterable[Request], **options: Any) -> Iterator[Notification]:
        """Notifications as they are written, in store order; see listen.listen."""
        return listen(self, [requests] if isinstance(requests, Request) else list(requests), **options)


def _matching_notifications(request: Request, kvs: Mapping[str, KeyValue]) -> list[Notification]:
    """The notifications among ``kvs`` that ``request`` matches, in store order."""
    if request.is_complete and request.count < len(kvs):  # look its few keys up rather than test every key
        candidates = [kvs[key] for key in request.keys() if key in kvs]
    else:
        candidates = list(kvs.values())
    found = (notification_from_kv(request, kv) for kv in candidates)
    return in_order([n for n in found if n is not None])
