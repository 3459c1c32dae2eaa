"""Listener files: "when <request> do <actions>", in pyaviso 1.x's format.

```yaml
listeners:
  - event: mars
    request: {class: od, expver: 1, domain: g, stream: oper, step: [0, 6, 12]}
    triggers:            # pyaviso's word; ``actions`` is accepted too
      - type: echo
```
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .actions import ACTION_TYPES, ActionFactory
from .errors import ValidationError
from .request import Request
from .store import Notification, Store

log = logging.getLogger(__name__)
#: The entries of one listener; pyaviso calls the actions ``triggers``, ``actions`` is accepted too.
LISTENER_ENTRIES = ("event", "request", "triggers", "actions")
#: Anything called with a notification; actions of ACTION_TYPES also ``describe`` what they would do.
Action = Callable[[Notification], None]
__all__ = ["ACTION_TYPES", "ActionFactory", "Action", "Listener", "parse_listeners", "load_listener_file",
           "dispatch"]


@dataclass
class Listener:
    """One listener: the request it matches and what to do for each notification."""

    request: Request
    actions: list[tuple[str, Action]] = field(default_factory=list)


def _build_actions(index: int, specs: Any) -> list[tuple[str, Action]]:
    where = f"listeners[{index}].triggers"
    if specs is None:
        return []
    if not isinstance(specs, list):
        raise ValidationError(where, specs, "expected a list of actions such as [{type: echo}]")
    actions: list[tuple[str, Action]] = []
    for number, spec in enumerate(specs):
        if not isinstance(spec, Mapping):
            raise ValidationError(f"{where}[{number}]", spec, "expected an action such as {type: echo}")
        kind = spec.get("type")
        if not isinstance(kind, str) or kind not in ACTION_TYPES:
            raise ValidationError(f"{where}[{number}].type", kind, "supported actions: " + ", ".join(ACTION_TYPES))
        with _located(f"{where}[{number}]"):
            actions.append((kind, ACTION_TYPES[kind](spec)))
    return actions


@contextmanager
def _located(where: str) -> Iterator[None]:
    """Name the place in the file in front of the field of a ValidationError raised inside the block."""
    try:
        yield
    except ValidationError as error:
        field = where if error.field in ("request", "") else f"{where}.{error.field}"
        raise ValidationError(field, error.value, error.valid) from None


def _check_entry(index: int, entry: Any) -> None:
    if not isinstance(entry, Mapping) or "event" not in entry:
        raise ValidationError(f"listeners[{index}]", entry, "each listener needs 'event' (and 'request')")
    unknown = sorted((name for name in entry if name not in LISTENER_ENTRIES), key=str)
    if unknown:
        raise ValidationError(f"listeners[{index}].{unknown[0]}", entry[unknown[0]],
                              "a listener takes: " + ", ".join(LISTENER_ENTRIES))
    if "triggers" in entry and "actions" in entry:
        raise ValidationError(f"listeners[{index}].actions", entry["actions"],
                              "give the actions once, under 'triggers' or under 'actions'")


def parse_listeners(store: Store, document: Any, source: str = "listener file") -> list[Listener]:
    """Listeners from a parsed document (``{listeners: [...]}``)."""
    if not isinstance(document, Mapping) or not isinstance(document.get("listeners"), list):
        raise ValidationError(source, type(document).__name__, "expected 'listeners:' with a list of listeners")
    listeners = []
    for index, entry in enumerate(document["listeners"]):
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
        listeners.append(Listener(request, _build_actions(index, entry.get("triggers", entry.get("actions")))))
    if not listeners:
        raise ValidationError(source, [], "the file holds no listener")
    return listeners


def load_listener_file(store: Store, path: str | Path) -> list[Listener]:
    """Listeners from a YAML (or JSON) file; a file that does not parse is a ValidationError."""
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ValidationError("listener file", str(path), f"cannot be read ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise ValidationError("listener file", str(path), f"is not UTF-8 text ({error.reason} at byte "
                              f"{error.start})") from None
    except ValueError as error:  # a NUL character in the path
        raise ValidationError("listener file", str(path), f"cannot be read ({error})") from None
    except yaml.YAMLError as error:
        first = str(error).strip().splitlines()
        raise ValidationError("listener file", str(path), f"is not valid YAML ({' '.join(first[:3])})") from None
    except RecursionError:
        raise ValidationError("listener file", str(path), "is nested too deeply to be a listener file") from None
    return parse_listeners(store, document, str(path))


def dispatch(listeners: list[Listener], notification: Notification, *, dry_run: bool = False) -> int:
    """Run the actions of every listener whose request matches; returns how many failed.

    A failing action is logged with the notification it failed on and does not stop the others
    (actions that retry have given up by the time they raise).
    """
    failed = 0
    for listener in listeners:
        if listener.request.event != notification.event or not listener.request.matches(notification.request):
            continue
        for kind, action in listener.actions:
            if dry_run:
                print(f"[{notification.revision}] {notification.key}: {kind}: {_describe(action, notification)}",
                      flush=True)
                continue
            try:
                action(notification)
            except Exception as error:  # noqa: BLE001 - one failing action must not stop the listener
                failed += 1
                log.error("action %s failed for notification %s: %s", kind, json.dumps(notification.to_dict()),
                          error)
    return failed


def _describe(action: Action, notification: Notification) -> str:
    describe = getattr(action, "describe", None)
    if describe is None:
        return f"call {getattr(action, '__qualname__', repr(action))}(notification)"
    try:
        return str(describe(notification))
    except Exception as error:  # noqa: BLE001 - a dry run reports what would fail instead of stopping
        return f"would fail: {error}"
