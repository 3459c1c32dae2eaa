"""Listener files ("when <request> do <triggers>", pyaviso 1.x's format) and the dispatcher that runs their triggers.

```yaml
listeners:
  - event: mars
    request: {class: od, expver: 1, domain: g, stream: oper, step: [0, 6, 12]}
    triggers:            # pyaviso's word; ``actions`` is accepted too
      - type: echo
```

Everything is checked when the file is loaded: the request, every trigger's options, and every
placeholder against the fields of the listener's event; an error names the file, the listener, the
trigger and the bad name. At run time a trigger that fails transiently (:class:`TransientFailure`: a
receiver or ecFlow server that does not answer) is tried again with backoff, the listener's position
staying where it is; any other failure writes the notification to the dead-letter file and the
listener goes on.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .actions import ACTION_TYPES, ActionFactory, TransientFailure
from .documents import read_document
from .errors import ValidationError
from .request import Request
from .store import Notification, Store

log = logging.getLogger(__name__)
#: The entries of one listener; pyaviso calls the actions ``triggers``, ``actions`` is accepted too.
LISTENER_ENTRIES = ("event", "request", "triggers", "actions")
#: Anything called with a notification; actions of ACTION_TYPES also ``describe`` what they would do.
Action = Callable[[Notification], None]
#: Longest pause between two tries of a transiently failing trigger (seconds).
MAX_BACKOFF = 30.0
#: First pause after a transient failure (seconds); doubled after each further one.
FIRST_BACKOFF = 0.5
BRIDGE_FORMAT = ("this is an ecflow-bridge file of the old format; a bridge file is a listener file now: put "
                 "'event: mars' beside 'request:' and write each action as a trigger such as {type: ecflow, "
                 "meter: steps, node: /s/t, value: '${request.step}'} (README: The ecFlow bridge)")
__all__ = ["ACTION_TYPES", "ActionFactory", "Action", "DeadLetters", "Dispatcher", "Listener", "Stopped",
           "dispatch", "load_listener_file", "parse_listeners"]


@dataclass
class Listener:
    """One listener: the request it matches and what to do for each notification."""

    request: Request
    actions: list[tuple[str, Action]] = field(default_factory=list)
    name: str = "listener"


# -- loading -------------------------------------------------------------------------------------
@contextmanager
def _located(where: str) -> Iterator[None]:
    """Name the place in the file in front of the field of a ValidationError raised inside the block."""
    try:
        yield
    except ValidationError as error:
        field = where if error.field in ("request", "") else f"{where}: {error.field}"
        raise ValidationError(field, error.value, error.valid) from None


def _check_entry(index: int, entry: Any) -> None:
    if isinstance(entry, Mapping) and "event" not in entry and isinstance(entry.get("request"), Mapping) \
            and "event" in entry["request"]:
        raise ValidationError(f"listeners[{index}]", "request: {event: ...}", BRIDGE_FORMAT)
    if not isinstance(entry, Mapping) or "event" not in entry:
        raise ValidationError(f"listeners[{index}]", entry, "each listener needs 'event' (and 'request')")
    unknown = sorted((name for name in entry if name not in LISTENER_ENTRIES), key=str)
    if unknown:
        raise ValidationError(f"listeners[{index}].{unknown[0]}", entry[unknown[0]],
                              "a listener takes: " + ", ".join(LISTENER_ENTRIES))
    if "triggers" in entry and "actions" in entry:
        raise ValidationError(f"listeners[{index}].actions", entry["actions"],
                              "give the actions once, under 'triggers' or under 'actions'")


def _build_actions(where: str, request: Request, specs: Any) -> list[tuple[str, Action]]:
    if specs is None or specs == []:
        raise ValidationError(f"{where}.triggers", specs, "a listener needs at least one trigger, such as "
                              "[{type: echo}]")
    if not isinstance(specs, list):
        raise ValidationError(f"{where}.triggers", specs, "expected a list of actions such as [{type: echo}]")
    return [_build_action(f"{where}.triggers[{number}]", request, spec) for number, spec in enumerate(specs)]


def _build_action(where: str, request: Request, spec: Any) -> tuple[str, Action]:
    if not isinstance(spec, Mapping):
        raise ValidationError(where, spec, "expected an action such as {type: echo}")
    kind = spec.get("type")
    if kind is None and any(name in spec for name in ("event", "meter", "label", "variable", "complete")):
        raise ValidationError(where, dict(spec), BRIDGE_FORMAT)
    if not isinstance(kind, str) or kind not in ACTION_TYPES:
        raise ValidationError(f"{where}.type", kind, "supported actions: " + ", ".join(ACTION_TYPES))
    with _located(f"{where} ({kind})"):
        action = ACTION_TYPES[kind](spec)
        _check_fields(request, getattr(action, "placeholders", ()))
    return kind, action


def _check_fields(request: Request, placeholders: Any) -> None:
    """Each ``${request.FIELD}`` must name a field of the listener's event (a typo fails now, not per notification)."""
    fields = request.schema.key_fields
    for name in sorted(placeholders):
        if name.startswith("request.") and name[len("request."):] not in fields:
            raise ValidationError("placeholder", "${" + name + "}", f"event {request.event!r} has the fields "
                                  + ", ".join(fields))


def parse_listeners(store: Store, document: Any, source: str = "listener file") -> list[Listener]:
    """Listeners from a parsed document (``{listeners: [...]}``); errors start with ``source``."""
    if not isinstance(document, Mapping) or not isinstance(document.get("listeners"), list):
        raise ValidationError(source, type(document).__name__, "expected 'listeners:' with a list of listeners")
    with _located(source):
        listeners = [_listener(store, index, entry) for index, entry in enumerate(document["listeners"])]
    if not listeners:
        raise ValidationError(source, [], "the file holds no listener")
    return listeners


def _listener(store: Store, index: int, entry: Any) -> Listener:
    _check_entry(index, entry)
    raw = entry.get("request")
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ValidationError(f"listeners[{index}].request", raw, "expected a mapping of fields to values")
    with _located(f"listeners[{index}]"):
        store.schema(entry["event"])
    with _located(f"listeners[{index}].request"):
        request = store.request(entry["event"], raw)
        request.status_keys()  # fields choosing where the event is stored must be given
    where = f"listeners[{index}]"
    actions = _build_actions(where, request, entry.get("triggers", entry.get("actions")))
    return Listener(request, actions, f"{where} ({request.event})")


def load_listener_file(store: Store, path: str | Path) -> list[Listener]:
    """Listeners from a YAML (or JSON) file; a file that does not parse is a ValidationError."""
    return parse_listeners(store, read_document(path, "listener file"), str(path))


# -- running -------------------------------------------------------------------------------------
class Stopped(Exception):
    """The dispatcher was asked to stop while a trigger waited for a transient failure to end."""


class DeadLetters:
    """Notifications whose trigger failed for good: one JSON line each, to list and replay."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, listener: int, trigger: int, kind: str, error: str, notification: Notification) -> None:
        """Append one entry, unless this trigger's failure on this notification is there already (a listener
        killed before its position was saved meets the notification again)."""
        if any((e["listener"], e["trigger"], e["notification"].get("key"), e["notification"].get("revision"))
               == (listener, trigger, notification.key, notification.revision) for e in self.entries()):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "listener": listener,
                 "trigger": trigger, "type": kind, "error": error, "notification": notification.to_dict()}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def entries(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def replace(self, entries: list[dict[str, Any]]) -> None:
        """Keep only ``entries`` (written to a new file, then renamed over the old one)."""
        temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text("".join(json.dumps(entry) + "\n" for entry in entries), encoding="utf-8")
        os.replace(temporary, self.path)


class Dispatcher:
    """Runs the triggers of matching listeners for each notification; never stops for a failing one.

    It holds a running listener's dispatch state: its listeners, its dead letters, the event that stops it
    and how transient failures are tried again.
    """

    def __init__(self, listeners: list[Listener], dead_letters: DeadLetters | None = None,
                 stop: threading.Event | None = None, max_backoff: float = MAX_BACKOFF,
                 report: Callable[[str], None] | None = None, transient_tries: int | None = None) -> None:
        self.listeners = listeners
        self.transient_tries = transient_tries
        self.report = report
        self.dead_letters = dead_letters
        self.stop = stop or threading.Event()
        self.max_backoff = max_backoff

    def handle(self, notification: Notification) -> int:
        """Run every matching trigger; returns how many failed for good. Raises Stopped if stopped mid-outage."""
        failed = 0
        for index, listener in enumerate(self.listeners):
            if listener.request.event != notification.event or not listener.request.matches(notification.request):
                continue
            problem = _not_canonical(listener.request, notification)
            for number, (kind, action) in enumerate(listener.actions):
                error = problem or self.run(f"{listener.name} trigger {number} ({kind})", action, notification)
                if error:
                    failed += 1
                    self._dead(index, number, kind, error, notification)
                elif self.report is not None:
                    self.report(f"[{notification.revision}] {notification.key}: {kind}: "
                                f"{_describe(action, notification)}")
        return failed

    def run(self, what: str, action: Action, notification: Notification) -> str | None:
        """Run one trigger, trying again while it fails transiently; the error text of a lasting failure."""
        started, pause = time.monotonic(), FIRST_BACKOFF
        for attempt in range(1, 1_000_000_000):  # bounded by self.stop, which every pause checks
            try:
                action(notification)
            except TransientFailure as error:
                if attempt == self.transient_tries:
                    return str(error)
                if attempt == 1:
                    log.warning("%s: %s; trying again with backoff (position kept)", what, error)
                if self.stop.wait(pause):
                    raise Stopped(what) from None
                pause = min(self.max_backoff, pause * 2)
                continue
            except Exception as error:  # noqa: BLE001 - one failing trigger must not stop the listener
                return f"{type(error).__name__}: {error}" if not str(error) else str(error)
            if attempt > 1:
                log.warning("%s: works again after %.0f s", what, time.monotonic() - started)
            return None
        return "gave up"

    def _dead(self, listener: int, trigger: int, kind: str, error: str, notification: Notification) -> None:
        where = f" (written to {self.dead_letters.path})" if self.dead_letters else ""
        log.error("action %s failed for notification %s: %s%s", kind, json.dumps(notification.to_dict()), error,
                  where)
        if self.dead_letters is not None:
            self.dead_letters.add(listener, trigger, kind, error, notification)

    def replay(self) -> tuple[int, int]:
        """Run the triggers of the dead letters again; keeps those that fail. Returns (done, still failing)."""
        assert self.dead_letters is not None
        kept: list[dict[str, Any]] = []
        entries = self.dead_letters.entries()
        for entry in entries:
            if self._replay_one(entry):
                kept.append(entry)
        self.dead_letters.replace(kept)
        return len(entries) - len(kept), len(kept)

    def _replay_one(self, entry: dict[str, Any]) -> str | None:
        notification = Notification.from_dict(entry["notification"])
        try:
            listener = self.listeners[entry["listener"]]
            kind, action = listener.actions[entry["trigger"]]
        except (IndexError, KeyError, TypeError):
            kind, action = "", None
        if action is None or kind != entry.get("type"):
            entry["error"] = "the listener file has no such trigger any more"
            return entry["error"]
        error = _not_canonical(listener.request, notification) or self.run(f"{listener.name} trigger "
                                                                           f"{entry['trigger']} ({kind})", action,
                                                                           notification)
        if error:
            entry["error"] = error
        return error


def _not_canonical(request: Request, notification: Notification) -> str | None:
    """Why the notification's fields are not what the event's schema allows, if they are not.

    A key written without this project (by hand, by another client) can hold anything; a value that is
    not the canonical form of its field (a step that is not a number) never reaches a trigger.
    """
    for name, value in notification.request.items():
        try:
            canonical = request.schema.field(name).canonical(value)
        except (ValidationError, KeyError, ValueError) as error:
            return f"field {name}: {value!r} is not valid ({error})"
        if canonical != value:
            return f"field {name}: {value!r} is not in canonical form ({canonical!r})"
    return None


def dispatch(listeners: list[Listener], notification: Notification, *, dry_run: bool = False) -> int:
    """Run the actions of every listener whose request matches; returns how many failed.

    Each trigger is tried once (a transient failure counts as failed): waiting out outages and keeping
    dead letters is the :class:`Dispatcher`'s, which ``aviso-workflows listen`` uses.
    """
    if not dry_run:
        return Dispatcher(listeners, transient_tries=1).handle(notification)
    for listener in listeners:
        if listener.request.event == notification.event and listener.request.matches(notification.request):
            for kind, action in listener.actions:
                print(f"[{notification.revision}] {notification.key}: {kind}: {_describe(action, notification)}",
                      flush=True)
    return 0


def _describe(action: Action, notification: Notification) -> str:
    describe = getattr(action, "describe", None)
    if describe is None:
        return f"call {getattr(action, '__qualname__', repr(action))}(notification)"
    try:
        return str(describe(notification))
    except Exception as error:  # noqa: BLE001 - a dry run reports what would fail instead of stopping
        return f"would fail: {error}"
