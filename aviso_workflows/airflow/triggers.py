"""Triggers: wait for a request's keys (deferred sensors) and follow notifications (asset watchers).

Both run in the triggerer's event loop: the core's asyncio waits do their blocking reads in worker
threads and share one etcd watch per store and prefix, however many triggers run.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import itertools
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Hashable, Sequence
from contextlib import aclosing
from typing import Any

from airflow.sdk import conf
from airflow.triggers.base import BaseEventTrigger, BaseTrigger, TriggerEvent
from airflow.triggers.shared_stream import AdvanceItem, SharedStreamProducer

from ..errors import AvisoWorkflowsError, ValidationError, WaitTimeout
from ..listen import END_OF_REVISION, Position, listen_async, wait_async
from ..position import place
from ..request import Request
from ..store import Notification, Store
from ..wait import Progress
from ..watch import OUTAGES, PrefixWatch, one_line
from . import _requests
from .hooks import AvisoHook
from .listener import STORED_KEY

log = logging.getLogger(__name__)
#: Where an AvisoEventTrigger keeps its position in the asset's state store.
CURSOR_KEY = "aviso_cursor"
#: Notifications in one asset event at most: a long catch-up becomes several events.
MAX_BATCH = 500
#: Seconds at least between two asset events of one watcher (``event_interval``): see NotificationStream.
DEFAULT_EVENT_INTERVAL = 5.0
#: Where a new asset watcher starts: see AvisoEventTrigger.
START_FROM = ("unpause", "now")
#: Seconds added to Airflow's parse intervals when a new watcher looks back (its start takes a moment too).
START_MARGIN = 30.0
#: Bound on saving the position (the triggerer's channel stops answering while it shuts down).
SAVE_SECONDS = 10.0


class AvisoTrigger(BaseTrigger):
    """Fires once every key of ``request`` exists (``wait_for="any"``: one matching key).

    ``request`` is a validated request as plain data (``Request.as_dict()``); ``known`` holds the
    notifications found before deferring, as dicts; ``deadline`` (seconds since the epoch) is when the
    wait gives up. The event's payload is ``{"status": "success", "notifications": [...]}`` or
    ``{"status": "error", "message": ...}`` (with ``"reason": "timeout"`` once the deadline passes; the
    message names the keys still missing). With ``min_found``, a deadline that finds at least that many keys
    is a success whose payload also holds ``missing`` (the keys not found). ``who`` says who waits, for the
    list of waiters (``aviso-workflows waiting``).
    """

    def __init__(self, *, event: str, request: dict[str, Any], aviso_conn_id: str = AvisoHook.default_conn_name,
                 wait_for: str = "all", known: list[dict[str, Any]] | None = None,
                 deadline: float | None = None, min_found: int | None = None,
                 who: dict[str, Any] | None = None) -> None:
        super().__init__()
        #: The request validated here, for a store that knows the event by the same built-in schema.
        self._validated = _requests.check_static(event, request, wait_for, templates=False)
        _requests.check_conn_id(aviso_conn_id)
        self.event = event
        self.request = request
        self.aviso_conn_id = aviso_conn_id
        self.wait_for = wait_for
        # a tuple: none known is then no object of its own (an empty list per waiting trigger was one more to collect)
        self.known: tuple[dict[str, Any], ...] = tuple(known or ())
        self.deadline = deadline
        self.min_found = min_found
        self.who = dict(who) if who is not None else {"kind": "airflow-trigger"}
        self._store: Store | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "event": self.event, "request": self.request, "aviso_conn_id": self.aviso_conn_id,
            "wait_for": self.wait_for, "known": list(self.known), "deadline": self.deadline,
            "min_found": self.min_found, "who": self.who,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # The wait is awaited here, not in a generator or a coroutine of its own: each of ten thousand waiting
        # triggers would otherwise hold one more of them (and its hooks) for the garbage collector to walk.
        reporter = OutageReporter.of_loop()
        reporter.add(self)
        timeout = None if self.deadline is None else max(0.0, self.deadline - time.time())
        request: Request | None = None
        try:
            store = self._store = await AvisoHook(self.aviso_conn_id).aget_conn()
            reporter.store_known(self)
            request = self._request(store)
            found = await wait_async(store, request, mode=self.wait_for, timeout=timeout,
                                     known=[Notification.from_dict(n) for n in self.known],
                                     on_ready=self._progress if request.count > 1 else None, min_found=self.min_found,
                                     who=self.who)
            event = TriggerEvent({"status": "success", "notifications": [n.to_dict() for n in found],
                                  **({"missing": found.missing} if found.partial else {})})
        except WaitTimeout as error:
            assert request is not None  # only the wait times out
            missing = _requests.missing_keys(request, (n.key for n in error.found), self.wait_for)
            event = TriggerEvent({"status": "error", "reason": "timeout",
                                  "message": f"timed out after waiting until the sensor's timeout; {missing}"})
        except AvisoWorkflowsError as error:
            event = TriggerEvent({"status": "error", "message": str(error)})
        finally:
            reporter.discard(self)
        yield event

    def outage_began(self, watch: PrefixWatch) -> None:
        """Said in this trigger's log, which Airflow shows in the task's log (the watch's own thread logs
        without the trigger's context, so its lines reach only the triggerer's log)."""
        self.log.warning("etcd unreachable: %s interrupted (%s); still waiting, reconnecting", watch.label,
                         one_line(watch.last_error or Exception("no answer")))

    def outage_ended(self, seconds: float) -> None:
        self.log.info("etcd reachable again after %.1f s; still waiting", seconds)

    def _request(self, store: Store) -> Request:
        """The request in ``store``'s schemas: the one validated at construction if its schema is the same
        (ten thousand triggers starting together validate each request once, not twice)."""
        validated = self._validated
        if validated is not None and store.schema(self.event) is validated.schema:
            return validated
        return store.request(self.event, self.request)

    def _progress(self, progress: Progress) -> None:
        # A wait for one key says it all when it fires; thousands of them log nothing extra. Ready counts keys in
        # request order with none missing before them: what a downstream task may use, as the sensor logs it.
        if progress.total > 1:
            self.log.info("%d/%d ready (%d found), newest: %s", progress.ready, progress.total, progress.found,
                          progress.newest.key)


class OutageReporter:
    """One per event loop: the shared watches tell it (through :data:`~aviso_workflows.watch.OUTAGES`) when one
    loses etcd and when it has it again, and it tells each waiting trigger whose store's watch that is (nobody
    polls; it listens only while triggers wait)."""

    _of_loop: dict[asyncio.AbstractEventLoop, OutageReporter] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        #: Each waiting trigger, and when the outage it was told of began (None: none).
        self.triggers: dict[AvisoTrigger, float | None] = {}
        #: Each trigger's context as it was added: Airflow sends a trigger's log lines to its task's log by a
        #: context variable, and these lines are said from a loop callback, outside the trigger's task.
        self.contexts: dict[AvisoTrigger, contextvars.Context] = {}
        #: The shared watches that have lost etcd now (an ordered set; kept on the loop).
        self.down: dict[PrefixWatch, None] = {}
        self.listening = False

    @classmethod
    def of_loop(cls) -> OutageReporter:
        loop = asyncio.get_running_loop()
        for closed in [known for known in cls._of_loop if known.is_closed()]:
            OUTAGES.remove(cls._of_loop.pop(closed))
        return cls._of_loop.setdefault(loop, cls(loop))

    def add(self, trigger: AvisoTrigger) -> None:
        self.triggers[trigger] = None
        self.contexts[trigger] = contextvars.copy_context()
        if not self.listening:
            self.listening = True
            OUTAGES.add(self)  # told at once of the watches down now

    def store_known(self, trigger: AvisoTrigger) -> None:
        """``trigger`` knows its store now: tell it if that store's watch is down already."""
        if self.down:
            self._tell()

    def discard(self, trigger: AvisoTrigger) -> None:
        self.triggers.pop(trigger, None)
        self.contexts.pop(trigger, None)
        if not self.triggers and self.listening:
            self.listening = False
            OUTAGES.remove(self)
            self.down.clear()

    # -- told on a watch's thread: handed to the loop ---------------------------------------------
    def on_outage(self, watch: PrefixWatch, error: Exception) -> None:
        self._on_loop(watch, True)

    def on_reconnected(self, watch: PrefixWatch, seconds: float) -> None:
        self._on_loop(watch, False)

    def _on_loop(self, watch: PrefixWatch, down: bool) -> None:
        try:
            self.loop.call_soon_threadsafe(self._changed, watch, down)
        except RuntimeError:  # the loop is closed: no trigger waits any more
            pass

    def _changed(self, watch: PrefixWatch, down: bool) -> None:
        if not self.listening:  # told after the last trigger left
            return
        self.down = {known: None for known in self.down if known.alive and known is not watch}
        if down:
            self.down[watch] = None
        self._tell()

    def _tell(self) -> None:
        """Tell each trigger whose store's watch broke, or works again, since it was last told."""
        broken = {watch.config.identity: watch for watch in self.down if watch.alive}
        for trigger, since in list(self.triggers.items()):
            watch = broken.get(trigger._store.config.identity) if trigger._store is not None else None
            if watch is not None and since is None:
                self.triggers[trigger] = time.monotonic()
                self.contexts[trigger].run(trigger.outage_began, watch)
            elif watch is None and since is not None:
                self.triggers[trigger] = None
                self.contexts[trigger].run(trigger.outage_ended, time.monotonic() - since)


class AvisoEventTrigger(BaseEventTrigger):
    """Follows the notifications matching ``request``, in write order, for AssetWatcher.

    Each asset event carries the notifications seen together (one etcd transaction, or everything that
    arrived while the previous event was being stored) in its extra's ``payload`` as
    ``{"notifications": [...]}``, each a notification's dict (``event``, ``request``, ``location``,
    ``key``, ``revision``); read them with :func:`aviso_notifications`. Two asset events of one watcher are
    at least ``event_interval`` seconds apart (see :class:`NotificationStream`). The position reached is
    kept in the asset's state store. In a triggerer the notifications flow through Airflow's
    acknowledged shared stream: the position moves past a notification only once Airflow has stored
    its asset event, so a triggerer that stops or dies resumes at the first notification not yet
    stored. Without a state store (a trigger run by hand) it starts from now.

    Where a watcher starts (``start_from``): Airflow starts an asset's watcher only at the first parse of
    its DAG after the DAG is deployed or unpaused, up to ``[dag_processor] min_file_process_interval``
    (a new file: ``refresh_interval``) later. With ``"unpause"`` (the default) a watcher with no saved
    position starts at the first notification posted ``start_lookback`` seconds before it started
    (default: the longer of those two intervals plus 30 s), so nothing posted since the DAG was deployed
    or unpaused is missed; one with a saved position resumes after it, so what was posted while the DAG
    was paused comes on unpause. With ``"now"`` each new watcher (a deploy, an unpause) starts from now
    and what was posted while the DAG was paused is skipped; a triggerer restart still resumes.
    """

    def __init__(self, *, event: str, request: dict[str, Any], aviso_conn_id: str = AvisoHook.default_conn_name,
                 event_interval: float = DEFAULT_EVENT_INTERVAL, start_from: str = "unpause",
                 start_lookback: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Checked here, so a typo is an import error of the DAG file rather than a watcher failing in a loop.
        _requests.check_static(event, request, templates=False)
        _requests.check_conn_id(aviso_conn_id)
        if not _seconds(event_interval):
            raise ValidationError("event_interval", event_interval, "expected a number of seconds >= 0")
        if start_from not in START_FROM:
            raise ValidationError("start_from", start_from, "expected one of: " + ", ".join(START_FROM))
        if start_lookback is not None and not _seconds(start_lookback):
            raise ValidationError("start_lookback", start_lookback, "expected a number of seconds >= 0, or None")
        self.start_from = start_from
        self.start_lookback = None if start_lookback is None else float(start_lookback)
        self.event = event
        self.request = request
        self.aviso_conn_id = aviso_conn_id
        self.event_interval = float(event_interval)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "event": self.event, "request": self.request, "aviso_conn_id": self.aviso_conn_id,
            "event_interval": self.event_interval, "start_from": self.start_from,
            "start_lookback": self.start_lookback,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Used when run by hand: the position is saved when the caller asks for the next event."""
        state = WatcherState(self.asset_state_store, self.trigger_id)
        gatherer = Gatherer(_follow(self.serialize()[1], state))
        try:
            while True:
                batch = await gatherer.take()
                try:
                    yield TriggerEvent(batch_payload(batch))
                finally:
                    await state.save(Position(batch[-1].revision, batch[-1].key))
        finally:
            await gatherer.close()

    def shared_stream_key(self) -> Hashable | None:
        """In a triggerer (which gives a state store): use Airflow's acknowledged shared stream."""
        if self.asset_state_store is None:
            return None
        key = _stream_key(*self.serialize())
        _STATE_STORES[key] = WatcherState(self.asset_state_store, self.trigger_id)
        return key

    @classmethod
    def create_shared_stream_producer(cls, kwargs: dict[str, Any]) -> SharedStreamProducer:
        return NotificationStream(kwargs, _STATE_STORES[_stream_key(f"{cls.__module__}.{cls.__qualname__}", kwargs)])

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        async for payload in shared_stream:
            yield TriggerEvent(payload)


def _seconds(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and value >= 0


class WatcherState:
    """An asset's state store as one watcher (trigger ``trigger_id``) uses it: where it is, and who saved it."""

    def __init__(self, store: Any, trigger_id: int | None) -> None:
        self.store = store
        self.trigger_id = trigger_id

    async def saved(self, name: str) -> Any:
        return await self.store.aget(name) if self.store is not None else None

    async def save(self, position: Position) -> None:
        if self.store is not None:
            await self.store.aset(CURSOR_KEY, {"revision": position.revision, "key": position.key,
                                               "trigger": self.trigger_id})


#: The state of each event trigger running in this process, by stream key: the triggerer builds a
#: stream's producer from the trigger's serialized arguments alone.
_STATE_STORES: dict[tuple[str, str], WatcherState] = {}


def _stream_key(classpath: str, kwargs: dict[str, Any]) -> tuple[str, str]:
    return classpath, json.dumps(kwargs, sort_keys=True, default=str)


def batch_payload(batch: Sequence[Notification]) -> dict[str, Any]:
    """The payload of the asset event carrying ``batch``."""
    return {"notifications": [notification.to_dict() for notification in batch]}


class Gatherer:
    """Reads notifications ahead (at most ``limit`` waiting), so that one asset event can carry all those
    already seen: a transaction's keys arrive together and are taken together."""

    def __init__(self, notifications: AsyncGenerator[Notification, None], limit: int = MAX_BATCH) -> None:
        self._waiting: asyncio.Queue[Notification] = asyncio.Queue(limit)
        self._arrived = asyncio.Event()
        self._limit = limit
        self._reader = asyncio.create_task(self._read(notifications))

    async def _read(self, notifications: AsyncGenerator[Notification, None]) -> None:
        try:
            async with aclosing(notifications) as found:
                async for notification in found:
                    await self._waiting.put(notification)
                    self._arrived.set()
        finally:
            self._arrived.set()  # wake the taker: it reports how the reading ended

    async def ready(self) -> None:
        """Return once a notification waits; raise why the reading ended if it did."""
        while self._waiting.empty():
            if self._reader.done():
                self._reader.result()
                raise AvisoWorkflowsError("the watcher's notifications ended")
            self._arrived.clear()
            await self._arrived.wait()

    async def take(self) -> list[Notification]:
        """Every notification waiting now (at least one; at most ``limit``), in write order."""
        await self.ready()
        return [self._waiting.get_nowait() for _ in range(min(self._waiting.qsize(), self._limit))]

    async def close(self) -> None:
        self._reader.cancel()
        try:
            await self._reader
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - ending: why the reading ended was reported
            pass


class NotificationStream(SharedStreamProducer):
    """The notifications after the saved position, one batch per asset event; :meth:`advance` moves the
    position once Airflow has stored the batch's asset event.

    Why one batch at a time, ``event_interval`` apart: Airflow 3.3 queues an asset-triggered DAG with one
    row per asset (AssetDagRunQueue) made when the first unconsumed event is stored; the scheduler's run
    takes the events stored up to that row's creation and deletes the row. An event stored while the row
    waits is left behind until the asset's next event. One event per batch puts a transaction's keys in
    one run; holding the next batch until the previous event is stored and ``event_interval`` seconds
    have passed gives the scheduler time to consume the row, so the next event makes a row of its own.
    """

    def __init__(self, arguments: dict[str, Any], state: WatcherState) -> None:
        self.arguments = arguments
        self.state = state
        self.event_interval = float(arguments.get("event_interval", DEFAULT_EVENT_INTERVAL))
        self.unconfirmed = asyncio.Semaphore(1)
        self.last_stored: float | None = None

    async def open_stream(self) -> AsyncGenerator[tuple[dict[str, Any], Position], None]:
        gatherer = Gatherer(_follow(self.arguments, self.state))
        try:
            while True:
                await gatherer.ready()
                await self.unconfirmed.acquire()
                await self._keep_apart()
                batch = await gatherer.take()  # what arrived meanwhile joins this event
                yield batch_payload(batch), Position(batch[-1].revision, batch[-1].key)
        finally:
            await gatherer.close()

    async def _keep_apart(self) -> None:
        if self.last_stored is not None:
            delay = self.last_stored + self.event_interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    async def advance(self, batch: Sequence[AdvanceItem]) -> None:
        stored = list(itertools.takewhile(lambda item: item.outcome.is_clean, batch))
        for _ in batch:
            self.unconfirmed.release()
        if stored:
            self.last_stored = time.monotonic()
            await asyncio.wait_for(self.state.save(stored[-1].broker_payload), SAVE_SECONDS)
        if len(stored) < len(batch):  # ending the stream makes the triggerer start the watcher again from here
            missed = batch[len(stored)]
            raise AvisoWorkflowsError(f"Airflow did not confirm storing the asset event of {missed.broker_payload.key} "
                                      f"({missed.outcome}); the watcher resumes before it")


async def _follow(arguments: dict[str, Any], state: WatcherState) -> AsyncGenerator[Notification, None]:
    """The notifications of an event trigger's ``arguments`` after its saved position, as they come."""
    store = await AvisoHook(arguments.get("aviso_conn_id", AvisoHook.default_conn_name)).aget_conn()
    request = store.request(arguments["event"], arguments["request"])
    start = await _load_position(state, store, request, arguments.get("start_from", "unpause"),
                                 arguments.get("start_lookback"))
    async with aclosing(listen_async(store, [request], after=start)) as found:
        async for notification in found:
            yield notification


async def _load_position(state: WatcherState, store: Store, request: Request, start_from: str = "unpause",
                         lookback: float | None = None) -> Position:
    """The saved position, or where a new watcher starts (saved at once, so a watcher that stops early misses
    nothing after it).

    Two entries say where the watcher is: its own position (moved once Airflow confirms storing an event)
    and ``aviso_stored``, written by the plugin's listener in the very transaction that stores an event;
    the later one wins, so notifications whose events were stored before a crash are not stored again.
    """
    own = await state.saved(CURSOR_KEY)
    found = [position for position in (_position(own), _position(await state.saved(STORED_KEY)))
             if position is not None]
    if start_from == "now" and isinstance(own, dict) and own.get("trigger") != state.trigger_id:
        found = []  # a new watcher (deployed or unpaused again): what came meanwhile is skipped
    if found:
        position = max(found, key=lambda p: place(p.revision, p.key))
        log.info("asset watcher resumes after its saved position: revision %d, key %s", position.revision,
                 position.key)
        return position
    if start_from == "now" or state.store is None:
        position = await asyncio.to_thread(store.now)
        log.info("asset watcher starts from now: revision %d (no saved position)", position.revision)
    else:
        seconds = lookback if lookback is not None else default_lookback()
        since = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(seconds=seconds)  # naive UTC, as stored
        position = await asyncio.to_thread(_first_since, store, request, since)
        log.info("asset watcher starts at the first notification posted since %s (%.0f s before it started, "
                 "no saved position): after revision %d", since.strftime("%H:%M:%S"), seconds, position.revision)
    await state.save(position)
    return position


def default_lookback() -> float:
    """How long before its start a new watcher looks: Airflow starts it up to a parse interval after its DAG is
    deployed (a new file is found every ``refresh_interval``) or unpaused (``min_file_process_interval``)."""
    intervals = [conf.getfloat("dag_processor", name, fallback=fallback)
                 for name, fallback in (("min_file_process_interval", 30.0), ("refresh_interval", 300.0))]
    return max(intervals) + START_MARGIN


def _first_since(store: Store, request: Request, since: dt.datetime) -> Position:
    """The position just before the first notification posted at or after ``since`` (else now)."""
    return store.first_after([request], since)


def _position(saved: Any) -> Position | None:
    revision = saved.get("revision") if isinstance(saved, dict) else None
    if isinstance(saved, dict) and isinstance(revision, int):
        return Position(revision, str(saved.get("key", END_OF_REVISION)))
    return None
