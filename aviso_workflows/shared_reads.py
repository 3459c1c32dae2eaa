"""Reads of waits that start together, gathered into shared transactions: one batcher for threads and asyncio.

A thousand waiters each reading its keys would otherwise send a thousand reads, each paying the client's
cost while holding the interpreter. Here a read joins the queue of its ``min_revision``; one worker thread
at a time takes the whole queue and reads it (:meth:`Store.read_many`: 128 ranges per transaction, one
snapshot), and what queued meanwhile is read next. Threads and asyncio waiters queue alike (a thread
blocks on its own answer, a loop awaits it), so waits starting together share reads whichever form they
take. When waiters came during a read, the worker keeps the queue ``GATHER`` seconds more before the next one:
in a burst (a thousand threads starting one after the other) that read then takes every waiter that came
meanwhile rather than the two or three that came during one read. When none came, it lets the queue go at once:
a lone wait is read at once, also one that starts right after another's read. The worker hands
each waiter its answer, or the read's error (each waiter rides out an outage on its own); the answers of
one loop's waiters reach it in one callback per read.

One :class:`SharedReads` per store identity, kept by its runtime (:func:`shared_reads`).
"""

from __future__ import annotations

import asyncio
import threading
import time
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
#: Seconds the worker keeps a queue, after a read during which others came, for the waiters still arriving: reads
#: of a burst are then few and large (each read costs a round trip and, with many threads, a wait for the
#: interpreter), at the price of this much more for the waiters of the burst.
GATHER = 0.005
#: Worker threads reading: few, so their keep-alive connections to etcd are few.
WORKERS = 2


@dataclass(slots=True)
class _Entry:
    """One waiter's read: a thread's answer comes through ``answer``, an asyncio waiter's through ``future``."""

    store: StoreLike
    request: Request
    answer: Answer | None = None
    future: asyncio.Future[Read] | None = None


class _Box:
    """Where a waiting thread finds its answer: a lock held until the answer is in (the cheapest thing a thread
    can block on; a Condition or an Event is built on such locks)."""

    __slots__ = ("error", "filled", "read")

    def __init__(self) -> None:
        self.read: Read | None = None
        self.error: BaseException | None = None
        self.filled = threading.Lock()
        self.filled.acquire()

    def set(self, read: Read | None, error: BaseException | None) -> None:
        self.read, self.error = read, error
        self.filled.release()

    def get(self) -> Read:
        self.filled.acquire()
        if self.error is not None:
            raise self.error
        assert self.read is not None, "a finished read has an answer or an error"
        return self.read


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
        self._queue_up(_Entry(store, request, box.set), min_revision)
        return box.get()

    async def aread(self, store: StoreLike, request: Request, min_revision: int = 0) -> Read:
        """:meth:`read` for an asyncio waiter: a worker thread reads, the loop only waits for the answer."""
        future: asyncio.Future[Read] = asyncio.get_running_loop().create_future()
        self._queue_up(_Entry(store, request, future=future), min_revision)
        return await future

    def close(self) -> None:
        """End the worker threads (a read under way finishes first)."""
        workers, self._workers = self._workers, None
        if workers is not None:
            workers.shutdown(wait=False)

    # -- inside ----------------------------------------------------------------------------------
    def _queue_up(self, entry: _Entry, min_revision: int) -> None:
        """Join the queue of ``min_revision``; start a worker on it if none reads it."""
        with self._condition:
            queue = self._queues.setdefault(min_revision, _Queue())
            queue.entries.append(entry)
            if queue.reading:
                return
            queue.reading = True
            if self._workers is None:
                self._workers = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="aviso-read")
            workers = self._workers
        try:
            workers.submit(self._rounds, min_revision, queue)
        except RuntimeError:  # the interpreter is ending (no new pool threads): a thread of its own reads
            threading.Thread(target=self._rounds, args=(min_revision, queue), daemon=True).start()

    def _rounds(self, min_revision: int, queue: _Queue) -> None:
        """Read the queue's entries, round after round until it is empty."""
        burst = False
        while True:
            if burst:  # waiters came during the last read: more of them are on their way, gather them
                time.sleep(GATHER)
            with self._condition:
                taken, queue.entries = queue.entries, []
                if not taken:
                    queue.reading = False
                    if self._queues.get(min_revision) is queue:  # forget it (the keys vary by revision)
                        del self._queues[min_revision]
                    return
            _read_for(taken, min_revision)
            with self._condition:
                # none came: a lone waiter (even one right after this read) is read at once by a new round
                burst = bool(queue.entries)


def _read_for(taken: list[_Entry], min_revision: int) -> None:
    """One shared read; every entry taken gets its answer, or the read's error."""
    answers: list[Read] = []
    error: BaseException | None = None
    try:
        answers = taken[0].store.read_many([e.request for e in taken], min_revision=min_revision)
    except BaseException as failure:  # noqa: BLE001 - handed to every waiter whose read it was
        error = failure
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Read], Read | None]]] = {}
    for index, entry in enumerate(taken):
        read = None if error is not None else answers[index]
        if entry.future is not None:
            by_loop.setdefault(entry.future.get_loop(), []).append((entry.future, read))
        elif entry.answer is not None:
            entry.answer(read, error)
    for loop, settled in by_loop.items():  # one wake-up of each loop per read, not one per waiter
        try:
            loop.call_soon_threadsafe(_settle, settled, error)
        except RuntimeError:  # the waiters' loop is closed: nobody waits for these answers
            pass


def _settle(settled: list[tuple[asyncio.Future[Read], Read | None]], error: BaseException | None) -> None:
    """On the loop: the answers of one read (futures given up meanwhile are left alone)."""
    for future, read in settled:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            assert read is not None
            future.set_result(read)


def shared_reads(store: StoreLike) -> SharedReads:
    """The shared reads of ``store``'s runtime."""
    return runtime_for(store).part("shared reads", SharedReads)


__all__ = ["GATHER", "SharedReads", "shared_reads"]
