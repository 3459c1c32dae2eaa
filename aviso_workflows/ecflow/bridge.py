"""The ecFlow bridge: a long-running listener that turns notifications into changes on an ecFlow server.

Configuration (YAML)::

    cursor: consumer-bridge            # name of the saved position (default: ecflow-bridge-PORT)
    listeners:
      - request: {event: mars, class: od, expver: 1, domain: g, date: 20261122, time: 0, stream: oper}
        actions:
          - {meter: steps, node: /consumer/wait, value: "{step}"}
          - {event: ready, node: /consumer/step_{step}}

After each notification's actions the bridge saves its position; a restarted bridge resumes after
the last notification it handled, so none is missed and they are applied in the order they were
posted. A stop (SIGTERM, Ctrl-C) lets the notification in hand finish first, so none is applied
twice. A bridge killed outright (SIGKILL, a crash) between a notification's actions and the saving
of its position applies that one notification again when it restarts; the actions set values, so
the state they leave is the same. If the ecFlow server cannot be reached the bridge exits without
moving its position, and the next start applies that notification again.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import AvisoWorkflowsError, ValidationError
from ..listen import Cursor, Position, listen, start_position
from ..request import Request
from ..store import Notification, Store
from .actions import EcflowAction, apply_actions, parse_actions

log = logging.getLogger(__name__)


class BridgeError(AvisoWorkflowsError):
    """The bridge cannot go on (the ecFlow server is unreachable)."""


@dataclass(frozen=True)
class BridgeListener:
    """A request and the ecFlow actions to take for each of its notifications."""

    request: Request
    actions: list[EcflowAction]


@dataclass(frozen=True)
class BridgeConfig:
    """The listeners and the cursor name of one bridge."""

    listeners: list[BridgeListener]
    cursor: str | None = None


def load_config(store: Store, path: str | Path) -> BridgeConfig:
    """Read and validate a bridge configuration file (every request and action checked before starting)."""
    try:
        document = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise ValidationError("config", str(path), f"cannot be read ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise ValidationError("config", str(path), f"is not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(document, dict) or not isinstance(document.get("listeners"), list) or not document["listeners"]:
        raise ValidationError("config", str(path), "expected 'listeners:' with a list of {request:, actions:}")
    listeners = [_listener(store, entry, number) for number, entry in enumerate(document["listeners"], 1)]
    cursor = document.get("cursor")
    return BridgeConfig(listeners, str(cursor) if cursor is not None else None)


def _listener(store: Store, entry: Any, number: int) -> BridgeListener:
    if not isinstance(entry, dict) or "request" not in entry or not entry.get("actions"):
        raise ValidationError(f"listeners[{number}]", entry, "expected {request: {...}, actions: [...]}")
    request = store.request(entry["request"])
    request.status_keys()  # the fields that choose where keys live must be given
    return BridgeListener(request, parse_actions(entry["actions"]))


class Bridge:
    """Applies the configured actions on ``client`` for every notification, in store order."""

    def __init__(self, store: Store, config: BridgeConfig, client: Any, cursor: Cursor,
                 report: Callable[[str], None] = print) -> None:
        self.store = store
        self.config = config
        self.client = client
        self.cursor = cursor
        self.report = report
        self.stop = threading.Event()

    def start_position(self) -> Position:
        """Where to resume: the saved position, or now (saved at once, so a first run that stops misses nothing)."""
        return start_position(self.store, None, self.cursor)

    def notifications(self) -> Iterator[Notification]:
        """Matching notifications after the start position until :attr:`stop` is set."""
        requests = [listener.request for listener in self.config.listeners]
        return listen(self.store, requests, after=self.start_position(), stop=self.stop)

    def run(self) -> int:
        """Handle notifications until stopped; returns how many were handled."""
        handled = 0
        for notification in self.notifications():
            self.handle(notification)
            self.cursor.save(Position(notification.revision, notification.key))
            handled += 1
            if self.stop.is_set():
                break
        return handled

    def handle(self, notification: Notification) -> None:
        """Apply the actions of every listener whose request matches the notification."""
        for listener in self.config.listeners:
            if listener.request.match_key(notification.key) is None:
                continue
            for action in listener.actions:
                self._apply(action, notification)

    def _apply(self, action: EcflowAction, notification: Notification) -> None:
        try:
            for line in apply_actions(self.client, [action], notification):
                self.report(f"[{notification.revision}] {notification.key}: {line}")
        except ValidationError as error:
            self.report(f"[{notification.revision}] {notification.key}: skipped {action.kind} action: {error}")
        except RuntimeError as error:
            self._check_server(error)
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            self.report(f"[{notification.revision}] {notification.key}: ecFlow refused {action}: {first}")

    def _check_server(self, error: RuntimeError) -> None:
        try:
            self.client.ping()
        except RuntimeError:
            raise BridgeError(f"the ecFlow server is unreachable ({str(error).strip().splitlines()[0]}); "
                              "stopping without moving the cursor") from None


def stop_on_signals(bridge: Bridge) -> None:
    """SIGTERM and SIGINT let the current notification finish, then the bridge stops."""
    def handler(signum: int, frame: Any) -> None:
        log.info("signal %s: stopping after the current notification", signum)
        bridge.stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
