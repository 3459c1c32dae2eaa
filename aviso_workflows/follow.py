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

import logging
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .etcd import KeyValue
from .notification import Notification, in_order, notification_from_kv
from .position import END_OF_REVISION, Position, place
from .request import Request

log = logging.getLogger(__name__)
#: The most notifications one listener holds before it stops reading and reads again later.
DEFAULT_CAPACITY = 10_000


@dataclass(frozen=True)
class Feed:
    """What a source produced: ``events`` (puts in write order, through ``revision``), ``snapshot`` (the
    keys modified after a revision, as held at ``revision``), ``progress`` (nothing more up to
    ``revision``), ``compacted`` (history before ``revision`` is gone; a snapshot at it follows) or
    ``restarted`` (the store numbers from the start again; what follows is fed from there).
    """

    kind: str
    revision: int
    puts: Sequence[KeyValue] = ()
    #: For ``failure``: why the source ended.
    error: Exception | None = None


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
        self._held: tuple[Sequence[KeyValue | Notification], int] | None = None
        self._pending: deque[Notification] = deque()
        self._in_hand = False
        self._prefixes = [(request, tuple(request.status_keys())) for request in self.requests]

    # -- what sources feed ---------------------------------------------------------------------
    def feed(self, feed: Feed) -> None:
        """Take in one feed of the current source."""
        if feed.kind == "events":
            self.on_events(feed.puts, feed.revision)
        elif feed.kind == "snapshot":
            self.on_snapshot(feed.puts, feed.revision)
        elif feed.kind == "progress":
            self.on_progress(feed.revision)
        elif feed.kind == "compacted":
            self.on_compacted(feed.revision)
        elif feed.kind == "restarted":
            self.on_restarted()
        elif feed.kind == "failure" and feed.error is not None:
            raise feed.error
        else:
            raise ValueError(f"unknown feed kind {feed.kind!r}")

    def on_events(self, puts: Iterable[KeyValue], revision: int) -> None:
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
    def _take(self, items: Sequence[KeyValue | Notification], through: int) -> None:
        """Queue the notifications of ``items`` (in history order) past the frontier; then the frontier
        is ``through``. If the queue fills up, the rest is held, and the frontier is the last one kept."""
        frontier = self.frontier.order
        for index, item in enumerate(items):
            revision = item.mod_revision if isinstance(item, KeyValue) else item.revision
            if place(revision, item.key) <= frontier:
                continue
            if self.until is not None and revision > self.until:
                break
            notification = self._match(item) if isinstance(item, KeyValue) else item
            if notification is None:
                continue
            if self.capacity is not None and len(self._pending) >= self.capacity:
                self._held = (items[index:], through)
                return
            self._pending.append(notification)
            self.frontier = Position(revision, item.key)
        if through > self.frontier.revision or self.frontier.key != END_OF_REVISION:
            self.frontier = Position(max(through, self.frontier.revision))
        self._settle()

    def _match(self, kv: KeyValue) -> Notification | None:
        for request, prefixes in self._prefixes:
            if kv.key.startswith(prefixes) and kv.key not in prefixes:
                notification = notification_from_kv(request, kv)
                if notification is not None:
                    return notification
        return None

    def _settle(self) -> None:
        """With nothing queued or in hand, the consumer has handled everything up to the frontier."""
        idle = not self._pending and not self._in_hand and self._held is None
        if idle and self.position.order < self.frontier.order:
            self.position = self.frontier


def _by_place(kvs: Iterable[KeyValue]) -> list[KeyValue]:
    return sorted(kvs, key=lambda kv: place(kv.mod_revision, kv.key))


__all__ = ["DEFAULT_CAPACITY", "Feed", "Follower"]
