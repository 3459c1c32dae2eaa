"""The provider in a live Airflow (api-server, scheduler, dag-processor, triggerer; SQLite) on loopback.

Runs in ``make test``; set ``AVISO_SKIP_LIVE=1`` to skip it locally.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow_helpers import DAGS, connection_json
from live_stack import LiveStack, eventually

from aviso_workflows import Store

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
                   Path(__file__).with_name("live_dags") / "aviso_live_backfill.py"):
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
    for number, step in enumerate((0, 6, 12), start=1):
        posted += store.notify("mars", {**OPER, "date": "20040101", "step": step}, location=f"file:///{step}").keys
        eventually(f"asset-triggered run {number}", lambda n=number: len(stack.runs("aviso_asset_driven")) >= n,
                   RUN_SECONDS)
    eventually("the asset runs to succeed", lambda: all(
        s == "success" for _, s in stack.runs("aviso_asset_driven")), RUN_SECONDS)
    assert len(stack.runs("aviso_asset_driven")) == 3
    assert [p["key"] for p in stack.asset_payloads(ASSET)] == posted


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
