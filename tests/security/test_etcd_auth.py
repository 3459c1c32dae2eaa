"""etcd's own users and roles: a reader waits and listens, a writer posts only where its role allows,
refusals are clear and write nothing, and a token etcd no longer accepts is replaced once.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from security_helpers import (
    READER,
    ROOT,
    WAIT_SECONDS,
    WRITER,
    PrivateEtcd,
    diss,
    mars,
    mars_key,
    wait_until,
)
from threads import joined, run_in_thread

from aviso_workflows import Store
from aviso_workflows.errors import PermissionDenied
from aviso_workflows.listen import HUB, Position

CLI_SECONDS = 120.0


def store_as(etcd: PrivateEtcd, user: tuple[str, str]) -> Store:
    return Store(config=etcd.config(user))


def everything(etcd: PrivateEtcd, prefix: str) -> dict[str, tuple[str, int]]:
    """Keys under ``prefix`` as root sees them (to prove that nothing was written)."""
    return {kv.key: (kv.value, kv.mod_revision) for kv in store_as(etcd, ROOT).gateway.range_all(prefix)[1]}


def watching(config_identity: Any, prefix: str) -> bool:
    """True once a shared watch of that identity follows ``prefix`` with a subscriber."""
    return any(w.prefix == prefix and w.config.identity == config_identity and w.subscriber_count
               for w in HUB.watches())


def open_watch(config_identity: Any, prefix: str) -> bool:
    """True once that shared watch has opened its stream to etcd."""
    return any(w.prefix == prefix and w.config.identity == config_identity and w.connections_opened
               for w in HUB.watches())


def count_sign_ins(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every sign-in of ``store`` (the endpoint each went to), calling etcd as usual."""
    calls: list[str] = []
    original = store.gateway._authenticate

    def counting(endpoint: str) -> str:
        calls.append(endpoint)
        return original(endpoint)

    monkeypatch.setattr(store.gateway, "_authenticate", counting)
    return calls


# -- reader ----------------------------------------------------------------------------------------
def test_reader_finds_a_key_posted_before_it_waits(auth_etcd: PrivateEtcd, unique_date: str) -> None:
    store_as(auth_etcd, WRITER).notify("mars", mars(unique_date), location="file:///data/a.grib")
    found = store_as(auth_etcd, READER).wait("mars", mars(unique_date), timeout=WAIT_SECONDS)
    assert [(n.key, n.location) for n in found] == [(mars_key(unique_date), "file:///data/a.grib")]


def test_a_post_by_the_writer_releases_a_waiting_reader(auth_etcd: PrivateEtcd, unique_date: str) -> None:
    reader = store_as(auth_etcd, READER)
    thread, outcome = run_in_thread(lambda: reader.wait("mars", mars(unique_date, step=6), timeout=WAIT_SECONDS))
    wait_until("the reader's watch", lambda: watching(reader.config.identity, "/ec/mars/"))
    store_as(auth_etcd, WRITER).notify("mars", mars(unique_date, step=6))
    assert [n.key for n in joined(thread, outcome, WAIT_SECONDS)] == [mars_key(unique_date, 6)]


def test_reader_listens_from_now(auth_etcd: PrivateEtcd, unique_date: str) -> None:
    """Listening from "now" needs the store's revision, which a user limited to /ec/ may still ask."""
    reader, writer = store_as(auth_etcd, READER), store_as(auth_etcd, WRITER)
    writer.notify("mars", mars(unique_date, step=0))  # before "now": not delivered
    now = Position(reader.current_revision())
    stop = threading.Event()
    request = reader.request("mars", {"class": "od", "date": unique_date, "stream": "oper"})
    stream = reader.listen(request, stop=stop, after=now)
    thread, outcome = run_in_thread(lambda: [next(stream).key, next(stream).key])
    writer.notify("mars", mars(unique_date, step=12))
    writer.notify("mars", mars(unique_date, step=18))
    try:
        assert joined(thread, outcome, WAIT_SECONDS) == [mars_key(unique_date, 12), mars_key(unique_date, 18)]
    finally:
        stop.set()
        thread.join(WAIT_SECONDS)
        stream.close()


def test_reader_cannot_notify_and_nothing_is_written(auth_etcd: PrivateEtcd, unique_date: str) -> None:
    before = everything(auth_etcd, "/ec/mars/")
    reader = store_as(auth_etcd, READER)
    with pytest.raises(PermissionDenied) as refused:
        reader.notify("mars", mars(unique_date, step="0/6/12"))
    message = str(refused.value)
    assert "permission denied" in message
    assert mars_key(unique_date, 0) in message and auth_etcd.client_url in message and "'reader'" in message
    assert READER[1] not in message
    assert everything(auth_etcd, "/ec/mars/") == before


def test_reader_waiting_outside_its_prefix_is_told_where(auth_etcd: PrivateEtcd, unique_date: str,
                                                          tmp_path: Path) -> None:
    schema = tmp_path / "events.yaml"
    schema.write_text("events:\n  flight:\n    base: /private/flight\n    stem: '{date}/{number}'\n"
                      "    fields:\n      date: {type: date}\n      number: {type: int}\n")
    reader = Store(config=auth_etcd.config(READER, schema_files=(str(schema),)))
    with pytest.raises(PermissionDenied) as refused:
        reader.wait("flight", {"date": unique_date, "number": 7}, timeout=WAIT_SECONDS)
    message = str(refused.value)
    assert "permission denied" in message and "/private/flight/" in message and auth_etcd.client_url in message


# -- writer ----------------------------------------------------------------------------------------
def test_writer_notifies_mars_with_its_status_key(auth_etcd: PrivateEtcd, unique_date: str) -> None:
    writer = store_as(auth_etcd, WRITER)
    result = writer.notify("mars", mars(unique_date, step="0/to/12/by/6"))
    assert result.keys == [mars_key(unique_date, s) for s in (0, 6, 12)]
    written = everything(auth_etcd, "/ec/mars/")
    assert all(key in written for key in result.keys)
    assert written["/ec/mars/"][1] == result.revisions[-1], "the status key is written in the same transaction"
    assert '"etcd_user": "writer"' in written["/ec/mars/"][0]


def test_writer_cannot_notify_dissemination(auth_etcd: PrivateEtcd, unique_date: str) -> None:
    """Dissemination keys live under /ec/diss/ and /ec/admin/, outside the writer's /ec/mars/."""
    before = {p: everything(auth_etcd, p) for p in ("/ec/diss/", "/ec/admin/")}
    with pytest.raises(PermissionDenied) as refused:
        store_as(auth_etcd, WRITER).notify("dissemination", diss(unique_date, "SEC"))
    assert "permission denied" in str(refused.value) and f"/ec/diss/SEC/date={unique_date}" in str(refused.value)
    assert {p: everything(auth_etcd, p) for p in ("/ec/diss/", "/ec/admin/")} == before


def test_a_dissemination_writer_needs_its_destination_and_the_admin_keys(auth_etcd: PrivateEtcd,
                                                                         unique_date: str) -> None:
    """The refusal above is the role's doing: readwrite on /ec/diss/SEC/ and /ec/admin/ writes all three keys."""
    role, user = f"diss-writer-{unique_date}", (f"diss-{unique_date}", "diss-pw-2b6f")
    auth_etcd.etcdctl("role", "add", role)
    for prefix in ("/ec/diss/SEC/", "/ec/admin/"):
        auth_etcd.etcdctl("role", "grant-permission", role, "readwrite", prefix, "--prefix=true")
    auth_etcd.add_user(*user, role)
    result = store_as(auth_etcd, user).notify("dissemination", diss(unique_date, "SEC"))
    assert f"/ec/admin/{unique_date}/SEC" in everything(auth_etcd, "/ec/admin/")
    assert everything(auth_etcd, "/ec/diss/SEC/")["/ec/diss/SEC/"][1] == result.revisions[-1]
    found = store_as(auth_etcd, READER).wait("dissemination", diss(unique_date, "SEC"), timeout=WAIT_SECONDS)
    assert [n.key for n in found] == result.keys


# -- wrong credentials -----------------------------------------------------------------------------
def test_wrong_password_names_the_user_not_the_password(auth_etcd: PrivateEtcd, unique_date: str) -> None:
    store = store_as(auth_etcd, ("reader", "not-the-password-4471"))
    for attempt in (store.current_revision, lambda: store.wait("mars", mars(unique_date), timeout=5)):
        with pytest.raises(PermissionDenied) as refused:
            attempt()
        message = str(refused.value)
        assert "'reader'" in message and auth_etcd.client_url in message and "invalid user ID or password" in message
        assert "not-the-password-4471" not in message


def test_no_credentials_on_an_etcd_with_auth(auth_etcd: PrivateEtcd, unique_date: str) -> None:
    with pytest.raises(PermissionDenied) as refused:
        Store(config=auth_etcd.config()).notify("mars", mars(unique_date))
    assert "user name is empty" in str(refused.value)


# -- the command line ------------------------------------------------------------------------------
def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aviso_workflows.cli", *args], capture_output=True, text=True,
                          timeout=CLI_SECONDS, env=env)


def cli_env(monkeypatch: pytest.MonkeyPatch, **variables: str) -> dict[str, str]:
    import os

    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return dict(os.environ)


def test_cli_notify_refused_is_one_line(auth_etcd: PrivateEtcd, unique_date: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    env = cli_env(monkeypatch, AVISO_WORKFLOWS_USERNAME=READER[0], AVISO_WORKFLOWS_PASSWORD=READER[1])
    done = run_cli("notify", f"event=mars,class=od,expver=1,domain=g,date={unique_date},time=0,stream=oper,step=0",
                   "--endpoint", auth_etcd.client_url, env=env)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "permission denied" in done.stderr and mars_key(unique_date) in done.stderr
    assert READER[1] not in done.stderr + done.stdout


def test_cli_wrong_password_is_one_line(auth_etcd: PrivateEtcd, unique_date: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    done = run_cli("wait", f"event=mars,class=od,expver=1,domain=g,date={unique_date},time=0,stream=oper,step=0",
                   "--endpoint", auth_etcd.client_url, "--username", "writer", "--password", "wrong-pw-0917",
                   "--timeout", "5", env=cli_env(monkeypatch))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "refused user 'writer'" in done.stderr and "wrong-pw-0917" not in done.stderr


def test_cli_notify_and_wait_with_credentials(auth_etcd: PrivateEtcd, unique_date: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = f"event=mars,class=od,expver=1,domain=g,date={unique_date},time=0,stream=oper,step=3"
    env = cli_env(monkeypatch, AVISO_WORKFLOWS_PASSWORD=WRITER[1])  # the user from the command line
    posted = run_cli("notify", pairs, "--endpoint", auth_etcd.client_url, "--username", "writer", env=env)
    assert posted.returncode == 0, posted.stderr
    env = cli_env(monkeypatch, AVISO_WORKFLOWS_USERNAME=READER[0], AVISO_WORKFLOWS_PASSWORD=READER[1])
    waited = run_cli("wait", pairs, "--endpoint", auth_etcd.client_url, "--timeout", "60", "--json", env=env)
    assert waited.returncode == 0, waited.stderr
    assert mars_key(unique_date, 3) in waited.stdout


# -- tokens etcd no longer accepts -----------------------------------------------------------------
def test_an_expired_token_is_replaced_once(short_token_etcd: PrivateEtcd, unique_date: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    writer = store_as(short_token_etcd, WRITER)
    sign_ins = count_sign_ins(writer, monkeypatch)
    writer.notify("mars", mars(unique_date, step=0))
    assert len(sign_ins) == 1
    threading.Event().wait(6.0)  # etcd drops a token 2 s after its last use (checked every second)
    writer.notify("mars", mars(unique_date, step=6))
    assert len(sign_ins) == 2, "the expired token was refused and replaced by one new sign-in"
    found = store_as(short_token_etcd, READER).wait("mars", mars(unique_date, step="0/6"), timeout=WAIT_SECONDS)
    assert [n.key for n in found] == [mars_key(unique_date, 0), mars_key(unique_date, 6)]


def test_a_changed_password_fails_after_one_sign_in(short_token_etcd: PrivateEtcd, unique_date: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Changing a password revokes the user's tokens: one new sign-in is tried, then a clear error."""
    short_token_etcd.add_user("rotating", "first-pw-6620", "mars-writer")
    store = store_as(short_token_etcd, ("rotating", "first-pw-6620"))
    sign_ins = count_sign_ins(store, monkeypatch)
    store.notify("mars", mars(unique_date))
    short_token_etcd.etcdctl("user", "passwd", "rotating", "--interactive=false", stdin="second-pw-1184\n")
    with pytest.raises(PermissionDenied) as refused:
        store.notify("mars", mars(unique_date, step=6))
    assert len(sign_ins) == 2
    assert "refused user 'rotating'" in str(refused.value) and "first-pw-6620" not in str(refused.value)


def test_a_change_of_roles_does_not_lock_a_writer_out(auth_etcd: PrivateEtcd, unique_date: str) -> None:
    """Users and roles changed by an administrator after the writer signed in: its token still serves."""
    writer = store_as(auth_etcd, WRITER)
    writer.notify("mars", mars(unique_date))
    auth_etcd.etcdctl("role", "add", f"unused-{unique_date}")
    auth_etcd.add_user(f"someone-{unique_date}", "someone-pw-5501", "ec-reader")
    result = writer.notify("mars", mars(unique_date, step=6))
    assert everything(auth_etcd, "/ec/mars/")[mars_key(unique_date, 6)][1] == result.revisions[-1]


def test_a_wait_survives_an_etcd_restart(short_token_etcd: PrivateEtcd, unique_date: str) -> None:
    """A restarted etcd knows none of the old tokens and refuses the watch as "permission denied":
    the waiter signs in again and is released by the next post.
    """
    reader, writer = store_as(short_token_etcd, READER), store_as(short_token_etcd, WRITER)
    writer.notify("mars", mars(unique_date, step=10))
    first_read = threading.Event()
    thread, outcome = run_in_thread(lambda: reader.wait("mars", mars(unique_date, step="9/10"), timeout=WAIT_SECONDS,
                                                    on_progress=lambda *_: first_read.set()))
    assert first_read.wait(WAIT_SECONDS), "the wait did not read step 10"
    wait_until("the reader's watch stream", lambda: open_watch(reader.config.identity, "/ec/mars/"))
    short_token_etcd.restart()
    writer.notify("mars", mars(unique_date, step=9))
    released = joined(thread, outcome, WAIT_SECONDS)
    assert [n.key for n in released] == [mars_key(unique_date, 10), mars_key(unique_date, 9)]
