"""The Aviso 2 source: an aviso-server (HTTP + server-sent events) as the store, instead of etcd.

A store whose endpoints are ``aviso+http://HOST:PORT`` or ``aviso+https://HOST`` talks to an aviso-server:
notify posts to ``/api/v1/notification``; waits and listeners open ``/api/v1/watch`` with ``from_id`` or
``from_date`` (the server replays history, then goes on live in the same stream, so nothing falls between
the two); reads are finite ``/api/v1/replay`` streams.

Each notification the server sends (a CloudEvent with ``id`` ``<event>@<sequence>``, ``data.identifier``
and ``data.payload``) is turned into the key our layout gives its identifier, at revision = the server's
sequence, and handed to the same :class:`~aviso_workflows.follow.Follower` that follows etcd: matching,
ordering, positions and cursors exist once. A position's revision is a sequence; resuming after sequence
``s`` asks for ``from_id = s + 1`` (or ``s`` when the position is inside it; the follower drops what it has
seen).

A stream that ends (``max_duration_reached``, ``server_shutdown``, a dropped connection, or silence for
longer than a few heartbeat intervals) is opened again after the last sequence seen, with a bounded
pause. A replay cut short by the server's cap (``notification_replay_limit_reached``) is an error that
says so: skipping the rest would be a silent gap.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import socket
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import httpx
from httpx_sse import SSEError, connect_sse

from .errors import PermissionDenied, StoreError, StoreUnavailable, ValidationError
from .etcd import KeyValue
from .follow import Feed, FeedKind
from .notification import NO_PAYLOAD, Notification, in_order, notification_from_kv
from .position import Position
from .request import Request
from .watch import Channel, one_line

if TYPE_CHECKING:
    from .config import StoreConfig

log = logging.getLogger(__name__)

#: Endpoint schemes that select an aviso-server, and the plain scheme each stands for.
SCHEMES = {"aviso+http": "http", "aviso+https": "https"}
API = "/api/v1"
#: The server's default heartbeat period (``sse_heartbeat_interval_sec``) until a stream shows its own.
DEFAULT_HEARTBEAT_SECONDS = 30.0
#: A stream silent for this many heartbeat periods is taken as cut and opened again.
SILENT_HEARTBEATS = 3
#: Pauses before opening a stream again after a failure (the last one repeats): bounded backoff.
RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
#: Tries of a notify whose connection could not be opened (nothing was sent, so a retry cannot post twice).
NOTIFY_CONNECT_TRIES = 4
#: The key of a position that stands for "every post from this UTC time on" (before the first sequence).
SINCE_MARK = "@from_date="
DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
#: Sequences whose server time a source remembers for the cursor (a listener's position trails the stream by
#: what its follower holds, at most its capacity).
POSTED_KEPT = 20_000


# -- errors ----------------------------------------------------------------------------------------
class AvisoServerError(StoreError):
    """The aviso-server refused a request: carries its ``code`` and ``status``."""

    def __init__(self, message: str, code: str = "", status: int = 0) -> None:
        self.code = code
        self.status = status
        super().__init__(message)


class AvisoUnavailable(AvisoServerError, StoreUnavailable):
    """The aviso-server could not be reached or failed (5xx): waits and listeners try again."""


class AvisoRefused(AvisoServerError, PermissionDenied):
    """The aviso-server refused the credentials (401) or the user's roles (403)."""


class ReplayLimitReached(StoreError):
    """The server stopped a replay at its cap: later history exists that was not delivered."""


# -- endpoints and positions ---------------------------------------------------------------------------
def is_aviso_endpoint(endpoint: str) -> bool:
    """True for ``aviso+http://...`` and ``aviso+https://...``."""
    return str(endpoint).strip().lower().split("://", 1)[0] in SCHEMES


def http_url(endpoint: str) -> str:
    """``aviso+https://host/prefix`` → ``https://host/prefix`` (the base of the API's paths)."""
    scheme, rest = endpoint.split("://", 1)
    return f"{SCHEMES[scheme.lower()]}://{rest}".rstrip("/")


def since(moment: dt.datetime) -> Position:
    """The position of "every post from ``moment`` (UTC) on", before any sequence."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return Position(0, SINCE_MARK + moment.strftime(DATE_FORMAT))


def since_of(position: Position) -> str | None:
    """The ``from_date`` of a position made by :func:`since`, else None."""
    if position.revision == 0 and position.key.startswith(SINCE_MARK):
        return position.key[len(SINCE_MARK):]
    return None


def now_position() -> Position:
    """Now, for a listener that starts now: the current second (the server's ``from_date`` has seconds).

    Posts of that same second before the start may be delivered too; client and server clocks should
    agree (NTP).
    """
    return since(dt.datetime.now(dt.UTC))


def start_of(position: Position) -> dict[str, str]:
    """The ``from_id``/``from_date`` of a stream that delivers every post after ``position``."""
    date = since_of(position)
    if date is not None:
        return {"from_date": date}
    return {"from_id": str(max(position.resume_revision, 1))}


def wait_start(request: Request, lookback_hours: float) -> Position:
    """Where a wait's replay starts: the earliest date of the request at 00:00 UTC (a notification for a
    date is posted on or after it) less ``lookback_hours``, never later than now; without a date field,
    the start of the server's retained history."""
    dates = [value for name, values in request.values.items() if request.schema.field(name).kind == "date"
             for value in values]
    if not dates:
        return Position(0)
    earliest = dt.datetime.strptime(min(dates), "%Y%m%d") - dt.timedelta(hours=lookback_hours)
    return since(min(earliest, dt.datetime.now(dt.UTC).replace(tzinfo=None)))


# -- requests to the server --------------------------------------------------------------------------
#: aviso-server's identifier handler for each of our field kinds, used when the server does not publish the
#: event's schema (``GET /api/v1/schema/{event}``). As in its ``configuration/config.yaml.example`` (0.7.1),
#: our enum fields (class, stream) may be free strings there, which keep their case and take no constraint.
FALLBACK_HANDLERS = {"int": "IntHandler", "date": "DateHandler", "time": "TimeHandler", "expver": "ExpverHandler",
                     "enum": "StringHandler", "string": "StringHandler"}
#: Handlers that take ``{"in": [...]}`` / ``{"between": [...]}`` objects (aviso-validators/src/constraints.rs).
NUMERIC_HANDLERS = ("IntHandler", "FloatHandler")


def identifier_filter(requests: Sequence[Request],
                      handlers: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[str, dict[str, Any]]:
    """The event and one ``identifier`` that covers every request, in forms aviso-server 0.7.1 accepts for
    each field's handler (``handlers``: the server's ``identifier`` schema; None: :data:`FALLBACK_HANDLERS`).

    The server filters a field only where it can say exactly what the requests ask: one value of any
    handler but a free string (those keep their case as posted and are compared exactly, so ``SCL`` would
    miss a post of ``scl``); several values of an int field as ``{"in": [numbers]}`` (a whole run as
    ``{"between": [first, last]}``), of an enum field as ``{"in": [names]}``. Anything else (several dates,
    times or expvers, any free string) is left open — ``"*"`` where the server requires the field — and the
    follower matches it on our side, where our canonical forms make the comparison ignore case as our
    schema says. The server never sees a filter it would refuse.
    """
    events = sorted({request.event for request in requests})
    if len(events) != 1:
        raise ValidationError("request", events, "an aviso-server listener follows one event's sequence; "
                              "run one listener per event")
    schema = requests[0].schema
    if handlers is None:
        handlers = {name: {"type": FALLBACK_HANDLERS.get(schema.field(name).kind, "StringHandler")}
                    for name in schema.key_fields}
    identifier: dict[str, Any] = {}
    for name, rule in handlers.items():
        values = _requested(requests, name) if name in schema.key_fields else None
        chosen = _server_form(rule, values) if values else None
        if chosen is None and rule.get("required"):
            if rule.get("type") != "StringHandler":
                raise ValidationError(name, values or "(any)", f"aviso-server requires one value of {name} in "
                                      "a watch; give exactly one (or run one listener per value)")
            chosen = "*"  # a required free string: the server's wildcard token (wildcard_matcher.rs)
        if chosen is not None:
            identifier[name] = chosen
    return events[0], identifier


def _requested(requests: Sequence[Request], name: str) -> list[str] | None:
    """Every value the requests ask of ``name`` (our canonical forms), or None if one leaves it open."""
    if any(name not in request.values for request in requests):
        return None
    return sorted({v for request in requests for v in request.values[name]},
                  key=lambda v: (len(v), v) if v.isdigit() else (0, v))


def _server_form(rule: Mapping[str, Any], values: list[str]) -> Any:
    """The filter of one field in a form its handler accepts, or None to leave it to our side."""
    kind = rule.get("type")
    if kind in NUMERIC_HANDLERS and all(v.lstrip("-").isdigit() for v in values):
        numbers = sorted(int(v) for v in values)
        if len(numbers) == 1:
            return str(numbers[0])
        if len(numbers) > 2 and numbers == list(range(numbers[0], numbers[-1] + 1)):
            return {"between": [numbers[0], numbers[-1]]}
        return {"in": numbers}
    if kind == "EnumHandler":
        allowed = {str(v).lower() for v in rule.get("values") or ()}
        names = [v.lower() for v in values]
        if not all(name in allowed for name in names):
            return None  # a value the server does not know cannot be posted there: match on our side
        return names[0] if len(names) == 1 else {"in": names}
    if len(values) != 1:
        return None
    if kind == "TimeHandler" and values[0].isdigit():
        return f"{int(values[0]):02d}00"  # the server's canonical HHMM (time.rs)
    if kind in ("DateHandler", "ExpverHandler"):
        return values[0]
    return None  # StringHandler keeps case; a handler we do not know: both matched on our side


def is_notification(data: Mapping[str, Any]) -> bool:
    """A CloudEvent (its ``type`` is ``int.ecmwf.aviso.<event>``), not a control event sharing its SSE name
    (``connection_established`` comes as a ``live-notification``)."""
    return "id" in data and "data" in data and str(data.get("type", "")).startswith("int.ecmwf.aviso.")


@dataclass(frozen=True)
class Received:
    """One notification as the server sent it."""

    sequence: int
    event: str
    identifier: Mapping[str, Any]
    payload: Any
    time: str | None


def received(data: Mapping[str, Any]) -> Received:
    """A CloudEvent's sequence (from ``id`` ``<event>@<sequence>``, or its ``sequence``), event and data."""
    text = str(data.get("id", ""))
    event, _, number = text.rpartition("@")
    sequence = data.get("sequence", number)
    body = data.get("data") or {}
    kind = str(data.get("type", ""))
    return Received(int(sequence), event or kind.rsplit(".", 1)[-1], dict(body.get("identifier") or {}),
                    body.get("payload"), data.get("time"))


def posted_at(notice: Received) -> dt.datetime | None:
    """The server's time of a notification (UTC, naive), or None if it has none that parses."""
    return server_time(notice.time)


def server_time(text: str | None) -> dt.datetime | None:
    """A time as the server writes it (RFC 3339), UTC and naive; None if there is none that parses."""
    if not text:
        return None
    try:
        posted = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return posted.astimezone(dt.UTC).replace(tzinfo=None) if posted.tzinfo is not None else posted


def key_value(request: Request, notice: Received) -> KeyValue | None:
    """The key our layout gives the notification (at revision = its sequence), or None if its identifier
    does not fit the event's schema (a WARNING says so)."""
    schema = request.schema
    try:
        values = {name: schema.field(name).canonical(notice.identifier[name]) for name in schema.key_fields}
    except (KeyError, ValidationError) as error:
        log.warning("skipping %s@%d: its identifier %s does not fit event %r (%s)", notice.event, notice.sequence,
                    json.dumps(dict(notice.identifier))[:300], schema.name, one_line(error))
        return None
    payload = notice.payload
    value = NO_PAYLOAD if payload is None else payload if isinstance(payload, str) else json.dumps(payload)
    return KeyValue(schema.format_key(values), value, notice.sequence, version=1)


def _refusal(response: httpx.Response, what: str) -> AvisoServerError:
    """The server's error answer as our error, with its code and message (never the request's headers)."""
    try:
        body = json.loads(response.read() or b"{}")
    except (ValueError, httpx.HTTPError):
        body = {}
    if not isinstance(body, dict):
        body = {}
    code = str(body.get("code") or f"HTTP {response.status_code}")
    message = str(body.get("message") or response.reason_phrase or "no message")
    details = body.get("details")
    text = f"aviso-server refused {what}: {code}: {message}"
    if details and details != message:
        text += f" ({details})"
    if body.get("request_id"):
        text += f" [request {body['request_id']}]"
    return _refusal_kind(response.status_code, body.get("code"))(text, code, response.status_code)


#: 5xx codes of aviso-server (src/error.rs, src/routes/streaming.rs) that a later try may not meet: its
#: backend failed to store or to open the stream, or a service it asks is away.
TRANSIENT_CODES = frozenset({"NOTIFICATION_STORAGE_FAILED", "SSE_STREAM_INITIALIZATION_FAILED", "SERVICE_UNAVAILABLE"})


def _refusal_kind(status: int, code: Any) -> type[AvisoServerError]:
    """401/403: credentials; 429, 502–504, a transient code or a 5xx without the server's JSON body (a proxy):
    unavailable, try again; any other answer, 5xx included (0.7.1 answers a notify with a field its schema
    does not know with 500 ``NOTIFICATION_PROCESSING_FAILED``): refused, the same request would fail again."""
    if status in (401, 403):
        return AvisoRefused
    if status == 429 or status in (502, 503, 504) or (status >= 500 and (not code or code in TRANSIENT_CODES)):
        return AvisoUnavailable
    return AvisoServerError


class AvisoClient:
    """The HTTP side of one store's aviso-server: base URL, credentials, TLS, timeouts."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.bases = [http_url(endpoint) for endpoint in config.endpoints]
        self._next = 0
        self._local = threading.local()
        self._handlers: dict[str, Mapping[str, Any] | None] = {}

    @property
    def base(self) -> str:
        """The endpoint in use (the next one after a failure to connect)."""
        return self.bases[self._next % len(self.bases)]

    def failed_over(self) -> None:
        """Use the next endpoint from now on."""
        self._next += 1

    def headers(self) -> dict[str, str]:
        """Headers of every request: the configured ones and the credentials (Basic or Bearer)."""
        config = self.config
        headers = dict(config.headers)
        if config.username:
            pair = f"{config.username}:{config.password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        elif config.token is not None:
            headers["Authorization"] = f"Bearer {config.token}"
        else:
            headers.update(self.config.auth_headers)
        return headers

    def client(self) -> httpx.Client:
        """This thread's HTTP client (connections kept alive between requests)."""
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            config = self.config
            cert: str | tuple[str, str] | None = config.client_cert
            if config.client_cert and config.client_key:
                cert = (config.client_cert, config.client_key)
            client = httpx.Client(headers=self.headers(), verify=config.ca_cert or True, cert=cert,
                                  timeout=config.timeout, trust_env=True)
            self._local.client = client
        return client

    def handlers(self, event: str) -> Mapping[str, Mapping[str, Any]] | None:
        """The server's identifier handlers of ``event`` (``GET /api/v1/schema/{event}``, read once), or None
        if it publishes none (404, or an answer without them): then :data:`FALLBACK_HANDLERS` stand in."""
        if event in self._handlers:
            return self._handlers[event]
        try:
            response = self.client().get(f"{self.base}{API}/schema/{event}")
        except httpx.HTTPError as error:
            raise AvisoUnavailable(f"aviso-server at {self.base} cannot be reached: {one_line(error)}") from None
        if response.status_code >= 500 or response.status_code in (401, 403, 429):
            raise _refusal(response, f"the schema of {event}")
        found: Mapping[str, Mapping[str, Any]] | None = None
        if response.status_code == 200:
            try:
                identifier = (response.json().get("schema") or {}).get("identifier")
            except (ValueError, AttributeError):
                identifier = None
            if isinstance(identifier, dict) and all(isinstance(rule, dict) for rule in identifier.values()):
                found = identifier
        self._handlers[event] = found
        return found

    def identifier(self, requests: Sequence[Request]) -> tuple[str, dict[str, Any]]:
        """The event and the server-side filter of ``requests`` (see :func:`identifier_filter`)."""
        return identifier_filter(requests, self.handlers(requests[0].event))

    def health(self) -> None:
        """Reach the server's ``/health`` (raises AvisoUnavailable or the server's refusal)."""
        try:
            response = self.client().get(f"{self.base}/health")
        except httpx.HTTPError as error:
            raise AvisoUnavailable(f"aviso-server at {self.base} cannot be reached: {one_line(error)}") from None
        if response.status_code >= 400:
            raise _refusal(response, "health")

    # -- notify ------------------------------------------------------------------------------
    def notify(self, event: str, identifier: Mapping[str, str], payload: str | None) -> dict[str, Any]:
        """POST one notification; returns the server's answer. Only a connection that could not be opened
        is tried again (nothing was sent)."""
        body = {"event_type": event, "identifier": dict(identifier), "payload": payload}
        for attempt in range(NOTIFY_CONNECT_TRIES):
            try:
                response = self.client().post(f"{self.base}{API}/notification", json=body)
                break
            except httpx.ConnectError as error:
                if attempt + 1 == NOTIFY_CONNECT_TRIES:
                    raise AvisoUnavailable(f"aviso-server at {self.base} cannot be reached: {one_line(error)}") \
                        from None
                self.failed_over()
                time.sleep(RETRY_DELAYS[attempt])
            except httpx.HTTPError as error:  # sent, answer lost: trying again could post twice
                raise AvisoUnavailable(f"notify to {self.base} failed, it may or may not have been posted: "
                                       f"{one_line(error)}") from None
        if response.status_code >= 400:
            raise _refusal(response, f"notification {event} {dict(identifier)}")
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        return answer if isinstance(answer, dict) else {}

    # -- streams -------------------------------------------------------------------------------
    def events(self, path: str, body: Mapping[str, Any], silence: float,
               opened: list[httpx.Response] | None = None) -> Iterator[tuple[str, Any]]:
        """The events of one SSE stream as ``(event, data)``; ``silence`` seconds without a byte raise
        ``httpx.ReadTimeout``. ``opened`` receives the response, so another thread can close it."""
        timeout = httpx.Timeout(self.config.timeout, read=silence)
        with connect_sse(self.client(), "POST", f"{self.base}{API}/{path}", json=dict(body),
                         timeout=timeout) as source:
            response = source.response
            if response.status_code >= 400:
                raise _refusal(response, f"{path} {json.dumps(dict(body))[:300]}")
            if opened is not None:
                opened.append(response)
            for sse in source.iter_sse():
                try:
                    data = json.loads(sse.data) if sse.data else {}
                except ValueError:
                    log.warning("aviso-server sent a %s event that is not JSON: %.200s", sse.event, sse.data)
                    continue
                yield sse.event, data


# -- following a stream -------------------------------------------------------------------------------
class StreamState:
    """Where one followed stream stands: what to ask for when it is opened again, how to tell that the server's
    sequence started again, and how long silence lasts.

    After a notification has been seen, a stream is opened again from the server time of the last one
    (``from_date``, the server's own clock, so client clocks do not matter), not from the next sequence: then
    what was posted while we were away comes back even if the server restarted (an in-memory aviso-server
    numbers from 1 again in a new process; a JetStream stream that was purged or recreated does the same).
    What we saw already comes again only from that same instant and the follower drops it. Within one server
    process a later post has a higher sequence, so a post with a later time and a sequence at or below the
    last one seen — or, opened ``from_id``, a sequence below it, which the server never sends — means the
    sequence started again (:meth:`went_back`).

    A start that carries the server's time of its post (a cursor saved by a listener, :meth:`AvisoSource.stamped`)
    is taken as that last notification seen: the stream opens from its time, so a server that restarted while
    no listener ran is told by the same rule, and its posts numbered at or below the cursor are not skipped.
    """

    def __init__(self, start: Position) -> None:
        self.start = start
        self.last_sequence: int | None = None
        self.last_time: dt.datetime | None = None
        self.last_time_text: str | None = None
        posted = server_time(start.posted) if start.revision > 0 else None
        if posted is not None:
            self.last_sequence, self.last_time, self.last_time_text = start.revision, posted, start.posted
        #: The ``from_id`` of the stream open now (None when opened from a date or live).
        self.asked_from: int | None = None
        self.heartbeat = DEFAULT_HEARTBEAT_SECONDS
        self._last_beat: float | None = None

    def body_start(self) -> dict[str, str]:
        if self.last_sequence is not None and self.last_time_text is not None:
            start = {"from_date": self.last_time_text}
        elif self.last_sequence is not None:
            start = {"from_id": str(self.last_sequence + 1)}
        else:
            start = start_of(self.start)
        self.asked_from = int(start["from_id"]) if "from_id" in start else None
        return start

    def went_back(self, sequence: int, posted: dt.datetime | None) -> bool:
        """True if a notification at ``sequence`` posted at ``posted`` comes from a sequence that started again."""
        if self.asked_from is not None and sequence < self.asked_from:
            return True
        last, last_time = self.last_sequence, self.last_time
        return last is not None and sequence <= last and None not in (posted, last_time) \
            and posted > last_time  # type: ignore[operator]

    def seen(self, sequence: int, posted: dt.datetime | None, text: str | None) -> None:
        if self.last_sequence is None or sequence >= self.last_sequence:
            self.last_sequence = sequence
            if posted is not None:
                self.last_time, self.last_time_text = posted, text

    def start_again(self) -> None:
        """Follow the new sequence from its start (``from_id`` 1)."""
        self.start, self.last_sequence, self.last_time, self.last_time_text = Position(0), None, None, None

    @property
    def silence(self) -> float:
        """Seconds without a byte after which the stream is taken as cut."""
        return SILENT_HEARTBEATS * self.heartbeat + 1.0

    def beat(self) -> None:
        """A heartbeat came: learn the server's period (the longest gap seen between two)."""
        now = time.monotonic()
        if self._last_beat is not None:
            gap = now - self._last_beat
            self.heartbeat = gap if self.heartbeat == DEFAULT_HEARTBEAT_SECONDS else max(self.heartbeat, gap)
        self._last_beat = now

    def opened(self) -> None:
        self._last_beat = None


class AvisoSource:
    """Follows one ``/watch`` stream in a thread of its own and hands what comes as feeds to a channel.

    The same driver loops as an etcd :class:`~aviso_workflows.watch.HistorySource` read it (``channel``,
    ``start``, ``stop``, context manager).
    """

    def __init__(self, client: AvisoClient, requests: Sequence[Request], start: Position, channel: Channel,
                 label: str) -> None:
        self.client = client
        self.requests = list(requests)
        self.event = identifier_filter(self.requests)[0]  # refuses several events at once
        #: The server-side filter, made once the server's schema is read (in the stream's thread).
        self.identifier: dict[str, Any] | None = None
        self.schema_request = self.requests[0]
        self.state = StreamState(start)
        self.channel = channel
        self.label = label
        self.connections_opened = 0
        #: How often the server's sequence was seen to start again (a restart or a purge).
        self.restarts = 0
        #: The server's time of the latest sequences handed on (at most POSTED_KEPT), for :meth:`stamped`.
        self._posted: OrderedDict[int, str] = OrderedDict()
        #: Why the last attempt failed (None while the stream works).
        self.last_error: Exception | None = None
        self._failures = 0
        self._stop = threading.Event()
        self._responses: list[httpx.Response] = []
        #: When the stream last said anything (a heartbeat counts); the watchdog reads it.
        self.last_activity = time.monotonic()
        self.silent = False
        self._thread = threading.Thread(target=self._run, name=f"aviso2 {self.event}", daemon=True)

    # -- life ------------------------------------------------------------------------------------
    def start(self) -> None:
        WATCHDOG.add(self)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.cut()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def cut(self) -> None:
        """End the open stream now, from any thread (its reader then sees the connection end)."""
        for response in list(self._responses):
            cut(response)

    def look(self, now: float) -> None:
        """Called by the watchdog: a stream silent for longer than a few heartbeat periods is cut."""
        if self._responses and not self._stop.is_set() and now - self.last_activity > self.state.silence:
            self.silent = True
            self.cut()

    def stamped(self, position: Position) -> Position:
        """``position`` with the server's time of its post, when this stream handed that post on: a cursor
        saved with it lets a later listener tell that the server restarted meanwhile (see StreamState)."""
        posted = self._posted.get(position.revision) if position.revision > 0 else None
        return position if posted is None else replace(position, posted=posted)

    def _remember(self, sequence: int, posted: str | None) -> None:
        if posted is not None:
            self._posted[sequence] = posted
            while len(self._posted) > POSTED_KEPT:
                self._posted.popitem(last=False)

    def __enter__(self) -> AvisoSource:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _emit(self, feed: Feed) -> None:
        self.channel.put(feed, lambda: self.stopped)

    # -- the loop --------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow_once()
            except (ReplayLimitReached, AvisoRefused, ValidationError) as error:  # the same again would fail
                self._emit(Feed(FeedKind.FAILURE, 0, error=error))
                return
            except AvisoServerError as error:
                if not isinstance(error, AvisoUnavailable):  # a request the server will never take
                    self._emit(Feed(FeedKind.FAILURE, 0, error=error))
                    return
                self._interrupted(error)
            except (httpx.HTTPError, SSEError, OSError, ValueError) as error:
                if not self._stop.is_set():
                    self._interrupted(error)

    def _follow_once(self) -> None:
        if self.identifier is None:
            self.identifier = self.client.identifier(self.requests)[1]
        body = {"event_type": self.event, "identifier": self.identifier, **self.state.body_start()}
        log.debug("%s: opening /watch %s", self.label, json.dumps(body))
        self._responses.clear()
        self.state.opened()
        self.connections_opened += 1
        self.last_activity, self.silent = time.monotonic(), False
        try:
            # The read timeout is a backstop: the watchdog cuts a silent stream sooner.
            for kind, data in self.client.events("watch", body, 2 * self.state.silence, self._responses):
                self.last_activity = time.monotonic()
                if self._stop.is_set():
                    return
                if self._handle(kind, data):
                    return
        except (httpx.HTTPError, OSError) as error:
            if self.silent:
                raise httpx.ReadTimeout(f"no heartbeat for {self.state.silence:.1f} s") from error
            raise
        finally:
            self._responses.clear()
        if not self._stop.is_set():
            raise httpx.RemoteProtocolError("the stream ended without connection-closing")

    def _handle(self, kind: str, data: Any) -> bool:
        """Take one event of the stream; True when the stream is over (open it again)."""
        if not isinstance(data, dict):
            return False
        if kind in ("live-notification", "replay") and is_notification(data):
            self._connected()
            return self._notification(data)
        elif kind == "live-notification" or kind == "replay-control":
            self._connected()
            self._control(data)
        elif kind == "heartbeat":
            self.state.beat()
        elif kind == "error":
            self._stream_error(data)
        elif kind == "connection-closing":
            reason = data.get("reason")
            level = logging.INFO if reason == "server_shutdown" else logging.DEBUG
            log.log(level, "%s: server closed the stream (%s); resuming after sequence %s (posted %s)", self.label,
                    reason, self.state.last_sequence, self.state.last_time_text)
            return True
        return False

    def _notification(self, data: Mapping[str, Any]) -> bool:
        """Hand one notification on; True if it shows that the server's sequence started again (then the
        stream is opened again from the new sequence's start)."""
        notice = received(data)
        posted = posted_at(notice)
        if self.state.went_back(notice.sequence, posted):
            self._started_again(notice, posted)
            return True
        kv = key_value(self.schema_request, notice)
        self._remember(notice.sequence, notice.time if posted is not None else None)
        self._emit(Feed(FeedKind.EVENTS, notice.sequence, [kv] if kv is not None else []))
        self.state.seen(notice.sequence, posted, notice.time)
        return False

    def _started_again(self, notice: Received, posted: dt.datetime | None) -> None:
        state = self.state
        log.warning("%s: aviso-server's sequence went back from %s@%s (posted %s) to %s@%d (posted %s): the server "
                    "was restarted or its stream purged or recreated; reading the new stream from its start "
                    "(sequence 1), so posts may be delivered twice", self.label, self.event,
                    state.last_sequence if state.last_sequence is not None else f"<{state.asked_from}",
                    state.last_time_text or "?", self.event, notice.sequence, notice.time or "?")
        self.restarts += 1
        self._posted.clear()  # times of the old sequence's numbers: none may stamp the new one's
        self._emit(Feed(FeedKind.RESTARTED, 0))
        state.start_again()

    def _control(self, data: Mapping[str, Any]) -> None:
        if data.get("type") == "notification_replay_limit_reached":
            raise ReplayLimitReached(
                f"{self.label}: the aviso-server stopped the replay at its cap of {data.get('max_allowed')} "
                f"notifications after sequence {self.state.last_sequence}; later posts were not delivered "
                f"(resume with a later start, or raise the server's max_historical_notifications)")

    def _stream_error(self, data: Mapping[str, Any]) -> None:
        sequence = data.get("sequence")
        if isinstance(sequence, int):  # the server could not render this one notification: say so, go past it
            log.warning("%s: aviso-server could not send notification %s@%d (%s); it is skipped", self.label,
                        self.event, sequence, data.get("message"))
            self._emit(Feed(FeedKind.EVENTS, sequence, []))
            self.state.seen(sequence, None, None)
            return
        raise AvisoUnavailable(f"aviso-server stream failed: {data.get('error')}: {data.get('message')}")

    def _interrupted(self, error: Exception) -> None:
        self.last_error = AvisoUnavailable(f"aviso-server at {self.client.base}: {one_line(error)}")
        where = "from " + ", ".join(f"{name} {value}" for name, value in self.state.body_start().items())
        if not self._failures:
            log.warning("%s interrupted (%s); reopening %s", self.label, one_line(error), where)
        else:
            log.debug("%s still interrupted (%s)", self.label, one_line(error))
        if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout)):
            self.client.failed_over()
        self._stop.wait(RETRY_DELAYS[min(self._failures, len(RETRY_DELAYS) - 1)])
        self._failures += 1

    def _connected(self) -> None:
        self.last_error = None
        if self._failures:
            log.info("%s resumed after sequence %s", self.label, self.state.last_sequence)
            self._failures = 0


def cut(response: httpx.Response) -> None:
    """Shut the connection of ``response`` down: unlike closing it, this wakes a thread blocked reading it."""
    try:
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass


class _Watchdog:
    """One thread for the process that looks at every open source a few times a second."""

    PERIOD = 0.25

    def __init__(self) -> None:
        self._sources: weakref.WeakSet[AvisoSource] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, source: AvisoSource) -> None:
        with self._lock:
            self._sources.add(source)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="aviso2-watchdog", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:  # ends once no source is open; each round is quick
            time.sleep(self.PERIOD)
            with self._lock:
                sources = [source for source in self._sources if not source.stopped]
                if not sources:
                    self._thread = None
                    return
            now = time.monotonic()
            for source in sources:
                source.look(now)


WATCHDOG = _Watchdog()


# -- finite reads ---------------------------------------------------------------------------------------
def replay(client: AvisoClient, request: Request, start: Position,
           before: dt.datetime | None = None) -> tuple[int, list[KeyValue]]:
    """Every post the request matches from ``start`` on (posted before ``before``, UTC, if given), as keys
    at their sequences, through a finite ``/replay`` (reopened after a cut from the last sequence seen);
    and the last sequence seen (0 if none)."""
    state = StreamState(start)
    kvs: dict[tuple[int, str], KeyValue] = {}  # a stream opened again from a time repeats that instant
    for attempt in range(len(RETRY_DELAYS) + 1):
        try:
            event, identifier = client.identifier([request])
            body = {"event_type": event, "identifier": identifier, **state.body_start()}
            for kind, data in client.events("replay", body, state.silence):
                if kind in ("replay", "live-notification") and isinstance(data, dict) and is_notification(data):
                    notice = received(data)
                    posted = posted_at(notice)
                    if state.went_back(notice.sequence, posted):  # the server restarted between two tries
                        log.warning("reading %s: aviso-server's sequence went back from %s to %d (restarted or "
                                    "purged); reading its new stream from the start", request,
                                    state.last_sequence, notice.sequence)
                        kvs.clear()
                        state.start_again()
                        raise httpx.RemoteProtocolError("the server's sequence started again")
                    kv = key_value(request, notice)
                    if kv is not None and (before is None or not _posted_at_or_after(notice, before)):
                        kvs[(kv.mod_revision, kv.key)] = kv
                    state.seen(notice.sequence, posted, notice.time)
                elif kind == "replay-control" and data.get("type") == "notification_replay_limit_reached":
                    raise ReplayLimitReached(
                        f"reading {request}: the aviso-server stopped the replay at its cap of "
                        f"{data.get('max_allowed')} notifications; the rest of history was not read (start "
                        f"later, or raise the server's max_historical_notifications)")
                elif kind == "connection-closing":
                    return state.last_sequence or 0, sorted(kvs.values(), key=lambda kv: kv.mod_revision)
            raise httpx.RemoteProtocolError("the replay ended without connection-closing")
        except (AvisoUnavailable, httpx.HTTPError, SSEError, OSError) as error:
            if attempt == len(RETRY_DELAYS):
                raise AvisoUnavailable(f"aviso-server at {client.base} could not be read: {one_line(error)}") \
                    from None
            if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout)):
                client.failed_over()
            time.sleep(RETRY_DELAYS[attempt])
    raise AssertionError("unreachable")


def _posted_at_or_after(notice: Received, moment: dt.datetime) -> bool:
    posted = posted_at(notice)
    return posted is not None and posted >= moment


def replay_window(client: AvisoClient, requests: Sequence[Request], start: dt.datetime,
                  end: dt.datetime | None) -> list[Notification]:
    """Every post between ``start`` and ``end`` (UTC, naive) that the requests match, in sequence order
    (``listen --from TIME --to TIME`` on an aviso-server)."""
    posts: dict[tuple[int, str], Notification] = {}
    for request in requests:
        _, kvs = replay(client, request, since(start), end)
        for kv in kvs:
            notification = notification_from_kv(request, kv)
            if notification is not None:
                posts.setdefault((kv.mod_revision, kv.key), notification)
    return in_order(list(posts.values()))


def latest(request: Request, kvs: Iterable[KeyValue]) -> list[Notification]:
    """The latest post of each key among ``kvs`` that the request matches, in history order."""
    newest: dict[str, KeyValue] = {}
    for kv in kvs:
        if kv.key not in newest or newest[kv.key].mod_revision < kv.mod_revision:
            newest[kv.key] = kv
    found = (notification_from_kv(request, kv) for kv in newest.values())
    return in_order([n for n in found if n is not None])


__all__ = ["SCHEMES", "AvisoClient", "AvisoRefused", "AvisoServerError", "AvisoSource", "AvisoUnavailable",
           "ReplayLimitReached", "identifier_filter", "is_aviso_endpoint", "now_position", "replay", "replay_window",
           "since", "since_of", "start_of", "wait_start"]
