"""Deployed while the stack runs: what is posted between its deploy (or unpause) and its watcher's start,
or while it is paused, is handled."""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Asset, AssetWatcher, task

from aviso_workflows.airflow import AvisoEventTrigger, aviso_notifications

HANDLED = Asset("aviso_deployed", watchers=[AssetWatcher(
    name="aviso_deployed_watcher",
    trigger=AvisoEventTrigger(event="mars", request={"class": "rd", "expver": "dep1", "domain": "g",
                                                     "stream": "oper"}),
)])

with DAG("aviso_live_deployed", schedule=[HANDLED], catchup=False):

    @task
    def handle(**context: Any) -> list[str]:
        """The keys of every notification of this run."""
        return [notification["key"] for notification in aviso_notifications(context)]

    handle()
