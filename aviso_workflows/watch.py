"""Sources of history: a thread that follows one etcd prefix and hands what it sees on as feeds.

:class:`WatchLoop` follows a prefix from a revision: through an etcd watch, reconnecting after an
outage from the revision after the last one seen (one WARNING per outage, one INFO at its end),
moving on with etcd's progress notifications so that a quiet watch never restarts from stale history,
and, where a proxy refuses watches, reading the prefix every ``poll_interval`` seconds instead.

Two kinds of loop use it:

- :class:`HistorySource`, one per listener: its feeds go into a bounded :class:`Channel` that the
  listener's driver (a thread or an asyncio task) empties; a full channel holds the loop back, so a
  slow listener never piles up what it has not read. Where history was compacted it reads the state
  at the compaction revision, says so, and goes on from there.
- :class:`PrefixWatch`, shared by every waiter of a store's runtime on one prefix (:class:`WatchHub`): it fans the
  puts out to its subscribers without ever waiting on one; a subscriber whose inbox overflows reads
  again instead.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from .config import StoreConfig
from .errors import HistoryCompacted, NotForwarded, PermissionDenied, StoreError, TlsRefused
from .etcd import KeyValue, WatchBatch, WatchIdle
from .etcd_transport import open_gateway
from .follow import Feed, FeedKind, one_line
from .position import Position

log = logging.getLogger(__name__)
RETRY_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
#: A watch that hears nothing for this long (no event, no progress notification) is reconnected.
#: The embedded server sends progress every PROGRESS_INTERVAL; etcd's default is every 10 minutes,
#: so with other servers a quiet watch reconnects about once a minute, from the last revision seen.
IDLE_TIMEOUT = 75.0
#: Seconds a waiting driver sleeps at most before it looks at its stop flag again.
STOP_CHECK = 0.2


def covering_prefix(prefixes: Iterable[str]) -> str:
    """The longest prefix of every one of ``prefixes``: one watch over it sees all of them, in one order."""
    items = sorted(set(prefixes))
    if not items:
        raise ValueError("no prefix to cover")
    first, last = items[0], items[-1]
    length = 0
    while length < min(len(first), len(last)) and first[length] == last[length]:
        length += 1
    return first[:length]


class OutageListener(Protocol):
    """Told when a source loses etcd and when it has it again (an idle watch reconnecting is no outage).

    Called on the source's thread, in order, one outage at a time: must be quick and never block.
    """

    def on_outage(self, error: Exception) -> None: ...

    def on_reconnected(self, seconds: float) -> None: ...


class WatchLoop:
    """Follows one prefix from ``next_revision`` in a thread of its own (see the module's text)."""

    #: With no ``next_revision``, watch from the revision etcd has when it creates the watch (its first answer
    #: tells which), rather than from one read before: see :meth:`PrefixWatch.following`.
    starts_now = False

    def __init__(self, config: StoreConfig, prefix: str, next_revision: int, label: str) -> None:
        self.config = config
        self.prefix = prefix
        self.label = label
        self.gateway = open_gateway(config)
        self.next_revision = next_revision
        #: True once a proxy refused the watch: the prefix is read every ``poll_interval`` seconds instead.
        self.polling = False
        self.connections_opened = 0
        self._stop = threading.Event()
        self._stream: Any = None
        self._failures = 0  # attempts failed in a row; the first one was reported
        #: Why the last attempt failed (None once the watch works again).
        self.last_error: Exception | None = None
        self._signed_in_again = False
        # Who hears of outages, and the one going on (its error and start): under one lock, so a listener
        # added during an outage hears of it exactly once, before its end.
        self._outage_lock = threading.RLock()
        self._outage_listeners: list[OutageListener] = []
        self._outage: tuple[Exception, float] | None = None
        self._thread = threading.Thread(target=self._run, name=f"aviso-watch {prefix}", daemon=True)

    # -- what the kinds of loop decide -----------------------------------------------------------
    def emit(self, feed: Feed) -> None:
        """Hand ``feed`` on (may block while the reader is busy; returns early once stopped)."""
        raise NotImplementedError

    def first_revision(self) -> int:
        """The revision to start from when none was given (a loop that starts "now")."""
        return self.gateway.current_revision() + 1

    def compacted(self, error: HistoryCompacted) -> int:
        """History before ``error.compact_revision`` is gone; returns the revision to watch from next."""
        raise NotImplementedError

    def following(self) -> None:
        """etcd follows the prefix for us now: it confirmed the watch (or a poll's read answered)."""

    # -- outages ---------------------------------------------------------------------------------
    def add_outage_listener(self, listener: OutageListener) -> None:
        """Tell ``listener`` when this source loses etcd and has it again; at once if it has lost it now."""
        with self._outage_lock:
            self._outage_listeners.append(listener)
            if self._outage is not None:
                listener.on_outage(self._outage[0])

    def remove_outage_listener(self, listener: OutageListener) -> None:
        """Tell ``listener`` nothing more (unknown listeners are ignored)."""
        with self._outage_lock:
            if listener in self._outage_listeners:
                self._outage_listeners.remove(listener)

    def _outage_began(self, error: Exception) -> None:
        with self._outage_lock:
            self._outage = (error, time.monotonic())
            for listener in list(self._outage_listeners):
                listener.on_outage(error)

    def _outage_ended(self) -> None:
        with self._outage_lock:
            if self._outage is None:
                return
            seconds, self._outage = time.monotonic() - self._outage[1], None
            for listener in list(self._outage_listeners):
                listener.on_reconnected(seconds)

    # -- life ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start following in the loop's thread."""
        self._thread.start()

    def stop(self) -> None:
        """End the loop and its thread (bounded)."""
        self._stop.set()
        self._close_stream()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    @property
    def confirmed(self) -> bool:
        """True while the loop reads a watch stream that etcd has confirmed (its ``created`` answer came)."""
        stream = self._stream
        return stream is not None and bool(stream.created)

    @property
    def alive(self) -> bool:
        """False once the loop ended for good (stopped, or refused for good)."""
        return self._thread.is_alive() and not self._stop.is_set()

    def _close_stream(self) -> None:
        stream = self._stream
        if stream is not None:
            stream.close()

    # -- the loop --------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.next_revision and (self.polling or not self.starts_now):
                    self.next_revision = self.first_revision()
                self._poll() if self.polling else self._watch()
            except HistoryCompacted as error:
                self._recover(error)
            except NotForwarded as error:
                log.info("%s: watch refused (%s); reading it every %g s instead", self.label, one_line(error),
                         self.config.poll_interval)
                self.polling = True
            except PermissionDenied as error:
                if not self._may_sign_in_again(error):
                    self._fail(type(error)(f"{error}; watching {self.prefix}"))
            except TlsRefused as error:  # waiting will not mend a setting
                self._fail(error)
            except Exception as error:  # noqa: BLE001 - any transport failure: reconnect after a pause
                if not self._stop.is_set():
                    self._interrupted(error)

    def _recover(self, error: HistoryCompacted) -> None:
        """Go on after compacted history; an outage meanwhile is retried like any other."""
        try:
            self._advance(self.compacted(error))
        except Exception as failure:  # noqa: BLE001 - the next attempt meets the compaction again
            if not self._stop.is_set():
                self._interrupted(failure)

    def _fail(self, error: Exception) -> None:
        """A refusal that will not change: tell the reader and end."""
        self.emit(Feed(FeedKind.FAILURE, self.next_revision, error=error))
        self._stop.set()

    def _watch(self) -> None:
        stream = self.gateway.watch(self.prefix, self.next_revision, idle_timeout=IDLE_TIMEOUT)
        self._stream = stream
        self.connections_opened += 1
        try:
            if self._stop.is_set():  # stop() ran before the stream existed and could not close it
                return
            for batch in stream:
                self._connected()
                if batch.kind == "created":
                    if not self.next_revision:  # started from now: from what etcd had when it created the watch
                        self._advance(batch.revision + 1)
                    self.following()
                self._hand_on(batch)
                if self._stop.is_set():
                    return
        finally:
            self._signed_in_again = self._signed_in_again and not stream.created
            stream.close()
            self._stream = None

    def _hand_on(self, batch: WatchBatch) -> None:
        if batch.kind == "events":
            self.emit(Feed(FeedKind.EVENTS, batch.revision, batch.puts))
        elif batch.is_progress:
            self.emit(Feed(FeedKind.PROGRESS, batch.revision))
        else:
            return
        self._advance(batch.revision + 1)

    def _poll(self) -> None:
        """Read what changed since ``next_revision`` every ``poll_interval`` seconds, as one snapshot."""
        while not self._stop.is_set() and self.polling:
            revision, kvs = self.gateway.range_all(self.prefix, min_mod_revision=self.next_revision)
            self._connected()
            self.following()
            self.emit(Feed(FeedKind.SNAPSHOT, revision, kvs))
            self._advance(revision + 1)
            self._stop.wait(self.config.poll_interval)

    def _advance(self, revision: int) -> None:
        """Move the next revision on (never back)."""
        self.next_revision = max(self.next_revision, revision)

    def _interrupted(self, error: Exception) -> None:
        """One warning per outage (an idle stream is routine: debug only), then a growing pause."""
        self.last_error = error
        if isinstance(error, WatchIdle) and not self._failures:
            log.debug("%s idle (%s); reconnecting", self.label, one_line(error))
            return
        if not self._failures:
            log.warning("%s interrupted (%s); reconnecting from revision %s", self.label,
                        one_line(error), self.next_revision)
            self._outage_began(error)
        else:
            log.debug("%s still interrupted (%s)", self.label, one_line(error))
        self._stop.wait(RETRY_DELAYS[min(self._failures, len(RETRY_DELAYS) - 1)])
        self._failures += 1

    def _connected(self) -> None:
        """The stream works: report the end of an outage once, and start the next one's pauses afresh."""
        self.last_error = None
        if self._failures:
            log.info("%s resumed at revision %s", self.label, self.next_revision)
            self._failures = 0
            self._outage_ended()

    def _may_sign_in_again(self, error: PermissionDenied) -> bool:
        """etcd refuses a watch whose token it no longer knows (expired, or signed before a restart) as
        "permission denied": sign in again once; a second refusal in a row is a real one.
        """
        if not self.config.username or self._signed_in_again or isinstance(error, NotForwarded):
            return False
        self._signed_in_again = True
        self.gateway.forget_token()
        return True


# -- one listener's history ------------------------------------------------------------------------
class Channel:
    """A bounded hand-over of feeds from a loop's thread to one reader: a thread, or an asyncio task.

    The loop waits for room (checking whether it should give up), so a slow reader holds the loop
    back instead of letting feeds pile up.
    """

    def __init__(self, size: int = 1, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._room = threading.Semaphore(size)
        self._loop = loop
        self._items: queue.SimpleQueue[Feed] = queue.SimpleQueue()
        self._async_items: asyncio.Queue[Feed] | None = asyncio.Queue() if loop is not None else None

    def put(self, feed: Feed, give_up: Callable[[], bool]) -> None:
        """Hand ``feed`` over once there is room; drop it if ``give_up()`` turns true meanwhile."""
        while not self._room.acquire(timeout=STOP_CHECK):
            if give_up():
                return
        if self._loop is None or self._async_items is None:
            self._items.put(feed)
            return
        try:
            self._loop.call_soon_threadsafe(self._async_items.put_nowait, feed)
        except RuntimeError:  # the reader's loop is closed: nobody reads any more
            self._room.release()

    def get(self, timeout: float) -> Feed | None:
        """The next feed, or None after ``timeout`` seconds (for a reading thread)."""
        try:
            feed = self._items.get(timeout=timeout)
        except queue.Empty:
            return None
        self._room.release()
        return feed

    async def aget(self) -> Feed:
        """The next feed (for an asyncio reader)."""
        assert self._async_items is not None, "a channel read from asyncio needs the loop when made"
        feed = await self._async_items.get()
        self._room.release()
        return feed


class HistorySource(WatchLoop):
    """The history of one prefix from a revision, for one listener, through a bounded channel."""

    def __init__(self, config: StoreConfig, prefix: str, start_revision: int, channel: Channel, label: str,
                 read_state: Callable[[str, int, int], tuple[int, list[KeyValue]]]) -> None:
        super().__init__(config, prefix, start_revision, label)
        self.channel = channel
        self._read_state = read_state

    def emit(self, feed: Feed) -> None:
        self.channel.put(feed, lambda: self.stopped)

    def stamped(self, position: Position) -> Position:
        """A revision is all a cursor needs of an etcd position."""
        return position

    def compacted(self, error: HistoryCompacted) -> int:
        """Hand on the state at the compaction revision (what can still be seen), then follow from it."""
        since, revision = self.next_revision, error.compact_revision
        self.emit(Feed(FeedKind.COMPACTED, revision))
        _, kvs = self._read_state(self.prefix, since, revision)
        self.emit(Feed(FeedKind.SNAPSHOT, revision, kvs))
        return revision + 1

    def __enter__(self) -> HistorySource:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- shared watches for waits ----------------------------------------------------------------------
class Subscriber(Protocol):
    """Receives what a shared watch sees (called on the watch's thread: must be quick, never block)."""

    def on_puts(self, puts: list[KeyValue], revision: int) -> None:
        """Puts of one watch answer in etcd's order (history order; the keys of one transaction as written),
        complete through ``revision``."""

    def on_resync(self) -> None: ...

    def on_failure(self, error: Exception) -> None: ...


class PrefixWatch(WatchLoop):
    """One etcd watch on one prefix for the whole process, fanned out to its subscribers.

    Subscribers interested in known keys are found through a key index; the others (wildcard
    waiters) see every put of the prefix. It starts at the store's current revision; waiters read
    what exists only once it is :attr:`ready` (etcd confirmed the watch), so every post is in their
    read or in the watch, and one landing while the watch was being created is in their read.
    """

    def __init__(self, config: StoreConfig, prefix: str) -> None:
        super().__init__(config, prefix, 0, f"watch on {prefix}")
        self._subscribers_lock = threading.Lock()
        #: The subscriber of each known key, or a set of them once there are several: most keys have one waiter,
        #: and a set each would be one more object per waiting trigger for the garbage collector to walk.
        self._by_key: dict[str, Subscriber | set[Subscriber]] = {}
        self._everything: set[Subscriber] = set()
        self._keys_of: dict[Subscriber, tuple[str, ...] | None] = {}
        self._ready = threading.Event()
        self._error: Exception | None = None
        self.add_outage_listener(_Relay(self))

    @property
    def subscriber_count(self) -> int:
        """How many subscribers share this watch."""
        with self._subscribers_lock:
            return len(self._keys_of)

    @property
    def ready(self) -> bool:
        """True once etcd confirmed the watch (see :meth:`following`)."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None) -> bool:
        """Block until etcd confirmed the watch (bounded); False if it did not in time. Raises why the
        watch ended if it was refused for good."""
        ready = self._ready.wait(timeout)
        if self._error is not None:
            raise self._error
        return ready

    #: The watch starts from now. A start revision read before it is in the past as soon as anything is written
    #: before etcd creates the watch (the waiter's own registration, any producer): etcd then counts it among its
    #: unsynced watchers, which it serves every 100 ms, so a post made just after the waiter's read reached it
    #: up to 100 ms late (over a quarter of the releases of triggers that each started a watch took about 60 ms).
    #: etcd keeps a narrow form of the race (its watch server reads the store's revision just before registering a
    #: watch from now, ``v3rpc/watch.go``): a write landing between the two leaves a new watch unsynced now and then.
    starts_now = True

    def following(self) -> None:
        """Ready once etcd confirmed the watch: every post is then either in a read a waiter makes from now
        on, or in the watch (which etcd started from its revision at that moment), so nothing is lost."""
        self._ready.set()

    def add(self, subscriber: Subscriber, keys: Iterable[str] | None) -> None:
        """Deliver puts of ``keys`` (or of every key when None) to ``subscriber`` from now on."""
        wanted = tuple(keys) if keys is not None else None
        with self._subscribers_lock:
            self._keys_of[subscriber] = wanted
            if wanted is None:
                self._everything.add(subscriber)
            else:
                for key in wanted:
                    held = self._by_key.get(key)
                    if held is None:
                        self._by_key[key] = subscriber
                    elif isinstance(held, set):
                        held.add(subscriber)
                    elif held is not subscriber:
                        self._by_key[key] = {held, subscriber}

    def remove(self, subscriber: Subscriber) -> bool:
        """Stop delivering to ``subscriber``; True when nobody is left."""
        with self._subscribers_lock:
            wanted = self._keys_of.pop(subscriber, None)
            self._everything.discard(subscriber)
            for key in wanted or ():
                held = self._by_key.get(key)
                if held is subscriber:
                    del self._by_key[key]
                elif isinstance(held, set):
                    held.discard(subscriber)
                    if not held:
                        del self._by_key[key]
            return not self._keys_of

    def emit(self, feed: Feed) -> None:
        if feed.kind is FeedKind.FAILURE and feed.error is not None:
            self._error = feed.error
            self._ready.set()
            for subscriber in self._subscribers():
                subscriber.on_failure(feed.error)
        elif feed.puts:
            self._deliver(feed.puts, feed.revision)

    def compacted(self, error: HistoryCompacted) -> int:
        """Start again from now; every subscriber reads again, after the new start is known."""
        log.warning("%s: history compacted past revision %s; reading again", self.label,
                    self.next_revision)
        revision = super().first_revision()
        for subscriber in self._subscribers():
            subscriber.on_resync()
        return revision

    def _subscribers(self) -> list[Subscriber]:
        with self._subscribers_lock:
            return list(self._keys_of)

    def _deliver(self, puts: Sequence[KeyValue], revision: int) -> None:
        # in the order etcd sent them: each subscriber's follower puts them in the one order of places
        with self._subscribers_lock:
            targets: dict[Subscriber, list[KeyValue]] = {s: list(puts) for s in self._everything}
            for kv in puts:
                held = self._by_key.get(kv.key)
                if held is None:
                    continue
                for subscriber in held if isinstance(held, set) else (held,):
                    targets.setdefault(subscriber, []).append(kv)
        for subscriber, kvs in targets.items():
            subscriber.on_puts(kvs, revision)


class WatchOutageListener(Protocol):
    """Told of the outages of every shared watch of the process (called on the watch's thread: quick, no blocking)."""

    def on_outage(self, watch: PrefixWatch, error: Exception) -> None: ...

    def on_reconnected(self, watch: PrefixWatch, seconds: float) -> None: ...


class WatchOutages:
    """The outages of the process's shared watches, told to whoever reports them for all (see :data:`OUTAGES`).

    A listener added while watches are down hears of each of them at once; a watch stopped while down is
    forgotten without an end (its waiters have left).
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._listeners: list[WatchOutageListener] = []
        self._down: dict[PrefixWatch, Exception] = {}

    def add(self, listener: WatchOutageListener) -> None:
        with self._lock:
            self._listeners.append(listener)
            for watch, error in list(self._down.items()):
                if watch.alive:
                    listener.on_outage(watch, error)

    def remove(self, listener: WatchOutageListener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def began(self, watch: PrefixWatch, error: Exception) -> None:
        with self._lock:
            self._down = {w: e for w, e in self._down.items() if w.alive}
            self._down[watch] = error
            for listener in list(self._listeners):
                listener.on_outage(watch, error)

    def ended(self, watch: PrefixWatch, seconds: float) -> None:
        with self._lock:
            self._down.pop(watch, None)
            for listener in list(self._listeners):
                listener.on_reconnected(watch, seconds)


#: The outages of every shared watch of this process.
OUTAGES = WatchOutages()


class _Relay:
    """Hands one shared watch's outages on to :data:`OUTAGES`, naming the watch."""

    __slots__ = ("watch",)

    def __init__(self, watch: PrefixWatch) -> None:
        self.watch = watch

    def on_outage(self, error: Exception) -> None:
        OUTAGES.began(self.watch, error)

    def on_reconnected(self, seconds: float) -> None:
        OUTAGES.ended(self.watch, seconds)


class WatchHub:
    """The shared watches of one store's runtime (:mod:`~aviso_workflows.runtime`), one per prefix.

    Joining and leaving happen under one lock: a waiter never joins a watch that its last subscriber
    is leaving (the leaving one is out of the registry before it stops).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: dict[tuple[Any, str], PrefixWatch] = {}

    def join(self, config: StoreConfig, prefix: str, subscriber: Subscriber, keys: Iterable[str] | None) -> PrefixWatch:
        """Subscribe to the shared watch on ``prefix``, started if there is none (or it ended)."""
        with self._lock:
            key = (config.identity, prefix)
            watch = self._watches.get(key)
            if watch is None or not watch.alive:
                watch = self._watches[key] = PrefixWatch(config, prefix)
                watch.start()
            watch.add(subscriber, keys)
            return watch

    def leave(self, config: StoreConfig, prefix: str, subscriber: Subscriber) -> PrefixWatch | None:
        """Unsubscribe; returns the watch if its last subscriber left (out of the registry: stop it)."""
        with self._lock:
            key = (config.identity, prefix)
            watch = self._watches.get(key)
            if watch is None or not watch.remove(subscriber):
                return None
            del self._watches[key]
            return watch

    def watches(self) -> list[PrefixWatch]:
        """The watches running now."""
        with self._lock:
            return list(self._watches.values())

    def close(self) -> list[PrefixWatch]:
        """Forget every watch (a join after this starts a new one); returns them, to be stopped."""
        with self._lock:
            watches, self._watches = list(self._watches.values()), {}
            return watches


__all__ = ["OUTAGES", "Channel", "HistorySource", "OutageListener", "PrefixWatch", "StoreError", "Subscriber",
           "WatchHub", "WatchLoop", "WatchOutageListener", "WatchOutages", "covering_prefix", "one_line"]
