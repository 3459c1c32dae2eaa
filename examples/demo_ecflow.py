"""The ecFlow part of ``make demo``: a pyflow suite whose wait task is released by notifications.

Starts a private ecflow_server (free port, temporary home, reached on localhost), loads a suite with a
wait task and two downstream tasks triggered by its meter, posts the forecast steps one by one and
shows the meter, the label and the tasks as they move. Takes about 15 seconds.
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyflow as pf

from aviso_workflows import Store
from aviso_workflows.ecflow import LiteralTask, LoopbackHost, WaitTask
from aviso_workflows.ecflow import server as ecflow_server
from aviso_workflows.ecflow.deploy import play

FORECAST = {"class": "od", "expver": 1, "domain": "g", "time": 12, "stream": "oper"}
STEPS = range(0, 25, 6)
LIMIT_SECONDS = 50.0
START = time.monotonic()


def say(who: str, text: str) -> None:
    print(f"{time.monotonic() - START:6.2f}s  {who:<9} {text}", flush=True)


def demo_date() -> str:
    """Today (UTC): the demo's store is fresh, and the core demo posts the 00 UTC run, this one the 12 UTC run."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d")


def build(home: Path, date: str, store_url: str) -> Any:
    with pf.Suite("demo", host=LoopbackHost(), files=str(home / "files"), home=str(home / "out"), YMD=date) as suite:
        wait = WaitTask("wait", "mars", {**FORECAST, "date": "%YMD%", "step": "0/to/24/by/6"}, timeout=40,
                        endpoints=[store_url])
        LiteralTask("first_half", script="echo steps 0-12 of $YMD are in").triggers = wait.steps >= 3
        LiteralTask("products", script="echo every step of $YMD is in").triggers = wait.complete
    return suite


class Display:
    """Prints what changed on the server since the last look."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.shown: dict[str, str] = {}

    def look(self) -> str:
        self.client.sync_local()
        defs = self.client.get_defs()
        wait = defs.find_abs_node("/demo/wait")
        now = {node.get_abs_node_path(): str(node.get_state()) for node in defs.get_all_nodes()}
        now["meter"] = str(wait.find_meter("steps").value())
        now["label"] = str(wait.find_label("latest").new_value())
        for name, value in now.items():
            if self.shown.get(name) != value and name != "/demo":
                say("ecflow", f"{name}: {value}" if name.startswith("/") else f"wait {name}: {value}")
        self.shown = now
        return now["/demo"]


def run(store_url: str) -> None:
    """Show a suite released by notifications posted to the store at ``store_url``."""
    global START
    START = time.monotonic()
    if not ecflow_server.ecflow_available():
        print("ecFlow is not installed (scripts/setup.sh installs it); skipping the ecFlow part")
        return
    store = Store([store_url])
    date = demo_date()
    with tempfile.TemporaryDirectory(prefix="aviso-ecflow-demo-") as home:
        server = ecflow_server.start(Path(home) / "server")
        say("ecflow", f"ecflow_server running on localhost:{server.port} (pid {server.pid})")
        try:
            play(build(Path(home), date, store_url), "localhost", server.port)
            say("ecflow", f"suite /demo begun: its wait task waits for steps 0-24 of {date} 12 UTC")
            _produce_and_watch(store, date, Display(server.client()))
        finally:
            server.stop()
            say("ecflow", "ecflow_server terminated")


def _produce_and_watch(store: Store, date: str, display: Display) -> None:
    steps = list(STEPS)
    next_post = time.monotonic() + 2.0
    while display.look() != "complete":
        if time.monotonic() - START > LIMIT_SECONDS:
            raise SystemExit("the ecFlow demo did not finish in time")
        if steps and time.monotonic() >= next_post:
            step = steps.pop(0)
            store.notify("mars", {**FORECAST, "date": date, "step": step}, location=f"file:///data/{date}/{step}")
            say("producer", f"posted step {step}")
            next_post = time.monotonic() + 1.0
        time.sleep(0.1)
    say("ecflow", "suite /demo complete")


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:2379")
