"""Listeners on ``aviso-workflows serve`` (an aviso-server in front of the real etcd): what the behaviour tests
run over both backends (tests/core/test_backends.py: etcd and the aviso-server 0.7.1 double) do not cover."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import closing
from typing import Any

from threads import joined, run_in_thread

from aviso_workflows import Notification, Store
from aviso_workflows.listen import Cursor, listen

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


# -- listen ----------------------------------------------------------------------------------------------
def test_live_notifications_in_write_order(aviso: Store, unique_date: str) -> None:
    request = aviso.request(mars(unique_date, step=None))
    stream = listen(aviso, [request], after=aviso.now())  # every post from now on, whenever the stream opens
    thread, outcome = run_in_thread(lambda: [next(stream) for _ in range(6)])
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
