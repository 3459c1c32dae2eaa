"""A deferrable sensor on its own etcd (connection aviso_flaky), which the test stops and starts again."""

from __future__ import annotations

from airflow.sdk import DAG

from aviso_workflows.airflow import AvisoSensor

with DAG("aviso_live_outage", schedule=None, catchup=False):
    AvisoSensor(task_id="wait", event="mars", aviso_conn_id="aviso_flaky", deferrable=True, timeout=600,
                request={"class": "rd", "expver": "out1", "domain": "g", "stream": "oper", "time": 0,
                         "date": "20300101", "step": 0})
