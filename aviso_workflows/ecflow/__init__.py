"""ecFlow and pyflow: data-wait and notify tasks, catch-up families, and a bridge that drives a suite.

The pyflow pieces (``WaitTask``, ``NotifyTask``, ``LiteralTask``, ``notify_command``, ``catchup_family``,
``LoopbackHost``) need pyflow; the bridge and the actions need only ecFlow's Python module.
"""

from __future__ import annotations

from typing import Any

_PYFLOW_NAMES = ("WaitTask", "NotifyTask", "LiteralTask", "notify_command", "catchup_family", "LoopbackHost")

__all__ = list(_PYFLOW_NAMES)


def __getattr__(name: str) -> Any:
    if name in _PYFLOW_NAMES:
        from . import tasks

        return getattr(tasks, name)
    raise AttributeError(name)
