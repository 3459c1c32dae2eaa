"""Deferred sensors for the triggerer-restart test: each run waits for steps 0 and 6 of its own date."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task

from aviso_workflows.airflow import AvisoSensor

with DAG("aviso_live_restart_sensor", schedule=None, start_date=pendulum.datetime(2000, 1, 1, tz="UTC"),
         catchup=False, max_active_runs=16):
    wait = AvisoSensor(task_id="wait_for_steps", event="mars", deferrable=True, timeout=3600,
                       request={"class": "rd", "expver": "rst1", "domain": "g", "stream": "oper", "time": 0,
                                "step": "0/6"})

    @task
    def locations(notifications: list[dict]) -> list[str]:
        """What the sensor handed over: one location per step, in step order."""
        return [n["location"] for n in sorted(notifications, key=lambda n: int(n["request"]["step"]))]

    locations(wait.output)
