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

from aviso_workflows import Notification, Store
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


@pytest.mark.parametrize("posted_while_away", [3, 5])
def test_posts_of_a_restarted_server_with_sequences_below_the_cursor_are_delivered(
        posted_while_away: int, caplog: pytest.LogCaptureFixture) -> None:
    """Three posts handled (cursor at sequence 3); the server restarts with ``posted_while_away`` new posts
    (sequences 1..n, some at or below the cursor): the resumed listener delivers every one (0 lost) and says
    once, naming the old and the new position, that the server's sequence started again."""
    date = "20300101"
    with AvisoServerDouble(heartbeat=1.0) as server:
        store = Store([server.endpoint])
        request = store.request("mars", {**FIELDS, "date": date})
        after = store.now()
        for step in (1, 2, 3):
            server.post("mars", identifier(date, step))
        stop = threading.Event()
        stream = listen(store, [request], after=after, cursor=Cursor("restart"), stop=stop)
        assert steps(take(stream, 3)) == ["1", "2", "3"]
        stop.set()
        assert list(stream) == []  # the listener saved its cursor and ended

        server.stop()
        away = [("mars", identifier(date, step), None) for step in range(10, 10 + posted_while_away)]
        server.start(away)

        caplog.set_level(logging.WARNING, logger="aviso_workflows")
        with closing(listen(store, [request], cursor=Cursor("restart"))) as resumed:
            again = take(resumed, posted_while_away)
    assert steps(again) == [str(step) for step in range(10, 10 + posted_while_away)]
    warnings = [r.getMessage() for r in caplog.records if "went back" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "mars@3" in warnings[0] and "mars@1" in warnings[0]


def test_a_cursor_on_the_same_server_resumes_after_its_post_without_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    """The control: no restart, posts while away numbered after the cursor (some in the same second as the
    cursor's post). The cursor file holds the server's time of the last post handled; the resumed listener
    delivers only the later posts, once, and warns of nothing."""
    date = "20300102"
    with AvisoServerDouble(heartbeat=1.0) as server:
        store = Store([server.endpoint])
        request = store.request("mars", {**FIELDS, "date": date})
        after = store.now()
        for step in (1, 2, 3):
            server.post("mars", identifier(date, step))
        stop = threading.Event()
        stream = listen(store, [request], after=after, cursor=Cursor("same"), stop=stop)
        first = take(stream, 2)
        stop.set()
        assert list(stream) == []
        saved = Cursor("same").load()
        assert saved is not None and saved.revision == first[-1].revision and saved.posted is not None
        for step in (4, 5):
            server.post("mars", identifier(date, step))
        caplog.set_level(logging.WARNING, logger="aviso_workflows")
        with closing(listen(store, [request], cursor=Cursor("same"))) as resumed:
            rest = take(resumed, 3)
    assert steps(first) == ["1", "2"] and steps(rest) == ["3", "4", "5"]
    assert [r.getMessage() for r in caplog.records if "went back" in r.getMessage()] == []
