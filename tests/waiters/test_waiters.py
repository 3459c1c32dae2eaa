"""Who waits for what: each kind of waiter is listed while it waits, with its progress, and vanishes when it
ends, or within the lease's TTL when it is killed outright."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import COMMAND, FORECAST, TTL, kill_hard, listed, mars, pairs, start, stop, until, until_gone, until_listed
from waiting import until_following

from aviso_workflows import Store, ValidationError
from aviso_workflows.etcd import WatchIdle
from aviso_workflows.wait import wait
from aviso_workflows.waiters import WAITING_PREFIX, Registration, WaiterChange, parse_filters, register, watch_waiters

#: How long after a kill -9 an entry may still be listed: the TTL, plus etcd's expiry check and our polling.
GONE_SECONDS = TTL + 2.0


def test_cli_wait_is_listed_with_its_progress_and_vanishes_after_kill_9(store: Store, unique_date: str,
                                                                        etcd_url: str) -> None:
    request = mars(unique_date, "0/to/12/by/6")
    waiter = start([COMMAND, "wait", pairs(request), "--endpoint", etcd_url, "--timeout", "60",
                    "--who", "job=nightly-7"])
    try:
        entry = until_listed(store, job="nightly-7")
        assert entry.who == {"kind": "cli", "job": "nightly-7"} and entry.pid == waiter.pid
        assert (entry.found, entry.total, entry.event) == (0, 3, "mars")
        assert entry.request["step"] == ["0", "6", "12"] and entry.request["date"] == unique_date
        assert [w.id for w in listed(store, step=6, date=unique_date)] == [entry.id]
        assert listed(store, step=18, job="nightly-7") == [] and listed(store, kind="sensor", job="nightly-7") == []
        store.notify("mars", mars(unique_date, "0/6"))
        until(lambda: listed(store, job="nightly-7")[0].found == 2, 10, "the count reaching 2/3")
        kill_hard(waiter)
        assert until_gone(store, GONE_SECONDS + 5, job="nightly-7") <= GONE_SECONDS
    finally:
        stop(waiter)


def test_a_released_cli_wait_removes_its_entry_at_once(store: Store, unique_date: str, etcd_url: str) -> None:
    request = mars(unique_date, "0/6")
    waiter = start([COMMAND, "wait", pairs(request), "--endpoint", etcd_url, "--timeout", "60", "--who", "job=done"])
    try:
        until_listed(store, job="done")
        store.notify("mars", mars(unique_date, "0/6"))
        assert waiter.wait(timeout=20) == 0
        assert listed(store, job="done") == []  # not left for the TTL: removed before the command exits
    finally:
        stop(waiter)


def test_a_refused_wait_writes_no_entry(store: Store, unique_date: str, etcd_url: str) -> None:
    request = mars(unique_date, "0")
    base = [COMMAND, "wait", "--endpoint", etcd_url, "--timeout", "5", "--who", "job=refused"]
    before = store.current_revision()
    for argv in (base + [pairs({**request, "step": "x"})], base + [pairs(request), "--timeout", "soon"],
                 base + [pairs(request), "--progress-command", " "]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert done.returncode == 2, done.stderr
    assert not [kv.key for kv in waiter_history(store, before + 1) if "refused" in kv.value]


def waiter_history(store: Store, since: int) -> list[Any]:
    """Every put under the waiters' prefix since revision ``since`` (read until etcd is silent for 2 s)."""
    puts: list[Any] = []
    stream = store.gateway.watch(WAITING_PREFIX, since, idle_timeout=2)
    try:
        for batch in stream:
            puts += batch.puts
    except WatchIdle:
        pass
    finally:
        stream.close()
    return puts


def test_listener_is_listed_and_vanishes_after_kill_9(store: Store, unique_date: str, etcd_url: str,
                                                      tmp_path: Path) -> None:
    listener_file = tmp_path / "listener.yaml"
    listener_file.write_text(json.dumps({"listeners": [{"event": "mars", "request": {**FORECAST, "date": unique_date},
                                                        "triggers": [{"type": "echo"}]}]}))
    listener = start([COMMAND, "listen", str(listener_file), "--endpoint", etcd_url, "--cursor", "waiters-test"],
                     env={"AVISO_WORKFLOWS_STATE_DIR": str(tmp_path / "state")})
    try:
        entry = until_listed(store, kind="listener", cursor="waiters-test")
        assert entry.who["file"] == str(listener_file) and entry.mode == "any"
        assert entry.request["date"] == unique_date and "step" not in entry.request
        assert listed(store, kind="listener", step=42, date=unique_date)  # an open field matches any value
        kill_hard(listener)
        assert until_gone(store, GONE_SECONDS + 5, cursor="waiters-test") <= GONE_SECONDS
    finally:
        stop(listener)


def test_waiting_command_filters_and_prints_json(store: Store, unique_date: str, etcd_url: str) -> None:
    registration = register(store, store.request(mars(unique_date, "0/6")), who={"kind": "test", "owner": "ops"})
    try:
        until_listed(store, owner="ops")
        done = subprocess.run([COMMAND, "waiting", f"date={unique_date}", "owner=ops", "--json", "--endpoint",
                               etcd_url], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        [line] = done.stdout.splitlines()
        assert json.loads(line)["who"] == {"kind": "test", "owner": "ops"}
        plain = subprocess.run([COMMAND, "waiting", "owner=ops", "--endpoint", etcd_url], capture_output=True,
                               text=True, timeout=30)
        assert f"date={unique_date}" in plain.stdout and "0/2" in plain.stdout and "owner=ops" in plain.stdout
        bad = subprocess.run([COMMAND, "waiting", "owner", "--endpoint", etcd_url], capture_output=True, text=True,
                             timeout=30)
        assert bad.returncode == 2 and "filter: 'owner' is not valid" in bad.stderr
    finally:
        registration.close(wait=5)
    assert listed(store, owner="ops") == []


@contextmanager
def changes_of(store: Store, owner: str, *, idle_timeout: float) -> Iterator[list[WaiterChange]]:
    """The changes ``watch_waiters`` reports of the waiters of ``owner``, gathered by a thread while in the block."""
    stop_watch = threading.Event()
    changes: list[WaiterChange] = []
    thread = threading.Thread(target=lambda: changes.extend(
        c for c in watch_waiters(store, stop_watch, idle_timeout=idle_timeout) if c.waiter.who.get("owner") == owner))
    thread.start()
    try:
        yield changes
    finally:
        stop_watch.set()
        thread.join(10)
    assert not thread.is_alive()


def test_watch_waiters_reports_additions_progress_and_removals(store: Store, unique_date: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    streams: list[Any] = []
    watch = store.gateway.watch

    def recorded(prefix: str, *args: Any, **options: Any) -> Any:
        stream = watch(prefix, *args, **options)
        if prefix == WAITING_PREFIX:
            streams.append(stream)
        return stream

    monkeypatch.setattr(store.gateway, "watch", recorded)  # this store's gateway only
    with changes_of(store, "watched", idle_timeout=5) as changes:
        until(lambda: streams and streams[0].created, 10, "etcd confirming the watch of the waiters")
        registration = register(store, store.request(mars(unique_date, "0/6")), who={"owner": "watched"})
        until(lambda: [c.kind for c in changes] == ["added"], 10, "the addition being reported")
        registration.progress(1)
        until(lambda: [c.kind for c in changes] == ["added", "updated"], 10, "the progress being reported")
        assert changes[-1].waiter.found == 1
        registration.close(wait=5)
        until(lambda: [c.kind for c in changes] == ["added", "updated", "removed"], 10, "the removal")


@pytest.mark.parametrize("etcd_transport", ["gateway", "grpc"], indirect=True)
def test_a_waiter_that_came_and_went_within_one_watch_answer_is_reported_gone(store: Store, unique_date: str,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A board that fell behind gets an entry's writes and its removal in one answer of etcd: they are taken in
    history order, so the entry is reported removed, not left listed."""
    before = store.gateway.current_revision()
    registration = register(store, store.request(mars(unique_date, "0/6")), who={"owner": "brief"})
    until_listed(store, owner="brief")
    registration.close(wait=5)
    until(lambda: not listed(store, owner="brief"), 10, "the entry being removed")
    read_all = store.gateway.range_all

    def read_before(prefix: str, **options: Any) -> Any:  # the registry as it was before the entry came
        return (before, []) if prefix == WAITING_PREFIX else read_all(prefix, **options)

    monkeypatch.setattr(store.gateway, "range_all", read_before)  # this store's gateway only
    # (a read after a lost or idle watch would mend the list: the idle timeout is well past the wait here)
    with changes_of(store, "brief", idle_timeout=60) as changes:
        until(lambda: [c.kind for c in changes] == ["added", "removed"], 10, "the addition, then the removal")


def test_progress_is_coalesced_into_a_few_writes(store: Store, unique_date: str) -> None:
    registration = register(store, store.request(mars(unique_date, "0/to/99")), who={"owner": "busy"})
    try:
        until_listed(store, owner="busy")
        first = store.gateway.get(WAITING_PREFIX + registration.id)[1]
        assert first is not None
        for found in range(1, 101):
            registration.progress(found)
        until(lambda: listed(store, owner="busy")[0].found == 100, 10, "the last count being written")
        latest = store.gateway.get(WAITING_PREFIX + registration.id)[1]
        assert latest is not None and latest.version - first.version <= 3  # 100 counts, at most 3 writes
    finally:
        registration.close(wait=5)


@pytest.mark.parametrize(("mode", "posted", "written"), [("all", "0/6", [1]), ("any", "6", [])])
def test_the_count_that_releases_a_wait_is_not_written_to_its_entry(store: Store, unique_date: str, mode: str,
                                                                    posted: str, written: list[int],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A wait whose keys are all there (``any``: one of them) is released at once: the count that releases it
    would be one more write for an entry removed right after (ten thousand released triggers: ten thousand)."""
    store.notify(store.request(mars(unique_date, posted)))
    counts: list[int] = []
    progress = Registration.progress

    def recorded(self: Registration, found: int, *args: Any, **options: Any) -> None:
        counts.append(found)
        progress(self, found, *args, **options)

    monkeypatch.setattr(Registration, "progress", recorded)
    found = wait(store, store.request(mars(unique_date, "0/6")), mode=mode, timeout=10, who={"owner": "released"})
    assert len(found) == len(posted.split("/"))
    assert counts == written
    assert not listed(store, owner="released")


def test_waiters_leaving_together_leave_in_shared_transactions(store: Store, unique_date: str) -> None:
    """Three hundred triggers fired by one post end together: their entries go in a few transactions (a
    delete each would be three hundred writes racing the releases), while one waiter still waits."""
    request = store.request(mars(unique_date, 0))
    staying = register(store, request, who={"owner": "stays"})
    leaving = [register(store, request, who={"owner": "leaves"}) for _ in range(300)]
    try:
        until(lambda: len(listed(store, owner="leaves")) == 300, 20, "the 300 entries being written")
        before = store.gateway.current_revision()
        for registration in leaving:
            registration.close()
        until(lambda: not listed(store, owner="leaves"), 10, "the 300 entries being removed")
        assert store.gateway.current_revision() - before < 30  # ceil(300 / 128) transactions, and others' writes
        assert len(listed(store, owner="stays")) == 1
    finally:
        for registration in leaving:
            registration.close()
        staying.close(wait=5)


def test_filters_and_who_are_checked() -> None:
    assert parse_filters(["step=3,dag_id=x", "kind=cli"]) == {"step": "3", "dag_id": "x", "kind": "cli"}
    with pytest.raises(ValidationError, match="who"):
        store = Store(["http://127.0.0.1:1"])
        register(store, store.request(mars("20260101", 0)), who={"bad name": 1})


# -- Airflow -------------------------------------------------------------------------------------
class TaskInstance(SimpleNamespace):
    """What a sensor reads from ``context["ti"]``: its ids, and XCom pushes (recorded)."""

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def airflow_context(run_id: str) -> dict[str, Any]:
    import pendulum

    ti = TaskInstance(dag_id="forecast", task_id="wait_fc", run_id=run_id, map_index=-1, try_number=1, pushed={})
    return {"ti": ti, "task_instance": ti, "dag_run": SimpleNamespace(run_after=pendulum.now("UTC"))}


def in_thread(function: Any, outcome: dict[str, Any]) -> threading.Thread:
    """Run ``function`` in a thread; its result or error lands in ``outcome``."""

    def run() -> None:
        try:
            outcome["result"] = function()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.fixture
def aviso_conn(etcd_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    from airflow_helpers import connection_json

    monkeypatch.setenv("AIRFLOW_CONN_AVISO_DEFAULT", connection_json(etcd_url))
    return "aviso_default"


def test_sensor_in_poke_mode_is_listed_with_its_dag_task_and_run(store: Store, unique_date: str,
                                                                  aviso_conn: str) -> None:
    from airflow.sdk import DAG

    from aviso_workflows.airflow import AvisoSensor

    with DAG("waiters_unit", schedule=None):
        sensor = AvisoSensor(task_id="wait_fc", event="mars", request={**FORECAST, "date": unique_date,
                                                                      "step": "0/6"}, mode="poke", timeout=60)
    outcome: dict[str, Any] = {}
    thread = in_thread(lambda: sensor.execute(airflow_context("poke-run")), outcome)
    try:
        entry = until(lambda: outcome.get("error") or (listed(store, run_id="poke-run") or [None])[0], 20,
                      "the sensor being listed")
        assert not isinstance(entry, BaseException), entry
        assert entry.who == {"kind": "airflow-sensor", "dag_id": "forecast", "task_id": "wait_fc",
                             "run_id": "poke-run", "try_number": "1"}
        store.notify("mars", mars(unique_date, "0/6"))
    finally:
        thread.join(30)
    assert len(outcome["result"]) == 2
    assert listed(store, run_id="poke-run") == []


def test_deferred_trigger_is_listed_and_vanishes_after_kill_9(store: Store, unique_date: str,
                                                              aviso_conn: str, etcd_url: str) -> None:
    from aviso_workflows.airflow import AvisoTrigger

    trigger = AvisoTrigger(event="mars", request=store.request(mars(unique_date, "0/6")).as_dict(),
                           deadline=time.time() + 60, who={"kind": "airflow-trigger", "dag_id": "forecast",
                                                           "run_id": "deferred-run"})
    classpath, kwargs = trigger.serialize()
    script = (f"import asyncio, json; from {classpath.rsplit('.', 1)[0]} import AvisoTrigger\n"
              f"async def main():\n"
              f"    async for event in AvisoTrigger(**json.loads({json.dumps(json.dumps(kwargs))})).run():\n"
              f"        print(json.dumps(event.payload), flush=True)\n"
              f"asyncio.run(main())\n")
    triggerer = start([sys.executable, "-c", script])
    try:
        entry = until_listed(store, run_id="deferred-run", timeout=60)
        assert entry.who["kind"] == "airflow-trigger" and entry.total == 2 and entry.pid == triggerer.pid
        kill_hard(triggerer)
        assert until_gone(store, GONE_SECONDS + 5, run_id="deferred-run") <= GONE_SECONDS
    finally:
        stop(triggerer)


def test_trigger_in_process_registers_without_blocking_its_loop(store: Store, unique_date: str,
                                                                aviso_conn: str) -> None:
    from aviso_workflows.airflow import AvisoTrigger

    trigger = AvisoTrigger(event="mars", request=store.request(mars(unique_date, "0/6")).as_dict(),
                           deadline=time.time() + 60, who={"kind": "airflow-trigger", "run_id": "in-process"})

    async def run() -> dict[str, Any]:
        async def post_when_listed() -> None:
            await asyncio.to_thread(until_listed, store, run_id="in-process")
            await asyncio.to_thread(store.notify, "mars", mars(unique_date, "0/6"))

        poster = asyncio.create_task(post_when_listed())
        async for event in trigger.run():
            await poster
            return dict(event.payload)
        raise AssertionError("no event")

    payload = asyncio.run(asyncio.wait_for(run(), 60))
    assert payload["status"] == "success" and "missing" not in payload
    until_gone(store, 5, run_id="in-process")


# -- a user who may only read Aviso's keys -------------------------------------------------------
def test_a_read_only_user_still_waits_and_registration_is_skipped_with_one_info_line(
        tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture) -> None:
    from security_helpers import READER, WRITER, PrivateEtcd

    etcd = PrivateEtcd(tmp_path_factory.mktemp("auth-etcd"), ["--auth-token", "simple"])
    etcd.start()
    try:
        etcd.enable_auth()
        reader, writer = Store(config=etcd.config(READER)), Store(config=etcd.config(WRITER))
        request = reader.request(mars("20260301", "0/6"))
        caplog.set_level(logging.INFO, logger="aviso_workflows")
        outcome: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: outcome.update(found=wait(reader, request, timeout=30,
                                                                            who={"kind": "test"})))
        thread.start()
        until_following(reader, reader.request(mars("20260301", "0/6")))
        writer.notify("mars", mars("20260301", "0/6"))
        thread.join(30)
        assert len(outcome["found"]) == 2
        skipped = [r for r in caplog.records if "waiters are not registered" in r.getMessage()]
        assert len(skipped) == 1 and skipped[0].levelno == logging.INFO
        assert "/aviso-workflows/waiting/" in skipped[0].getMessage()
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "waiter" in r.getMessage()]
    finally:
        etcd.stop()
