"""An asset-driven DAG whose task returns every notification of its run: each must be handled once, promptly."""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Asset, AssetWatcher, task

from aviso_workflows.airflow import AvisoEventTrigger, aviso_notifications

HANDLED = Asset("aviso_handled", watchers=[AssetWatcher(
    name="aviso_handled_watcher",
    trigger=AvisoEventTrigger(event="mars", request={"class": "rd", "expver": "hnd1", "domain": "g",
                                                     "stream": "oper"}),
)])

with DAG("aviso_live_handled", schedule=[HANDLED], catchup=False):

    @task
    def handle(**context: Any) -> list[str]:
        """The keys of every notification of this run."""
        return [notification["key"] for notification in aviso_notifications(context)]

    handle()
