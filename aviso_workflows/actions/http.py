"""Actions over HTTP: ``post`` (a CloudEvent, pyaviso's post trigger) and ``airflow`` (a DAG run).

URLs are shown and logged without their user information (``https://user:secret@host`` as
``https://host``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import requests

from ..errors import ValidationError
from ..store import Notification
from .base import (
    CLOUDEVENTS_CONTENT_TYPE,
    CLOUDEVENTS_SOURCE,
    CLOUDEVENTS_TYPE,
    SECRET_VARIABLES,
    ActionFailed,
    Retry,
    TransientFailure,
    _body,
    _check_keys,
    _number,
    _send,
    _text,
    _url,
    check_placeholders,
    fill_text,
    notification_data,
    placeholder_values,
)

log = logging.getLogger(__name__)


def redacted(url: str) -> str:
    """``url`` without user name and password, for messages and logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


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
        what = f"POST {redacted(self.url)}"
        self.retry.run(what, lambda: _expect_success(_send("POST", self.url, what=what, data=body, headers=headers,
                                                           timeout=self.timeout), what))

    def describe(self, notification: Notification) -> str:
        return f"POST a CloudEvent (type {self.event_type}, source {self.source}) to {redacted(self.url)}"


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
        #: Runs this action started, and triggers Airflow refused because the run existed (a repeat).
        self.started = 0
        self.refused = 0

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
        started = self.retry.run(f"POST {redacted(url)}", lambda: self._trigger(url, body))
        dag_id = unquote(url.rsplit("/", 2)[-2])
        if started:
            self.started += 1
            log.info("airflow: started DAG %s run %s for [%d] %s", dag_id, body["dag_run_id"], notification.revision,
                     notification.key)
        else:
            self.refused += 1
            log.info("airflow: DAG %s run %s exists already: repeat of [%d] %s refused, no second run", dag_id,
                     body["dag_run_id"], notification.revision, notification.key)

    def _trigger(self, url: str, body: dict[str, Any]) -> bool:
        """True if the run was started, False if Airflow refused it as existing already."""
        what = f"POST {redacted(url)}"
        response = _send("POST", url, what=what, json=body, headers=self._headers(), timeout=self.timeout)
        if response.status_code == 401 and self._token is not None:
            self._token = None  # expired: sign in again on the next try
            raise TransientFailure(f"{what}: token refused")
        if response.status_code == 409:
            return False
        _expect_success(response, what)
        return True

    def summary(self) -> str:
        """What the action did, for the listener's summary."""
        return f"{self.started} DAG run(s) started, {self.refused} repeat(s) refused"

    def _headers(self) -> dict[str, str]:
        token = self.credentials.get("token") or self._sign_in()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _sign_in(self) -> str | None:
        if "username" not in self.credentials:
            return None
        if self._token is None:
            what = f"POST {redacted(self.url)}/auth/token"
            response = _send("POST", f"{self.url}/auth/token", what=what, timeout=self.timeout,
                             json={"username": self.credentials["username"],
                                   "password": self.credentials.get("password", "")})
            _expect_success(response, what)
            self._token = str(response.json()["access_token"])
        return self._token

    def describe(self, notification: Notification) -> str:
        return f"trigger DAG run {self.run_id(notification)} with the notification as conf: POST " \
               f"{redacted(self.endpoint(notification))}"


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
            SECRET_VARIABLES.add(variable)
    return AirflowAction(_url("airflow.url", spec["url"]), dag_id, credentials,
                         _number("airflow.timeout", spec.get("timeout"), 30.0), Retry.from_spec("airflow", spec))

