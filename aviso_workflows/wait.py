"""Waits: released once the keys of a request exist, at once for data posted long ago.

A wait takes its feeds from the store's backend (:meth:`~aviso_workflows.backends.protocol.Backend.wait_feeds`):
on etcd, its share of the process's watch on the prefix its keys live under, after which it reads what
exists (every range pinned to one revision); on an aviso-server, one stream that replays history and goes
on live. The follower does the bookkeeping; this module only moves data in and out of it, in one loop for
a thread (:func:`wait`) and one for an asyncio loop without a thread of its own (:func:`wait_async`).

An outage — at the first read as later on — is ridden out within the wait's own timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import follow, waiters
from .backends.protocol import WaitFeeds
from .errors import StoreUnavailable, ValidationError, WaitTimeout
from .follow import Found, Progress, WaitMachine
from .notification import Notification
from .request import Request, ready_prefix
from .runtime import Runtime, runtime_for
from .shared_reads import shared_reads

if TYPE_CHECKING:
    from .storelike import StoreLike

log = logging.getLogger(__name__)


ProgressCallback = Callable[[int, int, Notification], None]
ReadyCallback = Callable[[Progress], None]


class WaitResult(list[Notification]):
    """The notifications a wait found, in history order: a list, which also says what is ``missing`` when
    the wait was released at its deadline with only part of its keys (``min_found``)."""

    def __init__(self, found: Iterable[Notification] = (), missing: Iterable[str] = ()) -> None:
        super().__init__(found)
        self.missing = list(missing)

    @property
    def partial(self) -> bool:
        """Released at the deadline with keys still missing."""
        return bool(self.missing)


def check_min_found(min_found: Any, request: Request, mode: str = "all") -> int | None:
    """``min_found`` if it can release a wait for ``request`` at its deadline: 1 to the number of keys."""
    if min_found is None:
        return None
    if mode != "all":
        raise ValidationError("min_found", min_found, "only a wait for all keys can be released with part of them")
    total = request.count if request.is_complete else 0
    if isinstance(min_found, bool) or not isinstance(min_found, int) or not 1 <= min_found <= total:
        raise ValidationError("min_found", min_found, f"expected a whole number of keys from 1 to {total}")
    return min_found


def describe_missing(request: Request, keys: Sequence[str], shown: int = 20) -> str:
    """Missing keys by the fields that tell them apart (``step=3 step=5``), the first ``shown`` of them."""
    varying = [name for name in request.schema.key_fields if len(request.values.get(name, ())) > 1]
    words = []
    for key in keys[:shown]:
        fields = request.schema.parse_key(key) or {}
        words.append(",".join(f"{name}={fields.get(name, '?')}" for name in varying) or key)
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return " ".join(words) + more


class _Tracker:
    """What every wait does besides waiting: its entry among the registered waiters (with ``who``), which
    follows the found count, and the release with part of the keys at the deadline (``min_found``)."""

    def __init__(self, store: StoreLike, request: Request, mode: str, timeout: float | None,
                 known: Sequence[Notification], on_progress: ProgressCallback | None, min_found: int | None,
                 who: Mapping[str, Any] | None, on_ready: ReadyCallback | None = None) -> None:
        self.request = request
        self.min_found = check_min_found(min_found, request, mode)
        #: Keys found that release the wait.
        self.releasing = 1 if mode == "any" else request.count
        self.progress = on_progress
        self.ready = on_ready
        self.registration = None if who is None else self._register(store, request, mode, timeout, known, who)

    @staticmethod
    def _register(store: StoreLike, request: Request, mode: str, timeout: float | None, known: Sequence[Notification],
                  who: Mapping[str, Any]) -> waiters.Registration:
        have = {n.key for n in known}
        # nothing known (a new wait: nearly always): none ready, without building the request's key list
        ready = ready_prefix(request.keys(), have) if have and mode == "all" and request.is_complete else len(have)
        return waiters.register(store, request, who=who, mode=mode, found=len(have), ready=ready, timeout=timeout)

    def on_progress(self, progress: Progress) -> None:
        # a count that releases the wait is not written: its entry is removed right after
        if self.registration is not None and progress.found < self.releasing:
            self.registration.progress(progress.found, ready=progress.ready)
        if self.progress is not None:
            self.progress(progress.found, progress.total, progress.newest)
        if self.ready is not None:
            self.ready(progress)

    #: The tracker is what :class:`Found` calls (see :meth:`callback`).
    __call__ = on_progress

    def callback(self) -> ReadyCallback | None:
        """What the wait calls as keys are found: the tracker itself (a bound method would be one object more
        for each of thousands of waiting triggers), or nothing when it has nothing to do."""
        if self.registration is None and self.progress is None and self.ready is None:
            return None
        return self

    def released_short(self, timed_out: WaitTimeout) -> WaitResult:
        """At the deadline: what was found if that is at least ``min_found`` keys, else the timeout."""
        if self.min_found is None:
            raise timed_out
        have = {n.key for n in timed_out.found}
        if len(have) < self.min_found:
            raise WaitTimeout(f"{timed_out}; at least {self.min_found} are needed to release with part of them",
                              timed_out.found) from None
        missing = [key for key in self.request.keys() if key not in have]
        log.warning("released at the deadline with %d/%d keys of %s (min_found=%d); missing: %s", len(have),
                    self.request.count, self.request, self.min_found, describe_missing(self.request, missing))
        return WaitResult(timed_out.found, missing)

    def close(self, block: bool) -> None:
        """Remove the entry; ``block``: wait (bounded) for the removal if it is the process's last waiter."""
        if self.registration is not None:
            if block:
                self.registration.__exit__()
            else:
                self.registration.close()


def wait(store: StoreLike, request: Request, *, mode: str = "all", timeout: float | None = None,
         known: Iterable[Notification] = (), on_progress: ProgressCallback | None = None,
         min_found: int | None = None, who: Mapping[str, Any] | None = None,
         on_ready: ReadyCallback | None = None) -> WaitResult:
    """Block until every key of ``request`` exists (``mode="any"``: at least one matching key).

    Returns the notifications found, in history order. Raises WaitTimeout (with ``found``) after
    ``timeout`` seconds, unless ``min_found`` keys were found by then: the result then names the
    ``missing`` keys (and a WARNING says so). With ``who`` (fields saying who waits), the wait is listed
    among the registered waiters (waiters.py) while it waits.

    As keys are found, ``on_progress(found, total, notification)`` gets the plain count and the newest
    notification (keys come in any order: not for deciding what may start), and ``on_ready`` a
    :class:`Progress` whose ``ready`` counts the keys found in request order with no gap before them.
    """
    known = list(known)
    tracker = _Tracker(store, request, mode, timeout, known, on_progress, min_found, who, on_ready)
    try:
        return WaitResult(_wait(store, request, mode=mode, timeout=timeout, known=known,
                                on_progress=tracker.callback()))
    except WaitTimeout as timed_out:
        return tracker.released_short(timed_out)
    finally:
        tracker.close(block=True)


def _wait(store: StoreLike, request: Request, *, mode: str = "all", timeout: float | None = None,
          known: Iterable[Notification] = (), on_progress: ReadyCallback | None = None) -> list[Notification]:
    """Block until every key of ``request`` exists (``mode="any"``: at least one matching key).

    Returns the notifications found, in history order. Keys already posted are found at once; the
    rest within milliseconds of their post. Raises WaitTimeout (with ``found``) after ``timeout``
    seconds. ``known`` notifications (found earlier) count as found already.
    """
    found, runtime = Found(request, mode, known, on_progress), runtime_for(store)
    feeds = store.backend.wait_feeds(request, found.wanted, runtime.hub)
    feeds.start()
    try:
        machine = WaitMachine(found, timeout=timeout, reads_state=feeds.reads_state, patience=feeds.patience,
                              now=time.monotonic())
        command = machine.start(time.monotonic())
        while not isinstance(command, follow.Release):
            command = machine.handle(_do(store, request, feeds, command), time.monotonic())
        return command.found
    finally:
        _detach(runtime, feeds)


def _do(store: StoreLike, request: Request, feeds: WaitFeeds, command: follow.WaitCommand) -> follow.WaitEvent:
    """What the machine asked, done by this thread; what came of it."""
    if isinstance(command, follow.Listen):
        return follow.Fed(feeds.get(command.timeout or 0.0), feeds.last_error)
    if isinstance(command, follow.AwaitReady):
        return follow.Readied(feeds.ready(command.timeout), feeds.last_error)
    if isinstance(command, follow.Pause):
        time.sleep(command.seconds)
        return follow.Paused()
    assert isinstance(command, follow.ReadState)
    try:
        return follow.ReadDone(*shared_reads(store).read(store, request, command.min_revision))
    except StoreUnavailable as error:
        return follow.ReadFailed(error)


def _detach(runtime: Runtime, feeds: WaitFeeds) -> None:
    """Leave the feeds at once (never blocks); what may block (the end of a watch whose last waiter this
    was, or of a stream) is left to the runtime's stopping thread, off the path of the release."""
    rest = feeds.detach()
    if rest is not None:
        runtime.stop_later(rest)


# -- asyncio ---------------------------------------------------------------------------------------

async def wait_async(store: StoreLike, request: Request, *, mode: str = "all", timeout: float | None = None,
                     known: Iterable[Notification] = (), on_progress: ProgressCallback | None = None,
                     min_found: int | None = None, who: Mapping[str, Any] | None = None,
                     on_ready: ReadyCallback | None = None) -> WaitResult:
    """:func:`wait` in an asyncio loop (``min_found``, ``who``, ``on_progress`` and ``on_ready`` as there), for
    triggers: the shared watch feeds the loop, the reads of waiters starting together share transactions in a
    worker thread, and registering is written by the process's keeper thread, so thousands of waiters need no
    thread and no connection of their own and never block the loop. One coroutine, not one calling another:
    each of ten thousand waiting triggers would hold a second one for the garbage collector to walk.
    """
    known = tuple(known)  # none, nearly always: the empty tuple, nothing to allocate per trigger
    tracker = _Tracker(store, request, mode, timeout, known, on_progress, min_found, who, on_ready)
    try:
        found, runtime = Found(request, mode, known, tracker.callback()), runtime_for(store)
        feeds = store.backend.wait_feeds(request, found.wanted, runtime.hub, asyncio.get_running_loop())
        feeds.start()  # no I/O: a stream or a new shared watch starts in a thread of its own
        try:
            machine = WaitMachine(found, timeout=timeout, reads_state=feeds.reads_state, patience=feeds.patience,
                                  now=time.monotonic(), blocking=False)
            command = machine.start(time.monotonic())
            while not isinstance(command, follow.Release):
                event: follow.WaitEvent
                if isinstance(command, follow.Listen):  # no timer without a deadline (nearly every release)
                    event = follow.Fed(await feeds.aget()) if command.timeout is None else await _listen(feeds, command)
                else:
                    event = await _do_async(store, request, feeds, command)
                command = machine.handle(event, time.monotonic())
                del event  # not kept while waiting: a first read's answer would stay with each of thousands of waiters
            return WaitResult(command.found)
        finally:
            _detach(runtime, feeds)
    except WaitTimeout as timed_out:
        return tracker.released_short(timed_out)
    finally:
        tracker.close(block=False)


async def _listen(feeds: WaitFeeds, command: follow.Listen) -> follow.Fed:
    """The next feed within the wait's deadline."""
    try:
        async with asyncio.timeout(command.timeout):
            return follow.Fed(await feeds.aget())
    except TimeoutError:
        return follow.Fed(None, feeds.last_error)


async def _do_async(store: StoreLike, request: Request, feeds: WaitFeeds,
                    command: follow.AwaitReady | follow.ReadState | follow.Pause) -> follow.WaitEvent:
    """The rest of what the machine asks, on the loop: feeds asked without blocking, reads in a worker."""
    if isinstance(command, follow.AwaitReady):
        return follow.Readied(feeds.ready(0), feeds.last_error)
    if isinstance(command, follow.Pause):
        await asyncio.sleep(command.seconds)
        return follow.Paused()
    try:
        return follow.ReadDone(*await shared_reads(store).aread(store, request, command.min_revision))
    except StoreUnavailable as error:
        return follow.ReadFailed(error)


__all__ = ["Progress", "WaitResult", "check_min_found", "describe_missing", "wait", "wait_async"]
