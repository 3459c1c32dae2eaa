"""listen: write order, named cursors that resume exactly, and replay over the status chain."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest
from backend_fixture import any_store_fixture, aviso_double_fixture  # noqa: F401 - the backends' fixtures
from core_helpers import WAIT_BOUND, destination_for, diss, joined, mars
from threads import run_in_thread
from waiting import eventually

from aviso_workflows import Notification, Store
from aviso_workflows.backends.protocol import FollowSource
from aviso_workflows.listen import END_OF_REVISION, Cursor, Position, listen
from aviso_workflows.status_chain import replay


def _take(stream: Iterator[Notification], count: int) -> list[Notification]:
    """The next ``count`` notifications of a listen, in a thread bounded by WAIT_BOUND."""
    thread, outcome = run_in_thread(lambda: [next(stream) for _ in range(count)])
    return joined(thread, outcome)  # type: ignore[no-any-return]


def _steps(notifications: list[Notification]) -> list[str]:
    return [n.request["step"] for n in notifications]


def test_backlog_in_write_order_not_key_order(any_store: Store, unique_date: str) -> None:
    request = any_store.request(mars(unique_date, step=None))
    start = any_store.now()
    for step in (12, 0, 6, "3/1"):
        any_store.notify(mars(unique_date, step=step))
    with closing(listen(any_store, [request], after=start)) as stream:
        found = _take(stream, 5)
    assert _steps(found) == ["12", "0", "6", "1", "3"]  # by revision; within one transaction by key
    assert [n.revision for n in found] == sorted(n.revision for n in found)


def test_live_notifications_in_write_order(any_store: Store, unique_date: str) -> None:
    request = any_store.request(mars(unique_date, step=None))
    stream = listen(any_store, [request], after=any_store.now())
    heard: list[Notification] = []

    def take() -> list[Notification]:
        for _ in range(6):
            heard.append(next(stream))
        return heard

    thread, outcome = run_in_thread(take)
    any_store.notify(mars(unique_date, step=24))
    eventually(lambda: heard, what="the listener heard the first post")  # it follows the store: the rest come live
    for step in (0, 18, 6, 12):
        any_store.notify(mars(unique_date, step=step))
    any_store.notify(mars(unique_date, step=0), location="again")  # a re-post is a new notification
    found = joined(thread, outcome)
    stream.close()
    assert _steps(found) == ["24", "0", "18", "6", "12", "0"]
    assert found[-1].location == "again"


def test_listen_filters_and_merges_several_requests(store: Store, unique_date: str) -> None:
    destination = destination_for(unique_date)
    requests = [store.request(mars(unique_date, stream="enfo", step=None)),
                store.request(diss(unique_date, destination=destination, step=None))]
    start = Position(store.current_revision())
    store.notify(mars(unique_date, stream="oper"))
    store.notify(diss(unique_date, destination=destination, step=1))
    store.notify(mars(unique_date, stream="enfo", step=2))
    with closing(listen(store, requests, after=start)) as stream:
        found = _take(stream, 2)
    assert [(n.event, n.request["step"]) for n in found] == [("dissemination", "1"), ("mars", "2")]


def test_cursor_resumes_exactly_where_the_listener_stopped(any_store: Store, unique_date: str) -> None:
    request = any_store.request(mars(unique_date, step=None))
    start = any_store.now()
    for step in range(5):
        any_store.notify(mars(unique_date, step=step))
    stop = threading.Event()
    stream = listen(any_store, [request], after=start, cursor=Cursor("resume-test"), stop=stop)
    first = _take(stream, 3)
    stop.set()  # the consumer handled three and asks the listener to end
    assert list(stream) == []
    assert _steps(first) == ["0", "1", "2"]
    saved = Cursor("resume-test").load()  # on an aviso-server a sequence holds one post: the key is its end
    assert saved in (Position(first[-1].revision, first[-1].key), Position(first[-1].revision, END_OF_REVISION))
    for step in range(5, 8):
        any_store.notify(mars(unique_date, step=step))
    with closing(listen(any_store, [request], cursor=Cursor("resume-test"))) as resumed:
        rest = _take(resumed, 5)
    assert _steps(rest) == ["3", "4", "5", "6", "7"]
    assert Cursor("other-name").load() is None  # one cursor per name


def test_cursor_inside_one_transaction(any_store: Store, unique_date: str) -> None:
    """A cursor in the middle of a batch resumes at the next key of that same transaction."""
    request = any_store.request(mars(unique_date, step=None))
    start = any_store.now()
    any_store.notify(mars(unique_date, step="0/to/4"))
    stop = threading.Event()
    stream = listen(any_store, [request], after=start, cursor=Cursor("batch"), stop=stop)
    assert _steps(_take(stream, 2)) == ["0", "1"]
    stop.set()
    assert list(stream) == []
    with closing(listen(any_store, [request], cursor=Cursor("batch"))) as resumed:
        assert _steps(_take(resumed, 3)) == ["2", "3", "4"]


def test_until_revision_ends_the_listen(store: Store, unique_date: str) -> None:
    """etcd only: aviso-server 0.7.1 answers a notify without the sequence it stored (``request_id`` and
    ``processed_at``; src/handlers/notification.rs), so a notify cannot say where history ends there."""
    request = store.request(mars(unique_date, step=None))
    start = store.now()
    last = store.notify(mars(unique_date, step="0/6")).revisions[-1]
    thread, outcome = run_in_thread(lambda: list(listen(store, [request], after=start, until_revision=last)))
    assert _steps(joined(thread, outcome)) == ["0", "6"]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def test_replay_of_a_time_window(any_store: Store, unique_date: str) -> None:
    request = any_store.request(mars(unique_date, step=None))
    any_store.notify(mars(unique_date, step=0), location="a")
    any_store.notify(mars(unique_date, step="6/12"), location="b")
    any_store.notify(mars(unique_date, step=0, time=12))  # another forecast: filtered out
    window = any_store.replay_window([request], _now() - dt.timedelta(minutes=1), _now() + dt.timedelta(minutes=1))
    # in write order; within one notify by the values of the keys (steps by number)
    assert [(n.request["step"], n.location) for n in window] == [("0", "a"), ("6", "b"), ("12", "b")]
    every_time = any_store.request(mars(unique_date, step=None, time=None))
    assert [n.request["time"] for n in any_store.replay_window([every_time], _now() - dt.timedelta(minutes=1))] == [
        "00", "00", "00", "12"]
    assert any_store.replay_window([request], _now() + dt.timedelta(minutes=1), _now() + dt.timedelta(minutes=2)) == []
    assert any_store.replay_window([request], _now() - dt.timedelta(hours=2), _now() - dt.timedelta(hours=1)) == []


def test_replay_window_between_two_notifications(store: Store, unique_date: str) -> None:
    destination = destination_for(unique_date)
    request = store.request(diss(unique_date, destination=destination, step=None))
    store.notify(diss(unique_date, destination=destination, step=0))
    time.sleep(0.05)  # not a synchronisation: the clock moves on between the first post and the middle
    middle = _now()
    time.sleep(0.05)  # not a synchronisation: ... and between the middle and the second post
    store.notify(diss(unique_date, destination=destination, step=6))
    assert _steps(replay(store, [request], middle - dt.timedelta(minutes=1), middle)) == ["0"]
    assert _steps(replay(store, [request], middle)) == ["6"]
    assert _steps(replay(store, [request], middle - dt.timedelta(minutes=1))) == ["0", "6"]


def test_listen_after_a_bound_wait_does_not_hang(any_store: Store, unique_date: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A listener with a stop event ends promptly when asked, even with nothing to deliver."""
    request = any_store.request(mars(unique_date, step=None))
    sources: list[FollowSource] = []
    follow = any_store.backend.follow

    def recorded(*args: Any) -> FollowSource:
        sources.append(follow(*args))
        return sources[-1]

    monkeypatch.setattr(any_store.backend, "follow", recorded)  # this store only
    stop = threading.Event()
    thread, outcome = run_in_thread(lambda: list(listen(any_store, [request], stop=stop)))
    eventually(lambda: sources and getattr(sources[0], "connections_opened", 0),
               what="the listener's source opened its stream")
    stop.set()
    assert joined(thread, outcome, bound=WAIT_BOUND) == []
