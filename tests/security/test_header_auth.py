"""Header authentication through an Aviso-style proxy that forwards only ``POST /v3/kv/range``:
waits and listens poll instead of watching, notifies are refused clearly, bad credentials get a 401.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from security_helpers import WAIT_SECONDS, AuthProxy, as_json, mars, mars_key
from threads import joined, run_in_thread

from aviso_workflows import Store
from aviso_workflows.config import StoreConfig, resolve_config
from aviso_workflows.errors import NotForwarded, PermissionDenied
from aviso_workflows.listen import Position

TOKEN = "tok-3b9f6a20c1d8"
EMAIL, KEY = "ops@example.int", "key-8d41e07c"
CLI_SECONDS = 120.0
POLL = 0.2  # seconds between polls in these tests


@pytest.fixture
def proxy(etcd_url: str) -> Iterator[AuthProxy]:
    """A proxy in front of the session's etcd accepting TOKEN and EMAIL:KEY."""
    with AuthProxy(etcd_url, tokens=[TOKEN], email_keys=[(EMAIL, KEY)]) as running:
        yield running


def through(proxy: AuthProxy, **credentials: Any) -> Store:
    return Store(config=StoreConfig(endpoints=(proxy.url,), poll_interval=POLL, **credentials))




@pytest.mark.parametrize("credentials", [{"token": TOKEN}, {"email": EMAIL, "key": KEY}], ids=["bearer", "emailkey"])
def test_wait_through_the_proxy(proxy: AuthProxy, store: Store, unique_date: str, credentials: dict[str, str]) -> None:
    """Step 0 was posted before (found by a read), step 6 after the wait began (found by polling)."""
    store.notify("mars", mars(unique_date, step=0))
    reader = through(proxy, **credentials)
    first_read = threading.Event()
    thread, outcome = run_in_thread(lambda: reader.wait("mars", mars(unique_date, step="0/6"), timeout=WAIT_SECONDS,
                                                    on_progress=lambda *_: first_read.set()))
    assert first_read.wait(WAIT_SECONDS)
    store.notify("mars", mars(unique_date, step=6))
    released = joined(thread, outcome, WAIT_SECONDS)
    assert [n.key for n in released] == [mars_key(unique_date, 0), mars_key(unique_date, 6)]
    assert "/v3/watch" in proxy.paths(403), "the watch was tried first"
    assert not [p for p in proxy.paths(200) if p != "/v3/kv/range"]


def test_a_wait_over_several_dates_reads_range_by_range(proxy: AuthProxy, store: Store, unique_date: str) -> None:
    """A request over several prefixes is read in one transaction directly, one range each through the proxy."""
    other_date = str(int(unique_date) + 50_000)  # another year: no other test uses it
    request = mars(f"{unique_date}/{other_date}", step="0/6")  # one prefix per date
    store.notify("mars", request)
    found = through(proxy, token=TOKEN).wait("mars", request, timeout=WAIT_SECONDS)
    assert sorted(n.key for n in found) == sorted(mars_key(d, s) for d in (unique_date, other_date) for s in (0, 6))
    assert "/v3/kv/txn" in proxy.paths(403)


def test_listen_through_the_proxy_delivers_as_the_watch_does(proxy: AuthProxy, store: Store, unique_date: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Same notifications, same order (revision, then key) as a direct listen; the switch is logged once."""
    caplog.set_level(logging.INFO, logger="aviso_workflows")
    request = store.request("mars", {"class": "od", "date": unique_date, "stream": "oper"})
    now = Position(store.current_revision())
    stops = threading.Event(), threading.Event()
    direct = store.listen(request, after=now, stop=stops[0])
    proxied = through(proxy, email=EMAIL, key=KEY).listen(request, after=now, stop=stops[1])
    expected = 5
    heard = [run_in_thread(lambda stream=stream: [next(stream) for _ in range(expected)])
             for stream in (direct, proxied)]
    store.notify("mars", mars(unique_date, step="12/0/6"))  # one transaction: steps delivered by number
    store.notify("mars", mars(unique_date, step=3))
    store.notify("mars", mars(unique_date, step=1))
    try:
        results = [joined(thread, outcome, WAIT_SECONDS) for thread, outcome in heard]
    finally:
        for stop in stops:
            stop.set()
    direct_keys, proxied_keys = ([(n.revision, n.key) for n in result] for result in results)
    assert proxied_keys == direct_keys
    assert [key for _, key in proxied_keys] == [mars_key(unique_date, s) for s in ("0", "6", "12", "3", "1")]
    switches = [r for r in caplog.records if "reading it every" in r.getMessage() and "/ec/mars/" in r.getMessage()]
    assert len(switches) == 1 and switches[0].levelno == logging.INFO


def test_notify_through_the_read_only_proxy(proxy: AuthProxy, store: Store, unique_date: str) -> None:
    before = store.gateway.range_all("/ec/mars/")
    with pytest.raises(NotForwarded) as refused:
        through(proxy, token=TOKEN).notify("mars", mars(unique_date))
    message = str(refused.value)
    assert "permission denied" in message and "/v3/kv/txn" in message and "403" in message
    assert mars_key(unique_date) in message and TOKEN not in message
    assert store.gateway.range_all("/ec/mars/")[1] == before[1]


@pytest.mark.parametrize("credentials", [{"token": "tok-wrong-5e1f"}, {"email": EMAIL, "key": "key-wrong-07aa"}],
                         ids=["bearer", "emailkey"])
def test_unknown_credentials_get_a_clear_error(proxy: AuthProxy, unique_date: str,
                                               credentials: dict[str, str]) -> None:
    with pytest.raises(PermissionDenied) as refused:
        through(proxy, **credentials).wait("mars", mars(unique_date), timeout=5)
    message = str(refused.value)
    assert "401" in message and proxy.url in message and "refused the credentials" in message
    assert all(secret not in message for secret in ("tok-wrong-5e1f", "key-wrong-07aa"))


def test_the_proxy_sees_the_headers_aviso_sends(proxy: AuthProxy, unique_date: str) -> None:
    through(proxy, token=TOKEN, auth_type="openid").get("mars", mars(unique_date))
    through(proxy, email=EMAIL, key=KEY).get("mars", mars(unique_date))
    assert {s.authorization for s in proxy.seen if s.status == 200} == {"Bearer", "EmailKey"}


# -- settings ------------------------------------------------------------------------------------
def test_token_from_the_environment(proxy: AuthProxy, store: Store, unique_date: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVISO_WORKFLOWS_TOKEN", TOKEN)
    store.notify("mars", mars(unique_date))
    config = resolve_config([proxy.url])
    assert config.auth_headers == {"Authorization": f"Bearer {TOKEN}", "X-Auth-Type": "ecmwf"}
    assert len(Store(config=config).wait("mars", mars(unique_date), timeout=WAIT_SECONDS)) == 1


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aviso_workflows.cli", *args], capture_output=True, text=True,
                          timeout=CLI_SECONDS, env=env)


def test_cli_through_the_proxy(proxy: AuthProxy, store: Store, unique_date: str,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = f"event=mars,class=od,expver=1,domain=g,date={unique_date},time=0,stream=oper,step=0"
    store.notify("mars", mars(unique_date))
    env = dict(os.environ, AVISO_WORKFLOWS_EMAIL=EMAIL, AVISO_WORKFLOWS_KEY=KEY)
    waited = run_cli("wait", pairs, "--endpoint", proxy.url, "--timeout", "60", "--json", env=env)
    assert waited.returncode == 0, waited.stderr
    assert mars_key(unique_date) in waited.stdout
    refused = run_cli("notify", pairs, "--endpoint", proxy.url, "--token", TOKEN, env=dict(os.environ))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert "permission denied" in refused.stderr and TOKEN not in refused.stderr
    bad = run_cli("wait", pairs, "--endpoint", proxy.url, "--timeout", "5", env=dict(os.environ,
                                                                                     AVISO_WORKFLOWS_TOKEN="tok-bad"))
    assert bad.returncode == 2 and "401" in bad.stderr and "tok-bad" not in bad.stderr


@pytest.mark.parametrize(("extra", "login", "headers"), [
    ({"auth_type": "bearer"}, None, {"Authorization": f"Bearer {TOKEN}", "X-Auth-Type": "ecmwf"}),
    ({"auth_type": "openid"}, None, {"Authorization": f"Bearer {TOKEN}", "X-Auth-Type": "openid"}),
    ({"auth_type": "emailkey"}, EMAIL, {"Authorization": f"EmailKey {EMAIL}:{TOKEN}"}),
], ids=["bearer", "openid", "emailkey"])
def test_airflow_connection_header_auth(proxy: AuthProxy, store: Store, unique_date: str, tmp_path: Any,
                                        monkeypatch: pytest.MonkeyPatch, extra: dict[str, str], login: str | None,
                                        headers: dict[str, str]) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    from airflow.sdk import Connection

    from aviso_workflows.airflow.hooks import config_from_connection

    port = int(proxy.url.rsplit(":", 1)[1])
    conn = Connection(conn_id="aviso_proxy", conn_type="aviso", host="127.0.0.1", port=port, login=login,
                      password=TOKEN, extra=as_json(extra))
    config = config_from_connection(conn)
    assert config.auth_headers == headers and config.username is None
    if extra["auth_type"] == "bearer":  # the proxy knows TOKEN as a bearer token
        store.notify("mars", mars(unique_date))
        assert len(Store(config=config).wait("mars", mars(unique_date), timeout=WAIT_SECONDS)) == 1
