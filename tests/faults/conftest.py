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
