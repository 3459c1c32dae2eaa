"""Restarts of the Airflow triggerer lose no notification: deferred sensors and an asset watcher.

The live tests stop the triggerer of a live Airflow by its pid with SIGTERM (Airflow's graceful
stop) or SIGKILL (its process group dies at once, as on a crash) and post notifications before,
while it is down and after it is back; they run in ``make test`` (``AVISO_SKIP_LIVE=1`` skips them).
The others drive the asset watcher through the triggerer's own shared-stream machinery in-process.

What the asset watcher guarantees: its position moves past a notification only once Airflow has
confirmed storing the asset event, so no notification is lost across any stop. Airflow's trigger
runner stops (on SIGTERM as on SIGKILL) without receiving the confirmations of the events stored in
its last round; the provider's plugin records the last stored notification in the transaction that
stores each event, so the watcher that starts again repeats none of them either.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from airflow_helpers import MemoryStateStore, connection_json
from live_stack import LiveStack, eventually

from aviso_workflows import Store
from aviso_workflows.airflow import AvisoEventTrigger
from aviso_workflows.airflow.triggers import CURSOR_KEY, NotificationStream, WatcherState
from aviso_workflows.errors import AvisoWorkflowsError
from aviso_workflows.listen import Position

LIVE_MARKS = (pytest.mark.live, pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("AVISO_SKIP_LIVE") == "1", reason="AVISO_SKIP_LIVE=1"))
T = TypeVar("T")
LIVE_DAGS = Path(__file__).with_name("live_dags")
SENSOR_DAG = "aviso_live_restart_sensor"
ASSET_DAG = "aviso_live_restart_asset"
ASSET = "aviso_restart_stream"
SENSOR_DATA = {"class": "rd", "expver": "rst1", "domain": "g", "stream": "oper", "time": 0}
STREAM_DATA = {"class": "rd", "expver": "rst2", "domain": "g", "stream": "oper", "time": 0}
SIGNALS = [pytest.param(signal.SIGTERM, id="sigterm"), pytest.param(signal.SIGKILL, id="sigkill")]
#: A SIGKILLed triggerer keeps its triggers until its last heartbeat is this old (Airflow's default: 30 s).
HEALTH_CHECK_SECONDS = 10
START_SECONDS = 240
RUN_SECONDS = 180
SENSOR_RUNS = 3
STREAM = {"before": 8, "while_down": 6, "after": 6}
POST_PAUSE = 0.1


def live(test: T) -> T:
    """Mark a test that needs the live Airflow."""
    for mark in LIVE_MARKS:
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def stack(etcd_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """A live Airflow serving the restart test DAGs, its asset watcher already following the store."""
    home = tmp_path_factory.mktemp("airflow-restarts")
    dags = home / "dags"
    dags.mkdir()
    for dag_id in (SENSOR_DAG, ASSET_DAG):
        shutil.copy(LIVE_DAGS / f"{dag_id}.py", dags / f"{dag_id}.py")
    live = LiveStack(home, dags, {
        "AIRFLOW_CONN_AVISO_DEFAULT": connection_json(etcd_url),
        "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(HEALTH_CHECK_SECONDS),
        "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",  # the test triggers runs through the REST API
    })
    try:
        live.start()
        eventually("the DAGs to be parsed", lambda: len(live.query(
            "select dag_id from dag where dag_id in (?, ?) and is_paused = 0", SENSOR_DAG, ASSET_DAG)) == 2,
            START_SECONDS, 2)
        eventually("the asset watcher to start", lambda: live.asset_state(ASSET), START_SECONDS)
        yield live
    finally:
        live.stop()


def triggerer_job(stack: LiveStack) -> int | None:
    """The id of the triggerer job that runs now (the newest one still heartbeating)."""
    rows = stack.query("select max(id) from job where job_type = 'TriggererJob' and state = 'running' "
                       "and end_date is null")
    return rows[0][0] if rows else None


def watcher_triggerer(stack: LiveStack) -> int | None:
    rows = stack.query("select t.triggerer_id from trigger t join asset_watcher w on w.trigger_id = t.id "
                       "join asset a on a.id = w.asset_id where a.name = ?", ASSET)
    return rows[0][0] if rows else None


def restart_triggerer(stack: LiveStack, signum: signal.Signals, while_down: Callable[[], None]) -> int:
    """Stop the triggerer with ``signum``, run ``while_down``, start it again and wait until it has taken
    over the triggers (after a SIGKILL, once the dead one's heartbeat is stale); returns the new job id."""
    old = triggerer_job(stack)
    assert old is not None, "no triggerer is running"
    stack.stop_component("triggerer", signum)
    while_down()
    stack.start_component("triggerer")
    new = eventually("a new triggerer job", lambda: (job := triggerer_job(stack)) is not None and job > old and job,
                     START_SECONDS)
    eventually("the asset watcher to move to the new triggerer", lambda: watcher_triggerer(stack) == new,
               START_SECONDS)
    return new


def finished(stack: LiveStack, dag_id: str, run_ids: list[str]) -> bool:
    """True once every run succeeded; fails at once if one failed."""
    states = dict(stack.runs(dag_id))
    failed = [run_id for run_id in run_ids if states.get(run_id) == "failed"]
    assert not failed, f"runs failed: {failed}; logs in {stack.home}"
    return all(states.get(run_id) == "success" for run_id in run_ids)


def xcom_value(stack: LiveStack, dag_id: str, run_id: str, task_id: str) -> Any:
    rows = stack.query("select value from xcom where dag_id = ? and run_id = ? and task_id = ? and key = "
                       "'return_value'", dag_id, run_id, task_id)
    assert rows, f"no result of {dag_id}.{task_id} in {run_id}"
    value = rows[0][0]
    return json.loads(value) if isinstance(value, str | bytes) else value


class Sensors:
    """Runs of the sensor DAG, one per date, each waiting for steps 0 and 6 of its date."""

    def __init__(self, stack: LiveStack, store: Store, month: int) -> None:
        self.stack = stack
        self.store = store
        self.days = [dt.date(2005, month, day) for day in range(1, SENSOR_RUNS + 1)]
        self.run_ids = [f"restart_{day:%Y%m%d}" for day in self.days]

    def trigger(self) -> None:
        for day, run_id in zip(self.days, self.run_ids):  # the REST API answers in a blink, the CLI in seconds
            response = requests.post(f"http://127.0.0.1:{self.stack.port}/api/v2/dags/{SENSOR_DAG}/dagRuns",
                                     json={"dag_run_id": run_id, "logical_date": f"{day}T00:00:00Z"}, timeout=60)
            assert response.status_code == 200, response.text

    def states(self) -> list[str | None]:
        return [self.stack.task_state(SENSOR_DAG, run_id, "wait_for_steps") for run_id in self.run_ids]

    def post(self, day: dt.date, step: int) -> None:
        self.store.notify("mars", {**SENSOR_DATA, "date": day, "step": step},
                          location=f"file:///{day:%Y%m%d}/{step}")

    def check_released(self) -> None:
        eventually("every sensor run to succeed", lambda: finished(self.stack, SENSOR_DAG, self.run_ids), RUN_SECONDS)
        for day, run_id in zip(self.days, self.run_ids):
            expected = [f"file:///{day:%Y%m%d}/{step}" for step in (0, 6)]
            assert xcom_value(self.stack, SENSOR_DAG, run_id, "locations") == expected


class Producer:
    """Posts one notification of the stream at a time, from a thread, and remembers the keys in post order."""

    def __init__(self, store: Store, date: str) -> None:
        self.store = store
        self.date = date
        self.keys: list[str] = []

    def post(self, count: int) -> None:
        for _ in range(count):
            step = len(self.keys)
            result = self.store.notify("mars", {**STREAM_DATA, "date": self.date, "step": step},
                                       location=f"file:///stream/{step}")
            self.keys += result.keys
            time.sleep(POST_PAUSE)

    def post_in_background(self, count: int) -> threading.Thread:
        thread = threading.Thread(target=self.post, args=(count,), name="producer")
        thread.start()
        return thread


def event_keys(stack: LiveStack) -> list[str]:
    return [notification["key"] for notification in stack.asset_notifications(ASSET)]


def confirmed_key(stack: LiveStack) -> str | None:
    """The key of the last notification whose asset event Airflow confirmed stored (the watcher's cursor)."""
    cursor = dict(stack.asset_state(ASSET)).get("aviso_cursor")
    return json.loads(cursor).get("key") if cursor else None


@live
@pytest.mark.parametrize("signum", SIGNALS)
def test_restart_between_notifications_releases_sensors_and_repeats_nothing(
        stack: LiveStack, store: Store, unique_date: str, signum: signal.Signals) -> None:
    """Sensors deferred and every notification confirmed when the triggerer stops: exactly once."""
    sensors = Sensors(stack, store, month=1 if signum == signal.SIGTERM else 2)
    sensors.trigger()
    eventually("every sensor to be deferred", lambda: sensors.states() == ["deferred"] * SENSOR_RUNS, RUN_SECONDS)
    events_before = len(stack.asset_payloads(ASSET))  # an asset event may carry several notifications
    notifications_before = len(stack.asset_notifications(ASSET))
    producer = Producer(store, unique_date)
    producer.post(STREAM["before"])
    eventually("the watcher to confirm the notifications", lambda: confirmed_key(stack) == producer.keys[-1],
               RUN_SECONDS)

    def while_down() -> None:
        assert sensors.states() == ["deferred"] * SENSOR_RUNS
        for day in sensors.days:
            sensors.post(day, 0)
        sensors.post(sensors.days[0], 6)  # the first run has everything before the triggerer is back
        producer.post(STREAM["while_down"])

    restart_triggerer(stack, signum, while_down)
    for day in sensors.days[1:]:
        sensors.post(day, 6)
    producer.post(STREAM["after"])
    sensors.check_released()
    received = wait_for_stream(stack, producer.keys, notifications_before)
    assert received == producer.keys, "each notification once, in order"
    check_no_event_ran_twice(stack, events_before)


@live
@pytest.mark.parametrize("signum", SIGNALS)
def test_restart_mid_stream_loses_no_notification(stack: LiveStack, store: Store, unique_date: str,
                                                  signum: signal.Signals) -> None:
    """Notifications keep coming while the triggerer stops: each has exactly one asset event, in order."""
    events_before = len(stack.asset_payloads(ASSET))  # an asset event may carry several notifications
    notifications_before = len(stack.asset_notifications(ASSET))
    producer = Producer(store, unique_date)
    producer.post(STREAM["before"])
    stopping = producer.post_in_background(STREAM["while_down"])  # posts go on while the triggerer stops
    restart_triggerer(stack, signum, lambda: stopping.join(timeout=RUN_SECONDS))
    assert not stopping.is_alive()
    producer.post(STREAM["after"])
    posted = producer.keys
    received = wait_for_stream(stack, posted, notifications_before)
    assert set(received) == set(posted), f"missing: {sorted(set(posted) - set(received))}"
    print(f"{signum.name}: {len(received)} notifications in asset events for {len(posted)} posted")
    assert received == posted, "each notification once, in order"
    check_no_event_ran_twice(stack, events_before)


def wait_for_stream(stack: LiveStack, posted: list[str], before: int) -> list[str]:
    """The keys of the stream's asset events, once the last notification's is there (events come in order)."""
    eventually("the last notification's asset event", lambda: posted[-1] in event_keys(stack)[before:],
               RUN_SECONDS)
    return event_keys(stack)[before:]


def check_no_event_ran_twice(stack: LiveStack, events_before: int) -> None:
    """No asset event of the stream is consumed by two DAG runs, and the runs that consumed them succeed.

    (Which run consumes an event is the scheduler's business: on SQLite an event that arrives while a
    run is being created can wait for the next event to be consumed, so this does not count them all.)
    """
    event_ids = {row[0] for row in stack.query(
        "select e.id from asset_event e join asset a on a.id = e.asset_id where a.name = ? order by e.id",
        ASSET)[events_before:]}

    def consumed() -> list[tuple[int, int, str]] | None:
        rows = stack.query("select x.event_id, r.id, r.state from dagrun_asset_event x join dag_run r on "
                           "r.id = x.dag_run_id where r.dag_id = ?", ASSET_DAG)
        mine = [row for row in rows if row[0] in event_ids]
        assert all(state != "failed" for _, _, state in mine), f"asset-triggered runs failed: {mine}"
        return mine if mine and all(state == "success" for _, _, state in mine) else None

    rows = eventually("the runs that consumed the stream to succeed", consumed, RUN_SECONDS)
    runs_of_event = collections.Counter(event_id for event_id, _, _ in rows)
    assert all(count == 1 for count in runs_of_event.values()), runs_of_event


class Watcher:
    """An AvisoEventTrigger run the way the triggerer runs an asset watcher: subscribed to Airflow's
    SharedStreamManager, each event bound to its persist-confirmation number as it is taken."""

    def __init__(self, state: MemoryStateStore, aviso_conn: str, event_interval: float = 0.2) -> None:
        from airflow.triggers.shared_stream import SharedStreamManager

        self.manager = SharedStreamManager()
        self.trigger = AvisoEventTrigger(event="mars", request=dict(STREAM_DATA), aviso_conn_id=aviso_conn,
                                         event_interval=event_interval, start_from="now")
        self.trigger.asset_state_store = state  # type: ignore[assignment]
        self.key = self.trigger.shared_stream_key()
        assert self.key is not None, "a watcher with a state store uses the acknowledged stream"
        self.events = self.trigger.filter_shared_stream(self.manager.subscribe(trigger_id=1, trigger=self.trigger,
                                                                               key=self.key))

    async def take(self, timeout: float = 30) -> tuple[list[str], int]:
        """The keys of the next event's notifications and the number Airflow confirms it by once stored."""
        event = await asyncio.wait_for(anext(self.events), timeout)
        seq = self.manager.bind_pending_event(trigger_id=1, key=self.key)
        assert seq is not None
        return [n["key"] for n in event.payload["notifications"]], seq

    async def stop(self) -> None:
        await self.events.aclose()
        await self.manager.unsubscribe(1, self.key)


async def eventually_async(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


async def notify(store: Store, date: str, steps: str | int) -> list[str]:
    return (await asyncio.to_thread(store.notify, "mars", {**STREAM_DATA, "date": date, "step": steps})).keys


async def test_watcher_position_moves_only_past_confirmed_events(store: Store, unique_date: str,
                                                                 aviso_conn: str) -> None:
    state = MemoryStateStore()
    first = Watcher(state, aviso_conn)
    taking = asyncio.create_task(first.take())
    await eventually_async("the watcher to save where it starts", lambda: CURSOR_KEY in state.values)
    one = await notify(store, unique_date, 0)
    taken, seq = await taking
    assert taken == one
    start = dict(state.values[CURSOR_KEY])
    next_event = asyncio.create_task(first.take())
    later = await notify(store, unique_date, "6/12")  # posted while the first event is not yet stored
    await asyncio.sleep(0.5)  # not a synchronisation: the time in which nothing may happen
    assert not next_event.done(), "the next event waits until the first one is stored"
    assert state.values[CURSOR_KEY] == start, "nothing confirmed: the position stays"
    first.manager.confirm_persisted([seq])
    await eventually_async("the position to pass the confirmed event",
                           lambda: state.values[CURSOR_KEY]["key"] == one[-1])
    keys, _ = await next_event
    assert keys == later, "what arrived meanwhile goes in one event"
    await first.stop()  # this event is never stored: a crash

    again = Watcher(state, aviso_conn)
    try:
        assert (await again.take())[0] == later, "the unconfirmed notifications come again, the others do not"
    finally:
        await again.stop()


async def test_one_transaction_is_one_event(store: Store, unique_date: str, aviso_conn: str) -> None:
    watcher = Watcher(MemoryStateStore(), aviso_conn)
    try:
        taking = asyncio.create_task(watcher.take())
        await eventually_async("the watcher to start", lambda: CURSOR_KEY in watcher.trigger.asset_state_store.values)
        keys = await notify(store, unique_date, "0/to/24/by/6")
        assert (await taking)[0] == keys
    finally:
        await watcher.stop()


async def test_unconfirmed_event_stops_the_position_and_the_stream() -> None:
    from airflow.triggers.shared_stream import AdvanceItem, AdvanceOutcome

    state = MemoryStateStore()
    stream = NotificationStream({"event": "mars", "request": STREAM_DATA}, WatcherState(state, 1))
    stored, failed, after = Position(7, "/ec/mars/a"), Position(8, "/ec/mars/b"), Position(9, "/ec/mars/c")
    with pytest.raises(AvisoWorkflowsError, match="/ec/mars/b"):
        await stream.advance([AdvanceItem(stored, AdvanceOutcome(acked=1, failed=0)),
                              AdvanceItem(failed, AdvanceOutcome(acked=0, failed=1)),
                              AdvanceItem(after, AdvanceOutcome(acked=1, failed=0))])
    assert state.values[CURSOR_KEY] == {"revision": 7, "key": "/ec/mars/a", "trigger": 1}
