"""The Aviso 2 wire protocol over our store: request bodies, errors, sequences and CloudEvents.

Nothing here does I/O. A request body is checked in the order Aviso 2 checks it (JSON, known fields,
shape, event, values); every refusal is an :class:`ApiError` with Aviso 2's code and body. A
notification's sequence is its place in the store's history: ``revision * 1000 + index``, where the
index is the key's place among every notification key written at that revision, in the store's key
order, so it does not depend on what a client filters.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from ..errors import ValidationError
from ..etcd import KeyValue
from ..fields import Field, check_characters
from ..notification import NO_PAYLOAD, Notification
from ..position import key_order
from ..request import MAX_LOCATION_BYTES, Request, check_location
from ..schema import EventSchema, SchemaRegistry
from ..status_chain import STATUS_TIME_FORMAT, status_record
from . import server_config
from .server_config import ServerEvent, StreamFilter, shown_value, stored_envelope

#: Fields of a request body (Aviso 2 refuses any other with UNKNOWN_FIELD). ``to_id``/``to_date`` are not in
#: aviso-server 0.7.1; newer servers end a replay with them (pyaviso 2.4.2's ``replay --until`` sends them),
#: and serve takes them as those do: inclusive, on replays only.
BODY_FIELDS = ("event_type", "identifier", "from_id", "from_date", "to_id", "to_date", "payload")
#: Sequences per revision: index 0 to 999 of the notification keys written at one revision.
SEQUENCE_SLOTS = 1000
#: Stands in the annotations for a revision with too many notification keys to number.
NO_SEQUENCE = -1
#: Digits of a Unix time in seconds at most; longer numbers are milliseconds (as Aviso 2 reads them).
UNIX_SECONDS_DIGITS = 11
_T = TypeVar("_T")
_LABELS = {"notification": "Invalid Notification Request", "watch": "Invalid Watch Request",
           "replay": "Invalid Replay Request"}


class ApiError(Exception):
    """A refused request: HTTP status, Aviso 2's ``code`` and ``error``, a message, optional details."""

    def __init__(self, status: int, code: str, error: str, message: str, *, details: str | None = None,
                 extra: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.error = error
        self.message = message
        self.details = details
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})

    def body(self, request_id: str) -> dict[str, Any]:
        """The JSON body, with the request's id."""
        body: dict[str, Any] = {"code": self.code, "error": self.error, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        body.update(self.extra)
        body["request_id"] = request_id
        return dict(sorted(body.items()))  # Aviso 2 writes its error fields in alphabetical order


def invalid(kind: str, message: str) -> ApiError:
    """A request that failed validation (400 ``INVALID_<KIND>_REQUEST``)."""
    return ApiError(400, f"INVALID_{kind.upper()}_REQUEST", _LABELS[kind], message, details=message)


def _parse_error(kind: str, code: str, message: str) -> ApiError:
    return ApiError(400, code, _LABELS[kind], message, details=message)


@dataclass(frozen=True)
class ApiRequest:
    """A checked request body: the event, its identifier as given, the payload and the replay start."""

    kind: str
    event_type: str
    identifier: Mapping[str, Any]
    payload: Any = None
    from_id: int | None = None
    from_date: dt.datetime | None = None
    fields: frozenset[str] = field(default_factory=frozenset)
    #: Where a replay ends (inclusive): a sequence, or a moment (naive, UTC).
    to_id: int | None = None
    to_date: dt.datetime | None = None


def parse_body(body: bytes, kind: str, schemas: SchemaRegistry) -> ApiRequest:
    """The request of ``body`` for ``kind`` (notification, watch or replay), or an ApiError."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise _parse_error(kind, "INVALID_JSON", f"JSON parsing failed: {error}") from None
    if isinstance(document, dict):
        unknown = [name for name in document if name not in BODY_FIELDS]
        if unknown:
            raise _parse_error(kind, "UNKNOWN_FIELD", f"Unknown field {unknown[0]!r} in request. Allowed fields: "
                               + ", ".join(BODY_FIELDS))
    else:
        raise _parse_error(kind, "INVALID_REQUEST_SHAPE", "the request body must be a JSON object with "
                           "event_type and identifier")
    event, identifier = document.get("event_type"), document.get("identifier")
    if not isinstance(event, str):
        raise _parse_error(kind, "INVALID_REQUEST_SHAPE", "event_type must be text such as \"mars\"")
    if not isinstance(identifier, dict):
        raise _parse_error(kind, "INVALID_REQUEST_SHAPE", "identifier must be an object of field names and values")
    for name in ("from_id", "from_date"):  # strings in aviso-server's request type (src/types/request.rs)
        value = document.get(name)
        if value is not None and not isinstance(value, str):
            raise _parse_error(kind, "INVALID_REQUEST_SHAPE", f"Request deserialization failed: {name} must be "
                               f"a string such as \"1\", not {json.dumps(value)}")
    for name in ("to_id", "to_date"):  # newer servers' fields: text or a whole number
        value = document.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
            raise _parse_error(kind, "INVALID_REQUEST_SHAPE", f"{name} must be text or a whole number")
    known_event(event, schemas)
    request = ApiRequest(kind, event, identifier, document.get("payload"), fields=frozenset(document))
    return _with_start(request, document)


def known_event(event: str, schemas: SchemaRegistry) -> EventSchema:
    """The schema of ``event``, or Aviso 2's 400 ``UNKNOWN_EVENT_TYPE`` listing the events served."""
    names = sorted(schemas.names())
    if event not in names:
        message = f"unknown event type {event!r}; event types: {', '.join(names)}"
        raise ApiError(400, "UNKNOWN_EVENT_TYPE", "unknown_event_type", message, details=message,
                       extra={"configured_event_types": names})
    return schemas[event]


def _with_start(request: ApiRequest, document: Mapping[str, Any]) -> ApiRequest:
    """``request`` with its replay start checked against the rules of its kind."""
    raw_id, raw_date = document.get("from_id"), document.get("from_date")
    if request.kind == "notification":
        given = [name for name in ("from_id", "from_date", "to_id", "to_date") if document.get(name) is not None]
        if given:
            raise invalid("notification", f"{given[0]} belongs to watch and replay requests, not to a notification")
        return request
    ends = [name for name in ("to_id", "to_date") if document.get(name) is not None]
    if ends and request.kind != "replay":
        raise invalid(request.kind, f"{ends[0]} ends a replay; a watch has no end (use /api/v1/replay)")
    if len(ends) > 1:
        raise invalid(request.kind, "Cannot specify both to_id and to_date; give one end of the replay")
    to_id = parse_from_id(request.kind, document["to_id"], "to_id") if "to_id" in ends else None
    to_date = parse_from_date(request.kind, document["to_date"], "to_date") if "to_date" in ends else None
    from_id = parse_from_id(request.kind, raw_id) if raw_id is not None else None
    from_date = parse_from_date(request.kind, raw_date) if raw_date is not None else None
    if from_id is not None and from_date is not None:
        raise invalid(request.kind, "Cannot specify both from_id and from_date. Please provide only one replay "
                      "parameter: from_id for sequence-based replay or from_date for time-based replay.")
    if request.kind == "replay" and from_id is None and from_date is None:
        raise invalid("replay", "Replay endpoint requires either from_id or from_date parameter")
    return ApiRequest(request.kind, request.event_type, request.identifier, request.payload, from_id, from_date,
                      request.fields, to_id, to_date)


def parse_from_id(kind: str, value: str | int, name: str = "from_id") -> int:
    """A sequence to start from (or end at): a whole number of at least 0."""
    text = str(value).strip()
    if not text.isdigit() or (isinstance(value, int) and value < 0):
        raise invalid(kind, f"{name} must be a valid positive integer. Got: {str(value)!r}. Valid examples: "
                      "'1', '123', '9999'")
    return int(text)


def parse_from_date(kind: str, value: str | int, name: str = "from_date") -> dt.datetime:
    """A moment (naive, UTC) from RFC 3339, ``YYYY-MM-DD HH:MM:SS[+HH:MM]``, a naive date-time (UTC), or Unix
    seconds (up to 11 digits) or milliseconds (12 digits or more)."""
    text = str(value).strip()
    try:
        return _moment(text)
    except (ValueError, OverflowError, OSError) as error:
        raise invalid(kind, f"{name} must be a valid datetime/timestamp. Got: {text!r}. Error: {error}. Valid "
                      "examples: '2025-06-09T13:15:00Z', '2025-06-09 13:15:00+00:00', '2025-06-09 13:15:00', "
                      "'1740509903', '1740509903710'") from None


def _moment(text: str) -> dt.datetime:
    unsigned = text[1:] if text.startswith("+") else text
    if text.startswith("-") and text[1:].isdigit():
        raise ValueError("negative unix timestamps are not supported")
    if unsigned.isdigit():
        number = int(unsigned)
        digits = len(unsigned.lstrip("0")) or 1
        seconds = number if digits <= UNIX_SECONDS_DIGITS else number / 1000
        return dt.datetime.fromtimestamp(seconds, dt.UTC).replace(tzinfo=None)
    if not text:
        raise ValueError("from_date cannot be empty")
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith(("Z", "z")) else text)
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment


# -- identifiers ---------------------------------------------------------------------------------
def notify_request(api: ApiRequest, schemas: SchemaRegistry,
                   events: Mapping[str, ServerEvent] | None = None) -> tuple[Request, str | None]:
    """The complete request of a notification and its stored value; constraint objects, lists and ``a/b``
    are refused (aviso-server takes one value per field). ``events``: those of an aviso-server configuration."""
    event = (events or {}).get(api.event_type)
    if event is not None:
        return _server_notify(api, event)
    schema = schemas[api.event_type]
    for name, value in api.identifier.items():
        if isinstance(value, Mapping):
            raise invalid("notification", f"Field {name!r} constraint object is not allowed in this operation; "
                          "a notification gives values")
    try:
        request = Request.build(schema, _values(api.identifier, one_value=True))
        request.require_complete("a notification")
        return request, _location(schema, api.payload)
    except ValidationError as error:
        raise invalid("notification", str(error)) from None


def _server_notify(api: ApiRequest, event: ServerEvent) -> tuple[Request, str | None]:
    """A notification of an aviso-server configuration's event: its checks, its canonical values, one key."""
    try:
        posting = server_config.notify_request(event, api.identifier, api.payload, "payload" in api.fields)
    except server_config.Refused as error:
        if error.processing:
            raise ApiError(500, "NOTIFICATION_PROCESSING_FAILED", "Notification Processing Failed", str(error),
                           details=str(error)) from None
        raise invalid("notification", str(error)) from None
    try:
        for name, value in posting.key_values.items():
            check_characters(name, value)
    except ValidationError as error:
        raise invalid("notification", f"{error} (serve keeps topic values in etcd keys)") from None
    try:
        stored = check_location(posting.value)
    except ValidationError:
        raise invalid("notification", f"payload: the payload and the identifier fields outside the topic are "
                      f"{len(posting.value.encode())} bytes of JSON; serve stores at most {MAX_LOCATION_BYTES}") \
            from None
    return Request(event.schema, {name: (value,) for name, value in posting.key_values.items()}), stored


def _location(schema: EventSchema, payload: Any) -> str | None:
    """The value stored for the payload: the location text, or None (stored as pyaviso's ``None``)."""
    if payload is None:
        return None
    if schema.payload is None:
        raise ValidationError("payload", payload, f"event {schema.name!r} takes no payload; send null")
    if isinstance(payload, Mapping) and list(payload) == [schema.payload]:  # {"location": "..."}, as pyaviso 2 sends
        payload = payload[schema.payload]
    if not isinstance(payload, str):
        raise ValidationError("payload", payload, f"the payload of event {schema.name!r} is its {schema.payload}: "
                              f"text (a URL or path), {{\"{schema.payload}\": text}}, or null")
    return check_location(payload)


def filter_request(api: ApiRequest, schemas: SchemaRegistry,
                   events: Mapping[str, ServerEvent] | None = None) -> tuple[Request, StreamFilter | None]:
    """The request a watch or replay follows, and for an aviso-server configuration's event the filter of what
    its keys do not hold (a point or polygon). Values and constraint objects as aviso-server takes them:
    constraint objects only on int and enum fields (numbers for int fields), one value otherwise; open fields
    match any value."""
    event = (events or {}).get(api.event_type)
    try:
        if event is None:
            schema = schemas[api.event_type]
            values = _values(api.identifier, one_value=True)
            for name, value in values.items():
                if isinstance(value, Mapping):
                    _check_constraint(schema.field(name), value)
            return Request.build_filter(schema, values), None
        wanted = server_config.stream_request(event, api.identifier, api.kind)
        for name, value in wanted.raw.items():
            if not isinstance(value, Mapping):
                check_characters(name, value)
        return Request.build_filter(event.schema, wanted.raw), wanted
    except server_config.Refused as error:
        raise invalid(api.kind, str(error)) from None
    except ValidationError as error:
        raise invalid(api.kind, str(error)) from None


def _check_constraint(fld: Field, constraint: Mapping[str, Any]) -> None:
    """aviso-server's rule (aviso-validators/src/constraints.rs): constraint objects on int and enum fields only,
    with JSON numbers as the operands of an int field and text as those of an enum field."""
    if fld.kind not in ("int", "enum"):
        raise ValidationError(fld.name, dict(constraint), "this field does not support constraint filters; give one "
                              "value (constraint objects are for int and enum fields)")
    for operand in constraint.values():
        items = operand if isinstance(operand, list) else [operand]
        wanted = (int,) if fld.kind == "int" else (str,)
        if not all(isinstance(item, wanted) and not isinstance(item, bool) for item in items):
            what = "JSON integers" if fld.kind == "int" else "text"
            raise ValidationError(fld.name, dict(constraint), f"the operands of an {fld.kind} field are {what}")


def _values(identifier: Mapping[str, Any], *, one_value: bool = False) -> dict[str, Any]:
    """Identifier values as the request code reads them (numbers and text alike); null is refused by name, and
    with ``one_value`` so are arrays and ``a/b`` lists (aviso-server takes one value, or a constraint object)."""
    for name, value in identifier.items():
        if value is None:
            raise ValidationError(name, None, "cannot be null; give a value or leave the field out")
        if one_value and (isinstance(value, list) or (isinstance(value, str) and "/" in value)):
            raise ValidationError(name, value, "give one value; several are a constraint object {\"in\": [...]} "
                                  "on int and enum fields")
    return dict(identifier)


def topic(request: Request) -> str:
    """What a stream follows, for its control events: the key layout with its values, ``*`` where open."""
    shown = {name: "/".join(request.values[name]) if name in request.values else "*"
             for name in request.schema.key_fields}
    for name, comparison in request.comparisons.items():
        shown[name] = f"{comparison.operator}:" + ",".join(str(b) for b in comparison.bounds)
    return request.schema.format_key(shown)


# -- sequences and CloudEvents -------------------------------------------------------------------
@dataclass(frozen=True)
class Annotations:
    """What a batch of puts says beyond its notifications: each notification key's sequence and each
    revision's time (from the status record written with it)."""

    sequences: Mapping[tuple[int, str], int]
    times: Mapping[int, str]
    first: int = 0
    last: int = 0


EMPTY_ANNOTATIONS = Annotations({}, {})


@dataclass(frozen=True)
class Batch:
    """A feed's puts as every stream reads them, worked out once however many streams follow the feed:
    the sequences and times (:class:`Annotations`), every notification of each event (unfiltered; a
    stream keeps those its request matches), and each notification's event as sent, made by the first
    stream that sends it (:meth:`shared`)."""

    annotations: Annotations
    notifications: Mapping[str, Sequence[Notification]]
    _sent: dict[tuple[Any, ...], Any] = field(default_factory=dict, compare=False, repr=False)

    def shared(self, key: tuple[Any, ...], make: Callable[[], _T]) -> _T:
        """What ``make`` makes for ``key``, made once for this batch (the same object for every stream)."""
        try:
            return cast(_T, self._sent[key])
        except KeyError:
            made = self._sent[key] = make()
            return made


EMPTY_BATCH = Batch(EMPTY_ANNOTATIONS, {})


def read_batch(puts: Iterable[KeyValue], schemas: Sequence[EventSchema]) -> Batch:
    """Read ``puts`` (which hold all puts of each revision) once: the notifications of every event, and
    the sequence of every notification key and the time of every revision."""
    puts = list(puts)
    if not puts:
        return EMPTY_BATCH
    notifications: dict[str, list[Notification]] = {}
    by_revision: dict[int, list[str]] = {}
    times: dict[int, str] = {}
    for kv in puts:
        parsed = [(schema.name, fields) for schema in schemas if (fields := schema.parse_key(kv.key)) is not None]
        if not parsed:
            when = status_time(kv) if kv.key.endswith("/") else None
            if when is not None:
                times[kv.mod_revision] = when
            continue
        by_revision.setdefault(kv.mod_revision, []).append(kv.key)
        location = None if kv.value == NO_PAYLOAD else kv.value
        for event, fields in parsed:
            notifications.setdefault(event, []).append(
                Notification(event, fields, location, kv.key, kv.mod_revision, kv.version or 1))
    return Batch(_numbered(by_revision, times), notifications)


def _numbered(by_revision: Mapping[int, list[str]], times: Mapping[int, str]) -> Annotations:
    """Each key's sequence: its revision * SEQUENCE_SLOTS + its index among the revision's keys in key order."""
    sequences: dict[tuple[int, str], int] = {}
    for revision, keys in by_revision.items():
        ordered = sorted(set(keys), key=lambda key: (key_order(key), key))
        for index, key in enumerate(ordered):
            sequences[revision, key] = revision * SEQUENCE_SLOTS + index if len(ordered) <= SEQUENCE_SLOTS \
                else NO_SEQUENCE
    revisions = list(by_revision)
    return Annotations(sequences, times, min(revisions, default=0), max(revisions, default=0))


def status_time(kv: KeyValue) -> str | None:
    """The time of a status record as RFC 3339 in UTC (None if it holds none)."""
    try:
        moment = dt.datetime.strptime(str(status_record(kv).get("date_time")), STATUS_TIME_FORMAT)
    except ValueError:
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def stream_time(moment: dt.datetime | None = None) -> str:
    """A control event's time: UTC to the second, ``YYYY-MM-DDTHH:MM:SSZ``."""
    return (moment or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def cloud_event(notification: Notification, sequence: int, time: str | None, base_url: str,
                enveloped: bool = False) -> dict[str, Any]:
    """The CloudEvent (structured JSON) of a notification, as Aviso 2 streams it; ``enveloped``: an event of an
    aviso-server configuration, whose stored value holds its payload and the identifier outside the topic."""
    event = notification.event
    identifier: dict[str, Any] = dict(notification.request)
    payload: Any = notification.location
    if enveloped:
        identifier = {name: shown_value(value) for name, value in identifier.items()}
        payload, extras = stored_envelope(notification.location)
        identifier.update(extras)
    return {
        "specversion": "1.0",
        "id": f"{event}@{sequence}",
        "type": f"int.ecmwf.aviso.{event}",
        "source": base_url,
        "time": time or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "datacontenttype": "application/json",
        "dataschema": f"{base_url}/schema/{event}",
        "data": {"identifier": identifier, "payload": payload},
    }


__all__ = ["Annotations", "ApiError", "ApiRequest", "Batch", "EMPTY_ANNOTATIONS", "EMPTY_BATCH", "NO_SEQUENCE",
           "SEQUENCE_SLOTS", "cloud_event", "filter_request", "invalid", "known_event", "notify_request",
           "parse_body", "read_batch", "stream_time", "topic"]
