"""A test double of aviso-server 0.7.1's HTTP behaviour (ecmwf/aviso-server, commit 8b99d73), written from its
source: a small ASGI app served by uvicorn on a free loopback port, in a thread of the test process.

What it imitates, and where each rule comes from (paths in aviso-server 0.7.1):

- Request bodies (``src/types/request.rs``, ``src/handlers/validation.rs``, ``src/error.rs``): top-level fields
  ``event_type``, ``identifier``, ``from_id`` (a string of digits), ``from_date``, ``payload``; anything else is
  400 ``UNKNOWN_FIELD``; both ``from_id`` and ``from_date`` is 400; ``/replay`` needs one of them. Error bodies
  are ``{code, error, message, details, request_id}``.
- Identifier handling (``src/notification/processor.rs``, ``aviso-validators/src/*.rs``): notify needs every
  schema field, refuses constraint objects, and a field the schema does not know is **500**
  ``NOTIFICATION_PROCESSING_FAILED`` (its message does not look like a validation error,
  ``src/handlers/notification_processor.rs``); other validation failures are 400. Watch/replay take constraint
  objects only on int/float/enum fields (int operands must be JSON integers), scalars elsewhere ("does not
  support constraint filters"); required fields must be present. Canonical forms: time ``0``→``0000``,
  ``12``→``1200``; expver ``1``→``0001`` (other text lower-cased); enum lower-cased; strings (class, stream,
  destination, target) kept as posted. A scalar is matched exactly against the canonical topic token; a
  scalar ``*`` is a wildcard (``src/notification/wildcard_matcher.rs``), as is an omitted optional field.
- In-memory backend (``src/notification_backend/in_memory/backend.rs``): one sequence for the process,
  from 1; the latest ``max_history_per_topic`` posts of each topic (default 1); nothing survives a restart.
- SSE (``src/sse/*.rs``, ``src/cloudevents/mod.rs``): frames ``event: NAME`` + ``data: JSON`` with no ``id:``
  line; a live-only watch starts with a ``live-notification`` ``connection_established``; a watch with
  ``from_id``/``from_date`` and a replay start with ``replay-control`` ``replay_started``, send history as
  ``replay``, then ``replay_completed``; watches go on with ``live-notification`` and ``heartbeat`` (the first at
  once, then every ``heartbeat`` seconds); every stream ends with ``connection-closing`` (``end_of_stream``,
  ``max_duration_reached``, ``server_shutdown`` when the server stops). Notifications are CloudEvents with
  ``id`` ``<event>@<sequence>``, ``type`` ``int.ecmwf.aviso.<event>``, ``time``, and ``data`` ``{identifier,
  payload}`` where ``identifier`` holds the topic's fields as strings.
- The replay cap (``src/notification_backend/jetstream/replay.rs``, JetStream only in 0.7.1): with
  ``replay_cap=N`` history stops after N notifications with a ``replay-control``
  ``notification_replay_limit_reached`` carrying ``max_allowed``.

What it leaves out: authentication and roles, ECPDS, polygon/point events (``test_polygon``), float fields,
the admin and schema-list routes beyond ``GET /api/v1/schema/{event}``, metrics, JetStream's persistence
and purge (a restart of the double stands for both: sequences start again at 1), replay batching delays,
the generic (schema-less) mode, and ``to_id``/``to_date`` (not in 0.7.1: they are refused as unknown fields).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from aviso_workflows.server import free_port

VERSION = "0.7.1"
TOP_LEVEL = ("event_type", "identifier", "from_id", "from_date", "payload")
START_SECONDS = 10.0
DAYS = [chr(c) for c in range(ord("a"), ord("z") + 1)]


def _fields(*extra: tuple[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The identifier handlers of ``configuration/config.yaml.example``'s mars event."""
    return {
        "class": {"type": "StringHandler", "max_length": 2, "required": True},
        "date": {"type": "DateHandler", "canonical_format": "%Y%m%d", "required": False},
        "domain": {"type": "EnumHandler", "values": DAYS, "required": False},
        "expver": {"type": "ExpverHandler", "default": "0001", "required": False},
        "step": {"type": "IntHandler", "range": [0, 100000], "required": False},
        "stream": {"type": "StringHandler", "max_length": None, "required": False},
        "time": {"type": "TimeHandler", "required": False},
        **dict(extra),
    }


#: ``configuration/config.yaml.example`` (0.7.1): payload rule, topic base and key order, identifier handlers.
SCHEMAS: dict[str, dict[str, Any]] = {
    "mars": {"payload": {"required": False}, "base": "mars",
             "key_order": ["class", "expver", "domain", "date", "time", "stream", "step"], "identifier": _fields()},
    "dissemination": {
        "payload": {"required": True}, "base": "diss",
        "key_order": ["destination", "target", "class", "expver", "domain", "date", "time", "stream", "step"],
        "identifier": _fields(("destination", {"type": "StringHandler", "max_length": None, "required": True}),
                              ("target", {"type": "StringHandler", "max_length": None, "required": False}))},
}


class Refused(Exception):
    """A request the server answers with an error: status, code and the message chain (first, last)."""

    def __init__(self, status: int, code: str, message: str, details: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or message


CLOSING_MESSAGES = {"server_shutdown": "Server is shutting down gracefully",
                    "max_duration_reached": "Connection reached maximum duration", "end_of_stream": "Stream completed"}
LABELS = {"INVALID_NOTIFICATION_REQUEST": "Invalid Notification Request",
          "INVALID_WATCH_REQUEST": "Invalid Watch Request", "INVALID_REPLAY_REQUEST": "Invalid Replay Request",
          "NOTIFICATION_PROCESSING_FAILED": "Notification Processing Failed"}


# -- identifier handlers (aviso-validators/src/*.rs) ------------------------------------------------------
def _scalar(name: str, value: Any, operation: str) -> str:
    """``NotificationRequest::scalar_identifier_value_as_string`` (src/types/request.rs)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if value is None:
        raise ValueError(f"Field '{name}' cannot be null")
    if isinstance(value, list):
        raise ValueError(f"Field '{name}' must be a scalar value or constraint object, got array")
    raise ValueError(f"Field '{name}' constraint object is not supported for {operation} operation")


def _time(name: str, value: str) -> str:
    """``TimeHandler::validate_and_canonicalize``: H, HH, HH:MM or HHMM → HHMM."""
    if value and len(value) <= 2 and value.isdigit():
        if int(value) > 23:
            raise ValueError(f"Field '{name}' has invalid hours: {int(value)}. Hours must be 0-23 in 24-hour format")
        return f"{int(value):02d}00"
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", value) if ":" in value else \
        re.fullmatch(r"(\d{2})(\d{2})", value) if len(value) == 4 else None
    if match is None:
        raise ValueError(f"Field '{name}' has invalid time format '{value}'. Expected: H, HH, HH:MM, or HHMM")
    hours, minutes = int(match[1]), int(match[2])
    if hours > 23 or minutes > 59:
        raise ValueError(f"Field '{name}' has invalid hours/minutes in '{value}'")
    return f"{hours:02d}{minutes:02d}"


def _date(name: str, value: str) -> tuple[str, str]:
    for pattern in ("%Y-%m-%d", "%Y%m%d", "%Y-%j"):
        try:
            return dt.datetime.strptime(value, pattern).strftime("%Y%m%d"), ""
        except ValueError:
            continue
    raise Refused(400, "", f"Failed to parse date value for field '{name}'",
                  f"Field '{name}' contains invalid date '{value}'. Expected: YYYY-MM-DD, YYYYMMDD, or YYYY-DDD")


def canonical(name: str, rule: dict[str, Any], value: str) -> str:
    """One scalar in the form the server stores and matches (raises ValueError or Refused)."""
    kind = rule["type"]
    if kind == "StringHandler":
        if not value:
            raise ValueError(f"Field '{name}' cannot be empty")
        if rule.get("max_length") is not None and len(value) > rule["max_length"]:
            raise ValueError(f"Field '{name}' exceeds maximum length of {rule['max_length']} characters, "
                             f"got: {len(value)}")
        return value
    if kind == "DateHandler":
        return _date(name, value)[0]
    if kind == "EnumHandler":
        if value.lower() not in [v.lower() for v in rule["values"]]:
            raise ValueError(f"Field '{name}' has invalid value '{value}'. Allowed: [{', '.join(rule['values'])}]")
        return value.lower()
    if kind == "ExpverHandler":
        if not value:
            if rule.get("default") is None:
                raise ValueError(f"Field '{name}' cannot be empty")
            value = rule["default"]
        return f"{int(value):04d}" if value.isdigit() else value.lower()
    if kind == "IntHandler":
        if not re.fullmatch(r"[+-]?\d+", value):
            raise ValueError(f"Field '{name}' must be a valid integer, got: '{value}'")
        number, bounds = int(value), rule.get("range")
        if bounds and not bounds[0] <= number <= bounds[1]:
            raise ValueError(f"Field '{name}' value {number} is outside allowed range [{bounds[0]}, {bounds[1]}]")
        return str(number)
    if kind == "TimeHandler":
        return _time(name, value)
    raise ValueError(f"Field '{name}': handler {kind} is not imitated")


def constraint(name: str, rule: dict[str, Any], value: dict[str, Any]) -> tuple[str, Any]:
    """``parse_int_constraint`` / ``parse_enum_constraint`` (aviso-validators/src/constraints.rs)."""
    kind = rule["type"]
    if kind not in ("IntHandler", "EnumHandler"):
        raise ValueError(f"Field '{name}' does not support constraint filters; expected scalar value")
    if len(value) != 1:
        raise ValueError(f"Field '{name}' constraint must contain exactly one operator")
    ((operator, operand),) = value.items()
    if kind == "EnumHandler":
        if operator not in ("eq", "in"):
            raise ValueError(f"Field '{name}' has invalid operator '{operator}'. Allowed for enum constraints: eq,in")
        items = operand if operator == "in" else [operand]
        if operator == "in" and (not isinstance(operand, list) or not operand):
            raise ValueError(f"Field '{name}' operator 'in' expects array of strings")
        if not all(isinstance(item, str) for item in items):
            raise ValueError(f"Field '{name}' operator '{operator}' expects string value")
        allowed = [v.lower() for v in rule["values"]]
        for item in items:
            if item.lower() not in allowed:
                raise ValueError(f"Field '{name}' has invalid enum value '{item.lower()}'. "
                                 f"Allowed: [{', '.join(allowed)}]")
        return operator, [item.lower() for item in items]
    if operator not in ("eq", "in", "gt", "gte", "lt", "lte", "between"):
        raise ValueError(f"Field '{name}' has invalid operator '{operator}'. Allowed: eq,in,gt,gte,lt,lte,between")
    items = operand if operator in ("in", "between") else [operand]
    if not isinstance(items, list) or not items:
        raise ValueError(f"Field '{name}' operator '{operator}' expects array of integers")
    if not all(isinstance(item, int) and not isinstance(item, bool) for item in items):
        raise ValueError(f"Field '{name}' operator '{operator}' expects integer value")
    if operator == "between" and (len(items) != 2 or items[0] > items[1]):
        raise ValueError(f"Field '{name}' operator 'between' expects exactly two values [min,max] with min <= max")
    bounds = rule.get("range")
    for item in items:
        if bounds and not bounds[0] <= item <= bounds[1]:
            raise ValueError(f"Field '{name}' constraint value {item} is outside allowed range "
                             f"[{bounds[0]}, {bounds[1]}]")
    return operator, items


def _satisfies(stored: str, rule: dict[str, Any], test: tuple[str, Any]) -> bool:
    operator, operand = test
    if rule["type"] == "EnumHandler":
        return stored.lower() in operand
    number = int(stored)
    return {"eq": lambda: number == operand[0], "in": lambda: number in operand,
            "gt": lambda: number > operand[0], "gte": lambda: number >= operand[0],
            "lt": lambda: number < operand[0], "lte": lambda: number <= operand[0],
            "between": lambda: operand[0] <= number <= operand[1]}[operator]()


# -- the store (src/notification_backend/in_memory/backend.rs) -----------------------------------------------
@dataclass
class Stored:
    sequence: int
    event: str
    topic: tuple[str, ...]
    identifier: dict[str, str]
    payload: str
    time: dt.datetime


@dataclass
class Filter:
    """What a watch or replay asked for: exact tokens ('*' = any) and constraints."""

    event: str
    scalars: dict[str, str]
    constraints: dict[str, tuple[str, Any]]

    def matches(self, post: Stored) -> bool:
        if post.event != self.event:
            return False
        rules = SCHEMAS[self.event]["identifier"]
        for name, token in self.scalars.items():
            if token != "*" and post.identifier.get(name) != token:
                return False
        return all(name in post.identifier and _satisfies(post.identifier[name], rules[name], test)
                   for name, test in self.constraints.items())


@dataclass
class Backend:
    max_history_per_topic: int = 1
    next_sequence: int = 1
    topics: dict[tuple[str, ...], list[Stored]] = field(default_factory=dict)
    listeners: list[asyncio.Queue[Stored]] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def store(self, event: str, identifier: dict[str, str], payload: str) -> Stored:
        schema = SCHEMAS[event]
        topic = (schema["base"], *(identifier[key] for key in schema["key_order"]))
        shown = {key: identifier[key] for key in schema["key_order"]}
        with self.lock:  # tests post from their own thread too
            post = Stored(self.next_sequence, event, topic, shown, payload, dt.datetime.now(dt.UTC))
            self.next_sequence += 1
            kept = self.topics.setdefault(topic, [])
            kept.append(post)
            del kept[:-self.max_history_per_topic]
            if self.loop is not None:
                for queue in self.listeners:
                    self.loop.call_soon_threadsafe(queue.put_nowait, post)
        return post

    def history(self, wanted: Filter, start: tuple[str, Any]) -> list[Stored]:
        with self.lock:
            posts = [post for kept in self.topics.values() for post in kept if wanted.matches(post)]
        kind, value = start
        if kind == "from_id" and value > 0:
            posts = [post for post in posts if post.sequence >= value]
        elif kind == "from_date":
            posts = [post for post in posts if post.time >= value]
        return sorted(posts, key=lambda post: post.sequence)


# -- requests --------------------------------------------------------------------------------------------
def _parse(body: bytes, code: str) -> dict[str, Any]:
    """``parse_and_validate_request`` (src/handlers/validation.rs): JSON, known fields, shape."""
    try:
        data = json.loads(body)
    except ValueError as error:
        raise Refused(400, "INVALID_JSON", f"JSON parsing failed: {error}") from None
    if isinstance(data, dict):
        for key in data:
            if key not in TOP_LEVEL:
                raise Refused(400, "UNKNOWN_FIELD", f"Request contains unknown fields: Unknown field '{key}' in "
                              f"request. Allowed fields: {list(TOP_LEVEL)}")
    if not isinstance(data, dict) or not isinstance(data.get("event_type"), str) \
            or not isinstance(data.get("identifier"), dict) \
            or any(data.get(k) is not None and not isinstance(data[k], str) for k in ("from_id", "from_date")):
        raise Refused(400, "INVALID_REQUEST_SHAPE", "Request deserialization failed: invalid type or missing field")
    if data["event_type"] not in SCHEMAS:
        raise Refused(400, "UNKNOWN_EVENT_TYPE", f"unknown event type '{data['event_type']}'")
    return data


def _from_date(text: str) -> dt.datetime:
    """``parse_from_date_flexible`` (src/types/request.rs), for the forms clients send."""
    text = text.strip()
    if re.fullmatch(r"\+?\d+", text):
        digits = text.lstrip("+")
        seconds = int(digits) / 1000 if len(digits.lstrip("0")) > 11 else int(digits)
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    for candidate in (text.replace("Z", "+00:00"), text):
        try:
            moment = dt.datetime.fromisoformat(candidate)
        except ValueError:
            continue
        return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
    raise ValueError(f"from_date must be a valid datetime/timestamp. Got: '{text}'")


def _start(data: dict[str, Any], replay: bool) -> tuple[str, Any]:
    from_id, from_date = data.get("from_id"), data.get("from_date")
    if from_id is not None and not from_id.strip():
        raise ValueError("from_id cannot be empty. Provide a valid sequence number or omit the field")
    if from_id is not None and not from_id.isdigit():
        raise ValueError(f"from_id must be a valid positive integer. Got: '{from_id}'")
    if from_id is not None and from_date is not None:
        raise ValueError("Cannot specify both from_id and from_date. Please provide only one replay parameter.")
    if from_id is not None:
        return "from_id", int(from_id)
    if from_date is not None:
        return "from_date", _from_date(from_date)
    if replay:
        raise ValueError("Replay endpoint requires either from_id or from_date parameter.")
    return "live", None


def stream_filter(data: dict[str, Any], operation: str) -> Filter:
    """``process_streaming_request`` (src/notification/processor.rs)."""
    event = data["event_type"]
    rules = SCHEMAS[event]["identifier"]
    scalars: dict[str, str] = {}
    constraints: dict[str, tuple[str, Any]] = {}
    for name, rule in rules.items():
        if name in data["identifier"]:
            value = data["identifier"][name]
            if isinstance(value, dict):
                constraints[name] = constraint(name, rule, value)
            else:
                scalars[name] = canonical(name, rule, _scalar(name, value, operation))
        elif rule.get("required"):
            raise ValueError(f"Required field '{name}' missing for {operation} operation")
    return Filter(event, scalars, constraints)


def notify_identifier(data: dict[str, Any]) -> dict[str, str]:
    """``process_notify_request``: an unknown field is a processing error (500), the rest validation (400)."""
    rules = SCHEMAS[data["event_type"]]["identifier"]
    for name in data["identifier"]:
        if name not in rules:
            raise Refused(500, "NOTIFICATION_PROCESSING_FAILED",
                          f"Unknown field '{name}' provided for notify operation")
    values: dict[str, str] = {}
    for name, rule in rules.items():
        if name not in data["identifier"]:
            raise ValueError(f"Required field '{name}' missing for notify operation")
        value = data["identifier"][name]
        if isinstance(value, dict):
            raise ValueError(f"Field '{name}' constraint object is not supported for notify operation")
        values[name] = canonical(name, rule, _scalar(name, value, "notify"))
    if SCHEMAS[data["event_type"]]["payload"]["required"] and data.get("payload") is None:
        raise ValueError("Payload is required for notify operation based on schema configuration")
    return values


# -- SSE (src/sse/*.rs, src/cloudevents/mod.rs) -----------------------------------------------------------------
def frame(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _stamp(moment: dt.datetime | None = None) -> str:
    return (moment or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


class AvisoServerDouble:
    """The app and its uvicorn server. ``stop()`` then ``start()`` is a restart on the same port: a new
    in-memory backend (sequences from 1, no history), as a new aviso-server process would have."""

    def __init__(self, *, heartbeat: float = 30.0, max_duration: float = 3600.0, replay_cap: int | None = None,
                 max_history_per_topic: int = 1) -> None:
        self.port = free_port()
        self.heartbeat, self.max_duration, self.replay_cap = heartbeat, max_duration, replay_cap
        self.max_history_per_topic = max_history_per_topic
        self.backend = Backend(max_history_per_topic)
        self.starts = 0
        self.open_streams = 0
        self._ids = itertools.count(1)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        #: Set by :meth:`stop`; every stream polls it (a thread's event: a stop may come before any stream).
        self._shutdown = threading.Event()
        self._life = threading.Lock()
        #: Raised by :meth:`kick`: live streams opened before end as if their maximum duration had passed.
        self._generation = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        """How our stores name it."""
        return f"aviso+http://127.0.0.1:{self.port}"

    # -- life ----------------------------------------------------------------------------------
    def start(self, posts: Sequence[tuple[str, dict[str, Any], Any]] = ()) -> AvisoServerDouble:
        """Start (again): a new backend; ``posts`` (event, identifier, payload) are stored before the port
        opens, so no client can see the new process without them (posts that land while a client is away)."""
        with self._life:  # after a stop begun in another thread has ended
            return self._start(posts)

    def _start(self, posts: Sequence[tuple[str, dict[str, Any], Any]]) -> AvisoServerDouble:
        self.backend = Backend(self.max_history_per_topic)
        self._shutdown = threading.Event()
        for event, identifier, payload in posts:
            self.post(event, identifier, payload)
        self.starts += 1
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off", timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"aviso-server-double:{self.port}",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_SECONDS
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the aviso-server double did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Like SIGTERM: every open stream gets ``connection-closing`` ``server_shutdown``, then the server ends."""
        with self._life:
            self._stop()

    def _stop(self) -> None:
        if self._server is None:
            return
        self._shutdown.set()
        deadline = time.monotonic() + 5
        while self.open_streams and time.monotonic() < deadline:
            time.sleep(0.02)
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._server = None

    def kick(self) -> None:
        """End every live stream now with ``connection-closing`` ``max_duration_reached`` (the server keeps its
        state): clients reconnect."""
        self._generation += 1

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> AvisoServerDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def post(self, event: str, identifier: dict[str, Any], payload: Any = None) -> Stored:
        """Store a notification directly (as another client's notify would), from the test's thread."""
        data = {"event_type": event, "identifier": identifier, "payload": payload}
        return self.backend.store(event, notify_identifier(data), json.dumps(payload))

    # -- the app ----------------------------------------------------------------------------------
    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/health", self._health, methods=["GET"]),
            Route("/api/v1/notification", self._notify, methods=["POST"]),
            Route("/api/v1/watch", self._watch, methods=["POST"]),
            Route("/api/v1/replay", self._replay, methods=["POST"]),
            Route("/api/v1/schema/{event}", self._schema, methods=["GET"]),
        ])

    def _error(self, refused: Refused, code: str) -> JSONResponse:
        code = refused.code or code
        request_id = f"double-{next(self._ids)}"
        body: dict[str, Any] = {"code": code, "error": LABELS.get(code, code), "message": refused.message,
                                "details": refused.details, "request_id": request_id}
        return JSONResponse(body, status_code=refused.status)

    async def _health(self, request: Request) -> Response:
        return Response("OK")

    async def _schema(self, request: Request) -> JSONResponse:
        event = request.path_params["event"]
        if event not in SCHEMAS:
            return JSONResponse({"status": "error", "message": f"Event type '{event}' not found",
                                 "available_types": list(SCHEMAS)}, status_code=404)
        schema = SCHEMAS[event]
        return JSONResponse({"status": "success", "event_type": event,
                             "schema": {"payload": schema["payload"], "identifier": schema["identifier"]}})

    async def _notify(self, request: Request) -> JSONResponse:
        try:
            data = _parse(await request.body(), "INVALID_NOTIFICATION_REQUEST")
            identifier = notify_identifier(data)
        except Refused as refused:
            return self._error(refused, "INVALID_NOTIFICATION_REQUEST")
        except ValueError as error:
            return self._error(Refused(400, "", str(error)), "INVALID_NOTIFICATION_REQUEST")
        payload = data.get("payload")
        self.backend.store(data["event_type"], identifier, "null" if payload is None else json.dumps(payload))
        return JSONResponse({"status": "success", "request_id": f"double-{next(self._ids)}",
                             "processed_at": _stamp()})

    async def _watch(self, request: Request) -> Response:
        return await self._stream(request, replay=False)

    async def _replay(self, request: Request) -> Response:
        return await self._stream(request, replay=True)

    async def _stream(self, request: Request, replay: bool) -> Response:
        code = "INVALID_REPLAY_REQUEST" if replay else "INVALID_WATCH_REQUEST"
        try:
            data = _parse(await request.body(), code)
            start = _start(data, replay)
            wanted = stream_filter(data, "replay" if replay else "watch")
        except Refused as refused:
            return self._error(refused, code)
        except ValueError as error:
            return self._error(Refused(400, "", str(error)), code)
        self.backend.loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Stored] = asyncio.Queue()
        if not replay:
            self.backend.listeners.append(queue)  # subscribed before history is read: nothing falls between
        return StreamingResponse(self._frames(wanted, start, replay, queue), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    def _cloud_event(self, post: Stored) -> dict[str, Any]:
        return {"specversion": "1.0", "id": f"{post.event}@{post.sequence}", "source": self.url,
                "type": f"int.ecmwf.aviso.{post.event}", "datacontenttype": "application/json",
                "dataschema": f"{self.url}/schema/{post.event}",
                "time": post.time.isoformat().replace("+00:00", "Z"),
                "data": {"identifier": dict(post.identifier),
                         "payload": None if post.payload in ("", "null") else json.loads(post.payload)}}

    async def _frames(self, wanted: Filter, start: tuple[str, Any], replay: bool,
                      queue: asyncio.Queue[Stored]) -> AsyncIterator[bytes]:
        topic = SCHEMAS[wanted.event]["base"]
        self.open_streams += 1
        reason = "end_of_stream"
        closing = ["end_of_stream"]
        try:
            if start[0] == "live":
                yield frame("live-notification", {"type": "connection_established", "topic": topic,
                                                  "timestamp": _stamp(),
                                                  "connection_will_close_in_seconds": int(self.max_duration)})
            else:
                yield frame("replay-control", {"type": "replay_started", "topic": topic,
                                               "from_sequence": start[1] if start[0] == "from_id" else None,
                                               "from_date": _stamp(start[1]) if start[0] == "from_date" else None,
                                               "batch_size": 100, "timestamp": _stamp()})
                history = self.backend.history(wanted, start)
                capped = self.replay_cap is not None and len(history) > self.replay_cap
                for post in history[:self.replay_cap] if capped else history:
                    yield frame("replay", self._cloud_event(post))
                if capped:
                    yield frame("replay-control", {
                        "type": "notification_replay_limit_reached", "topic": topic, "max_allowed": self.replay_cap,
                        "message": f"Historical replay limited to {self.replay_cap} messages. Additional historical "
                                   "messages may be available but were not retrieved.", "timestamp": _stamp()})
                yield frame("replay-control", {"type": "replay_completed", "topic": topic, "timestamp": _stamp()})
            if not replay:
                async for chunk in self._live(wanted, queue, closing):
                    yield chunk
                reason = closing[0]
            elif self._shutdown.is_set():
                reason = "server_shutdown"
            yield frame("connection-closing", {"reason": reason, "timestamp": _stamp(),
                                               "message": CLOSING_MESSAGES[reason],
                                               "topic": topic})
        finally:
            self.open_streams -= 1
            if queue in self.backend.listeners:
                self.backend.listeners.remove(queue)

    async def _live(self, wanted: Filter, queue: asyncio.Queue[Stored], closing: list[str]) -> AsyncIterator[bytes]:
        """Live notifications and heartbeats (the first at once) until shutdown or the maximum duration;
        ``closing[0]`` is then the reason."""
        shutdown = self._shutdown
        topic = SCHEMAS[wanted.event]["base"]
        deadline = time.monotonic() + self.max_duration
        next_beat = time.monotonic()
        generation = self._generation
        while True:
            now = time.monotonic()
            if shutdown.is_set():
                closing[0] = "server_shutdown"
                return
            if now >= deadline or generation != self._generation:
                closing[0] = "max_duration_reached"
                return
            if now >= next_beat:
                yield frame("heartbeat", {"timestamp": _stamp(), "topic": topic})
                next_beat = now + self.heartbeat
            try:
                post = await asyncio.wait_for(queue.get(), max(0.01, min(0.05, next_beat - now)))
            except TimeoutError:
                continue
            if wanted.matches(post):
                yield frame("live-notification", self._cloud_event(post))
