"""The ``aviso`` scheme of the common messaging provider: ``MessageQueueTrigger(scheme="aviso", ...)``."""

from __future__ import annotations

from airflow.providers.common.messaging.providers.base_provider import BaseMessageQueueProvider
from airflow.triggers.base import BaseEventTrigger

from .triggers import AvisoEventTrigger


class AvisoMessageQueueProvider(BaseMessageQueueProvider):
    """``MessageQueueTrigger(scheme="aviso", event=..., request={...}, aviso_conn_id=...)``."""

    scheme = "aviso"

    def trigger_class(self) -> type[BaseEventTrigger]:
        return AvisoEventTrigger
