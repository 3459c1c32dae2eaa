"""Where streams get history from: one shared live watch per store identity, and a private replay source.

Every live stream of a process that reaches etcd as the same client shares one etcd watch over the
notification prefix (the prefix covering every event's keys). Its thread hands each feed to the
asyncio loop, which reads it once for every stream (:func:`protocol.read_batch`: notifications,
sequences, times; the events streams send are then encoded once too) and offers it to every
subscriber's bounded queue, waking the subscribers in the order they subscribed. Dispatching and
subscribing both run on the loop, so a subscriber knows exactly the revision after which its queue
holds everything: the hand-over point of a replay that turns live. A subscriber whose queue is full
is cut (it gets :data:`CUT`), never waited for. Each source tells the hub when it loses etcd and when it
has it again; the hub keeps which feeds fail and tells its health listeners (the board), nobody polls.
Replays read history through a watch of their own from their start revision (see streams.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import HistoryCompacted
from ..etcd import KeyValue, range_op
from ..follow import Feed
from ..schema import EventSchema
from ..watch import Channel, HistorySource, covering_prefix
from .protocol import Batch, read_batch

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger(__name__)
#: Handed to a subscriber whose queue overflowed: it is cut off (a slow client never holds others back).
CUT = object()
Item = tuple[Feed, Batch]


def notification_prefix(schemas: list[EventSchema]) -> str:
    """The prefix covering every event's keys (``/ec/`` for the built-in events)."""
    return covering_prefix([schema.key_prefix({}) for schema in schemas])


def read_state(store: Store, prefix: str, since: int, revision: int) -> tuple[int, list[KeyValue]]:
    """The keys under ``prefix`` modified since ``since`` as held at ``revision`` (after a compaction)."""
    return store.read_prefixes([prefix], min_revision=since, revision=revision)


def last_change(store: Store, prefix: str, revision: int) -> int:
    """The revision of the newest put under ``prefix`` at or before ``revision`` (0: none).

    A replay up to ``revision`` has seen everything once it has seen that one: no watch event need be
    waited for (etcd says nothing more until the next post or progress notification).
    """
    body = range_op(prefix, prefix_of=prefix, limit=1, revision=revision, sort="MOD:DESCEND")
    body["keys_only"] = True
    try:
        answer = store.gateway.range(body)
    except HistoryCompacted:  # that state is gone: what exists now bounds it
        body.pop("revision")
        answer = store.gateway.range(body)
    kvs = answer.get("kvs", [])
    return min(int(kvs[0].get("mod_revision", 0)), revision) if kvs else 0


class LoopSource(HistorySource):
    """A history source whose feeds go to a callback on an asyncio loop (never waiting)."""

    def __init__(self, store: Store, prefix: str, start_revision: int, loop: asyncio.AbstractEventLoop,
                 deliver: Callable[[Feed], None]) -> None:
        super().__init__(store.config, prefix, start_revision, Channel(), f"shared watch on {prefix}",
                         partial(read_state, store))
        self._loop = loop
        self._deliver = deliver

    def emit(self, feed: Feed) -> None:
        try:
            self._loop.call_soon_threadsafe(self._deliver, feed)
        except RuntimeError:  # the loop is closed: the server is gone
            self.stop()


class _HealthOnLoop:
    """Hands a source's outages (told on its thread) to the loop, as the source's error or None once it is back."""

    __slots__ = ("_loop", "_tell")

    def __init__(self, loop: asyncio.AbstractEventLoop, tell: Callable[[Exception | None], None]) -> None:
        self._loop = loop
        self._tell = tell

    def on_outage(self, error: Exception) -> None:
        self._call(error)

    def on_reconnected(self, seconds: float) -> None:
        self._call(None)

    def _call(self, error: Exception | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._tell, error)
        except RuntimeError:  # the loop is closed: the server is gone
            pass


class Subscription:
    """One live stream's place on a shared feed: everything after ``start`` arrives in its queue.

    A plain deque and one future to wake the stream (not an asyncio.Queue): a post reaches every
    stream of the server, so what each offer and take costs counts a thousand times over.
    """

    def __init__(self, start: int, capacity: int) -> None:
        self.start = start
        self.capacity = capacity
        self.items: deque[Any] = deque()
        self.cut = False
        #: Set while the stream waits for an item; resolved by an offer (or by whoever else wakes the stream).
        self.waiter: asyncio.Future[None] | None = None

    def offer(self, item: Item) -> None:
        """Queue ``item``; a full queue cuts the subscriber off (its queue then holds only CUT)."""
        if self.cut:
            return
        if len(self.items) >= self.capacity:
            self.cut = True
            self.items.clear()
            self.items.append(CUT)
        else:
            self.items.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self) -> Any:
        """The oldest queued item (or CUT), None if none is queued."""
        return self.items.popleft() if self.items else None


@dataclass
class SharedFeed:
    """The live history of one store identity, fanned out to subscriptions (on the loop's thread)."""

    store: Store
    prefix: str
    schemas: list[EventSchema]
    frontier: int = 0
    source: LoopSource | None = None
    #: Told on the loop when the source loses etcd (its error) and has it again (None).
    on_health: Callable[[SharedFeed, Exception | None], None] | None = None

    def __post_init__(self) -> None:
        #: In the order they subscribed (a dict as an ordered set): the longest waiting is woken first.
        self.subscriptions: dict[Subscription, None] = {}

    async def start(self) -> None:
        """Follow the store from its current revision."""
        self.frontier = await asyncio.to_thread(self.store.current_revision)
        loop = asyncio.get_running_loop()
        self.source = LoopSource(self.store, self.prefix, self.frontier + 1, loop, self.dispatch)
        if self.on_health is not None:
            self.source.add_outage_listener(_HealthOnLoop(loop, partial(self.on_health, self)))
        self.source.start()

    @property
    def alive(self) -> bool:
        """False once the watch ended (stopped, or refused for good)."""
        return self.source is not None and self.source.alive

    def subscribe(self, capacity: int) -> Subscription:
        """A subscription that gets every feed after the current frontier."""
        subscription = Subscription(self.frontier, capacity)
        self.subscriptions[subscription] = None
        return subscription

    def dispatch(self, feed: Feed) -> None:
        """Read the feed once (notifications, sequences, times) and offer it to every subscription."""
        item = (feed, read_batch(feed.puts, self.schemas))
        if feed.kind in ("events", "snapshot", "progress"):
            self.frontier = max(self.frontier, feed.revision)
        cut = []
        for subscription in self.subscriptions:
            subscription.offer(item)
            if subscription.cut:
                cut.append(subscription)
        for subscription in cut:
            self.subscriptions.pop(subscription, None)

    def stop(self) -> None:
        """End the watch (its thread is joined off the loop)."""
        source, self.source = self.source, None
        if source is not None:
            asyncio.get_running_loop().run_in_executor(None, source.stop)


class FeedHub:
    """The shared feeds of one server, one per store identity, started on first use, stopped when unused."""

    def __init__(self, schemas: list[EventSchema], capacity: int) -> None:
        self.schemas = schemas
        self.prefix = notification_prefix(schemas)
        self.capacity = capacity
        self._feeds: dict[Any, SharedFeed] = {}
        self._lock = asyncio.Lock()
        #: The feeds (by id: a dataclass is not hashable) whose source has lost etcd now, with why (on the loop).
        self._failing: dict[int, Exception] = {}
        self._health_listeners: list[Callable[[], None]] = []

    async def join(self, store: Store) -> tuple[SharedFeed, Subscription]:
        """Subscribe to the shared feed of ``store``'s identity (started if there is none or it ended)."""
        key = store.config.identity
        async with self._lock:
            feed = self._feeds.get(key)
            if feed is None or not feed.alive:
                if feed is not None:  # ended for good: what it said of etcd no longer holds
                    self._feed_health(feed, None)
                feed = SharedFeed(store, self.prefix, self.schemas, on_health=self._feed_health)
                await feed.start()
                self._feeds[key] = feed
            return feed, feed.subscribe(self.capacity)

    def leave(self, feed: SharedFeed, subscription: Subscription) -> None:
        """Unsubscribe; the feed stops when nobody is left."""
        feed.subscriptions.pop(subscription, None)
        if not feed.subscriptions and self._feeds.get(feed.store.config.identity) is feed:
            del self._feeds[feed.store.config.identity]
            feed.stop()
            self._feed_health(feed, None)

    @property
    def subscribers(self) -> int:
        """Live streams fed now (a stream cut off as too slow is no longer fed)."""
        return sum(len(feed.subscriptions) for feed in self._feeds.values())

    @property
    def watches(self) -> int:
        """Shared etcd watches open now."""
        return len(self._feeds)

    def failures(self) -> list[Exception]:
        """The errors of the shared feeds whose source has lost etcd now (what a board shows as an outage)."""
        return list(self._failing.values())

    def add_health_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` on the loop whenever a feed loses etcd or has it again (then ask :meth:`failures`)."""
        self._health_listeners.append(listener)

    def remove_health_listener(self, listener: Callable[[], None]) -> None:
        if listener in self._health_listeners:
            self._health_listeners.remove(listener)

    def _feed_health(self, feed: SharedFeed, error: Exception | None) -> None:
        """A feed's source lost etcd (``error``) or has it again (None); a feed no longer kept fails no more."""
        if error is not None and self._feeds.get(feed.store.config.identity) is feed:
            self._failing[id(feed)] = error
        elif self._failing.pop(id(feed), None) is None:
            return
        for listener in list(self._health_listeners):
            listener()

    def stop(self) -> None:
        """End every shared feed."""
        for feed in list(self._feeds.values()):
            feed.stop()
            self._feed_health(feed, None)
        self._feeds.clear()


__all__ = ["CUT", "FeedHub", "LoopSource", "SharedFeed", "Subscription", "last_change", "notification_prefix"]
