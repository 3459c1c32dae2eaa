"""Reading the notifications of an asset-triggered run."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..position import place


def asset_notifications(events: Iterable[Any] | None) -> list[dict[str, Any]]:
    """The notifications carried by a run's asset events (``triggering_asset_events[asset]``), in write order.

    Airflow may hand one run several events, and in no promised order: this reads every one of them and
    orders them as they were written (a transaction's keys by key, numbers by value). Events that did not
    come from an aviso watcher are left out.
    """
    found = [event.extra["payload"] for event in events or ()
             if isinstance(getattr(event, "extra", None), dict) and _is_notification(event.extra.get("payload"))]
    return sorted(found, key=lambda n: place(int(n["revision"]), str(n["key"])))


def _is_notification(payload: Any) -> bool:
    return isinstance(payload, dict) and "key" in payload and isinstance(payload.get("revision"), int)
