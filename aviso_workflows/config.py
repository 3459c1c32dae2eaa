"""Where the store is and how to reach it: endpoints, timeout, credentials, TLS, schema files.

Resolution order for endpoints: explicit argument, ``AVISO_WORKFLOWS_ENDPOINTS`` (comma-separated),
the config file (``AVISO_WORKFLOWS_CONFIG`` or ``~/.config/aviso-workflows/config.yaml``), then the
embedded server's default address.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from .errors import ValidationError

DEFAULT_PORT = 2379
DEFAULT_ENDPOINT = f"http://127.0.0.1:{DEFAULT_PORT}"
ENDPOINTS_VARIABLE = "AVISO_WORKFLOWS_ENDPOINTS"
CONFIG_VARIABLE = "AVISO_WORKFLOWS_CONFIG"
STATE_VARIABLE = "AVISO_WORKFLOWS_STATE_DIR"
_SECRET = "***"


def default_config_path() -> Path:
    """The user's config file (it need not exist)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(os.environ.get(CONFIG_VARIABLE) or os.path.join(base, "aviso-workflows", "config.yaml"))


def state_dir() -> Path:
    """Where cursors are kept (``AVISO_WORKFLOWS_STATE_DIR`` or ``~/.local/state/aviso-workflows``)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(os.environ.get(STATE_VARIABLE) or os.path.join(base, "aviso-workflows"))


def normalise_endpoint(endpoint: str) -> str:
    """``host:port`` or a URL → ``scheme://host:port`` (loopback names kept as given)."""
    text = str(endpoint).strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("endpoint", endpoint, "expected http://HOST:PORT, https://HOST:PORT or HOST:PORT")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValidationError("endpoint", endpoint, "the port must be a number from 1 to 65535") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}"


@dataclass(frozen=True)
class StoreConfig:
    """How to reach etcd. ``repr()`` never shows the password or header values."""

    endpoints: tuple[str, ...] = (DEFAULT_ENDPOINT,)
    timeout: float = 10.0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    schema_files: tuple[str, ...] = ()
    max_txn_ops: int = 128
    #: A key posted again with the same value within this many revisions is a repeat: listeners skip it.
    dedupe_window: int = 100_000

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValidationError("endpoints", list(self.endpoints), "at least one etcd endpoint is needed")
        object.__setattr__(self, "endpoints", tuple(normalise_endpoint(e) for e in self.endpoints))
        if not (isinstance(self.timeout, (int, float)) and self.timeout > 0):
            raise ValidationError("timeout", self.timeout, "expected a positive number of seconds")
        if not (isinstance(self.max_txn_ops, int) and self.max_txn_ops >= 3):
            raise ValidationError("max_txn_ops", self.max_txn_ops, "expected a whole number of at least 3")
        if not (isinstance(self.dedupe_window, int) and self.dedupe_window >= 0):
            raise ValidationError("dedupe_window", self.dedupe_window,
                                  "expected a whole number of revisions (0 turns deduplication off)")

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.repr}
        if self.password is not None:
            shown["password"] = _SECRET
        if self.headers:
            shown["headers"] = {k: _SECRET for k in self.headers}
        return "StoreConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    @property
    def identity(self) -> tuple[Any, ...]:
        """What makes two configs reach the same data as the same client (used to share watches)."""
        return (self.endpoints, self.username, self.password, tuple(sorted(self.headers.items())),
                self.ca_cert, self.client_cert, self.client_key)



def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValidationError("config", str(path), f"not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise ValidationError("config", str(path), "expected a mapping such as 'endpoints: [...]'")
    return document


def resolve_config(endpoints: Sequence[str] | str | None = None, *, config_file: str | Path | None = None,
                   **overrides: Any) -> StoreConfig:
    """Build a StoreConfig from arguments, environment, config file and defaults, in that order."""
    document = _read_config_file(Path(config_file) if config_file else default_config_path())
    known = {f.name for f in fields(StoreConfig)}
    unknown = sorted(set(document) - known)
    if unknown:
        raise ValidationError("config", unknown[0], "unknown setting; valid settings: " + ", ".join(sorted(known)))
    values: dict[str, Any] = dict(document)
    if isinstance(endpoints, str):
        endpoints = [e for e in endpoints.split(",") if e.strip()]
    env = os.environ.get(ENDPOINTS_VARIABLE)
    if endpoints:
        values["endpoints"] = endpoints
    elif env:
        values["endpoints"] = [e for e in env.split(",") if e.strip()]
    elif "endpoints" not in values:
        values["endpoints"] = (_embedded_endpoint(),)
    values.update({k: v for k, v in overrides.items() if v is not None})
    for name in ("endpoints", "schema_files"):
        if name in values:
            values[name] = tuple(values[name]) if not isinstance(values[name], str) else (values[name],)
    return StoreConfig(**values)


def _embedded_endpoint() -> str:
    """The running embedded server's address, else its default one."""
    from . import server

    running = server.status()
    return running.client_url if running is not None else DEFAULT_ENDPOINT
