"""aviso-server's own configuration file as serve's events, and aviso-server's identifier rules.

Follows aviso-server 0.7.1 (ecmwf/aviso-server, commit 8b99d73): its ``notification_schema`` (each event's
``payload.required``, ``topic.base`` and ``topic.key_order``, and one handler per identifier field), the
handlers of ``aviso-validators/src/*.rs`` (their canonical forms and their messages) and how
``src/notification/processor.rs`` applies them: a notify gives every identifier field and nothing else; a
watch or replay gives the required ones, constraint objects only on int, float and enum fields, and may
give ``point`` on an event with a polygon field.

Each event is stored in etcd as one of our events (:class:`~aviso_workflows.schema.EventSchema`): base
``/aviso/<topic.base>``, one key field per entry of ``key_order`` (``class=od,expver=0001,...``), so keys,
matching and constraint objects go through the one :class:`~aviso_workflows.request.Request` of the core.
The value of a key is ``{"payload": ..., "identifier": {...}}`` as JSON: the payload as posted, and the
identifier fields outside the topic (a polygon), which the key cannot hold. A free value holding what a key
cannot (``/ , = * %``, spaces, control characters) is kept in the key percent-encoded (:func:`key_value`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import SchemaError, shown
from ..fields import EnumField, Field, IntField, StringField
from ..schema import EventSchema

#: Handlers of aviso-validators 0.7.1.
HANDLERS = ("StringHandler", "DateHandler", "EnumHandler", "ExpverHandler", "IntHandler", "FloatHandler",
            "TimeHandler", "PolygonHandler")
#: Handlers that take constraint objects in a watch or replay (aviso-validators/src/constraints.rs).
CONSTRAINED = ("IntHandler", "FloatHandler", "EnumHandler")
INT_OPERATORS = ("eq", "in", "gt", "gte", "lt", "lte", "between")
ENUM_OPERATORS = ("eq", "in")
#: Where serve keeps the events of an aviso-server configuration in etcd.
PREFIX = "/aviso"
ENVELOPE = ("payload", "identifier")


class Refused(ValueError):
    """A request aviso-server refuses: its message; ``processing`` when the server answers 500, not 400
    (src/handlers/notification_processor.rs tells them apart by the message)."""

    def __init__(self, message: str, *, processing: bool = False) -> None:
        super().__init__(message)
        self.processing = processing


@dataclass(frozen=True)
class Handler:
    """One identifier field's rule."""

    name: str
    kind: str
    required: bool = False
    max_length: int | None = None
    values: tuple[str, ...] = ()
    bounds: tuple[float, float] | None = None
    default: str | None = None
    canonical_format: str = "%Y%m%d"

    def describe(self) -> dict[str, Any]:
        """The handler as ``GET /api/v1/schema`` shows it (its configuration)."""
        shown_: dict[str, Any] = {"type": self.kind}
        if self.kind == "StringHandler":
            shown_["max_length"] = self.max_length
        elif self.kind == "DateHandler":
            shown_["canonical_format"] = self.canonical_format
        elif self.kind == "EnumHandler":
            shown_["values"] = list(self.values)
        elif self.kind == "ExpverHandler":
            shown_["default"] = self.default
        elif self.kind in ("IntHandler", "FloatHandler"):
            shown_["range"] = list(self.bounds) if self.bounds else None
        shown_["required"] = self.required
        return shown_


@dataclass(frozen=True)
class ServerEvent:
    """One event of ``notification_schema`` and the etcd layout it is stored in."""

    name: str
    payload_required: bool
    topic_base: str
    key_order: tuple[str, ...]
    handlers: Mapping[str, Handler]
    schema: EventSchema = field(compare=False)

    @property
    def extras(self) -> tuple[str, ...]:
        """Identifier fields outside the topic: kept in the stored value."""
        return tuple(name for name in self.handlers if name not in self.key_order)

    @property
    def polygon(self) -> str | None:
        """The polygon field, if the event has one."""
        return next((h.name for h in self.handlers.values() if h.kind == "PolygonHandler"), None)

    def describe(self) -> dict[str, Any]:
        """The event as ``GET /api/v1/schema`` shows it (src/configuration/types.rs, ApiEventSchema)."""
        return {"payload": {"required": self.payload_required},
                "identifier": {name: h.describe() for name, h in self.handlers.items()}}


# -- the configuration file ------------------------------------------------------------------------------
def load_server_config(path: str | Path) -> dict[str, ServerEvent]:
    """The events of an aviso-server configuration file (its ``notification_schema``)."""
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise SchemaError(f"aviso-server configuration {path}: cannot be read: {' '.join(str(error).split())}") \
            from None
    schemas = document.get("notification_schema") if isinstance(document, Mapping) else None
    if not isinstance(schemas, Mapping) or not schemas:
        raise SchemaError(f"aviso-server configuration {path}: no 'notification_schema' mapping of events")
    try:
        return {str(name): _event(str(name), spec) for name, spec in schemas.items()}
    except SchemaError as error:
        raise SchemaError(f"aviso-server configuration {path}: {error}") from None


def _event(name: str, spec: Any) -> ServerEvent:
    if not isinstance(spec, Mapping):
        raise SchemaError(f"event {name!r}: expected a mapping with topic and identifier, not {shown(spec)}")
    topic = spec.get("topic")
    if not isinstance(topic, Mapping) or not isinstance(topic.get("base"), str) or not topic["base"]:
        raise SchemaError(f"event {name!r}: serve needs 'topic: {{base, key_order}}' to lay its keys out")
    identifier = spec.get("identifier") or {}
    if not isinstance(identifier, Mapping):
        raise SchemaError(f"event {name!r}: 'identifier' must map field names to handlers")
    handlers = {str(fname): _handler(name, str(fname), rule) for fname, rule in identifier.items()}
    key_order = tuple(str(k) for k in topic.get("key_order") or ())
    unknown = [k for k in key_order if k not in handlers]
    if unknown or not key_order:
        raise SchemaError(f"event {name!r}: topic.key_order {list(key_order)} must name identifier fields "
                          f"(at least one); unknown: {unknown}")
    payload = spec.get("payload") or {}
    required = bool(payload.get("required", False)) if isinstance(payload, Mapping) else False
    schema = EventSchema(name=name, base=f"{PREFIX}/{topic['base']}",
                         stem=",".join(f"{key}={{{key}}}" for key in key_order),
                         fields={key: _core_field(handlers[key]) for key in key_order}, payload=None)
    return ServerEvent(name, required, str(topic["base"]), key_order, handlers, schema)


def _handler(event: str, name: str, rule: Any) -> Handler:
    if not isinstance(rule, Mapping) or rule.get("type") not in HANDLERS:
        kind = rule.get("type") if isinstance(rule, Mapping) else rule
        raise SchemaError(f"event {event!r}, field {name!r}: unknown handler {shown(kind)}; handlers: "
                          + ", ".join(HANDLERS))
    kind = str(rule["type"])
    values = tuple(str(v) for v in rule.get("values") or ())
    if kind == "EnumHandler" and not values:
        raise SchemaError(f"event {event!r}, field {name!r}: EnumHandler needs 'values'")
    bounds = rule.get("range")
    if bounds is not None and (not isinstance(bounds, Sequence) or len(bounds) != 2):
        raise SchemaError(f"event {event!r}, field {name!r}: range must be [min, max], not {shown(bounds)}")
    return Handler(name, kind, bool(rule.get("required", False)), rule.get("max_length"), values,
                   (bounds[0], bounds[1]) if bounds is not None else None,
                   None if rule.get("default") is None else str(rule["default"]),
                   str(rule.get("canonical_format", "%Y%m%d")))


def _core_field(handler: Handler) -> Field:
    """The core field a key value of this handler is matched as: numbers compare as numbers, enum values by
    name; every other value is already in aviso-server's canonical form, matched as text as it is."""
    if handler.kind == "IntHandler":
        low, high = handler.bounds or (None, None)
        return IntField(handler.name, None if low is None else int(low), None if high is None else int(high))
    if handler.kind == "EnumHandler":
        return EnumField(handler.name, handler.values)
    return StringField(handler.name)


#: What a key part cannot hold (separators, the wildcard, blanks), and ``%``, which starts an escape.
_UNSAFE = re.compile(r"[%/,=*\s\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def key_value(handler: Handler, text: str) -> str:
    """A canonical value as a key part: free values percent-encoded where a key cannot hold them (numbers and
    enum values are kept as they are: the core compares them as numbers and names)."""
    if handler.kind in ("IntHandler", "EnumHandler"):
        return text
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8", "surrogatepass")), text)


def shown_value(text: str) -> str:
    """A key part as the client posted it (only encoded parts hold ``%``)."""
    return urllib.parse.unquote(text, errors="surrogateescape") if "%" in text else text


# -- values (aviso-validators/src/*.rs) ----------------------------------------------------------------
def scalar_text(name: str, value: Any) -> str:
    """A scalar identifier value as the handlers read it (src/types/request.rs)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if value is None:
        raise Refused(f"Field '{name}' cannot be null")
    if isinstance(value, list):
        raise Refused(f"Field '{name}' must be a scalar value or constraint object, got array")
    raise Refused(f"Field '{name}' constraint object is not allowed in this operation")


def canonical(handler: Handler, text: str) -> str:
    """One value in the form aviso-server stores and matches it."""
    name, kind = handler.name, handler.kind
    if kind == "StringHandler":
        if not text:
            raise Refused(f"Field '{name}' cannot be empty")
        if handler.max_length is not None and len(text.encode()) > handler.max_length:
            raise Refused(f"Field '{name}' exceeds maximum length of {handler.max_length} characters, "
                          f"got: {len(text.encode())}")
        return text
    if kind == "EnumHandler":
        if text.lower() not in (v.lower() for v in handler.values):
            raise Refused(f"Field '{name}' has invalid value '{text}'. Allowed: [{', '.join(handler.values)}]")
        return text.lower()
    if kind == "ExpverHandler":
        if not text:
            if handler.default is None:
                raise Refused(f"Field '{name}' cannot be empty")
            text = handler.default
        return f"{int(text):04d}" if text.isdigit() else text.lower()
    return _CANONICAL[kind](handler, text)


def _int(handler: Handler, text: str) -> str:
    if not re.fullmatch(r"[+-]?\d{1,18}", text):
        raise Refused(f"Field '{handler.name}' must be a valid integer, got: '{text}'")
    number = int(text)
    _in_range(handler, number)
    return str(number)


def _float(handler: Handler, text: str) -> str:
    try:
        number = float(text)
    except ValueError:
        raise Refused(f"Field '{handler.name}' must be a valid number, got: '{text}'") from None
    if not math.isfinite(number):
        raise Refused(f"Field '{handler.name}' must be a finite number, got: '{text}'")
    _in_range(handler, number)
    return repr(number) if not number.is_integer() else str(int(number))


def _in_range(handler: Handler, number: float) -> None:
    if handler.bounds and not handler.bounds[0] <= number <= handler.bounds[1]:
        low, high = handler.bounds
        raise Refused(f"Field '{handler.name}' value {number} is outside allowed range [{low}, {high}]")


def _date(handler: Handler, text: str) -> str:
    for pattern in ("%Y-%m-%d", "%Y%m%d", "%Y-%j"):
        try:
            moment = dt.datetime.strptime(text, pattern)
        except ValueError:
            continue
        if handler.canonical_format not in ("%Y%m%d", "%Y-%m-%d"):
            raise Refused(f"Unsupported date format '{handler.canonical_format}' for field '{handler.name}'")
        return moment.strftime(handler.canonical_format)
    raise Refused(f"Failed to parse date value for field '{handler.name}': Field '{handler.name}' contains "
                  f"invalid date '{text}'. Expected: YYYY-MM-DD, YYYYMMDD, or YYYY-DDD")


def _time(handler: Handler, text: str) -> str:
    name = handler.name
    if text and len(text) <= 2 and text.isdigit():
        hours, minutes = int(text), 0
    else:
        match = re.fullmatch(r"(\d{1,2}):(\d{2})", text) if ":" in text else \
            re.fullmatch(r"(\d{2})(\d{2})", text) if len(text) == 4 else None
        if match is None:
            raise Refused(f"Field '{name}' has invalid time format '{text}'. Expected: H, HH, HH:MM, or HHMM")
        hours, minutes = int(match[1]), int(match[2])
    if hours > 23:
        raise Refused(f"Field '{name}' has invalid hours: {hours}. Hours must be 0-23 in 24-hour format")
    if minutes > 59:
        raise Refused(f"Field '{name}' has invalid minutes: {minutes}. Minutes must be 0-59")
    return f"{hours:02d}{minutes:02d}"


def _polygon(handler: Handler, text: str) -> str:
    try:
        corners = polygon_corners(text)
    except Refused as error:
        raise Refused(f"field '{handler.name}' must be a valid polygon: {error}") from None
    if len(corners) < 4:
        raise Refused(f"field '{handler.name}' must be a valid polygon: polygon must have at least 4 coordinate "
                      "pairs (3 unique vertices plus a closing repeat of the first vertex)")
    if corners[0] != corners[-1]:
        raise Refused(f"field '{handler.name}' must be a valid polygon: polygon must be closed (first and last "
                      "coordinates must be identical)")
    return text  # kept as posted, as aviso-server keeps it


_CANONICAL = {"IntHandler": _int, "FloatHandler": _float, "DateHandler": _date, "TimeHandler": _time,
              "PolygonHandler": _polygon}


# -- polygons and points (aviso-validators/src/polygon.rs, point.rs; src/notification/wildcard_matcher.rs) --
def polygon_corners(text: str) -> list[tuple[float, float]]:
    """``(lat,lon,lat,lon,...)`` as (lat, lon) pairs, each in range."""
    raw = text.strip()
    if not raw:
        raise Refused("polygon coordinate string is empty")
    if raw.startswith("(") != raw.endswith(")"):
        raise Refused("polygon coordinate string must be wrapped in one pair of parentheses, or none")
    inner = raw[1:-1] if raw.startswith("(") else raw
    if "(" in inner or ")" in inner:
        raise Refused("polygon coordinate string must have at most one outer pair of parentheses; nested '(' or "
                      "')' are not allowed")
    parts = [part.strip() for part in inner.split(",")]
    if len(parts) % 2:
        raise Refused("polygon coordinates must be in lat,lon pairs (got an odd number of values)")
    return [_lat_lon(parts[i], parts[i + 1]) for i in range(0, len(parts), 2)]


def point(text: str) -> tuple[float, float]:
    """``lat,lon`` (optionally in parentheses) as a (lat, lon) pair."""
    inner = text.strip()
    if inner.startswith("(") and inner.endswith(")"):
        inner = inner[1:-1]
    parts = [part.strip() for part in inner.split(",")]
    if len(parts) != 2:
        raise Refused("Point must be in 'lat,lon' format")
    return _lat_lon(*parts)


def _lat_lon(lat_text: str, lon_text: str) -> tuple[float, float]:
    try:
        lat, lon = float(lat_text), float(lon_text)
    except ValueError:
        raise Refused(f"could not parse '{lat_text},{lon_text}' as latitude,longitude numbers") from None
    if not -90.0 <= lat <= 90.0:
        raise Refused(f"latitude {lat} is outside the valid range [-90, 90]")
    if not -180.0 <= lon <= 180.0:
        raise Refused(f"longitude {lon} is outside the valid range [-180, 180]")
    return lat, lon


def contains(corners: Sequence[tuple[float, float]], where: tuple[float, float]) -> bool:
    """True when ``where`` lies strictly inside the polygon (even-odd rule; geo's ``Contains`` leaves the
    boundary out)."""
    lat, lon = where
    inside = False
    for (lat1, lon1), (lat2, lon2) in zip(corners, corners[1:], strict=False):
        if _on_segment(lat, lon, lat1, lon1, lat2, lon2):
            return False
        if (lat1 > lat) != (lat2 > lat) and lon < lon1 + (lat - lat1) * (lon2 - lon1) / (lat2 - lat1):
            inside = not inside
    return inside


def _on_segment(lat: float, lon: float, lat1: float, lon1: float, lat2: float, lon2: float) -> bool:
    cross = (lat2 - lat1) * (lon - lon1) - (lon2 - lon1) * (lat - lat1)
    within = min(lat1, lat2) <= lat <= max(lat1, lat2) and min(lon1, lon2) <= lon <= max(lon1, lon2)
    return abs(cross) < 1e-12 and within


def intersects(first: Sequence[tuple[float, float]], second: Sequence[tuple[float, float]]) -> bool:
    """True when two polygons share a point: an edge crosses an edge, or one holds a corner of the other."""
    edges = list(zip(first, first[1:], strict=False))
    others = list(zip(second, second[1:], strict=False))
    if any(_crosses(a, b, c, d) for a, b in edges for c, d in others):
        return True
    return contains(first, second[0]) or contains(second, first[0])


def _crosses(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float], d: tuple[float, float]) -> bool:
    def side(p: tuple[float, float], q: tuple[float, float], r: tuple[float, float]) -> float:
        return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])

    d1, d2, d3, d4 = side(c, d, a), side(c, d, b), side(a, b, c), side(a, b, d)
    if ((d1 > 0) != (d2 > 0)) and ((d3 > 0) != (d4 > 0)) and 0 not in (d1, d2, d3, d4):
        return True
    return any(s == 0 and _on_segment(*p, *q, *r) for s, p, q, r in
               ((d1, a, c, d), (d2, b, c, d), (d3, c, a, b), (d4, d, a, b)))


# -- requests (src/notification/processor.rs) -------------------------------------------------------------
@dataclass(frozen=True)
class Posting:
    """A checked notification: the key fields (canonical), the stored value (JSON envelope)."""

    key_values: dict[str, str]
    value: str


def notify_request(event: ServerEvent, identifier: Mapping[str, Any], payload: Any, has_payload: bool) -> Posting:
    """What aviso-server checks on a notify, in its order; raises Refused."""
    for name in identifier:
        if name not in event.handlers:
            raise Refused(f"Unknown field '{name}' provided for notify operation", processing=True)
    canonical_values: dict[str, str] = {}
    for name, handler in event.handlers.items():
        if name not in identifier:
            raise Refused(f"Required field '{name}' missing for notify operation")
        value = identifier[name]
        if isinstance(value, Mapping):
            raise Refused(f"Field '{name}' constraint object is not supported for notify operation")
        canonical_values[name] = canonical(handler, scalar_text(name, value))
    if event.payload_required and (not has_payload or payload is None):
        raise Refused("Payload is required for notify operation based on schema configuration")
    extras = {name: canonical_values[name] for name in event.extras}
    envelope = {"payload": payload, "identifier": extras}
    keys = {name: key_value(event.handlers[name], canonical_values[name]) for name in event.key_order}
    return Posting(keys, json.dumps(envelope))


@dataclass(frozen=True)
class StreamFilter:
    """A checked watch or replay: what the core Request matches (key fields), and the spatial test."""

    raw: dict[str, Any]
    polygon: list[tuple[float, float]] | None = None
    point: tuple[float, float] | None = None
    #: Identifier fields outside the topic given as values (matched against the stored identifier).
    extras: dict[str, str] = field(default_factory=dict)
    #: Both a polygon and a point: aviso-server then matches nothing (src/notification/wildcard_matcher.rs).
    nothing: bool = False
    #: The event's polygon field (where a stored notification's polygon is).
    shape_field: str | None = None
    #: Constraint objects on float fields (the core compares whole numbers only): operator and operands.
    floats: dict[str, tuple[str, tuple[float, ...]]] = field(default_factory=dict)

    def keeps(self, stored: Mapping[str, str], keyed: Mapping[str, str] | None = None) -> bool:
        """True when a notification passes what the core's request does not test: its stored identifier (outside
        the topic) and, on its key fields ``keyed``, the float constraints."""
        if self.nothing or any(stored.get(name) != value for name, value in self.extras.items()):
            return False
        if not all(_float_holds(test, (keyed or {}).get(name)) for name, test in self.floats.items()):
            return False
        if self.polygon is None and self.point is None:
            return True
        shape = stored.get(self.shape_field) if self.shape_field else None
        if shape is None:
            return False
        try:
            corners = polygon_corners(shape)
        except Refused:
            return False
        if self.point is not None:
            return contains(corners, self.point)
        return self.polygon is not None and intersects(corners, self.polygon)


def _float_holds(test: tuple[str, tuple[float, ...]], value: str | None) -> bool:
    """aviso-validators/src/constraints.rs ``NumericConstraint<f64>::matches``."""
    try:
        number = float(value) if value is not None else math.nan
    except ValueError:
        return False
    if not math.isfinite(number):
        return False
    operator, operands = test
    low = operands[0]
    return {"eq": number == low, "in": number in operands, "gt": number > low, "gte": number >= low,
            "lt": number < low, "lte": number <= low,
            "between": low <= number <= operands[-1]}[operator]


def stream_request(event: ServerEvent, identifier: Mapping[str, Any], operation: str) -> StreamFilter:
    """What aviso-server checks on a watch or replay; raises Refused. Fields it does not know are ignored, as
    aviso-server ignores them."""
    raw: dict[str, Any] = {}
    extras: dict[str, str] = {}
    floats: dict[str, tuple[str, tuple[float, ...]]] = {}
    polygon: list[tuple[float, float]] | None = None
    for name, handler in event.handlers.items():
        if name not in identifier:
            if handler.required and not (handler.kind == "PolygonHandler" and "point" in identifier):
                raise Refused(f"Required field '{name}' missing for {operation} operation")
            continue
        value = identifier[name]
        if isinstance(value, Mapping) and handler.kind == "FloatHandler":
            floats[name] = float_constraint(handler, value)
            continue
        if isinstance(value, Mapping):
            raw[name] = constraint(handler, value)
            continue
        text = canonical(handler, scalar_text(name, value))
        if text == "*":  # aviso-server's wildcard token
            continue
        if handler.kind == "PolygonHandler":
            polygon = polygon_corners(text)
        elif name in event.key_order:
            raw[name] = key_value(handler, text)
        else:
            extras[name] = text
    where = None
    if "point" in identifier:
        if isinstance(identifier["point"], Mapping):
            raise Refused("Field 'point' constraint object is not supported")
        where = point(scalar_text("point", identifier["point"]))
    return StreamFilter(raw, polygon, where, extras, nothing=polygon is not None and where is not None,
                        shape_field=event.polygon, floats=floats)


def constraint(handler: Handler, value: Mapping[str, Any]) -> dict[str, Any]:
    """A constraint object checked as aviso-validators/src/constraints.rs checks it, in the core's form."""
    name = handler.name
    if handler.kind not in CONSTRAINED:
        raise Refused(f"Field '{name}' does not support constraint filters; expected scalar value")
    if len(value) != 1:
        raise Refused(f"Field '{name}' constraint must contain exactly one operator")
    ((operator, operand),) = value.items()
    if handler.kind == "EnumHandler":
        return {operator: _enum_operand(handler, operator, operand)}
    if operator not in INT_OPERATORS:
        raise Refused(f"Field '{name}' has invalid operator '{operator}'. Allowed: {','.join(INT_OPERATORS)}")
    items = operand if operator in ("in", "between") else [operand]
    if not isinstance(items, list) or not items:
        raise Refused(f"Field '{name}' operator '{operator}' expects array of integers")
    if not all(isinstance(item, int) and not isinstance(item, bool) for item in items):
        raise Refused(f"Field '{name}' operator '{operator}' expects integer value")
    if operator == "between" and (len(items) != 2 or items[0] > items[1]):
        raise Refused(f"Field '{name}' operator 'between' expects exactly two values [min,max] with min <= max")
    for item in items:
        if handler.bounds and not handler.bounds[0] <= item <= handler.bounds[1]:
            low, high = handler.bounds
            raise Refused(f"Field '{name}' constraint value {item} is outside allowed range [{low}, {high}]")
    return {operator: operand}


def float_constraint(handler: Handler, value: Mapping[str, Any]) -> tuple[str, tuple[float, ...]]:
    """A constraint object on a float field, checked as ``parse_float_constraint`` checks it."""
    name = handler.name
    if len(value) != 1:
        raise Refused(f"Field '{name}' constraint must contain exactly one operator")
    ((operator, operand),) = value.items()
    if operator not in INT_OPERATORS:
        raise Refused(f"Field '{name}' has invalid operator '{operator}'. Allowed: {','.join(INT_OPERATORS)}")
    if operator in ("in", "between"):
        if not isinstance(operand, list):
            wanted = "array of numbers" if operator == "in" else "[min,max]"
            raise Refused(f"Field '{name}' operator '{operator}' expects {wanted}")
        if not operand:
            raise Refused(f"Field '{name}' operator '{operator}' must contain at least one value")
        items = operand
    else:
        items = [operand]
    if not all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in items):
        raise Refused(f"Field '{name}' operator '{operator}' expects numeric value")
    numbers = tuple(float(item) for item in items)
    if not all(math.isfinite(number) for number in numbers):
        raise Refused(f"Field '{name}' operator '{operator}' expects finite numeric value")
    if operator == "between" and len(numbers) != 2:
        raise Refused(f"Field '{name}' operator 'between' expects exactly two values [min,max]")
    if operator == "between" and numbers[0] > numbers[1]:
        raise Refused(f"Field '{name}' operator 'between' expects min <= max")
    for number in numbers:
        if handler.bounds and not handler.bounds[0] <= number <= handler.bounds[1]:
            low, high = handler.bounds
            raise Refused(f"Field '{name}' constraint value {number} is outside allowed range [{low}, {high}]")
    return operator, numbers


def _enum_operand(handler: Handler, operator: str, operand: Any) -> Any:
    name = handler.name
    if operator not in ENUM_OPERATORS:
        raise Refused(f"Field '{name}' has invalid operator '{operator}'. Allowed for enum constraints: "
                      f"{','.join(ENUM_OPERATORS)}")
    if operator == "in" and (not isinstance(operand, list) or not operand):
        raise Refused(f"Field '{name}' operator 'in' expects array of strings")
    items = operand if operator == "in" else [operand]
    if not all(isinstance(item, str) for item in items):
        raise Refused(f"Field '{name}' operator '{operator}' expects string value")
    allowed = [v.lower() for v in handler.values]
    for item in items:
        if item.lower() not in allowed:
            raise Refused(f"Field '{name}' has invalid enum value '{item.lower()}'. Allowed: [{', '.join(allowed)}]")
    lowered = [item.lower() for item in items]
    return lowered if operator == "in" else lowered[0]


def stored_envelope(value: str | None) -> tuple[Any, dict[str, str]]:
    """The payload and the identifier fields outside the topic of a stored value."""
    if value is None:
        return None, {}
    try:
        envelope = json.loads(value)
    except ValueError:
        return value, {}  # written by another client: its text is the payload
    if isinstance(envelope, dict) and set(envelope) == set(ENVELOPE) and isinstance(envelope["identifier"], dict):
        return envelope["payload"], {str(k): str(v) for k, v in envelope["identifier"].items()}
    return value, {}


__all__ = ["Handler", "Posting", "Refused", "ServerEvent", "StreamFilter", "canonical", "constraint", "contains",
           "intersects", "key_value", "load_server_config", "notify_request", "point", "polygon_corners",
           "scalar_text", "shown_value", "stored_envelope", "stream_request"]
