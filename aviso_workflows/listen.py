"""Listening: every post after a position, in write order, across restarts.

A listener follows the store's history from its position through its backend's source
(:meth:`~aviso_workflows.backends.protocol.Backend.follow`: on etcd one watch from the revision after it,
over the prefix that covers every request of the listener, so the posts of all its requests come in one
order; on an aviso-server the server's ``/watch`` from the position). A key posted twice is two
notifications. The follower (follow.py) keeps the position; this module moves data between it and the
source's thread, in a thread (:func:`listen`) or in an asyncio loop (:func:`listen_async`).
Waits are in wait.py; the status chain and replays in status_chain.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Iterator
from typing import TYPE_CHECKING

from .backends.protocol import FollowSource
from .errors import ValidationError
from .follow import DEFAULT_CAPACITY, Feed, Follower
from .notification import Notification
from .position import END_OF_REVISION, Cursor, Position
from .request import Request
from .runtime import AllWatches
from .wait import wait, wait_async
from .watch import STOP_CHECK, Channel, PrefixWatch

if TYPE_CHECKING:
    from .storelike import StoreLike


def start_position(store: StoreLike, after: Position | None, cursor: Cursor | None) -> Position:
    """Where a listener starts: ``after``, else its cursor's position, else now.

    A cursor that was never saved is saved at once: a listener stopped before its first
    notification resumes from its first start, not from the time of its next start.
    """
    saved = cursor.load() if cursor is not None else None
    position = after or saved or store.now()
    if cursor is not None and saved is None:
        cursor.save(position)
    return position


def last_post(store: StoreLike, requests: list[Request], revision: int | None) -> int | None:
    """The position of the last post at or before ``revision`` that the requests may match: a listener has
    seen everything up to ``revision`` once it has seen that one (or anything later)."""
    return store.backend.last_post(requests, revision)


def _follower(store: StoreLike, requests: list[Request], start: Position, until: int | None,
              capacity: int | None) -> Follower:
    if not requests:
        raise ValidationError("request", [], "at least one request is needed to listen")
    label = "listener on " + ", ".join(str(r) for r in requests[:3]) + (" ..." if len(requests) > 3 else "")
    return Follower(requests, start, capacity=capacity, until=last_post(store, requests, until), label=label)


def _source(store: StoreLike, follower: Follower, channel: Channel) -> FollowSource:
    return store.backend.follow(follower.requests, follower.frontier, channel, follower.label)


def _feed(follower: Follower, feed: Feed | None) -> None:
    if feed is not None:  # None: nothing came before it was time to look at the stop flag
        follower.feed(feed)


def _save(cursor: Cursor | None, position: Position, saved: Position, source: FollowSource) -> Position:
    if cursor is not None and position != saved:
        # A source that knows more of a position than the follower (an aviso-server's time of the post) adds it.
        cursor.save(source.stamped(position))
    return position


def listen(store: StoreLike, requests: list[Request], *, after: Position | None = None, cursor: Cursor | None = None,
           stop: threading.Event | None = None, poll: float = STOP_CHECK, until_revision: int | None = None,
           capacity: int | None = DEFAULT_CAPACITY) -> Iterator[Notification]:
    """Yield every post that ``requests`` match, in write order, until ``stop`` is set.

    Starts after ``after`` (or the cursor's saved position, or now). With ``cursor``, the position is
    saved when the consumer asks for the next notification, i.e. after it handled the previous one,
    and as the store moves on. ``until_revision`` ends the listen once history reaches it.
    """
    stop = stop or threading.Event()
    follower = _follower(store, requests, start_position(store, after, cursor), until_revision, capacity)
    saved = follower.position
    with _source(store, follower, Channel()) as source:
        while not stop.is_set() and not follower.finished:
            notification = follower.pop()
            if notification is None:
                _feed(follower, source.channel.get(poll))
            else:
                yield notification
                follower.handled(notification)
            saved = _save(cursor, follower.position, saved, source)


async def listen_async(store: StoreLike, requests: list[Request], *, after: Position | None = None,
                       capacity: int | None = DEFAULT_CAPACITY) -> AsyncGenerator[Notification, None]:
    """The asyncio form of :func:`listen` for event triggers: yields every matching post in write order
    after ``after`` (or now). The watch runs in its own thread and reads there; nothing blocks the loop.
    The caller keeps its own durable position.
    """
    start: Position = after if after is not None else await asyncio.to_thread(store.now)
    follower = await asyncio.to_thread(_follower, store, requests, start, None, capacity)
    source = _source(store, follower, Channel(loop=asyncio.get_running_loop()))
    source.start()
    try:
        while True:
            notification = follower.pop()
            if notification is None:
                follower.feed(await source.channel.aget())
            else:
                yield notification
                follower.handled(notification)
    finally:
        await asyncio.to_thread(source.stop)


#: The shared watches of every store's runtime in this process (what status pages and tests look at).
HUB = AllWatches()

__all__ = ["END_OF_REVISION", "HUB", "Cursor", "Position", "PrefixWatch", "last_post", "listen", "listen_async",
           "start_position", "wait", "wait_async"]
