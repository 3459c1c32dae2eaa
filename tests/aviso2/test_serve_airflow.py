"""Airflow on an ``aviso`` connection whose host is ``aviso+http://`` of ``serve``: the connection test and the
sensor in poke mode. The behaviour of the sensor, the trigger it defers to and the asset watchers' event
trigger runs over etcd and the aviso-server 0.7.1 double in tests/airflow (backend_stores.py's fixture)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pendulum
import pytest
from airflow.sdk import DAG
from serve_process import Serve
from test_serve_core import mars

from aviso_workflows import Store
from aviso_workflows.airflow import AvisoSensor
from aviso_workflows.airflow.hooks import AvisoHook

FIELDS = {"class": "od", "expver": 1, "domain": "g", "stream": "oper", "time": 0}
BOUND = 15.0


@pytest.fixture
def aviso_conn(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AIRFLOW_CONN_AVISO_DEFAULT", json.dumps({"conn_type": "aviso", "host": serve.endpoint}))
    return "aviso_default"


def context_for(date: str) -> dict[str, Any]:
    return {"dag_run": SimpleNamespace(run_after=pendulum.parse("2030-05-17T06:00:00+00:00")),
            "logical_date": pendulum.parse(date), "ds_nodash": date}


def sensor(request: dict[str, Any], **options: Any) -> AvisoSensor:
    with DAG("aviso2_unit", schedule=None):
        return AvisoSensor(task_id="wait", event="mars", request=request, **options)


def test_the_connection_reaches_the_server(aviso_conn: str) -> None:
    hook = AvisoHook(aviso_conn)
    assert hook.get_conn().backend.position_unit == "sequence"  # an aviso-server backend
    ok, message = hook.test_connection()
    assert ok and "aviso-server" in message


def test_sensor_poke_mode_follows_the_stream(aviso: Store, unique_date: str, aviso_conn: str) -> None:
    aviso.notify(mars(unique_date, step=0), location="file:///0")
    task = sensor({**FIELDS, "date": "{{ ds_nodash }}", "step": "0/6"}, timeout=BOUND)
    context = context_for(unique_date)
    task.render_template_fields(context)

    async def run_and_post() -> list[dict[str, Any]]:
        running = asyncio.create_task(asyncio.to_thread(task.execute, context))
        await asyncio.sleep(0.5)  # not a synchronisation: the time in which a wrongly released sensor would end
        assert not running.done()
        await asyncio.to_thread(aviso.notify, mars(unique_date, step=6), location="file:///6")
        return await asyncio.wait_for(running, BOUND)

    found = asyncio.run(run_and_post())
    assert [(n["request"]["step"], n["location"]) for n in found] == [("0", "file:///0"), ("6", "file:///6")]
