"""The follower: one state that turns what was read or watched into notifications, in write order.

It does no I/O. Drivers feed it what a source produced — the puts of a watch (history, in write order),
a snapshot (the store's state at one pinned revision), a progress report, or word that history was
compacted — and take notifications out with :meth:`Follower.pop`. The same follower serves waits,
listeners, asset watchers, the ecFlow bridge and replays, whatever the source (an etcd watch, reads
of a proxy that forwards only ranges, or any other stream of notifications in order).

Three places in history matter:

- ``frontier``: everything up to it has been fed (and its notifications queued or dropped as not
  matching); anything fed again up to it is ignored, so overlapping sources are harmless.
- ``position``: everything up to it has been handled by the consumer; this is what a cursor saves.
- ``until``: a finite follow (a replay) ends once the frontier reaches it.

Memory is bounded: at most ``capacity`` notifications wait in the queue. The rest of a feed that
does not fit is held as it came (it is in memory already) and taken in as the consumer takes
notifications; meanwhile the driver reads nothing more, so its source waits. So a listener holds
``capacity`` notifications and one or two answers of etcd at most. Nothing is lost, nothing piles up.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import StoreUnavailable, TlsRefused, ValidationError, WaitTimeout
from .notification import Notification, in_order, notification_from_kv
from .position import END_OF_REVISION, Position, StoredKey, place
from .request import Request, ready_prefix

log = logging.getLogger(__name__)
#: The most notifications one listener holds before it stops reading and reads again later.
DEFAULT_CAPACITY = 10_000


class FeedKind(enum.StrEnum):
    """What a feed says (a text enum: a kind compares equal to its name, as written in logs and tests)."""

    #: Puts of history in write order, complete through the feed's revision (a watch's answer).
    EVENTS = "events"
    #: The keys modified after a revision, as held at the feed's revision (a read, a poll).
    SNAPSHOT = "snapshot"
    #: Nothing more happened up to the feed's revision.
    PROGRESS = "progress"
    #: History before the feed's revision is gone; a snapshot at it follows.
    COMPACTED = "compacted"
    #: The store numbers from the start again; what follows is fed from there.
    RESTARTED = "restarted"
    #: The source ended for good: ``error`` says why.
    FAILURE = "failure"
    #: The source missed changes (compacted, or its reader fell too far behind): read what exists again.
    RESYNC = "resync"


#: The keys a source hands on: its own type, which the follower reads as a StoredKey.
KV = TypeVar("KV", bound=StoredKey)


@dataclass(frozen=True, init=False)
class Feed(Generic[KV]):
    """What a source produced (see :class:`FeedKind`): ``puts`` are keys as the store holds them (any
    :class:`~aviso_workflows.position.StoredKey`: etcd's key-values, an aviso-server's notifications)."""

    kind: FeedKind
    revision: int
    puts: Sequence[KV] = ()
    #: For ``failure``: why the source ended.
    error: Exception | None = None

    def __init__(self, kind: FeedKind | str, revision: int, puts: Sequence[KV] = (),
                 error: Exception | None = None) -> None:
        # A kind given by its name is taken too (and an unknown name is refused here, where it is made).
        object.__setattr__(self, "kind", kind if type(kind) is FeedKind else FeedKind(kind))
        object.__setattr__(self, "revision", revision)
        object.__setattr__(self, "puts", puts)
        object.__setattr__(self, "error", error)


class Follower:
    """The state of one follow: requests, frontier, position and the queue between them."""

    def __init__(self, requests: Sequence[Request], start: Position, *, capacity: int | None = DEFAULT_CAPACITY,
                 until: int | None = None, label: str = "listener") -> None:
        self.requests = list(requests)
        self.frontier = start
        self.position = start
        self.capacity = capacity
        self.until = until
        self.label = label
        #: The rest of a feed that did not fit in the queue, and the revision it was complete through.
        self._held: tuple[Sequence[StoredKey | Notification], int] | None = None
        self._pending: deque[Notification] = deque()
        self._in_hand = False
        for request in self.requests:  # refused here if a request lacks the fields that say where it is stored
            _ = request.status_prefixes

    # -- what sources feed ---------------------------------------------------------------------
    def feed(self, feed: Feed[StoredKey]) -> None:
        """Take in one feed of the current source."""
        kind = feed.kind
        if kind is FeedKind.EVENTS or kind is FeedKind.SNAPSHOT:
            self.on_events(feed.puts, feed.revision)
        elif kind is FeedKind.PROGRESS:
            self.on_progress(feed.revision)
        elif kind is FeedKind.COMPACTED:
            self.on_compacted(feed.revision)
        elif kind is FeedKind.RESTARTED:
            self.on_restarted()
        elif kind is FeedKind.FAILURE and feed.error is not None:
            raise feed.error
        else:
            raise ValueError(f"unknown feed kind {kind!r}")

    def on_events(self, puts: Iterable[StoredKey], revision: int) -> None:
        """Puts of history in write order, complete through ``revision`` (a watch's answer); or, the same
        for the follower, a snapshot: the keys as held at ``revision`` (only each key's latest post)."""
        self._take(_by_place(puts), revision)

    on_snapshot = on_events

    def on_found(self, notifications: Iterable[Notification], revision: int) -> None:
        """A snapshot at ``revision`` already matched against the requests (a wait's first read)."""
        self._take(in_order(list(notifications)), revision)

    def on_progress(self, revision: int) -> None:
        """Nothing more happened up to ``revision``: quiet followers move on with the store."""
        if self._held is None and revision > self.frontier.revision:
            self.frontier = Position(revision)
            self._settle()

    def on_compacted(self, revision: int) -> None:
        """History between the frontier and ``revision`` is gone: say so once; a snapshot at it follows."""
        log.warning("%s: history from revision %d to %d was compacted; posts in it that were overwritten "
                    "are not delivered, only the latest post of each key (the state at revision %d)",
                    self.label, self.frontier.resume_revision, revision, revision)

    def on_restarted(self) -> None:
        """The store's sequence started again (an aviso-server restarted, a stream purged): what follows is
        fed from its start, so the frontier (and, once nothing is queued, the position) goes back to it."""
        self.frontier = Position(0)
        if not self._pending and not self._in_hand and self._held is None:
            self.position = Position(0)

    # -- what the consumer takes -----------------------------------------------------------------
    def pop(self) -> Notification | None:
        """The next notification, or None if none is queued (then feed the follower more); call
        :meth:`handled` when done with it."""
        if not self._pending and self._held is not None:
            held, self._held = self._held, None
            self._take(*held)
        if not self._pending:
            return None
        self._in_hand = True
        return self._pending.popleft()

    def handled(self, notification: Notification) -> None:
        """The consumer is done with ``notification``: the position moves past it."""
        self._in_hand = False
        self.position = Position(notification.revision, notification.key)
        self._settle()

    def drain(self) -> list[Notification]:
        """Every queued notification, taken and handled at once (waits keep no position of their own)."""
        taken = list(self._pending)
        self._pending.clear()
        self._settle()
        return taken

    @property
    def pending(self) -> int:
        """Notifications queued and not taken yet."""
        return len(self._pending)

    @property
    def finished(self) -> bool:
        """A finite follow has delivered everything up to ``until``."""
        until = self.until
        done = not self._pending and self._held is None
        return until is not None and done and self.frontier.order >= place(until, END_OF_REVISION)

    # -- inside ----------------------------------------------------------------------------------
    def _take(self, items: Sequence[StoredKey | Notification], through: int) -> None:
        """Queue the notifications of ``items`` (in history order) past the frontier; then the frontier
        is ``through``. If the queue fills up, the rest is held, and the frontier is the last one kept."""
        frontier = self.frontier
        # places are compared by revision first: a key's own order is looked at only within the frontier's revision
        last_revision, last_key, frontier_order = frontier.revision, frontier.key, None
        taken = False
        for index, item in enumerate(items):
            revision = item.revision if isinstance(item, Notification) else item.mod_revision
            if revision <= last_revision:
                if revision < last_revision:
                    continue
                if frontier_order is None:
                    frontier_order = place(last_revision, last_key)
                if place(revision, item.key) <= frontier_order:
                    continue
            if self.until is not None and revision > self.until:
                break
            notification = item if isinstance(item, Notification) else self._match(item)
            if notification is None:
                continue
            if self.capacity is not None and len(self._pending) >= self.capacity:
                self._held = (items[index:], through)
                if taken:
                    self.frontier = Position(last_revision, last_key)
                return
            self._pending.append(notification)
            last_revision, last_key, frontier_order, taken = revision, item.key, None, True
        if taken or through > frontier.revision or frontier.key != END_OF_REVISION:
            self.frontier = Position(max(through, last_revision))
        self._settle()

    def _match(self, kv: StoredKey) -> Notification | None:
        for request in self.requests:
            prefixes = request.status_prefixes
            if kv.key.startswith(prefixes) and kv.key not in prefixes:
                notification = notification_from_kv(request, kv)
                if notification is not None:
                    return notification
        return None

    def _settle(self) -> None:
        """With nothing queued or in hand, the consumer has handled everything up to the frontier."""
        if self._pending or self._in_hand or self._held is not None:
            return
        position, frontier = self.position, self.frontier
        if position.revision < frontier.revision or (position.revision == frontier.revision
                                                     and position.order < frontier.order):
            self.position = frontier


def _by_place(kvs: Iterable[StoredKey]) -> Sequence[StoredKey]:
    if isinstance(kvs, Sequence) and len(kvs) < 2:  # a waiter's own key, most often: nothing to order
        return kvs
    return sorted(kvs, key=lambda kv: place(kv.mod_revision, kv.key))


# -- the wait state ----------------------------------------------------------------------------------
#: The longest a waiting thread blocks for its next feed before it looks at its deadline again.
LOOK_EVERY = 1.0
#: Pauses between attempts of a read that met an outage.
READ_RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0)
#: A bound on those attempts besides the wait's own timeout (about a month at the longest pause).
MAX_READ_ATTEMPTS = 1_300_000
#: The first and the longest pause of a driver that may not block while its feeds get ready (asyncio).
READY_PAUSES = (0.002, 0.1)


def one_line(error: BaseException) -> str:
    """The first line of an error's text, shortened: for log lines."""
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


@dataclass(frozen=True)
class Progress:
    """Where a wait stands once it found one more key.

    ``ready`` is the progress to show and to trigger on: the keys found in request order with none missing
    before them (:func:`~aviso_workflows.request.ready_prefix`), so with steps 0, 6, 12, 18 and 30 found
    it is 4, and it reaches 5 only once step 24 is found too. ``found`` is the plain count (5 there).
    ``newest`` is the notification just found; ``last_ready`` the one of the prefix's last key (None while
    the first key is missing). A wait for any key (or an open request) has no order: ``ready`` is ``found``.
    """

    found: int
    total: int
    ready: int
    newest: Notification
    last_ready: Notification | None


class Found:
    """What a wait has found so far, and whether that releases it."""

    def __init__(self, request: Request, mode: str, known: Iterable[Notification] = (),
                 on_progress: Callable[[Progress], None] | None = None) -> None:
        if mode not in ("all", "any"):
            raise ValidationError("mode", mode, "expected 'all' or 'any'")
        if mode == "all":
            request.require_complete("waiting for all keys")
        self.request = request
        self.mode = mode
        # a tuple of texts, which the garbage collector stops tracking (a list it walks for every waiting trigger)
        self.wanted = tuple(request.keys()) if request.is_complete else None
        self.total = len(self.wanted) if self.wanted is not None else 1
        self.on_progress = on_progress
        self.found: dict[str, Notification] = {n.key: n for n in known}
        self.ready = self._ready(0)

    def _ready(self, start: int) -> int:
        """The contiguous prefix of the wanted keys found so far (the plain count when there is no order)."""
        if self.mode != "all" or self.wanted is None:
            return len(self.found)
        return ready_prefix(self.wanted, self.found, start)

    def add(self, notifications: Iterable[Notification]) -> bool:
        """Count new notifications (in history order); True when the wait is released."""
        for notification in notifications:
            if notification.key not in self.found:
                self.found[notification.key] = notification
                self.ready = self._ready(self.ready)
                if self.on_progress is not None:
                    self.on_progress(self.progress(notification))
        return len(self.found) >= self.total if self.mode == "all" else bool(self.found)

    def progress(self, newest: Notification) -> Progress:
        """Where the wait stands, ``newest`` just found."""
        last_ready = None
        if self.ready:
            last_ready = self.found[self.wanted[self.ready - 1]] if self.wanted is not None and self.mode == "all" \
                else newest
        return Progress(len(self.found), self.total, self.ready, newest, last_ready)

    def ordered(self) -> list[Notification]:
        """Found notifications in history order."""
        if len(self.found) < 2:
            return list(self.found.values())
        return sorted(self.found.values(), key=lambda n: n.order)

    def timed_out(self, timeout: float | None, outage: Exception | None = None) -> WaitTimeout:
        """The error of a wait that ran out of time (``outage``: why the store could not be read meanwhile)."""
        why = f"; the store could not be read: {one_line(outage)}" if outage is not None else ""
        return WaitTimeout(f"timed out after {timeout:g} s with {len(self.found)}/{self.total} available for "
                           f"{self.request}{why}", self.ordered())


# What a wait's driver is told to do next (each answered with the event of the same line below).
@dataclass(frozen=True)
class AwaitReady:
    """Ask the feeds whether they know their start, blocking at most ``timeout`` s: answer :class:`Readied`."""

    timeout: float


@dataclass(frozen=True)
class ReadState:
    """Read what exists for the request, modified at or after ``min_revision``: answer :class:`ReadDone`, or
    :class:`ReadFailed` if the store could not be read."""

    min_revision: int


@dataclass(frozen=True)
class Pause:
    """Sleep ``seconds`` (not blocking an asyncio loop): answer :class:`Paused`."""

    seconds: float


@dataclass(frozen=True)
class Listen:
    """Take the next feed, giving up after ``timeout`` s (None: no limit): answer :class:`Fed`."""

    timeout: float | None


#: The listen of an asyncio wait without a deadline, shared: one object less for each of thousands of waiting triggers.
LISTEN_UNTIL_FED = Listen(None)


@dataclass(frozen=True)
class Release:
    """The wait is over: ``found`` in history order."""

    found: list[Notification]


@dataclass(frozen=True)
class Readied:
    ready: bool
    #: Why the feeds could not start yet, if they know.
    outage: Exception | None = None


@dataclass(frozen=True)
class ReadDone:
    revision: int
    notifications: list[Notification]


@dataclass(frozen=True)
class ReadFailed:
    error: StoreUnavailable


@dataclass(frozen=True)
class Paused:
    pass


@dataclass(frozen=True)
class Fed:
    #: None: nothing came within the listen's timeout.
    feed: Feed[StoredKey] | None
    #: Why the feeds are interrupted now, if they are.
    outage: Exception | None = None


WaitCommand = AwaitReady | ReadState | Pause | Listen | Release
WaitEvent = Readied | ReadDone | ReadFailed | Paused | Fed


class WaitMachine:
    """Every decision of one wait, fed what its driver saw and answering what to do next; no I/O, no clock.

    A wait first lets its feeds get ready (a shared watch knows the revision it follows from), then,
    where the feeds carry only changes (``reads_state``), reads what exists; then it takes feeds until
    it has found what it waits for. A ``resync`` feed (history compacted, or the wait fell too far
    behind) means reading again from its frontier. An outage of a read is ridden out with growing pauses
    (one WARNING, one INFO at its end) until the deadline; the deadline raises :class:`WaitTimeout`
    with what was found. Time comes in with every event (``now``, monotonic seconds).

    ``blocking``: the driver may block on its feeds (a thread); else (asyncio) the feeds are asked
    without blocking, with pauses between, and a listen lasts until the deadline.
    """

    def __init__(self, found: Found, *, timeout: float | None, reads_state: bool, patience: float, now: float,
                 blocking: bool = True) -> None:
        self.found = found
        self.follower = Follower([found.request], Position(0), capacity=None, label=f"wait for {found.request}")
        self.timeout = timeout
        self.reads_state = reads_state
        self.blocking = blocking
        self._at = None if timeout is None else now + timeout
        # The feeds get the store's usual request time to get ready, even when the wait's own is shorter.
        self._ready_at = None if timeout is None else now + max(timeout, patience)
        self._readying = True
        self._ready_pause = READY_PAUSES[0]
        self._failures = 0

    def start(self, now: float) -> WaitCommand:
        """The first thing to do."""
        return AwaitReady(0.0 if not self.blocking else _slice(1.0, self._ready_at, now))

    def handle(self, event: WaitEvent, now: float) -> WaitCommand:
        """What to do after ``event``; raises what ends the wait without a release."""
        if isinstance(event, Fed):
            return self._fed(event, now)
        if isinstance(event, Readied):
            return self._readied(event, now)
        if isinstance(event, ReadDone):
            return self._read(event, now)
        if isinstance(event, ReadFailed):
            return self._read_failed(event.error, now)
        return AwaitReady(0.0) if self._readying else ReadState(self.follower.frontier.resume_revision)

    # -- the steps -------------------------------------------------------------------------------
    def _readied(self, event: Readied, now: float) -> WaitCommand:
        if event.ready:
            self._readying = False
            return ReadState(self.follower.frontier.resume_revision) if self.reads_state else self._check(now, None)
        if _passed(self._ready_at, now):
            raise self.found.timed_out(self.timeout, event.outage)
        if self.blocking:
            return AwaitReady(_slice(1.0, self._ready_at, now))
        pause, self._ready_pause = self._ready_pause, min(2 * self._ready_pause, READY_PAUSES[1])
        return Pause(_slice(pause, self._ready_at, now))

    def _read(self, event: ReadDone, now: float) -> WaitCommand:
        if self._failures:
            log.info("a wait reads etcd again after %d failed attempts", self._failures)
            self._failures = 0
        self.follower.on_found(event.notifications, event.revision)
        return self._check(now, None)

    def _read_failed(self, error: StoreUnavailable, now: float) -> WaitCommand:
        """Pause before reading again; raises once the wait is over or can never succeed."""
        if isinstance(error, TlsRefused):  # waiting will not mend a setting
            raise error
        if _passed(self._at, now):
            raise self.found.timed_out(self.timeout, error)
        if self._failures >= MAX_READ_ATTEMPTS:
            raise error
        if not self._failures:
            until = "its timeout" if self.timeout is not None else "it is reachable"
            log.warning("a wait cannot read etcd now (%s); trying again until %s", one_line(error), until)
        self._failures += 1
        return Pause(_slice(READ_RETRY_DELAYS[min(self._failures - 1, len(READ_RETRY_DELAYS) - 1)], self._at, now))

    def _fed(self, event: Fed, now: float) -> WaitCommand:
        feed = event.feed
        if feed is not None and feed.kind is FeedKind.RESYNC:
            if self.reads_state:  # without it, the feeds bring history again themselves
                return ReadState(self.follower.frontier.resume_revision)
        elif feed is not None:
            self.follower.feed(feed)
        return self._check(now, event.outage)

    def _check(self, now: float, outage: Exception | None) -> WaitCommand:
        """Released, timed out, or listen on."""
        if self.found.add(self.follower.drain()):
            return Release(self.found.ordered())
        if _passed(self._at, now):
            raise self.found.timed_out(self.timeout, outage)
        if self.blocking:
            return Listen(_slice(LOOK_EVERY, self._at, now))
        return LISTEN_UNTIL_FED if self._at is None else Listen(self._at - now)


def _passed(at: float | None, now: float) -> bool:
    return at is not None and now >= at


def _slice(longest: float, at: float | None, now: float) -> float:
    """How long to block now: at most ``longest``, and not past ``at``."""
    return longest if at is None else max(0.0, min(longest, at - now))


__all__ = ["DEFAULT_CAPACITY", "AwaitReady", "Feed", "FeedKind", "Fed", "Follower", "Found", "Listen", "Pause",
           "Paused", "Progress", "ReadDone", "ReadFailed", "ReadState", "Readied", "Release", "WaitCommand",
           "WaitEvent", "WaitMachine", "one_line"]
