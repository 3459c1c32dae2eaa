"""The echo, log and function actions."""

from __future__ import annotations

import datetime as dt
import importlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ValidationError
from ..store import Notification
from .base import _check_keys, _path, _text, notification_data


class EchoAction:
    """Print the notification as one JSON line on standard output."""

    def __call__(self, notification: Notification) -> None:
        print(json.dumps(notification_data(notification)), flush=True)

    def describe(self, notification: Notification) -> str:
        return "print the notification as JSON"


def echo_action(spec: Mapping[str, Any]) -> EchoAction:
    """``{type: echo}``."""
    _check_keys("echo", spec, set())
    return EchoAction()


class LogAction:
    """Append one line per notification (UTC time, then the JSON) to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, notification: Notification) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(f"{stamp} {json.dumps(notification_data(notification))}\n")

    def describe(self, notification: Notification) -> str:
        return f"append a line to {self.path}"


def log_action(spec: Mapping[str, Any]) -> LogAction:
    """``{type: log, path: FILE}`` (``~`` and ``$VARS`` expanded)."""
    _check_keys("log", spec, {"path"}, ("path",))
    return LogAction(_path(_text("log.path", spec["path"])))


class FunctionAction:
    """Call a Python function with the notification's dict (pyaviso's function trigger)."""

    def __init__(self, function: Callable[[dict[str, Any]], Any]) -> None:
        self.function = function

    def __call__(self, notification: Notification) -> None:
        self.function(notification_data(notification))

    def describe(self, notification: Notification) -> str:
        name = getattr(self.function, "__qualname__", repr(self.function))
        return f"call {getattr(self.function, '__module__', '?')}:{name}(notification)"


def function_action(spec: Mapping[str, Any]) -> FunctionAction:
    """``{type: function, function: callable}`` in Python, ``function: package.module:name`` in YAML."""
    _check_keys("function", spec, {"function"}, ("function",))
    target = spec["function"]
    if callable(target):
        return FunctionAction(target)
    return FunctionAction(_import_function(_text("function.function", target)))


def _import_function(reference: str) -> Callable[[dict[str, Any]], Any]:
    module_name, _, name = reference.partition(":")
    if not module_name or not name:
        raise ValidationError("function.function", reference, "expected 'package.module:function'")
    try:
        target = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, TypeError, ValueError) as error:  # TypeError: a relative name such as ..x
        raise ValidationError("function.function", reference, f"cannot be imported ({error})") from None
    if not callable(target):
        raise ValidationError("function.function", reference, "is not callable")
    return target  # type: ignore[no-any-return]

