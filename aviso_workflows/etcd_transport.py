"""Which etcd client a config gets: the gRPC one (etcd_grpc.py) or the HTTP gateway one (etcd.py).

This sits above both clients, so the HTTP client (the base the gRPC one extends) never imports its subclass.
"""

from __future__ import annotations

import logging
import time

from .config import StoreConfig
from .errors import StoreUnavailable
from .etcd import EtcdGateway

log = logging.getLogger("aviso_workflows.etcd")
_STUBS_LOAD: list[bool] = []


def grpc_usable(config: StoreConfig) -> bool:
    """True when ``config`` talks to etcd over gRPC (see ``StoreConfig.transport``): asked for, or ``auto``
    without HTTP-only settings (headers, token, email: an auth proxy) and with the gRPC stubs loadable."""
    if config.transport == "gateway" or config.is_aviso:
        return False
    if config.transport == "grpc":
        return True
    if config.headers or config.token is not None or config.email is not None:
        return False
    if not _stubs_load():
        return False
    from .etcd_grpc import GATEWAY_ONLY

    return config.identity not in GATEWAY_ONLY


def _stubs_load() -> bool:
    """The gRPC stubs import here (they need protobuf 5.27 or newer; a venv pinned older keeps the gateway)."""
    if not _STUBS_LOAD:
        try:
            from . import etcd_grpc  # noqa: F401
            _STUBS_LOAD.append(True)
        except Exception as error:  # noqa: BLE001 - any failure to load means: use the gateway
            log.info("etcd's gRPC API is not usable here (%s); using the HTTP gateway", error)
            _STUBS_LOAD.append(False)
    return _STUBS_LOAD[0]


def open_gateway(config: StoreConfig) -> EtcdGateway:
    """An etcd client for ``config``: a :class:`~aviso_workflows.etcd_grpc.GrpcGateway` when its transport is
    gRPC (:func:`grpc_usable`), else the HTTP gateway client; both have the same methods."""
    if grpc_usable(config):
        from .etcd_grpc import GrpcGateway

        return GrpcGateway(config)
    return EtcdGateway(config)


def wait_until_ready(config: StoreConfig, deadline_seconds: float = 10.0) -> int:
    """Poll until etcd answers (bounded); return its revision."""
    gateway = open_gateway(config)
    until = time.monotonic() + deadline_seconds
    while True:
        try:
            return gateway.current_revision()
        except StoreUnavailable:
            if time.monotonic() > until:
                raise
            time.sleep(0.05)
