"""Users, roles, tokens and TLS over etcd's gRPC API (``transport: grpc``), as the other files here check
them over the HTTP gateway: the same errors, the same one-line reasons, nothing written when refused.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from security_helpers import READER, WAIT_SECONDS, WRITER, Pki, PrivateEtcd, mars, mars_key

from aviso_workflows import Store
from aviso_workflows.errors import PermissionDenied, StoreUnavailable, TlsRefused
from aviso_workflows.etcd_grpc import GrpcGateway


def grpc_store(etcd: PrivateEtcd, user: tuple[str, str] | None = None, **settings: Any) -> Store:
    store = Store(config=etcd.config(user, transport="grpc", **settings))
    assert isinstance(store.gateway, GrpcGateway)
    return store


def test_a_post_by_the_writer_releases_a_waiting_reader_over_grpc(auth_etcd: PrivateEtcd, unique_date: str) -> None:
    """The reader's token rides on its watch stream: the writer's post reaches it through the watch."""
    reader, writer = grpc_store(auth_etcd, READER), grpc_store(auth_etcd, WRITER)
    first_read = threading.Event()
    outcome: dict[str, Any] = {}

    def waiting() -> None:
        outcome["found"] = reader.wait("mars", mars(unique_date, step="0/6"), timeout=WAIT_SECONDS,
                                       on_progress=lambda *_: first_read.set())

    writer.notify("mars", mars(unique_date, step=0))
    thread = threading.Thread(target=waiting, daemon=True)
    thread.start()
    assert first_read.wait(WAIT_SECONDS)
    writer.notify("mars", mars(unique_date, step=6))
    thread.join(WAIT_SECONDS)
    assert [n.key for n in outcome["found"]] == [mars_key(unique_date, 0), mars_key(unique_date, 6)]


def test_reader_cannot_notify_over_grpc_and_nothing_is_written(auth_etcd: PrivateEtcd, unique_date: str) -> None:
    with pytest.raises(PermissionDenied, match="permission denied on ") as refused:
        grpc_store(auth_etcd, READER).notify("mars", mars(unique_date))
    assert READER[1] not in str(refused.value)
    assert grpc_store(auth_etcd, READER).gateway.get(mars_key(unique_date))[1] is None


def test_wrong_password_over_grpc_names_the_user_not_the_password(auth_etcd: PrivateEtcd, unique_date: str) -> None:
    with pytest.raises(PermissionDenied, match="refused user 'reader'") as refused:
        grpc_store(auth_etcd, ("reader", "not-the-password-77")).wait("mars", mars(unique_date), timeout=5)
    assert "not-the-password-77" not in str(refused.value)


def test_an_expired_token_is_replaced_once_over_grpc(short_token_etcd: PrivateEtcd, unique_date: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store = grpc_store(short_token_etcd, WRITER)
    sign_ins: list[str] = []
    original = store.gateway._authenticate
    monkeypatch.setattr(store.gateway, "_authenticate",
                        lambda endpoint: sign_ins.append(endpoint) or original(endpoint))
    store.notify("mars", mars(unique_date, step=0))
    assert len(sign_ins) == 1
    threading.Event().wait(6.0)  # etcd drops a token 2 s after its last use (checked every second)
    store.notify("mars", mars(unique_date, step=6))
    assert len(sign_ins) == 2, "the expired token was refused and replaced by one new sign-in"
    assert store.gateway.get(mars_key(unique_date, 6))[1] is not None


def test_notify_and_wait_over_grpc_with_tls(secure_etcd: PrivateEtcd, unique_date: str) -> None:
    store = grpc_store(secure_etcd)
    assert store.config.endpoints[0].startswith("https://")
    store.notify("mars", mars(unique_date, step="0/6"))
    found = store.wait("mars", mars(unique_date, step="0/6"), timeout=WAIT_SECONDS)
    assert [n.key for n in found] == [mars_key(unique_date, 0), mars_key(unique_date, 6)]


def test_missing_client_certificate_over_grpc_is_one_clear_error(secure_etcd: PrivateEtcd, pki: Pki,
                                                                 unique_date: str) -> None:
    store = grpc_store(secure_etcd, client_cert=None, client_key=None, timeout=5)
    with pytest.raises(StoreUnavailable, match="TLS handshake failed") as failed:
        store.notify("mars", mars(unique_date))
    assert "\n" not in str(failed.value)


def test_untrusted_ca_over_grpc_is_refused_naming_ca_cert(secure_etcd: PrivateEtcd, pki: Pki,
                                                          unique_date: str) -> None:
    store = grpc_store(secure_etcd, ca_cert=str(pki.other_ca), timeout=5)
    with pytest.raises(TlsRefused, match="ca_cert"):
        store.notify("mars", mars(unique_date))
