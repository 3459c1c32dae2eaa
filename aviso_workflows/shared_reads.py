"""Reads of blocking waits that start together, gathered into shared transactions.

A thousand threads each waiting for a key would otherwise send a thousand reads, each paying the HTTP
client's cost while holding the interpreter. Here the first thread to find no read under way reads
for every thread queued by then (:meth:`Store.read_many`: 128 ranges per transaction, one snapshot),
and the threads that queued meanwhile are served by the next such read. Threads of one store identity
share reads only when they read from the same revision on.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .notification import Notification
from .request import Request

if TYPE_CHECKING:
    from .storelike import StoreLike

Read = tuple[int, list[Notification]]
#: How long a queued thread sleeps before it looks whether it must read for the others (the reader
#: wakes it when done; this bounds a missed wake-up).
LOOK_AGAIN = 0.1
#: A bound on the looks of one read (the reader of each round always finishes its round).
MAX_LOOKS = 10_000_000


@dataclass
class _Entry:
    request: Request
    answer: Read | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class _Queue:
    entries: list[_Entry] = field(default_factory=list)
    reading: bool = False


_condition = threading.Condition()
_queues: dict[tuple[Any, ...], _Queue] = {}


def read(store: StoreLike, request: Request, min_revision: int = 0) -> Read:
    """What ``store.read(request, min_revision=...)`` returns, read together with other threads' requests."""
    key = (store.config.identity, store.config.max_txn_ops, min_revision)
    entry = _Entry(request)
    with _condition:
        queue = _queues.setdefault(key, _Queue())
        queue.entries.append(entry)
    for _ in range(MAX_LOOKS):
        taken = _take_or_wait(queue, entry)
        if taken:
            _read_for(store, key, queue, taken, min_revision)
        if entry.done:
            break
    if entry.error is not None:
        raise entry.error
    assert entry.answer is not None, "a finished read has an answer or an error"
    return entry.answer


def _take_or_wait(queue: _Queue, entry: _Entry) -> list[_Entry]:
    """The queued entries to read now (this thread reads them), or [] after waiting for the reader."""
    with _condition:
        if entry.done:
            return []
        if not queue.reading:
            taken, queue.entries, queue.reading = queue.entries, [], True
            return taken
        _condition.wait(LOOK_AGAIN)
        return []


def _read_for(store: StoreLike, key: tuple[Any, ...], queue: _Queue, taken: list[_Entry], min_revision: int) -> None:
    """One shared read; every entry taken gets its answer, or the read's error (each waiter retries on its own)."""
    answers: list[Read] = []
    error: BaseException | None = None
    try:
        answers = store.read_many([e.request for e in taken], min_revision=min_revision)
    except BaseException as failure:  # noqa: BLE001 - handed to every thread whose read it was
        error = failure
    with _condition:
        for index, entry in enumerate(taken):
            entry.error, entry.answer = (error, None) if error is not None else (None, answers[index])
            entry.done = True
        queue.reading = False
        if not queue.entries and _queues.get(key) is queue:  # nobody queued: forget it (keys vary by revision)
            del _queues[key]
        _condition.notify_all()
