"""AvisoTrigger and AvisoEventTrigger driven directly with asyncio against the real etcd."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from airflow_helpers import MemoryStateStore, connection_json
from backend_stores import OnBackend, aviso_double_fixture, backend_conn_fixture, on_backend_fixture  # noqa: F401
from waiting import eventually_async, subscribers_on

from aviso_workflows import Store, server
from aviso_workflows.airflow import AvisoEventTrigger, AvisoTrigger
from aviso_workflows.airflow.triggers import CURSOR_KEY
from aviso_workflows.listen import HUB
from aviso_workflows.server import free_port

FIELDS = {"class": "od", "expver": 1, "domain": "g", "stream": "oper", "time": 0}
PREFIX = "/ec/mars/"


def request_of(store: Store, date: str, step: Any = "0/6/12") -> dict[str, Any]:
    return store.request("mars", {**FIELDS, "date": date, "step": step}).as_dict()


async def notify(store: Store, date: str, step: Any, location: str | None = None) -> None:
    await asyncio.to_thread(store.notify, "mars", {**FIELDS, "date": date, "step": step}, location=location)


async def following(on_backend: OnBackend, count: int = 1) -> None:
    """Until ``count`` readers follow the backend (etcd's shared watch, or the double's streams), at most 10 s."""
    await eventually_async(lambda: on_backend.followers(PREFIX) >= count,
                           what=f"{count} readers following {on_backend.name}", timeout=10)


async def test_released_on_the_last_post_not_before(on_backend: OnBackend, unique_date: str,
                                                    backend_conn: str) -> None:
    """On etcd and on the aviso-server 0.7.1 double: the trigger is not released by the first posts."""
    store = on_backend.store
    trigger = AvisoTrigger(event="mars", request=request_of(store, unique_date), aviso_conn_id=backend_conn)
    waiting = asyncio.create_task(anext(trigger.run()))
    await following(on_backend)
    await notify(store, unique_date, "0/6", location="file:///early")
    await asyncio.sleep(0.5)  # what a wrongly released trigger would need to finish; not a synchronisation
    assert not waiting.done()
    await notify(store, unique_date, 12, location="file:///last")
    event = await asyncio.wait_for(waiting, 10)
    assert event.payload["status"] == "success"
    steps = sorted(int(n["request"]["step"]) for n in event.payload["notifications"])
    assert steps == [0, 6, 12]
    assert {n["location"] for n in event.payload["notifications"]} == {"file:///early", "file:///last"}


async def test_known_notifications_count_as_found(on_backend: OnBackend, unique_date: str,
                                                 backend_conn: str) -> None:
    store = on_backend.store
    await notify(store, unique_date, 0)
    known = [n.to_dict() for n in store.get("mars", {**FIELDS, "date": unique_date, "step": 0})]
    trigger = AvisoTrigger(event="mars", request=request_of(store, unique_date, "0/6"), aviso_conn_id=backend_conn,
                           known=known)
    waiting = asyncio.create_task(anext(trigger.run()))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await notify(store, unique_date, 6)
    event = await asyncio.wait_for(waiting, 10)
    assert [n["request"]["step"] for n in event.payload["notifications"]] == ["0", "6"]


async def test_many_triggers_share_one_watch(store: Store, unique_date: str, aviso_conn: str) -> None:
    triggers = [AvisoTrigger(event="mars", request=request_of(store, unique_date, step), aviso_conn_id=aviso_conn)
                for step in range(0, 60, 3)]
    waiting = [asyncio.create_task(anext(t.run())) for t in triggers]
    await eventually_async(lambda: subscribers_on(PREFIX) >= len(triggers), what="every trigger following",
                           timeout=5)
    assert [w.prefix for w in HUB.watches()].count(PREFIX) == 1
    assert subscribers_on(PREFIX) >= len(triggers)
    await notify(store, unique_date, "0/to/57/by/3")
    events = await asyncio.wait_for(asyncio.gather(*waiting), 15)
    assert all(e.payload["status"] == "success" for e in events)


async def test_a_trigger_started_during_an_outage_is_released_once_etcd_is_back(
        monkeypatch: pytest.MonkeyPatch, store: Store, unique_date: str, tmp_path: Path) -> None:
    """The first read meets an outage: the trigger rides it out (Airflow's own timeout bounds it)."""
    port = free_port()
    monkeypatch.setenv("AIRFLOW_CONN_AVISO_LATER", connection_json(f"http://127.0.0.1:{port}", timeout=1))
    trigger = AvisoTrigger(event="mars", request=request_of(store, unique_date, step=0), aviso_conn_id="aviso_later")
    waiting = asyncio.create_task(anext(trigger.run()))
    await asyncio.sleep(2.0)
    assert not waiting.done(), "the trigger gave up while etcd was unreachable"
    info = await asyncio.to_thread(server.start, tmp_path / "etcd", port)
    try:
        later = Store([info.client_url])
        await notify(later, unique_date, 0, location="file:///after-the-outage")
        event = await asyncio.wait_for(waiting, 30)
    finally:
        await asyncio.to_thread(server.stop, tmp_path / "etcd")
    assert event.payload["status"] == "success"
    assert [n["location"] for n in event.payload["notifications"]] == ["file:///after-the-outage"]


class TriggerLog:
    """What a trigger's own logger wrote: Airflow's task-SDK loggers write through structlog to stdout."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.text = ""

    async def line_with(self, text: str, seconds: float = 30) -> str:
        for _ in range(int(seconds / 0.1)):
            self.text += self.capsys.readouterr().out
            found = [line for line in self.text.splitlines() if text in line]
            if found:
                return found[0]
            await asyncio.sleep(0.1)
        raise AssertionError(f"no log line with {text!r} within {seconds} s")


async def test_an_outage_during_the_wait_is_in_the_triggers_own_log(
        monkeypatch: pytest.MonkeyPatch, unique_date: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Airflow shows a trigger's log lines in the task's log only if the trigger's logger writes them: the
    shared watch's thread has no trigger context, so the trigger itself says when etcd went and came back."""
    port = free_port()
    info = await asyncio.to_thread(server.start, tmp_path / "etcd", port)
    monkeypatch.setenv("AIRFLOW_CONN_AVISO_FLAKY", connection_json(info.client_url, timeout=1))
    flaky = Store([info.client_url])
    trigger = AvisoTrigger(event="mars", request=request_of(flaky, unique_date, step=0), aviso_conn_id="aviso_flaky")
    log = TriggerLog(capsys)
    waiting = asyncio.create_task(anext(trigger.run()))
    try:
        for _ in range(300):  # the trigger has read what exists and follows the shared watch
            if any(w.ready and w.config.endpoints == flaky.config.endpoints for w in HUB.watches()):
                break
            await asyncio.sleep(0.05)
        await asyncio.to_thread(server.stop, tmp_path / "etcd")
        down = await log.line_with("etcd unreachable:")
        await asyncio.to_thread(server.start, tmp_path / "etcd", port)
        back = await log.line_with("etcd reachable again after")
        await notify(flaky, unique_date, 0, location="file:///after")
        event = await asyncio.wait_for(waiting, 30)
    finally:
        waiting.cancel()
        await asyncio.to_thread(server.stop, tmp_path / "etcd")
    trigger_logger = f"[{type(trigger).__module__}.{type(trigger).__qualname__}]"
    assert "watch on /ec/mars/ interrupted" in down and trigger_logger in down, down
    assert trigger_logger in back, back
    assert event.payload["status"] == "success"


async def test_error_when_etcd_refuses_the_request(monkeypatch: pytest.MonkeyPatch, store: Store, etcd_url: str,
                                                   unique_date: str) -> None:
    """A refusal is not an outage: the trigger reports it at once."""
    connection = {**json.loads(connection_json(etcd_url)), "login": "nobody", "password": "wrong"}
    monkeypatch.setenv("AIRFLOW_CONN_AVISO_REFUSED", json.dumps(connection))
    trigger = AvisoTrigger(event="mars", request=request_of(store, unique_date), aviso_conn_id="aviso_refused")
    event = await asyncio.wait_for(anext(trigger.run()), 30)
    assert event.payload["status"] == "error"
    assert "nobody" in event.payload["message"]


@pytest.mark.parametrize("trigger", [
    AvisoTrigger(event="mars", request={"class": "od", "step": ["0", "6"]}, aviso_conn_id="c", wait_for="any",
                 known=[{"event": "mars", "request": {"step": "0"}, "key": "/ec/mars/x", "revision": 3}]),
    AvisoEventTrigger(event="dissemination", request={"destination": "COM"}, aviso_conn_id="d"),
])
def test_serialize_round_trip(trigger: AvisoTrigger | AvisoEventTrigger) -> None:
    classpath, kwargs = trigger.serialize()
    module, name = classpath.rsplit(".", 1)
    rebuilt = getattr(__import__(module, fromlist=[name]), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert classpath.startswith("aviso_workflows.airflow.triggers.")


async def collect(trigger: AvisoEventTrigger, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    """The first ``count`` notifications of the trigger's events (an event carries those seen together)."""
    events = trigger.run()
    found: list[dict[str, Any]] = []
    try:
        while len(found) < count:
            found += (await asyncio.wait_for(anext(events), timeout)).payload["notifications"]
        return found
    finally:
        await events.aclose()


async def test_event_trigger_resumes_from_its_cursor(on_backend: OnBackend, unique_date: str,
                                                    backend_conn: str) -> None:
    """On etcd and on the aviso-server 0.7.1 double: batches delivered, then only what came while stopped."""
    store, aviso_conn = on_backend.store, backend_conn
    state = MemoryStateStore()
    request = {**FIELDS, "date": unique_date}
    first = AvisoEventTrigger(event="mars", request=request, aviso_conn_id=aviso_conn)
    first.asset_state_store = state  # type: ignore[assignment]
    running = asyncio.create_task(collect(first, 3))
    for _ in range(100):
        if CURSOR_KEY in state.values:
            break
        await asyncio.sleep(0.05)
    for step in (0, 6, 12):
        await notify(store, unique_date, step, location=f"file:///{step}")
    got = await running
    assert [p["request"]["step"] for p in got] == ["0", "6", "12"]
    assert got[0]["location"] == "file:///0" and got[0]["event"] == "mars"
    for step in (18, 24):  # posted while no triggerer runs
        await notify(store, unique_date, step)
    again = AvisoEventTrigger(event="mars", request=request, aviso_conn_id=aviso_conn)
    again.asset_state_store = state  # type: ignore[assignment]
    resumed = await collect(again, 2)
    assert [p["request"]["step"] for p in resumed] == ["18", "24"]
    assert state.values[CURSOR_KEY]["key"] == resumed[-1]["key"]


def test_message_queue_trigger_uses_the_aviso_scheme() -> None:
    from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger

    trigger = MessageQueueTrigger(scheme="aviso", event="mars", request={"class": "od"}, aviso_conn_id="x")
    assert isinstance(trigger.trigger, AvisoEventTrigger)
    assert trigger.serialize() == ("aviso_workflows.airflow.triggers.AvisoEventTrigger",
                                   {"event": "mars", "request": {"class": "od"}, "aviso_conn_id": "x",
                                    "event_interval": 5.0, "start_from": "unpause", "start_lookback": None})


async def test_the_progress_logged_counts_steps_ready_in_order(store: Store, unique_date: str, aviso_conn: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Posted 0, 12, 6: the log says 1 ready after step 12 (6 is missing before it), 3 once 6 is posted."""
    trigger = AvisoTrigger(event="mars", request=request_of(store, unique_date, "0/6/12/18"), aviso_conn_id=aviso_conn)
    log = TriggerLog(capsys)
    waiting = asyncio.create_task(anext(trigger.run()))
    await eventually_async(lambda: subscribers_on(PREFIX) >= 1, what="the trigger following the shared watch",
                           timeout=10)
    await notify(store, unique_date, 0)
    await log.line_with("1/4 ready (1 found)", 10)
    await notify(store, unique_date, 12)
    await log.line_with("1/4 ready (2 found)", 10)
    await notify(store, unique_date, 6)
    await log.line_with("3/4 ready (3 found)", 10)
    assert not waiting.done()
    await notify(store, unique_date, 18)
    event = await asyncio.wait_for(waiting, 10)
    assert event.payload["status"] == "success"


async def test_triggers_of_a_loop_share_the_store_of_their_connection_until_it_is_looked_up_again(
        monkeypatch: pytest.MonkeyPatch, store: Store, etcd_url: str, unique_date: str) -> None:
    """One store for the triggers of one lookup; a new lookup (an edited connection) builds a new one."""
    from aviso_workflows.airflow import hooks

    monkeypatch.setenv("AIRFLOW_CONN_AVISO_SHARED", connection_json(etcd_url, timeout=7))
    triggers = [AvisoTrigger(event="mars", request=request_of(store, unique_date, step), aviso_conn_id="aviso_shared")
                for step in (0, 6)]
    waiting = [asyncio.create_task(anext(t.run())) for t in triggers]
    await notify(store, unique_date, "0/6")
    events = await asyncio.wait_for(asyncio.gather(*waiting), 15)
    assert [e.payload["status"] for e in events] == ["success", "success"]
    assert triggers[0]._store is not None and triggers[0]._store is triggers[1]._store
    monkeypatch.setattr(hooks, "CONNECTION_CACHE_SECONDS", -1.0)  # every lookup is a new one from now on
    monkeypatch.setenv("AIRFLOW_CONN_AVISO_SHARED", connection_json(etcd_url, timeout=9))
    edited = await hooks.AvisoHook("aviso_shared").aget_conn()
    assert edited is not triggers[0]._store
    assert (triggers[0]._store.config.timeout, edited.config.timeout) == (7, 9)


async def test_a_trigger_closed_after_its_event_leaves_nothing_to_the_loops_finalizer(
        store: Store, unique_date: str, aviso_conn: str) -> None:
    """The triggerer closes a trigger once it fired: its inner generator is closed then, not left to the
    garbage collector (which would cost the loop a callback and a task for each of thousands of triggers)."""
    import sys

    hooks = sys.get_asyncgen_hooks()
    finalized: list[str] = []

    def finalizer(generator: Any) -> None:
        finalized.append(generator.__qualname__)
        hooks.finalizer(generator)

    sys.set_asyncgen_hooks(firstiter=hooks.firstiter, finalizer=finalizer)
    try:
        await notify(store, unique_date, 0)
        events = AvisoTrigger(event="mars", request=request_of(store, unique_date, 0), aviso_conn_id=aviso_conn).run()
        event = await asyncio.wait_for(anext(events), 15)
        await events.aclose()
        del events
    finally:
        sys.set_asyncgen_hooks(firstiter=hooks.firstiter, finalizer=hooks.finalizer)
    assert event.payload["status"] == "success"
    assert finalized == []
