"""Fixtures of the board tests: serve (with an expectation file) on the session's etcd, a forecast in the store,
two registered waiters, and a headless Chromium."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from board_helpers import COMMAND, START_SECONDS, STEPS, Board, forecast
from chromium import Page, chromium, chromium_path
from waiting import eventually

from aviso_workflows import Store, server
from aviso_workflows.serve.app import ServeOptions
from aviso_workflows.serve.cli import ServeThread, start_serve
from aviso_workflows.waiters import Registration, list_waiters, register


@pytest.fixture(scope="module")
def board(etcd_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Board]:
    """serve --expect on a forecast due from ten minutes ago (step 0 late, the rest to come): yesterday's steps
    0-42 posted, today's step 6 posted, an ecFlow-style CLI wait on step 12 and an Airflow-style one on step 24."""
    tmp = tmp_path_factory.mktemp("board")
    expver = "b" + secrets.token_hex(2)[:3]  # keys no other test reads
    start = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0) - dt.timedelta(minutes=10)
    today, yesterday = start.strftime("%Y%m%d"), (start - dt.timedelta(days=1)).strftime("%Y%m%d")
    late_log = tmp / "late.log"
    expectations = tmp / "forecast.yaml"
    expectations.write_text(
        "expectations:\n"
        "  - name: oper 00\n"
        "    event: mars\n"
        f"    request: {{class: od, expver: '{expver}', domain: g, stream: oper, time: 0, step: '{STEPS}'}}\n"
        f"    at: '{start.strftime('%H:%M:%S')}'\n"
        "    per_step: 3m\n"
        "    grace: 1m\n"
        f"    triggers: [{{type: log, path: '{late_log}'}}]\n")
    env = {"AVISO_WORKFLOWS_STATE_DIR": str(tmp / "state"), "AVISO_WORKFLOWS_CONFIG": str(tmp / "none.yaml")}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    store = Store([etcd_url])

    def fields(date: str, step: int) -> dict[str, Any]:
        return forecast(expver, date, step)

    for step in range(0, 43, 6):
        store.notify("mars", fields(yesterday, step), location=f"file:///data/od/oper/{yesterday}/00/{step:03d}.grib")
    store.notify("mars", fields(today, 6), location=f"file:///data/od/oper/{today}/00/006.grib")
    request = ",".join(f"{k}={v}" for k, v in {"event": "mars", **fields(today, 12)}.items())
    waiter = subprocess.Popen([COMMAND, "wait", request, "--endpoint", etcd_url, "--timeout", "120", "--who",
                               "kind=ecflow-task", "--who", "ecflow_path=/forecast/00/wait_step12"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **env}, start_new_session=True)
    sensor: Registration = register(store, store.request("mars", fields(today, 24)),
                                    who={"kind": "airflow-sensor", "dag_id": "forecast_products",
                                         "task_id": "wait_step_24", "run_id": "scheduled__0"})
    port = server.free_port()
    url = f"http://127.0.0.1:{port}"
    started: ServeThread | None = None
    try:
        started = start_serve(store, ServeOptions(base_url=url, heartbeat=2.0, expect=str(expectations),
                                                  expect_dates=(today,)), "127.0.0.1", port, timeout=START_SECONDS)
        eventually(lambda: {w.who.get("ecflow_path") for w in list_waiters(store)} >= {"/forecast/00/wait_step12"},
                   what="the CLI waiter registering", timeout=20)
        yield Board(url, started.state, store, expver, today, yesterday, late_log, waiter)
    finally:
        sensor.close(wait=5)
        if waiter.poll() is None:
            waiter.kill()
        waiter.communicate(timeout=10)
        if started is not None:
            started.stop(20)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """A headless Chromium page (the test is skipped when chromium is not installed)."""
    if chromium_path() is None:
        pytest.skip("chromium is not installed (scripts/setup.sh installs Debian's chromium as root)")
    with chromium(tmp_path_factory.mktemp("chromium-profile"), 1280, 720) as opened:
        yield opened
