"""The ``aviso_workflows`` Airflow plugin: the listener that records asset watchers' stored positions."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from . import listener


class AvisoPlugin(AirflowPlugin):
    """Loaded by every Airflow component through the ``airflow.plugins`` entry point."""

    name = "aviso_workflows"
    listeners = [listener]
