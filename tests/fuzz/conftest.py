"""A dedicated etcd for the fuzz tests, so the revision before and after an input is theirs alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_helpers import running_etcd

from aviso_workflows import Store, server


@pytest.fixture(scope="package")
def fuzz_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[server.ServerInfo]:
    """An embedded etcd that only the fuzz tests write to; stopped by its pid at the end."""
    with running_etcd(tmp_path_factory.mktemp("fuzz-etcd")) as info:
        yield info


@pytest.fixture(scope="package")
def fuzz_env(fuzz_etcd: server.ServerInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The environment of every command the fuzz tests run: the dedicated etcd, no user config, private state."""
    home = tmp_path_factory.mktemp("fuzz-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVISO_WORKFLOWS_ENDPOINTS", fuzz_etcd.client_url)
        patch.setenv("AVISO_WORKFLOWS_CONFIG", str(home / "no-config.yaml"))
        patch.setenv("AVISO_WORKFLOWS_STATE_DIR", str(home / "state"))
        yield home


@pytest.fixture(scope="module", autouse=True)
def no_waiter_registration() -> Iterator[None]:
    """These tests count writes by the store's revision; an accepted wait would add its waiter entry
    (tests/waiters shows a refused one writes none), so registering is off here, module by module: a
    directory-wide setting would outlive these tests and reach later ones."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVISO_WORKFLOWS_WAITER_TTL", "0")
        yield


@pytest.fixture(scope="package")
def fuzz_store(fuzz_env: Path, fuzz_etcd: server.ServerInfo) -> Store:
    """A store on the dedicated etcd."""
    return Store([fuzz_etcd.client_url])
