"""A store's backends behind one contract (:mod:`.protocol`): etcd and aviso-server, chosen once from the endpoint."""

from __future__ import annotations

from ..config import StoreConfig
from .aviso_server import AvisoServerBackend
from .etcd import EtcdBackend
from .protocol import Backend, CapabilityError, DatedHistory, NotifyResult


def open_backend(config: StoreConfig, history: DatedHistory) -> Backend:
    """The backend of ``config``'s endpoints: an aviso-server for ``aviso+http(s)://``, else etcd.

    ``history`` places times on etcd's revisions (the status chains); an aviso-server places them itself.
    """
    if config.is_aviso:
        return AvisoServerBackend(config)
    return EtcdBackend(config, history)


__all__ = ["Backend", "CapabilityError", "NotifyResult", "open_backend"]
