"""Authentication of the API: a token file, and Basic credentials signed in to an etcd with users and roles."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from security.security_helpers import READER, ROOT, SECRETS, WRITER, PrivateEtcd, etcd_with_users
from serve_helpers import Served, mars, serving, stream

from aviso_workflows import Store
from aviso_workflows.errors import ValidationError
from aviso_workflows.serve.auth import load_tokens

READ_TOKEN = "read-token-5b1e9a"
WRITE_TOKEN = "write-token-c47d02"


def _basic(user: tuple[str, str]) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_tokens_grant_events_to_read_and_write(store: Store, tmp_path: Path, unique_date: str) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(f"tokens:\n  {READ_TOKEN}: {{read: ['*']}}\n  {WRITE_TOKEN}: {{read: [mars], write: [mars]}}\n")
    notify = {"event_type": "mars", "identifier": mars(unique_date)}
    watch = {"event_type": "mars", "identifier": {"date": unique_date}, "from_id": "0"}
    with serving(store, auth="tokens", tokens=load_tokens(str(path))) as served:
        missing = served.post("/api/v1/notification", notify)
        assert missing.status_code == 401 and missing.json()["code"] == "UNAUTHORIZED"
        assert "Bearer" in missing.headers["www-authenticate"] and missing.json()["request_id"]
        assert served.post("/api/v1/notification", notify, headers=_bearer("nope-nope-nope")).status_code == 401
        refused = served.post("/api/v1/notification", notify, headers=_bearer(READ_TOKEN))
        assert refused.status_code == 403 and refused.json()["code"] == "FORBIDDEN"
        assert store.get("mars", {"date": unique_date}) == []
        assert served.post("/api/v1/notification", notify, headers=_bearer(WRITE_TOKEN)).status_code == 200
        assert served.post("/api/v1/replay", watch).status_code == 401
        diss = {"event_type": "dissemination", "identifier": {"destination": "X"}, "from_id": "0"}
        assert served.post("/api/v1/replay", diss, headers=_bearer(WRITE_TOKEN)).status_code == 403
        with stream(served, "/api/v1/replay", watch, _bearer(READ_TOKEN)) as events:
            assert [name for name, _ in events.rest()].count("replay") == 1
        assert httpx.get(served.url + "/api/v1/schema").status_code == 200, "schemas are public"


def test_a_bad_token_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    for text in ("tokens: {}", "tokens: {short: {read: [mars]}}", "tokens: {long-enough-token: {admin: yes}}"):
        path.write_text(text)
        with pytest.raises(ValidationError, match="tokens"):
            load_tokens(str(path))


@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateEtcd]:
    """An etcd with users: root, reader (read /ec/), writer (read and write /ec/mars/)."""
    with etcd_with_users(tmp_path_factory.mktemp("serve-auth-etcd")) as etcd:
        yield etcd


@pytest.fixture(scope="module")
def etcd_served(auth_etcd: PrivateEtcd) -> Iterator[Served]:
    """The API over that etcd, passing clients' credentials on (the server itself holds none)."""
    with serving(Store(config=auth_etcd.config()), auth="etcd", heartbeat=0.5) as served:
        yield served


def test_basic_credentials_are_etcd_users(etcd_served: Served, auth_etcd: PrivateEtcd, unique_date: str,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    notify = {"event_type": "mars", "identifier": mars(unique_date), "payload": "file:///x"}
    assert etcd_served.post("/api/v1/notification", notify).status_code == 401
    wrong = etcd_served.post("/api/v1/notification", notify, headers=_basic((WRITER[0], "wrong-password")))
    assert wrong.status_code == 401 and wrong.json()["code"] == "UNAUTHORIZED"
    refused = etcd_served.post("/api/v1/notification", notify, headers=_basic(READER))
    assert refused.status_code == 403 and refused.json()["code"] == "FORBIDDEN"
    written = etcd_served.post("/api/v1/notification", notify, headers=_basic(WRITER))
    assert written.status_code == 200, written.text
    as_root = Store(config=auth_etcd.config(ROOT))
    found = as_root.get("mars", {"date": unique_date})
    assert [n.location for n in found] == ["file:///x"]
    watch = {"event_type": "mars", "identifier": {"date": unique_date}, "from_id": "0"}
    assert etcd_served.post("/api/v1/watch", watch, headers=_basic(WRITER)).status_code == 403, \
        "a stream reads every notification prefix: the writer may read /ec/mars/ only"
    with stream(etcd_served, "/api/v1/watch", watch, _basic(READER)) as events:
        replayed = events.notifications(1)
        as_root.notify("mars", mars(unique_date, 6))
        live = events.notifications(1)
    assert [e["data"]["identifier"]["step"] for e in replayed + live] == ["0", "6"]
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert not any(secret in logged for secret in SECRETS)
