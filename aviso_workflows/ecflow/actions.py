"""ecFlow actions driven by notifications: set an event, a meter, a label or a variable; force complete.

An action is configured as a mapping; ``node``, ``value`` (and ``name``) may use placeholders filled
from the notification: ``{event}``, ``{key}``, ``{revision}``, ``{location}`` and any request field
(``{date}``, ``{step}``)::

    {"event": "data_ready", "node": "/consumer/fc_{date}/wait"}
    {"meter": "steps", "node": "/consumer/wait", "value": "{step}"}
    {"label": "latest", "node": "/consumer/wait", "value": "step {step} at {location}"}
    {"variable": "DATA_LOCATION", "node": "/consumer", "value": "{location}"}
    {"complete": "/consumer/wait"}

Every action sets a value rather than counting, so applying one twice leaves the same state.
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ValidationError
from ..store import Notification

log = logging.getLogger(__name__)
KINDS = ("event", "meter", "label", "variable", "complete")
NODE_PATH = re.compile(r"(/[A-Za-z0-9_.]+)+\Z")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class EcflowAction:
    """One change to a node: ``kind`` in event/meter/label/variable/complete; ``node`` and ``value`` are templates."""

    kind: str
    node: str
    name: str = ""
    value: str = ""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EcflowAction:
        """Parse ``{"meter": "steps", "node": "/s/t", "value": "{step}"}`` and the like."""
        if not isinstance(config, Mapping):
            raise ValidationError("action", config, "expected a mapping such as {event: NAME, node: /suite/task}")
        kinds = [k for k in KINDS if k in config]
        if len(kinds) != 1:
            raise ValidationError("action", dict(config), "give exactly one of " + ", ".join(KINDS))
        kind = kinds[0]
        unknown = set(config) - {kind, "node", "value"}
        if unknown:
            raise ValidationError("action", sorted(unknown, key=str)[0], "an ecFlow action takes only "
                                  f"{kind!r}, 'node' and 'value'")
        if kind == "complete":
            return cls(kind, str(config[kind])).checked()
        value = config.get("value", "set" if kind == "event" else None)
        if value is None:
            raise ValidationError(kind, dict(config), f"a {kind} action needs a 'value' (placeholders allowed)")
        return cls(kind, str(config.get("node", "")), str(config[kind]), str(value)).checked()

    def checked(self) -> EcflowAction:
        """Refuse templates that name no node or use placeholders wrongly (before any notification)."""
        if not self.node:
            raise ValidationError("node", self.node, f"a {self.kind} action needs the node's path, e.g. /suite/task")
        for text in (self.node, self.name, self.value):
            _placeholders(text)
        if self.kind == "event" and self.value not in ("set", "clear"):
            raise ValidationError("value", self.value, "an event action's value is 'set' or 'clear'")
        return self

    def render(self, notification: Notification) -> EcflowAction:
        """The action with the notification's values filled in, checked as ecFlow names and paths."""
        values = notification_values(notification)
        node = _fill(self.node, values)
        if not NODE_PATH.match(node):
            raise ValidationError("node", node, "expected an absolute ecFlow path such as /suite/family/task")
        name = _fill(self.name, values)
        if self.kind != "complete" and not NAME.match(name):
            raise ValidationError(self.kind, name, "ecFlow names are letters, digits and '_'")
        value = _fill(self.value, values)
        if self.kind == "meter" and not re.fullmatch(r"-?\d+", value):
            raise ValidationError("value", value, "a meter's value must be a whole number")
        return EcflowAction(self.kind, node, name, value)

    def apply(self, client: Any) -> None:
        """Make the change on the server through an ``ecflow.Client`` (the action must be rendered)."""
        if self.kind == "complete":
            import ecflow

            client.force_state(self.node, ecflow.State.complete)
        elif self.kind == "event":
            client.alter(self.node, "change", "event", self.name, self.value)
        elif self.kind == "variable":
            _set_variable(client, self.node, self.name, self.value)
        else:
            client.alter(self.node, "change", self.kind, self.name, self.value)

    def __str__(self) -> str:
        if self.kind == "complete":
            return f"force complete {self.node}"
        return f"{self.kind} {self.name}={self.value} on {self.node}"


def _set_variable(client: Any, node: str, name: str, value: str) -> None:
    try:
        client.alter(node, "change", "variable", name, value)
    except RuntimeError:  # not defined on that node yet
        client.alter(node, "add", "variable", name, value)


def notification_values(notification: Notification) -> dict[str, str]:
    """Placeholder values: the request fields plus event, key, revision and location."""
    return {**notification.request, "event": notification.event, "key": notification.key,
            "revision": str(notification.revision), "location": notification.location or ""}


def _placeholders(text: str) -> list[str]:
    try:
        return [name for _, name, spec, _ in string.Formatter().parse(text) if name is not None and not spec]
    except ValueError as error:
        raise ValidationError("template", text, f"bad placeholder ({error}); use {{field}}, '{{{{' for '{{'") from None


def _fill(text: str, values: Mapping[str, str]) -> str:
    missing = [name for name in _placeholders(text) if name not in values]
    if missing:
        raise ValidationError("template", text, f"placeholder {{{missing[0]}}} is not a field of the notification; "
                              "available: " + ", ".join(values))
    return text.format_map(values)


def parse_actions(configs: Iterable[Mapping[str, Any]]) -> list[EcflowAction]:
    """A list of actions from configuration."""
    return [EcflowAction.from_config(config) for config in configs]


def apply_actions(client: Any, actions: Iterable[EcflowAction], notification: Notification) -> list[str]:
    """Apply every action for ``notification``; returns what was done, one line each."""
    done = []
    for action in actions:
        rendered = action.render(notification)
        rendered.apply(client)
        done.append(str(rendered))
        log.info("%s (for %s)", rendered, notification.key)
    return done
