"""Fixtures of the fault tests: a 3-member etcd cluster on loopback, stopped by pid at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import ETCD, Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A fresh 3-member etcd 3.4 cluster (own ports and data directories), every member stopped by pid after."""
    if not ETCD.exists():
        pytest.skip(f"{ETCD} is missing: scripts/setup.sh installs Debian's etcd-server as root")
    members = Cluster(tmp_path / "cluster")
    try:
        members.start()
        yield members
    finally:
        members.close()


#: Fault suites whose ``store`` tests run over both of etcd's transports: what a lost answer, a repost or a
#: compaction does to a notify or a watch depends on the client that met it (the others use the default, gRPC).
BOTH_TRANSPORTS = {"test_notify_retry.py", "test_repeats.py", "test_compaction.py"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The ``store`` tests of BOTH_TRANSPORTS run once over the HTTP gateway and once over gRPC (every store a
    test opens follows, through AVISO_WORKFLOWS_TRANSPORT, which the ``store`` fixture sets). Tests that lose
    answers through the slow proxy are left out: it is an HTTP proxy, which only the gateway (or ``auto``,
    falling back to it) can talk to."""
    if "slow_proxy" in metafunc.fixturenames:
        return
    if "store" in metafunc.fixturenames and Path(str(metafunc.module.__file__)).name in BOTH_TRANSPORTS:
        metafunc.parametrize("etcd_transport", ["gateway", "grpc"], indirect=True)
