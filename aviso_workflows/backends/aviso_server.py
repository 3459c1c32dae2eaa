"""The aviso-server backend (Aviso 2): ECMWF's aviso-server over HTTP and server-sent events.

The protocol's work is done by :mod:`aviso_workflows.aviso2` (the client, the ``/watch`` source, finite
``/replay`` reads); this module puts it behind the backend contract. Positions are the server's sequences
(or a time before the first one was seen); a wait opens one ``/watch`` from the request's earliest date,
which replays what exists and goes on live, so it reads nothing besides its feeds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Sequence
from typing import NoReturn

from ..aviso2 import AvisoClient, AvisoSource, latest, now_position, replay, replay_window, since, wait_start
from ..config import StoreConfig
from ..errors import ValidationError
from ..follow import Feed
from ..notification import Notification
from ..position import Position, key_order
from ..request import Request
from ..watch import Channel, WatchHub
from .base import ConfiguredBackend
from .protocol import CapabilityError, NotifyResult, Read

#: What to use instead of an aviso-server for what only etcd keeps.
ETCD_INSTEAD = ("give the etcd endpoint behind the server instead (http(s)://HOST:2379, the one "
                "`aviso-workflows serve --endpoint` uses)")


class AvisoServerBackend(ConfiguredBackend):
    """A store whose endpoints are ``aviso+http(s)://``: an aviso-server, with no etcd behind it for us."""

    position_unit = "sequence"

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.client = AvisoClient(config)

    def _cannot(self, what: str, reason: str, instead: str = ETCD_INSTEAD) -> NoReturn:
        raise CapabilityError(self.endpoint, what, f"an aviso-server, {reason}", instead)

    def etcd(self, what: str) -> NoReturn:
        self._cannot(what, "which keeps no etcd keys (no waiting registry, no status chain)")

    def health(self) -> str:
        self.client.health()
        return f"reached the aviso-server at {self.client.base}"

    def close(self) -> None:
        """Nothing of its own to close: the HTTP clients are per thread, the streams per source."""

    # -- notify ----------------------------------------------------------------------------------
    def notify(self, request: Request, location: str | None, ttl: int | None, message: str | None) -> NotifyResult:
        """One POST per key (the server takes one identifier at a time): not atomic across keys."""
        if ttl:
            raise ValidationError("ttl", ttl, "an aviso-server keeps notifications for its own retention; "
                                  "leave ttl out")
        result = NotifyResult(keys=[])
        # In the order readers give the keys of one etcd transaction, so both stores deliver alike.
        for values in sorted(request.concrete(), key=lambda values: key_order(request.schema.format_key(values))):
            answer = self.client.notify(request.event, values, location)
            result.keys.append(request.schema.format_key(values))
            if isinstance(answer.get("sequence"), int):
                result.revisions.append(answer["sequence"])
        return result

    # -- reads -----------------------------------------------------------------------------------
    def read(self, request: Request, min_revision: int = 0) -> Read:
        """A finite ``/replay`` from ``min_revision`` (else from the request's earliest date): the latest post
        of each key."""
        start = Position(max(min_revision - 1, 0)) if min_revision else \
            wait_start(request, self.config.replay_lookback_hours)
        last, kvs = replay(self.client, request, start)
        return last, latest(request, kvs)

    def read_many(self, requests: Sequence[Request], min_revision: int = 0) -> list[Read]:
        return [self.read(request, min_revision) for request in requests]

    # -- positions -------------------------------------------------------------------------------
    def current_revision(self) -> NoReturn:
        self._cannot("the store's revision", "whose positions are sequences of notifications, not revisions",
                     "a listener starting now starts at the current time (Store.now())")

    def now(self) -> Position:
        """The current second (the server's ``from_date`` has seconds)."""
        return now_position()

    def last_post(self, requests: Sequence[Request], revision: int | None) -> int | None:
        return revision  # a sequence holds one post: it is its own last post

    def first_after(self, requests: Sequence[Request], moment: dt.datetime) -> Position:
        return since(moment)  # the server finds the first post at or after a time itself

    def replay_window(self, requests: Sequence[Request], start: dt.datetime,
                      end: dt.datetime | None) -> list[Notification]:
        return replay_window(self.client, requests, start, end)

    # -- following -------------------------------------------------------------------------------
    def follow(self, requests: Sequence[Request], start: Position, channel: Channel, label: str) -> AvisoSource:
        """The server's ``/watch`` from the position: replay, then live, in one stream."""
        return AvisoSource(self.client, requests, start, channel, label)

    def wait_feeds(self, request: Request, wanted: Sequence[str] | None, hub: WatchHub,
                   loop: asyncio.AbstractEventLoop | None = None) -> StreamFeeds:
        """One stream per wait: the shared watches of ``hub`` are etcd's."""
        start = wait_start(request, self.config.replay_lookback_hours)
        return StreamFeeds(AvisoSource(self.client, [request], start, Channel(loop=loop), f"wait for {request}"))


class StreamFeeds:
    """One wait's ``/watch`` stream from the request's earliest date: history, then live, nothing to read."""

    reads_state = False
    patience = 0.0

    def __init__(self, source: AvisoSource) -> None:
        self.source = source

    @property
    def last_error(self) -> Exception | None:
        return self.source.last_error

    def start(self) -> None:
        self.source.start()

    def ready(self, timeout: float) -> bool:
        return True  # the stream replays from before the request's data: no read to place

    def get(self, timeout: float) -> Feed | None:
        return self.source.channel.get(timeout)

    async def aget(self) -> Feed:
        return await self.source.channel.aget()

    def detach(self) -> Callable[[], None] | None:
        """The stream's stop (it joins the stream's thread)."""
        return self.source.stop


__all__ = ["AvisoServerBackend", "StreamFeeds"]
