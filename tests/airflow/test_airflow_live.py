"""The provider in a live Airflow (api-server, scheduler, dag-processor, triggerer; SQLite) on loopback.

Runs in ``make test``; set ``AVISO_SKIP_LIVE=1`` to skip it locally.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow_helpers import AIRFLOW, DAGS, connection_json
from live_stack import LiveStack, eventually

from aviso_workflows import Store
from aviso_workflows.airflow.assets import payload_notifications
from aviso_workflows.position import place

pytestmark = [
    pytest.mark.live,
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("AVISO_SKIP_LIVE") == "1", reason="AVISO_SKIP_LIVE=1"),
]
OPER = {"class": "od", "expver": 1, "domain": "g", "stream": "oper", "time": 0}
RESEARCH = {"class": "rd", "expver": "abcd", "domain": "g", "stream": "oper", "time": 0}
ASSET = "aviso_mars_oper"
BACKFILL_DATES = [dt.date(2003, 3, d) for d in range(1, 6)]
START_SECONDS = 180
RUN_SECONDS = 120


@pytest.fixture(scope="module")
def stack(etcd_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """The example consumer and asset-driven DAGs plus a daily DAG to backfill, served by a live Airflow."""
    store = Store([etcd_url])
    for day in BACKFILL_DATES:  # announced before anything runs: the backfill must not wait for them
        store.notify("mars", {**RESEARCH, "date": day, "step": 0}, location=f"file:///research/{day:%Y%m%d}")
    home = tmp_path_factory.mktemp("airflow-live")
    dags = home / "dags"
    dags.mkdir()
    for source in (DAGS / "aviso_consumer.py", DAGS / "aviso_asset_driven.py",
                   Path(__file__).with_name("live_dags") / "aviso_live_backfill.py",
                   Path(__file__).with_name("live_dags") / "aviso_live_bad_watcher.py"):
        shutil.copy(source, dags / source.name)
    live = LiveStack(home, dags, {"AIRFLOW_CONN_AVISO_DEFAULT": connection_json(etcd_url)})
    try:
        live.start()
        eventually("the DAGs to be parsed", lambda: len(live.query(
            "select dag_id from dag where dag_id like 'aviso_%' and is_paused = 0")) == 3, START_SECONDS, 2)
        yield live
    finally:
        live.stop()


def test_asset_driven_dag_runs_once_per_notification(stack: LiveStack, store: Store) -> None:
    eventually("the asset watcher to start", lambda: stack.asset_state(ASSET), START_SECONDS)
    posted = []
    when: dict[str, float] = {}
    for number, step in enumerate((0, 6, 12), start=1):
        posted += store.notify("mars", {**OPER, "date": "20040101", "step": step}, location=f"file:///{step}").keys
        when[posted[-1]] = time.time()
        eventually(f"asset-triggered run {number}", lambda n=number: len(stack.runs("aviso_asset_driven")) >= n,
                   RUN_SECONDS)
    eventually("the asset runs to succeed", lambda: all(
        s == "success" for _, s in stack.runs("aviso_asset_driven")), RUN_SECONDS)
    assert len(stack.runs("aviso_asset_driven")) == 3
    delivered = stack.asset_notifications(ASSET)
    # A watcher starts start_lookback seconds back (what came since the deploy); earlier tests' posts may be in it.
    first = min(n["revision"] for n in delivered if n["key"] in posted)
    assert [n["key"] for n in delivered if n["revision"] >= first] == posted
    print("separate posts, one at a time: " + latencies([r for r in consumed(stack) if r[1] in when], when))


def consumed(stack: LiveStack) -> list[tuple[str, str, float, float]]:
    """(run id, key, post→run-start seconds, revision) of every asset event a run of the example consumed."""
    rows = stack.query(
        "select r.run_id, e.extra, (julianday(r.start_date) - 2440587.5) * 86400 from asset_event e "
        "join asset a on a.id = e.asset_id join dagrun_asset_event d on d.event_id = e.id "
        "join dag_run r on r.id = d.dag_run_id where a.name = ? and r.start_date is not null order by e.id", ASSET)
    return [(run_id, n["key"], started, n["revision"]) for run_id, extra, started in rows
            for n in payload_notifications(json.loads(extra)["payload"])]


def test_bursts_reach_runs_in_order_each_event_once(stack: LiveStack, store: Store) -> None:
    """Five separate posts, then one transaction of five keys, back to back. Airflow may put several events
    in one run and may keep an event queued until the asset's next event: what holds is one event per
    notification, each consumed by exactly one run, runs taking consecutive events in write order."""
    eventually("the asset watcher to start", lambda: stack.asset_state(ASSET), START_SECONDS)
    posted: dict[str, float] = {}
    for step in range(0, 30, 6):
        posted.update(dict.fromkeys(store.notify("mars", {**OPER, "date": "20040301", "step": step}).keys,
                                    time.time()))
    posted.update(dict.fromkeys(store.notify("mars", {**OPER, "date": "20040302", "step": "0/to/24/by/6"}).keys,
                                time.time()))
    for sweep in range(1, 7):  # a later notification takes along the events Airflow left queued (bounded)
        if eventually_or_none(lambda: set(posted) <= {key for _, key, *_ in consumed(stack)}, 20):
            break
        posted.update(dict.fromkeys(store.notify("mars", {**OPER, "date": "20040303", "step": sweep}).keys,
                                    time.time()))
    rows = [row for row in consumed(stack) if row[1] in posted]
    keys = [key for _, key, *_ in rows]
    assert len(keys) == len(set(keys)), "an event was consumed by two runs"
    events = [n for n in stack.asset_notifications(ASSET) if n["key"] in posted]
    written = [p["key"] for p in events]
    assert sorted(written) == sorted(posted), "not one asset event per notification"
    assert written == [p["key"] for p in sorted(events, key=lambda p: place(p["revision"], p["key"]))], \
        "not in write order"
    burst = list(posted)[:10]
    assert set(burst) <= set(keys), f"events of the burst never reached a run: {set(burst) - set(keys)}"
    runs = list(dict.fromkeys(run for run, *_ in rows))
    order = [r[1] for run in runs for r in sorted((r for r in rows if r[0] == run), key=lambda r: place(r[3], r[1]))]
    assert order == [key for key in written if key in keys], "runs did not take consecutive events in write order"
    print(f"burst of 10 notifications (+{len(posted) - 10} later): {len(runs)} runs; " + latencies(rows, posted))


def latencies(rows: list[tuple[str, str, float, float]], posted: dict[str, float]) -> str:
    """Post → run start of each run, timed from the post of the run's first event."""
    first: dict[str, tuple[str, float]] = {}
    for run, key, started, _ in rows:
        first.setdefault(run, (key, started))
    seconds = [started - posted[key] for key, started in first.values()]
    return "post→run start of each run: " + ", ".join(f"{value:.1f} s" for value in seconds)


def eventually_or_none(check: Any, timeout: float) -> bool:
    """Whether ``check`` holds within ``timeout`` seconds (polled every second)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(1.0)
    return bool(check())


def test_typo_in_an_asset_watcher_is_an_import_error(stack: LiveStack) -> None:
    eventually("the import error to be recorded", lambda: stack.query(
        "select stacktrace from import_error where filename like '%aviso_live_bad_watcher.py'"), START_SECONDS)
    listed = subprocess.run([str(AIRFLOW), "dags", "list-import-errors", "--output", "json"], env=stack.env,
                            capture_output=True, text=True, timeout=120).stdout  # exits 1 when it lists errors
    error = next(e["error"] for e in json.loads(listed[listed.index("[{"):]) if "bad_watcher" in e["filepath"])
    assert "ValidationError: clas: 'clas' is not valid; unknown field for event 'mars'" in error, error


def test_deferred_sensor_released_by_a_notify(stack: LiveStack, store: Store) -> None:
    stack.cli("dags", "trigger", "aviso_consumer", "--run-id", "live_consumer", "--logical-date",
              "2004-02-01T00:00:00+00:00")
    eventually("the sensor to be deferred", lambda: stack.task_state(
        "aviso_consumer", "live_consumer", "wait_for_steps") == "deferred", RUN_SECONDS)
    store.notify("mars", {**OPER, "date": "20040201", "step": "0/6/12"}, location="file:///consumer")
    eventually("the consumer run to succeed", lambda: stack.runs("aviso_consumer") == [("live_consumer", "success")],
               RUN_SECONDS)
    assert stack.task_state("aviso_consumer", "live_consumer", "process") == "success"


def finished_backfill(stack: LiveStack) -> list[tuple[str, str]] | None:
    runs = stack.runs("aviso_live_backfill", "backfill")
    return runs if len(runs) == len(BACKFILL_DATES) and all(state == "success" for _, state in runs) else None


def test_backfill_of_announced_days_does_not_wait(stack: LiveStack) -> None:
    first, last = BACKFILL_DATES[0].isoformat(), BACKFILL_DATES[-1].isoformat()
    # Paused while its runs are created: on SQLite, a creation that meets a locked database deletes the
    # runs it made, and a scheduler already working on one of them stops (an Airflow race, not ours).
    stack.cli("dags", "pause", "aviso_live_backfill")
    stack.cli("backfill", "create", "--dag-id", "aviso_live_backfill", "--from-date", first, "--to-date", last)
    stack.cli("dags", "unpause", "aviso_live_backfill")
    runs = eventually("5 successful backfill runs", lambda: finished_backfill(stack), RUN_SECONDS)
    seconds = [stack.query("select (julianday(end_date) - julianday(start_date)) * 86400 from task_instance "
                           "where dag_id = 'aviso_live_backfill' and run_id = ?", run_id)[0][0] for run_id, _ in runs]
    assert max(seconds) < 30, seconds  # found at the first look: never deferred
