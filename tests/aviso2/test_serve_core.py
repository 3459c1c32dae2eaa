"""The core's waits and listeners on an aviso-server (``aviso-workflows serve`` in front of the real etcd),
with the assertions of the etcd tests: the user changes nothing but the endpoint."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest
from threads import joined, run_in_thread

from aviso_workflows import Notification, Store, WaitTimeout
from aviso_workflows.listen import Cursor, Position, listen

RELEASE_BOUND = 1.0  # seconds from the last post to the release
WAIT_BOUND = 10.0


def mars(date: str, /, **fields: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"event": "mars", "class": "od", "expver": 1, "domain": "g", "date": date, "time": 0,
                           "stream": "oper", "step": 0}
    raw.update(fields)
    return {k: v for k, v in raw.items() if v is not None}


def mars_key(date: str, step: int) -> str:
    return f"/ec/mars/date={date},class=od,expver=0001,domain=g,time=00,stream=oper,step={step}"


def _take(stream: Iterator[Notification], count: int) -> list[Notification]:
    thread, outcome = run_in_thread(lambda: [next(stream) for _ in range(count)])
    return joined(thread, outcome, WAIT_BOUND)  # type: ignore[no-any-return]


def _steps(notifications: list[Notification]) -> list[str]:
    return [n.request["step"] for n in notifications]


# -- wait ----------------------------------------------------------------------------------------------
def test_released_at_once_for_keys_already_posted(aviso: Store, unique_date: str) -> None:
    aviso.notify(mars(unique_date, step="0/to/24/by/6"), location="file:///f")
    started = time.monotonic()
    found = aviso.wait(mars(unique_date, step="0/to/24/by/6"), timeout=5)
    assert time.monotonic() - started < RELEASE_BOUND
    assert [n.key for n in found] == [mars_key(unique_date, s) for s in (0, 6, 12, 18, 24)]
    assert {n.location for n in found} == {"file:///f"}
    assert found[0].request == {"date": unique_date, "class": "od", "expver": "0001", "domain": "g", "time": "00",
                                "stream": "oper", "step": "0"}


def test_released_within_a_moment_of_the_last_post(aviso: Store, unique_date: str) -> None:
    thread, outcome = run_in_thread(lambda: aviso.wait(mars(unique_date, step="0/6/12"), timeout=20))
    time.sleep(0.3)
    aviso.notify(mars(unique_date, step=0))
    aviso.notify(mars(unique_date, step=6))
    time.sleep(0.3)
    assert thread.is_alive(), "released before every key was posted"
    aviso.notify(mars(unique_date, step=12), location="last")
    posted = time.monotonic()
    found = joined(thread, outcome, WAIT_BOUND)
    assert outcome["ended"] - posted < RELEASE_BOUND
    assert [n.request["step"] for n in found] == ["0", "6", "12"]
    assert found[-1].location == "last"


def test_any_releases_on_the_first_matching_key(aviso: Store, unique_date: str) -> None:
    thread, outcome = run_in_thread(lambda: aviso.wait(mars(unique_date, step="0/to/240"), mode="any", timeout=20))
    time.sleep(0.3)
    aviso.notify(mars(unique_date, step=7, time=12))  # another time: does not match
    time.sleep(0.3)
    assert thread.is_alive()
    aviso.notify(mars(unique_date, step=120))
    (found,) = joined(thread, outcome, WAIT_BOUND)
    assert found.request["step"] == "120"


def test_any_with_a_wildcard_request(aviso: Store, unique_date: str) -> None:
    thread, outcome = run_in_thread(lambda: aviso.wait({"event": "mars", "date": unique_date, "stream": "enfo"},
                                                       mode="any", timeout=20))
    time.sleep(0.3)
    aviso.notify(mars(unique_date, stream="oper"))
    aviso.notify(mars(unique_date, stream="enfo", step=3))
    (found,) = joined(thread, outcome, WAIT_BOUND)
    assert (found.request["stream"], found.request["step"]) == ("enfo", "3")


def test_timeout_raises_with_what_was_found(aviso: Store, unique_date: str) -> None:
    aviso.notify(mars(unique_date, step=6))
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        aviso.wait(mars(unique_date, step="0/6/12"), timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 0.5 + RELEASE_BOUND
    assert [n.request["step"] for n in caught.value.found] == ["6"]
    assert "1/3" in str(caught.value)


def test_progress_is_reported_per_key(aviso: Store, unique_date: str) -> None:
    aviso.notify(mars(unique_date, step=0))
    seen: list[tuple[int, int, str]] = []
    thread, outcome = run_in_thread(lambda: aviso.wait(
        mars(unique_date, step="0/6"), timeout=10, on_progress=lambda f, t, n: seen.append((f, t, n.request["step"]))))
    time.sleep(0.3)
    aviso.notify(mars(unique_date, step=6))
    joined(thread, outcome, WAIT_BOUND)
    assert seen == [(1, 2, "0"), (2, 2, "6")]


async def test_wait_async(aviso: Store, unique_date: str) -> None:
    import asyncio

    from aviso_workflows.wait import wait_async

    aviso.notify(mars(unique_date, step=0))
    waiting = asyncio.create_task(wait_async(aviso, aviso.request(mars(unique_date, step="0/6")), timeout=10))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await asyncio.to_thread(aviso.notify, mars(unique_date, step=6))
    found = await asyncio.wait_for(waiting, WAIT_BOUND)
    assert _steps(found) == ["0", "6"]


def test_read_finds_what_exists(aviso: Store, unique_date: str) -> None:
    aviso.notify(mars(unique_date, step="0/6"), location="first")
    aviso.notify(mars(unique_date, step=6), location="again")
    found = aviso.get(mars(unique_date, step=None))
    assert [(n.request["step"], n.location) for n in found] == [("0", "first"), ("6", "again")]
    assert aviso.value(mars(unique_date, step="6/12")) == {mars_key(unique_date, 6): "again",
                                                           mars_key(unique_date, 12): None}


# -- listen ----------------------------------------------------------------------------------------------
def test_backlog_in_write_order_not_key_order(aviso: Store, unique_date: str) -> None:
    request = aviso.request(mars(unique_date, step=None))
    start = aviso.now()
    for step in (12, 0, 6, "3/1"):
        aviso.notify(mars(unique_date, step=step))
    with closing(listen(aviso, [request], after=start)) as stream:
        found = _take(stream, 5)
    assert _steps(found) == ["12", "0", "6", "1", "3"]  # by sequence; one post per key on an aviso-server
    assert [n.revision for n in found] == sorted(n.revision for n in found)


def test_live_notifications_in_write_order(aviso: Store, unique_date: str) -> None:
    request = aviso.request(mars(unique_date, step=None))
    stream = listen(aviso, [request], after=aviso.now())
    thread, outcome = run_in_thread(lambda: [next(stream) for _ in range(6)])
    time.sleep(0.3)
    for step in (24, 0, 18, 6, 12):
        aviso.notify(mars(unique_date, step=step))
    aviso.notify(mars(unique_date, step=0), location="again")  # a re-post is a new notification
    found = joined(thread, outcome, WAIT_BOUND)
    stream.close()
    assert _steps(found) == ["24", "0", "18", "6", "12", "0"]
    assert found[-1].location == "again"


def test_listen_filters_and_merges_several_requests(aviso: Store, unique_date: str) -> None:
    requests = [aviso.request(mars(unique_date, stream="enfo", step=None)),
                aviso.request(mars(unique_date, stream="oper", step="1/2"))]
    start = aviso.now()
    aviso.notify(mars(unique_date, stream="oper", step=0))
    aviso.notify(mars(unique_date, stream="oper", step=1))
    aviso.notify(mars(unique_date, stream="enfo", step=2))
    with closing(listen(aviso, requests, after=start)) as stream:
        found = _take(stream, 2)
    assert [(n.request["stream"], n.request["step"]) for n in found] == [("oper", "1"), ("enfo", "2")]


def test_cursor_resumes_exactly_where_the_listener_stopped(aviso: Store, unique_date: str) -> None:
    request = aviso.request(mars(unique_date, step=None))
    start = aviso.now()
    for step in range(5):
        aviso.notify(mars(unique_date, step=step))
    stop = threading.Event()
    stream = listen(aviso, [request], after=start, cursor=Cursor("resume-test"), stop=stop)
    first = _take(stream, 3)
    stop.set()
    assert list(stream) == []
    assert _steps(first) == ["0", "1", "2"]
    saved = Cursor("resume-test").load()
    # One post per sequence: a position after it is the whole sequence (etcd's is the key inside a transaction).
    assert saved is not None and saved.revision == first[-1].revision and saved.is_after(first[-1].order)
    assert not saved.is_after(Position(first[-1].revision + 1, "").order)
    for step in range(5, 8):
        aviso.notify(mars(unique_date, step=step))
    with closing(listen(aviso, [request], cursor=Cursor("resume-test"))) as resumed:
        rest = _take(resumed, 5)
    assert _steps(rest) == ["3", "4", "5", "6", "7"]


def test_a_cursor_saved_before_the_first_notification_misses_nothing(aviso: Store, unique_date: str) -> None:
    """A listener stopped before anything came resumes from its first start (a time on an aviso-server)."""
    request = aviso.request(mars(unique_date, step=None))
    stop = threading.Event()
    stop.set()
    assert list(listen(aviso, [request], cursor=Cursor("early"), stop=stop)) == []
    saved = Cursor("early").load()
    assert saved is not None and saved.revision == 0 and "from_date" in saved.key
    aviso.notify(mars(unique_date, step=4))
    with closing(listen(aviso, [request], cursor=Cursor("early"))) as resumed:
        assert _steps(_take(resumed, 1)) == ["4"]
