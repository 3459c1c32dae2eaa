"""A daily DAG for the live backfill test: research-class data (unseen by the example asset watcher)."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from aviso_workflows.airflow import AvisoSensor

with DAG("aviso_live_backfill", schedule="@daily", start_date=pendulum.datetime(2000, 1, 1, tz="UTC"),
         catchup=False, max_active_runs=5):
    AvisoSensor(task_id="wait_for_day", event="mars", deferrable=True, timeout=3600,
                request={"class": "rd", "expver": "abcd", "domain": "g", "stream": "oper", "time": 0, "step": 0})
