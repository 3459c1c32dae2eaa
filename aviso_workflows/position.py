"""Positions in the store's history, their one order, and named cursors that keep them.

A position is a revision and, within it, a key. Keys of one revision (one transaction) are ordered by
their values the way people read them: numbers by value (``step=12`` before ``step=108``, dates in time
order), other text as text. Every reader (catch-up reads, watches, waits, replays) orders notifications
with :func:`place`, so positions compare the same way everywhere.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from .config import state_dir
from .errors import ValidationError

#: Stands for "every key of the revision": a position with it has passed the whole revision.
END_OF_REVISION = "\U0010ffff"
#: How the ``updated`` time of a cursor file is written (UTC).
CURSOR_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_DIGITS = re.compile(r"(\d+)")

class StoredKey(Protocol):
    """A key as a store holds it, as followers and notifications read it: etcd's key-values keep it, and
    so do the posts an aviso-server backend hands on (the layers above never see a backend's own types)."""

    @property
    def key(self) -> str:
        """The whole key, from the root."""
        ...

    @property
    def value(self) -> str:
        """The payload (the literal ``None`` when there is none)."""
        ...

    @property
    def mod_revision(self) -> int:
        """The position of its latest post: a revision (etcd) or a sequence (aviso-server)."""
        ...

    @property
    def version(self) -> int: ...


#: The sortable form of a place in history: (revision, 1 for the end of the revision else 0, key order, key).
Place = tuple[int, int, tuple[object, ...], str]


@lru_cache(maxsize=65_536)
def key_order(key: str) -> tuple[object, ...]:
    """``key`` split into text and numbers, so that numbers compare by value.

    ``re.split`` with a group alternates text and digits, so items of the same index always have the
    same type and any two keys compare without a type error.
    """
    return tuple(int(part) if index % 2 else part for index, part in enumerate(_DIGITS.split(key)))


def place(revision: int, key: str) -> Place:
    """Where a key written at ``revision`` stands in history (``END_OF_REVISION``: after all of it)."""
    if key == END_OF_REVISION:
        return revision, 1, (), ""
    return revision, 0, key_order(key), key


@dataclass(frozen=True)
class Position:
    """A place in the store's history: after this revision and, within it, after this key.

    Without a key, the whole revision is passed (``Position(store.current_revision())`` means "now").
    ``posted`` is the server's time of the post at this position where the store numbers posts per process
    (an aviso-server): a cursor keeps it so that a resume can tell a restarted server; it is no part of the
    place in history (positions compare without it).
    """

    revision: int
    key: str = END_OF_REVISION
    posted: str | None = field(default=None, compare=False)

    @property
    def order(self) -> Place:
        """Sortable form, comparable with ``Notification.order``."""
        return place(self.revision, self.key)

    @property
    def resume_revision(self) -> int:
        """The first revision a watch must replay to see everything after this position."""
        return self.revision + 1 if self.key == END_OF_REVISION else self.revision

    def is_after(self, order: Place) -> bool:
        """True when the place ``order`` was already passed."""
        return order <= self.order


class Cursor:
    """A named, durable position of a listener (a small JSON file, replaced atomically)."""

    def __init__(self, name: str, directory: Path | None = None) -> None:
        if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
            raise ValidationError("cursor", name, "cursor names are letters, digits, '-', '_' and '.'")
        self.name = name
        self.path = (directory or state_dir() / "cursors") / f"{name}.json"

    def load(self) -> Position | None:
        """The saved position, or None if this cursor was never saved."""
        try:
            data = json.loads(self.path.read_text())
            posted = data.get("posted")
            return Position(int(data["revision"]), str(data.get("key", END_OF_REVISION)),
                            None if posted is None else str(posted))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as error:
            raise ValidationError("cursor", str(self.path), f"unreadable cursor file ({error})") from None

    def save(self, position: Position) -> None:
        """Remember ``position`` durably (written to a new file, synced, then renamed over the old one)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
        data = {"revision": position.revision, "key": position.key,
                "updated": dt.datetime.now(dt.UTC).strftime(CURSOR_TIME_FORMAT)}
        if position.posted is not None:
            data["posted"] = position.posted
        with open(temporary, "w") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)


__all__ = ["END_OF_REVISION", "Cursor", "Place", "Position", "StoredKey", "key_order", "place"]
