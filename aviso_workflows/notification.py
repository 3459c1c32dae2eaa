"""A notification as read from the store, and how a stored key becomes one."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .position import Place, StoredKey, place
from .request import Request

log = logging.getLogger(__name__)
#: The value of a data key posted without a location (pyaviso writes the literal text).
NO_PAYLOAD = "None"


@dataclass(frozen=True)
class Notification:
    """One "data available" notification as read from the store."""

    event: str
    request: dict[str, str]
    location: str | None
    key: str
    revision: int
    #: How many times the key was written (1: first post); not part of the notification's identity.
    version: int = field(default=1, compare=False)

    @property
    def value(self) -> str:
        """The stored value: the location, or the literal ``None``."""
        return self.location if self.location is not None else NO_PAYLOAD

    def to_dict(self) -> dict[str, Any]:
        """pyaviso's notification dict (``event``, ``request``, ``location`` if any) plus key and revision."""
        data: dict[str, Any] = {"event": self.event, "request": dict(self.request)}
        if self.location is not None:
            data["location"] = self.location
        data.update(key=self.key, revision=self.revision)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Notification:
        """Inverse of :meth:`to_dict`."""
        return cls(event=str(data["event"]), request=dict(data["request"]), location=data.get("location"),
                   key=str(data["key"]), revision=int(data["revision"]))

    @property
    def order(self) -> Place:
        """Position in the store's history: revision, then the key's values within one transaction."""
        return place(self.revision, self.key)


_REPORTED_LAYOUTS: set[str] = set()


def notification_from_kv(request: Request, kv: StoredKey) -> Notification | None:
    """The notification held by ``kv`` if it is a data key that ``request`` matches."""
    fields = request.schema.parse_key(kv.key)
    if fields is None:
        _report_foreign_key(request.event, kv.key)
        return None
    if not request.matches(fields):
        return None
    location = None if kv.value == NO_PAYLOAD else kv.value
    return Notification(request.event, fields, location, kv.key, kv.mod_revision, kv.version or 1)


def _report_foreign_key(event: str, key: str) -> None:
    """Log once per event that keys of another layout are skipped (status keys end with '/' and are expected)."""
    if key.endswith("/") or event in _REPORTED_LAYOUTS:
        return
    _REPORTED_LAYOUTS.add(event)
    log.warning("skipping keys that do not follow the layout of event %r, such as %s", event, key)


def in_order(notifications: list[Notification]) -> list[Notification]:
    """``notifications`` sorted by their place in history."""
    return sorted(notifications, key=lambda n: n.order)


__all__ = ["NO_PAYLOAD", "Notification", "in_order", "notification_from_kv"]
