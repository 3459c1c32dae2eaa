"""Daily consumer with catch-up: one run per day since a week ago, each waiting for its own date.

Runs for days whose data was announced long ago are released at once; today's run waits.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task

from aviso_workflows.airflow import AvisoSensor

with DAG("aviso_daily_catchup", schedule="@daily", start_date=pendulum.today("UTC").subtract(days=7),
         catchup=True, max_active_runs=8, tags=["aviso", "example"]):
    wait = AvisoSensor(
        task_id="wait_for_day",
        event="mars",
        request={"class": "od", "expver": 1, "domain": "g", "stream": "oper", "time": 0, "step": [0, 6, 12]},
        deferrable=True,
        timeout=2 * 86400,
    )

    @task
    def archive(notifications: list[dict]) -> int:
        """Do the day's work with the day's data."""
        for notification in notifications:
            print(notification["request"]["date"], notification["request"]["step"], notification.get("location"))
        return len(notifications)

    archive(wait.output)
