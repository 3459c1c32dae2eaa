"""Asset-driven: runs on notifications of operational forecast data, whatever the date or step.

Every notification becomes one asset event, in write order. Airflow may hand several events to one
run (notifications posted together, or within one scheduler loop), so a run reads all of its events,
never only the first. For exactly one run per notification, use the ``airflow`` listener action.
"""

from __future__ import annotations

from airflow.sdk import DAG, Asset, AssetWatcher, task

from aviso_workflows.airflow import AvisoEventTrigger, asset_notifications

MARS_OPER = Asset("aviso_mars_oper", watchers=[AssetWatcher(
    name="aviso_mars_oper_watcher",
    trigger=AvisoEventTrigger(event="mars", request={"class": "od", "expver": 1, "domain": "g", "stream": "oper"}),
)])

with DAG("aviso_asset_driven", schedule=[MARS_OPER], catchup=False, tags=["aviso", "example"]):

    @task
    def react(triggering_asset_events=None) -> list[str]:
        """Handle every notification of this run (one per asset event), in write order."""
        keys = []
        events = triggering_asset_events[MARS_OPER] if triggering_asset_events else None  # None: a test run
        for notification in asset_notifications(events):
            print(f"{notification['key']} -> {notification.get('location')}")  # also: event, request, revision
            keys.append(notification["key"])
        return keys

    react()
