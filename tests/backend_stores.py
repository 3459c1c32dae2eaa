"""One parametrised fixture for every behaviour suite: a store on etcd, then on the test double of aviso-server
0.7.1 — the same tests, never copied suites.

The double is tests/conformance/aviso_server_double.py, written from ecmwf/aviso-server 0.7.1 (commit 8b99d73):
``src/handlers`` for ``/api/v1/notification``, ``/api/v1/watch`` and ``/api/v1/replay``. It serves on a free
loopback port, so subprocesses (ecFlow jobs, the CLI) reach it by its ``aviso+http://`` URL too.

A test module imports the fixtures it uses, e.g.
``from backend_stores import any_store_fixture, aviso_double_fixture  # noqa: F401``
(this module has its own name, not ``conftest``, so test directories with their own conftest.py can import it).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from waiting import subscribers_on

from aviso_workflows import Store

# Appended, not prepended: the conformance folder has a conftest.py of its own, and test folders that say
# ``from conftest import …`` must still find theirs first.
_CONFORMANCE = str(Path(__file__).resolve().parent / "conformance")
if _CONFORMANCE not in sys.path:
    sys.path.append(_CONFORMANCE)
from aviso_server_double import AvisoServerDouble  # noqa: E402

#: etcd over its default transport (gRPC), etcd over its HTTP gateway, and the aviso-server double.
BACKENDS = ["etcd", "etcd-gateway", "aviso-server"]
#: The suites of the schedulers' bridges: etcd's transport is the core suites' concern, so one each.
BRIDGE_BACKENDS = ["etcd", "aviso-server"]


@pytest.fixture(scope="module", name="aviso_double")
def aviso_double_fixture() -> Iterator[AvisoServerDouble]:
    """One double per test module (heartbeat 1 s); tests keep apart by their own dates."""
    with AvisoServerDouble(heartbeat=1.0) as server:
        yield server


def store_on(backend: str, request: pytest.FixtureRequest, etcd_url: str, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Store:
    """A store on ``backend`` (one of :data:`BACKENDS`); cursors and config in a temp dir, and the environment's
    endpoint (what subprocesses and Airflow connections without a host use) set to the same backend."""
    monkeypatch.setenv("AVISO_WORKFLOWS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AVISO_WORKFLOWS_CONFIG", str(tmp_path / "no-config.yaml"))
    if backend == "etcd":
        store = Store([etcd_url])
    elif backend == "etcd-gateway":
        store = Store([etcd_url], transport="gateway")
    elif backend == "aviso-server":
        store = Store([request.getfixturevalue("aviso_double").endpoint])
    else:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    monkeypatch.setenv("AVISO_WORKFLOWS_ENDPOINTS", store.config.endpoints[0])
    return store


@pytest.fixture(params=BACKENDS, name="any_store")
def any_store_fixture(request: pytest.FixtureRequest, etcd_url: str, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> Store:
    """A store on the session's etcd (gRPC, then the gateway), then on the module's aviso-server double."""
    return store_on(request.param, request, etcd_url, tmp_path, monkeypatch)


@dataclass
class OnBackend:
    """A bridge test's backend: its store, its endpoint, and the double when it is the aviso-server."""

    name: str
    store: Store
    double: AvisoServerDouble | None

    @property
    def endpoint(self) -> str:
        return self.store.config.endpoints[0]

    def connection_json(self) -> str:
        """An Airflow ``aviso`` connection whose host is the endpoint's URL (etcd's ``http://`` or the
        server's ``aviso+http://``), as ``AIRFLOW_CONN_*`` holds it."""
        return json.dumps({"conn_type": "aviso", "host": self.endpoint})

    def followers(self, prefix: str) -> int:
        """Readers following now: subscribers of etcd's confirmed shared watch on ``prefix``, or streams the
        double has open."""
        if self.double is not None:
            return self.double.open_streams
        return subscribers_on(prefix)  # any store of the process: an Airflow trigger makes its own from the connection


@pytest.fixture(params=BRIDGE_BACKENDS, name="on_backend")
def on_backend_fixture(request: pytest.FixtureRequest, etcd_url: str, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> OnBackend:
    """The store of a bridge test on etcd, then on the module's aviso-server double."""
    store = store_on(request.param, request, etcd_url, tmp_path, monkeypatch)
    double = request.getfixturevalue("aviso_double") if request.param == "aviso-server" else None
    return OnBackend(request.param, store, double)


@pytest.fixture(name="backend_conn")
def backend_conn_fixture(on_backend: OnBackend, monkeypatch: pytest.MonkeyPatch) -> str:
    """Airflow's ``aviso_default`` connection on the test's backend."""
    monkeypatch.setenv("AIRFLOW_CONN_AVISO_DEFAULT", on_backend.connection_json())
    return "aviso_default"
