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
        super().__init__(f"{field}: {value!r} is not valid; {valid}")


class SchemaError(AvisoWorkflowsError, ValueError):
    """An event schema (built in or loaded from a file) is malformed."""


class StoreError(AvisoWorkflowsError):
    """The etcd store answered with an error."""


class StoreUnavailable(StoreError):
    """No etcd endpoint could be reached."""


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
