"""How waits scale, counted rather than timed: feeds reach a loop in one hand-over per watch batch, threaded
waits starting together share their reads, waiter ids stay unique across a fork."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from core_helpers import mars, mars_key

from aviso_workflows import Store, waiters
from aviso_workflows.backends import etcd as etcd_backend
from aviso_workflows.listen import HUB
from aviso_workflows.request import Request
from aviso_workflows.wait import wait_async

WAITERS = 300
BOUND = 30.0  # seconds a test's waits may take at most (a bound for a broken build, not a measure)


def _subscribers(status_key: str) -> int:
    """Subscribers of the shared watches that see ``status_key``."""
    return sum(len(w._subscribers()) for w in HUB.watches() if status_key.startswith(w.prefix))


async def _until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until ``condition`` holds (bounded)."""
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, "the waits did not all join the shared watch"
        await asyncio.sleep(0.01)


def test_feeds_reach_a_loop_in_one_hand_over_per_watch_batch(store: Store, unique_date: str) -> None:
    """A post of 300 keys (3 transactions) releases 300 asyncio waits: the watch thread wakes the loop once per
    watch batch, not once per waiter."""
    requests = [store.request(mars(unique_date, step=step)) for step in range(WAITERS)]
    hand_overs = 0

    async def scenario() -> list[Any]:
        nonlocal hand_overs
        loop = asyncio.get_running_loop()
        original = loop.call_soon_threadsafe

        def counting(callback: Callable[..., object], *args: Any, **kwargs: Any) -> Any:
            nonlocal hand_overs
            if getattr(callback, "__func__", None) is etcd_backend._LoopMailbox._hand_over:
                hand_overs += 1
            return original(callback, *args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        waits = [asyncio.create_task(wait_async(store, request, timeout=BOUND)) for request in requests]
        await _until(lambda: _subscribers(requests[0].status_keys()[0]) >= WAITERS)
        await loop.run_in_executor(None, lambda: store.notify(mars(unique_date, step=f"0/to/{WAITERS - 1}")))
        return await asyncio.gather(*waits)

    results = asyncio.run(scenario())
    assert [[n.key for n in found] for found in results] == [[mars_key(unique_date, s)] for s in range(WAITERS)]
    # a few per watch batch at most (the loop may take a batch's first feeds while the watch thread still
    # posts the rest); one per waiter before the mailbox
    assert 1 <= hand_overs <= WAITERS // 2, f"{hand_overs} hand-overs for {WAITERS} waits"


def _id_in_child(store: Store, request: Request) -> tuple[str, int]:
    """The id and pid a forked child gives its first waiter (registered without an entry: the child only tells)."""
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        registration = waiters.register(store, request, ttl=0)
        os.write(writing, json.dumps([registration.id, registration.record["pid"]]).encode())
        os._exit(0)
    os.close(writing)
    with os.fdopen(reading) as answer:
        text = answer.read()
    os.waitpid(child, 0)
    waiter_id, pid = json.loads(text)
    assert pid == child
    return waiter_id, pid


def _listed(store: Store, date: str, ids: set[str]) -> bool:
    """Whether the waiters ``ids`` come to be listed in etcd (the keeper writes them soon after they register)."""
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        if {w.id for w in waiters.list_waiters(store, {"kind": "test", "date": date})} >= ids:
            return True
        time.sleep(0.05)
    return False


def test_waiter_ids_are_unique_across_a_fork(store: Store, unique_date: str) -> None:
    """Ids are a per-process random prefix and a count: a forked child starts a prefix of its own, so its
    first waiter never takes the id of its parent's next one."""
    request = store.request(mars(unique_date))
    with waiters.register(store, request, who={"kind": "test"}) as parent:
        child_id, _ = _id_in_child(store, request)
        with waiters.register(store, request, who={"kind": "test"}) as parent_next:
            assert _listed(store, unique_date, {parent.id, parent_next.id})
    assert len({parent.id, parent_next.id, child_id}) == 3
    assert child_id[:8] != parent.id[:8] == parent_next.id[:8]
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in (parent.id, child_id))


def test_threaded_waits_starting_together_share_their_reads(store: Store, unique_date: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """300 threads each waiting for a key of its own read what exists in few shared reads (one worker takes
    everything queued while it read and lingered), not one or two waiters per read as they trickle in."""
    reads = 0
    read_many = Store.read_many

    def counting(self: Store, *args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return read_many(self, *args, **kwargs)

    monkeypatch.setattr(Store, "read_many", counting)
    requests = [store.request(mars(unique_date, step=step)) for step in range(WAITERS)]
    results: dict[int, list[str]] = {}

    def one(step: int) -> None:
        results[step] = [n.key for n in store.wait(requests[step], timeout=BOUND)]

    threads = [threading.Thread(target=one, args=(step,), daemon=True) for step in range(WAITERS)]
    for thread in threads:
        thread.start()
    asyncio.run(_until(lambda: _subscribers(requests[0].status_keys()[0]) >= WAITERS))
    store.notify(mars(unique_date, step=f"0/to/{WAITERS - 1}"))
    for thread in threads:
        thread.join(BOUND)
    assert results == {step: [mars_key(unique_date, step)] for step in range(WAITERS)}
    assert 1 <= reads <= WAITERS // 4, f"{reads} reads for {WAITERS} threads"  # one or two per read before
