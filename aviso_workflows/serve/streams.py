"""One SSE stream of a watch or replay: its lifecycle and the events it sends, in Aviso 2's shapes.

A live-only watch starts with ``connection_established`` and follows the shared feed from the revision
it subscribed at. A stream with a start (``from_id``/``from_date``) sends ``replay_started``, replays
history through a watch of its own up to the hand-over revision ``U`` and sends ``replay_completed``;
a watch then goes on with the shared feed, which holds everything after ``U`` (it subscribed before
reading ``U``). One :class:`~aviso_workflows.follow.Follower` orders and filters both phases, so a
notification at the hand-over is neither lost nor repeated. Every stream ends with ``connection-closing``
(``end_of_stream``, ``max_duration_reached`` or ``server_shutdown``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from fastapi.sse import ServerSentEvent, format_sse_event
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..follow import Feed, Follower
from ..notification import Notification
from ..position import Position
from ..request import Request
from ..watch import Channel, HistorySource, one_line
from .feeds import CUT, FeedHub, SharedFeed, Subscription, last_change, read_state
from .protocol import NO_SEQUENCE, SEQUENCE_SLOTS, Batch, cloud_event, read_batch, stream_time, topic
from .server_config import StreamFilter, stored_envelope

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger(__name__)
#: Returned by a wait whose time ran out (a heartbeat may be due).
_TIMEOUT = object()


@dataclass(frozen=True)
class Removed:
    """What the admin routes (admin.py) removed from an event: sequences, and everything up to a revision."""

    sequences: frozenset[int] = frozenset()
    wiped_at: int = 0

    def hides(self, sequence: int) -> bool:
        return sequence in self.sequences or sequence // SEQUENCE_SLOTS <= self.wiped_at


@dataclass(frozen=True)
class StreamSettings:
    """What every stream of a server shares: timings and limits."""

    base_url: str
    heartbeat: float = 10.0
    max_duration: float = 3600.0
    replay_limit: int = 10_000


@dataclass(frozen=True)
class StreamPlan:
    """A checked watch or replay: what to follow, from where, as whom."""

    kind: str  # "watch" or "replay"
    route: str
    store: Store
    request: Request
    request_id: str
    #: Where the replay starts (None: a live-only watch); ``from_id`` drops notifications before it.
    start: Position | None = None
    from_id: int | None = None
    from_date: dt.datetime | None = None
    #: Where a replay ends (inclusive): notifications after it are not sent.
    to_id: int | None = None
    to_date: dt.datetime | None = None
    #: An aviso-server configuration's event: what its keys do not hold (a point or polygon filter).
    spatial: StreamFilter | None = None
    #: Stored values are ``{"payload", "identifier"}`` envelopes (an aviso-server configuration's event).
    enveloped: bool = False
    #: What the admin routes deleted or wiped from history before the stream opened (left out of it).
    removed: Removed | None = None

    def keeps(self, notification: Notification) -> bool:
        """True when the request matches the notification's key and the rest of the filter its stored value."""
        if not self.request.matches(notification.request):
            return False
        return self.spatial is None or self.spatial.keeps(stored_envelope(notification.location)[1],
                                                          notification.request)


class _Closing(Exception):
    """The stream ends with this ``connection-closing`` reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Failed(Exception):
    """The stream ends after an ``error`` event."""


class Stream:
    """The state of one SSE stream; :meth:`events` is what the response sends."""

    def __init__(self, plan: StreamPlan, settings: StreamSettings, hub: FeedHub,
                 on_event: Callable[[str], None]) -> None:
        self.plan = plan
        self.settings = settings
        self.hub = hub
        self.topic = topic(plan.request)
        self._on_event = on_event
        self._stop = asyncio.Event()
        self._stop_reason = "server_shutdown"
        self._stop_task: asyncio.Future[Any] | None = None
        #: What the live stream waits on while its queue is empty (a stop wakes it too).
        self._waiter: asyncio.Future[None] | None = None
        #: The batches whose sequences the follower's notifications may still need.
        self._batches: deque[Batch] = deque()
        self._next_heartbeat = time.monotonic() + settings.heartbeat
        self._deadline = time.monotonic() + settings.max_duration if plan.kind == "watch" else None
        #: Notifications sent by the replay, and whether it stopped at the replay limit.
        self.replayed = 0
        self.limited = False

    def stop(self, reason: str) -> None:
        """End the stream at its next step with ``connection-closing`` ``reason``."""
        self._stop_reason = reason
        self._stop.set()
        if self._waiter is not None:
            _wake(self._waiter)

    # -- the lifecycle -----------------------------------------------------------------------------
    async def events(self) -> AsyncIterator[ServerSentEvent]:
        """Every event of the stream, the last one ``connection-closing``."""
        self._stop_task = asyncio.ensure_future(self._stop.wait())
        shared: tuple[SharedFeed, Subscription] | None = None
        reason = "end_of_stream"
        try:
            if self.plan.kind == "watch":
                shared = await self.hub.join(self.plan.store)
            async for event in self._phases(shared[1] if shared else None):
                yield event
        except _Closing as closing:
            reason = closing.reason
        except _Failed as failure:
            self._on_event("error")
            yield self._error(str(failure))
        except Exception as error:  # noqa: BLE001 - told to the client in the stream, then closed
            log.warning("stream %s failed: %s", self.plan.request_id, one_line(error))
            self._on_event("error")
            yield self._error(one_line(error))
        finally:
            if shared is not None:
                self.hub.leave(*shared)
            self._stop_task.cancel()
        yield self._closing(reason)

    async def _phases(self, subscription: Subscription | None) -> AsyncIterator[ServerSentEvent]:
        start = self.plan.start
        if start is None:
            assert subscription is not None, "a live-only stream is a watch"
            yield self._control("live-notification", "connection_established",
                                connection_will_close_in_seconds=int(self.settings.max_duration))
            follower = Follower([self.plan.request], Position(subscription.start), label=self.topic)
        else:
            yield self._control("replay-control", "replay_started", from_sequence=self.plan.from_id,
                                from_date=stream_time(self.plan.from_date) if self.plan.from_date else None,
                                batch_size=self.settings.replay_limit)
            handover = subscription.start if subscription is not None else \
                await asyncio.to_thread(self.plan.store.current_revision)
            follower = Follower([self.plan.request], start, until=handover, label=self.topic)
            async for event in self._replay(follower, handover):
                yield event
            if self.limited:
                yield self._control("replay-control", "notification_replay_limit_reached",
                                    max_allowed=self.settings.replay_limit,
                                    message=f"Historical replay limited to {self.settings.replay_limit} messages. "
                                    "Additional historical messages may be available but were not retrieved.")
                follower = Follower([self.plan.request], Position(max(handover, start.revision)), label=self.topic)
            yield self._control("replay-control", "replay_completed")
            follower.until = None
        if subscription is not None:
            async for event in self._follow(follower, partial(self._next_live, subscription), "live-notification"):
                yield event

    async def _replay(self, follower: Follower, handover: int) -> AsyncIterator[ServerSentEvent]:
        """History from the follower's start through ``handover`` (or until the replay limit is passed)."""
        store = self.plan.store
        last = await asyncio.to_thread(last_change, store, self.hub.prefix, handover)
        if last <= follower.frontier.revision:
            follower.on_progress(handover)
            return
        channel = Channel(loop=asyncio.get_running_loop())
        source = HistorySource(store.config, self.hub.prefix, follower.frontier.resume_revision, channel,
                               f"replay {self.plan.request_id}", partial(read_state, store))
        source.start()
        try:
            next_item = partial(self._wait, partial(self._replay_item, channel, handover))
            async for event in self._follow(follower, next_item, "replay", last=last, handover=handover):
                yield event
        finally:
            asyncio.get_running_loop().run_in_executor(None, source.stop)

    async def _replay_item(self, channel: Channel, handover: int) -> Any:
        """The replay source's next feed, cut at the hand-over revision (what follows it is live)."""
        feed = await channel.aget()
        if feed.kind in ("events", "snapshot") and feed.revision > handover:
            puts = [kv for kv in feed.puts if kv.mod_revision <= handover]
            feed = Feed(feed.kind, handover, puts)
        elif feed.kind == "progress" and feed.revision > handover:
            feed = Feed("progress", handover)
        return feed, read_batch(feed.puts, self.hub.schemas)

    async def _next_live(self, subscription: Subscription) -> Any:
        """The subscription's next item, or _TIMEOUT when a heartbeat or the deadline comes first, or the
        stream stops. One future and one timer per wait: this runs for every stream on every post."""
        item = subscription.take()
        if item is None and not self._stop.is_set():
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            subscription.waiter = self._waiter = waiter
            timeout = self._timeout()
            timer = loop.call_later(timeout, _wake, waiter) if timeout is not None else None
            try:
                await waiter
            finally:
                subscription.waiter = self._waiter = None
                if timer is not None:
                    timer.cancel()
            item = subscription.take()
        if item is None:
            return _TIMEOUT
        if item is CUT:
            raise _Failed("the client did not keep up with the notifications; reconnect with from_id = the last "
                          "sequence + 1 to go on without a loss")
        return item

    # -- following ---------------------------------------------------------------------------------
    async def _follow(self, follower: Follower, next_item: Callable[[], Awaitable[Any]], label: str, *,
                      last: int | None = None, handover: int | None = None) -> AsyncIterator[ServerSentEvent]:
        """Send the follower's notifications as ``label`` events, feeding it from ``next_item`` (a feed and
        its batch, or _TIMEOUT). A replay (``last`` given) ends once the follower has passed ``last``, the
        newest post up to ``handover``."""
        while True:
            heartbeat = self._due()
            if heartbeat is not None:
                yield heartbeat
            notification = follower.pop()
            if notification is not None:
                event = self._notification(notification, label)
                if event is not None and label == "replay":
                    if self.replayed >= self.settings.replay_limit:
                        self.limited = True
                        return
                    self.replayed += 1
                follower.handled(notification)
                if event is not None:
                    self._on_event(label if event.event == label else "error")
                    yield event
                continue
            if last is not None and handover is not None:
                if follower.frontier.revision >= last:
                    follower.on_progress(handover)
                if follower.finished:
                    return
            item = await next_item()
            if item is _TIMEOUT:
                continue
            self._feed(follower, *item)

    def _feed(self, follower: Follower, feed: Feed, batch: Batch) -> None:
        """Give the follower a feed: its puts as the batch's notifications of this stream's event that
        the request matches (read once for all streams; the follower orders and places them)."""
        if feed.kind == "failure":
            raise _Failed(one_line(feed.error) if feed.error else "the store refused the watch")
        if batch.annotations.sequences:
            self._batches.append(batch)
        if feed.kind in ("events", "snapshot"):
            request = self.plan.request
            found = [n for n in batch.notifications.get(request.event, ()) if self.plan.keeps(n)]
            follower.on_found(found, feed.revision)
        else:
            follower.feed(feed)

    def _due(self) -> ServerSentEvent | None:
        """A heartbeat when one is due; raises _Closing when the stream must end."""
        now = time.monotonic()
        if self._stop.is_set():
            raise _Closing(self._stop_reason)
        if self._deadline is not None and now >= self._deadline:
            raise _Closing("max_duration_reached")
        if self.plan.kind == "watch" and now >= self._next_heartbeat:
            self._next_heartbeat = now + self.settings.heartbeat
            return ServerSentEvent(event="heartbeat", data={"timestamp": stream_time(), "topic": self.topic})
        return None

    def _timeout(self) -> float | None:
        """Seconds until the next heartbeat or the deadline (None: neither)."""
        now = time.monotonic()
        limits = [self._next_heartbeat - now] if self.plan.kind == "watch" else []
        if self._deadline is not None:
            limits.append(self._deadline - now)
        return max(min(limits), 0.0) if limits else None

    async def _wait(self, get: Callable[[], Awaitable[Any]]) -> Any:
        """The next item of ``get``, or _TIMEOUT when a heartbeat or the deadline comes first, or the stream stops."""
        timeout = self._timeout()
        getter = asyncio.ensure_future(get())
        assert self._stop_task is not None
        done, _ = await asyncio.wait({getter, self._stop_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        try:
            return await getter  # it may have finished meanwhile: keep what it got
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # this task itself is being cancelled
                raise
            return _TIMEOUT

    # -- events ------------------------------------------------------------------------------------
    def _notification(self, notification: Notification, label: str) -> ServerSentEvent | None:
        """The CloudEvent of ``notification`` (None: before ``from_id``)."""
        sequence, when, batch = self._sequence(notification)
        if sequence == NO_SEQUENCE:
            return self._error(f"revision {notification.revision} holds {SEQUENCE_SLOTS} notification keys or more; "
                               f"{notification.key} cannot be given a sequence")
        if self.plan.from_id is not None and sequence < self.plan.from_id:
            return None
        if self._after_end(sequence, when) or (self.plan.removed is not None and self.plan.removed.hides(sequence)):
            return None
        base_url, enveloped = self.settings.base_url, self.plan.enveloped
        return batch.shared((label, notification.event, notification.revision, notification.key),
                            lambda: _encoded(label, cloud_event(notification, sequence, when, base_url, enveloped)))

    def _after_end(self, sequence: int, when: str | None) -> bool:
        """True for a notification after the replay's ``to_id`` or ``to_date``."""
        if self.plan.to_id is not None and sequence > self.plan.to_id:
            return True
        if self.plan.to_date is not None and when is not None:
            moment = dt.datetime.strptime(when, "%Y-%m-%dT%H:%M:%S.%fZ")
            return moment > self.plan.to_date
        return False

    def _sequence(self, notification: Notification) -> tuple[int, str | None, Batch]:
        """The notification's sequence and time, and the batch that numbered it."""
        revision = notification.revision
        while self._batches and self._batches[0].annotations.last < revision:
            self._batches.popleft()
        for batch in self._batches:
            sequence = batch.annotations.sequences.get((revision, notification.key))
            if sequence is not None:
                return sequence, batch.annotations.times.get(revision), batch
        raise _Failed(f"no sequence is known for {notification.key} at revision {revision}")

    def _control(self, event: str, kind: str, **fields: Any) -> ServerSentEvent:
        data: dict[str, Any] = {"type": kind, "topic": self.topic, **fields, "timestamp": stream_time()}
        if kind in ("connection_established", "replay_started"):
            data["request_id"] = self.plan.request_id
        return ServerSentEvent(event=event, data=data)

    def _error(self, message: str) -> ServerSentEvent:
        return ServerSentEvent(event="error", data={"error": "stream_processing_failed", "message": message,
                                                    "topic": self.topic, "request_id": self.plan.request_id})

    def _closing(self, reason: str) -> ServerSentEvent:
        messages = {"end_of_stream": "Stream completed", "max_duration_reached": "Connection reached maximum duration",
                    "server_shutdown": "Server is shutting down gracefully"}
        return ServerSentEvent(event="connection-closing", data={
            "reason": reason, "timestamp": stream_time(), "message": messages.get(reason, reason),
            "topic": self.topic, "request_id": self.plan.request_id})


class EventStream(StreamingResponse):
    """The response of a stream: its events in SSE's wire format (``text/event-stream``), written as they come.

    FastAPI's EventSourceResponse would run every event of every stream through two more tasks, with a
    memory channel between each and a keep-alive timer set per event: most of the processor time of a
    post that reaches a thousand streams. A watch sends heartbeats of its own, so it needs no keep-alive.
    """

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[ServerSentEvent]) -> None:
        self._events = events
        super().__init__(_wire(events), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:  # a client gone while its event was being sent: end the stream now (unsubscribe, count)
            await self._events.aclose()  # type: ignore[attr-defined]


async def _wire(events: AsyncIterator[ServerSentEvent]) -> AsyncIterator[bytes]:
    """Each event as FastAPI would write it; a shared event's JSON (``raw_data``) is not encoded again."""
    async for event in events:
        data = event.raw_data if event.raw_data is not None else None if event.data is None else compact(event.data)
        yield format_sse_event(data_str=data, event=event.event, id=event.id, retry=event.retry, comment=event.comment)


def compact(data: Any) -> str:
    """JSON as aviso-server writes it (serde_json: no spaces); clients such as aviso-server's own smoke checks
    look for ``"type":"connection_established"`` in the stream's text."""
    return json.dumps(data, separators=(",", ":"))


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _encoded(label: str, data: dict[str, Any]) -> ServerSentEvent:
    """An event whose JSON is encoded here, once, however many streams send it: ``raw_data`` is what goes on
    the wire (FastAPI sends it as it is, before looking at ``data``); ``data`` stays for readers in this
    process (the board). ServerSentEvent's validator refuses the two together, so it is built unvalidated;
    both hold the same JSON, so the wire is the same whichever is sent."""
    return ServerSentEvent.model_construct(event=label, data=data, raw_data=compact(data))


__all__ = ["EventStream", "Stream", "StreamPlan", "StreamSettings"]
