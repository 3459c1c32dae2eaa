"""aviso-server's admin routes over our store (src/routes/admin.rs, aviso-server 0.7.1).

- ``DELETE /api/v1/admin/notification/{event@sequence}``: deletes that notification's key if the key still
  holds it (etcd keeps history: what was read before is not unread; a key written again since is 404).
- ``DELETE /api/v1/admin/wipe/stream`` with ``{"stream_name": EVENT}``: deletes every key of that event
  (the event's name or its topic base, any case, as aviso-server resolves it).
- ``DELETE /api/v1/admin/wipe/all``: deletes every key of every event served.

Bodies as aviso-server's: ``{success, message, request_id}`` (and ``notification_id`` for a delete). They
are writes: with ``--tokens`` or ``--etcd-auth`` the caller needs write access to each event touched.

etcd's history cannot be edited, and replays read it: so each of these also writes a marker under
``/aviso-workflows/admin/`` in the same transaction — the sequence deleted, or the revision an event was
wiped at — and a stream opened later leaves out what the markers name (:func:`removed`).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse

from ..errors import PermissionDenied, StoreError
from ..etcd import b64, delete_op, put_op
from ..position import key_order
from ..schema import EventSchema
from ..watch import one_line
from .auth import refusal
from .protocol import SEQUENCE_SLOTS, ApiError
from .streams import Removed

if TYPE_CHECKING:
    from ..store import Store
    from .state import ServeState


def event_prefix(schema: EventSchema) -> str:
    """The prefix of every key of an event: its base up to the first field, with the status key."""
    return schema.base.split("{", 1)[0].rstrip("/") + "/"


def _resolve(state: ServeState, name: str) -> EventSchema | None:
    """An event by its name, or by its topic base (any case), as aviso-server resolves a stream name."""
    for schema in state.schemas:
        event = state.events.get(schema.name)
        if name.lower() in (schema.name.lower(), event.topic_base.lower() if event else schema.name.lower()):
            return schema
    return None


#: Where the markers of deletes and wipes are kept.
MARKERS = "/aviso-workflows/admin/"


def _markers(schema: EventSchema) -> str:
    """Where the markers of an event's keys are: named by the keys' prefix, not the event's name, so a built-in
    ``mars`` and a configured one on the same etcd do not share them."""
    return f"{MARKERS}{event_prefix(schema).strip('/')}/"


def removed(store: Store, schema: EventSchema) -> Removed:
    """The markers of ``schema``'s keys (none if the store's user may not read them)."""
    markers = _markers(schema)
    try:
        _, kvs = store.gateway.range_all(markers)
    except PermissionDenied:
        return Removed()
    sequences = {int(kv.key.rsplit("/", 1)[1]) for kv in kvs if kv.key.startswith(f"{markers}deleted/")}
    wiped = [int(kv.value) for kv in kvs if kv.key == f"{markers}wiped" and kv.value.isdigit()]
    return Removed(frozenset(sequences), max(wiped, default=0))


def _wipe(store: Store, schema: EventSchema) -> None:
    """Delete every key of the event, then mark it wiped up to the revision of that delete."""
    prefix = event_prefix(schema)
    revision = int(store.gateway.txn([], [delete_op(prefix, prefix_of=prefix)])["header"]["revision"])
    store.gateway.txn([], [put_op(f"{_markers(schema)}wiped", str(revision))])


def _delete_sequence(store: Store, prefix: str, schemas: list[EventSchema], schema: EventSchema,
                     sequence: int) -> bool:
    """Delete the key of ``sequence`` if it belongs to ``schema`` and still holds that notification (numbered
    as protocol.read_batch numbers the notification keys of a revision)."""
    revision, index = divmod(sequence, SEQUENCE_SLOTS)
    _, written = store.gateway.range_all(prefix, min_mod_revision=revision, max_mod_revision=revision)
    keys = sorted({kv.key for kv in written if any(s.parse_key(kv.key) is not None for s in schemas)},
                  key=lambda key: (key_order(key), key))
    if index >= len(keys) or schema.parse_key(keys[index]) is None or removed(store, schema).hides(sequence):
        return False
    key = keys[index]
    still = [{"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": revision}]
    marker = put_op(f"{_markers(schema)}deleted/{sequence}", key)
    store.gateway.txn(still, [delete_op(key), marker], [marker])  # written again since: the newer post stays, marked
    return True


def admin_router(state: ServeState) -> APIRouter:
    """The admin routes of ``state``'s server."""
    router = APIRouter()

    def answer(request: HttpRequest, status: int, body: dict[str, Any]) -> JSONResponse:
        return JSONResponse({**body, "request_id": getattr(request.state, "request_id", "")}, status)

    def writer(request: HttpRequest, schema: EventSchema) -> Store:
        return state.auth.store_for(request.headers.get("authorization"), schema.name, "write")

    async def run(request: HttpRequest, work: Any, failure: str) -> JSONResponse | None:
        try:
            await asyncio.to_thread(work)
        except PermissionDenied as error:
            raise refusal(error) from None
        except StoreError as error:
            return answer(request, 500, {"success": False, "message": f"{failure}: {one_line(error)}"})
        return None

    @router.delete("/api/v1/admin/notification/{notification_id}")
    async def delete_notification(notification_id: str, request: HttpRequest) -> JSONResponse:
        stream, _, number = notification_id.strip().partition("@")
        problem = None
        if not stream or not number:
            problem = "notification_id must be in '<stream>@<sequence>' format"
        elif not number.isdigit():
            problem = "notification_id sequence must be a positive integer"
        elif int(number) == 0:
            problem = "notification_id sequence must be greater than zero"
        schema = _resolve(state, stream) if problem is None else None
        if problem is not None:
            return answer(request, 400, {"success": False, "message": problem, "notification_id": notification_id})
        found = {"deleted": False}
        if schema is not None:
            store = writer(request, schema)

            def work() -> None:
                found["deleted"] = _delete_sequence(store, state.hub.prefix, state.schemas, schema, int(number))

            failed = await run(request, work, "Failed to delete notification")
            if failed is not None:
                return failed
        if not found["deleted"]:
            return answer(request, 404, {"success": False, "message": "Notification not found",
                                         "notification_id": notification_id})
        return answer(request, 200, {"success": True, "message": "Notification deleted",
                                     "notification_id": notification_id})

    @router.delete("/api/v1/admin/wipe/stream")
    async def wipe_stream(request: HttpRequest) -> JSONResponse:
        try:
            body = json.loads(await request.body())
        except ValueError as error:
            raise ApiError(400, "INVALID_JSON", "Invalid Request", f"JSON parsing failed: {error}") from None
        name = body.get("stream_name") if isinstance(body, dict) else None
        if not isinstance(name, str):
            raise ApiError(400, "INVALID_REQUEST_SHAPE", "Invalid Request", "the body is {\"stream_name\": text}")
        schema = _resolve(state, name)
        if schema is None:
            return answer(request, 500, {"success": False, "message": f"Failed to wipe stream: stream {name!r} is "
                                         f"not served; streams: {', '.join(sorted(state.registry.names()))}"})
        store = writer(request, schema)
        failed = await run(request, lambda: _wipe(store, schema), "Failed to wipe stream")
        return failed or answer(request, 200, {"success": True, "message": f"Successfully wiped stream: {name}"})

    @router.delete("/api/v1/admin/wipe/all")
    async def wipe_all(request: HttpRequest) -> JSONResponse:
        stores = [(writer(request, schema), schema) for schema in state.schemas]

        def work() -> None:
            for store, schema in stores:
                _wipe(store, schema)

        failed = await run(request, work, "Failed to wipe all data")
        return failed or answer(request, 200, {"success": True, "message": "Successfully wiped all data"})

    return router


__all__ = ["MARKERS", "Removed", "admin_router", "event_prefix", "removed"]
