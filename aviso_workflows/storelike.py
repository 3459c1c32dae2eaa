"""What waits, listeners and the status chain need of a store (store.py's ``Store`` has it).

A protocol here, below the drivers, so that wait.py, listen.py and their helpers never import the store
that offers them as methods: the store sits above them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .backends.protocol import Backend
from .config import StoreConfig
from .etcd import EtcdGateway
from .notification import Notification
from .position import Position
from .request import Request
from .schema import EventSchema


class StoreLike(Protocol):
    """A store's settings, backend and reads, as :class:`~aviso_workflows.store.Store` offers them."""

    @property
    def config(self) -> StoreConfig: ...

    @property
    def backend(self) -> Backend: ...

    @property
    def gateway(self) -> EtcdGateway:
        """etcd's client, for etcd-only features (a CapabilityError on an aviso-server)."""
        ...

    def now(self) -> Position: ...

    def read_many(self, requests: Sequence[Request], *,
                  min_revision: int = 0) -> list[tuple[int, list[Notification]]]: ...

    def schema(self, event: str) -> EventSchema: ...
