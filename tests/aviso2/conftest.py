"""Fixtures of the Aviso 2 source tests: ``aviso-workflows serve`` in front of the session's etcd, started
as a subprocess on a free loopback port and stopped by its PID; stores that reach it through aviso+http.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from aviso_workflows import Store
from aviso_workflows.server import free_port

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="aviso-airflow-aviso2-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

COMMAND = Path(sys.executable).with_name("aviso-workflows")
START_SECONDS = 20.0
STOP_SECONDS = 10.0


class Serve:
    """One ``aviso-workflows serve`` process; ``kill()`` and ``start()`` again keep its port."""

    def __init__(self, etcd_url: str, state: Path, *options: str) -> None:
        self.etcd_url = etcd_url
        self.options = list(options)
        self.port = free_port()
        self.log = state / f"serve-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        state.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AVISO_WORKFLOWS")}
        self.env.update(AVISO_WORKFLOWS_CONFIG=str(state / "no-config.yaml"),
                        AVISO_WORKFLOWS_STATE_DIR=str(state / "serve-state"))

    @property
    def endpoint(self) -> str:
        return f"aviso+http://127.0.0.1:{self.port}"

    def start(self) -> Serve:
        argv = [str(COMMAND), "serve", "--port", str(self.port), "--endpoint", self.etcd_url, *self.options]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"serve did not answer within {START_SECONDS:g} s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: the streams are cut without a closing event."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(STOP_SECONDS)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVISO_WORKFLOWS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AVISO_WORKFLOWS_CONFIG", str(tmp_path / "no-config.yaml"))
    for name in ("ENDPOINTS", "USERNAME", "PASSWORD", "TOKEN", "EMAIL", "KEY"):
        monkeypatch.delenv(f"AVISO_WORKFLOWS_{name}", raising=False)


@pytest.fixture(scope="session")
def serve(etcd_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """The session's serve (heartbeat 1 s) in front of the session's etcd."""
    process = Serve(etcd_url, tmp_path_factory.mktemp("serve"), "--heartbeat", "1").start()
    yield process
    process.stop()


@pytest.fixture
def new_serve(etcd_url: str, tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    """Start a serve of a test's own with options: ``new_serve("--max-duration", "2")``; stopped at the end."""
    started: list[Serve] = []

    def start(*options: str) -> Serve:
        process = Serve(etcd_url, tmp_path / "serve", *options).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def aviso(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> Store:
    """A store on the session's serve (aviso+http), also the default of the command line."""
    monkeypatch.setenv("AVISO_WORKFLOWS_ENDPOINTS", serve.endpoint)
    return Store([serve.endpoint])
