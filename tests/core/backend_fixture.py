"""The backend fixture: a store on etcd, then on the test double of aviso-server 0.7.1.

Behaviour tests take ``any_store`` to run once per backend. The double is
tests/conformance/aviso_server_double.py, written from ecmwf/aviso-server 0.7.1 (commit 8b99d73):
``src/handlers`` for ``/api/v1/notification``, ``/api/v1/watch`` and ``/api/v1/replay``. A test module
imports both fixtures:
``from backend_fixture import any_store_fixture, aviso_double_fixture  # noqa: F401``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aviso_workflows import Store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "conformance"))
from aviso_server_double import AvisoServerDouble  # noqa: E402

#: etcd over its default transport (gRPC), etcd over its HTTP gateway, and the aviso-server double.
BACKENDS = ["etcd", "etcd-gateway", "aviso-server"]


@pytest.fixture(scope="module", name="aviso_double")
def aviso_double_fixture() -> Iterator[AvisoServerDouble]:
    """One double per test module (heartbeat 1 s); tests keep apart by their own dates."""
    with AvisoServerDouble(heartbeat=1.0) as server:
        yield server


@pytest.fixture(params=BACKENDS, name="any_store")
def any_store_fixture(request: pytest.FixtureRequest, etcd_url: str, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Store:
    """A store on the session's etcd, then on the module's aviso-server double; cursors and config in a temp
    dir."""
    monkeypatch.setenv("AVISO_WORKFLOWS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AVISO_WORKFLOWS_CONFIG", str(tmp_path / "no-config.yaml"))
    if request.param == "etcd":
        return Store([etcd_url])
    if request.param == "etcd-gateway":
        return Store([etcd_url], transport="gateway")
    return Store([request.getfixturevalue("aviso_double").endpoint])
