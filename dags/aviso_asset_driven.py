"""Asset-driven: one run per notification of operational forecast data, whatever the date or step."""

from __future__ import annotations

from airflow.sdk import DAG, Asset, AssetWatcher, task

from aviso_workflows.airflow import AvisoEventTrigger

MARS_OPER = Asset("aviso_mars_oper", watchers=[AssetWatcher(
    name="aviso_mars_oper_watcher",
    trigger=AvisoEventTrigger(event="mars", request={"class": "od", "expver": 1, "domain": "g", "stream": "oper"}),
)])

with DAG("aviso_asset_driven", schedule=[MARS_OPER], catchup=False, tags=["aviso", "example"]):

    @task
    def react(triggering_asset_events=None) -> list[str]:
        """Each asset event's extra holds the notification (event, request, location, key, revision)."""
        keys = []
        for event in triggering_asset_events[MARS_OPER] if triggering_asset_events else []:
            notification = event.extra["payload"]
            print(f"{notification['key']} -> {notification.get('location')}")
            keys.append(notification["key"])
        return keys

    react()
