"""Every example DAG under ``dag.test()`` against the test etcd (each run bounded by a timeout)."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from airflow_helpers import run_dag

from aviso_workflows import Store

pytestmark = pytest.mark.slow
FIELDS = {"class": "od", "expver": 1, "domain": "g", "stream": "oper", "time": 0}


def iso(date: str) -> str:
    return f"{date[:4]}-{date[4:6]}-{date[6:]}T00:00:00+00:00"


def test_producer_then_consumer(airflow_env: dict[str, str], store: Store, unique_date: str) -> None:
    produced = run_dag(airflow_env, "aviso_producer", iso(unique_date))
    assert produced["state"] == "success", produced
    found = store.get("mars", {**FIELDS, "date": unique_date})
    assert sorted(int(n.request["step"]) for n in found) == [0, 6, 12], produced
    consumed = run_dag(airflow_env, "aviso_consumer", iso(unique_date))
    assert consumed["state"] == "success", consumed
    assert consumed["xcom"]["process"] == [produced["xcom"][f"model_step_{s}"] for s in (0, 6, 12)]


def test_consumer_is_released_by_a_later_post(airflow_env: dict[str, str], store: Store, unique_date: str) -> None:
    store.notify("mars", {**FIELDS, "date": unique_date, "step": 0}, location="file:///first")
    later = threading.Timer(8.0, store.notify, ("mars", {**FIELDS, "date": unique_date, "step": "6/12"}),
                            {"location": "file:///later"})
    later.start()
    try:
        started = time.monotonic()
        consumed = run_dag(airflow_env, "aviso_consumer", iso(unique_date))
    finally:
        later.cancel()
    assert consumed["state"] == "success", consumed
    assert consumed["xcom"]["process"] == ["file:///first", "file:///later", "file:///later"]
    assert time.monotonic() - started >= 8.0


def test_consumer_without_logical_date(airflow_env: dict[str, str], store: Store) -> None:
    today = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    store.notify("mars", {**FIELDS, "date": today, "step": "0/6/12"}, location="file:///today")
    consumed = run_dag(airflow_env, "aviso_consumer", "none")
    assert consumed["state"] == "success", consumed
    assert consumed["xcom"]["process"] == ["file:///today"] * 3


def test_daily_catchup_run_of_a_past_day(airflow_env: dict[str, str], store: Store) -> None:
    day = (dt.datetime.now(dt.UTC) - dt.timedelta(days=3)).strftime("%Y%m%d")
    store.notify("mars", {**FIELDS, "date": day, "step": "0/6/12"}, location=f"file:///{day}")
    run = run_dag(airflow_env, "aviso_daily_catchup", iso(day))
    assert run["state"] == "success", run
    assert run["xcom"]["archive"] == 3


def test_asset_driven_dag(airflow_env: dict[str, str]) -> None:
    run = run_dag(airflow_env, "aviso_asset_driven")
    assert run["state"] == "success", run
    assert run["xcom"]["react"] == []
