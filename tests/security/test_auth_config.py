"""Credentials and TLS settings: where they come from (argument > environment > config file), which
headers they send, and clear errors for settings that cannot work together — never showing a secret.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from security_helpers import Pki

from aviso_workflows.config import StoreConfig, resolve_config
from aviso_workflows.errors import ValidationError

ENDPOINT = "http://127.0.0.1:2379"


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Write the user's config file."""
    path = tmp_path / "config.yaml"
    monkeypatch.setenv("AVISO_WORKFLOWS_CONFIG", str(path))

    def write(**settings: Any) -> Path:
        path.write_text(yaml.safe_dump({"endpoints": [ENDPOINT], **settings}))
        return path

    return write


def test_environment_gives_the_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVISO_WORKFLOWS_USERNAME", "ops")
    monkeypatch.setenv("AVISO_WORKFLOWS_PASSWORD", "pw-env")
    config = resolve_config([ENDPOINT])
    assert (config.username, config.password) == ("ops", "pw-env")


def test_config_file_user_with_the_password_in_the_environment(config_file: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The usual way to keep a password out of a file: each setting from the first source that has it."""
    config_file(username="ops", password="pw-file")
    monkeypatch.setenv("AVISO_WORKFLOWS_PASSWORD", "pw-env")
    config = resolve_config()
    assert (config.username, config.password) == ("ops", "pw-env")


def test_argument_beats_environment_beats_file(config_file: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    config_file(token="tok-file", auth_type="openid")
    assert resolve_config().auth_headers == {"Authorization": "Bearer tok-file", "X-Auth-Type": "openid"}
    monkeypatch.setenv("AVISO_WORKFLOWS_TOKEN", "tok-env")
    assert resolve_config().token == "tok-env"
    assert resolve_config(token="tok-arg").token == "tok-arg"


def test_a_higher_source_chooses_the_kind_of_credentials(config_file: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token given on the command line replaces the file's etcd user instead of clashing with it."""
    config_file(username="ops", password="pw-file")
    config = resolve_config(token="tok-arg")
    assert (config.token, config.username, config.password) == ("tok-arg", None, None)
    monkeypatch.setenv("AVISO_WORKFLOWS_EMAIL", "ops@example.int")
    monkeypatch.setenv("AVISO_WORKFLOWS_KEY", "key-env")
    config = resolve_config()
    assert config.auth_headers == {"Authorization": "EmailKey ops@example.int:key-env"}
    assert config.username is None


def test_two_kinds_from_one_source(config_file: Any) -> None:
    config_file(username="ops", password="pw-file-1d2c", token="tok-file-8e1b")
    with pytest.raises(ValidationError) as bad:
        resolve_config()
    assert bad.value.field == "credentials" and "config.yaml" in str(bad.value)
    assert "pw-file-1d2c" not in str(bad.value) and "tok-file-8e1b" not in str(bad.value)


@pytest.mark.parametrize(("settings", "field"), [
    ({"username": "ops", "token": "tok-9f"}, "credentials"),
    ({"password": "pw-9f"}, "username"),
    ({"email": "ops@example.int"}, "key"),
    ({"key": "key-9f"}, "email"),
    ({"email": "ops:x@example.int", "key": "key-9f"}, "email"),
    ({"token": "tok-9f", "auth_type": "basic"}, "auth_type"),
    ({"token": "tok-9f", "headers": {"Authorization": "Bearer other-9f"}}, "headers"),
    ({"poll_interval": 0}, "poll_interval"),
])
def test_settings_that_cannot_work(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as bad:
        StoreConfig(endpoints=(ENDPOINT,), **settings)
    assert bad.value.field == field
    assert not any(secret in str(bad.value) for secret in ("tok-9f", "pw-9f", "key-9f", "other-9f"))


def test_a_client_key_needs_its_certificate(pki: Pki) -> None:
    with pytest.raises(ValidationError) as bad:
        StoreConfig(endpoints=(ENDPOINT,), client_key=str(pki.client_key))
    assert bad.value.field == "client_key"


def test_headers_of_each_kind() -> None:
    assert StoreConfig(token="t").auth_headers == {"Authorization": "Bearer t", "X-Auth-Type": "ecmwf"}
    assert StoreConfig(email="a@b.int", key="k").auth_headers == {"Authorization": "EmailKey a@b.int:k"}
    assert StoreConfig(username="u", password="p").auth_headers == {}, "etcd users sign in for a token instead"


def test_different_credentials_never_share_a_watch() -> None:
    """Shared watches are keyed by identity: a reader must not see what only another user may see."""
    identities = {StoreConfig(token="a").identity, StoreConfig(token="b").identity,
                  StoreConfig(email="a@b.int", key="k").identity, StoreConfig(email="a@b.int", key="l").identity,
                  StoreConfig(username="u", password="p").identity, StoreConfig(username="v", password="p").identity}
    assert len(identities) == 6
