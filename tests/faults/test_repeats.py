"""Repeats: a notify retried after a lost answer writes once, so listeners, asset watchers and actions see it
once; a deliberate re-post of the same value (a producer's job run again) is a new post and is delivered,
as pyaviso delivers it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from slow_proxy import SlowTxnProxy, slow_proxy_fixture  # noqa: F401 - the slow_proxy fixture
from waiting import eventually

from aviso_workflows import Store
from aviso_workflows.cli import main
from aviso_workflows.listen import Cursor, Position, listen, listen_async
from aviso_workflows.store import Notification

BOUND = 20.0  # seconds: the longest any step of these tests may take


def mars(date: str, step: int) -> dict[str, Any]:
    return {"event": "mars", "class": "od", "expver": 1, "domain": "g", "date": date, "time": 0,
            "stream": "oper", "step": step}


def day_request(store: Store, date: str) -> Any:
    """Every step of the test's date."""
    raw = mars(date, 0)
    del raw["step"]
    return store.request(raw)


def steps_and_locations(notifications: list[Notification]) -> list[tuple[str, str | None]]:
    return [(n.request["step"], n.location) for n in notifications]


#: The step of the post that shows a listener is following the watch (then forgotten by the test).
MARKER_STEP = "999"


class LiveListener:
    """``listen`` on a thread, collecting what it yields until stopped."""

    def __init__(self, store: Store, date: str, cursor: Cursor | None = None) -> None:
        self.received: list[Notification] = []
        self._stop = threading.Event()
        self._error: BaseException | None = None
        # its start is taken here, before anything the test posts next (in the thread it could come after it)
        start = Position(store.current_revision())
        self._thread = threading.Thread(target=self._run, args=(store, date, start, cursor), daemon=True)
        self._thread.start()

    @classmethod
    def following(cls, store: Store, date: str, cursor: Cursor | None = None) -> LiveListener:
        """A listener past its first read: a marker posted now has reached it, so later posts come
        through the watch (the marker itself is forgotten)."""
        listener = cls(store, date, cursor)
        store.notify(mars(date, int(MARKER_STEP)))
        listener._wait_for(MARKER_STEP)
        listener.received.clear()
        return listener

    def _run(self, store: Store, date: str, start: Position, cursor: Cursor | None) -> None:
        try:
            for notification in listen(store, [day_request(store, date)], after=start,
                                       cursor=cursor, stop=self._stop, poll=0.05):
                self.received.append(notification)
        except BaseException as error:  # noqa: BLE001 - reported by the test thread
            self._error = error

    def _wait_for(self, step: str) -> None:
        def arrived() -> bool:
            if self._error is not None:
                raise self._error
            return any(n.request["step"] == step for n in self.received)

        eventually(arrived, what=f"the listener received step {step}", timeout=BOUND)

    def until_step(self, step: str) -> list[Notification]:
        """Wait (bounded) for the notification of ``step``, then stop and return all received."""
        self._wait_for(step)
        self.stop()
        return self.received

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(BOUND)
        assert not self._thread.is_alive(), "the listener did not stop"


@pytest.fixture
def live(store: Store, unique_date: str) -> Iterator[LiveListener]:
    listener = LiveListener.following(store, unique_date)
    yield listener
    listener.stop()


def test_a_repost_of_the_same_value_is_delivered_again_as_a_rerun(
        store: Store, unique_date: str, live: LiveListener) -> None:
    store.notify(mars(unique_date, 0), location="file:///a")
    store.notify(mars(unique_date, 0), location="file:///a")   # the producer's job run again
    store.notify(mars(unique_date, 0), location="file:///b")   # a correction: new data
    store.notify(mars(unique_date, 6))                         # the end marker

    assert steps_and_locations(live.until_step("6")) == [("0", "file:///a"), ("0", "file:///a"),
                                                         ("0", "file:///b"), ("6", None)]


def test_a_cursor_restarted_after_a_repost_delivers_it(store: Store, unique_date: str) -> None:
    cursor = Cursor("repeat-restart")
    first = LiveListener.following(store, unique_date, cursor)
    store.notify(mars(unique_date, 0), location="file:///a")
    assert steps_and_locations(first.until_step("0")) == [("0", "file:///a")]

    store.notify(mars(unique_date, 0), location="file:///a")   # posted again while the listener is down
    store.notify(mars(unique_date, 12))
    resumed = list(listen(store, [day_request(store, unique_date)], cursor=cursor,
                          until_revision=store.current_revision()))

    assert steps_and_locations(resumed) == [("0", "file:///a"), ("12", None)]


def test_a_post_and_its_repost_both_after_the_cursor_are_both_delivered(store: Store, unique_date: str) -> None:
    start = Position(store.current_revision())
    store.notify(mars(unique_date, 0), location="file:///a")
    store.notify(mars(unique_date, 0), location="file:///a")

    caught_up = list(listen(store, [day_request(store, unique_date)], after=start,
                            until_revision=store.current_revision()))

    assert steps_and_locations(caught_up) == [("0", "file:///a"), ("0", "file:///a")]

# -- a real retry: the first endpoint commits the transaction but answers too late -----------------
def retried_notify(slow_proxy: SlowTxnProxy, etcd_url: str, raw: dict[str, Any], location: str) -> None:
    """A notify whose first transaction times out after committing, then is retried on the next endpoint."""
    producer = Store([slow_proxy.url, etcd_url], timeout=1.0)
    producer.notify(raw, location=location)
    assert slow_proxy.delayed == 1, "the notify did not go through the slow endpoint first"


def test_a_notify_retried_after_a_timeout_writes_once_and_listeners_see_it_once(
        store: Store, unique_date: str, etcd_url: str, slow_proxy: SlowTxnProxy, live: LiveListener) -> None:
    retried_notify(slow_proxy, etcd_url, mars(unique_date, 0), "file:///a")
    store.notify(mars(unique_date, 6))

    _, written = store.gateway.get(store.request(mars(unique_date, 0)).keys()[0])
    assert written is not None and written.version == 1, "the retry wrote the key a second time"
    assert steps_and_locations(live.until_step("6")) == [("0", "file:///a"), ("6", None)]


async def test_an_asset_watcher_stream_gets_one_event_for_a_retried_notify(
        store: Store, unique_date: str, etcd_url: str, slow_proxy: SlowTxnProxy) -> None:
    stream = listen_async(store, [day_request(store, unique_date)], after=Position(store.current_revision()))
    try:
        # The marker has come through the stream: it has read what exists, later posts follow the watch.
        await asyncio.to_thread(store.notify, mars(unique_date, int(MARKER_STEP)))
        marker = await asyncio.wait_for(stream.__anext__(), BOUND)
        assert marker.request["step"] == MARKER_STEP
        await asyncio.to_thread(retried_notify, slow_proxy, etcd_url, mars(unique_date, 0), "file:///a")
        await asyncio.to_thread(store.notify, mars(unique_date, 6))
        received = [await asyncio.wait_for(stream.__anext__(), BOUND) for _ in range(2)]
    finally:
        await stream.aclose()

    assert steps_and_locations(received) == [("0", "file:///a"), ("6", None)]


def test_listener_actions_run_once_for_a_retried_notify(
        store: Store, unique_date: str, etcd_url: str, slow_proxy: SlowTxnProxy, tmp_path: Path) -> None:
    log_file = tmp_path / "actions.log"
    listener_file = tmp_path / "listener.yaml"
    request = {k: v for k, v in mars(unique_date, 0).items() if k not in ("event", "step")}
    listener_file.write_text(json.dumps({"listeners": [{"event": "mars", "request": request,
                                                         "actions": [{"type": "log", "path": str(log_file)}]}]}))
    arguments = ["listen", str(listener_file), "--endpoint", etcd_url, "--cursor", "dedupe-actions", "--count", "2"]
    exit_codes: list[int] = []
    running = threading.Thread(target=lambda: exit_codes.append(main(arguments)), daemon=True)
    running.start()
    # The listener saves its cursor at its start position before it reads: every later post reaches it.
    eventually(lambda: Cursor("dedupe-actions").load(), what="the listener saved its start position")

    retried_notify(slow_proxy, etcd_url, mars(unique_date, 0), "file:///a")
    store.notify(mars(unique_date, 6))
    running.join(BOUND)

    assert exit_codes == [0]
    handled = [json.loads(line.split(" ", 1)[1]) for line in log_file.read_text().splitlines()]
    assert [(n["request"]["step"], n.get("location")) for n in handled] == [("0", "file:///a"), ("6", None)]
