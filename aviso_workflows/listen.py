"""Waiting and listening: read what exists, then follow one shared etcd watch per prefix.

Every waiter first registers with the process's watch on its prefix, then reads the keys that exist.
Anything written before the read is in the read; anything written after the registration comes
through the watch; duplicates are dropped by key. A broken watch resumes from the last revision it
delivered; a compacted one makes every waiter read again, so nothing is missed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .config import StoreConfig, state_dir
from .errors import (
    HistoryCompacted,
    NotForwarded,
    PermissionDenied,
    StoreError,
    StoreUnavailable,
    ValidationError,
    WaitTimeout,
)
from .etcd import EtcdGateway, KeyValue, WatchIdle
from .request import Request
from .store import DATE_FORMAT, Notification, Store, notification_from_kv

log = logging.getLogger(__name__)
#: Sorts after every key: a position with it has passed the whole revision.
END_OF_REVISION = "\U0010ffff"
RETRY_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
IDLE_TIMEOUT = 30.0


class Subscriber(Protocol):
    """Receives the puts of a shared watch (called on the watch's thread: must be quick)."""

    def on_puts(self, puts: list[KeyValue], revision: int) -> None: ...

    def on_resync(self) -> None: ...

    def on_failure(self, error: Exception) -> None: ...


class PrefixWatch:
    """One etcd watch on one prefix for the whole process, fanned out to its subscribers.

    Subscribers interested in known keys are found through a key index; the others (wildcard
    listeners) see every put of the prefix.
    """

    def __init__(self, config: StoreConfig, prefix: str) -> None:
        self.config = config
        self.prefix = prefix
        self.gateway = EtcdGateway(config)
        self._lock = threading.Lock()
        self._by_key: dict[str, set[Subscriber]] = {}
        self._everything: set[Subscriber] = set()
        self._keys_of: dict[Subscriber, tuple[str, ...] | None] = {}
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._stream: Any = None
        self._error: Exception | None = None
        self._failures = 0  # connection attempts failed in a row; the first one was reported
        self.next_revision = 0
        self._resync_pending = False  # history was compacted past: subscribers read again once restarted
        self.connections_opened = 0
        #: True once a proxy refused the watch: the prefix is read every ``poll_interval`` seconds instead.
        self.polling = False
        self._signed_in_again = False
        self._thread = threading.Thread(target=self._run, name=f"aviso-watch {prefix}", daemon=True)
        self._thread.start()

    @property
    def subscriber_count(self) -> int:
        """How many subscribers share this watch."""
        with self._lock:
            return len(self._keys_of)

    @property
    def ready(self) -> bool:
        """True once the watch knows the revision it follows from (or failed: see :meth:`wait_ready`)."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float) -> None:
        """Block until the watch knows the revision it follows from (bounded)."""
        if not self._ready.wait(timeout):
            raise StoreUnavailable(f"cannot reach etcd at {', '.join(self.config.endpoints)} to watch {self.prefix}")
        if self._error is not None:
            raise self._error

    def add(self, subscriber: Subscriber, keys: Iterable[str] | None) -> None:
        """Deliver puts of ``keys`` (or of every key when None) to ``subscriber`` from now on."""
        wanted = tuple(keys) if keys is not None else None
        with self._lock:
            self._keys_of[subscriber] = wanted
            if wanted is None:
                self._everything.add(subscriber)
            else:
                for key in wanted:
                    self._by_key.setdefault(key, set()).add(subscriber)

    def remove(self, subscriber: Subscriber) -> bool:
        """Stop delivering to ``subscriber``; True when nobody is left."""
        with self._lock:
            if subscriber not in self._keys_of:
                return False
            wanted = self._keys_of.pop(subscriber, None)
            self._everything.discard(subscriber)
            for key in wanted or ():
                group = self._by_key.get(key)
                if group is not None:
                    group.discard(subscriber)
                    if not group:
                        del self._by_key[key]
            return not self._keys_of

    def stop(self) -> None:
        """End the watch and its thread."""
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.next_revision:
                    self.next_revision = self._start_revision()
                if self._resync_pending:  # after the watch's new start is known: nothing falls between
                    self._resync_pending = False
                    self._resync_all()
                self._follow()
            except HistoryCompacted:
                log.warning("watch on %s: history compacted past revision %s; reading again", self.prefix,
                            self.next_revision)
                self.next_revision = 0
                self._resync_pending = True
            except PermissionDenied as error:
                if self._may_sign_in_again(error):
                    continue
                self._fail_all(type(error)(f"{error}; watching {self.prefix}"))
                return
            except Exception as error:  # noqa: BLE001 - any transport failure: reconnect after a pause
                if self._stop.is_set():
                    return
                self._interrupted(error)

    def _interrupted(self, error: Exception) -> None:
        """One warning per outage (an idle stream is routine: debug only), then a growing pause."""
        if isinstance(error, WatchIdle) and not self._failures:
            log.debug("watch on %s idle (%s); reconnecting", self.prefix, _one_line(error))
            return
        if not self._failures:
            log.warning("watch on %s interrupted (%s); reconnecting from revision %s", self.prefix,
                        _one_line(error), self.next_revision)
        else:
            log.debug("watch on %s still interrupted (%s)", self.prefix, _one_line(error))
        self._stop.wait(RETRY_DELAYS[min(self._failures, len(RETRY_DELAYS) - 1)])
        self._failures += 1

    def _connected(self) -> None:
        """The stream works: report the end of an outage once, and start the next one's pauses afresh."""
        if self._failures:
            log.info("watch on %s resumed at revision %s", self.prefix, self.next_revision)
            self._failures = 0

    def _start_revision(self) -> int:
        try:
            revision = self.gateway.current_revision() + 1
        except StoreError as error:
            if not self._ready.is_set():  # nobody is waiting yet: report to the subscribers and end
                self._fail_all(error)
                self._stop.set()
            raise
        self._ready.set()
        return revision

    @property
    def alive(self) -> bool:
        """False once the watch ended for good (stopped, or unable to start)."""
        return self._thread.is_alive() and not self._stop.is_set()

    def _may_sign_in_again(self, error: PermissionDenied) -> bool:
        """etcd refuses a watch whose token it no longer knows (expired, or signed before a restart) as
        "permission denied": sign in again once; a second refusal in a row is a real one.
        """
        if not self.config.username or self._signed_in_again or isinstance(error, NotForwarded):
            return False
        self._signed_in_again = True
        self.gateway.forget_token()
        return True

    def _follow(self) -> None:
        if self.polling:
            self._poll()
            return
        try:
            self._stream = self.gateway.watch(self.prefix, self.next_revision, idle_timeout=IDLE_TIMEOUT)
        except NotForwarded as error:
            log.info("watch on %s refused (%s); reading it every %g s instead", self.prefix, _one_line(error),
                     self.config.poll_interval)
            self.polling = True
            return
        self.connections_opened += 1
        try:
            if self._stop.is_set():  # stop() ran before the stream existed and could not close it
                return
            for batch in self._stream:
                self._connected()
                if batch.puts:
                    self._deliver(batch.puts, batch.revision)
                    self.next_revision = max(self.next_revision, batch.puts[-1].mod_revision + 1)
                if self._stop.is_set():
                    return
        finally:
            self._signed_in_again = self._signed_in_again and not self._stream.created
            self._stream.close()
            self._stream = None

    def _poll(self) -> None:
        """Read the puts since ``next_revision`` every ``poll_interval`` seconds and deliver them as the
        watch would, until stopped (for proxies that forward only ``kv/range``).
        """
        while not self._stop.is_set():
            revision, puts = self.gateway.range_all(self.prefix, min_mod_revision=self.next_revision)
            self._connected()
            if puts:
                self._deliver(puts, revision)
            self.next_revision = max(self.next_revision, revision + 1)
            self._stop.wait(self.config.poll_interval)

    def _deliver(self, puts: list[KeyValue], revision: int) -> None:
        puts = sorted(puts, key=lambda kv: (kv.mod_revision, kv.key))
        with self._lock:
            targets: dict[Subscriber, list[KeyValue]] = {s: list(puts) for s in self._everything}
            for kv in puts:
                for subscriber in self._by_key.get(kv.key, ()):
                    targets.setdefault(subscriber, []).append(kv)
        for subscriber, kvs in targets.items():
            subscriber.on_puts(kvs, revision)

    def _resync_all(self) -> None:
        with self._lock:
            subscribers = list(self._keys_of)
        for subscriber in subscribers:
            subscriber.on_resync()

    def _fail_all(self, error: Exception) -> None:
        self._error = error
        self._ready.set()
        with self._lock:
            subscribers = list(self._keys_of)
        for subscriber in subscribers:
            subscriber.on_failure(error)


class WatchHub:
    """The process-wide registry of shared watches, one per (store identity, prefix)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: dict[tuple[Any, str], PrefixWatch] = {}

    def watch_for(self, config: StoreConfig, prefix: str) -> PrefixWatch:
        """The shared watch on ``prefix`` (started on first use)."""
        with self._lock:
            key = (config.identity, prefix)
            watch = self._watches.get(key)
            if watch is None or not watch.alive:
                watch = self._watches[key] = PrefixWatch(config, prefix)
            return watch

    def release(self, config: StoreConfig, prefix: str, subscriber: Subscriber) -> None:
        """Unsubscribe; the watch stops when its last subscriber leaves."""
        watch = self.detach(config, prefix, subscriber)
        if watch is not None:
            watch.stop()

    def detach(self, config: StoreConfig, prefix: str, subscriber: Subscriber) -> PrefixWatch | None:
        """Unsubscribe without waiting; returns the watch if its last subscriber left (the caller stops it)."""
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


HUB = WatchHub()


def _join(store: Store, prefix: str, subscriber: Subscriber, keys: list[str] | None,
          timeout: float | None) -> tuple[PrefixWatch, float]:
    """Add ``subscriber`` to the shared watch on ``prefix``; returns the watch and how long to wait for it.

    etcd gets its usual request timeout to answer even when the wait's own timeout is shorter: a slow
    first answer makes a short wait time out (WaitTimeout), not report etcd unreachable.
    """
    watch = HUB.watch_for(store.config, prefix)
    watch.add(subscriber, keys)
    return watch, store.config.timeout if timeout is None else max(timeout, store.config.timeout)


@contextmanager
def subscribed(store: Store, prefixes: Iterable[str], subscriber: Subscriber, keys: Iterable[str] | None,
               timeout: float | None = None) -> Iterator[None]:
    """Subscribe to the shared watch of each prefix for the block's duration (ready when entered)."""
    key_list = list(keys) if keys is not None else None
    joined: list[str] = []
    try:
        for prefix in dict.fromkeys(prefixes):
            watch, limit = _join(store, prefix, subscriber, key_list, timeout)
            joined.append(prefix)
            watch.wait_ready(limit)
        yield
    finally:
        for prefix in joined:
            HUB.release(store.config, prefix, subscriber)


@asynccontextmanager
async def subscribed_async(store: Store, prefixes: Iterable[str], subscriber: Subscriber, keys: Iterable[str] | None,
                           timeout: float | None = None) -> AsyncIterator[None]:
    """The asyncio form of :func:`subscribed`: joining or leaving a running watch takes no thread, so
    thousands of waiters start and end in a moment; only a watch's start and stop are waited for in one.
    """
    key_list = list(keys) if keys is not None else None
    joined: list[str] = []
    try:
        for prefix in dict.fromkeys(prefixes):
            watch, limit = _join(store, prefix, subscriber, key_list, timeout)
            joined.append(prefix)
            if watch.ready:
                watch.wait_ready(limit)  # returns at once, or raises why the watch could not start
            else:
                await asyncio.to_thread(watch.wait_ready, limit)
        yield
    finally:
        for prefix in joined:
            ended = HUB.detach(store.config, prefix, subscriber)
            if ended is not None:
                await asyncio.to_thread(ended.stop)


#: The threads reading the store for asyncio waiters: few, so their keep-alive connections to etcd are few.
_READERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="aviso-read")


class _ReadBatch:
    """The first reads of the asyncio waiters of one loop and store, gathered into shared transactions.

    A waiter's read joins the batch being gathered; one worker thread reads a whole batch while the
    next one gathers, so a thousand triggers starting together cost a few transactions, not a
    thousand requests.
    """

    _batches: dict[tuple[asyncio.AbstractEventLoop, Any], _ReadBatch] = {}
    _lock = threading.Lock()

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.loop = loop
        self.pending: list[tuple[Request, asyncio.Future[tuple[int, list[Notification]]]]] = []
        self.draining: asyncio.Task[None] | None = None

    @classmethod
    async def read(cls, store: Store, request: Request) -> tuple[int, list[Notification]]:
        """What :meth:`Store.read` returns for ``request``, read together with the other waiters' requests."""
        loop = asyncio.get_running_loop()
        with cls._lock:
            for stale in [key for key in cls._batches if key[0].is_closed()]:
                del cls._batches[stale]
            batch = cls._batches.setdefault((loop, (store.config.identity, store.config.max_txn_ops)),
                                            cls(store, loop))
        future: asyncio.Future[tuple[int, list[Notification]]] = loop.create_future()
        batch.pending.append((request, future))
        if batch.draining is None or batch.draining.done():
            batch.draining = loop.create_task(batch._drain())
        return await future

    async def _drain(self) -> None:
        while self.pending:
            taken, self.pending = self.pending, []
            try:
                answers = await self.loop.run_in_executor(_READERS, self.store.read_many, [r for r, _ in taken])
            except Exception as error:  # noqa: BLE001 - every waiter of the batch gets the read's error
                for _, future in taken:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), answer in zip(taken, answers):
                if not future.done():
                    future.set_result(answer)


def status_prefixes(requests: Iterable[Request]) -> list[str]:
    """The status prefixes (one shared watch each) that the requests' keys live under."""
    return list(dict.fromkeys(p for request in requests for p in request.status_keys()))


class _Inbox:
    """A subscriber that queues what the watch delivers for a waiting thread."""

    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[str, Any]] = queue.Queue()

    def on_puts(self, puts: list[KeyValue], revision: int) -> None:
        self.queue.put(("puts", puts))

    def on_resync(self) -> None:
        self.queue.put(("resync", None))

    def on_failure(self, error: Exception) -> None:
        self.queue.put(("failure", error))


class _Found:
    """What a wait has found so far, and whether that releases it."""

    def __init__(self, request: Request, mode: str, known: Iterable[Notification],
                 on_progress: Callable[[int, int, Notification], None] | None) -> None:
        if mode not in ("all", "any"):
            raise ValidationError("mode", mode, "expected 'all' or 'any'")
        if mode == "all":
            request.require_complete("waiting for all keys")
        self.request = request
        self.mode = mode
        self.wanted = request.keys() if request.is_complete else None
        self.total = len(self.wanted) if self.wanted is not None else 1
        self.on_progress = on_progress
        self.found: dict[str, Notification] = {n.key: n for n in known}

    def add(self, notifications: Iterable[Notification]) -> bool:
        """Count new notifications; True when the wait is released."""
        for notification in notifications:
            if notification.key not in self.found:
                self.found[notification.key] = notification
                if self.on_progress is not None:
                    self.on_progress(len(self.found), self.total, notification)
        return len(self.found) >= self.total if self.mode == "all" else bool(self.found)

    def add_puts(self, puts: list[KeyValue]) -> bool:
        """Count the puts a watch delivered."""
        return self.add(_matching(self.request, puts))

    def ordered(self) -> list[Notification]:
        """Found notifications by revision, then in the request's order."""
        place = {key: index for index, key in enumerate(self.wanted or ())}
        return sorted(self.found.values(), key=lambda n: (n.revision, place.get(n.key, 0), n.key))

    def timed_out(self, timeout: float | None) -> WaitTimeout:
        """The error of a wait that ran out of time."""
        return WaitTimeout(f"timed out after {timeout:g} s with {len(self.found)}/{self.total} available for "
                           f"{self.request}", self.ordered())


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def wait(store: Store, request: Request, *, mode: str = "all", timeout: float | None = None,
         known: Iterable[Notification] = (),
         on_progress: Callable[[int, int, Notification], None] | None = None) -> list[Notification]:
    """Block until every key of ``request`` exists (``mode="any"``: at least one matching key).

    Returns the notifications found, by revision. Keys already posted are found at once; the rest
    within milliseconds of their post. Raises WaitTimeout (with ``found``) after ``timeout`` seconds.
    ``known`` notifications (found earlier) count as found already.
    """
    found = _Found(request, mode, known, on_progress)
    inbox = _Inbox()
    deadline = None if timeout is None else time.monotonic() + timeout
    with subscribed(store, request.status_keys(), inbox, found.wanted, timeout):
        released = found.add(store.read(request)[1])
        while not released:
            remaining = _remaining(deadline)
            if remaining is not None and remaining <= 0:
                raise found.timed_out(timeout)
            try:
                kind, payload = inbox.queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if kind == "failure":
                raise payload
            released = found.add(store.read(request)[1]) if kind == "resync" else found.add_puts(payload)
    return found.ordered()


class _AsyncInbox:
    """A subscriber that hands what the watch delivers to an asyncio loop (no thread per waiter)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def _put(self, item: tuple[str, Any]) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the waiter is gone
            pass

    def on_puts(self, puts: list[KeyValue], revision: int) -> None:
        self._put(("puts", puts))

    def on_resync(self) -> None:
        self._put(("resync", None))

    def on_failure(self, error: Exception) -> None:
        self._put(("failure", error))


async def wait_async(store: Store, request: Request, *, mode: str = "all", timeout: float | None = None,
                     known: Iterable[Notification] = (),
                     on_progress: Callable[[int, int, Notification], None] | None = None) -> list[Notification]:
    """The asyncio form of :func:`wait`, for triggers: the shared watch feeds an asyncio queue, and
    the reads of waiters starting together share transactions in a worker thread, so thousands of
    waiters need no thread of their own and open no connection of their own.
    """
    found = _Found(request, mode, known, on_progress)
    inbox = _AsyncInbox(asyncio.get_running_loop())
    deadline = None if timeout is None else time.monotonic() + timeout
    async with subscribed_async(store, request.status_keys(), inbox, found.wanted, timeout):
        released = found.add((await _ReadBatch.read(store, request))[1])
        while not released:
            remaining = _remaining(deadline)
            if remaining is not None and remaining <= 0:
                raise found.timed_out(timeout)
            try:
                kind, payload = await asyncio.wait_for(inbox.queue.get(), remaining)
            except TimeoutError:
                continue
            if kind == "failure":
                raise payload
            if kind == "resync":
                released = found.add((await _ReadBatch.read(store, request))[1])
            else:
                released = found.add_puts(payload)
    return found.ordered()


def _matching(request: Request, puts: list[KeyValue]) -> list[Notification]:
    return [n for n in (notification_from_kv(request, kv) for kv in puts) if n is not None]


# -- cursors -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Position:
    """A place in the store's history: after this revision and, within it, after this key.

    Without a key, the whole revision is passed (``Position(store.current_revision())`` means "now").
    """

    revision: int
    key: str = END_OF_REVISION

    def is_after(self, notification: Notification) -> bool:
        """True when ``notification`` was already passed."""
        return notification.order <= (self.revision, self.key)


class Cursor:
    """A named, durable position of a listener (a small JSON file, replaced atomically)."""

    def __init__(self, name: str, directory: Path | None = None) -> None:
        if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
            raise ValidationError("cursor", name, "cursor names are letters, digits, '-', '_' and '.'")
        self.name = name
        self.path = (directory or state_dir() / "cursors") / f"{name}.json"

    def load(self) -> Position | None:
        """The saved position, or None if this cursor never moved."""
        try:
            data = json.loads(self.path.read_text())
            return Position(int(data["revision"]), str(data.get("key", END_OF_REVISION)))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError) as error:
            raise ValidationError("cursor", str(self.path), f"unreadable cursor file ({error})") from None

    def save(self, position: Position) -> None:
        """Remember ``position`` durably."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
        data = {"revision": position.revision, "key": position.key,
                "updated": dt.datetime.now(dt.UTC).strftime(DATE_FORMAT)}
        with open(temporary, "w") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)


def listen(store: Store, requests: list[Request], *, after: Position | None = None, cursor: Cursor | None = None,
           stop: threading.Event | None = None, poll: float = 0.2,
           until_revision: int | None = None) -> Iterator[Notification]:
    """Yield matching notifications in the order they were written, until ``stop`` is set.

    Starts after ``after`` (or the cursor's saved position, or now). With ``cursor``, the position is
    saved when the consumer asks for the next notification, i.e. after it handled the previous one.
    ``until_revision`` ends the listen once the store's history reaches it.
    """
    if not requests:
        raise ValidationError("request", [], "at least one request is needed to listen")
    stop = stop or threading.Event()
    start = after or (cursor.load() if cursor else None)
    inbox = _Inbox()
    with subscribed(store, status_prefixes(requests), inbox, None):
        position = start or Position(store.current_revision())
        read_revision, backlog = _catch_up(store, requests, position)
        for notification in backlog:
            if stop.is_set():
                return
            yield notification
            position = _advance(cursor, notification)
        if until_revision is not None and read_revision >= until_revision:
            return
        seen_until = read_revision
        while not stop.is_set():
            try:
                kind, payload = inbox.queue.get(timeout=poll)
            except queue.Empty:
                continue
            if kind == "failure":
                raise payload
            if kind == "resync":
                seen_until, news = _catch_up(store, requests, position)
            else:
                news = _fresh(store, requests, payload, seen_until)
            for notification in news:
                if stop.is_set():
                    return
                if not position.is_after(notification):
                    yield notification
                    position = _advance(cursor, notification)
            if until_revision is not None and news and news[-1].revision >= until_revision:
                return


async def listen_async(store: Store, requests: list[Request], *,
                       after: Position | None = None) -> AsyncGenerator[Notification, None]:
    """The asyncio form of :func:`listen` for event triggers: yields matching notifications in write
    order, starting after ``after`` (or now). Blocking reads run in worker threads; the process's
    shared watches feed an asyncio queue. The caller keeps its own durable position.
    """
    if not requests:
        raise ValidationError("request", [], "at least one request is needed to listen")
    inbox = _AsyncInbox(asyncio.get_running_loop())
    entered = subscribed(store, status_prefixes(requests), inbox, None)
    await asyncio.to_thread(entered.__enter__)
    try:
        position = after or Position(await asyncio.to_thread(store.current_revision))
        seen_until, news = await asyncio.to_thread(_catch_up, store, requests, position)
        while True:
            for notification in news:
                if not position.is_after(notification):
                    yield notification
                    position = Position(notification.revision, notification.key)
            kind, payload = await inbox.queue.get()
            if kind == "failure":
                raise payload
            if kind == "resync":
                seen_until, news = await asyncio.to_thread(_catch_up, store, requests, position)
            else:
                news = _fresh(store, requests, payload, seen_until)
    finally:
        await asyncio.to_thread(entered.__exit__, None, None, None)


def _advance(cursor: Cursor | None, notification: Notification) -> Position:
    position = Position(notification.revision, notification.key)
    if cursor is not None:
        cursor.save(position)
    return position


def _catch_up(store: Store, requests: list[Request], position: Position) -> tuple[int, list[Notification]]:
    revision, found = 0, list[Notification]()
    for request in requests:
        read_revision, notifications = store.read(request, min_revision=position.revision)
        revision = min(revision or read_revision, read_revision)
        found.extend(n for n in notifications
                     if not position.is_after(n) and not 0 < _repeated_revision(store, n) <= position.revision)
    return revision, sorted({n.key: n for n in found}.values(), key=lambda n: n.order)


def _fresh(store: Store, requests: list[Request], puts: list[KeyValue], seen_until: int) -> list[Notification]:
    """The notifications of watched puts not read already, without repeats of a key's previous post."""
    previous = {(kv.mod_revision, kv.key): (kv.prev_value, kv.prev_mod_revision) for kv in puts}
    return [n for n in _match_all(requests, puts)
            if n.revision > seen_until and not _repeated_revision(store, n, previous.get(n.order))]


def _repeated_revision(store: Store, notification: Notification, previous: tuple[str | None, int] | None = None) -> int:
    """The revision of the post that ``notification`` repeats, else 0.

    A repeat writes a key's previous value again within ``dedupe_window`` revisions (a notify retried
    after a timeout, a producer run twice). ``previous`` is the value and revision a watch reported;
    without it the previous version is read (compacted history: not a repeat, delivered again).
    """
    window = store.config.dedupe_window
    if not window or notification.version <= 1:
        return 0
    prev_value, prev_revision = previous if previous and previous[0] is not None else _previous_version(
        store, notification)
    if prev_value != notification.value or not 0 < notification.revision - prev_revision <= window:
        return 0
    return prev_revision


def _previous_version(store: Store, notification: Notification) -> tuple[str | None, int]:
    try:
        _, kv = store.gateway.get(notification.key, revision=notification.revision - 1)
    except HistoryCompacted:
        return None, 0
    return (kv.value, kv.mod_revision) if kv is not None else (None, 0)


def _match_all(requests: list[Request], puts: list[KeyValue]) -> list[Notification]:
    """The notifications of ``puts`` that any request matches, once each (a key written twice in one
    batch is two notifications)."""
    found: dict[tuple[int, str], Notification] = {}
    for request in requests:
        for notification in _matching(request, puts):
            found.setdefault(notification.order, notification)
    return sorted(found.values(), key=lambda n: n.order)


# -- replay over the status-key chain ------------------------------------------------------------
def revision_window(store: Store, status_key: str, start: dt.datetime,
                    end: dt.datetime | None = None) -> tuple[int, int] | None:
    """Revisions of the first and last notification posted in [start, end) under ``status_key``.

    Walks the status chain back from the newest status (``prev_rev``, skipping whole days through
    ``last_prev_day_rev``); stops at compacted history. None when nothing was posted in the window.
    """
    revision, status = store.gateway.get(status_key)
    first = last = 0
    steps = 0
    while status is not None and steps < 10_000_000:
        steps += 1
        info = _status_info(status)
        if info is None:
            break
        when, previous, previous_day = info
        if end is None or when < end:
            if when < start:
                break
            last = last or status.mod_revision
            first = status.mod_revision
        skip_day = previous_day and end is not None and when.date() > end.date()
        target = previous_day if skip_day else previous
        if not target:
            break
        try:
            _, status = store.gateway.get(status_key, revision=target)
        except HistoryCompacted:
            log.warning("replay of %s: history before revision %s is compacted", status_key, target)
            break
    return (first, last) if first else None


def _status_info(status: KeyValue) -> tuple[dt.datetime, int, int] | None:
    try:
        data = json.loads(status.value)
        when = dt.datetime.strptime(data["date_time"], DATE_FORMAT)
    except (ValueError, KeyError, TypeError):
        return None
    return when, int(data.get("prev_rev") or 0), int(data.get("last_prev_day_rev") or 0)


def replay(store: Store, requests: list[Request], start: dt.datetime,
           end: dt.datetime | None = None) -> list[Notification]:
    """Notifications posted between ``start`` and ``end`` (UTC, naive), found through the status chain."""
    found: dict[str, Notification] = {}
    for request in requests:
        for status_key in request.status_keys():
            window = revision_window(store, status_key, start, end)
            if window is None:
                continue
            _, kvs = store.gateway.range_all(status_key, min_mod_revision=window[0], max_mod_revision=window[1])
            for notification in _matching(request, kvs):
                found.setdefault(notification.key, notification)
    return sorted(found.values(), key=lambda n: n.order)


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


__all__ = ["wait", "wait_async", "listen", "listen_async", "replay", "Cursor", "Position", "HUB",
           "PrefixWatch", "StoreError"]
