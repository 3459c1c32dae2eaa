"""Records, in the same database transaction as an asset watcher's event, the last notification it carried.

Airflow's triggerer confirms a stored asset event to the trigger only on its next state sync, and an
asset watcher's own position moves on that confirmation: a triggerer that dies in between leaves the
position behind events already stored, and the watcher that takes over would store them again. This
listener (loaded by the ``aviso_workflows`` Airflow plugin) runs inside ``register_asset_change``, on the
session that stores the event, and keeps the asset state store's ``aviso_stored`` entry at the event's
last notification: the event and the entry are committed together or not at all, so a watcher that
resumes from it repeats nothing.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from airflow.listeners import hookimpl

#: The asset state store key holding the last notification whose asset event is stored.
STORED_KEY = "aviso_stored"

log = logging.getLogger(__name__)


@hookimpl
def on_asset_event_emitted(asset_event: Any) -> None:
    """Keep ``aviso_stored`` at the last notification of an aviso watcher's asset event (same transaction)."""
    extra = getattr(asset_event, "extra", None) or {}
    last = last_carried(extra.get("payload")) if extra.get("from_trigger") else None
    if last is None:
        return
    from airflow import settings

    scoped = settings.Session  # the scoped session: in this thread, the very one storing the asset event
    if scoped is None:
        return
    session = scoped()
    try:
        with session.begin_nested():  # a failure here must not undo the asset event
            record_stored(session, asset_event.asset.name, asset_event.asset.uri, last)
    except Exception as error:  # noqa: BLE001 - the watcher falls back on its confirmed position
        log.warning("could not record the stored position of asset %s: %s", asset_event.asset.name, error)


def last_carried(payload: Any) -> dict[str, Any] | None:
    """``{"revision", "key"}`` of the last notification an aviso watcher's payload carries, else None."""
    notifications = payload.get("notifications") if isinstance(payload, dict) else None
    if not isinstance(notifications, list) or not notifications:
        return None
    last = notifications[-1]
    if not isinstance(last, dict) or not isinstance(last.get("revision"), int) or "key" not in last:
        return None
    return {"revision": last["revision"], "key": str(last["key"])}


def record_stored(session: Any, name: str, uri: str, position: dict[str, Any]) -> None:
    """Move the asset's ``aviso_stored`` entry to ``position`` (never back)."""
    from airflow._shared.state import AssetScope
    from airflow.models.asset import AssetModel
    from airflow.state import get_state_backend
    from sqlalchemy import select

    from ..position import place

    asset_id = session.scalar(select(AssetModel.id).where(AssetModel.name == name, AssetModel.uri == uri))
    if asset_id is None:
        return
    backend, scope = get_state_backend(), AssetScope(asset_id=asset_id)
    saved = backend.get(scope, STORED_KEY, session=session)
    before = json.loads(saved) if saved else None
    if isinstance(before, dict) and isinstance(before.get("revision"), int) and \
            place(before["revision"], str(before.get("key", ""))) >= place(position["revision"], position["key"]):
        return
    backend.set(scope, STORED_KEY, json.dumps(position), session=session)
