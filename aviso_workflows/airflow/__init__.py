"""Airflow provider for aviso-workflows: sensor, trigger, notify operator, hook and asset watcher trigger."""

from .assets import asset_notifications, aviso_notifications
from .hooks import AvisoHook
from .operators import AvisoNotifyOperator
from .sensors import AvisoSensor
from .triggers import AvisoEventTrigger, AvisoTrigger

__all__ = ["AvisoEventTrigger", "AvisoHook", "AvisoNotifyOperator", "AvisoSensor", "AvisoTrigger",
           "asset_notifications", "aviso_notifications"]
