"""The ``ecflow`` action of listener files: set an event, a meter, a label or a variable; force complete.

Registered through the entry point group ``aviso_workflows.actions``; ``ecflow`` itself is imported only
when an action first talks to a server. A trigger names the server (``host``/``port``, default
``$ECF_HOST``/``$ECF_PORT`` as for ``ecflow_client``, host ``localhost``) and one change, whose
``node`` and ``value`` may use the placeholders of every action (``${request.step}``, ``${location}``)::

    - {type: ecflow, port: 3141, event: data_ready, node: "/consumer/fc_${request.date}/wait"}
    - {type: ecflow, port: 3141, meter: steps, node: /consumer/wait, value: "${request.step}"}
    - {type: ecflow, port: 3141, label: latest, node: /consumer/wait, value: "step ${request.step}"}
    - {type: ecflow, port: 3141, variable: DATA_LOCATION, node: /consumer, value: "${location}"}
    - {type: ecflow, port: 3141, complete: /consumer/wait}

Every change sets a value rather than counting, so applying one twice leaves the same state. A server
that does not answer is a transient failure (the listener waits for it); a change the server refuses
or a value that cannot apply (a meter that is not a number) is written to the dead-letter file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..actions import ActionFailed, TransientFailure, check_placeholders, fill_text, placeholder_values
from ..errors import ValidationError
from ..store import Notification

KINDS = ("event", "meter", "label", "variable", "complete")
NODE_PATH = re.compile(r"(/[A-Za-z0-9_.]+)+\Z")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: The bridge's former placeholders ({step}, {location:>10}): refused, with the replacement named.
OLD_PLACEHOLDER = re.compile(r"(?<!\$)\{([A-Za-z_][A-Za-z0-9_]*)(?:[:!][^}]*)?\}")


@dataclass(frozen=True)
class EcflowChange:
    """One change to a node: ``kind`` in event/meter/label/variable/complete; ``node`` and ``value`` are templates."""

    kind: str
    node: str
    name: str = ""
    value: str = ""

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> EcflowChange:
        kinds = [k for k in KINDS if k in spec]
        if len(kinds) != 1:
            raise ValidationError("ecflow", sorted(spec, key=str), "give exactly one of " + ", ".join(KINDS))
        kind = kinds[0]
        if kind == "complete":
            return cls(kind, _template("ecflow.complete", spec[kind])).checked()
        value = spec.get("value", "set" if kind == "event" else None)
        if value is None:
            raise ValidationError(f"ecflow.{kind}", spec[kind], f"a {kind} change needs a 'value'")
        return cls(kind, _template("ecflow.node", spec.get("node", "")), _template(f"ecflow.{kind}", spec[kind]),
                   _template("ecflow.value", value)).checked()

    def checked(self) -> EcflowChange:
        """Refuse what can never apply, before any notification."""
        if not self.node:
            raise ValidationError("ecflow.node", self.node,
                                  f"a {self.kind} change needs the node's path, e.g. /suite/task")
        if self.kind == "event" and self.value not in ("set", "clear"):
            raise ValidationError("ecflow.value", self.value, "an event's value is 'set' or 'clear'")
        if not check_placeholders("ecflow.node", self.node) and not NODE_PATH.match(self.node):
            raise ValidationError("ecflow.node", self.node, "expected an absolute ecFlow path such as /suite/task")
        if self.kind != "complete" and not check_placeholders(f"ecflow.{self.kind}", self.name) \
                and not NAME.match(self.name):
            raise ValidationError(f"ecflow.{self.kind}", self.name, "ecFlow names are letters, digits and '_'")
        return self

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(n for text in (self.node, self.name, self.value) for n in check_placeholders("ecflow", text))

    def render(self, notification: Notification) -> EcflowChange:
        """The change with the notification's values filled in, checked as ecFlow names and paths."""
        values = placeholder_values(notification)
        node, name, value = (fill_text(text, values) for text in (self.node, self.name, self.value))
        if not NODE_PATH.match(node):
            raise ActionFailed(f"node {node!r} is not an absolute ecFlow path such as /suite/family/task")
        if self.kind != "complete" and not NAME.match(name):
            raise ActionFailed(f"{self.kind} name {name!r} is not an ecFlow name (letters, digits and '_')")
        if self.kind == "meter" and not re.fullmatch(r"-?\d+", value):
            raise ActionFailed(f"meter value {value!r} is not a whole number")
        return EcflowChange(self.kind, node, name, value)

    def apply(self, client: Any) -> None:
        """Make the change through an ``ecflow.Client`` (the change must be rendered)."""
        if self.kind == "complete":
            import ecflow

            client.force_state(self.node, ecflow.State.complete)
        elif self.kind == "variable":
            try:
                client.alter(self.node, "change", "variable", self.name, self.value)
            except RuntimeError:  # not defined on that node yet
                client.alter(self.node, "add", "variable", self.name, self.value)
        else:
            client.alter(self.node, "change", self.kind, self.name, self.value)

    def __str__(self) -> str:
        if self.kind == "complete":
            return f"force complete {self.node}"
        return f"{self.kind} {self.name}={self.value} on {self.node}"


def _template(field: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValidationError(field, value, "expected text (placeholders such as ${request.step} allowed)")
    text = str(value)
    old = OLD_PLACEHOLDER.search(text)
    if old:
        name = old.group(1)
        new = "${" + (name if name in ("location", "event", "key", "revision") else f"request.{name}") + "}"
        raise ValidationError(field, text, f"placeholders are written {new}, not {old.group(0)}")
    check_placeholders(field, text)
    return text


class EcflowAction:
    """Apply one change on an ecFlow server; a server that does not answer is a transient failure."""

    def __init__(self, host: str, port: int, change: EcflowChange) -> None:
        self.host, self.port, self.change = host, port, change
        self.placeholders = change.placeholders
        self._client: Any = None

    def __call__(self, notification: Notification) -> None:
        rendered = self.change.render(notification)
        client = self._connect()
        try:
            rendered.apply(client)
        except RuntimeError as error:
            self._client = None
            reason = _first_line(error)
            if not _answers(client):
                raise TransientFailure(f"ecFlow at {self.host}:{self.port} does not answer ({reason})") from None
            raise ActionFailed(f"ecFlow at {self.host}:{self.port} refused {rendered}: {reason}") from None

    def _connect(self) -> Any:
        if self._client is None:
            import ecflow

            self._client = ecflow.Client(self.host, str(self.port))
        return self._client

    def describe(self, notification: Notification) -> str:
        return f"ecFlow {self.host}:{self.port}: {self.change.render(notification)}"


def _answers(client: Any) -> bool:
    try:
        client.ping()
    except RuntimeError:
        return False
    return True


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _port(spec: Mapping[str, Any]) -> int:
    port = spec.get("port", os.environ.get("ECF_PORT"))
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValidationError("ecflow.port", port, "expected the ecflow_server's port number (1 to 65535), "
                              "in the trigger or in $ECF_PORT")
    return port


def ecflow_action(spec: Mapping[str, Any]) -> EcflowAction:
    """``{type: ecflow, host, port, event|meter|label|variable|complete: ..., node, value}``."""
    unknown = sorted((n for n in spec if n not in (*KINDS, "type", "host", "port", "node", "value")), key=str)
    if unknown:
        raise ValidationError(f"ecflow.{unknown[0]}", spec[unknown[0]], "an ecflow action takes: host, port, "
                              "node, value and one of " + ", ".join(KINDS))
    host = spec.get("host") or os.environ.get("ECF_HOST") or "localhost"
    if not isinstance(host, str) or not re.fullmatch(r"[A-Za-z0-9_.:\-\[\]]+", host):
        raise ValidationError("ecflow.host", host, "expected a host name or address")
    return EcflowAction(host, _port(spec), EcflowChange.from_spec(spec))
