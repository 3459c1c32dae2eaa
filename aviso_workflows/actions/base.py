"""What every action shares: its errors, spec checks, retries of transient failures and placeholders.

Placeholders are pyaviso's: ``${request.FIELD}``, ``${location}``, ``${event}``, ``${key}``,
``${revision}``, ``${json}`` and ``${jsonpath}``. Each has an environment variable of the same name
(``AVISO_REQUEST_STEP``, ``AVISO_LOCATION``) that holds its value while a command runs.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import requests

from ..errors import AvisoWorkflowsError, ValidationError
from ..request import MAX_TIMEOUT_SECONDS
from ..store import Notification

log = logging.getLogger(__name__)
T = TypeVar("T")
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*)\}")
TOP_LEVEL = ("event", "location", "key", "revision", "json", "jsonpath")
COMMAND_TIMEOUT = 3600.0
CLOUDEVENTS_TYPE = "aviso"
CLOUDEVENTS_SOURCE = "https://aviso.ecmwf.int"
CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


#: Environment variables that triggers read secrets from (``password_env`` and the like): commands never see them.
SECRET_VARIABLES: set[str] = set()


class ActionFailed(AvisoWorkflowsError):
    """An action did not do its work (the message says why)."""


class TransientFailure(ActionFailed):
    """A failure that may go away if the action is tried again."""


class Action(Protocol):
    """Does something for one notification; raises when it could not."""

    def __call__(self, notification: Notification) -> None: ...

    def describe(self, notification: Notification) -> str: ...


ActionFactory = Callable[[Mapping[str, Any]], Action]


# -- spec checking -------------------------------------------------------------------------------
def _check_keys(kind: str, spec: Mapping[str, Any], allowed: set[str], required: tuple[str, ...] = ()) -> None:
    unknown = sorted((name for name in spec if name not in allowed and name != "type"), key=str)
    if unknown:
        takes = ", ".join(sorted(allowed)) if allowed else "nothing but 'type'"
        raise ValidationError(f"{kind}.{unknown[0]}", spec[unknown[0]], f"a {kind} action takes: {takes}")
    for name in required:
        if spec.get(name) in (None, ""):
            raise ValidationError(f"{kind}.{name}", spec.get(name), f"a {kind} action needs '{name}'")


def _text(field: str, value: Any, *, required: bool = True) -> str:
    """A setting written as text (numbers are read as their text); never a list, mapping, boolean or NUL."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValidationError(field, value, "expected text")
    text = str(value)
    if "\x00" in text or (required and not text.strip()):
        raise ValidationError(field, value, "expected non-empty text without NUL characters" if required
                              else "expected text without NUL characters")
    return text


def _url(field: str, value: Any) -> str:
    """An http(s) URL with a host."""
    text = _text(field, value)
    try:
        parts = urlsplit(text)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port is None or parts.port > 0)
    except ValueError:  # a port that is not a number from 0 to 65535, a broken [IPv6] host
        valid = False
    if not valid or re.search(r"[\s\x00-\x1f\x7f]", text):
        raise ValidationError(field, value, "expected an http:// or https:// URL with a host")
    return text


def _number(field: str, value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_TIMEOUT_SECONDS:
        raise ValidationError(field, value, f"expected a number of seconds from 0 to {MAX_TIMEOUT_SECONDS}")
    return float(value)


def _path(text: Any) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(str(text))))


def notification_data(notification: Notification) -> dict[str, Any]:
    """The notification as JSON-native data: pyaviso's ``event``, ``request``, ``location`` plus key, revision."""
    return notification.to_dict()


# -- retries -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Retry:
    """Try up to ``attempts`` times, waiting ``backoff`` seconds, doubled after each try, at most ``cap``."""

    attempts: int = 5
    backoff: float = 1.0
    cap: float = 60.0

    @classmethod
    def from_spec(cls, kind: str, spec: Mapping[str, Any]) -> Retry:
        """``retries`` (extra tries, default 4) and ``backoff`` (first wait, default 1 s) of an action spec."""
        retries = spec.get("retries", 4)
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
            raise ValidationError(f"{kind}.retries", retries, "expected a whole number from 0 to 100")
        return cls(retries + 1, _number(f"{kind}.backoff", spec.get("backoff"), 1.0))

    def run(self, what: str, operation: Callable[[], T]) -> T:
        """``operation()``, tried again after a TransientFailure; the last failure is raised."""
        for attempt in range(1, self.attempts + 1):
            try:
                return operation()
            except TransientFailure as error:
                if attempt == self.attempts:
                    raise TransientFailure(f"{what}: still failing after {attempt} attempt(s): {error}") from None
                pause = min(self.cap, self.backoff * 2 ** (attempt - 1))
                log.debug("%s failed (%s); attempt %d of %d in %.3g s", what, error, attempt + 1,
                            self.attempts, pause)
                time.sleep(pause)
        raise AssertionError("unreachable")


def _send(method: str, url: str, *, what: str, **options: Any) -> requests.Response:
    """One HTTP request; transport errors and retryable statuses become TransientFailure."""
    try:
        response = requests.request(method, url, **options)
    except (requests.ConnectionError, requests.Timeout) as error:
        raise TransientFailure(f"{what}: {type(error).__name__}: {error}") from None
    if response.status_code in RETRY_STATUSES:
        raise TransientFailure(f"{what}: HTTP {response.status_code} {_body(response)}")
    return response


def _body(response: requests.Response) -> str:
    return " ".join(response.text.split())[:200]

# -- placeholders --------------------------------------------------------------------------------
def variable_name(placeholder: str) -> str:
    """The environment variable of a placeholder: ``request.date`` -> ``AVISO_REQUEST_DATE``."""
    return "AVISO_" + re.sub(r"[^A-Za-z0-9]", "_", placeholder).upper()


def check_placeholders(field: str, text: str) -> list[str]:
    """The placeholders in ``text``; unknown names are refused, and so are near misses of placeholders
    (``${locaton}``); other ``${NAME}`` such as ``${HOME}`` are left to the shell."""
    names = []
    for name in PLACEHOLDER.findall(text):
        if is_placeholder(name) and name.count(".") <= 1 and name != "request.":
            names.append(name)
        elif "." in name or difflib.get_close_matches(name, TOP_LEVEL, n=1, cutoff=0.75):
            near = difflib.get_close_matches(name, TOP_LEVEL, n=1, cutoff=0.75)
            hint = f"did you mean ${{{near[0]}}}? " if near else ""
            raise ValidationError(field, "${" + name + "}", f"{hint}placeholders are ${{request.FIELD}}, "
                                  + ", ".join("${" + n + "}" for n in TOP_LEVEL))
    return names


def placeholder_values(notification: Notification, jsonpath: str = "") -> dict[str, str]:
    """Every placeholder's value for ``notification``."""
    values = {"event": notification.event, "location": notification.location or "", "key": notification.key,
              "revision": str(notification.revision), "json": json.dumps(notification_data(notification)),
              "jsonpath": jsonpath}
    values.update({f"request.{name}": str(value) for name, value in notification.request.items()})
    return values


def fill_text(text: str, values: Mapping[str, str]) -> str:
    """Substitute known placeholders as plain text (for values that no shell reads)."""

    def one(match: re.Match[str]) -> str:
        return _value_of(match.group(1), values) if is_placeholder(match.group(1)) else match.group(0)

    return PLACEHOLDER.sub(one, text)


def is_placeholder(name: str) -> bool:
    """True for the names this project fills: the top-level ones and ``request.FIELD``."""
    return name in TOP_LEVEL or name.startswith("request.")


def _value_of(name: str, values: Mapping[str, str]) -> str:
    if name not in values:
        fields = sorted(n[len("request."):] for n in values if n.startswith("request."))
        raise ActionFailed(f"placeholder ${{{name}}}: the notification has no such field; it has {fields}")
    return values[name]

