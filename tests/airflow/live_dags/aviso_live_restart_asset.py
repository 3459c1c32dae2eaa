"""An asset fed by an AvisoEventTrigger, for the triggerer-restart test: one asset event per notification."""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Asset, AssetWatcher, task

from aviso_workflows.airflow import AvisoEventTrigger, aviso_notifications

STREAM = Asset("aviso_restart_stream", watchers=[AssetWatcher(
    name="aviso_restart_stream_watcher",
    trigger=AvisoEventTrigger(event="mars", request={"class": "rd", "expver": "rst2", "domain": "g",
                                                     "stream": "oper"}),
)])

with DAG("aviso_live_restart_asset", schedule=[STREAM], catchup=False, max_active_runs=1):

    @task
    def keys(**context: Any) -> list[str]:
        """The notification keys of the asset events this run consumed."""
        return [notification["key"] for notification in aviso_notifications(context)]

    keys()
