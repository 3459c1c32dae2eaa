"""The etcd backend: pyaviso 1.x's key layout, written with its status chain and read at pinned revisions.

A notify writes, in one transaction per base and per ``max_txn_ops`` operations, the data keys (value: the
location, or the literal ``None``), the status key ``base/`` (JSON with ``date_time``, ``prev_rev`` and
``last_prev_day_rev``, the chain pyaviso's ``--from/--to`` replay walks) and the admin key if the event
has one. The status key is compared in the transaction so that concurrent notifiers keep one chain.

Listeners follow an etcd watch of the history from their position (:class:`~aviso_workflows.watch.HistorySource`);
waits join the process's shared watch of their prefix and read what exists once it is ready.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import queue
import threading
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter

from ..config import StoreConfig
from ..errors import HistoryCompacted, NotForwarded, PermissionDenied, StoreError
from ..etcd import KeyValue
from ..etcd_transport import open_gateway
from ..follow import Feed, FeedKind
from ..notification import NO_PAYLOAD, Notification, in_order, notification_from_kv
from ..position import Position
from ..request import Request
from ..watch import Channel, HistorySource, PrefixWatch, WatchHub, covering_prefix
from .base import ConfiguredBackend
from .etcd_status import StatusChainTooLong, new_status, status_after, status_record
from .protocol import DatedHistory, NotifyResult, Read

log = logging.getLogger(__name__)
STATUS_RETRIES = 50
#: Statuses read at most, walking a status chain back to learn whether a notify whose answer was lost committed.
STATUS_WALK_LIMIT = 10_000
#: Status keys for which a possible repeated notify was reported (the warning is given once per key).
_UNVERIFIED_STATUS_KEYS: set[str] = set()
#: Tries of a pinned read whose revision was compacted away while it was read.
PINNED_READ_ATTEMPTS = 3
#: Feeds a waiter's inbox holds; beyond that it forgets them and reads again (memory stays bounded).
INBOX_LIMIT = 1_000
RESYNC: Feed[KeyValue] = Feed(FeedKind.RESYNC, 0)


_KEY = itemgetter(0)


@dataclass
class _Batch:
    status_key: str
    puts: list[tuple[str, str]] = field(default_factory=list)
    admin_keys: list[str] = field(default_factory=list)


def _chunks(request: Request, value: str, limit: int) -> list[_Batch]:
    """The batches of a request whose keys share one status key and one admin key (one base, one admin
    date: a forecast's steps): its keys in order, ``limit`` operations (status key aside) per batch."""
    fixed = {name: values[0] for name, values in request.values.items() if len(values) == 1}
    status_key, admin = request.schema.status_key(fixed), request.schema.admin_key(fixed)
    size = limit - 1 if admin else limit
    keys = request.keys()
    return [_Batch(status_key, list(zip(keys[start:start + size], repeat(value))), [admin] if admin else [])
            for start in range(0, len(keys), size)]


def status_prefixes(requests: Sequence[Request]) -> list[str]:
    """The status prefixes that the requests' keys live under."""
    return list(dict.fromkeys(p for request in requests for p in request.status_keys()))


class EtcdBackend(ConfiguredBackend):
    """An Aviso-compatible notification store in etcd (see the module's doc)."""

    position_unit = "revision"

    def __init__(self, config: StoreConfig, history: DatedHistory) -> None:
        self.config = config
        self.gateway = open_gateway(config)
        self.history = history
        self._reads_in_txn = True
        #: The status each status key got from this store's last notify: the next notify compares against it
        #: instead of reading it first (one round trip); if another writer moved it, the failed transaction
        #: returns the current one.
        self._last_status: dict[str, KeyValue | None] = {}

    def etcd(self, what: str) -> EtcdBackend:
        return self

    def health(self) -> str:
        return f"reached etcd at revision {self.current_revision()}"

    def close(self) -> None:
        """Nothing of its own to close: connections are per thread and shared watches per store identity."""

    # -- notify ----------------------------------------------------------------------------------
    def notify(self, request: Request, location: str | None, ttl: int | None, message: str | None) -> NotifyResult:
        value = location if location is not None else NO_PAYLOAD
        batches = self._batches(request, value)
        lease = self.gateway.grant_lease(ttl) if ttl else None
        result = NotifyResult(keys=[])
        for batch in batches:
            result.revisions.append(self._commit(batch, lease, message))
            result.keys.extend(map(_KEY, batch.puts))
        return result

    def _batches(self, request: Request, value: str) -> list[_Batch]:
        limit = self.config.max_txn_ops - 1  # one operation is the status key
        schema = request.schema
        if all(len(request.values[name]) == 1 for name in (*schema.base_fields, *schema.admin_fields)):
            return _chunks(request, value, limit)
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
        first, count = batch.puts[0][0], len(batch.puts)
        text = message or (f"notification to key {first}" if count == 1
                           else f"notification to {count} keys from {first}")
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
        notify_id = os.urandom(16).hex()
        for _ in range(STATUS_RETRIES):
            status = json.dumps({**new_status(previous, text, self.config.username), "notify_id": notify_id})
            puts = [*batch.puts, (batch.status_key, status), *((k, NO_PAYLOAD) for k in batch.admin_keys)]
            written, revision, current = self.gateway.put_if_unchanged(batch.status_key, previous, puts, lease)
            if written:
                self._last_status[batch.status_key] = KeyValue(batch.status_key, status, revision)
                return revision
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
    def read(self, request: Request, min_revision: int = 0) -> Read:
        return self.read_many([request], min_revision)[0]

    def read_many(self, requests: Sequence[Request], min_revision: int = 0) -> list[Read]:
        """Ranges read 128 per transaction, every one pinned to the revision of the first: one snapshot."""
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
        try:
            read_at, pages = self.gateway.ranges_in_txn(prefixes, revision=revision, min_mod_revision=min_revision)
        except NotForwarded:  # a proxy that forwards only kv/range
            self._reads_in_txn = False
            return self._read_each(prefixes, min_revision, revision)
        revision = revision or read_at
        kvs: list[KeyValue] = []
        for prefix, (page, more) in zip(prefixes, pages):
            if more:
                kvs.extend(self.gateway.range_all(prefix, revision=revision, min_mod_revision=min_revision)[1])
            else:
                kvs.extend(page)
        return revision, kvs

    def _read_each(self, prefixes: list[str], min_revision: int, revision: int) -> tuple[int, list[KeyValue]]:
        """One range per prefix, each at the revision of the first."""
        kvs: list[KeyValue] = []
        for prefix in prefixes:
            revision, found = self.gateway.range_all(prefix, revision=revision, min_mod_revision=min_revision)
            kvs.extend(found)
        return revision, kvs

    # -- positions -------------------------------------------------------------------------------
    def current_revision(self) -> int:
        return self.gateway.current_revision()

    def now(self) -> Position:
        return Position(self.gateway.current_revision())

    def last_post(self, requests: Sequence[Request], revision: int | None) -> int | None:
        """Every notify writes its status key in the same transaction as its data keys, so a follower has
        seen everything up to ``revision`` once it has seen the last status written by then."""
        if revision is None:
            return None
        try:
            found = [self.gateway.get(key, revision=revision)[1] for key in status_prefixes(requests)]
        except HistoryCompacted:
            return revision
        return max((kv.mod_revision for kv in found if kv is not None), default=0)

    def first_after(self, requests: Sequence[Request], moment: dt.datetime) -> Position:
        """Found on the status chains (a binary search over revisions), which the store gives."""
        return self.history.first_after(requests, moment)

    def replay_window(self, requests: Sequence[Request], start: dt.datetime,
                      end: dt.datetime | None) -> list[Notification]:
        return self.history.replay_window(requests, start, end)

    # -- following -------------------------------------------------------------------------------
    def follow(self, requests: Sequence[Request], start: Position, channel: Channel, label: str) -> HistorySource:
        prefix = covering_prefix(status_prefixes(requests))
        return HistorySource(self.config, prefix, start.resume_revision, channel, f"{label} (history of {prefix})",
                             self._read_state)

    def _read_state(self, prefix: str, since: int, revision: int) -> tuple[int, list[KeyValue]]:
        return self.read_prefixes([prefix], min_revision=since, revision=revision)

    def wait_feeds(self, request: Request, wanted: Sequence[str] | None, hub: WatchHub,
                   loop: asyncio.AbstractEventLoop | None = None) -> SharedWatchFeeds:
        inbox: _Feeds = _Inbox() if loop is None else _AsyncInbox(loop)
        return SharedWatchFeeds(self.config, covering_prefix(request.status_keys()), wanted, inbox, hub)


def _matching_notifications(request: Request, kvs: Mapping[str, KeyValue]) -> list[Notification]:
    """The notifications among ``kvs`` that ``request`` matches, in store order."""
    if request.is_complete and request.count < len(kvs):  # look its few keys up rather than test every key
        candidates = [kvs[key] for key in request.keys() if key in kvs]
    else:
        candidates = list(kvs.values())
    found = (notification_from_kv(request, kv) for kv in candidates)
    return in_order([n for n in found if n is not None])


# -- a wait's feeds: the process's shared watch of the wait's prefix ----------------------------------
class _Feeds:
    """What the shared watch calls on a wait's inbox; each kind of inbox says how a feed reaches its waiter."""

    __slots__ = ()

    def on_puts(self, puts: list[KeyValue], revision: int) -> None:
        self._put(Feed(FeedKind.EVENTS, revision, puts))

    def on_resync(self) -> None:
        self._put(RESYNC)

    def on_failure(self, error: Exception) -> None:
        self._put(Feed(FeedKind.FAILURE, 0, error=error))

    def _put(self, feed: Feed) -> None:
        raise NotImplementedError

    def get(self, timeout: float) -> Feed | None:
        raise TypeError("these feeds were opened for an asyncio loop, not for a thread")

    async def aget(self) -> Feed:
        raise TypeError("these feeds were opened for a thread, not for an asyncio loop")


class _Inbox(_Feeds):
    """Queues what the shared watch sees for a waiting thread (bounded: too far behind, it forgets the feeds
    and asks for a read instead). A ``SimpleQueue``: one lock in C rather than a lock and three conditions, for
    each of a thousand waiting threads."""

    __slots__ = ("queue",)

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[Feed] = queue.SimpleQueue()

    def _put(self, feed: Feed) -> None:
        if self.queue.qsize() >= INBOX_LIMIT:
            _empty(self.queue)
            feed = RESYNC
        self.queue.put(feed)

    def get(self, timeout: float) -> Feed | None:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None


def _empty(items: queue.SimpleQueue[Feed]) -> None:
    for _ in range(items.qsize()):
        try:
            items.get_nowait()
        except queue.Empty:
            return


class _LoopMailbox:
    """The feeds on their way to one loop's inboxes, handed over in one loop callback per watch batch.

    A post of 10 000 keys would otherwise cost the watch thread 10 000 ``call_soon_threadsafe`` (a handle
    and a wake-up of the loop each); here the first feed of a batch schedules the hand-over and the rest
    join it. One list keeps the order of each inbox's feeds.
    """

    __slots__ = ("__weakref__", "loop", "lock", "pending", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.pending: list[tuple[_AsyncInbox, Feed]] = []
        self.scheduled = False

    def post(self, inbox: _AsyncInbox, feed: Feed) -> None:  # on the watch thread
        with self.lock:
            self.pending.append((inbox, feed))
            if self.scheduled:
                return
            self.scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._hand_over)
        except RuntimeError:  # the loop is closed: its waiters are gone, and so are their feeds
            with self.lock:
                self.pending, self.scheduled = [], False

    def _hand_over(self) -> None:  # on the loop
        with self.lock:
            taken, self.pending, self.scheduled = self.pending, [], False
        for inbox, feed in taken:
            inbox.queue_up(feed)


#: One mailbox per loop, gone with its loop.
_MAILBOXES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopMailbox] = weakref.WeakKeyDictionary()
_MAILBOXES_LOCK = threading.Lock()


def _mailbox(loop: asyncio.AbstractEventLoop) -> _LoopMailbox:
    with _MAILBOXES_LOCK:
        mailbox = _MAILBOXES.get(loop)
        if mailbox is None:
            mailbox = _MAILBOXES[loop] = _LoopMailbox(loop)
        return mailbox


class _AsyncInbox(_Feeds):
    """Hands feeds to an asyncio loop through its mailbox (no thread per waiter; bounded as :class:`_Inbox`).
    A list and one future while its waiter waits: ten thousand triggers would each carry an
    ``asyncio.Queue`` (three deques) and a coroutine more, which the garbage collector walks again and again."""

    __slots__ = ("feeds", "mailbox", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.feeds: list[Feed] | None = None  # a list once a feed came: most waiters wait for one feed only
        self.waiter: asyncio.Future[None] | None = None
        self.mailbox = _mailbox(loop)

    def _put(self, feed: Feed) -> None:
        self.mailbox.post(self, feed)

    def queue_up(self, feed: Feed) -> None:  # on the loop
        feeds = self.feeds
        if feeds is None:
            feeds = self.feeds = []
        elif len(feeds) >= INBOX_LIMIT:  # too far behind: forget the feeds, read again instead
            feeds.clear()
            feed = RESYNC
        feeds.append(feed)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def aget(self) -> Feed:
        while not self.feeds:
            self.waiter = self.mailbox.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        assert self.feeds is not None
        return self.feeds.pop(0)


class SharedWatchFeeds:
    """One wait's share of the process's watch on its prefix: changes only, read what exists once ready."""

    reads_state = True

    def __init__(self, config: StoreConfig, prefix: str, wanted: Sequence[str] | None, inbox: _Feeds,
                 hub: WatchHub) -> None:
        self.hub = hub
        self.config = config
        self.prefix = prefix
        self.wanted = wanted
        self.inbox = inbox
        self.watch: PrefixWatch | None = None

    @property
    def patience(self) -> float:
        return self.config.timeout

    @property
    def last_error(self) -> Exception | None:
        return self.watch.last_error if self.watch is not None else None

    def start(self) -> None:
        self.watch = self.hub.join(self.config, self.prefix, self.inbox, self.wanted)  # a new watch starts in a thread

    def ready(self, timeout: float) -> bool:
        return self.watch is not None and self.watch.wait_ready(timeout)

    def get(self, timeout: float) -> Feed | None:
        return self.inbox.get(timeout)

    def aget(self) -> Awaitable[Feed]:
        return self.inbox.aget()  # the inbox's own coroutine: one level less in each waiting trigger

    def detach(self) -> Callable[[], None] | None:
        """Leave the shared watch; the watch's stop if this was its last subscriber."""
        if self.watch is None:
            return None
        self.watch = None
        ended = self.hub.leave(self.config, self.prefix, self.inbox)
        return ended.stop if ended is not None else None


__all__ = ["EtcdBackend", "SharedWatchFeeds", "status_prefixes"]
