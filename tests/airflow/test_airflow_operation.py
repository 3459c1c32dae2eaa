"""Asset watchers in operation on a live Airflow with two triggerers (Airflow's HA set-up), one stack for all.

- every notification is handled by task code (``aviso_notifications``) exactly once, with no later post
  needed: a transaction of five keys, and five posts back to back;
- a triggerer killed with SIGKILL while notifications keep coming: the other one takes the watcher over
  and every notification has exactly one asset event;
- a DAG deployed while the stack runs gets what was posted before its watcher started, and what is posted
  while it is paused comes on unpause;
- an etcd stopped and started again during a deferred sensor's wait: the task's log says so.

Runs in ``make test`` (markers ``live``, ``slow``); ``AVISO_SKIP_LIVE=1`` skips it.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow_helpers import connection_json
from live_stack import LiveStack, eventually

from aviso_workflows import Store, server
from aviso_workflows.position import place
from aviso_workflows.server import free_port

pytestmark = [
    pytest.mark.live,
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("AVISO_SKIP_LIVE") == "1", reason="AVISO_SKIP_LIVE=1"),
]
LIVE_DAGS = Path(__file__).with_name("live_dags")
DAG_ID = "aviso_live_handled"
OUTAGE = "aviso_live_outage"
ASSET = "aviso_handled"
DATA = {"class": "rd", "expver": "hnd1", "domain": "g", "stream": "oper", "time": 0}
#: The issue's bound: every notification handled by task code this soon after its post, with no later post.
HANDLED_SECONDS = 60
START_SECONDS = 240
#: A SIGKILLed triggerer keeps its triggers until its last heartbeat is this old (Airflow's default: 30 s).
HEALTH_CHECK_SECONDS = 10
TAKE_OVER_SECONDS = 120


class Stack(LiveStack):
    """The live stack plus which triggerer component runs which triggerer job."""

    triggerer_of_job: dict[int, str]
    flaky: server.ServerInfo

    def start_triggerer(self, name: str) -> int:
        """Start triggerer ``name`` and return its job id once it heartbeats."""
        known = self.running_triggerer_jobs() | set(self.triggerer_of_job)
        self.start_component(name)
        job = eventually(f"{name} to start its job", lambda: max(self.running_triggerer_jobs() - known, default=0),
                         START_SECONDS)
        self.triggerer_of_job[job] = name
        return job


@pytest.fixture(scope="module")
def stack(etcd_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("airflow-operation")
    dags = home / "dags"
    dags.mkdir()
    for dag_id in (DAG_ID, OUTAGE):
        shutil.copy(LIVE_DAGS / f"{dag_id}.py", dags / f"{dag_id}.py")
    flaky = server.start(home / "etcd-flaky", free_port())  # the outage test's own etcd
    live = Stack(home, dags, {
        "AIRFLOW_CONN_AVISO_DEFAULT": connection_json(etcd_url),
        "AIRFLOW_CONN_AVISO_FLAKY": connection_json(flaky.client_url, timeout=1),
        "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(HEALTH_CHECK_SECONDS),
        "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
    })
    live.triggerer_of_job = {}
    live.flaky = flaky
    try:
        live.start()  # one triggerer: it takes the watcher; the second one stands by
        first = eventually("the first triggerer's job", lambda: max(live.running_triggerer_jobs(), default=0),
                           START_SECONDS)
        live.triggerer_of_job[first] = "triggerer"
        live.start_triggerer("triggerer-2")
        eventually("the DAG to be parsed", lambda: live.query(
            "select dag_id from dag where dag_id = ? and is_paused = 0", DAG_ID), START_SECONDS, 2)
        eventually("the asset watcher to start", lambda: live.asset_state(ASSET), START_SECONDS)
        yield live
    finally:
        live.stop()
        server.stop(home / "etcd-flaky")


def event_notifications(stack: LiveStack) -> list[dict[str, Any]]:
    return stack.asset_notifications(ASSET)


def handled(stack: LiveStack, dag_id: str = DAG_ID) -> list[tuple[str, str, float]]:
    """(run id, key, task end in seconds since the epoch) of every notification a finished task handled."""
    rows = stack.query(
        "select x.run_id, x.value, (julianday(t.end_date) - 2440587.5) * 86400 from xcom x join task_instance t "
        "on t.dag_id = x.dag_id and t.run_id = x.run_id and t.task_id = x.task_id "
        "where x.dag_id = ? and x.task_id = 'handle' and x.key = 'return_value' and t.state = 'success'", dag_id)
    found = []
    for run_id, value, ended in rows:
        keys = json.loads(value) if isinstance(value, str | bytes) else value
        found += [(run_id, key, ended) for key in keys]
    return found


def handled_once(stack: LiveStack, posted: list[str], dag_id: str = DAG_ID,
                 seconds: float = HANDLED_SECONDS) -> list[tuple[str, str, float]]:
    """Wait (bounded by the issue's 60 s) until every posted key is handled; each must be handled once."""
    def all_handled() -> list[tuple[str, str, float]] | None:
        rows = [row for row in handled(stack, dag_id) if row[1] in posted]
        return rows if {key for _, key, _ in rows} == set(posted) else None

    rows = eventually(f"every one of {len(posted)} notifications handled by task code, no further post",
                      all_handled, seconds, 0.5)
    counts = collections.Counter(key for _, key, _ in rows)
    assert all(count == 1 for count in counts.values()), f"handled more than once: {counts}"
    return rows


def test_five_steps_of_one_notify_are_all_handled(stack: Stack, store: Store, unique_date: str) -> None:
    """Airflow 3.3 gives a run only the asset events stored up to its queue entry's creation: five events
    of one transaction used to give a run the first (or last) step and strand the other four."""
    posted_at = time.time()
    posted = store.notify("mars", {**DATA, "date": unique_date, "step": "0/to/24/by/6"}).keys
    rows = handled_once(stack, posted)
    runs = {run for run, _, _ in rows}
    print(f"five-step notify: all five handled by task code {max(t for *_, t in rows) - posted_at:.1f} s after "
          f"the post, in {len(runs)} run(s)")


def test_posts_back_to_back_are_all_handled(stack: Stack, store: Store, unique_date: str) -> None:
    posted: list[str] = []
    posted_at = time.time()
    for step in range(5):
        posted += store.notify("mars", {**DATA, "date": unique_date, "step": step}).keys
    rows = handled_once(stack, posted)
    runs = {run for run, _, _ in rows}
    print(f"five posts back to back: all handled by task code {max(t for *_, t in rows) - posted_at:.1f} s after "
          f"the first post, in {len(runs)} run(s)")


class Producer:
    """Posts the stream's notifications one at a time and remembers their keys in post order."""

    def __init__(self, store: Store, date: str) -> None:
        self.store, self.date, self.keys = store, date, []  # type: ignore[var-annotated]

    def post(self, count: int, pause: float) -> None:
        for _ in range(count):
            step = len(self.keys)
            self.keys += self.store.notify("mars", {**DATA, "date": self.date, "step": step}).keys
            time.sleep(pause)  # a producer's pace, not a synchronisation


def test_kill_9_of_the_watchers_triggerer_stores_each_notification_once(
        stack: Stack, store: Store, unique_date: str) -> None:
    """Two triggerers; the one running the watcher is killed (SIGKILL, by pid) just after an asset event is
    stored and while posts go on: the other takes over, and each notification has exactly one asset event."""
    before = len(event_notifications(stack))
    producer = Producer(store, unique_date)
    producer.post(8, 0.1)
    eventually("the first 8 notifications' events", lambda: len(event_notifications(stack)) - before >= 8,
               HANDLED_SECONDS, 0.2)
    victim = stack.watcher_triggerer(ASSET)
    assert victim in stack.triggerer_of_job, f"the watcher runs on {victim}, not one of {stack.triggerer_of_job}"
    events_before = len(stack.asset_payloads(ASSET))
    rest = threading.Thread(target=producer.post, args=(12, 0.3), name="producer")
    rest.start()
    eventually("an asset event of the remaining posts", lambda: len(stack.asset_payloads(ASSET)) > events_before,
               HANDLED_SECONDS, 0.05)
    stack.stop_component(stack.triggerer_of_job[victim], signal.SIGKILL)
    state = dict(stack.asset_state(ASSET))
    stored = event_notifications(stack)[-1]
    cursor = json.loads(state["aviso_cursor"])
    behind = place(cursor["revision"], cursor["key"]) < place(stored["revision"], stored["key"])
    rest.join(timeout=TAKE_OVER_SECONDS)
    assert not rest.is_alive()
    eventually("the other triggerer to take the watcher over",
               lambda: (job := stack.watcher_triggerer(ASSET)) is not None and job != victim, TAKE_OVER_SECONDS)
    eventually("the last notification's event", lambda: producer.keys[-1] in {
        n["key"] for n in event_notifications(stack)[before:]}, TAKE_OVER_SECONDS, 0.5)
    received = [n["key"] for n in event_notifications(stack)[before:]]
    print(f"kill -9 of the watcher's triggerer {'with' if behind else 'without'} its own position behind the "
          f"stored events: {len(received)} notifications in asset events for {len(producer.keys)} posted")
    assert received == producer.keys, "not exactly one asset event per notification, in order"
    handled_once(stack, producer.keys)
    stack.start_triggerer(stack.triggerer_of_job[victim])  # two triggerers again for what follows


DEPLOYED = "aviso_live_deployed"
DEPLOYED_DATA = {**DATA, "expver": "dep1"}


def watchers_of(stack: LiveStack, asset: str) -> int:
    return stack.query("select count(*) from asset_watcher w join asset a on a.id = w.asset_id where a.name = ?",
                       asset)[0][0]


def test_what_is_posted_between_deploy_and_watcher_start_then_while_paused_is_handled(
        stack: Stack, store: Store, unique_date: str) -> None:
    """Airflow starts an asset's watcher at the first parse after the DAG is deployed or unpaused, seconds
    later: a post in between used to be lost (the watcher started "from now"). Then, paused: the watcher
    stops; a post while paused comes once the DAG is unpaused."""
    shutil.copy(LIVE_DAGS / f"{DEPLOYED}.py", stack.home / "dags" / f"{DEPLOYED}.py")
    early = store.notify("mars", {**DEPLOYED_DATA, "date": unique_date, "step": 0}).keys
    assert not stack.asset_state("aviso_deployed"), "the watcher had started already: nothing is tested"
    eventually("the deployed DAG's watcher to start", lambda: stack.asset_state("aviso_deployed"), START_SECONDS)
    rows = handled_once(stack, early, DEPLOYED, START_SECONDS)
    print(f"posted on deploy, before its watcher started: handled in run {rows[0][0]}")

    stack.cli("dags", "pause", DEPLOYED)
    eventually("the paused DAG's watcher to stop", lambda: watchers_of(stack, "aviso_deployed") == 0, START_SECONDS)
    paused = store.notify("mars", {**DEPLOYED_DATA, "date": unique_date, "step": 6}).keys
    stack.cli("dags", "unpause", DEPLOYED)
    unpaused_at = time.time()
    rows = handled_once(stack, paused, DEPLOYED, START_SECONDS)
    print(f"posted while paused: handled {rows[0][2] - unpaused_at:.1f} s after the unpause")


def task_log(stack: LiveStack, dag_id: str, run_id: str) -> str:
    """Everything Airflow wrote for the task's attempts (the trigger's lines included), as its UI shows it."""
    folder = stack.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
    return "".join(path.read_text(errors="replace") for path in sorted(folder.rglob("*.log")))


def test_an_etcd_outage_during_a_deferred_wait_is_in_the_tasks_log(stack: Stack) -> None:
    stack.cli("dags", "trigger", OUTAGE, "--run-id", "outage")
    eventually("the sensor to be deferred", lambda: stack.task_state(OUTAGE, "outage", "wait") == "deferred",
               START_SECONDS)
    home = stack.home / "etcd-flaky"
    port = int(stack.flaky.client_url.rsplit(":", 1)[1])
    server.stop(home)
    down = eventually("the outage in the task's log", lambda: "etcd unreachable:" in task_log(stack, OUTAGE, "outage"),
                      60, 0.5)
    server.start(home, port)
    eventually("the recovery in the task's log",
               lambda: "etcd reachable again after" in task_log(stack, OUTAGE, "outage"), 60, 0.5)
    Store([stack.flaky.client_url]).notify("mars", {**DATA, "expver": "out1", "date": "20300101", "step": 0})
    eventually("the sensor to succeed", lambda: stack.task_state(OUTAGE, "outage", "wait") == "success", 120)
    said = task_log(stack, OUTAGE, "outage")
    lines = [line for line in said.splitlines() if "etcd unreachable:" in line or "etcd reachable again" in line]
    assert down and len(lines) >= 2 and "watch on /ec/mars/ interrupted" in lines[0], lines
    print("in the task's log: " + " | ".join(logged_text(line) for line in lines))


def logged_text(line: str) -> str:
    """The message of a task log line (Airflow writes them as JSON)."""
    try:
        return str(json.loads(line).get("event", line))
    except ValueError:
        return line.strip()
