"""The contract of a notification store's backend: what waits, listeners and notifies need from a store.

Two backends keep it: **etcd** (the pyaviso 1.x key layout, :mod:`.etcd`) and **aviso-server** (HTTP and
server-sent events, :mod:`.aviso_server`). A :class:`~aviso_workflows.store.Store` opens one of them once,
from its endpoint; everything above (wait, listen, the CLI, the adapters) uses this contract and never asks
which backend it has. What a backend cannot do raises :class:`CapabilityError`, naming the endpoint and
what to use instead.

A *position* is a :class:`~aviso_workflows.position.Position` on both: on etcd its revision is the store's
revision; on an aviso-server it is the server's sequence of the notification (or a time, before the first
one was seen). A cursor stores it as it is; :attr:`Backend.position_unit` says which of the two it is.

This module is the layer below wait/listen: it imports nothing above it, not even for types.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import StoreError
from ..etcd import EtcdGateway, KeyValue
from ..follow import Feed
from ..notification import Notification
from ..position import Position
from ..request import Request
from ..watch import Channel, WatchHub

#: What a read returns: the position read at (a revision, or the last sequence) and the notifications.
Read = tuple[int, list[Notification]]


@dataclass(frozen=True)
class NotifyResult:
    """What a notify wrote: the data keys and the revision (or sequence) of each write."""

    keys: list[str]
    revisions: list[int] = field(default_factory=list)


class CapabilityError(StoreError):
    """A store's backend cannot do what was asked: the error names the endpoint and what to use instead."""

    def __init__(self, endpoint: str, what: str, reason: str, instead: str) -> None:
        super().__init__(f"{what}: {endpoint} is {reason}; {instead}")
        self.endpoint = endpoint
        self.what = what


class FollowSource(Protocol):
    """History from a position, then live, handed as feeds for a Follower to :attr:`channel` by a thread of
    the source's own (started by :meth:`start` or ``with``; :meth:`stop` ends it)."""

    @property
    def channel(self) -> Channel: ...

    @property
    def last_error(self) -> Exception | None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def stamped(self, position: Position) -> Position:
        """``position`` with what the source knows more of it (an aviso-server adds the time of the post),
        as a cursor saves it; the position itself where there is nothing to add."""
        ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> None: ...


class WaitFeeds(Protocol):
    """The feeds of one wait: what is posted for its request from when it is :meth:`ready` on.

    With :attr:`reads_state`, the feeds carry only changes: the wait reads what exists
    (:meth:`Backend.read_many`) once they are ready, and again after a ``resync`` feed. Without it, the feeds
    carry history as well, from the request's earliest date on.
    """

    @property
    def reads_state(self) -> bool: ...

    @property
    def patience(self) -> float:
        """How long at least a wait may wait for :meth:`ready` (the store's request timeout), even with a
        shorter timeout of its own."""
        ...

    @property
    def last_error(self) -> Exception | None: ...

    def start(self) -> None:
        """Begin (never blocks on I/O)."""

    def ready(self, timeout: float) -> bool:
        """True once a read would miss nothing the feeds do not bring (blocks at most ``timeout`` s)."""
        ...

    def get(self, timeout: float) -> Feed | None:
        """The next feed, or None after ``timeout`` seconds (for a waiting thread)."""
        ...

    def aget(self) -> Awaitable[Feed]:
        """The next feed (for an asyncio waiter; the feeds were opened with its loop)."""
        ...

    def detach(self) -> Callable[[], None] | None:
        """Stop taking feeds at once (never blocks); what is left to end, if anything, is returned to be
        called (it may block a little: from asyncio, call it in a thread)."""


class DatedHistory(Protocol):
    """Where in history a time falls, for a backend whose positions are not times (given by the store)."""

    def first_after(self, requests: Sequence[Request], moment: dt.datetime) -> Position: ...

    def replay_window(self, requests: Sequence[Request], start: dt.datetime,
                      end: dt.datetime | None) -> list[Notification]: ...


class EtcdAccess(Protocol):
    """What etcd-only features (the waiting registry, status chains, expectations) use of an etcd store."""

    @property
    def gateway(self) -> EtcdGateway: ...

    def read_prefixes(self, prefixes: Sequence[str], *, min_revision: int = 0,
                      revision: int = 0) -> tuple[int, list[KeyValue]]: ...


class Backend(Protocol):
    """One store's backend, opened once from its endpoint (see :func:`aviso_workflows.backends.open_backend`)."""

    @property
    def endpoint(self) -> str:
        """The endpoint as configured (the first of several), for messages."""
        ...

    @property
    def identity(self) -> tuple[Any, ...]:
        """Which store this is: shared watches and batched reads are kept per identity."""
        ...

    @property
    def position_unit(self) -> str:
        """What a position's revision counts: ``"revision"`` (etcd) or ``"sequence"`` (aviso-server)."""
        ...

    # -- writing
    def notify(self, request: Request, location: str | None, ttl: int | None, message: str | None) -> NotifyResult:
        """Post every key of a complete, validated request."""
        ...

    # -- reading what exists
    def read(self, request: Request, min_revision: int = 0) -> Read:
        """What exists now for ``request`` (the latest post of each key), modified at or after ``min_revision``."""
        ...

    def read_many(self, requests: Sequence[Request], min_revision: int = 0) -> list[Read]:
        """:meth:`read` of several requests at once."""
        ...

    # -- positions
    def now(self) -> Position:
        """The position of now: following from it gives every post after this call."""
        ...

    def current_revision(self) -> int:
        """The store's revision now (a CapabilityError where positions are not revisions)."""
        ...

    def last_post(self, requests: Sequence[Request], revision: int | None) -> int | None:
        """The position of the last post at or before ``revision`` that the requests may match."""
        ...

    def first_after(self, requests: Sequence[Request], moment: dt.datetime) -> Position:
        """The position just before the first post at or after ``moment`` (UTC, naive)."""
        ...

    def replay_window(self, requests: Sequence[Request], start: dt.datetime,
                      end: dt.datetime | None) -> list[Notification]:
        """Every post in [start, end) that the requests match, in write order."""
        ...

    # -- following
    def follow(self, requests: Sequence[Request], start: Position, channel: Channel, label: str) -> FollowSource:
        """A source of the history after ``start`` (then live), feeding ``channel``; not started yet."""
        ...

    def wait_feeds(self, request: Request, wanted: Sequence[str] | None, hub: WatchHub,
                   loop: asyncio.AbstractEventLoop | None = None) -> WaitFeeds:
        """The feeds of one wait for ``request`` (``wanted``: its keys, if complete); ``hub``: the shared watches
        of the store's runtime, to join; ``loop``: for asyncio."""
        ...

    # -- the rest
    def health(self) -> str:
        """Reach the store; what was reached, in words (raises StoreError if it cannot be reached)."""
        ...

    def etcd(self, what: str) -> EtcdAccess:
        """The etcd store behind this backend, for ``what`` (an etcd-only feature); else CapabilityError."""
        ...

    def close(self) -> None:
        """Release the connections."""
        ...


__all__ = ["Backend", "CapabilityError", "DatedHistory", "EtcdAccess", "FollowSource", "NotifyResult", "Read",
           "WaitFeeds"]
