"""Streams that end: serve killed with SIGKILL and started again on its port, streams closed at their
maximum duration, and a replay cut at the server's cap."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

import pytest
from serve_process import Serve
from test_serve_core import WAIT_BOUND, mars
from threads import joined, run_in_thread

from aviso_workflows import Notification, Store
from aviso_workflows.aviso2 import ReplayLimitReached, since
from aviso_workflows.cli import main
from aviso_workflows.listen import Cursor, listen


def _collect(stream_of: Callable[[], object], into: list[Notification], stop: threading.Event) -> None:
    for notification in stream_of():  # type: ignore[attr-defined]
        into.append(notification)
        if stop.is_set():
            return


def _until(condition: Callable[[], bool], bound: float = WAIT_BOUND) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


def test_serve_killed_and_started_again_loses_and_repeats_nothing(
        store: Store, new_serve: Callable[..., Serve], unique_date: str) -> None:
    serve = new_serve("--heartbeat", "1")
    aviso = Store([serve.endpoint])
    request = aviso.request(mars(unique_date, step=None))
    got: list[Notification] = []
    stop = threading.Event()
    thread, outcome = run_in_thread(lambda: _collect(
        lambda: listen(aviso, [request], cursor=Cursor("cut"), stop=stop), got, stop))
    # a new cursor is saved at the listener's start: what is posted from then on reaches it
    _until(lambda: Cursor("cut").load() is not None)
    for step in range(3):
        aviso.notify(mars(unique_date, step=step))
    _until(lambda: len(got) == 3)
    serve.kill()
    for step in range(3, 6):  # posted to etcd directly while the server is down
        store.notify(mars(unique_date, step=step))
    serve.start()
    aviso.notify(mars(unique_date, step=6))
    _until(lambda: len(got) == 7)
    stop.set()
    aviso.notify(mars(unique_date, step=7))  # wakes the listener, which then stops
    joined(thread, outcome, WAIT_BOUND)
    steps = [n.request["step"] for n in got]
    assert steps[:7] == [str(s) for s in range(7)]
    assert len({n.revision for n in got}) == len(got)


def test_streams_closed_at_their_maximum_duration_go_on(new_serve: Callable[..., Serve], unique_date: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    serve = new_serve("--heartbeat", "1", "--max-duration", "1")
    aviso = Store([serve.endpoint])
    request = aviso.request(mars(unique_date, step=None))
    stream = listen(aviso, [request], after=aviso.now())
    with caplog.at_level(logging.DEBUG, logger="aviso_workflows.aviso2"):
        thread, outcome = run_in_thread(lambda: [next(stream) for _ in range(4)])
        for step in range(4):
            time.sleep(0.7)  # not a synchronisation: the producer's pace, each post in a later stream than the last
            aviso.notify(mars(unique_date, step=step))
        found = joined(thread, outcome, WAIT_BOUND)
    stream.close()  # type: ignore[attr-defined]
    assert [n.request["step"] for n in found] == ["0", "1", "2", "3"]
    assert caplog.text.count("max_duration_reached") >= 2


def test_a_replay_over_the_cap_fails_the_listener_saying_so(new_serve: Callable[..., Serve], unique_date: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    serve = new_serve("--replay-limit", "3")
    aviso = Store([serve.endpoint])
    for step in range(5):
        aviso.notify(mars(unique_date, step=step))
    request = aviso.request(mars(unique_date, step=None))
    delivered: list[str] = []
    with pytest.raises(ReplayLimitReached, match="cap of 3"):
        for notification in listen(aviso, [request], after=since(dt.datetime.strptime(unique_date, "%Y%m%d"))):
            delivered.append(notification.request["step"])
    assert delivered == ["0", "1", "2"]
    code = main(["listen", f"event=mars,class=od,expver=1,domain=g,date={unique_date},time=0,stream=oper",
                 "--from", f"{unique_date[:4]}-{unique_date[4:6]}-{unique_date[6:]}", "--count", "5",
                 "--endpoint", serve.endpoint])
    assert code == 2
    assert "cap of 3" in capsys.readouterr().err
