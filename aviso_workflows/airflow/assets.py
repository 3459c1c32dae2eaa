"""Reading the notifications of an asset-triggered run."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..position import place


def aviso_notifications(context: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every notification of the run of ``context`` (a task's context), from all its asset events, in write order.

    Airflow may give one run several asset events, and one asset event may carry several notifications
    (those seen together): this reads them all. A run not triggered by assets (manual, ``dag.test()``) has none.
    """
    events = context.get("triggering_asset_events") or {}
    everything = [event for asset_events in events.values() for event in asset_events]
    return asset_notifications(everything)


def asset_notifications(events: Iterable[Any] | None) -> list[dict[str, Any]]:
    """The notifications carried by asset events (e.g. ``triggering_asset_events[asset]``), in write order.

    Airflow may hand one run several events, and in no promised order: this reads every one of them and
    orders their notifications as they were written (a transaction's keys by key); a notification met twice
    (two assets fed by one request) is given once. Events that did not come from an aviso watcher are left out.
    """
    found: dict[tuple[int, str], dict[str, Any]] = {}
    for event in events or ():
        extra = getattr(event, "extra", None)
        payload = extra.get("payload") if isinstance(extra, dict) else None
        for notification in payload_notifications(payload):
            found.setdefault((int(notification["revision"]), str(notification["key"])), notification)
    return [found[spot] for spot in sorted(found, key=lambda spot: place(*spot))]


def payload_notifications(payload: Any) -> list[dict[str, Any]]:
    """The notifications of one asset event's payload: ``{"notifications": [...]}`` (or one notification's dict)."""
    if isinstance(payload, dict) and isinstance(payload.get("notifications"), list):
        return [n for n in payload["notifications"] if _is_notification(n)]
    return [payload] if _is_notification(payload) else []


def _is_notification(payload: Any) -> bool:
    return isinstance(payload, dict) and "key" in payload and isinstance(payload.get("revision"), int)
