"""Airflow on an ``aviso`` connection whose host is ``aviso+http://``: the sensor in poke and deferrable
mode, the trigger it defers to, and the asset watchers' event trigger (driven directly with asyncio)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pendulum
import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import TaskDeferred
from conftest import Serve
from test_serve_core import mars

from aviso_workflows import Store
from aviso_workflows.airflow import AvisoEventTrigger, AvisoSensor, AvisoTrigger
from aviso_workflows.airflow.hooks import AvisoHook
from aviso_workflows.airflow.triggers import CURSOR_KEY

FIELDS = {"class": "od", "expver": 1, "domain": "g", "stream": "oper", "time": 0}
BOUND = 15.0


class StateStore:
    """The asset state store's two calls, in memory."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    async def aget(self, key: str) -> Any:
        return self.values.get(key)

    async def aset(self, key: str, value: Any) -> None:
        self.values[key] = value


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
        await asyncio.sleep(0.5)
        assert not running.done()
        await asyncio.to_thread(aviso.notify, mars(unique_date, step=6), location="file:///6")
        return await asyncio.wait_for(running, BOUND)

    found = asyncio.run(run_and_post())
    assert [(n["request"]["step"], n["location"]) for n in found] == [("0", "file:///0"), ("6", "file:///6")]


async def test_deferrable_sensor_hands_what_it_found_to_the_trigger(aviso: Store, unique_date: str,
                                                                     aviso_conn: str) -> None:
    await asyncio.to_thread(aviso.notify, mars(unique_date, step=0))
    task = sensor({**FIELDS, "date": unique_date, "step": "0/6"}, deferrable=True, timeout=BOUND)
    with pytest.raises(TaskDeferred) as deferred:
        await asyncio.to_thread(task.execute, context_for(unique_date))
    trigger = deferred.value.trigger
    assert isinstance(trigger, AvisoTrigger) and [n["request"]["step"] for n in trigger.known] == ["0"]
    classpath, kwargs = trigger.serialize()
    waiting = asyncio.create_task(anext(AvisoTrigger(**kwargs).run()))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    await asyncio.to_thread(aviso.notify, mars(unique_date, step=6), location="last")
    event = await asyncio.wait_for(waiting, BOUND)
    assert event.payload["status"] == "success"
    assert [n["request"]["step"] for n in event.payload["notifications"]] == ["0", "6"]
    assert task.execute_complete(context_for(unique_date), event.payload)[-1]["location"] == "last"


async def test_event_trigger_resumes_from_its_saved_position(aviso: Store, unique_date: str,
                                                             aviso_conn: str) -> None:
    request = aviso.request(mars(unique_date, step=None)).as_dict()
    state = StateStore()
    # event_interval=0: one asset event per batch still, without the pause Airflow's asset queue needs.
    trigger = AvisoEventTrigger(event="mars", request=request, aviso_conn_id=aviso_conn, event_interval=0)
    trigger.asset_state_store = state  # type: ignore[attr-defined]
    events = trigger.run()
    first = asyncio.create_task(anext(events))
    await asyncio.sleep(0.5)
    assert CURSOR_KEY in state.values  # saved at once: a watcher stopped early misses nothing
    await asyncio.to_thread(aviso.notify, mars(unique_date, step=3))
    got = [(await asyncio.wait_for(first, BOUND)).payload]
    await asyncio.to_thread(aviso.notify, mars(unique_date, step=1))
    got.append((await asyncio.wait_for(anext(events), BOUND)).payload)
    await events.aclose()  # type: ignore[attr-defined]
    assert [[n["request"]["step"] for n in p["notifications"]] for p in got] == [["3"], ["1"]]
    await asyncio.to_thread(aviso.notify, mars(unique_date, step=2))  # while no watcher runs
    resumed = AvisoEventTrigger(event="mars", request=request, aviso_conn_id=aviso_conn, event_interval=0)
    resumed.asset_state_store = state  # type: ignore[attr-defined]
    again = resumed.run()
    rest = (await asyncio.wait_for(anext(again), BOUND)).payload["notifications"]
    await again.aclose()  # type: ignore[attr-defined]
    assert [n["request"]["step"] for n in rest] == ["2"]
    assert rest[0]["revision"] > got[-1]["notifications"][-1]["revision"]
