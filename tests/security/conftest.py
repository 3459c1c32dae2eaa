"""Fixtures of the security tests: private etcds with users and roles or TLS, certificates, a clean environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from security_helpers import Pki, PrivateEtcd, etcd_with_users, make_pki, tls_etcd

from aviso_workflows.config import CREDENTIAL_VARIABLES
from aviso_workflows.listen import HUB


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials, endpoints or config file from the machine; cursors in a temp dir."""
    for variable in (*CREDENTIAL_VARIABLES.values(), "AVISO_WORKFLOWS_ENDPOINTS"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AVISO_WORKFLOWS_CONFIG", str(tmp_path / "no-config.yaml"))
    monkeypatch.setenv("AVISO_WORKFLOWS_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture(autouse=True)
def no_watch_left() -> Iterator[None]:
    """Every wait and listen of a test releases its shared watches."""
    before = {id(watch) for watch in HUB.watches()}
    yield
    left = [watch.prefix for watch in HUB.watches() if id(watch) not in before]
    assert not left, f"watches left running on {left}"


@pytest.fixture(scope="session")
def auth_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateEtcd]:
    """An etcd with auth on: root, ``reader`` (role ec-reader: read /ec/) and ``writer`` (role
    mars-writer: read and write /ec/mars/)."""
    with etcd_with_users(tmp_path_factory.mktemp("auth-etcd")) as etcd:
        yield etcd


@pytest.fixture(scope="module")
def short_token_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateEtcd]:
    """The same users on an etcd whose tokens expire after 2 s without use (``--auth-token-ttl 2``)."""
    with etcd_with_users(tmp_path_factory.mktemp("short-token-etcd"), "--auth-token-ttl", "2") as etcd:
        yield etcd


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA, etcd's certificate for 127.0.0.1, a client certificate and a foreign CA."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def secure_etcd(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[PrivateEtcd]:
    """An etcd on https://127.0.0.1:P that wants a client certificate signed by the test CA."""
    etcd = tls_etcd(tmp_path_factory.mktemp("tls-etcd"), pki)
    try:
        etcd.start()
        yield etcd
    finally:
        etcd.stop()
