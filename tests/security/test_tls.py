"""TLS with client certificates: notify, wait and listen over https with the test CA and a client
certificate; a missing client certificate or an untrusted CA fails with a clear, one-line error.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Any

import pytest
from security_helpers import WAIT_SECONDS, Pki, PrivateEtcd, as_json, mars, mars_key

from aviso_workflows import Store
from aviso_workflows.config import StoreConfig
from aviso_workflows.errors import StoreUnavailable, ValidationError
from aviso_workflows.listen import Position

CLI_SECONDS = 120.0


def test_notify_wait_and_listen_over_tls(secure_etcd: PrivateEtcd, unique_date: str) -> None:
    store = Store(config=secure_etcd.config())
    assert store.config.endpoints[0].startswith("https://127.0.0.1:")
    now = Position(store.current_revision())
    store.notify("mars", mars(unique_date, step="0/6"), location="https://data.example/fc.grib")
    found = store.wait("mars", mars(unique_date, step="0/6"), timeout=WAIT_SECONDS)
    assert [n.key for n in found] == [mars_key(unique_date, 0), mars_key(unique_date, 6)]
    stop = threading.Event()
    stream = store.listen(store.request("mars", {"class": "od", "date": unique_date, "stream": "oper"}),
                          after=now, stop=stop)
    try:
        heard = [next(stream) for _ in range(2)]
    finally:
        stop.set()
        stream.close()
    assert [(n.key, n.location) for n in heard] == [(mars_key(unique_date, s), "https://data.example/fc.grib")
                                                    for s in (0, 6)]


def test_a_waiter_over_tls_is_released_by_a_later_post(secure_etcd: PrivateEtcd, unique_date: str) -> None:
    """The first key is read, the second comes through the watch stream over TLS."""
    store = Store(config=secure_etcd.config())
    store.notify("mars", mars(unique_date, step=12))
    first_read = threading.Event()
    outcome: dict[str, Any] = {}

    def waiting() -> None:
        outcome["found"] = store.wait("mars", mars(unique_date, step="12/18"), timeout=WAIT_SECONDS,
                                      on_progress=lambda *_: first_read.set())

    thread = threading.Thread(target=waiting, daemon=True)
    thread.start()
    assert first_read.wait(WAIT_SECONDS)
    Store(config=secure_etcd.config()).notify("mars", mars(unique_date, step=18))
    thread.join(WAIT_SECONDS)
    assert not thread.is_alive()
    assert [n.key for n in outcome["found"]] == [mars_key(unique_date, 12), mars_key(unique_date, 18)]


def test_without_a_client_certificate(secure_etcd: PrivateEtcd, pki: Pki, unique_date: str) -> None:
    store = Store(config=StoreConfig(endpoints=(secure_etcd.client_url,), ca_cert=str(pki.ca)))
    with pytest.raises(StoreUnavailable) as refused:
        store.wait("mars", mars(unique_date), timeout=5)
    message = str(refused.value)
    assert secure_etcd.client_url in message and "TLS handshake failed" in message and "client_cert" in message
    assert "\n" not in message


@pytest.mark.parametrize("trusted", ["other CA", "system CAs"])
def test_a_server_certificate_from_an_untrusted_ca(secure_etcd: PrivateEtcd, pki: Pki, unique_date: str,
                                                   trusted: str) -> None:
    ca = {"other CA": {"ca_cert": str(pki.other_ca)}, "system CAs": {}}[trusted]
    store = Store(config=StoreConfig(endpoints=(secure_etcd.client_url,), client_cert=str(pki.client_cert),
                                     client_key=str(pki.client_key), **ca))
    with pytest.raises(StoreUnavailable) as refused:
        store.notify("mars", mars(unique_date))
    message = str(refused.value)
    assert secure_etcd.client_url in message and "certificate verify failed" in message and "ca_cert" in message


def test_the_ca_file_wins_over_the_environment(secure_etcd: PrivateEtcd, pki: Pki,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """requests lets REQUESTS_CA_BUNDLE replace a session's CA file; the configured CA must still be used."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki.other_ca))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(pki.other_ca))
    assert Store(config=secure_etcd.config()).current_revision() > 0


@pytest.mark.parametrize("setting", ["ca_cert", "client_cert", "client_key"])
def test_a_missing_certificate_file_is_named(pki: Pki, tmp_path: os.PathLike[str], setting: str) -> None:
    files = {"ca_cert": str(pki.ca), "client_cert": str(pki.client_cert), "client_key": str(pki.client_key)}
    files[setting] = f"{tmp_path}/missing.pem"
    with pytest.raises(ValidationError) as bad:
        StoreConfig(endpoints=("https://127.0.0.1:2379",), **files)
    assert bad.value.field == setting and "missing.pem" in str(bad.value)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aviso_workflows.cli", *args], capture_output=True, text=True,
                          timeout=CLI_SECONDS, env=dict(os.environ))


def test_cli_over_tls(secure_etcd: PrivateEtcd, pki: Pki, unique_date: str) -> None:
    pairs = f"event=mars,class=od,expver=1,domain=g,date={unique_date},time=0,stream=oper,step=0"
    tls = ["--endpoint", secure_etcd.client_url, "--ca-cert", str(pki.ca)]
    client = ["--client-cert", str(pki.client_cert), "--client-key", str(pki.client_key)]
    posted = run_cli("notify", pairs, *tls, *client)
    assert posted.returncode == 0, posted.stderr
    waited = run_cli("wait", pairs, *tls, *client, "--timeout", "60", "--json")
    assert waited.returncode == 0, waited.stderr
    assert mars_key(unique_date) in waited.stdout
    refused = run_cli("wait", pairs, *tls, "--timeout", "5")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert "TLS handshake failed" in refused.stderr and secure_etcd.client_url in refused.stderr


# -- Airflow -----------------------------------------------------------------------------------------
def test_airflow_connection_waits_over_tls(secure_etcd: PrivateEtcd, pki: Pki, unique_date: str,
                                           monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]) -> None:
    """An ``aviso`` connection with ``use_tls`` and the certificate files in its extras."""
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    from airflow.sdk import Connection

    from aviso_workflows.airflow.hooks import config_from_connection

    port = int(secure_etcd.client_url.rsplit(":", 1)[1])
    extra = {"use_tls": True, "ca_cert": str(pki.ca), "client_cert": str(pki.client_cert),
             "client_key": str(pki.client_key)}
    conn = Connection(conn_id="aviso_tls", conn_type="aviso", host="127.0.0.1", port=port, extra=as_json(extra))
    config = config_from_connection(conn)
    assert config.endpoints == (secure_etcd.client_url,)
    store = Store(config=config)
    Store(config=secure_etcd.config()).notify("mars", mars(unique_date, step=24))
    found = store.wait("mars", mars(unique_date, step=24), timeout=WAIT_SECONDS)
    assert [n.key for n in found] == [mars_key(unique_date, 24)]
