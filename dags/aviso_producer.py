"""Producer: a "model" writes its output step by step and notifies each step as soon as it exists.

The request names no date: each notification carries the run's date.
"""

from __future__ import annotations

import os
import tempfile

import pendulum
from airflow.sdk import DAG, task

from aviso_workflows.airflow import AvisoNotifyOperator

FIELDS = {"class": "od", "expver": 1, "domain": "g", "stream": "oper", "time": 0}
STEPS = (0, 6, 12)
OUTPUT = os.environ.get("AVISO_DEMO_OUTPUT", os.path.join(tempfile.gettempdir(), "aviso-demo-output"))

with DAG("aviso_producer", schedule=None, start_date=pendulum.datetime(2000, 1, 1, tz="UTC"), catchup=False,
         tags=["aviso", "example"]):

    @task
    def run_model(step: int, ds_nodash: str | None = None, dag_run=None) -> str:
        """Pretend to compute one forecast step; return where its output lives."""
        day = ds_nodash or dag_run.run_after.strftime("%Y%m%d")
        path = os.path.join(OUTPUT, day, f"step{step:03d}.grib")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as output:
            output.write(f"forecast step {step}\n")
        return "file://" + path

    previous = None
    for step in STEPS:
        output = run_model.override(task_id=f"model_step_{step}")(step)
        notify = AvisoNotifyOperator(task_id=f"notify_step_{step}", event="mars",
                                     request={**FIELDS, "step": step}, location=output)
        if previous is not None:
            previous >> output  # the model computes its steps in order
        previous = notify
