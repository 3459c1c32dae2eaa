"""What a listener does with a notification: echo, log, command, post, function, ecflow, airflow.

Each action type is a factory in :data:`ACTION_TYPES` that checks its spec (one entry of a listener's
``triggers:``) when the file is loaded and returns an :class:`Action`. An action raises on failure;
the listener reports it with the notification and goes on. ``post`` and ``airflow`` retry transient
failures (connection errors, timeouts, 408/425/429/5xx) with exponential backoff before giving up;
the others run once, because running them again is not known to be harmless.

Command safety: the ``command`` text is a shell script written by the listener's author and run with
``bash -c``. Notification values never become part of that text. Each placeholder such as
``${request.date}`` or ``${location}`` is rewritten into a reference to an environment variable
(``"${AVISO_REQUEST_DATE}"``) quoted for where it stands (outside quotes, inside double quotes, inside
single quotes), and the value travels in the environment. bash expands a variable once and never
parses its value as shell syntax, so ``;``, quotes, newlines or ``$(...)`` in a value stay text.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, urlsplit

import requests

from .errors import AvisoWorkflowsError, ValidationError
from .request import MAX_TIMEOUT_SECONDS
from .store import Notification

log = logging.getLogger(__name__)
T = TypeVar("T")
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*)\}")
TOP_LEVEL = ("event", "location", "key", "revision", "json", "jsonpath")
COMMAND_TIMEOUT = 3600.0
CLOUDEVENTS_TYPE = "aviso"
CLOUDEVENTS_SOURCE = "https://aviso.ecmwf.int"
CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


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
                    raise ActionFailed(f"{what}: gave up after {attempt} attempt(s): {error}") from None
                pause = min(self.cap, self.backoff * 2 ** (attempt - 1))
                log.warning("%s failed (%s); attempt %d of %d in %.3g s", what, error, attempt + 1,
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


# -- echo, log, function -------------------------------------------------------------------------
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


# -- placeholders --------------------------------------------------------------------------------
def variable_name(placeholder: str) -> str:
    """The environment variable of a placeholder: ``request.date`` -> ``AVISO_REQUEST_DATE``."""
    return "AVISO_" + re.sub(r"[^A-Za-z0-9]", "_", placeholder).upper()


def check_placeholders(field: str, text: str) -> list[str]:
    """The placeholders in ``text``; unknown names are refused (``${HOME}`` and the like are left to the shell)."""
    names = []
    for name in PLACEHOLDER.findall(text):
        if name in TOP_LEVEL or (name.startswith("request.") and name.count(".") == 1 and len(name) > 8):
            names.append(name)
        elif "." in name:
            raise ValidationError(field, "${" + name + "}", "placeholders are ${request.FIELD}, "
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
        return _value_of(match.group(1), values) if _is_placeholder(match.group(1)) else match.group(0)

    return PLACEHOLDER.sub(one, text)


def _is_placeholder(name: str) -> bool:
    return name in TOP_LEVEL or name.startswith("request.")


def _value_of(name: str, values: Mapping[str, str]) -> str:
    if name not in values:
        fields = sorted(n[len("request."):] for n in values if n.startswith("request."))
        raise ActionFailed(f"placeholder ${{{name}}}: the notification has no such field; it has {fields}")
    return values[name]


def shell_references(script: str) -> str:
    """``script`` with each placeholder replaced by a quoted reference to its environment variable."""
    out: list[str] = []
    state, index = "", 0
    while index < len(script):
        match = PLACEHOLDER.match(script, index)
        if match and _is_placeholder(match.group(1)):
            out.append(_reference(variable_name(match.group(1)), state))
            index = match.end()
            continue
        char = script[index]
        step = 2 if char == "\\" and state != "'" else 1
        out.append(script[index:index + step])
        state = _next_quote_state(state, char)
        index += step
    return "".join(out)


def _next_quote_state(state: str, char: str) -> str:
    if state == "" and char in "'\"":
        return char
    return "" if char == state else state


def _reference(variable: str, state: str) -> str:
    if state == '"':
        return "${" + variable + "}"
    if state == "'":
        return "'\"${" + variable + "}\"'"
    return '"${' + variable + '}"'


# -- command -------------------------------------------------------------------------------------
class CommandAction:
    """Run a shell command (pyaviso's ``command`` trigger) with the notification in its environment."""

    def __init__(self, command: str, environment: Mapping[str, str], working_dir: str | None,
                 timeout: float) -> None:
        self.command = command
        self.script = shell_references(command)
        self.environment = dict(environment)
        self.working_dir = working_dir
        self.timeout = timeout
        texts = [command, *environment.values(), working_dir or ""]
        self.names = {name for text in texts for name in check_placeholders("command", text)}
        self.uses_jsonpath = "jsonpath" in self.names

    def __call__(self, notification: Notification) -> None:
        values = placeholder_values(notification)
        for name in sorted(self.names):
            _value_of(name, values)  # a field the notification lacks fails here, not as an empty variable
        with self._json_file(notification) as jsonpath:
            environment = self.child_environment(notification, jsonpath)
            completed = self._run(environment, self._directory(notification))
        _relay(completed)
        if completed.returncode != 0:
            detail = completed.stderr.decode(errors="replace").strip().splitlines()
            raise ActionFailed(f"command exited with status {completed.returncode}"
                               + (f": {detail[-1]}" if detail else ""))

    def _run(self, environment: dict[str, str], cwd: Path | None) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run(["bash", "-c", self.script], env=environment, cwd=cwd, capture_output=True,
                                  stdin=subprocess.DEVNULL, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise ActionFailed(f"command still running after {self.timeout:g} s; stopped it") from None
        except OSError as error:
            raise ActionFailed(f"command could not start: {error}") from None

    def child_environment(self, notification: Notification, jsonpath: str = "") -> dict[str, str]:
        """The process environment, the notification as AVISO_* variables, then the spec's ``environment``."""
        values = placeholder_values(notification, jsonpath)
        environment = {**os.environ, **{variable_name(name): value for name, value in values.items()}}
        environment.update({name: fill_text(text, values) for name, text in self.environment.items()})
        return environment

    def _directory(self, notification: Notification) -> Path | None:
        if self.working_dir is None:
            return None
        return _path(fill_text(self.working_dir, placeholder_values(notification)))

    @contextmanager
    def _json_file(self, notification: Notification) -> Iterator[str]:
        if not self.uses_jsonpath:
            yield ""
            return
        handle, name = tempfile.mkstemp(prefix="aviso-notification-", suffix=".json")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                json.dump(notification_data(notification), file)
            yield name
        finally:
            os.unlink(name)

    def describe(self, notification: Notification) -> str:
        values = placeholder_values(notification, "<temporary JSON file>")
        where = f" in {self._directory(notification)}" if self.working_dir else ""
        return f"run{where}: {fill_text(self.command, values)}"


def _relay(completed: subprocess.CompletedProcess[bytes]) -> None:
    if completed.stdout:
        sys.stdout.write(completed.stdout.decode(errors="replace"))
        sys.stdout.flush()
    if completed.stderr:
        sys.stderr.write(completed.stderr.decode(errors="replace"))
        sys.stderr.flush()


def command_action(spec: Mapping[str, Any]) -> CommandAction:
    """``{type: command, command: TEXT, environment: {NAME: TEXT}, working_dir: DIR, timeout: SECONDS}``."""
    _check_keys("command", spec, {"command", "environment", "working_dir", "timeout"}, ("command",))
    environment = spec.get("environment")
    environment = {} if environment is None else environment
    if not isinstance(environment, Mapping):
        raise ValidationError("command.environment", environment, "expected a mapping of NAME: value")
    for name in environment:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValidationError("command.environment", name, "variable names are letters, digits and '_'")
    variables = {name: _text(f"command.environment.{name}", value, required=False)
                 for name, value in environment.items()}
    working_dir = spec.get("working_dir")
    action = CommandAction(_text("command.command", spec["command"]), variables,
                           _text("command.working_dir", working_dir) if working_dir is not None else None,
                           _number("command.timeout", spec.get("timeout"), COMMAND_TIMEOUT))
    return action


# -- post (CloudEvents over HTTP) ----------------------------------------------------------------
class PostAction:
    """POST a CloudEvents 1.0 event in structured mode; ``data`` is the notification."""

    def __init__(self, url: str, headers: Mapping[str, str], timeout: float, event_type: str, source: str,
                 retry: Retry) -> None:
        self.url, self.headers, self.timeout = url, dict(headers), timeout
        self.event_type, self.source, self.retry = event_type, source, retry

    def event(self, notification: Notification) -> dict[str, Any]:
        """The CloudEvent; its id is the same for every try, so a receiver can drop repeats."""
        return {"specversion": "1.0", "id": f"{notification.revision}:{notification.key}", "source": self.source,
                "type": self.event_type, "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "datacontenttype": "application/json", "data": notification_data(notification)}

    def __call__(self, notification: Notification) -> None:
        body = json.dumps(self.event(notification)).encode()
        headers = {**self.headers, "Content-Type": CLOUDEVENTS_CONTENT_TYPE}
        what = f"POST {self.url}"
        self.retry.run(what, lambda: _expect_success(_send("POST", self.url, what=what, data=body, headers=headers,
                                                           timeout=self.timeout), what))

    def describe(self, notification: Notification) -> str:
        return f"POST a CloudEvent (type {self.event_type}, source {self.source}) to {self.url}"


def _expect_success(response: requests.Response, what: str) -> None:
    if not 200 <= response.status_code < 300:
        raise ActionFailed(f"{what}: HTTP {response.status_code} {_body(response)}")


def post_action(spec: Mapping[str, Any]) -> PostAction:
    """pyaviso's ``{type: post, protocol: {type: cloudevents_http, url, headers, timeout, cloudevents: {type,
    source}}}``, plus ``retries`` and ``backoff``."""
    _check_keys("post", spec, {"protocol", "retries", "backoff"}, ("protocol",))
    protocol = spec["protocol"]
    if not isinstance(protocol, Mapping) or protocol.get("type") != "cloudevents_http":
        raise ValidationError("post.protocol.type", protocol.get("type") if isinstance(protocol, Mapping) else protocol,
                              "supported: cloudevents_http")
    _check_keys("post.protocol", protocol, {"url", "headers", "timeout", "cloudevents", "cloudevent"}, ("url",))
    event = _mapping("post.protocol.cloudevents", protocol.get("cloudevents", protocol.get("cloudevent")))
    _check_keys("post.protocol.cloudevents", event, {"type", "source"})
    return PostAction(_url("post.protocol.url", protocol["url"]),
                      _headers("post.protocol.headers", protocol.get("headers")),
                      _number("post.protocol.timeout", protocol.get("timeout"), 60.0),
                      _text("post.protocol.cloudevents.type", event.get("type", CLOUDEVENTS_TYPE)),
                      _text("post.protocol.cloudevents.source", event.get("source", CLOUDEVENTS_SOURCE)),
                      Retry.from_spec("post", spec))


def _mapping(field: str, value: Any) -> Mapping[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError(field, value, "expected a mapping of names to values")
    return value


def _headers(field: str, value: Any) -> dict[str, str]:
    """HTTP headers: token names, values without line breaks or other control characters."""
    headers = {}
    for name, text in _mapping(field, value).items():
        if not isinstance(name, str) or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            raise ValidationError(field, name, "header names are letters, digits and !#$%&'*+.^_`|~-")
        header = _text(f"{field}.{name}", text, required=False)
        if re.search(r"[\x00-\x08\x0a-\x1f\x7f]", header):
            raise ValidationError(f"{field}.{name}", text, "header values may not hold control characters")
        headers[name] = header
    return headers


# -- airflow (REST API of Airflow 3) -------------------------------------------------------------
class AirflowAction:
    """Trigger a DAG run with the notification as ``conf`` through ``POST /api/v2/dags/{dag_id}/dagRuns``.

    The run id is derived from the notification, so a retried or repeated trigger finds the run already
    there (HTTP 409) and counts as done instead of starting a second run.
    """

    def __init__(self, url: str, dag_id: str, credentials: Mapping[str, str], timeout: float, retry: Retry) -> None:
        self.url, self.dag_id, self.credentials = url.rstrip("/"), dag_id, dict(credentials)
        self.timeout, self.retry = timeout, retry
        self._token: str | None = None

    def run_id(self, notification: Notification) -> str:
        """A run id that is the same whenever this notification triggers this DAG."""
        digest = hashlib.sha256(notification.key.encode()).hexdigest()[:16]
        return f"aviso__{notification.revision}__{digest}"

    def endpoint(self, notification: Notification) -> str:
        """The dagRuns URL (the dag_id may use placeholders)."""
        dag_id = fill_text(self.dag_id, placeholder_values(notification))
        return f"{self.url}/api/v2/dags/{quote(dag_id, safe='')}/dagRuns"

    def __call__(self, notification: Notification) -> None:
        url = self.endpoint(notification)
        body = {"dag_run_id": self.run_id(notification), "logical_date": None, "conf": notification_data(notification)}
        self.retry.run(f"POST {url}", lambda: self._trigger(url, body))

    def _trigger(self, url: str, body: dict[str, Any]) -> None:
        what = f"POST {url}"
        response = _send("POST", url, what=what, json=body, headers=self._headers(), timeout=self.timeout)
        if response.status_code == 401 and self._token is not None:
            self._token = None  # expired: sign in again on the next try
            raise TransientFailure(f"{what}: token refused")
        if response.status_code == 409:
            log.info("%s: run %s exists already", what, body["dag_run_id"])
            return
        _expect_success(response, what)

    def _headers(self) -> dict[str, str]:
        token = self.credentials.get("token") or self._sign_in()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _sign_in(self) -> str | None:
        if "username" not in self.credentials:
            return None
        if self._token is None:
            what = f"POST {self.url}/auth/token"
            response = _send("POST", f"{self.url}/auth/token", what=what, timeout=self.timeout,
                             json={"username": self.credentials["username"],
                                   "password": self.credentials.get("password", "")})
            _expect_success(response, what)
            self._token = str(response.json()["access_token"])
        return self._token

    def describe(self, notification: Notification) -> str:
        return f"trigger DAG run {self.run_id(notification)} with the notification as conf: POST " \
               f"{self.endpoint(notification)}"


def airflow_action(spec: Mapping[str, Any]) -> AirflowAction:
    """``{type: airflow, url, dag_id, username, password | password_env, token | token_env, timeout, retries,
    backoff}``."""
    allowed = {"url", "dag_id", "username", "password", "password_env", "token", "token_env", "timeout",
               "retries", "backoff"}
    _check_keys("airflow", spec, allowed, ("url", "dag_id"))
    dag_id = _text("airflow.dag_id", spec["dag_id"])
    check_placeholders("airflow.dag_id", dag_id)
    credentials = {name: _text(f"airflow.{name}", spec[name])
                   for name in ("username", "password", "token") if spec.get(name) not in (None, "")}
    for name in ("password", "token"):
        if spec.get(f"{name}_env") is not None:
            variable = _text(f"airflow.{name}_env", spec[f"{name}_env"])
            if variable not in os.environ:
                raise ValidationError(f"airflow.{name}_env", variable, "this environment variable is not set")
            credentials[name] = os.environ[variable]
    return AirflowAction(_url("airflow.url", spec["url"]), dag_id, credentials,
                         _number("airflow.timeout", spec.get("timeout"), 30.0), Retry.from_spec("airflow", spec))


# -- ecflow (the ecFlow bridge's actions) --------------------------------------------------------
class EcflowListenerAction:
    """Change a node on an ecFlow server: the bridge's event/meter/label/variable/complete actions."""

    def __init__(self, host: str, port: int, action: Any) -> None:
        self.host, self.port, self.action = host, port, action
        self._client: Any = None

    def __call__(self, notification: Notification) -> None:
        rendered = self.action.render(notification)
        try:
            rendered.apply(self._connect())
        except RuntimeError as error:
            self._client = None
            first = str(error).strip().splitlines()
            raise ActionFailed(f"ecFlow at {self.host}:{self.port} refused {rendered}: "
                               f"{first[0] if first else type(error).__name__}") from None

    def _connect(self) -> Any:
        if self._client is None:
            import ecflow

            self._client = ecflow.Client(self.host, str(self.port))
        return self._client

    def describe(self, notification: Notification) -> str:
        return f"ecFlow {self.host}:{self.port}: {self.action.render(notification)}"


def ecflow_action(spec: Mapping[str, Any]) -> EcflowListenerAction:
    """``{type: ecflow, host, port, event|meter|label|variable|complete: ..., node, value}``; placeholders
    ``${request.step}`` (as in commands) or ``{step}`` (as in the bridge)."""
    from .ecflow.actions import EcflowAction

    port = spec.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValidationError("ecflow.port", port, "expected the ecflow_server's port number (1 to 65535)")
    host = "localhost" if spec.get("host") is None else _text("ecflow.host", spec["host"])
    config = {name: _bridge_template(value) for name, value in spec.items() if name not in ("type", "host", "port")}
    return EcflowListenerAction(host, port, EcflowAction.from_config(config))


def _bridge_template(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    return PLACEHOLDER.sub(lambda m: "{" + m.group(1).removeprefix("request.") + "}", value)


#: Action types by name; each factory checks its spec when the listener file is loaded.
ACTION_TYPES: dict[str, ActionFactory] = {
    "echo": echo_action,
    "log": log_action,
    "command": command_action,
    "post": post_action,
    "function": function_action,
    "ecflow": ecflow_action,
    "airflow": airflow_action,
}


def build_action(spec: Mapping[str, Any]) -> Action:
    """The action of one spec such as ``{"type": "post", "protocol": {...}}``."""
    kind = spec.get("type")
    if not isinstance(kind, str) or kind not in ACTION_TYPES:
        raise ValidationError("type", kind, "supported actions: " + ", ".join(ACTION_TYPES))
    return ACTION_TYPES[kind](spec)

