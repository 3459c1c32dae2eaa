"""What every backend derives from its configuration alone, written once for etcd and aviso-server."""

from __future__ import annotations

from typing import Any

from ..config import StoreConfig


class ConfiguredBackend:
    """A backend opened from a :class:`~aviso_workflows.config.StoreConfig`: its endpoint and identity."""

    config: StoreConfig

    @property
    def endpoint(self) -> str:
        """The endpoint as configured (the first of several), for messages."""
        return self.config.endpoints[0]

    @property
    def identity(self) -> tuple[Any, ...]:
        """What tells this store from another in the process (endpoints, credentials, transport)."""
        return self.config.identity


__all__ = ["ConfiguredBackend"]
