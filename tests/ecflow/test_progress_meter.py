"""On a real ecflow_server, a task triggered on the wait's meter starts only once its step exists.

The meter counts the steps ready in request order (none missing before them): with 0, 6, 12, 18 posted
and then 30, it stays at 4, so ``prod_024`` (``wait:steps ge 5``) waits for step 24 itself. Each product
job checks in etcd that its step exists (``aviso-workflows wait --timeout 0`` aborts the task otherwise).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pyflow as pf
import pytest
from ecflow_helpers import Watcher, job_processes, log_lines, node_state, until

from aviso_workflows import Store
from aviso_workflows.ecflow import LiteralTask, LoopbackHost, WaitTask
from aviso_workflows.ecflow.deploy import play
from aviso_workflows.ecflow.scripts import command_path
from aviso_workflows.ecflow.server import EcflowServer
from aviso_workflows.waiters import list_waiters

pytestmark = pytest.mark.ecflow
FORECAST = {"class": "od", "expver": 1, "domain": "g", "time": 0, "stream": "oper"}
STEPS = list(range(0, 49, 6))
#: Product task → the step it needs; it triggers on ``steps >= position of that step + 1``.
PRODUCTS = {"prod_024": 24, "prod_030": 30, "prod_048": 48}


def product_script(step: int, etcd_url: str) -> str:
    """The product's job fails (the task aborts) if its step is not in etcd when it runs."""
    request = ",".join(f"{k}={v}" for k, v in {**FORECAST, "event": "mars", "step": step}.items()) + ",date=$YMD"
    return (f"{shlex.quote(command_path())} wait {request} --timeout 0 --quiet --endpoint {etcd_url}\n"
            f"echo step {step} of $YMD is in the store")


def post(store: Store, date: str, *steps: int) -> None:
    for step in steps:
        store.notify("mars", {**FORECAST, "date": date, "step": step})


def test_a_task_on_the_meter_starts_only_after_its_step_is_posted(
        ecflow_server: EcflowServer, watcher: Watcher, home: Path, store: Store, etcd_url: str,
        unique_date: str) -> None:
    path = "/ordered/wait"
    with pf.Suite("ordered", host=LoopbackHost(), files=str(home / "files"), home=str(home / "out"),
                  YMD=unique_date, ECF_TRIES="1") as suite:
        wait = WaitTask("wait", "mars", {**FORECAST, "date": "%YMD%", "step": "0/to/48/by/6"}, timeout=120,
                        endpoints=[etcd_url])
        for name, step in PRODUCTS.items():
            LiteralTask(name, script=product_script(step, etcd_url)).triggers = wait.steps >= STEPS.index(step) + 1
    play(suite, "localhost", ecflow_server.port)
    until(lambda: any("aviso-workflows wait" in p for p in job_processes(ecflow_server, path)), 30, "the wait starting")
    meters: list[int] = []

    def poll(defs: object) -> None:
        meters.append(int(defs.find_abs_node(path).find_meter("steps").value()))  # type: ignore[attr-defined]

    post(store, unique_date, 0, 6, 12, 18)
    watcher.until(lambda d: d.find_abs_node(path).find_meter("steps").value() == 4, 30, "meter 4", poll)
    meter_calls = len(log_lines(ecflow_server, "chd:meter", path))

    post(store, unique_date, 30)  # out of order: 24 is still missing
    until(lambda: len(log_lines(ecflow_server, "chd:meter", path)) > meter_calls, 30,
          "the wait setting the meter after step 30 was found")
    until(lambda: [w.found for w in list_waiters(store, {"ecflow_path": path})] == [5], 30,
          "the registry showing 5 found")
    defs = watcher.record(poll)
    assert meters[-1] == 4, "step 30 must not count while 24 is missing"
    assert node_state(defs, "/ordered/prod_024") == "queued"
    assert [(w.ready, w.total) for w in list_waiters(store, {"ecflow_path": path})] == [(4, 9)]
    assert watcher.label(path, "latest") == "4/9 latest step=18"

    post(store, unique_date, 24)
    # Both start once the meter reaches 6 and run side by side: either may complete first.
    watcher.until(lambda d: all(node_state(d, f"/ordered/prod_0{step}") == "complete" for step in (24, 30)), 60,
                  "prod_024 and prod_030 completing", poll)
    assert node_state(watcher.defs(), "/ordered/prod_048") == "queued"
    post(store, unique_date, 42, 36, 48)
    watcher.until(lambda d: node_state(d, "/ordered") == "complete", 60, "the suite completing", poll)
    print(f"meter values seen: {sorted(set(meters))}; final {watcher.meter(path, 'steps')}, "
          f"label {watcher.label(path, 'latest')!r}")
    assert watcher.meter(path, "steps") == 9 and watcher.label(path, "latest") == "9/9 latest step=48"
    assert meters == sorted(meters), "the meter never goes back"
