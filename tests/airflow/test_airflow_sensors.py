"""AvisoSensor and AvisoNotifyOperator in-process: validation, templating, run dates, deferral, completion."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from types import SimpleNamespace
from typing import Any

import pendulum
import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException, TaskDeferred
from backend_stores import OnBackend, aviso_double_fixture, backend_conn_fixture, on_backend_fixture  # noqa: F401

from aviso_workflows import Store, ValidationError
from aviso_workflows.airflow import AvisoNotifyOperator, AvisoSensor, AvisoTrigger
from aviso_workflows.airflow.sensors import DEFER_GRACE_SECONDS

FIELDS = {"class": "od", "expver": 1, "domain": "g", "stream": "oper", "time": 0}


def context_for(date: str | None, run_after: str = "2030-05-17T06:00:00+00:00") -> dict[str, Any]:
    """What a task sees: a logical date (with ``ds_nodash``) or, for manual runs, only ``run_after``."""
    context: dict[str, Any] = {"dag_run": SimpleNamespace(run_after=pendulum.parse(run_after))}
    if date is not None:
        context.update(logical_date=pendulum.parse(date), ds_nodash=date)
    return context


def sensor(request: dict[str, Any], **options: Any) -> AvisoSensor:
    with DAG("aviso_unit", schedule=None):
        return AvisoSensor(task_id="wait", event="mars", request=request, **options)


def test_static_bad_request_fails_at_parse_time() -> None:
    with pytest.raises(ValidationError) as error:
        sensor({**FIELDS, "class": "xx", "step": 0})
    assert error.value.field == "class" and "xx" in str(error.value)


def test_incomplete_request_fails_at_parse_time_unless_any() -> None:
    with pytest.raises(ValidationError, match="step"):
        sensor(FIELDS)
    sensor(FIELDS, wait_for="any")
    with pytest.raises(ValidationError, match="wait_for"):
        sensor({**FIELDS, "step": 0}, wait_for="some")


def test_templated_bad_request_fails_at_first_poke(aviso_conn: str) -> None:
    task = sensor({**FIELDS, "step": "{{ params.step }}"}, params={"step": "minus one"})
    context = {**context_for("20300517"), "params": {"step": "minus one"}}
    task.render_template_fields(context)
    with pytest.raises(AirflowFailException, match="step: 'minus one' is not valid"):
        task.poke(context)


def test_templated_request_is_rendered(store: Store, unique_date: str, aviso_conn: str) -> None:
    store.notify("mars", {**FIELDS, "date": unique_date, "step": "0/6"}, location="file:///t")
    task = sensor({**FIELDS, "date": "{{ ds_nodash }}", "step": "0/to/6/by/6"})
    context = context_for(unique_date)
    task.render_template_fields(context)
    result = task.poke(context)
    assert result.is_done
    assert [n["request"]["step"] for n in result.xcom_value] == ["0", "6"]
    assert {n["request"]["date"] for n in result.xcom_value} == {unique_date}


def test_poke_is_not_done_until_everything_exists(on_backend: OnBackend, unique_date: str,
                                                  backend_conn: str) -> None:
    """On etcd and on the aviso-server 0.7.1 double."""
    store = on_backend.store
    task = sensor({**FIELDS, "step": "0/6"})
    store.notify("mars", {**FIELDS, "date": unique_date, "step": 0})
    assert not task.poke(context_for(unique_date)).is_done
    assert sensor({**FIELDS, "step": "0/6"}, wait_for="any").poke(context_for(unique_date)).is_done
    store.notify("mars", {**FIELDS, "date": unique_date, "step": 6})
    assert task.poke(context_for(unique_date)).is_done


def test_run_without_logical_date_uses_run_after(store: Store, unique_date: str, aviso_conn: str) -> None:
    day = dt.datetime.strptime(unique_date, "%Y%m%d")
    store.notify("mars", {**FIELDS, "date": unique_date, "step": 0})
    result = sensor({**FIELDS, "step": 0}).poke(context_for(None, run_after=f"{day:%Y-%m-%d}T23:30:00+00:00"))
    assert result.is_done and result.xcom_value[0]["request"]["date"] == unique_date


def test_deferrable_sensor_defers_with_what_it_found(on_backend: OnBackend, unique_date: str,
                                                     backend_conn: str) -> None:
    """On etcd and on the aviso-server 0.7.1 double."""
    store = on_backend.store
    store.notify("mars", {**FIELDS, "date": unique_date, "step": 0})
    task = sensor({**FIELDS, "step": "0/6/12"}, deferrable=True, timeout=600)
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context_for(unique_date))
    trigger = deferred.value.trigger
    assert isinstance(trigger, AvisoTrigger)
    assert trigger.request["date"] == unique_date and trigger.request["step"] == ["0", "6", "12"]
    assert [n["request"]["step"] for n in trigger.known] == ["0"]
    assert trigger.aviso_conn_id == "aviso_default" and trigger.wait_for == "all"
    assert deferred.value.method_name == "execute_complete"
    # the trigger gives up first, naming what is missing; Airflow's own timeout is only a backstop
    assert deferred.value.timeout == dt.timedelta(seconds=600 + DEFER_GRACE_SECONDS)
    assert trigger.deadline is not None and abs(trigger.deadline - time.time() - 600) < 30


def test_deferrable_sensor_does_not_defer_when_everything_exists(on_backend: OnBackend, unique_date: str,
                                                                  backend_conn: str) -> None:
    """Catch-up at once, on etcd and on the aviso-server 0.7.1 double."""
    on_backend.store.notify("mars", {**FIELDS, "date": unique_date, "step": "0/6"}, location="file:///here")
    result = sensor({**FIELDS, "step": "0/6"}, deferrable=True).execute(context_for(unique_date))
    assert [n["location"] for n in result] == ["file:///here", "file:///here"]


async def test_the_trigger_a_sensor_defers_to_is_released_by_the_last_post(on_backend: OnBackend, unique_date: str,
                                                                          backend_conn: str) -> None:
    """The deferred sensor's trigger, rebuilt from its serialized form as the triggerer does, is released by the
    last missing step and hands back what the sensor had found too; on etcd and on the aviso-server 0.7.1 double."""
    store = on_backend.store
    await asyncio.to_thread(store.notify, "mars", {**FIELDS, "date": unique_date, "step": 0})
    task = sensor({**FIELDS, "step": "0/6"}, deferrable=True, timeout=60)
    with pytest.raises(TaskDeferred) as deferred:
        await asyncio.to_thread(task.execute, context_for(unique_date))
    classpath, kwargs = deferred.value.trigger.serialize()
    waiting = asyncio.create_task(anext(AvisoTrigger(**kwargs).run()))
    await asyncio.sleep(0.5)  # what a wrongly released trigger would need to finish; not a synchronisation
    assert not waiting.done()
    await asyncio.to_thread(store.notify, "mars", {**FIELDS, "date": unique_date, "step": 6}, location="last")
    event = await asyncio.wait_for(waiting, 15)
    assert event.payload["status"] == "success"
    assert [n["request"]["step"] for n in event.payload["notifications"]] == ["0", "6"]
    assert task.execute_complete(context_for(unique_date), event.payload)[-1]["location"] == "last"


def test_execute_complete_success_and_error() -> None:
    task = sensor({**FIELDS, "step": 0})
    found = [{"event": "mars", "request": {"step": "0"}, "key": "/ec/mars/k", "revision": 9}]
    assert task.execute_complete({}, {"status": "success", "notifications": found}) == found
    with pytest.raises(AirflowException, match="cannot reach etcd"):
        task.execute_complete({}, {"status": "error", "message": "cannot reach etcd at http://127.0.0.1:1"})


def test_soft_fail_skips_on_trigger_error() -> None:
    task = sensor({**FIELDS, "step": 0}, soft_fail=True)
    with pytest.raises(AirflowSkipException):
        task.resume_execution("execute_complete", {"event": {"status": "error", "message": "gone"}}, {})


def test_notify_operator_posts_templated_location(store: Store, unique_date: str, aviso_conn: str) -> None:
    with DAG("aviso_unit_notify", schedule=None):
        task = AvisoNotifyOperator(task_id="notify", event="mars", request={**FIELDS, "step": "0/6"},
                                   location="file:///data/{{ ds_nodash }}.grib", ttl="{{ 3600 }}")
    context = context_for(unique_date)
    task.render_template_fields(context)
    keys = task.execute(context)
    assert len(keys) == 2 and all(f"date={unique_date}" in k for k in keys)
    assert {n.location for n in store.get("mars", {**FIELDS, "date": unique_date})} == {
        f"file:///data/{unique_date}.grib"}


def test_notify_operator_rejects_a_bad_request_early() -> None:
    with pytest.raises(ValidationError, match="expver"):
        AvisoNotifyOperator(task_id="bad", event="mars", request={**FIELDS, "expver": "toolong", "step": 0})
