"""The board when etcd stops answering: it says so (since when, for how long), keeps the last known state, and
says when etcd answers again, in its stream, its JSON and its page. A private etcd is stopped and started."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from board_helpers import START_SECONDS, forecast
from chromium import Page

from aviso_workflows import Store, server
from aviso_workflows.serve.app import ServeOptions
from aviso_workflows.serve.cli import ServeThread, start_serve
from aviso_workflows.waiters import register

#: Bound of the board noticing a change of etcd (the watch retries every 2 s at most, the board looks twice a second).
NOTICE_SECONDS = 20.0
TODAY = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
QUERY = f"date={TODAY}&class=od&expver=0001&stream=oper&time=00&step=0/to/12/by/6"


@dataclass
class Flaky:
    """serve on an etcd of its own, which the tests stop and start."""

    url: str
    data_dir: Path
    port: int

    def stop_etcd(self) -> None:
        server.stop(self.data_dir)

    def start_etcd(self) -> None:
        server.start(self.data_dir, self.port)


@pytest.fixture(scope="module")
def flaky(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flaky]:
    tmp = tmp_path_factory.mktemp("flaky")
    port = server.free_port()
    info = server.start(tmp / "etcd", port)
    store = Store([info.client_url])
    store.notify("mars", forecast("0001", TODAY, 0), location="file:///data/000.grib")
    sensor = register(store, store.request("mars", forecast("0001", TODAY, 6)),
                      who={"kind": "airflow-sensor", "dag_id": "products", "task_id": "wait_step_6"})
    serve_port = server.free_port()
    url = f"http://127.0.0.1:{serve_port}"
    started: ServeThread | None = None
    try:
        started = start_serve(store, ServeOptions(base_url=url, heartbeat=1.0), "127.0.0.1", serve_port,
                              timeout=START_SECONDS)
        yield Flaky(url, tmp / "etcd", port)
    finally:
        sensor.close(wait=5)
        if started is not None:
            started.stop(20)
        server.stop(tmp / "etcd")


def sse_events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    name, data = "message", []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def next_store_event(events: Iterator[tuple[str, Any]]) -> dict[str, Any]:
    for _ in range(1000):  # heartbeats come every second; the read timeout bounds each
        name, data = next(events)
        if name == "store":
            return dict(data)
    raise AssertionError("no store event")


def test_the_stream_and_the_json_say_when_etcd_is_unreachable_and_when_it_is_back(flaky: Flaky) -> None:
    with httpx.Client(timeout=httpx.Timeout(NOTICE_SECONDS)) as client, \
            client.stream("GET", f"{flaky.url}/board/events?{QUERY}") as response:
        events = sse_events(response)
        name, snapshot = next(events)
        assert name == "snapshot"
        assert snapshot["store"]["reachable"] is True
        assert any(c["state"] == "arrived" for c in snapshot["cells"])
        flaky.stop_etcd()
        stopped = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
        try:
            down = next_store_event(events)
            assert down["reachable"] is False
            since = dt.datetime.strptime(down["since"], "%Y-%m-%dT%H:%M:%SZ")
            assert stopped - dt.timedelta(seconds=1) <= since <= stopped + dt.timedelta(seconds=NOTICE_SECONDS)
            assert down["message"].startswith(f"etcd unreachable since {since:%H:%M:%S} UTC (")
            assert "until their timeout" in down["message"]
            answer = httpx.get(f"{flaky.url}/board/state?{QUERY}", timeout=NOTICE_SECONDS)
            assert answer.status_code == 503, answer.text
            state = answer.json()
            assert state["store"]["reachable"] is False and state["store"]["since"] == down["since"]
            assert state["stale"] is True
        finally:
            flaky.start_etcd()
        back = next_store_event(events)
    assert back["reachable"] is True
    recovered = back["events"][0]
    assert recovered["kind"] == "reachable" and recovered["since"] == down["since"]
    assert back["message"] == f"etcd reachable again after {recovered['after_s']} s"
    answer = httpx.get(f"{flaky.url}/board/state?{QUERY}", timeout=NOTICE_SECONDS)
    assert answer.status_code == 200, answer.text
    assert answer.json()["store"]["reachable"] is True


def test_the_page_shows_the_outage_keeps_the_grid_and_says_when_it_ended(flaky: Flaky, page: Page) -> None:
    page.open(f"{flaky.url}/board?{QUERY}")
    cell = f"c-{TODAY}-0"
    assert page.evaluate(f"document.getElementById('{cell}').dataset.state") == "arrived"
    assert page.evaluate("document.getElementById('outage').hidden") is True
    flaky.stop_etcd()
    try:
        page.until("!document.getElementById('outage').hidden", NOTICE_SECONDS)
        banner = page.evaluate("[document.getElementById('outage').getAttribute('role'), "
                               "document.getElementById('outage').innerText]")
        assert banner[0] == "alert"
        assert banner[1].startswith("etcd unreachable since "), banner
        # the last known state stays, marked stale
        assert page.evaluate(f"document.getElementById('{cell}').dataset.state") == "arrived"
        assert page.evaluate("document.body.classList.contains('stale')") is True
        # a waiter cannot write while etcd is away: it says what was heard last, and is not marked late
        waiters = page.evaluate("document.getElementById('waiters').innerText")
        assert "products/wait_step_6" in waiters and "not heard since" in waiters, waiters
        assert "late" not in waiters, waiters
    finally:
        flaky.start_etcd()
    page.until("document.getElementById('outage').innerText.startsWith('etcd reachable again after')",
               NOTICE_SECONDS)
    assert page.evaluate("document.body.classList.contains('stale')") is False
    assert "not heard since" not in page.evaluate("document.getElementById('waiters').innerText")
    assert "reachable again" in page.evaluate("document.getElementById('store-events').innerText")
