"""Where the store is and how to reach it: endpoints, timeout, credentials, TLS, schema files.

Resolution order for endpoints: explicit argument, ``AVISO_WORKFLOWS_ENDPOINTS`` (comma-separated),
the config file (``AVISO_WORKFLOWS_CONFIG`` or ``~/.config/aviso-workflows/config.yaml``), then the
embedded server's default address. Every other setting: argument, environment (credentials only:
``AVISO_WORKFLOWS_USERNAME``/``_PASSWORD``, ``_TOKEN``, ``_EMAIL``/``_KEY``), config file, default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from .embedded import DEFAULT_ENDPOINT, DEFAULT_PORT
from .embedded import endpoint as _embedded_endpoint
from .errors import ValidationError

ENDPOINTS_VARIABLE = "AVISO_WORKFLOWS_ENDPOINTS"
CONFIG_VARIABLE = "AVISO_WORKFLOWS_CONFIG"
STATE_VARIABLE = "AVISO_WORKFLOWS_STATE_DIR"
TRANSPORT_VARIABLE = "AVISO_WORKFLOWS_TRANSPORT"
#: How to talk to etcd: ``grpc`` (its native API), ``gateway`` (its HTTP/JSON gateway, also what proxies
#: forward), ``auto`` (gRPC unless the config has HTTP-only settings, an endpoint answers HTTP/1, or the gRPC
#: stubs do not load: the default).
TRANSPORTS = ("auto", "grpc", "gateway")
DEFAULT_TRANSPORT = "auto"
_SECRET = "***"


def default_config_path() -> Path:
    """The user's config file (it need not exist)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(os.environ.get(CONFIG_VARIABLE) or os.path.join(base, "aviso-workflows", "config.yaml"))


def state_dir() -> Path:
    """Where cursors are kept (``AVISO_WORKFLOWS_STATE_DIR`` or ``~/.local/state/aviso-workflows``)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(os.environ.get(STATE_VARIABLE) or os.path.join(base, "aviso-workflows"))


#: Endpoint schemes of an aviso-server (Aviso 2, HTTP and server-sent events) instead of etcd.
AVISO_SCHEMES = {"aviso+http": 80, "aviso+https": 443}
_ENDPOINT_FORMS = ("expected http://HOST:PORT, https://HOST:PORT or HOST:PORT (etcd), or aviso+http://HOST:PORT or "
                   "aviso+https://HOST[:PORT][/PATH] (an aviso-server)")


def normalise_endpoint(endpoint: str) -> str:
    """``host:port`` or a URL → ``scheme://host:port`` (loopback names kept as given); an aviso-server's
    ``aviso+http(s)://host[:port][/path]`` keeps its path (a server behind a reverse proxy's prefix)."""
    text = str(endpoint).strip()
    if text.lower().split("://", 1)[0] in AVISO_SCHEMES:
        return _normalise_aviso(endpoint, text)
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
    except ValueError:  # an unclosed [IPv6 address
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("endpoint", endpoint, _ENDPOINT_FORMS)
    try:
        port = DEFAULT_PORT if parts.port is None else parts.port
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise ValidationError("endpoint", endpoint, "the port must be a number from 1 to 65535")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}"


def _normalise_aviso(endpoint: str, text: str) -> str:
    try:
        parts = urlsplit(text)
        port = AVISO_SCHEMES[parts.scheme.lower()] if parts.port is None else parts.port
    except ValueError:
        parts, port = urlsplit(""), 0
    if not parts.hostname or parts.query or parts.fragment or parts.username or parts.password:
        raise ValidationError("endpoint", endpoint, _ENDPOINT_FORMS + "; credentials go in username/password "
                              "or token, not in the URL")
    if not 0 < port < 65536:
        raise ValidationError("endpoint", endpoint, "the port must be a number from 1 to 65535")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme.lower()}://{host}:{port}{parts.path.rstrip('/')}"


def is_aviso(endpoint: str) -> bool:
    """True for an aviso-server endpoint (``aviso+http://``, ``aviso+https://``)."""
    return str(endpoint).strip().lower().split("://", 1)[0] in AVISO_SCHEMES


@dataclass(frozen=True)
class StoreConfig:
    """How to reach etcd. ``repr()`` never shows the password or header values."""

    endpoints: tuple[str, ...] = (DEFAULT_ENDPOINT,)
    timeout: float = 10.0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: Sent as ``Authorization: Bearer <token>`` with ``X-Auth-Type: <auth_type>`` (Aviso's auth proxy).
    token: str | None = field(default=None, repr=False)
    auth_type: str = "ecmwf"
    #: Sent as ``Authorization: EmailKey <email>:<key>`` (as ecFlow's Aviso poller does).
    email: str | None = None
    key: str | None = field(default=None, repr=False)
    #: Seconds between reads when a proxy refuses watches and listening falls back to polling.
    poll_interval: float = 1.0
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    schema_files: tuple[str, ...] = ()
    max_txn_ops: int = 128
    #: aviso-server only: hours before a request's earliest date that a wait's replay starts (0: that date, 00:00 UTC).
    replay_lookback_hours: float = 0.0
    #: One of TRANSPORTS; ``AVISO_WORKFLOWS_TRANSPORT`` when not given.
    transport: str = field(default_factory=lambda: os.environ.get(TRANSPORT_VARIABLE) or DEFAULT_TRANSPORT)

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValidationError("endpoints", list(self.endpoints), "at least one etcd endpoint is needed")
        object.__setattr__(self, "endpoints", tuple(normalise_endpoint(e) for e in self.endpoints))
        if len({is_aviso(e) for e in self.endpoints}) > 1:
            raise ValidationError("endpoints", list(self.endpoints), "one store is either etcd (http/https) or an "
                                  "aviso-server (aviso+http/aviso+https), not both")
        lookback = self.replay_lookback_hours
        if not (isinstance(lookback, (int, float)) and not isinstance(lookback, bool) and 0 <= lookback <= 24 * 366):
            raise ValidationError("replay_lookback_hours", lookback, "expected a number of hours from 0 to 8784")
        if not (isinstance(self.timeout, (int, float)) and self.timeout > 0):
            raise ValidationError("timeout", self.timeout, "expected a positive number of seconds")
        if not (isinstance(self.max_txn_ops, int) and self.max_txn_ops >= 3):
            raise ValidationError("max_txn_ops", self.max_txn_ops, "expected a whole number of at least 3")
        if not (isinstance(self.poll_interval, (int, float)) and self.poll_interval > 0):
            raise ValidationError("poll_interval", self.poll_interval, "expected a positive number of seconds")
        _check_credentials(self)
        _check_tls_files(self)
        _check_transport(self)

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.repr}
        for name in ("password", "token", "key"):
            if getattr(self, name) is not None:
                shown[name] = _SECRET
        if self.headers:
            shown["headers"] = {k: _SECRET for k in self.headers}
        return "StoreConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    @property
    def is_aviso(self) -> bool:
        """True when the store is an aviso-server (Aviso 2) rather than etcd."""
        return is_aviso(self.endpoints[0])

    @cached_property
    def identity(self) -> tuple[Any, ...]:
        """What makes two configs reach the same data as the same client (used to share watches; computed once,
        as every wait joins and leaves its watch by it).

        It holds the credentials: never log it.
        """
        return (self.endpoints, self.username, self.password, tuple(sorted(self.headers.items())),
                self.token, self.auth_type, self.email, self.key, self.ca_cert, self.client_cert, self.client_key,
                self.transport)

    @property
    def auth_headers(self) -> dict[str, str]:
        """The headers of header authentication (``token`` or ``email``/``key``), added to ``headers``."""
        if self.token is not None:
            return {"Authorization": f"Bearer {self.token}", "X-Auth-Type": self.auth_type}
        if self.email is not None:
            return {"Authorization": f"EmailKey {self.email}:{self.key}"}
        return {}


#: Credential settings and the kind of authentication each belongs to; one kind per config.
CREDENTIALS = {"username": "etcd", "password": "etcd", "token": "token", "email": "email", "key": "email"}
CREDENTIAL_VARIABLES = {name: f"AVISO_WORKFLOWS_{name.upper()}" for name in CREDENTIALS}
AUTH_TYPES = ("ecmwf", "openid")
_ONE_KIND = ("use one of: username and password (etcd users), token (Authorization: Bearer) "
             "or email and key (Authorization: EmailKey)")


def _credential_kinds(settings: Mapping[str, Any]) -> dict[str, list[str]]:
    kinds: dict[str, list[str]] = {}
    for name, kind in CREDENTIALS.items():
        if settings.get(name) not in (None, ""):
            kinds.setdefault(kind, []).append(name)
    return kinds


def _check_credentials(config: StoreConfig) -> None:
    kinds = _credential_kinds({name: getattr(config, name) for name in CREDENTIALS})
    if len(kinds) > 1:
        raise ValidationError("credentials", sorted(n for names in kinds.values() for n in names), _ONE_KIND)
    if config.password is not None and not config.username:
        raise ValidationError("username", config.username, "a password needs a username")
    if (config.email is None) != (config.key is None):
        missing = "key" if config.key is None else "email"
        raise ValidationError(missing, None, "EmailKey authentication needs both email and key")
    if config.email is not None and (":" in config.email or not config.email.strip()):
        raise ValidationError("email", config.email, "expected an e-mail address without ':'")
    if config.auth_type not in AUTH_TYPES:
        raise ValidationError("auth_type", config.auth_type, "expected one of " + ", ".join(AUTH_TYPES))
    if kinds and any(name.lower() == "authorization" for name in config.headers):
        raise ValidationError("headers", "Authorization", "set it in headers or through " + "/".join(
            sorted(kinds.popitem()[1])) + ", not both")


def _check_tls_files(config: StoreConfig) -> None:
    if config.client_key and not config.client_cert:
        raise ValidationError("client_key", config.client_key, "a client key needs client_cert as well")
    for name in ("ca_cert", "client_cert", "client_key"):
        path = getattr(config, name)
        if path is not None and not os.path.isfile(path):
            raise ValidationError(name, path, "expected the path of an existing PEM file")


def _check_transport(config: StoreConfig) -> None:
    if config.transport not in TRANSPORTS:
        raise ValidationError("transport", config.transport, "expected one of " + ", ".join(TRANSPORTS))
    if config.transport == "grpc" and (config.headers or config.token is not None or config.email is not None):
        raise ValidationError("transport", config.transport, "headers, token and email/key are HTTP headers for "
                              "a proxy in front of etcd's HTTP gateway: use transport gateway (or auto) with them")


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as error:
        reason = " ".join(str(error).split()) or "nested too deeply"
        raise ValidationError("config", str(path), f"not valid YAML: {reason}") from None
    if not isinstance(document, dict):
        raise ValidationError("config", str(path), "expected a mapping such as 'endpoints: [...]'")
    return document


def resolve_config(endpoints: Sequence[str] | str | None = None, *, config_file: str | Path | None = None,
                   **overrides: Any) -> StoreConfig:
    """Build a StoreConfig from arguments, environment, config file and defaults, in that order."""
    path = Path(config_file) if config_file else default_config_path()
    document = _read_config_file(path)
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
    environment = {name: os.environ[variable] for name, variable in CREDENTIAL_VARIABLES.items()
                   if os.environ.get(variable)}
    given = {k: v for k, v in overrides.items() if v is not None}
    if os.environ.get(TRANSPORT_VARIABLE):
        values["transport"] = os.environ[TRANSPORT_VARIABLE]
    values.update(environment)
    values.update(given)
    _keep_one_credential_kind(values, (("arguments", given), ("environment", environment), (str(path), document)))
    for name in ("endpoints", "schema_files"):
        if name in values:
            values[name] = tuple(values[name]) if not isinstance(values[name], str) else (values[name],)
    return StoreConfig(**values)


def _keep_one_credential_kind(values: dict[str, Any], sources: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """Keep the kind of credentials of the first source that has any (so ``--token`` overrides a
    username in the config file); within that kind, each setting still comes from the first source that has it.
    """
    for where, source in sources:
        kinds = _credential_kinds(source)
        if len(kinds) > 1:
            names = sorted(n for group in kinds.values() for n in group)
            raise ValidationError("credentials", names, f"{_ONE_KIND} (given together in: {where})")
        if kinds:
            chosen = next(iter(kinds))
            for name, kind in CREDENTIALS.items():
                if kind != chosen:
                    values.pop(name, None)
            return

