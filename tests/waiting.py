"""Waiting in tests for something to happen: poll a condition within a bound, never sleep a guessed time.

A test that sleeps "long enough" either wastes time or fails on a slow machine; a test that polls a
condition goes on as soon as it holds, and when it never holds fails with a message naming what did
not happen. (A sleep that is part of a scenario, such as an idle window in which nothing may arrive, is
not a synchronisation and says so where it is written.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

#: Seconds: how long a test waits for something that normally takes milliseconds.
BOUND = 20.0
#: Seconds between two looks: short, so a test goes on soon after the condition holds.
EVERY = 0.02


def _looks(check: Callable[[], T], what: str, timeout: float) -> Iterator[T]:
    """What ``check`` returns, once per look, until ``timeout`` seconds have passed; then the assertion."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        yield result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s (last: {result!r})")


def eventually(check: Callable[[], T], *, what: str, timeout: float = BOUND, every: float = EVERY) -> T:
    """Call ``check`` until it returns something true, and return that; fail after ``timeout`` seconds.

    ``what`` names what should have happened ("the listener received step 6"); the assertion says it
    did not, within how long, and what ``check`` returned last. Exceptions of ``check`` propagate.
    """
    for result in _looks(check, what, timeout):
        if result:
            return result
        time.sleep(every)
    raise AssertionError("unreachable: _looks ends only by raising")


async def eventually_async(check: Callable[[], T], *, what: str, timeout: float = BOUND,
                           every: float = EVERY) -> T:
    """:func:`eventually` on an asyncio loop: the loop runs other tasks between two looks."""
    for result in _looks(check, what, timeout):
        if result:
            return result
        await asyncio.sleep(every)
    raise AssertionError("unreachable: _looks ends only by raising")


def subscribers_on(prefix: str, store: Any = None) -> int:
    """Subscribers of the process's shared watches on ``prefix`` (of ``store``'s identity when given), counted
    only once etcd confirmed the watch: before that a subscriber is not following yet."""
    from aviso_workflows.listen import HUB

    return sum(watch.subscriber_count for watch in HUB.watches()
               if watch.prefix == prefix and watch.ready
               and (store is None or watch.config.identity == store.config.identity))


def waits_following(store: Any, raw: Any) -> int:
    """How many waits follow ``store`` for ``raw`` (a request, or what makes one) now: the subscribers of its
    confirmed shared watch on the request's prefix. (An aviso-server has no shared watch: a test there looks
    at its streams instead.)"""
    from aviso_workflows.watch import covering_prefix

    request = raw if hasattr(raw, "status_keys") else store.request(raw)
    return subscribers_on(covering_prefix(request.status_keys()), store)


def until_following(store: Any, raw: Any, count: int = 1) -> None:
    """Wait (bounded) until ``count`` waits for ``raw`` follow ``store``'s confirmed shared watch (etcd only)."""
    eventually(lambda: waits_following(store, raw) >= count,
               what=f"{count} wait(s) for {raw} subscribed to the store's confirmed shared watch")


def counting_reads(store: Any) -> list[int]:
    """Count the requests of ``store``'s reads of what exists (a wait's first read, shared with the waits
    starting with it, goes through ``read_many`` of one of their stores): ``[count]``, growing."""
    done = [0]
    read_many = store.read_many

    def counted(requests: Any, **options: Any) -> Any:
        try:
            return read_many(requests, **options)
        finally:
            done[0] += len(requests)

    store.read_many = counted  # this instance only
    return done
