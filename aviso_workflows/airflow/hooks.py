"""AvisoHook: the core Store built from an Airflow connection of type ``aviso``.

Connection fields: host and port (default 2379), or ``endpoints`` in the extras (a list or
comma-separated text, for a cluster); TLS with ``use_tls`` (or ``https://`` endpoints) and
``ca_cert``/``client_cert``/``client_key`` paths; ``timeout`` in seconds and ``schema_files`` for
custom events; ``headers`` (a JSON object) sent with every request. A host (or ``endpoints``) written
``aviso+http://HOST:PORT`` or ``aviso+https://HOST`` names an aviso-server (Aviso 2) instead of etcd;
login and password are then sent as Basic credentials, a token as Bearer.

Login and password depend on the extra ``auth_type``:

- ``etcd`` (the default): an etcd user and its password;
- ``bearer``, ``ecmwf`` or ``openid``: the password is a token sent as ``Authorization: Bearer``, with
  ``X-Auth-Type: ecmwf`` (``bearer``, ``ecmwf``) or ``openid``, for Aviso's authenticating proxy;
- ``emailkey``: the login is an e-mail address and the password its key, sent as
  ``Authorization: EmailKey <email>:<key>``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from airflow.sdk import BaseHook, Connection
from airflow.sdk.exceptions import AirflowNotFoundException

from ..config import (
    DEFAULT_PORT,
    ENDPOINTS_VARIABLE,
    StoreConfig,
    _read_config_file,
    default_config_path,
    is_aviso,
    resolve_config,
)
from ..errors import ValidationError
from ..store import Store

log = logging.getLogger(__name__)
#: The fallback lines already logged by this process.
_FALLBACKS_SAID: set[str] = set()


class AvisoHook(BaseHook):
    """Reach an Aviso-compatible etcd store through an ``aviso`` connection."""

    conn_name_attr = "aviso_conn_id"
    default_conn_name = "aviso_default"
    conn_type = "aviso"
    hook_name = "Aviso"

    def __init__(self, aviso_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.aviso_conn_id = aviso_conn_id

    def get_conn(self) -> Store:
        """The store of the connection (read from Airflow's connections); without an ``aviso_default``
        connection, the store the command line would use."""
        try:
            return store_from_connection(self.get_connection(self.aviso_conn_id))
        except AirflowNotFoundException as missing:
            return self._fallback(missing)

    async def aget_conn(self) -> Store:
        """The store of the connection, read without blocking the event loop (for triggers). The lookup
        is shared by the triggers of a loop for ``CONNECTION_CACHE_SECONDS`` (see :func:`_looked_up`), and
        so is the store built from it: ten thousand triggers share one Store rather than building one each."""
        try:
            conn = await _looked_up(self.aviso_conn_id, self.aget_connection)
        except AirflowNotFoundException as missing:
            return _shared_store(self.aviso_conn_id, missing, partial(self._fallback, missing))
        return _shared_store(self.aviso_conn_id, conn, partial(store_from_connection, conn))

    def _fallback(self, missing: AirflowNotFoundException) -> Store:
        """Only the default connection falls back: a named connection that is missing is a mistake to report."""
        if self.aviso_conn_id != self.default_conn_name:
            raise AirflowNotFoundException(f"connection {self.aviso_conn_id!r} is not defined; "
                                           + how_to_create(self.aviso_conn_id)) from missing
        config = resolve_config()
        said = f"no {self.aviso_conn_id!r} connection: using {','.join(config.endpoints)} from " \
               f"{_endpoints_source()}, as the command line does"
        if said not in _FALLBACKS_SAID:  # once per process, not once per task or trigger
            _FALLBACKS_SAID.add(said)
            log.info("%s", said)
        return Store(config=config)

    def test_connection(self) -> tuple[bool, str]:
        """Reach the store and report its revision (used by the UI's "Test" button)."""
        try:
            return True, self.get_conn().backend.health()
        except Exception as error:  # noqa: BLE001 - the UI shows any failure as text
            return False, str(error)


#: Seconds a connection looked up for the triggers of one event loop is reused: ten thousand triggers
#: starting together make one lookup instead of ten thousand, and an edited connection is read again soon.
CONNECTION_CACHE_SECONDS = 30.0
_LOOKUPS: dict[tuple[asyncio.AbstractEventLoop, str], tuple[float, asyncio.Task[Connection]]] = {}


async def _looked_up(conn_id: str, lookup: Callable[[str], Awaitable[Connection]]) -> Connection:
    """The connection ``conn_id`` from a lookup shared with the loop's other callers (one at a time, reused
    for a while); a lookup that failed for another reason than a missing connection is not reused."""
    loop = asyncio.get_running_loop()
    now = time.monotonic()
    cached = _LOOKUPS.get((loop, conn_id))
    if cached is None or now - cached[0] > CONNECTION_CACHE_SECONDS or _failed(cached[1]):
        for stale in [key for key in _LOOKUPS if key[0].is_closed()]:
            del _LOOKUPS[stale]
        cached = _LOOKUPS[(loop, conn_id)] = (now, loop.create_task(_lookup(conn_id, lookup)))
    return await asyncio.shield(cached[1])  # one trigger cancelled must not cancel the others' lookup


#: The store each loop's triggers share per connection id, with the lookup's answer it was built from (a
#: Connection, or the error saying there is none): a new lookup (an edited connection) builds a new store.
_STORES: dict[tuple[asyncio.AbstractEventLoop, str], tuple[object, Store]] = {}


def _shared_store(conn_id: str, answer: object, build: Callable[[], Store]) -> Store:
    """The store built from ``answer`` for this loop's triggers of ``conn_id`` (built by the first of them)."""
    loop = asyncio.get_running_loop()
    cached = _STORES.get((loop, conn_id))
    if cached is not None and cached[0] is answer:
        return cached[1]
    for stale in [key for key in _STORES if key[0].is_closed()]:
        del _STORES[stale]
    store = build()
    _STORES[(loop, conn_id)] = (answer, store)
    return store


async def _lookup(conn_id: str, lookup: Callable[[str], Awaitable[Connection]]) -> Connection:
    return await lookup(conn_id)


def _failed(task: asyncio.Task[Connection]) -> bool:
    if not task.done():
        return False
    error = None if task.cancelled() else task.exception()
    return task.cancelled() or (error is not None and not isinstance(error, AirflowNotFoundException))


def store_from_connection(conn: Connection) -> Store:
    """Translate a Connection into the core's StoreConfig and Store (refused if it is not an ``aviso`` one)."""
    if conn.conn_type and conn.conn_type != AvisoHook.conn_type:
        raise ValidationError("aviso_conn_id", conn.conn_id, f"the connection is of type {conn.conn_type!r}, "
                              f"not 'aviso'; {how_to_create(conn.conn_id)}")
    return Store(config=config_from_connection(conn))


def how_to_create(conn_id: str) -> str:
    """How to make ``conn_id`` an ``aviso`` connection, for error messages."""
    variable = "AIRFLOW_CONN_" + conn_id.upper()
    return (f"create it with `airflow connections add {conn_id} --conn-type aviso --conn-host ETCD_HOST "
            f"--conn-port 2379` (or in the UI: Admin > Connections, type \"Aviso (etcd)\"), or set {variable}="
            "'{\"conn_type\": \"aviso\", \"host\": \"ETCD_HOST\", \"port\": 2379}'")


def config_from_connection(conn: Connection) -> StoreConfig:
    """The StoreConfig an ``aviso`` connection describes."""
    extra = conn.extra_dejson or {}
    settings: dict[str, Any] = {
        "endpoints": _endpoints(conn, extra),
        "headers": _headers(extra.get("headers")),
        "schema_files": _texts("schema_files", extra.get("schema_files")),
        **_credentials(conn, extra.get("auth_type")),
    }
    for name in ("ca_cert", "client_cert", "client_key"):
        if extra.get(name):
            settings[name] = str(extra[name])
    if extra.get("timeout") not in (None, ""):
        settings["timeout"] = _number("timeout", extra["timeout"])
    return StoreConfig(**settings)


def _credentials(conn: Connection, auth_type: Any) -> dict[str, Any]:
    """StoreConfig settings for the connection's login and password, as ``auth_type`` reads them."""
    kind = str(auth_type or "etcd").strip().lower()
    login, password = conn.login or None, conn.password or None
    if kind == "etcd":
        return {"username": login, "password": password}
    if kind in ("bearer", "ecmwf", "openid"):
        if password is None:
            raise ValidationError("password", None, f"auth_type {kind} reads the token from the password field")
        return {"token": password, "auth_type": "openid" if kind == "openid" else "ecmwf"}
    if kind == "emailkey":
        return {"email": login, "key": password}
    raise ValidationError("auth_type", auth_type, "expected etcd, bearer, ecmwf, openid or emailkey")


def _endpoints(conn: Connection, extra: Mapping[str, Any]) -> tuple[str, ...]:
    scheme = "https" if _flag(extra.get("use_tls")) or conn.schema == "https" else "http"
    listed = _texts("endpoints", extra.get("endpoints"))
    if listed:
        return tuple(e if "://" in e else f"{scheme}://{e}" for e in listed)
    if not conn.host:
        raise ValidationError("host", conn.host, f"connection {conn.conn_id!r} needs a host or 'endpoints' in extras")
    if "://" in conn.host:  # a URL typed as the host: its scheme and port win over the other fields
        return (_host_url(conn, conn.host),)
    return (f"{scheme}://{conn.host}:{conn.port or DEFAULT_PORT}",)


def _host_url(conn: Connection, host: str) -> str:
    try:
        parts = urlsplit(host)
        port = parts.port or conn.port or DEFAULT_PORT
    except ValueError:
        parts, port = None, None
    if parts is not None and is_aviso(host) and parts.hostname:  # an aviso-server: the URL as typed
        return host if parts.port or not conn.port else f"{parts.scheme}://{parts.netloc}:{conn.port}{parts.path}"
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ValidationError("host", host, "expected a host name, or a URL http(s)://HOST[:PORT] (etcd) or "
                              "aviso+http(s)://HOST[:PORT] (an aviso-server)")
    hostname = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{hostname}:{port}"


def _endpoints_source() -> str:
    """Where :func:`resolve_config` found the endpoints, in the words of its log line."""
    if os.environ.get(ENDPOINTS_VARIABLE):
        return f"${ENDPOINTS_VARIABLE}"
    path = default_config_path()
    if "endpoints" in _read_config_file(path):
        return f"the config file {path}"
    return "the embedded server"


def _texts(name: str, value: Any) -> tuple[str, ...]:
    if value in (None, ""):
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, (list, tuple)):
        return tuple(str(part).strip() for part in value if str(part).strip())
    raise ValidationError(name, value, "expected a list or comma-separated text")


def _headers(value: Any) -> dict[str, str]:
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValidationError("headers", "***", "expected a JSON object of header names to values") from None
    if not isinstance(value, Mapping):
        raise ValidationError("headers", type(value).__name__, "expected an object of header names to values")
    return {str(k): str(v) for k, v in value.items()}


def _flag(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on") if value is not None else False


def _number(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValidationError(name, value, "expected a number of seconds") from None
