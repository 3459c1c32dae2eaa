"""Secrets are never shown: not in reprs, not in error messages, not in any log record, not on the CLI's stderr."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from security_helpers import READER, SECRETS, AuthProxy, Pki, PrivateEtcd, as_json, mars

from aviso_workflows import Store
from aviso_workflows.config import StoreConfig
from aviso_workflows.errors import AvisoWorkflowsError

TOKEN = "tok-secret-77c2e9a1"
KEY = "key-secret-4f0d8b36"
PASSWORD = "pw-secret-9a1c5e02"
ALL_SECRETS = (TOKEN, KEY, PASSWORD, *SECRETS)
CLI_SECONDS = 120.0


def assert_hidden(text: str) -> None:
    leaked = [secret for secret in ALL_SECRETS if secret in text]
    assert not leaked, f"secrets shown: {leaked} in {text!r}"


def test_store_config_repr(pki: Pki) -> None:
    configs = [
        StoreConfig(username="ops", password=PASSWORD, headers={"X-Api-Key": KEY}),
        StoreConfig(token=TOKEN, auth_type="openid", ca_cert=str(pki.ca)),
        StoreConfig(email="ops@example.int", key=KEY, client_cert=str(pki.client_cert), client_key=str(pki.client_key)),
    ]
    for config in configs:
        for text in (repr(config), str(config), repr(Store(config=config))):
            assert_hidden(text)
            assert "***" in text
    assert "ops@example.int" in repr(configs[2]) and "openid" in repr(configs[1]), "what is not secret is shown"


def test_airflow_hook_and_operator_reprs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    connections = {
        "AIRFLOW_CONN_AVISO_ETCD": {"conn_type": "aviso", "host": "127.0.0.1", "port": 2379, "login": "ops",
                                    "password": PASSWORD},
        "AIRFLOW_CONN_AVISO_TOKEN": {"conn_type": "aviso", "host": "127.0.0.1", "port": 2379, "password": TOKEN,
                                     "extra": {"auth_type": "bearer", "headers": as_json({"X-Api-Key": KEY})}},
    }
    for name, connection in connections.items():
        monkeypatch.setenv(name, as_json(connection))
    from aviso_workflows.airflow.hooks import AvisoHook
    from aviso_workflows.airflow.operators import AvisoNotifyOperator
    from aviso_workflows.airflow.sensors import AvisoSensor

    for conn_id in ("aviso_etcd", "aviso_token"):
        hook = AvisoHook(conn_id)
        store = hook.get_conn()
        assert store.config.password == PASSWORD or store.config.token == TOKEN
        sensor = AvisoSensor(task_id=f"wait_{conn_id}", event="mars", request=mars("20260101"), aviso_conn_id=conn_id)
        notify = AvisoNotifyOperator(task_id=f"notify_{conn_id}", event="mars", request=mars("20260101"),
                                     aviso_conn_id=conn_id)
        for text in (repr(hook), str(hook), repr(store), repr(store.config), repr(sensor), repr(notify)):
            assert_hidden(text)


# -- log records across failures -------------------------------------------------------------------
@pytest.fixture
def every_record(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], str]]:
    """All log records of every logger at DEBUG, formatted with their exceptions."""
    caplog.set_level(logging.DEBUG)
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    yield lambda: "\n".join(formatter.format(record) for record in caplog.records)


def failing(action: Callable[[], Any]) -> str:
    """Run an action that must fail with one of our errors; its message."""
    with pytest.raises(AvisoWorkflowsError) as failed:
        action()
    return str(failed.value)


def test_failed_sign_in_is_not_logged_with_the_password(auth_etcd: PrivateEtcd, unique_date: str,
                                                        every_record: Callable[[], str]) -> None:
    store = Store(config=auth_etcd.config(("reader", PASSWORD)))
    messages = [failing(lambda: store.notify("mars", mars(unique_date))),
                failing(lambda: store.wait("mars", mars(unique_date), timeout=5))]
    assert every_record(), "the test saw the logging of the requests"
    assert_hidden("\n".join(messages) + every_record())


def test_refused_write_is_not_logged_with_the_password(auth_etcd: PrivateEtcd, unique_date: str,
                                                       every_record: Callable[[], str]) -> None:
    store = Store(config=auth_etcd.config(READER))
    message = failing(lambda: store.notify("mars", mars(unique_date)))
    assert "permission denied" in message
    assert_hidden(message + every_record())


def test_failing_tls_handshake_is_not_logged_with_the_token(secure_etcd: PrivateEtcd, pki: Pki, unique_date: str,
                                                            every_record: Callable[[], str]) -> None:
    store = Store(config=StoreConfig(endpoints=(secure_etcd.client_url,), ca_cert=str(pki.ca), token=TOKEN))
    message = failing(lambda: store.wait("mars", mars(unique_date), timeout=5))
    assert "TLS handshake failed" in message
    assert_hidden(message + every_record())


def test_proxy_refusals_are_not_logged_with_the_credentials(etcd_url: str, unique_date: str,
                                                            every_record: Callable[[], str]) -> None:
    with AuthProxy(etcd_url, tokens=["tok-known"]) as proxy:
        for credentials in ({"token": TOKEN}, {"email": "ops@example.int", "key": KEY}):
            store = Store(config=StoreConfig(endpoints=(proxy.url,), **credentials))
            assert "401" in failing(lambda store=store: store.wait("mars", mars(unique_date), timeout=5))
        known = Store(config=StoreConfig(endpoints=(proxy.url,), token="tok-known"))
        assert "403" in failing(lambda: known.notify("mars", mars(unique_date)))
    assert_hidden(every_record())


# -- the command line ------------------------------------------------------------------------------
def run_cli(*args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aviso_workflows.cli", *args], capture_output=True, text=True,
                          timeout=CLI_SECONDS, env=dict(os.environ, **variables))


def test_cli_stderr_never_shows_secrets(auth_etcd: PrivateEtcd, secure_etcd: PrivateEtcd, etcd_url: str, pki: Pki,
                                        unique_date: str) -> None:
    pairs = f"event=mars,class=od,expver=1,domain=g,date={unique_date},time=0,stream=oper,step=0"
    with AuthProxy(etcd_url, tokens=["tok-known"]) as proxy:
        runs = [
            run_cli("wait", pairs, "-v", "--timeout", "5", "--endpoint", auth_etcd.client_url,
                    AVISO_WORKFLOWS_USERNAME="reader", AVISO_WORKFLOWS_PASSWORD=PASSWORD),
            run_cli("notify", pairs, "-v", "--endpoint", auth_etcd.client_url,
                    AVISO_WORKFLOWS_USERNAME=READER[0], AVISO_WORKFLOWS_PASSWORD=READER[1]),
            run_cli("wait", pairs, "-v", "--timeout", "5", "--endpoint", secure_etcd.client_url,
                    "--ca-cert", str(pki.ca), AVISO_WORKFLOWS_TOKEN=TOKEN),
            run_cli("wait", pairs, "-v", "--timeout", "5", "--endpoint", proxy.url, AVISO_WORKFLOWS_EMAIL="a@b.int",
                    AVISO_WORKFLOWS_KEY=KEY),
            run_cli("notify", pairs, "-v", "--endpoint", proxy.url, "--token", TOKEN),
        ]
    for run in runs:
        assert run.returncode == 2, run.stderr
        assert "Traceback" not in run.stderr
        assert_hidden(run.stdout + run.stderr)
