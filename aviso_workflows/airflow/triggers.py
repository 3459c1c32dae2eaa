"""Triggers: wait for a request's keys (deferred sensors) and follow notifications (asset watchers).

Both run in the triggerer's event loop: the core's asyncio waits do their blocking reads in worker
threads and share one etcd watch per store and prefix, however many triggers run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, BaseTrigger, TriggerEvent

from ..errors import AvisoWorkflowsError
from ..listen import END_OF_REVISION, Position, listen_async, wait_async
from ..store import Notification, Store
from .hooks import AvisoHook

#: Where an AvisoEventTrigger keeps its position in the asset's state store.
CURSOR_KEY = "aviso_cursor"


class AvisoTrigger(BaseTrigger):
    """Fires once every key of ``request`` exists (``wait_for="any"``: one matching key).

    ``request`` is a validated request as plain data (``Request.as_dict()``); ``known`` holds the
    notifications found before deferring, as dicts. The event's payload is
    ``{"status": "success", "notifications": [...]}`` or ``{"status": "error", "message": ...}``.
    """

    def __init__(self, *, event: str, request: dict[str, Any], aviso_conn_id: str = AvisoHook.default_conn_name,
                 wait_for: str = "all", known: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.event = event
        self.request = request
        self.aviso_conn_id = aviso_conn_id
        self.wait_for = wait_for
        self.known = list(known or [])

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "event": self.event, "request": self.request, "aviso_conn_id": self.aviso_conn_id,
            "wait_for": self.wait_for, "known": self.known,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            store = await AvisoHook(self.aviso_conn_id).aget_conn()
            found = await wait_async(store, store.request(self.event, self.request), mode=self.wait_for,
                                     known=[Notification.from_dict(n) for n in self.known],
                                     on_progress=self._progress)
        except AvisoWorkflowsError as error:
            yield TriggerEvent({"status": "error", "message": str(error)})
            return
        yield TriggerEvent({"status": "success", "notifications": [n.to_dict() for n in found]})

    def _progress(self, count: int, total: int, notification: Notification) -> None:
        if total > 1:  # a wait for one key says it all when it fires; thousands of them log nothing extra
            self.log.info("%d/%d available: %s", count, total, notification.key)


class AvisoEventTrigger(BaseEventTrigger):
    """Yields one event per notification matching ``request``, in write order, for AssetWatcher.

    The payload is the notification's dict (``event``, ``request``, ``location``, ``key``,
    ``revision``); Airflow puts it in the asset event's extra under ``payload``. The position reached
    is kept in the asset's state store, so a restarted triggerer resumes after the last notification
    it handed over; without a state store (a trigger run by hand) it starts from now.
    """

    def __init__(self, *, event: str, request: dict[str, Any], aviso_conn_id: str = AvisoHook.default_conn_name,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.event = event
        self.request = request
        self.aviso_conn_id = aviso_conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "event": self.event, "request": self.request, "aviso_conn_id": self.aviso_conn_id,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        store = await AvisoHook(self.aviso_conn_id).aget_conn()
        request = store.request(self.event, self.request)
        position = await self._load_position(store)
        notifications = listen_async(store, [request], after=position)
        try:
            async for notification in notifications:
                try:
                    yield TriggerEvent(notification.to_dict())
                finally:  # resumed or closed here, the triggerer holds the event: move the cursor past it
                    await self._save_position(Position(notification.revision, notification.key))
        finally:
            await notifications.aclose()

    async def _load_position(self, store: Store) -> Position:
        saved = await self.asset_state_store.aget(CURSOR_KEY) if self.asset_state_store is not None else None
        revision = saved.get("revision") if isinstance(saved, dict) else None
        if isinstance(revision, int) and isinstance(saved, dict):
            return Position(revision, str(saved.get("key", END_OF_REVISION)))
        position = Position(await _current_revision(store))
        await self._save_position(position)
        return position

    async def _save_position(self, position: Position) -> None:
        if self.asset_state_store is not None:
            await self.asset_state_store.aset(CURSOR_KEY, {"revision": position.revision, "key": position.key})


async def _current_revision(store: Store) -> int:
    return await asyncio.to_thread(store.current_revision)
