"""Consumer: a deferrable sensor waits for every step of the run's date, then processing uses the locations."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task

from aviso_workflows.airflow import AvisoSensor

with DAG("aviso_consumer", schedule=None, start_date=pendulum.datetime(2000, 1, 1, tz="UTC"), catchup=False,
         tags=["aviso", "example"]):
    wait = AvisoSensor(
        task_id="wait_for_steps",
        event="mars",
        request={"class": "od", "expver": 1, "domain": "g", "stream": "oper", "time": 0, "step": "0/to/12/by/6"},
        deferrable=True,
        timeout=6 * 3600,
    )

    @task
    def process(notifications: list[dict]) -> list[str]:
        """Use the data: here, list where each step is."""
        locations = [n["location"] for n in notifications]
        for notification in notifications:
            print(f"step {notification['request']['step']}: {notification['location']}")
        return locations

    process(wait.output)
