"""Reads of waits that start together, gathered into shared transactions: one batcher for threads and asyncio.

A thousand waiters each reading its keys would otherwise send a thousand reads, each paying the HTTP
client's cost while holding the interpreter. Here a read joins the queue of its ``min_revision``; one
reader at a time takes the whole queue and reads it (:meth:`Store.read_many`: 128 ranges per transaction,
one snapshot), and what queued meanwhile is read next. A waiting thread that finds no read under way
reads itself; an asyncio waiter never blocks its loop: a worker thread reads for it. Whoever reads hands
each waiter its answer, or the read's error (each waiter rides out an outage on its own).

One :class:`SharedReads` per store identity, kept by its runtime (:func:`shared_reads`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .notification import Notification
from .request import Request
from .runtime import runtime_for

if TYPE_CHECKING:
    from .storelike import StoreLike

Read = tuple[int, list[Notification]]
Answer = Callable[[Read | None, BaseException | None], None]
#: How long a queued thread sleeps before it looks whether it must read for the others (the reader
#: wakes it when done; this bounds a missed wake-up).
LOOK_AGAIN = 0.1
#: A bound on the looks of one read (the reader of each round always finishes its round).
MAX_LOOKS = 10_000_000
#: Worker threads reading for asyncio waiters: few, so their keep-alive connections to etcd are few.
WORKERS = 2


@dataclass
class _Entry:
    store: StoreLike
    request: Request
    answer: Answer


@dataclass
class _Box:
    """Where a waiting thread finds its answer."""

    read: Read | None = None
    error: BaseException | None = None
    done: bool = False

    def set(self, read: Read | None, error: BaseException | None) -> None:
        self.read, self.error, self.done = read, error, True


@dataclass
class _Queue:
    entries: list[_Entry] = field(default_factory=list)
    reading: bool = False


class SharedReads:
    """The shared reads of one store identity (see the module's text)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._queues: dict[int, _Queue] = {}
        self._workers: ThreadPoolExecutor | None = None

    def read(self, store: StoreLike, request: Request, min_revision: int = 0) -> Read:
        """What ``store.read(request, min_revision=...)`` returns, read together with other waiters' requests."""
        box = _Box()
        queue = self._join(_Entry(store, request, box.set), min_revision)
        for _ in range(MAX_LOOKS):
            if self._take_or_wait(queue, box):
                self._rounds(min_revision, queue, first_only=True)
            if box.done:
                break
        if box.error is not None:
            raise box.error
        assert box.read is not None, "a finished read has an answer or an error"
        return box.read

    async def aread(self, store: StoreLike, request: Request, min_revision: int = 0) -> Read:
        """:meth:`read` for an asyncio waiter: a worker thread reads, the loop only waits for the answer."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Read] = loop.create_future()

        def answer(read: Read | None, error: BaseException | None) -> None:  # on the reading thread
            try:
                loop.call_soon_threadsafe(_settle, future, read, error)
            except RuntimeError:  # the waiter's loop is closed: nobody waits for this answer
                pass

        queue = self._join(_Entry(store, request, answer), min_revision)
        with self._condition:
            idle = not queue.reading
            queue.reading = True
        if idle:
            self._hand_to_worker(min_revision, queue)
        return await future

    def close(self) -> None:
        """End the worker threads (a read under way finishes first)."""
        workers, self._workers = self._workers, None
        if workers is not None:
            workers.shutdown(wait=False)

    # -- inside ----------------------------------------------------------------------------------
    def _join(self, entry: _Entry, min_revision: int) -> _Queue:
        with self._condition:
            queue = self._queues.setdefault(min_revision, _Queue())
            queue.entries.append(entry)
            return queue

    def _take_or_wait(self, queue: _Queue, box: _Box) -> bool:
        """True if this thread reads now (nobody does); else waits a little for the reader."""
        with self._condition:
            if box.done:
                return False
            if not queue.reading:
                queue.reading = True
                return True
            self._condition.wait(LOOK_AGAIN)
            return False

    def _hand_to_worker(self, min_revision: int, queue: _Queue) -> None:
        with self._condition:
            if self._workers is None:
                self._workers = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="aviso-read")
            workers = self._workers
        workers.submit(self._rounds, min_revision, queue, False)

    def _rounds(self, min_revision: int, queue: _Queue, first_only: bool) -> None:
        """Read the queue's entries, round after round until it is empty; a waiting thread (``first_only``)
        leaves what queued during its round to a worker, so it goes back to its own wait at once."""
        while True:
            with self._condition:
                taken, queue.entries = queue.entries, []
                if not taken:
                    queue.reading = False
                    if self._queues.get(min_revision) is queue:  # forget it (the keys vary by revision)
                        del self._queues[min_revision]
                    self._condition.notify_all()
                    return
            _read_for(taken, min_revision)
            with self._condition:
                self._condition.notify_all()
                more = bool(queue.entries)
            if first_only and more:
                self._hand_to_worker(min_revision, queue)
                return


def _read_for(taken: list[_Entry], min_revision: int) -> None:
    """One shared read; every entry taken gets its answer, or the read's error."""
    answers: list[Read] = []
    error: BaseException | None = None
    try:
        answers = taken[0].store.read_many([e.request for e in taken], min_revision=min_revision)
    except BaseException as failure:  # noqa: BLE001 - handed to every waiter whose read it was
        error = failure
    for index, entry in enumerate(taken):
        entry.answer(None if error is not None else answers[index], error)


def _settle(future: asyncio.Future[Read], read: Read | None, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert read is not None
        future.set_result(read)


def shared_reads(store: StoreLike) -> SharedReads:
    """The shared reads of ``store``'s runtime."""
    return runtime_for(store).part("shared reads", SharedReads)


__all__ = ["LOOK_AGAIN", "SharedReads", "shared_reads"]
