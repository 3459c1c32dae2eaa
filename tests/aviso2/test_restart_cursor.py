"""A listener resumed from its cursor on an aviso-server that restarted while the listener was not running.

aviso-server's in-memory backend numbers notifications from 1 again in a new process (ecmwf/aviso-server 0.7.1,
commit 8b99d73: ``src/notification_backend/in_memory.rs``, its sequence counter starts at 1 per process); a
JetStream stream that is purged or recreated does the same. The server here is the test double of 0.7.1
(tests/conformance/aviso_server_double.py): ``stop()`` then ``start(posts)`` is a new process on the same port
whose new posts exist before the port opens, i.e. they land while no listener runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import closing

import pytest
from backend_stores import AvisoServerDouble
from threads import joined, run_in_thread

from aviso_workflows import Notification, Request, Store
from aviso_workflows.listen import Cursor, listen

FIELDS = {"class": "od", "expver": "0001", "domain": "g", "time": "0000", "stream": "oper"}
WAIT_BOUND = 10.0


def identifier(date: str, step: int) -> dict[str, str]:
    return {**FIELDS, "date": date, "step": str(step)}


def take(stream: Iterator[Notification], count: int) -> list[Notification]:
    thread, outcome = run_in_thread(lambda: [next(stream) for _ in range(count)])
    return joined(thread, outcome, WAIT_BOUND)  # type: ignore[no-any-return]


def steps(notifications: list[Notification]) -> list[str]:
    return [n.request["step"] for n in notifications]


def first_run(server: AvisoServerDouble, store: Store, request: Request, date: str,
              handled: int) -> list[Notification]:
    """Posts 1, 2 and 3; a listener with the cursor ``resumed`` handles the first ``handled`` and stops."""
    cursor = "resumed"
    after = store.now()
    for step in (1, 2, 3):
        server.post("mars", identifier(date, step))
    stop = threading.Event()
    stream = listen(store, [request], after=after, cursor=Cursor(cursor), stop=stop)
    handled_first = take(stream, handled)
    stop.set()
    assert list(stream) == []  # the listener saved its cursor and ended
    saved = Cursor(cursor).load()
    assert saved is not None and saved.revision == handled_first[-1].revision and saved.posted is not None
    return handled_first


@pytest.mark.parametrize(("restart", "away", "resumed"), [
    pytest.param(True, [10, 11, 12], ["10", "11", "12"], id="restarted-3-posts-all-at-or-below-the-cursor"),
    pytest.param(True, [10, 11, 12, 13, 14], ["10", "11", "12", "13", "14"], id="restarted-5-posts-some-above"),
    pytest.param(False, [4, 5], ["3", "4", "5"], id="same-server-control"),
])
def test_a_resumed_cursor_delivers_every_post_made_while_it_was_away(
        restart: bool, away: list[int], resumed: list[str], caplog: pytest.LogCaptureFixture) -> None:
    """Restarted: three posts handled (cursor at sequence 3), then the server restarts with the posts ``away``
    (sequences 1..n, some at or below the cursor): the resumed listener delivers every one (0 lost) and says
    once, naming the old and the new position, that the server's sequence started again.

    The control, no restart: two of three posts handled, then more posts numbered after the cursor (some in
    the same second as the cursor's post): the resumed listener delivers only the later posts, once, and
    warns of nothing (the cursor file holds the server's time of the last post handled)."""
    date = "20300101"
    with AvisoServerDouble(heartbeat=1.0) as server:
        store = Store([server.endpoint])
        request = store.request("mars", {**FIELDS, "date": date})
        first = first_run(server, store, request, date, handled=3 if restart else 2)
        if restart:
            server.stop()
            server.start([("mars", identifier(date, step), None) for step in away])
        else:
            for step in away:
                server.post("mars", identifier(date, step))
        caplog.set_level(logging.WARNING, logger="aviso_workflows")
        with closing(listen(store, [request], cursor=Cursor("resumed"))) as stream:
            again = take(stream, len(resumed))
    assert steps(first) == ["1", "2", "3"][:len(first)]
    assert steps(again) == resumed
    warnings = [r.getMessage() for r in caplog.records if "went back" in r.getMessage()]
    assert len(warnings) == (1 if restart else 0), warnings
    assert all("mars@3" in warning and "mars@1" in warning for warning in warnings), warnings
