"""Our events in the shape of Aviso 2's schema endpoints: each field as the Aviso 2 handler closest to it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..fields import MAX_VALUE_LENGTH, DateField, EnumField, ExpverField, Field, IntField, StringField, TimeField
from ..schema import EventSchema
from .server_config import ServerEvent


def handler(field: Field, required: bool) -> dict[str, Any]:
    """One identifier field as an Aviso 2 handler (``type`` and its settings), with a description of its values."""
    rule: dict[str, Any]
    if isinstance(field, DateField):
        rule = {"type": "DateHandler", "canonical_format": "%Y%m%d"}
    elif isinstance(field, TimeField):
        rule = {"type": "TimeHandler"}
    elif isinstance(field, IntField):
        bounds = [field.minimum, field.maximum]
        rule = {"type": "IntHandler", "range": bounds if None not in bounds else None}
    elif isinstance(field, ExpverField):
        rule = {"type": "ExpverHandler", "default": field.default}
    elif isinstance(field, EnumField):
        rule = {"type": "EnumHandler", "values": list(field.values)}
    else:
        rule = {"type": "StringHandler", "max_length": MAX_VALUE_LENGTH}
        if isinstance(field, StringField) and field.pattern is not None:
            rule["pattern"] = field.pattern.pattern
    return {"description": field.describe(), **rule, "required": required}


def api_schema(schema: EventSchema) -> dict[str, Any]:
    """``{payload, identifier}`` of one event."""
    return {"payload": {"required": False},
            "identifier": {name: handler(field, name in schema.required) for name, field in schema.fields.items()}}


def _described(schema: EventSchema, events: Mapping[str, ServerEvent] | None) -> dict[str, Any]:
    """An event as the schema endpoints show it: as its aviso-server configuration has it, if it has one."""
    event = (events or {}).get(schema.name)
    return event.describe() if event is not None else api_schema(schema)


def schema_body(schemas: list[EventSchema], events: Mapping[str, ServerEvent] | None = None) -> dict[str, Any]:
    """The answer of ``GET /api/v1/schema``."""
    described = {schema.name: _described(schema, events) for schema in schemas}
    return {"status": "success", "schema": described, "event_types": sorted(described),
            "total_schemas": len(described)}


def event_schema_body(schemas: list[EventSchema], event: str, request_id: str,
                      events: Mapping[str, ServerEvent] | None = None) -> tuple[int, dict[str, Any]]:
    """The status and answer of ``GET /api/v1/schema/{event}`` (404 for an unknown event)."""
    for schema in schemas:
        if schema.name == event:
            return 200, {"status": "success", "event_type": event, "schema": _described(schema, events)}
    return 404, {"status": "error", "message": f"Event type {event!r} not found",
                 "available_types": sorted(s.name for s in schemas), "request_id": request_id}


__all__ = ["api_schema", "event_schema_body", "handler", "schema_body"]
