"""The Aviso 2 part of ``make demo``: pyaviso 2 posts through ``serve``, an Airflow sensor and an ecFlow wait go.

Starts ``aviso-workflows serve`` (the Aviso 2 HTTP API) on the demo's etcd; an Airflow sensor (a real
``AvisoSensor``, in a child process) and an ecFlow ``WaitTask`` (a suite on a private ecflow_server) wait on
etcd for steps 0, 6 and 12 of today's 18 UTC forecast, and a third wait asks ``serve`` itself for them, as
a client of an aviso-server (``aviso+http://``: one ``/watch`` stream); ECMWF's own Aviso 2 client, pyaviso
2.4.2 from .venv-pyaviso2, posts the three steps to ``serve``, which writes them to etcd; all three are
released. Takes about 10 seconds.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from aviso_workflows.serve.cli import ServeProcess

ROOT = Path(__file__).resolve().parent.parent
AVISO2 = ROOT / ".venv-pyaviso2" / "bin" / "aviso"
STEPS = ("0", "6", "12")
FORECAST = {"class": "od", "expver": "1", "domain": "g", "time": "18", "stream": "oper", "step": "/".join(STEPS)}
LOCATION = "file:///data/od/oper/18/step{step:0>3}.grib"
LIMIT_SECONDS = 40.0
START = time.monotonic()


def say(who: str, text: str) -> None:
    print(f"{time.monotonic() - START:6.2f}s  {who:<9} {text}", flush=True)


def start_serve(store_url: str, port: int) -> ServeProcess:
    """``serve`` on 127.0.0.1:``port`` in front of the demo's etcd, once it answers /health."""
    from aviso_workflows.serve.cli import ServeFailed, start_serve_process

    try:
        return start_serve_process(store_url, port, timeout=20)
    except ServeFailed as error:
        raise SystemExit(f"aviso-workflows serve did not start: {error}") from None


def start_sensor(store_url: str, request: dict[str, str], home: Path) -> subprocess.Popen[str]:
    """An AvisoSensor in poke mode, in a child process (it imports Airflow), following etcd until released."""
    url = urlsplit(store_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW_CONN_AVISO_DEFAULT=json.dumps({"conn_type": "aviso", "host": url.hostname, "port": url.port}))
    return subprocess.Popen([sys.executable, __file__, "--sensor", json.dumps(request)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _sensor(request: dict[str, str]) -> None:
    from airflow.sdk import DAG

    from aviso_workflows.airflow import AvisoSensor

    with DAG("aviso2_demo", schedule=None):
        sensor = AvisoSensor(task_id="wait", event="mars", request=request, timeout=LIMIT_SECONDS)
    print("sensor waiting", flush=True)
    found = sensor.execute({"dag_run": SimpleNamespace(run_after=dt.datetime.now(dt.UTC))})  # type: ignore[arg-type]
    steps = ", ".join(n["request"]["step"] for n in found)
    print(f"sensor RELEASED: steps {steps}, the last at {found[-1]['location']}", flush=True)


def _echo(process: subprocess.Popen[str], waiting: threading.Event) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("sensor "):
            waiting.set()
            say("airflow", line.removeprefix("sensor ").strip())


def start_aviso_wait(port: int, request: dict[str, str]) -> tuple[threading.Thread, list[BaseException]]:
    """A wait through ``serve`` as an aviso-server client (``aviso+http://``), in a thread; its error, if any,
    lands in the list."""
    from aviso_workflows import Store

    failed: list[BaseException] = []

    def wait() -> None:
        try:
            found = Store([f"aviso+http://127.0.0.1:{port}"]).wait({"event": "mars", **request},
                                                                     timeout=LIMIT_SECONDS)
            say("aviso2", f"wait through serve's /watch RELEASED: steps {', '.join(n.request['step'] for n in found)}")
        except BaseException as error:  # noqa: BLE001 - reported by the demo's thread
            failed.append(error)

    thread = threading.Thread(target=wait, name="aviso2-wait", daemon=True)
    thread.start()
    say("aviso2", f"a wait for steps {'/'.join(STEPS)} follows serve's /watch (aviso+http://127.0.0.1:{port})")
    return thread, failed


def run(store_url: str) -> None:
    """Show pyaviso 2 releasing an Airflow sensor and an ecFlow wait through ``serve``."""
    global START
    START = time.monotonic()
    if not AVISO2.exists():
        print("pyaviso 2 is not installed in .venv-pyaviso2 (scripts/setup.sh installs it); skipping")
        return
    from aviso_workflows import server

    date = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    request = {**FORECAST, "date": date}
    port = server.free_port()
    with tempfile.TemporaryDirectory(prefix="aviso-demo-aviso2-") as tmp:
        sensor = start_sensor(store_url, request, Path(tmp) / "airflow")  # importing Airflow takes a while
        waiting = threading.Event()
        echo = threading.Thread(target=_echo, args=(sensor, waiting), daemon=True)
        echo.start()
        serve: ServeProcess | None = None
        try:
            serve = start_serve(store_url, port)
            say("serve", f"aviso-workflows serve (pid {serve.process.pid}) answers the Aviso 2 API at "
                f"http://127.0.0.1:{port}")
            aviso_wait, aviso_failed = start_aviso_wait(port, request)
            with ecflow_wait(store_url, request, Path(tmp) / "ecflow") as look:
                waiting.wait(timeout=LIMIT_SECONDS)
                time.sleep(1.0)  # the sensor has read and follows the watch
                for step in STEPS:
                    post(port, {**request, "step": step}, tmp)
                sensor.wait(timeout=LIMIT_SECONDS)
                echo.join(timeout=5)
                look()
                aviso_wait.join(timeout=LIMIT_SECONDS)
                if aviso_failed or aviso_wait.is_alive():
                    raise SystemExit(f"the wait through serve failed: {aviso_failed or 'not released in time'}")
        finally:
            if sensor.poll() is None:
                sensor.kill()
                sensor.wait(timeout=10)
            if serve is not None:
                serve.stop(timeout=20)
                say("serve", "stopped")
    if sensor.returncode != 0:
        raise SystemExit(f"the Airflow sensor failed (exit {sensor.returncode})")


def post(port: int, fields: dict[str, str], home: str) -> None:
    """``aviso notify`` of pyaviso 2 to ``serve``, for one step."""
    location = LOCATION.format(step=fields["step"])
    notify = [str(AVISO2), "--base-url", f"http://127.0.0.1:{port}", "notify",
              ",".join(["event=mars", *(f"{k}={v}" for k, v in fields.items()), f'data="{location}"'])]
    say("pyaviso2", "$ aviso notify " + notify[-1])
    posted = subprocess.run(notify, capture_output=True, text=True, timeout=30, env={**os.environ, "HOME": home})
    if posted.returncode != 0:
        raise SystemExit(f"pyaviso 2's notify failed: {posted.stderr}")
    say("pyaviso2", f"serve answered {posted.stdout.strip()}")


class ecflow_wait:  # noqa: N801 - used as a context manager, named for what it holds
    """A suite with a WaitTask for ``request`` on a private ecflow_server; calling it waits for the task."""

    def __init__(self, store_url: str, request: dict[str, str], home: Path) -> None:
        self.store_url, self.request, self.home = store_url, request, home
        self.server: Any = None

    def __enter__(self) -> Any:
        from aviso_workflows.ecflow import server as ecflow_server

        if not ecflow_server.ecflow_available():
            print("ecFlow is not installed (scripts/setup.sh installs it); only the Airflow sensor waits")
            return lambda: None
        import pyflow as pf

        from aviso_workflows.ecflow import LoopbackHost, WaitTask
        from aviso_workflows.ecflow.deploy import play

        self.server = ecflow_server.start(self.home / "server")
        with pf.Suite("aviso2", host=LoopbackHost(), files=str(self.home / "files"),
                      home=str(self.home / "out")) as suite:
            WaitTask("wait", "mars", self.request, timeout=LIMIT_SECONDS, endpoints=[self.store_url])
        play(suite, "localhost", self.server.port)
        say("ecflow", f"suite /aviso2 begun on ecflow_server (pid {self.server.pid}): /aviso2/wait waits")
        return self._released

    def _released(self) -> None:
        client = self.server.client()
        deadline = time.monotonic() + LIMIT_SECONDS
        while True:
            client.sync_local()
            state = str(client.get_defs().find_abs_node("/aviso2/wait").get_state())
            if state == "complete":
                say("ecflow", "/aviso2/wait RELEASED (complete)")
                return
            if state == "aborted" or time.monotonic() > deadline:
                raise SystemExit(f"the ecFlow wait task ended {state}")
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.stop()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--sensor":
        _sensor(json.loads(sys.argv[2]))
    elif len(sys.argv) == 2:
        run(sys.argv[1])
    else:
        sys.exit("usage: demo_aviso2.py ETCD_URL")
