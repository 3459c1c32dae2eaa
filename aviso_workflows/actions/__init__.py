"""What a listener does with a notification: echo, log, command, post, function, airflow, and adapters' own.

Each action type is a factory that checks its spec (one entry of a listener's ``triggers:``) when the
file is loaded and returns an :class:`Action`. The built-in types are here; adapters add theirs through
the entry point group ``aviso_workflows.actions`` (name = type, object = factory): the ecFlow adapter
adds ``ecflow`` that way, and a factory is imported only when a listener file uses its type.

An action raises :class:`TransientFailure` for a failure that may go away (a receiver unreachable): the
listener tries it again later without moving on. Any other exception is deterministic: the listener
writes the notification to its dead-letter file and goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points
from typing import Any

from ..errors import ValidationError
from .base import (
    Action,
    ActionFactory,
    ActionFailed,
    Retry,
    TransientFailure,
    check_placeholders,
    fill_text,
    is_placeholder,
    notification_data,
    placeholder_values,
    variable_name,
)
from .command import CommandAction, command_action, shell_references
from .http import AirflowAction, PostAction, airflow_action, post_action, redacted
from .simple import EchoAction, FunctionAction, LogAction, echo_action, function_action, log_action

log = logging.getLogger(__name__)
#: The entry point group through which adapters add action types.
ENTRY_POINT_GROUP = "aviso_workflows.actions"
BUILT_IN: dict[str, ActionFactory] = {
    "echo": echo_action,
    "log": log_action,
    "command": command_action,
    "post": post_action,
    "function": function_action,
    "airflow": airflow_action,
}


class ActionTypes(Mapping[str, ActionFactory]):
    """Action types by name: the built-in ones, then those of installed adapters (loaded when first used)."""

    def __init__(self) -> None:
        self._types: dict[str, ActionFactory] = dict(BUILT_IN)
        self._added: dict[str, ActionFactory] = {}

    def _entry_points(self) -> dict[str, Any]:
        return {point.name: point for point in entry_points(group=ENTRY_POINT_GROUP) if point.name not in BUILT_IN}

    def register(self, name: str, factory: ActionFactory) -> None:
        """Add an action type in this process (tests, embedding programs); entry points do it for packages."""
        self._added[name] = factory

    def unregister(self, name: str) -> None:
        """Remove a type added with :meth:`register`."""
        self._added.pop(name, None)

    def __getitem__(self, name: str) -> ActionFactory:
        if name in self._added:
            return self._added[name]
        if name not in self._types:
            point = self._entry_points().get(name)
            if point is None:
                raise KeyError(name)
            self._types[name] = point.load()
        return self._types[name]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*BUILT_IN, *self._added, *sorted(self._entry_points())]))

    def __len__(self) -> int:
        return len(list(iter(self)))


#: Action types by name; each factory checks its spec when the listener file is loaded.
ACTION_TYPES = ActionTypes()


def build_action(spec: Mapping[str, Any]) -> Action:
    """The action of one spec such as ``{"type": "post", "protocol": {...}}``."""
    kind = spec.get("type")
    if not isinstance(kind, str) or kind not in ACTION_TYPES:
        raise ValidationError("type", kind, "supported actions: " + ", ".join(ACTION_TYPES))
    return ACTION_TYPES[kind](spec)


__all__ = ["ACTION_TYPES", "ENTRY_POINT_GROUP", "Action", "ActionFactory", "ActionFailed", "AirflowAction",
           "CommandAction", "EchoAction", "FunctionAction", "LogAction", "PostAction", "Retry", "TransientFailure",
           "airflow_action", "build_action", "check_placeholders", "command_action", "echo_action", "fill_text",
           "function_action", "is_placeholder", "log_action", "notification_data", "placeholder_values",
           "post_action", "redacted", "shell_references", "variable_name"]
