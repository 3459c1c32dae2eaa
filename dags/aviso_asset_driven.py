"""Asset-driven: runs on notifications of operational forecast data, whatever the date or step.

The watcher gives one asset event per batch of notifications seen together (a transaction's keys, or
those that came while the previous event was being stored), in write order; a run may also get several
events. ``aviso_notifications(context)`` returns every notification of the run, in write order. For exactly
one run per notification, use the ``airflow`` listener action.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Asset, AssetWatcher, task

from aviso_workflows.airflow import AvisoEventTrigger, aviso_notifications

MARS_OPER = Asset("aviso_mars_oper", watchers=[AssetWatcher(
    name="aviso_mars_oper_watcher",
    trigger=AvisoEventTrigger(event="mars", request={"class": "od", "expver": 1, "domain": "g", "stream": "oper"}),
)])

with DAG("aviso_asset_driven", schedule=[MARS_OPER], catchup=False, tags=["aviso", "example"]):

    @task
    def react(**context: Any) -> list[str]:
        """Handle every notification of this run, in write order."""
        keys = []
        for notification in aviso_notifications(context):
            print(f"{notification['key']} -> {notification.get('location')}")  # also: event, request, revision
            keys.append(notification["key"])
        return keys

    react()
