"""Event schemas: the key layout of an event and the type of each of its fields.

The built-in ``mars`` and ``dissemination`` events write the keys of ECMWF's Aviso service::

    /ec/mars/date=20261122,class=od,expver=0001,domain=g,time=00,stream=oper,step=6
    /ec/diss/COM/date=20261122,target=E1,class=od,expver=0001,domain=g,time=00,stream=oper,step=6

Custom events come from a YAML or JSON file, in this project's format or in pyaviso 1.x's
listener-schema format (see :func:`load_schemas`).
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from .errors import SchemaError, ValidationError, shown
from .fields import (
    DateField,
    EnumField,
    ExpverField,
    Field,
    IntField,
    StringField,
    TimeField,
    field_from_config,
    field_from_pyaviso,
)

# MARS language values accepted by the built-in events (lower case; synonyms map to the first name).
MARS_CLASSES = (
    "od rd ea ei e4 e2 e1 ep er ce cr cs cu c3 ci d1 dm dt ed en et gw la lw ma mc me ml mo ms "
    "nr pe pt rm rr s2 sr te ti to tr ul ur uc yp yt ai lo x4 ng"
).split()
MARS_STREAMS = (
    "oper enfo wave waef scda scwv mnfc mnfh mnfm mofc mofm mmsf msmm mmsa mmaf mawm mwfs eefo eefh "
    "enfh efhc efho efhs eehs weef wees weov weeh enwh ewhc ewho elda ewla dcda dcwv lwda lwwv wamo "
    "moda supd gfas mdfa edmm edmo efas"
).split()
MARS_DOMAINS = tuple("abcdefghijklmnopqrstuvwxyz")
_PLACEHOLDER = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_]*)\}")
_FIELD_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_EVENT_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.-]*")
#: Between two placeholders a key needs one of these (values never hold them), or it cannot be read back.
_SEPARATORS = frozenset("/,=")


def _template_fields(template: str) -> list[str]:
    """The field names of a key template such as ``date={date},step={step}``, which must be read back unambiguously."""
    if not isinstance(template, str):
        raise SchemaError(f"key template {shown(template)} is not text")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as error:  # a single '{' or '}'
        raise SchemaError(f"key template {template!r}: {error}") from None
    names: list[str] = []
    for literal, name, spec, conversion in parts:
        if "{" in literal or "}" in literal:
            raise SchemaError(f"key template {template!r}: keys may not hold braces")
        if name is None:
            continue
        if not _FIELD_NAME.fullmatch(name) or spec or conversion:
            raise SchemaError(f"key template {template!r}: placeholder {{{name}}} is not a plain field name")
        if names and not _SEPARATORS & set(literal):
            raise SchemaError(f"key template {template!r}: put '/', ',' or '=' between {{{names[-1]}}} and "
                              f"{{{name}}}, or keys cannot be read back")
        names.append(name)
    return names


def _mapping(where: str, value: Any) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise SchemaError(f"{where}: expected a mapping, not {shown(value)}")
    return value


def _name(kind: str, value: Any, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise SchemaError(f"{kind} name {shown(value)} is not valid; use letters, digits and '_'")
    return value


@dataclass(frozen=True)
class EventSchema:
    """The key layout of one event: ``base`` (holds the status key) + ``/`` + ``stem``.

    ``admin`` is an optional extra key written with every notification (ECMWF's dissemination uses
    ``/ec/admin/{date}/{destination}``); ``payload`` names the request entry stored as the value.
    """

    name: str
    base: str
    stem: str
    fields: Mapping[str, Field]
    admin: str | None = None
    payload: str | None = "location"
    required: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        _template_fields(self.stem)  # base and stem each on their own, then joined (key_fields)
        missing = [name for name in self.key_fields if name not in self.fields]
        if missing:
            raise SchemaError(f"event {self.name!r}: key fields {missing} have no type in 'fields'")
        admin_missing = [n for n in _template_fields(self.admin or "") if n not in self.key_fields]
        if admin_missing:
            raise SchemaError(f"event {self.name!r}: admin key uses {admin_missing}, which are not key fields")
        if not self.base.startswith("/"):
            raise SchemaError(f"event {self.name!r}: base {self.base!r} must start with '/'")
        if not self.stem.strip("/"):
            raise SchemaError(f"event {self.name!r}: stem {self.stem!r} is empty; data keys would be the status key")
        if self.payload is not None and not isinstance(self.payload, str):
            raise SchemaError(f"event {self.name!r}: payload {shown(self.payload)} must name a request entry")
        unknown = sorted((f for f in self.required if f not in self.fields), key=str)
        if unknown:
            raise SchemaError(f"event {self.name!r}: required field {shown(unknown[0])} is not a field of the event")

    @cached_property
    def base_fields(self) -> tuple[str, ...]:
        """Fields that choose the status-key prefix (``destination`` for dissemination)."""
        return tuple(dict.fromkeys(_template_fields(self.base)))

    @cached_property
    def key_fields(self) -> tuple[str, ...]:
        """All fields of a key, in the order they appear in it."""
        return tuple(dict.fromkeys(_template_fields(self.base) + _template_fields(self.stem)))

    @cached_property
    def _base_template(self) -> str:
        return self.base.rstrip("/") + "/"

    @cached_property
    def key_template(self) -> str:
        """The full key template, ``base/stem``."""
        return self._base_template + self.stem.lstrip("/")

    @cached_property
    def key_parts(self) -> tuple[tuple[tuple[str, str], ...], str] | None:
        """The key template as (literal, field) pairs and the literal after the last field, to build many keys by
        concatenation; None when a field appears twice (those keys are formatted one by one)."""
        template, parts, position = self.key_template, [], 0
        for match in _PLACEHOLDER.finditer(template):
            parts.append((template[position:match.start()], match.group(1)))
            position = match.end()
        names = [name for _, name in parts]
        return (tuple(parts), template[position:]) if len(set(names)) == len(names) else None

    @cached_property
    def admin_fields(self) -> tuple[str, ...]:
        """Fields of the admin key (none without one)."""
        return tuple(dict.fromkeys(_template_fields(self.admin))) if self.admin else ()

    @cached_property
    def _key_pattern(self) -> re.Pattern[str]:
        pattern, seen, position = "", set(), 0
        template = self.key_template
        for match in _PLACEHOLDER.finditer(template):
            pattern += re.escape(template[position:match.start()])
            name = match.group(1)
            pattern += f"(?P={name})" if name in seen else f"(?P<{name}>[^/,=*\\s]+)"
            seen.add(name)
            position = match.end()
        return re.compile(pattern + re.escape(template[position:]) + r"\Z")

    def format_key(self, values: Mapping[str, str]) -> str:
        """The data key of one concrete, canonical request."""
        return self.key_template.format(**values)

    def status_key(self, values: Mapping[str, str]) -> str:
        """The status key (``base/``) for a request that fixes the base fields."""
        return self._base_template.format(**values)

    def admin_key(self, values: Mapping[str, str]) -> str | None:
        """The admin key of one concrete request, if the event has one."""
        return self.admin.format(**values) if self.admin else None

    def parse_key(self, key: str) -> dict[str, str] | None:
        """The request fields of a data key, or None for the status key and keys of another layout."""
        match = self._key_pattern.match(key)
        return match.groupdict() if match else None  # a new dict each time

    def key_prefix(self, values: Mapping[str, str]) -> str:
        """The longest literal start of the key template that ``values`` fix (stops at the first unknown field)."""
        template = self.key_template
        prefix, position = "", 0
        for match in _PLACEHOLDER.finditer(template):
            prefix += template[position:match.start()]
            name = match.group(1)
            if name not in values:
                return prefix
            prefix += values[name]
            position = match.end()
        return prefix + template[position:]

    def field(self, name: str) -> Field:
        """The field called ``name`` or a ValidationError listing the fields of this event."""
        try:
            return self.fields[name]
        except KeyError:
            raise ValidationError(name, name, f"unknown field for event {self.name!r}; fields: "
                                  + ", ".join(self.fields)) from None

    def to_pyaviso(self) -> dict[str, Any]:
        """This event in pyaviso 1.x's listener-schema format (for ``event_listener_schema.json``)."""
        endpoint: dict[str, Any] = {"engine": ["etcd_rest", "etcd_grpc"], "base": self.base, "stem": self.stem}
        if self.admin:
            endpoint["admin"] = self.admin
        request = {}
        for name, fld in self.fields.items():
            handlers = fld.to_pyaviso()
            if name in self.required:
                handlers = [{**h, "required": True} for h in handlers]
            request[name] = handlers
        return {"endpoint": [endpoint], "request": request}

    def to_config(self) -> dict[str, Any]:
        """This event in the project's own schema format."""
        config: dict[str, Any] = {"base": self.base, "stem": self.stem, "payload": self.payload,
                                  "fields": {n: f.to_config() for n, f in self.fields.items()}}
        if self.admin:
            config["admin"] = self.admin
        if self.required:
            config["required"] = sorted(self.required)
        return config


def _mars_fields() -> dict[str, Field]:
    return {
        "class": EnumField("class", MARS_CLASSES),
        "date": DateField("date"),
        "domain": EnumField("domain", MARS_DOMAINS),
        "expver": ExpverField("expver"),
        "step": IntField("step", 0, 100000),
        "stream": EnumField("stream", MARS_STREAMS),
        "time": TimeField("time", (0, 6, 12, 18)),
    }


MARS_STEM = "date={date},class={class},expver={expver},domain={domain},time={time},stream={stream},step={step}"
DISS_STEM = ("date={date},target={target},class={class},expver={expver},domain={domain},time={time},"
             "stream={stream},step={step}")

MARS = EventSchema(name="mars", base="/ec/mars", stem=MARS_STEM, fields=_mars_fields(), payload="location")
DISSEMINATION = EventSchema(
    name="dissemination",
    base="/ec/diss/{destination}",
    stem=DISS_STEM,
    admin="/ec/admin/{date}/{destination}",
    payload="location",
    fields={**_mars_fields(), "destination": StringField("destination", case="upper"),
            "target": StringField("target")},
    required=frozenset({"destination"}),
)
BUILTIN_SCHEMAS: dict[str, EventSchema] = {MARS.name: MARS, DISSEMINATION.name: DISSEMINATION}


def _schema_from_pyaviso(name: str, spec: Mapping[str, Any], payload: str | None) -> EventSchema:
    endpoints = spec.get("endpoint") or []
    if not isinstance(endpoints, list) or not all(isinstance(e, Mapping) for e in endpoints):
        raise SchemaError(f"event {name!r}: 'endpoint' must be a list of {{engine, base, stem}}")
    etcd = [e for e in endpoints if {"etcd_rest", "etcd_grpc"} & set(_engines(e.get("engine")))] or endpoints
    if not etcd or "base" not in etcd[0] or "stem" not in etcd[0]:
        raise SchemaError(f"event {name!r}: no 'endpoint' with base and stem")
    endpoint = etcd[0]
    request = _mapping(f"event {name!r}: 'request'", spec.get("request") or {})
    handlers = {_name("field", fname, _FIELD_NAME): _handler_list(fname, hs) for fname, hs in request.items()}
    fields = {fname: field_from_pyaviso(fname, hs) for fname, hs in handlers.items()}
    required = frozenset(f for f, hs in handlers.items() if any(h.get("required") for h in hs))
    for name_in_key in _template_fields(endpoint["base"]) + _template_fields(endpoint["stem"]):
        fields.setdefault(name_in_key, StringField(name_in_key))
    return EventSchema(name=name, base=endpoint["base"], stem=endpoint["stem"], admin=endpoint.get("admin"),
                       fields=fields, payload=payload, required=required)


def _engines(engine: Any) -> list[str]:
    names = [engine] if isinstance(engine, str) else engine if isinstance(engine, list) else []
    return [name for name in names if isinstance(name, str)]


def _handler_list(name: str, handlers: Any) -> list[Mapping[str, Any]]:
    if not isinstance(handlers, list) or not handlers or not all(isinstance(h, Mapping) for h in handlers):
        raise SchemaError(f"field {name!r}: expected a list of handlers such as [{{type: IntHandler}}]")
    return handlers


def _schema_from_config(name: str, spec: Mapping[str, Any]) -> EventSchema:
    spec = _mapping(f"event {name!r}", spec)
    unknown = sorted((key for key in spec if key not in _CONFIG_ENTRIES), key=str)
    if unknown:
        raise SchemaError(f"event {name!r}: unknown entry {shown(unknown[0])}; entries: {', '.join(_CONFIG_ENTRIES)}")
    for key in ("base", "stem"):
        if key not in spec:
            raise SchemaError(f"event {name!r}: missing {key!r}")
    configs = _mapping(f"event {name!r}: 'fields'", spec.get("fields") or {})
    fields = {fname: field_from_config(_name("field", fname, _FIELD_NAME), cfg or {}) for fname, cfg in configs.items()}
    for name_in_key in _template_fields(spec["base"]) + _template_fields(spec["stem"]):
        fields.setdefault(name_in_key, StringField(name_in_key))
    required = spec.get("required") or ()
    if not isinstance(required, (list, tuple)):
        raise SchemaError(f"event {name!r}: 'required' must list field names, not {shown(required)}")
    return EventSchema(name=name, base=spec["base"], stem=spec["stem"], admin=spec.get("admin"), fields=fields,
                       payload=spec.get("payload", "location"), required=frozenset(required))


_CONFIG_ENTRIES = ("base", "stem", "admin", "payload", "fields", "required")


def parse_schemas(document: Mapping[str, Any]) -> dict[str, EventSchema]:
    """Read event schemas from a parsed document in either supported format.

    Project format: ``{events: {NAME: {base, stem, admin?, payload?, fields: {FIELD: {type, ...}}}}}``.
    pyaviso format: ``{version?, payload?, NAME: {endpoint: [{engine, base, stem, admin?}], request: {...}}}``.
    """
    if not isinstance(document, Mapping):
        raise SchemaError("a schema file must hold a mapping of events")
    if "events" in document:
        events = document["events"]
        if not isinstance(events, Mapping):
            raise SchemaError("'events' must map event names to their layout")
        return {name: _schema_from_config(_name("event", name, _EVENT_NAME), spec) for name, spec in events.items()}
    payload = document.get("payload", "payload")
    schemas = {}
    for name, spec in document.items():
        if isinstance(spec, Mapping) and "endpoint" in spec:
            schemas[name] = _schema_from_pyaviso(_name("event", name, _EVENT_NAME), spec, payload)
    if not schemas:
        raise SchemaError("no event found: expected 'events:' or pyaviso's '<event>: {endpoint: ..., request: ...}'")
    return schemas


def load_schemas(path: str | Path) -> dict[str, EventSchema]:
    """Load event schemas from a YAML or JSON file (both formats of :func:`parse_schemas`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, ValueError) as error:  # ValueError: not UTF-8, or a NUL in the path
        raise SchemaError(f"schema file {path}: cannot be read ({getattr(error, 'strerror', None) or error})") from None
    try:
        document = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError, RecursionError) as error:
        first = " ".join(str(error).split()) or "nested too deeply"
        raise SchemaError(f"{path}: not valid {'JSON' if str(path).endswith('.json') else 'YAML'}: {first}") from None
    try:
        return parse_schemas(document)
    except SchemaError as error:
        raise SchemaError(f"{path}: {error}") from None


def to_pyaviso_document(schemas: Iterable[EventSchema]) -> dict[str, Any]:
    """A pyaviso 1.x ``event_listener_schema.json`` document for these events."""
    document: dict[str, Any] = {"version": 0.1, "payload": "location"}
    for schema in schemas:
        document[schema.name] = schema.to_pyaviso()
    return document


class SchemaRegistry:
    """The events known to a store: the built-in ones plus any loaded from files."""

    def __init__(self, schemas: Mapping[str, EventSchema] | None = None, *, builtin: bool = True) -> None:
        """``builtin=False``: only ``schemas`` (a server serving the events of one configuration)."""
        self._schemas: dict[str, EventSchema] = dict(BUILTIN_SCHEMAS) if builtin else {}
        self._schemas.update(schemas or {})

    def add_file(self, path: str | Path) -> None:
        """Add (or replace) the events of a schema file."""
        self._schemas.update(load_schemas(path))

    def __getitem__(self, event: str) -> EventSchema:
        if not isinstance(event, str) or event not in self._schemas:
            raise ValidationError("event", event, "known events: " + ", ".join(sorted(self._schemas)))
        return self._schemas[event]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._schemas.values())

    def names(self) -> list[str]:
        """Names of the known events."""
        return sorted(self._schemas)
