"""The backend contract's behaviour, run once per backend: live and asyncio waits (synchronised on their
progress), reads, replay windows and from-date starts, and what only etcd keeps.

``any_store`` (backend_fixture.py) is a store on etcd, then on the test double of aviso-server 0.7.1
(tests/conformance/aviso_server_double.py, written from ecmwf/aviso-server 0.7.1, commit 8b99d73). The
waits and listeners of test_wait.py and test_listen.py run over the same fixture.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from backend_fixture import AvisoServerDouble, any_store_fixture, aviso_double_fixture  # noqa: F401 - fixtures
from core_helpers import WAIT_BOUND, joined, mars
from threads import run_in_thread

from aviso_workflows import Notification, Store
from aviso_workflows.backends import CapabilityError
from aviso_workflows.cli import main
from aviso_workflows.listen import listen
from aviso_workflows.wait import wait_async


def _steps(notifications: list[Notification]) -> list[str]:
    return [n.request["step"] for n in notifications]


def _take(stream: Iterator[Notification], count: int) -> list[Notification]:
    thread, outcome = run_in_thread(lambda: [next(stream) for _ in range(count)])
    return joined(thread, outcome)  # type: ignore[no-any-return]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def test_a_live_wait_is_released_by_its_last_key(any_store: Store, unique_date: str) -> None:
    seen: list[int] = []
    two_found = threading.Event()

    def progress(found: int, total: int, newest: Notification) -> None:
        seen.append(found)
        if found == 2:
            two_found.set()

    any_store.notify(mars(unique_date, step=0))
    thread, outcome = run_in_thread(lambda: any_store.wait(mars(unique_date, step="0/6/12"), timeout=WAIT_BOUND,
                                                           on_progress=progress))
    any_store.notify(mars(unique_date, step=6))
    assert two_found.wait(WAIT_BOUND), "the wait did not see step 6"
    assert thread.is_alive(), "released before every key was posted"
    any_store.notify(mars(unique_date, step=12), location="last")
    found = joined(thread, outcome)
    assert _steps(found) == ["0", "6", "12"] and found[-1].location == "last"
    assert seen == [1, 2, 3]


def test_a_read_finds_the_latest_post_of_each_key(any_store: Store, unique_date: str) -> None:
    any_store.notify(mars(unique_date, step="0/6"), location="first")
    any_store.notify(mars(unique_date, step=6), location="again")
    found = any_store.get(mars(unique_date, step=None))
    assert [(n.request["step"], n.location) for n in found] == [("0", "first"), ("6", "again")]
    assert list(any_store.value(mars(unique_date, step="6/12")).values()) == ["again", None]


async def test_an_async_wait_takes_what_exists_and_what_comes(any_store: Store, unique_date: str) -> None:
    one_found = asyncio.Event()
    await asyncio.to_thread(any_store.notify, mars(unique_date, step=0))
    waiting = asyncio.create_task(wait_async(any_store, any_store.request(mars(unique_date, step="0/6")),
                                             timeout=WAIT_BOUND, on_progress=lambda *_: one_found.set()))
    await asyncio.wait_for(one_found.wait(), WAIT_BOUND)
    assert not waiting.done()
    await asyncio.to_thread(any_store.notify, mars(unique_date, step=6))
    assert _steps(await asyncio.wait_for(waiting, WAIT_BOUND)) == ["0", "6"]


def test_a_replay_window_and_a_start_from_a_time(any_store: Store, unique_date: str) -> None:
    request = any_store.request(mars(unique_date, step=None))
    before = _now() - dt.timedelta(minutes=1)
    any_store.notify(mars(unique_date, step=0), location="a")
    any_store.notify(mars(unique_date, step=6), location="b")
    any_store.notify(mars(unique_date, step=12, time=12))  # another forecast: filtered out
    window = any_store.replay_window([request], before, _now() + dt.timedelta(minutes=1))
    assert [(n.request["step"], n.location) for n in window] == [("0", "a"), ("6", "b")]
    assert any_store.replay_window([request], before - dt.timedelta(hours=2), before - dt.timedelta(hours=1)) == []
    with closing(listen(any_store, [request], after=any_store.first_after([request], before))) as stream:
        assert _steps(_take(stream, 2)) == ["0", "6"]


def test_what_only_etcd_keeps_is_one_error_naming_the_endpoint(any_store: Store) -> None:
    if any_store.backend.position_unit == "revision":
        assert any_store.backend.etcd("the waiting registry").gateway is any_store.gateway
        return
    with pytest.raises(CapabilityError) as refused:
        any_store.backend.etcd("the waiting registry")
    assert any_store.config.endpoints[0] in str(refused.value) and "etcd endpoint" in str(refused.value)


def test_waiting_and_expect_on_an_aviso_server_are_one_line_naming_the_endpoint(
        aviso_double: AvisoServerDouble, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The registry of waiters and the expectations live in etcd: on an aviso-server each command says so in
    one line (exit 2), naming the endpoint and what to give instead, not a traceback of the HTTP client."""
    expectations = tmp_path / "expect.yaml"
    expectations.write_text(json.dumps({"expectations": [{
        "name": "oper 00", "event": "mars", "at": "05:40", "triggers": [{"type": "echo"}],
        "request": {"class": "od", "expver": 1, "domain": "g", "time": 0, "stream": "oper", "step": "0/6"}}]}))
    for argv in (["waiting"], ["expect", str(expectations), "--once"]):
        code = main([*argv, "--endpoint", aviso_double.endpoint])
        err = capsys.readouterr().err
        assert code == 2, argv
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert aviso_double.endpoint in err and "etcd endpoint" in err
