"""pyflow wait and notify jobs behave like ecFlow jobs: kill, abort reasons, retries, coalesced progress."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pyflow as pf
import pytest
from ecflow_helpers import Watcher, job_output, job_processes, log_lines, no_job_processes_within, node_state, until

from aviso_workflows import Store
from aviso_workflows.ecflow import LiteralTask, LoopbackHost, NotifyTask, WaitTask, notify_command
from aviso_workflows.ecflow.deploy import play
from aviso_workflows.ecflow.server import EcflowServer

pytestmark = pytest.mark.ecflow
FORECAST = {"class": "od", "expver": 1, "domain": "g", "time": 0, "stream": "oper"}


def suite(name: str, home: Path, **variables: str) -> pf.Suite:
    return pf.Suite(name, host=LoopbackHost(), files=str(home / "files"), home=str(home / "out"), **variables)


def aborted_reason(watcher: Watcher, path: str) -> str:
    return str(watcher.defs().find_abs_node(path).get_aborted_reason())


def waiting(server: EcflowServer, path: str) -> bool:
    return any("aviso-workflows wait" in line for line in job_processes(server, path))


def started_wait(server: EcflowServer, home: Path, etcd_url: str, date: str, name: str) -> None:
    """Suite ``name``: one WaitTask for steps 0 and 6 of ``date`` (one try), played until its wait runs."""
    with suite(name, home, YMD=date, ECF_TRIES="1") as s:
        WaitTask("wait", "mars", {**FORECAST, "date": "%YMD%", "step": "0/6"}, timeout=120, endpoints=[etcd_url])
    play(s, "localhost", server.port)
    until(lambda: waiting(server, f"/{name}/wait"), 30, "the wait starting")


def test_a_kill_ends_the_wait_at_once_and_aborts_with_the_reason(
        ecflow_server: EcflowServer, watcher: Watcher, home: Path, etcd_url: str, unique_date: str) -> None:
    started_wait(ecflow_server, home, etcd_url, unique_date, "killed")

    start = time.monotonic()
    ecflow_server.client().kill("/killed/wait")  # pyflow's ECF_KILL_CMD: SIGTERM to the job shell
    watcher.until(lambda d: node_state(d, "/killed/wait") == "aborted", 2, "the killed task aborting")
    took = time.monotonic() - start
    no_job_processes_within(ecflow_server, "/killed/wait", 2, "every process of the job ending")

    print(f"kill to aborted: {took:.2f} s")
    assert aborted_reason(watcher, "/killed/wait") == "killed by SIGTERM while waiting for the data"
    assert len(log_lines(ecflow_server, " aborted: /killed/wait", "/killed/wait")) == 1
    assert not log_lines(ecflow_server, "zombie", "/killed/wait")


def test_a_sigterm_to_every_process_of_the_job_aborts_it_with_the_reason(
        ecflow_server: EcflowServer, watcher: Watcher, home: Path, etcd_url: str, unique_date: str) -> None:
    """What a batch system's cancel does: SIGTERM to the job shell, the wait and everything else of the job."""
    started_wait(ecflow_server, home, etcd_url, unique_date, "cancelled")

    for process in job_processes(ecflow_server, "/cancelled/wait"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(process.split(":", 1)[0]), signal.SIGTERM)
    watcher.until(lambda d: node_state(d, "/cancelled/wait") == "aborted", 2, "the cancelled task aborting")
    no_job_processes_within(ecflow_server, "/cancelled/wait", 2, "every process of the job ending")
    assert aborted_reason(watcher, "/cancelled/wait") == "killed by SIGTERM while waiting for the data"


def test_a_deadline_aborts_once_with_the_reason_and_the_retry_completes(
        ecflow_server: EcflowServer, watcher: Watcher, home: Path, store: Store, etcd_url: str,
        unique_date: str) -> None:
    with suite("retried", home, YMD=unique_date, ECF_TRIES="2") as s:
        WaitTask("wait", "mars", {**FORECAST, "date": "%YMD%", "step": "0/6"}, timeout=3, endpoints=[etcd_url])
    play(s, "localhost", ecflow_server.port)
    until(lambda: bool(log_lines(ecflow_server, " aborted: /retried/wait", "/retried/wait")), 30,
          "the first try reaching its deadline")
    store.notify("mars", {**FORECAST, "date": unique_date, "step": "0/6"})
    watcher.until(lambda d: node_state(d, "/retried") == "complete", 30, "the second try completing")

    aborts = log_lines(ecflow_server, " aborted: /retried/wait", "/retried/wait")
    assert len(aborts) == 1 and "try-no: 1 reason: the deadline (3 s) passed before the data was available" \
        in aborts[0], aborts
    assert "the deadline (3 s) passed" in job_output(home, "/retried/wait", 1)
    assert not log_lines(ecflow_server, "zombie", "/retried/wait")
    no_job_processes_within(ecflow_server, "/retried/wait", 15, "every process of both tries ending")


def test_a_bad_variable_value_aborts_with_the_reason(ecflow_server: EcflowServer, watcher: Watcher, home: Path,
                                                    etcd_url: str, unique_date: str) -> None:
    with suite("badvalue", home, YMD=unique_date, ECF_TRIES="1", defstatus=pf.state.suspended) as s:
        WaitTask("wait", "mars", {**FORECAST, "date": "%YMD%", "step": 0}, timeout=30, endpoints=[etcd_url])
    play(s, "localhost", ecflow_server.port)
    ecflow_server.client().alter("/badvalue", "change", "variable", "YMD", "20261122 x")
    ecflow_server.client().resume("/badvalue")
    watcher.until(lambda d: node_state(d, "/badvalue/wait") == "aborted", 30, "the task refusing the value")
    assert aborted_reason(watcher, "/badvalue/wait") == "bad value of ecFlow variable YMD"
    assert len(log_lines(ecflow_server, " aborted: /badvalue/wait", "/badvalue/wait")) == 1


def test_a_catch_up_of_241_steps_is_quick_and_makes_few_client_calls(
        ecflow_server: EcflowServer, watcher: Watcher, home: Path, store: Store, etcd_url: str,
        unique_date: str) -> None:
    """Two waits start together, for one step and for 241: the difference is the cost of the catch-up
    (the start of a job and of its command is the machine's, and varies with its load)."""
    store.notify("mars", {**FORECAST, "date": unique_date, "step": "0/to/240"})
    with suite("caughtup", home, YMD=unique_date) as s:
        for name, steps in (("one", "0"), ("all", "0/to/240")):
            WaitTask(name, "mars", {**FORECAST, "date": "%YMD%", "step": steps}, timeout=60, endpoints=[etcd_url])
    play(s, "localhost", ecflow_server.port)
    start = time.monotonic()
    watcher.until(lambda d: node_state(d, "/caughtup") == "complete", 30, "the catch-up completing")

    took = {name: watcher.when(f"/caughtup/{name}", "complete") - start for name in ("one", "all")}
    calls = [line for line in log_lines(ecflow_server, "chd:", "/caughtup/all")
             if "chd:meter" in line or "chd:label" in line]
    print(f"241-step catch-up: complete {took['all']:.2f} s after submission, {took['all'] - took['one']:.2f} s "
          f"after a one-step wait started with it; {len(calls)} meter/label calls")
    assert watcher.meter("/caughtup/all", "steps") == 241
    assert watcher.label("/caughtup/all", "latest") == "241/241 latest step=240"
    assert len(calls) <= 12, calls
    assert took["all"] - took["one"] < 2


HOSTILE = "x[$(touch {marker})]`touch {marker}`;$HOME'\"\\"


def test_locations_and_variables_reach_the_job_as_text(ecflow_server: EcflowServer, watcher: Watcher, home: Path,
                                                       store: Store, etcd_url: str, unique_date: str,
                                                       tmp_path: Path) -> None:
    marker = tmp_path / "FILE"
    value = HOSTILE.format(marker=marker)
    with suite("hostile", home, YMD=unique_date, LOC="plain", defstatus=pf.state.suspended) as s:
        NotifyTask("task", "mars", {**FORECAST, "date": "%YMD%", "step": 0}, location="%LOC%",
                   endpoints=[etcd_url])
        helper = pf.Task("helper")
        helper.script = [notify_command(helper, "mars", {**FORECAST, "date": "%YMD%", "step": 6},
                                        location="file:///%LOC%", endpoints=[etcd_url])]
        LiteralTask("work", script=f'printf "%s" "$LOC" > {tmp_path / "seen"}')
    play(s, "localhost", ecflow_server.port)
    ecflow_server.client().alter("/hostile", "change", "variable", "LOC", value)
    ecflow_server.client().resume("/hostile")
    watcher.until(lambda d: node_state(d, "/hostile") == "complete", 30, "the three tasks completing")

    assert not marker.exists()
    stored = store.value("mars", {**FORECAST, "date": unique_date, "step": "0/6"})
    assert sorted(str(v) for v in stored.values()) == sorted([value, "file:///" + value])
    assert (tmp_path / "seen").read_text() == value


def test_any_task_that_fails_aborts_with_its_exit_status(ecflow_server: EcflowServer, watcher: Watcher,
                                                         home: Path) -> None:
    with suite("plain", home, ECF_TRIES="1") as s:
        LiteralTask("fails", script="exit 3")
    play(s, "localhost", ecflow_server.port)
    watcher.until(lambda d: node_state(d, "/plain/fails") == "aborted", 30, "the failing task aborting")
    assert aborted_reason(watcher, "/plain/fails") == "job exited with status 3"


def test_the_meter_follows_each_post_within_a_fraction_of_a_second(
        ecflow_server: EcflowServer, watcher: Watcher, home: Path, store: Store, etcd_url: str,
        unique_date: str) -> None:
    with suite("live", home, YMD=unique_date) as s:
        WaitTask("wait", "mars", {**FORECAST, "date": "%YMD%", "step": "0/to/3"}, timeout=60, endpoints=[etcd_url])
    play(s, "localhost", ecflow_server.port)

    def meter_shows(count: int) -> Callable[[], bool]:
        return lambda: watcher.meter("/live/wait", "steps") == count

    # Step 0 shows that the wait has read the store and follows its watch: the later steps are timed.
    store.notify("mars", {**FORECAST, "date": unique_date, "step": 0})
    until(meter_shows(1), 30, "the wait finding step 0")
    delays = []
    for step in range(1, 4):
        store.notify("mars", {**FORECAST, "date": unique_date, "step": step})
        delays.append(until(meter_shows(step + 1), 5, f"the meter showing {step + 1}"))
    print("post to meter: " + ", ".join(f"{delay * 1000:.0f} ms" for delay in delays))
    watcher.until(lambda d: node_state(d, "/live") == "complete", 10, "the wait completing")
    assert max(delays) < 1.0


def test_a_command_that_fails_at_once_is_not_taken_for_a_deadline(
        ecflow_server: EcflowServer, watcher: Watcher, home: Path, etcd_url: str, unique_date: str) -> None:
    with suite("broken", home, YMD=unique_date, ECF_TRIES="1") as s:  # e.g. a broken installation: exit 1 at once
        WaitTask("wait", "mars", {**FORECAST, "date": "%YMD%", "step": 0}, timeout=30, command="false")
    play(s, "localhost", ecflow_server.port)
    watcher.until(lambda d: node_state(d, "/broken/wait") == "aborted", 30, "the task aborting")
    assert aborted_reason(watcher, "/broken/wait").startswith("the wait failed (exit 1)")
