"""The example suites on a real ecflow_server and a real etcd."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import catchup
import consumer
import producer
import pytest
from ecflow_helpers import Watcher, node_state

from aviso_workflows import Store
from aviso_workflows.ecflow.deploy import play
from aviso_workflows.ecflow.server import EcflowServer

pytestmark = [pytest.mark.ecflow, pytest.mark.slow]


def test_consumer_follows_the_producer_step_by_step(ecflow_server: EcflowServer, watcher: Watcher, home: Path,
                                                    etcd_url: str, unique_date: str) -> None:
    play(consumer.build(home / "consumer", unique_date, [etcd_url], name="consumer"), "localhost",
         ecflow_server.port)
    watcher.until(lambda d: node_state(d, "/consumer/wait") == "active", 30, "the wait task starting")
    assert watcher.meter("/consumer/wait", "steps") == 0

    meters_seen: list[int] = []
    play(producer.build(home / "producer", unique_date, [etcd_url], step_seconds=0.2), "localhost",
         ecflow_server.port)
    watcher.until(lambda d: node_state(d, "/consumer") == "complete", 150, "the consumer suite completing",
                  on_poll=lambda d: meters_seen.append(int(d.find_abs_node("/consumer/wait").find_meter("steps")
                                                           .value())))

    assert meters_seen == sorted(meters_seen) and meters_seen[-1] == 25
    assert len(set(meters_seen)) > 5, f"the meter should rise step by step, saw {sorted(set(meters_seen))}"
    started = [watcher.when(f"/consumer/{task}", "complete") for task in consumer.DOWNSTREAM]
    assert started == sorted(started), "downstream tasks must complete in the order their steps arrive"
    assert watcher.when("/consumer/early", "complete") < watcher.when("/consumer/wait", "complete"), \
        "early work must start before the whole forecast is in"
    assert "25/25 latest step=24" in watcher.label("/consumer/wait", "latest")
    assert Store([etcd_url]).value("mars", {**producer.FORECAST, "date": unique_date, "step": 24}) \
        .popitem()[1] == f"file:///data/{unique_date}/step_24.grib"


def test_catch_up_completes_past_dates_at_once_and_waits_for_the_future(
        ecflow_server: EcflowServer, watcher: Watcher, home: Path, store: Store, etcd_url: str) -> None:
    first = dt.date(1990, 3, 1)
    dates = [first + dt.timedelta(days=i) for i in range(5)]
    for day in dates[:4]:
        store.notify("mars", {**catchup.ANALYSIS, "date": day.strftime("%Y%m%d")})
    suite = catchup.build(home, dates[0], dates[-1], [etcd_url], name="catchup", timeout=120, ordered=True)
    play(suite, "localhost", ecflow_server.port)

    def on_future_date(defs: object) -> bool:
        family = defs.find_abs_node("/catchup/daily")  # type: ignore[attr-defined]
        return family.get_repeat().value() == int(dates[-1].strftime("%Y%m%d")) \
            and node_state(defs, "/catchup/daily/wait") == "active"

    watcher.until(on_future_date, 60, "the four past dates completing")
    caught_up = time.monotonic() - watcher.when("/catchup", "active")
    assert node_state(watcher.defs(), "/catchup/daily/process") == "queued"
    watcher.until(lambda d: node_state(d, "/catchup/daily/wait") == "active", 5, "the future date still waiting")
    store.notify("mars", {**catchup.ANALYSIS, "date": dates[-1].strftime("%Y%m%d")})
    watcher.until(lambda d: node_state(d, "/catchup") == "complete", 30, "the future date completing once posted")
    assert caught_up < 30, f"four past dates took {caught_up:.1f} s: they must not wait"
