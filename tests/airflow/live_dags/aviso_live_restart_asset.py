"""An asset fed by an AvisoEventTrigger, for the triggerer-restart test: one asset event per notification."""

from __future__ import annotations

from airflow.sdk import DAG, Asset, AssetWatcher, task

from aviso_workflows.airflow import AvisoEventTrigger

STREAM = Asset("aviso_restart_stream", watchers=[AssetWatcher(
    name="aviso_restart_stream_watcher",
    trigger=AvisoEventTrigger(event="mars", request={"class": "rd", "expver": "rst2", "domain": "g",
                                                     "stream": "oper"}),
)])

with DAG("aviso_live_restart_asset", schedule=[STREAM], catchup=False, max_active_runs=1):

    @task
    def keys(triggering_asset_events=None) -> list[str]:
        """The notification keys of the asset events this run consumed."""
        events = triggering_asset_events[STREAM] if triggering_asset_events else []
        return [event.extra["payload"]["key"] for event in events]

    keys()
