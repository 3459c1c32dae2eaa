"""What a DAG file's author learns at parse time, and what a sensor does when etcd is away or data is late."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pendulum
import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowSensorTimeout, TaskDeferred
from airflow_helpers import connection_json

from aviso_workflows import Store, ValidationError, server
from aviso_workflows.airflow import (
    AvisoEventTrigger,
    AvisoHook,
    AvisoNotifyOperator,
    AvisoSensor,
    AvisoTrigger,
    asset_notifications,
    aviso_notifications,
    hooks,
)
from aviso_workflows.airflow.hooks import config_from_connection
from aviso_workflows.config import ENDPOINTS_VARIABLE
from aviso_workflows.schema import BUILTIN_SCHEMAS
from aviso_workflows.server import free_port

FIELDS = {"class": "od", "expver": 1, "domain": "g", "stream": "oper", "time": 0}


def context_for(date: str) -> dict[str, Any]:
    return {"dag_run": SimpleNamespace(run_after=pendulum.parse(date)), "logical_date": pendulum.parse(date)}


def sensor(request: dict[str, Any], **options: Any) -> AvisoSensor:
    with DAG("aviso_parse_time", schedule=None):
        return AvisoSensor(task_id="wait", event="mars", request=request, **options)


@pytest.mark.parametrize("text", ["2026-12-01Tgarbage", "2026-12-01T25:00:00", "2026-12-01 6 o'clock",
                                  "2026-12-01x", "2026-12-01T"])
def test_dates_with_trailing_text_are_refused(text: str) -> None:
    with pytest.raises(ValidationError) as error:
        BUILTIN_SCHEMAS["mars"].fields["date"].canonical(text)
    assert error.value.field == "date"
    with pytest.raises(ValidationError, match="date"):
        sensor({**FIELDS, "date": text, "step": 0})


@pytest.mark.parametrize("text", ["2026-12-01T06:00:00", "2026-12-01T06:00:00Z", "2026-12-01 06:00:00+00:00",
                                  "2026-12-01", "20261201"])
def test_whole_dates_and_date_times_are_read(text: str) -> None:
    assert BUILTIN_SCHEMAS["mars"].fields["date"].canonical(text) == "20261201"


def test_asset_watcher_typo_names_the_field() -> None:
    with pytest.raises(ValidationError) as error:
        AvisoEventTrigger(event="mars", request={"clas": "od"})
    assert error.value.field == "clas"
    with pytest.raises(ValidationError, match="class"):
        AvisoEventTrigger(event="mars", request={"class": "odd"})
    with pytest.raises(ValidationError, match="request"):
        AvisoEventTrigger(event="mars", request="class=od")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="aviso_conn_id"):
        AvisoEventTrigger(event="mars", request={"class": "od"}, aviso_conn_id="")


def test_trigger_arguments_are_checked() -> None:
    with pytest.raises(ValidationError, match="wait_for"):
        AvisoTrigger(event="mars", request={"class": "od"}, wait_for="most")
    with pytest.raises(ValidationError, match="event"):
        AvisoTrigger(event="", request={"class": "od"})


def test_notify_ttl_and_location_are_checked_at_parse_time() -> None:
    def notify(**options: Any) -> AvisoNotifyOperator:
        with DAG("aviso_parse_time_notify", schedule=None):
            return AvisoNotifyOperator(task_id="notify", event="mars", request={**FIELDS, "step": 0}, **options)

    with pytest.raises(ValidationError, match="ttl"):
        notify(ttl="an hour")
    with pytest.raises(ValidationError, match="ttl"):
        notify(ttl=0)
    with pytest.raises(ValidationError, match="location"):
        notify(location="file:///a\nb")
    with pytest.raises(ValidationError, match="location"):
        notify(location=42)
    with pytest.raises(ValidationError, match="ttl"):
        with DAG("aviso_parse_time_notify_entries", schedule=None):
            AvisoNotifyOperator(task_id="notify", event="mars", request={**FIELDS, "step": 0, "ttl": -5})
    notify(ttl="{{ params.ttl }}", location="s3://bucket/{{ ds_nodash }}.grib")
    notify(ttl=3600, location="s3://bucket/data.grib")


def test_sensor_arguments_are_checked_at_parse_time() -> None:
    with pytest.raises(ValidationError, match="aviso_conn_id"):
        sensor({**FIELDS, "step": 0}, aviso_conn_id=None)
    with pytest.raises(ValidationError, match="poke_interval.*71172"):
        sensor({**FIELDS, "step": 0}, mode="reschedule", poke_interval=5)
    sensor({**FIELDS, "step": 0}, mode="reschedule", poke_interval=60)
    sensor({**FIELDS, "step": 0}, mode="reschedule", poke_interval=5, deferrable=True)


@pytest.mark.parametrize(("host", "port", "endpoint"), [
    ("http://127.0.0.1", None, "http://127.0.0.1:2379"),
    ("https://etcd.example.org:2380", 9999, "https://etcd.example.org:2380"),
    ("http://127.0.0.1/", 2391, "http://127.0.0.1:2391"),
    ("127.0.0.1", 2391, "http://127.0.0.1:2391"),
])
def test_connection_host_may_be_a_url(host: str, port: int | None, endpoint: str) -> None:
    conn = SimpleNamespace(conn_id="aviso_default", host=host, port=port, schema=None, login=None, password=None,
                           extra_dejson={})
    assert config_from_connection(conn).endpoints == (endpoint,)  # type: ignore[arg-type]


def test_connection_host_url_with_a_path_is_refused() -> None:
    conn = SimpleNamespace(conn_id="c", host="ftp://x/y", port=None, schema=None, login=None, password=None,
                           extra_dejson={})
    with pytest.raises(ValidationError, match="host"):
        config_from_connection(conn)  # type: ignore[arg-type]


def test_missing_default_connection_falls_back_to_the_command_line_settings(
        monkeypatch: pytest.MonkeyPatch, etcd_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_AVISO_DEFAULT", raising=False)
    monkeypatch.setattr(hooks, "_FALLBACKS_SAID", set())
    monkeypatch.setenv(ENDPOINTS_VARIABLE, etcd_url)
    monkeypatch.setenv("AVISO_WORKFLOWS_CONFIG", str(tmp_path / "none.yaml"))
    with caplog.at_level(logging.INFO, logger="aviso_workflows.airflow.hooks"):
        store = AvisoHook().get_conn()
        assert asyncio.run(AvisoHook().aget_conn()).config.endpoints == store.config.endpoints
    assert store.config.endpoints == (etcd_url,)
    assert store.current_revision() > 0
    said = [r.getMessage() for r in caplog.records if "aviso_default" in r.getMessage()]
    assert len(said) == 1 and f"${ENDPOINTS_VARIABLE}" in said[0], said
    monkeypatch.delenv(ENDPOINTS_VARIABLE)
    (tmp_path / "none.yaml").write_text(f"endpoints: [{etcd_url}]\n")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="aviso_workflows.airflow.hooks"):
        AvisoHook().get_conn()
    assert any("none.yaml" in r.getMessage() for r in caplog.records)


def test_a_missing_named_connection_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import AirflowNotFoundException

    with pytest.raises(AirflowNotFoundException, match="connection 'aviso_nowhere' is not defined; create it with "
                                                       "`airflow connections add aviso_nowhere --conn-type aviso"):
        AvisoHook("aviso_nowhere").get_conn()


def test_a_connection_of_another_type_is_named_with_how_to_make_it_right(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_AVISO_HTTP", json.dumps({"conn_type": "http", "host": "example.org"}))
    with pytest.raises(ValidationError, match="aviso_conn_id: 'aviso_http' is not valid; the connection is of type "
                                              "'http', not 'aviso'; create it with .*AIRFLOW_CONN_AVISO_HTTP="):
        AvisoHook("aviso_http").get_conn()


MISSING_CONNECTION_DAG = """
from airflow.sdk import DAG
from aviso_workflows.airflow import AvisoSensor

with DAG("aviso_missing_connection", schedule=None):
    AvisoSensor(task_id="wait", event="mars", request={"class": "od", "expver": 1, "domain": "g", "stream": "oper",
                "time": 0, "date": "20300101", "step": 0}, aviso_conn_id="aviso_nowhere", deferrable=True)
"""


@pytest.mark.slow
def test_airflow_dags_test_names_a_missing_connection_and_how_to_create_it(airflow_env: dict[str, str],
                                                                          tmp_path: Path) -> None:
    """The first look of the sensor, which ``airflow dags test`` runs, says which connection is missing and how
    to create it (DAG parsing does not read connections: Airflow discourages it, and the DAG processor may lack
    the worker's secrets)."""
    from airflow_helpers import AIRFLOW

    (tmp_path / "missing.py").write_text(MISSING_CONNECTION_DAG)
    env = {**airflow_env, "AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path)}
    done = subprocess.run([str(AIRFLOW), "dags", "test", "aviso_missing_connection"], env=env, capture_output=True,
                          text=True, timeout=180)
    said = done.stdout + done.stderr
    assert "connection 'aviso_nowhere' is not defined; create it with `airflow connections add aviso_nowhere " \
           "--conn-type aviso" in said, said[-3000:]


def later_etcd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, after: float) -> tuple[threading.Timer, Path]:
    """A connection to a port where etcd starts only ``after`` seconds from now."""
    port = free_port()
    monkeypatch.setenv("AIRFLOW_CONN_AVISO_LATER", connection_json(f"http://127.0.0.1:{port}", timeout=1))
    home = tmp_path / "etcd"

    def start() -> None:
        info = server.start(home, port)
        Store([info.client_url]).notify("mars", {**FIELDS, "date": "20300101", "step": 0}, location="file:///back")

    timer = threading.Timer(after, start)
    timer.start()
    return timer, home


@pytest.mark.slow
def test_poke_mode_rides_out_an_outage_at_its_first_look(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    timer, home = later_etcd(monkeypatch, tmp_path, 5.0)
    try:
        task = sensor({**FIELDS, "step": 0}, aviso_conn_id="aviso_later", timeout=60)
        result = task.execute(context_for("2030-01-01"))
    finally:
        timer.cancel()
        server.stop(home)
    assert [n["location"] for n in result] == ["file:///back"]


@pytest.mark.slow
def test_deferrable_mode_defers_through_an_outage_at_its_first_look(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    timer, home = later_etcd(monkeypatch, tmp_path, 5.0)
    try:
        task = sensor({**FIELDS, "step": 0}, aviso_conn_id="aviso_later", timeout=60, deferrable=True)
        with pytest.raises(TaskDeferred) as deferred:
            task.execute(context_for("2030-01-01"))
        trigger = deferred.value.trigger
        assert isinstance(trigger, AvisoTrigger) and trigger.serialize()[1]["known"] == []
        event = asyncio.run(asyncio.wait_for(anext(trigger.run()), 60))
    finally:
        timer.cancel()
        server.stop(home)
    assert event.payload["status"] == "success", event.payload
    assert task.execute_complete({}, event.payload)[0]["location"] == "file:///back"


def test_poke_mode_timeout_names_the_missing_keys(store: Store, unique_date: str, aviso_conn: str) -> None:
    store.notify("mars", {**FIELDS, "date": unique_date, "step": 0})
    task = sensor({**FIELDS, "step": "0/to/48/by/6"}, timeout=1)
    with pytest.raises(AirflowSensorTimeout) as error:
        task.execute(context_for(unique_date))
    message = str(error.value)
    assert "8 of 9 key(s) still missing" in message and "and 3 more" in message
    assert "step=6" in message and "step=0," not in message


def test_deferred_timeout_names_the_missing_keys(store: Store, unique_date: str, aviso_conn: str) -> None:
    request = store.request("mars", {**FIELDS, "date": unique_date, "step": "0/6"}).as_dict()
    trigger = AvisoTrigger(event="mars", request=request, deadline=0.0)
    event = asyncio.run(asyncio.wait_for(anext(trigger.run()), 30))
    assert event.payload["status"] == "error" and event.payload["reason"] == "timeout"
    assert "2 of 2 key(s) still missing" in event.payload["message"]
    with pytest.raises(AirflowSensorTimeout, match="step=6"):
        sensor({**FIELDS, "step": "0/6"}).execute_complete({}, event.payload)


def test_reschedule_timeout_names_the_missing_keys(store: Store, unique_date: str, aviso_conn: str) -> None:
    task = sensor({**FIELDS, "step": "0/6"}, mode="reschedule", poke_interval=60, timeout=0)
    context = {**context_for(unique_date),
               "ti": SimpleNamespace(get_first_reschedule_date=lambda _: pendulum.now("UTC").subtract(seconds=5))}
    with pytest.raises(AirflowSensorTimeout, match=r"2 of 2 key\(s\) still missing"):
        task.execute(context)


def test_trigger_serializes_its_deadline() -> None:
    trigger = AvisoTrigger(event="mars", request={"class": "od"}, deadline=1.5e9)
    assert AvisoTrigger(**trigger.serialize()[1]).deadline == 1.5e9
    assert json.loads(json.dumps(trigger.serialize()[1]))["deadline"] == 1.5e9


def test_notify_location_template_for_runs_without_a_logical_date(store: Store, unique_date: str,
                                                                   aviso_conn: str) -> None:
    """The README's template: a run's logical date, else when it was due (asset-driven and manual runs)."""
    with DAG("aviso_parse_time_no_date", schedule=None):
        task = AvisoNotifyOperator(task_id="notify", event="mars", request={**FIELDS, "step": 0},
                                   location="s3://bucket/{{ (dag_run.logical_date or dag_run.run_after) | ds_nodash }}"
                                            "/step0.grib")
    day = pendulum.parse(f"{unique_date[:4]}-{unique_date[4:6]}-{unique_date[6:]}T06:00:00+00:00")
    context: dict[str, Any] = {"dag_run": SimpleNamespace(logical_date=None, run_after=day)}
    task.render_template_fields(context)
    task.execute(context)
    assert [n.location for n in store.get("mars", {**FIELDS, "date": unique_date})] == [
        f"s3://bucket/{unique_date}/step0.grib"]


def test_asset_notifications_reads_every_event_in_write_order() -> None:
    def event(revision: int, step: int) -> SimpleNamespace:
        return SimpleNamespace(extra={"from_trigger": True, "payload": {
            "key": f"/ec/mars/date=20300101,step={step}", "revision": revision, "location": f"file:///{step}"}})

    events = [event(9, 12), event(7, 0), event(9, 6), SimpleNamespace(extra={"note": "made by a task"})]
    assert [n["location"] for n in asset_notifications(events)] == ["file:///0", "file:///6", "file:///12"]
    assert asset_notifications(None) == []


def test_aviso_notifications_reads_every_event_of_the_run_and_every_notification_of_an_event() -> None:
    def notification(revision: int, step: int) -> dict[str, Any]:
        return {"key": f"/ec/mars/date=20300101,step={step}", "revision": revision, "location": f"file:///{step}"}

    def event(*carried: dict[str, Any]) -> SimpleNamespace:
        return SimpleNamespace(extra={"from_trigger": True, "payload": {"notifications": list(carried)}})

    transaction = event(notification(7, 0), notification(7, 6), notification(7, 12))
    later = event(notification(9, 18))
    context = {"triggering_asset_events": {"a": [later, transaction], "b": [event(notification(7, 6))]}}
    assert [n["location"] for n in aviso_notifications(context)] == [f"file:///{s}" for s in (0, 6, 12, 18)]
    assert aviso_notifications({}) == []


def test_asset_watcher_event_interval_is_checked() -> None:
    with pytest.raises(ValidationError, match="event_interval: -1 is not valid"):
        AvisoEventTrigger(event="mars", request={"class": "od"}, event_interval=-1)


def test_asset_watcher_logs_where_it_starts(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    from airflow_helpers import MemoryStateStore

    from aviso_workflows.airflow.triggers import WatcherState, _load_position

    state = WatcherState(MemoryStateStore(), 1)
    request = store.request("mars", FIELDS)
    with caplog.at_level(logging.INFO, logger="aviso_workflows.airflow.triggers"):
        first = asyncio.run(_load_position(state, store, request, "now"))
        again = asyncio.run(_load_position(state, store, request, "now"))
    said = [r.getMessage() for r in caplog.records]
    assert f"asset watcher starts from now: revision {first.revision} (no saved position)" in said
    assert any(f"resumes after its saved position: revision {again.revision}" in line for line in said), said


def test_a_new_watcher_starts_before_what_was_posted_since_its_dag_was_unpaused(store: Store,
                                                                                unique_date: str) -> None:
    """Airflow starts a watcher up to a parse interval after the unpause: a post in between is not missed."""
    from airflow_helpers import MemoryStateStore

    from aviso_workflows.airflow.triggers import WatcherState, _load_position

    request = store.request("mars", {**FIELDS, "date": unique_date})
    posted = store.notify("mars", {**FIELDS, "date": unique_date, "step": 0})  # after the unpause, before the start
    state = WatcherState(MemoryStateStore(), 1)
    start = asyncio.run(_load_position(state, store, request, "unpause", 60.0))
    assert start.revision < posted.revisions[0]
    assert state.store.values["aviso_cursor"]["revision"] == start.revision, "saved at once"


def test_from_now_skips_what_came_while_paused_but_a_restart_resumes(store: Store) -> None:
    from airflow_helpers import MemoryStateStore

    from aviso_workflows.airflow.triggers import WatcherState, _load_position

    request = store.request("mars", FIELDS)
    memory = MemoryStateStore()
    first = asyncio.run(_load_position(WatcherState(memory, 1), store, request, "now"))
    store.notify("mars", {**FIELDS, "date": "20300101", "step": 0})
    restarted = asyncio.run(_load_position(WatcherState(memory, 1), store, request, "now"))
    assert restarted == first, "the same trigger (a triggerer restart) resumes"
    unpaused = asyncio.run(_load_position(WatcherState(memory, 2), store, request, "now"))
    assert unpaused.revision == store.current_revision(), "a new trigger (an unpause) starts from now"
    resumed = asyncio.run(_load_position(WatcherState(memory, 3), store, request, "unpause"))
    assert resumed == unpaused, "by default a new trigger resumes after the saved position"
