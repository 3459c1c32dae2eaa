"""The exceptions of aviso-workflows: every one says what went wrong in a single line."""

from __future__ import annotations

from typing import Any


class AvisoWorkflowsError(Exception):
    """Base class of every error raised on purpose by aviso-workflows."""


class ValidationError(AvisoWorkflowsError, ValueError):
    """Bad input: names the field, the value given and what would be valid."""

    def __init__(self, field: str, value: Any, valid: str) -> None:
        self.field = field
        self.value = value
        self.valid = valid
        name = field if field.isprintable() else repr(field)
        super().__init__(f"{name}: {shown(value)} is not valid; {valid}")


#: Longer values are shortened in messages (a message is one readable line).
SHOWN_CHARACTERS = 200


def shown(value: Any) -> str:
    """``repr(value)`` for a message: shortened in the middle when long."""
    if isinstance(value, int) and value.bit_length() > 600:  # repr() refuses integers of more than 4300 digits
        return f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    text = repr(value)
    if len(text) <= SHOWN_CHARACTERS:
        return text
    return f"{text[:SHOWN_CHARACTERS - 40]}...{text[-20:]} ({len(text)} characters)"


class SchemaError(AvisoWorkflowsError, ValueError):
    """An event schema (built in or loaded from a file) is malformed."""


class StoreError(AvisoWorkflowsError):
    """The etcd store answered with an error."""


class StoreUnavailable(StoreError):
    """No etcd endpoint could be reached."""


class TlsRefused(StoreUnavailable):
    """No endpoint completed a TLS handshake: a setting to correct (CA, client certificate), not an outage
    to wait out."""


class PermissionDenied(StoreError):
    """etcd refused the operation for the credentials in use."""


class NotForwarded(PermissionDenied):
    """A proxy in front of etcd refused a request path (HTTP 403, 404 or 405 without an etcd error).

    Aviso's authenticating proxies forward only ``kv/range``: watches fall back to polling it.
    """


class HistoryCompacted(StoreError):
    """A revision that was asked for has been compacted away."""

    def __init__(self, revision: int, compact_revision: int) -> None:
        self.revision = revision
        self.compact_revision = compact_revision
        super().__init__(f"revision {revision} has been compacted (oldest available: {compact_revision})")


class WaitTimeout(AvisoWorkflowsError, TimeoutError):
    """A wait ended before its condition was met."""

    def __init__(self, message: str, found: list[Any] | None = None) -> None:
        self.found = found or []
        super().__init__(message)
