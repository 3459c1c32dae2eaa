"""A DAG file with a typo in its asset watcher's request: it must fail to import, naming the field."""

from __future__ import annotations

from airflow.sdk import DAG, Asset, AssetWatcher

from aviso_workflows.airflow import AvisoEventTrigger

TYPO = Asset("aviso_live_typo", watchers=[AssetWatcher(
    name="aviso_live_typo_watcher",
    trigger=AvisoEventTrigger(event="mars", request={"clas": "od", "stream": "oper"}),
)])

with DAG("aviso_live_bad_watcher", schedule=[TYPO]):
    pass
