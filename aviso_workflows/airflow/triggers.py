"""Triggers: wait for a request's keys (deferred sensors) and follow notifications (asset watchers).

Both run in the triggerer's event loop: the core's asyncio waits do their blocking reads in worker
threads and share one etcd watch per store and prefix, however many triggers run.
"""

from __future__ import annotations

import asyncio
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

from ..errors import AvisoWorkflowsError, WaitTimeout
from ..listen import END_OF_REVISION, Position, listen_async, wait_async
from ..store import Notification, Store
from . import _requests
from .hooks import AvisoHook

log = logging.getLogger(__name__)
#: Where an AvisoEventTrigger keeps its position in the asset's state store.
CURSOR_KEY = "aviso_cursor"
#: Notifications an asset watcher hands to Airflow before their asset events are confirmed stored.
MAX_UNCONFIRMED = 256
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
        _requests.check_static(event, request, wait_for, templates=False)
        _requests.check_conn_id(aviso_conn_id)
        self.event = event
        self.request = request
        self.aviso_conn_id = aviso_conn_id
        self.wait_for = wait_for
        self.known = list(known or [])
        self.deadline = deadline
        self.min_found = min_found
        self.who = dict(who) if who is not None else {"kind": "airflow-trigger"}

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "event": self.event, "request": self.request, "aviso_conn_id": self.aviso_conn_id,
            "wait_for": self.wait_for, "known": self.known, "deadline": self.deadline,
            "min_found": self.min_found, "who": self.who,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        timeout = None if self.deadline is None else max(0.0, self.deadline - time.time())
        try:
            store = await AvisoHook(self.aviso_conn_id).aget_conn()
            request = store.request(self.event, self.request)
            found = await wait_async(store, request, mode=self.wait_for, timeout=timeout,
                                     known=[Notification.from_dict(n) for n in self.known],
                                     on_progress=self._progress, min_found=self.min_found, who=self.who)
        except WaitTimeout as error:
            missing = _requests.missing_keys(request, (n.key for n in error.found), self.wait_for)
            yield TriggerEvent({"status": "error", "reason": "timeout",
                                "message": f"timed out after waiting until the sensor's timeout; {missing}"})
            return
        except AvisoWorkflowsError as error:
            yield TriggerEvent({"status": "error", "message": str(error)})
            return
        yield TriggerEvent({"status": "success", "notifications": [n.to_dict() for n in found],
                            **({"missing": found.missing} if found.partial else {})})

    def _progress(self, count: int, total: int, notification: Notification) -> None:
        if total > 1:  # a wait for one key says it all when it fires; thousands of them log nothing extra
            self.log.info("%d/%d available: %s", count, total, notification.key)


class AvisoEventTrigger(BaseEventTrigger):
    """Yields one event per notification matching ``request``, in write order, for AssetWatcher.

    The payload is the notification's dict (``event``, ``request``, ``location``, ``key``,
    ``revision``); Airflow puts it in the asset event's extra under ``payload``. The position reached
    is kept in the asset's state store. In a triggerer the notifications flow through Airflow's
    acknowledged shared stream: the position moves past a notification only once Airflow has stored
    its asset event, so a triggerer that stops or dies resumes at the first notification not yet
    stored (one stored just before the stop may come again; none is lost). Without a state store (a
    trigger run by hand) it starts from now.
    """

    def __init__(self, *, event: str, request: dict[str, Any], aviso_conn_id: str = AvisoHook.default_conn_name,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Checked here, so a typo is an import error of the DAG file rather than a watcher failing in a loop.
        _requests.check_static(event, request, templates=False)
        _requests.check_conn_id(aviso_conn_id)
        self.event = event
        self.request = request
        self.aviso_conn_id = aviso_conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "event": self.event, "request": self.request, "aviso_conn_id": self.aviso_conn_id,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Used when run by hand: the position is saved when the caller asks for the next event."""
        async with aclosing(_follow(self.serialize()[1], self.asset_state_store)) as notifications:
            async for notification in notifications:
                try:
                    yield TriggerEvent(notification.to_dict())
                finally:
                    await _save_position(self.asset_state_store, Position(notification.revision, notification.key))

    def shared_stream_key(self) -> Hashable | None:
        """In a triggerer (which gives a state store): use Airflow's acknowledged shared stream."""
        if self.asset_state_store is None:
            return None
        key = _stream_key(*self.serialize())
        _STATE_STORES[key] = self.asset_state_store
        return key

    @classmethod
    def create_shared_stream_producer(cls, kwargs: dict[str, Any]) -> SharedStreamProducer:
        return NotificationStream(kwargs, _STATE_STORES[_stream_key(f"{cls.__module__}.{cls.__qualname__}", kwargs)])

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        async for payload in shared_stream:
            yield TriggerEvent(payload)


#: The asset state store of each event trigger running in this process, by stream key: the triggerer
#: builds a stream's producer from the trigger's serialized arguments alone.
_STATE_STORES: dict[tuple[str, str], Any] = {}


def _stream_key(classpath: str, kwargs: dict[str, Any]) -> tuple[str, str]:
    return classpath, json.dumps(kwargs, sort_keys=True, default=str)


class NotificationStream(SharedStreamProducer):
    """The notifications after the saved position; :meth:`advance` moves the position once Airflow has
    stored their asset events. At most ``MAX_UNCONFIRMED`` notifications (fewer if the triggerer's
    subscriber queue is smaller) are handed over unconfirmed, so a long catch-up never overflows it.
    """

    def __init__(self, arguments: dict[str, Any], state_store: Any) -> None:
        self.arguments = arguments
        self.state_store = state_store
        queue_size = conf.getint("triggerer", "shared_stream_subscriber_queue_size", fallback=MAX_UNCONFIRMED)
        self.unconfirmed = asyncio.Semaphore(max(1, min(MAX_UNCONFIRMED, queue_size)))

    async def open_stream(self) -> AsyncGenerator[tuple[dict[str, Any], Position], None]:
        async with aclosing(_follow(self.arguments, self.state_store)) as notifications:
            async for notification in notifications:
                await self.unconfirmed.acquire()
                yield notification.to_dict(), Position(notification.revision, notification.key)

    async def advance(self, batch: Sequence[AdvanceItem]) -> None:
        stored = list(itertools.takewhile(lambda item: item.outcome.is_clean, batch))
        for _ in batch:
            self.unconfirmed.release()
        if stored:
            await asyncio.wait_for(_save_position(self.state_store, stored[-1].broker_payload), SAVE_SECONDS)
        if len(stored) < len(batch):  # ending the stream makes the triggerer start the watcher again from here
            missed = batch[len(stored)]
            raise AvisoWorkflowsError(f"Airflow did not confirm storing the asset event of {missed.broker_payload.key} "
                                      f"({missed.outcome}); the watcher resumes before it")


async def _follow(arguments: dict[str, Any], state_store: Any) -> AsyncGenerator[Notification, None]:
    """The notifications of an event trigger's ``arguments`` after its saved position, as they come."""
    store = await AvisoHook(arguments.get("aviso_conn_id", AvisoHook.default_conn_name)).aget_conn()
    request = store.request(arguments["event"], arguments["request"])
    async with aclosing(listen_async(store, [request], after=await _load_position(state_store, store))) as found:
        async for notification in found:
            yield notification


async def _load_position(state_store: Any, store: Store) -> Position:
    """The saved position, or now (saved at once, so a watcher that stops early misses nothing after it)."""
    saved = await state_store.aget(CURSOR_KEY) if state_store is not None else None
    revision = saved.get("revision") if isinstance(saved, dict) else None
    if isinstance(revision, int) and isinstance(saved, dict):
        position = Position(revision, str(saved.get("key", END_OF_REVISION)))
        log.info("asset watcher resumes after its saved position: revision %d, key %s", position.revision,
                 position.key)
        return position
    position = await asyncio.to_thread(store.now)
    log.info("asset watcher starts from now: revision %d (no saved position)", position.revision)
    await _save_position(state_store, position)
    return position


async def _save_position(state_store: Any, position: Position) -> None:
    if state_store is not None:
        await state_store.aset(CURSOR_KEY, {"revision": position.revision, "key": position.key})

