"""Fixtures of the Aviso 2 source tests: ``aviso-workflows serve`` in front of the session's etcd, started
as a subprocess on a free loopback port and stopped by its PID; stores that reach it through aviso+http.
(The process itself is :class:`serve_process.Serve` in tests/, importable from every test folder.)
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from isolation import isolated  # noqa: F401 - autouse fixture
from serve_process import Serve

from aviso_workflows import Store

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="aviso-airflow-aviso2-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


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
